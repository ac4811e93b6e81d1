//! Payments by hand: record, verify, refund, each answered with what the
//! engine wrote; bad input refused with a clear problem and nothing written;
//! Idempotency-Key replays.

use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, problem},
    helpers::{create_partner, create_payment, spawn_app},
};

#[tokio::test]
async fn record_verify_and_refund_a_payment() {
    let app = spawn_app().await;
    let admin = admin_token();
    let partner = create_partner(&app.db.pool, "Acme", None).await;

    let body = json!({"amount": "100.00", "currency": "NGN", "partner_id": partner, "reference": "order-1"});
    let payment = json(app.post_as(&admin, "/api/payments", &body).await, 201).await;
    assert_eq!(payment["status"], "pending");
    assert_eq!(payment["amount"], "100.00");
    assert_eq!(payment["currency"], "NGN");
    assert_eq!(payment["provider"], "manual");
    assert_eq!(payment["reference"], "order-1");
    assert_eq!(
        app.count("SELECT count(*) FROM commissions").await,
        0,
        "recording earns nothing"
    );
    let id = payment["id"].as_i64().unwrap();

    let verified = json(
        app.post_as(&admin, &format!("/api/payments/{id}/verify"), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(verified["payment"]["status"], "verified");
    assert!(verified["payment"]["verified_at"].is_string());
    assert_eq!(verified["commission"]["kind"], "earned");
    assert_eq!(verified["commission"]["amount"], "2.00");
    assert_eq!(verified["commission"]["rate"], "0.02");
    assert_eq!(verified["commission"]["payment_amount"], "100.00");
    assert_eq!(verified["commission"]["partner_id"], partner);

    let again = problem(
        app.post_as(&admin, &format!("/api/payments/{id}/verify"), &json!({}))
            .await,
        409,
        "conflict",
    )
    .await;
    assert!(
        again["detail"]
            .as_str()
            .unwrap()
            .contains("already verified"),
        "{again}"
    );
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 1);

    let refunded = json(
        app.post_as(&admin, &format!("/api/payments/{id}/refund"), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(refunded["payment"]["status"], "refunded");
    assert_eq!(refunded["reversal"]["kind"], "reversed");
    assert_eq!(refunded["reversal"]["amount"], "2.00");
    problem(
        app.post_as(&admin, &format!("/api/payments/{id}/refund"), &json!({}))
            .await,
        409,
        "conflict",
    )
    .await;

    let partner_view = json(
        app.get_as(&admin, &format!("/api/partners/{partner}"))
            .await,
        200,
    )
    .await;
    assert_eq!(
        partner_view["totals"]["NGN"],
        json!({"earned": "2.00", "pending": "0.00", "approved": "0.00", "balance": "0.00", "in_payout": "0.00", "paid": "0.00", "reversed": "2.00", "held": "0.00"})
    );
    assert_eq!(partner_view["last_seq"], 2);
}

#[tokio::test]
async fn a_payment_without_partner_verifies_with_no_commission() {
    let app = spawn_app().await;
    let admin = admin_token();
    let created = json(
        app.post_as(
            &admin,
            "/api/payments",
            &json!({"amount": "25", "currency": "JPY"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(created["amount"], "25");
    let id = created["id"].as_i64().unwrap();
    let verified = json(
        app.post_as(&admin, &format!("/api/payments/{id}/verify"), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(verified["commission"], Value::Null);
    // Refunding earns no reversal either.
    let refunded = json(
        app.post_as(&admin, &format!("/api/payments/{id}/refund"), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(refunded["reversal"], Value::Null);
}

#[tokio::test]
async fn illegal_transitions_unknown_and_malformed_ids() {
    let app = spawn_app().await;
    let admin = admin_token();
    let pending = create_payment(&app.db.pool, "10.00", "NGN", None).await;
    let body = problem(
        app.post_as(
            &admin,
            &format!("/api/payments/{pending}/refund"),
            &json!({}),
        )
        .await,
        409,
        "conflict",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("pending -> refunded"),
        "{body}"
    );
    problem(
        app.post_as(&admin, "/api/payments/424242/verify", &json!({}))
            .await,
        404,
        "not-found",
    )
    .await;
    problem(
        app.post_as(&admin, "/api/payments/424242/refund", &json!({}))
            .await,
        404,
        "not-found",
    )
    .await;
    problem(
        app.post_as(&admin, "/api/payments/abc/verify", &json!({}))
            .await,
        400,
        "bad-request",
    )
    .await;
    problem(
        app.get_as(&admin, "/api/nothing-here").await,
        404,
        "not-found",
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE status = 'pending'")
            .await,
        1
    );
}

#[tokio::test]
async fn bad_amounts_currencies_and_bodies_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let admin = admin_token();
    let partner = create_partner(&app.db.pool, "Acme", None).await;

    let cases = [
        (
            json!({"amount": 0.1, "currency": "NGN"}),
            "not a JSON number",
        ),
        (
            json!({"amount": 1000, "currency": "NGN"}),
            "not a JSON number",
        ),
        (
            json!({"amount": "1e3", "currency": "NGN"}),
            "decimal string",
        ),
        (
            json!({"amount": "-5.00", "currency": "NGN"}),
            "decimal string",
        ),
        (
            json!({"amount": "0.00", "currency": "NGN"}),
            "greater than zero",
        ),
        (
            json!({"amount": "1.005", "currency": "NGN"}),
            "more decimals than NGN",
        ),
        (
            json!({"amount": "10.5", "currency": "JPY"}),
            "more decimals than JPY",
        ),
        (
            json!({"amount": "10.00", "currency": "XYZ"}),
            "unknown currency",
        ),
        (
            json!({"amount": "10.00", "currency": "ngn"}),
            "three capital letters",
        ),
        (json!({"amount": "10.00"}), "currency"),
        (json!({"currency": "NGN"}), "amount"),
        (
            json!({"amount": "10.00", "currency": "NGN", "partner_id": "7"}),
            "partner_id",
        ),
        (
            json!({"amount": "10.00", "currency": "NGN", "partner_id": 999}),
            "partner 999 does not exist",
        ),
        (
            json!({"amount": "10.00", "currency": "NGN", "surprise": true}),
            "unknown field",
        ),
    ];
    for (body, expected) in cases {
        let problem = problem(
            app.post_as(&admin, "/api/payments", &body).await,
            422,
            "invalid-input",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(expected),
            "{body}: {detail:?} should mention {expected:?}"
        );
    }

    let malformed = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(&admin)
        .header("Content-Type", "application/json")
        .body(r#"{"amount": "10.00", "currency": "NGN""#)
        .send()
        .await
        .unwrap();
    problem(malformed, 400, "bad-request").await;

    let not_json = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(&admin)
        .body("amount=10")
        .send()
        .await
        .unwrap();
    problem(not_json, 415, "unsupported-media-type").await;

    let huge = format!(
        r#"{{"amount": "10.00", "currency": "NGN", "reference": "{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let too_large = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(&admin)
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    problem(too_large, 413, "payload-too-large").await;

    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        0,
        "nothing written"
    );
    let _ = partner;
}

#[tokio::test]
async fn a_duplicate_reference_is_a_conflict() {
    let app = spawn_app().await;
    let admin = admin_token();
    let body = json!({"amount": "10.00", "currency": "NGN", "reference": "inv-9"});
    json(app.post_as(&admin, "/api/payments", &body).await, 201).await;
    problem(
        app.post_as(&admin, "/api/payments", &body).await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response() {
    let app = spawn_app().await;
    let admin = admin_token();
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let body = json!({"amount": "50.00", "currency": "NGN", "partner_id": partner});
    let send = |key: &'static str, body: Value, path: String| {
        let request = app
            .http
            .post(app.url(&path))
            .bearer_auth(&admin)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };

    let first = send("k-1", body.clone(), "/api/payments".into()).await;
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = json(first, 201).await;
    let retry = send("k-1", body.clone(), "/api/payments".into()).await;
    assert_eq!(retry.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        json(retry, 201).await,
        first,
        "the stored response, byte for byte in meaning"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        1,
        "one payment for two sends"
    );

    // Keys are compared on the JSON, not its spelling.
    let respelled = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "k-1")
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{ "partner_id": {partner}, "currency": "NGN", "amount": "50.00" }}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(json(respelled, 201).await, first);

    let other = send(
        "k-1",
        json!({"amount": "60.00", "currency": "NGN"}),
        "/api/payments".into(),
    )
    .await;
    let detail = problem(other, 422, "invalid-input").await;
    assert!(detail["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);

    // A retried verify replays its 200 instead of a 409, and earns once.
    let id = first["id"].as_i64().unwrap();
    let verify = format!("/api/payments/{id}/verify");
    let once = json(send("v-1", json!({}), verify.clone()).await, 200).await;
    let twice = json(send("v-1", json!({}), verify.clone()).await, 200).await;
    assert_eq!(once, twice);
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 1);

    // A different caller's key space is its own.
    let other_admin = commissions::auth::mint(
        &commissions::auth::Claims {
            sub: "someone-else".into(),
            role: commissions::auth::Role::Admin,
            partner_id: None,
            exp: crate::callers::now() + 600,
        },
        crate::helpers::JWT_SECRET,
    );
    let theirs = app
        .http
        .post(app.url(&verify))
        .bearer_auth(other_admin)
        .header("Idempotency-Key", "v-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(theirs, 409, "conflict").await;
}

/// A body sent in chunks, with no Content-Length to refuse it by, is cut off
/// at the limit while it is read: still a 413 problem, still nothing written.
#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    for path in ["/api/payments", "/webhooks/stripe"] {
        let mut socket = tokio::net::TcpStream::connect(app.address).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nStripe-Signature: t=1,v1=00\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            admin_token()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let chunk = "x".repeat(16 * 1024);
        // 128 KiB, twice the limit; the server may stop reading early.
        for _ in 0..8 {
            let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            if socket.write_all(frame.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
        let mut response = String::new();
        let _ = socket.read_to_string(&mut response).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{path}: {response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{response}"
        );
        assert!(
            response.contains("/problems/payload-too-large"),
            "{response}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM webhook_events").await, 0);
}

#[tokio::test]
async fn concurrent_sends_under_one_key_create_one_payment() {
    let app = spawn_app().await;
    let admin = admin_token();
    let body = json!({"amount": "75.00", "currency": "NGN"});
    let sends = (0..10).map(|_| {
        let request = app
            .http
            .post(app.url("/api/payments"))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "burst")
            .json(&body);
        async move { request.send().await.unwrap() }
    });
    let mut created = Vec::new();
    for response in futures::future::join_all(sends).await {
        match response.status().as_u16() {
            201 => created.push(response.json::<Value>().await.unwrap()["id"].clone()),
            409 => {
                let body = problem(response, 409, "conflict").await;
                assert!(
                    body["detail"].as_str().unwrap().contains("in progress"),
                    "{body}"
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|id| *id == created[0]),
        "every 201 is the same payment: {created:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
    // Once it is done, a retry replays.
    let retry = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "burst")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(json(retry, 201).await["id"], created[0]);
}
