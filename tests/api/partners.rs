//! Partners over HTTP: create, re-rate, read with totals, the ledger in
//! keyset pages and the event log as the WebSocket sends it.

use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, partner_token, problem},
    helpers::{create_partner, create_payment, spawn_app},
};

#[tokio::test]
async fn create_read_and_rerate_a_partner() {
    let app = spawn_app().await;
    let admin = admin_token();

    let created = json(
        app.post_as(
            &admin,
            "/api/partners",
            &json!({"name": "  Acme  ", "commission_rate": "0.025"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(created["name"], "Acme");
    assert_eq!(created["commission_rate"], "0.025");
    assert_eq!(created["last_seq"], 0);
    assert_eq!(created["totals"], json!({}));
    let id = created["id"].as_i64().unwrap();

    let default_rate = json(
        app.post_as(&admin, "/api/partners", &json!({"name": "Beta"}))
            .await,
        201,
    )
    .await;
    assert_eq!(default_rate["commission_rate"], "0.02");

    let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(id)).await;
    app.verify(payment).await;
    let read = json(
        app.get_as(&partner_token(id), &format!("/api/partners/{id}"))
            .await,
        200,
    )
    .await;
    assert_eq!(read["last_seq"], 1);
    assert_eq!(
        read["totals"],
        json!({"NGN": {"earned": "2.50", "pending": "2.50", "approved": "0.00", "balance": "0.00", "in_payout": "0.00", "paid": "0.00", "reversed": "0.00", "held": "0.00"}})
    );

    let patch = app
        .http
        .patch(app.url(&format!("/api/partners/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"commission_rate": "0.1"}))
        .send()
        .await
        .unwrap();
    let changed = json(patch, 200).await;
    assert_eq!(changed["commission_rate"], "0.1");
    assert_eq!(changed["name"], "Acme", "unchanged fields stay");
    let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(id)).await;
    app.verify(payment).await;
    let read = json(
        app.get_as(&admin, &format!("/api/partners/{id}")).await,
        200,
    )
    .await;
    assert_eq!(
        read["totals"]["NGN"]["earned"], "12.50",
        "the new rate applies to later payments"
    );

    problem(
        app.get_as(&admin, "/api/partners/999").await,
        404,
        "not-found",
    )
    .await;
    let missing = app
        .http
        .patch(app.url("/api/partners/999"))
        .bearer_auth(&admin)
        .json(&json!({"name": "X"}))
        .send()
        .await
        .unwrap();
    problem(missing, 404, "not-found").await;
}

#[tokio::test]
async fn bad_partner_input_is_422_and_writes_nothing() {
    let app = spawn_app().await;
    let admin = admin_token();
    for (body, expected) in [
        (json!({"name": "   "}), "name"),
        (
            json!({"name": "A", "commission_rate": "1.5"}),
            "commission_rate",
        ),
        (
            json!({"name": "A", "commission_rate": "-0.1"}),
            "commission_rate",
        ),
        (
            json!({"name": "A", "commission_rate": "0.0000001"}),
            "commission_rate",
        ),
        (
            json!({"name": "A", "commission_rate": 0.02}),
            "not a JSON number",
        ),
        (json!({"name": 5}), "name"),
        (json!({}), "name"),
    ] {
        let body_problem = problem(
            app.post_as(&admin, "/api/partners", &body).await,
            422,
            "invalid-input",
        )
        .await;
        assert!(
            body_problem["detail"].as_str().unwrap().contains(expected),
            "{body}: {body_problem}"
        );
    }
    let malformed = app
        .http
        .post(app.url("/api/partners"))
        .bearer_auth(&admin)
        .header("Content-Type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    problem(malformed, 400, "bad-request").await;
    assert_eq!(app.count("SELECT count(*) FROM partners").await, 0);

    let id = create_partner(&app.db.pool, "Acme", None).await;
    let patch = app
        .http
        .patch(app.url(&format!("/api/partners/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"commission_rate": "2"}))
        .send()
        .await
        .unwrap();
    problem(patch, 422, "invalid-input").await;
    assert_eq!(
        app.count("SELECT count(*) FROM partners WHERE commission_rate = 0.02")
            .await,
        1
    );
}

#[tokio::test]
async fn commissions_come_newest_first_in_keyset_pages() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let other = create_partner(&app.db.pool, "Other", None).await;
    let mut payments = Vec::new();
    for amount in ["100.00", "200.00", "300.00", "400.00", "500.00"] {
        let payment = create_payment(&app.db.pool, amount, "NGN", Some(partner)).await;
        app.verify(payment).await;
        payments.push(payment);
    }
    app.verify(create_payment(&app.db.pool, "900.00", "NGN", Some(other)).await)
        .await;

    let token = partner_token(partner);
    let mut seen = Vec::new();
    let mut path = format!("/api/partners/{partner}/commissions?limit=2");
    let mut pages = 0;
    loop {
        let page = json(app.get_as(&token, &path).await, 200).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["partner_id"], partner, "only this partner's entries");
            seen.push(item["payment_id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_i64() {
            Some(cursor) => {
                path = format!("/api/partners/{partner}/commissions?limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    payments.reverse();
    assert_eq!(seen, payments, "newest first, each once");

    let all = json(
        app.get_as(&token, &format!("/api/partners/{partner}/commissions"))
            .await,
        200,
    )
    .await;
    assert_eq!(all["items"][0]["amount"], "10.00");
    assert_eq!(all["next_cursor"], Value::Null);

    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=x",
        "cursor=-1",
        "bogus=1",
    ] {
        problem(
            app.get_as(
                &token,
                &format!("/api/partners/{partner}/commissions?{query}"),
            )
            .await,
            422,
            "invalid-input",
        )
        .await;
    }
    problem(
        app.get_as(&admin_token(), "/api/partners/999/commissions")
            .await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn the_event_log_after_since_is_the_engines_json() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let first = create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;
    app.verify(first).await;
    let second = create_payment(&app.db.pool, "3.00", "KWD", Some(partner)).await;
    app.verify(second).await;
    json(
        app.post_as(
            &admin_token(),
            &format!("/api/payments/{first}/refund"),
            &json!({}),
        )
        .await,
        200,
    )
    .await;

    let token = partner_token(partner);
    let page = json(
        app.get_as(&token, &format!("/api/partners/{partner}/events?since=0"))
            .await,
        200,
    )
    .await;
    assert_eq!(page["last_seq"], 3);
    let events = page["events"].as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(events[0]["type"], "commission.created");
    assert_eq!(events[1]["data"]["amount"], "0.060");
    assert_eq!(events[2]["type"], "commission.reversed");

    // Exactly what the engine NOTIFYs and the socket replays.
    let stored: Vec<Value> = sqlx::query_scalar("SELECT commission_event_json(e) FROM commission_events e WHERE partner_id = $1 ORDER BY seq")
        .bind(partner)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(events, &stored);

    let later = json(
        app.get_as(&token, &format!("/api/partners/{partner}/events?since=2"))
            .await,
        200,
    )
    .await;
    assert_eq!(later["events"].as_array().unwrap().len(), 1);
    assert_eq!(later["events"][0]["seq"], 3);
    let limited = json(
        app.get_as(
            &token,
            &format!("/api/partners/{partner}/events?since=0&limit=1"),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);

    problem(
        app.get_as(&token, &format!("/api/partners/{partner}/events?since=-1"))
            .await,
        422,
        "invalid-input",
    )
    .await;
    problem(
        app.get_as(&token, &format!("/api/partners/{partner}/events?since=abc"))
            .await,
        422,
        "invalid-input",
    )
    .await;
    problem(
        app.get_as(&admin_token(), "/api/partners/999/events").await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn notifications_list_and_mark_read_for_their_partner_only() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let other = create_partner(&app.db.pool, "Other", None).await;
    app.verify(create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await)
        .await;
    app.verify(create_payment(&app.db.pool, "100.00", "NGN", Some(other)).await)
        .await;

    let token = partner_token(partner);
    let page = json(app.get_as(&token, "/api/notifications").await, 200).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["partner_id"], partner);
    assert_eq!(items[0]["title"], "Commission earned");
    assert_eq!(items[0]["read_at"], Value::Null);
    let id = items[0]["id"].as_i64().unwrap();

    let read = json(
        app.post_as(&token, &format!("/api/notifications/{id}/read"), &json!({}))
            .await,
        200,
    )
    .await;
    assert!(read["read_at"].is_string());
    let unread = json(
        app.get_as(&token, "/api/notifications?unread=true").await,
        200,
    )
    .await;
    assert_eq!(unread["items"], json!([]));

    let others: i64 = sqlx::query_scalar("SELECT id FROM notifications WHERE partner_id = $1")
        .bind(other)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    problem(
        app.post_as(
            &token,
            &format!("/api/notifications/{others}/read"),
            &json!({}),
        )
        .await,
        404,
        "not-found",
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM notifications WHERE read_at IS NOT NULL")
            .await,
        1
    );

    let everyone = json(app.get_as(&admin_token(), "/api/notifications").await, 200).await;
    assert_eq!(everyone["items"].as_array().unwrap().len(), 2);
    problem(
        app.get_as(&token, "/api/notifications?limit=0").await,
        422,
        "invalid-input",
    )
    .await;
    problem(
        app.http
            .get(app.url("/api/notifications"))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn earnings_per_day_are_the_ledgers_with_every_day_of_the_window() {
    let app = crate::helpers::spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let other = create_partner(&app.db.pool, "Other", None).await;
    let p1 = crate::helpers::create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;
    let p2 = crate::helpers::create_payment(&app.db.pool, "50.00", "NGN", Some(partner)).await;
    sqlx::query("SELECT verify_payment($1), verify_payment($2), refund_payment($2, 25)")
        .bind(p1)
        .bind(p2)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let body = crate::callers::json(
        app.get_as(
            &crate::callers::partner_token(partner),
            &format!("/api/partners/{partner}/earnings?days=7"),
        )
        .await,
        200,
    )
    .await;
    let days = body["currencies"]["NGN"].as_array().unwrap();
    assert_eq!(days.len(), 7, "every day, zeros included");
    let today = days.last().unwrap();
    // 2.00 + 1.00 earned, 0.50 of it reversed by the half refund.
    assert_eq!(today["earned"], "3.00");
    assert_eq!(today["reversed"], "0.50");
    assert_eq!(today["net"], "2.50");
    assert!(days[..6].iter().all(|d| d["net"] == "0.00"));

    crate::callers::problem(
        app.get_as(
            &crate::callers::partner_token(other),
            &format!("/api/partners/{partner}/earnings"),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    crate::callers::problem(
        app.get_as(
            &crate::callers::partner_token(partner),
            &format!("/api/partners/{partner}/earnings?days=0"),
        )
        .await,
        422,
        "invalid-input",
    )
    .await;
}
