//! Who may call what: 401 for a missing, forged or expired token, 403 for a
//! valid caller asking for what is not theirs (saying nothing about it), and
//! the `token` subcommand minting what the server accepts.

use commissions::auth::{self, Claims, Role};
use serde_json::json;

use crate::{
    callers::{admin_token, now, partner_token, problem},
    helpers::{create_partner, spawn_app, JWT_SECRET},
};

#[tokio::test]
async fn a_missing_malformed_forged_or_expired_token_is_401() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");

    let response = app.http.get(app.url(&path)).send().await.unwrap();
    problem(response, 401, "unauthorized").await;

    let response = app
        .http
        .get(app.url(&path))
        .header("Authorization", "Token abc")
        .send()
        .await
        .unwrap();
    problem(response, 401, "unauthorized").await;

    let forged = auth::mint(
        &Claims {
            sub: "x".into(),
            role: Role::Admin,
            partner_id: None,
            exp: now() + 600,
        },
        "another-secret-of-sufficient-length",
    );
    problem(app.get_as(&forged, &path).await, 401, "unauthorized").await;

    let expired = auth::mint(
        &Claims {
            sub: "x".into(),
            role: Role::Admin,
            partner_id: None,
            exp: now() - 10,
        },
        JWT_SECRET,
    );
    let body = problem(app.get_as(&expired, &path).await, 401, "unauthorized").await;
    assert!(body["detail"].as_str().unwrap().contains("expired"));

    let partner_without_id = auth::mint(
        &Claims {
            sub: "x".into(),
            role: Role::Partner,
            partner_id: None,
            exp: now() + 600,
        },
        JWT_SECRET,
    );
    problem(
        app.get_as(&partner_without_id, &path).await,
        401,
        "unauthorized",
    )
    .await;

    problem(app.get_as("not.a.jwt", &path).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_partner_reading_another_partner_gets_403_that_leaks_nothing() {
    let app = spawn_app().await;
    let mine = create_partner(&app.db.pool, "Mine Ltd", None).await;
    let theirs = create_partner(&app.db.pool, "Secret Rival Corp", Some("0.123")).await;
    let token = partner_token(mine);

    for path in [
        format!("/api/partners/{theirs}"),
        format!("/api/partners/{theirs}/commissions"),
        format!("/api/partners/{theirs}/events?since=0"),
        format!("/api/notifications?partner_id={theirs}"),
    ] {
        let existing = problem(app.get_as(&token, &path).await, 403, "forbidden").await;
        let text = existing.to_string();
        assert!(
            !text.contains("Rival")
                && !text.contains("0.123")
                && !text.contains(&theirs.to_string()),
            "{text}"
        );
        // A partner id that does not exist gets the very same answer.
        let missing = problem(
            app.get_as(&token, &path.replace(&theirs.to_string(), "999999"))
                .await,
            403,
            "forbidden",
        )
        .await;
        assert_eq!(existing, missing, "{path}: existence must not be revealed");
    }

    // Its own partner is fine.
    let own = app.get_as(&token, &format!("/api/partners/{mine}")).await;
    assert_eq!(own.status(), 200);
}

#[tokio::test]
async fn a_partner_token_cannot_use_admin_endpoints() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let token = partner_token(partner);

    problem(
        app.post_as(&token, "/api/partners", &json!({"name": "Mine"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    let payment = json!({"amount": "100.00", "currency": "NGN", "partner_id": partner});
    problem(
        app.post_as(&token, "/api/payments", &payment).await,
        403,
        "forbidden",
    )
    .await;
    let id = crate::helpers::create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;
    problem(
        app.post_as(&token, &format!("/api/payments/{id}/verify"), &json!({}))
            .await,
        403,
        "forbidden",
    )
    .await;
    let patch = app
        .http
        .patch(app.url(&format!("/api/partners/{partner}")))
        .bearer_auth(&token)
        .json(&json!({"commission_rate": "1"}))
        .send()
        .await
        .unwrap();
    problem(patch, 403, "forbidden").await;

    assert_eq!(
        app.count("SELECT count(*) FROM partners").await,
        1,
        "nothing created"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE status = 'pending'")
            .await,
        1,
        "nothing verified"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM partners WHERE commission_rate = 0.02")
            .await,
        1,
        "rate unchanged"
    );
    // An admin token passes the same checks.
    let ok = app
        .post_as(&admin_token(), "/api/partners", &json!({"name": "Theirs"}))
        .await;
    assert_eq!(ok.status(), 201);
}

#[test]
fn the_token_command_mints_a_token_the_server_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_commissions"))
        .args([
            "token",
            "--role",
            "partner",
            "--partner-id",
            "7",
            "--ttl",
            "120",
        ])
        .env("JWT_SECRET", JWT_SECRET)
        .output()
        .expect("run commissions token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = auth::verify(token.trim(), JWT_SECRET).expect("a valid token");
    assert_eq!(claims.role, Role::Partner);
    assert_eq!(claims.partner_id, Some(7));
    assert!((claims.exp - now() - 120).abs() <= 5);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_commissions"))
        .args(["token", "--role", "partner"])
        .env("JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a partner token without --partner-id is refused"
    );
}

#[tokio::test]
async fn every_api_endpoint_refuses_a_call_without_a_token() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let payment = crate::helpers::create_payment(&app.db.pool, "10.00", "NGN", Some(partner)).await;
    let endpoints = [
        ("POST", "/api/partners".to_owned()),
        ("GET", format!("/api/partners/{partner}")),
        ("PATCH", format!("/api/partners/{partner}")),
        ("GET", format!("/api/partners/{partner}/commissions")),
        ("GET", format!("/api/partners/{partner}/events")),
        ("POST", "/api/payments".to_owned()),
        ("POST", format!("/api/payments/{payment}/verify")),
        ("POST", format!("/api/payments/{payment}/refund")),
        ("GET", "/api/notifications".to_owned()),
        ("POST", "/api/notifications/1/read".to_owned()),
    ];
    for (method, path) in endpoints {
        let request = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .json(&json!({"name": "x"}));
        let response = request.send().await.unwrap();
        let body = problem(response, 401, "unauthorized").await;
        assert!(
            body["detail"].as_str().unwrap().contains("Bearer"),
            "{method} {path}: {body}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE status = 'pending'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM partners").await, 1);
}

/// Collects what the server logs, for the redaction test.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_and_signatures_never_reach_the_logs() {
    // A current-thread test runtime runs the server's tasks on this thread,
    // so a thread-default subscriber sees every log line the server writes.
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let token = partner_token(partner);
    let path = format!("/api/partners/{partner}?token={token}");
    assert_eq!(app.get_as(&token, &path).await.status(), 200);
    let body =
        json!({"id": "evt_log", "type": "customer.created", "data": {"object": {}}}).to_string();
    let signature = crate::callers::stripe_signature(crate::helpers::STRIPE_SECRET, now(), &body);
    let response = app
        .http
        .post(app.url("/webhooks/stripe"))
        .header("Stripe-Signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("finished processing request"),
        "the requests were logged: {text}"
    );
    assert!(
        text.contains(&format!("/api/partners/{partner}")),
        "with their path: {text}"
    );
    let v1 = signature.split_once("v1=").unwrap().1;
    let jwt_signature = token.rsplit('.').next().unwrap();
    for secret in [
        token.as_str(),
        jwt_signature,
        v1,
        crate::helpers::STRIPE_SECRET,
        JWT_SECRET,
    ] {
        assert!(
            !text.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
}
