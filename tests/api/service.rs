//! What operators scrape and integrators read: `/metrics` and `/openapi.json`.

use serde_json::{json, Value};

use crate::{
    callers::json,
    helpers::{create_partner, create_payment, spawn_app},
};

#[tokio::test]
async fn metrics_count_requests_webhook_outcomes_and_commissions() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;
    app.verify(payment).await;
    let event =
        json!({"id": "evt_m", "type": "customer.created", "data": {"object": {}}}).to_string();
    json(app.stripe(&event).await, 200).await;

    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            r#"http_requests_total{method="POST",route="/api/payments/{id}/verify",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"webhook_events_total{provider="stripe",outcome="ignored"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"commissions_total{kind="earned"}"#),
        "{text}"
    );

    // Made-up methods are one label value, not one each.
    for method in ["FOOBAR", "XYZZY1", "XYZZY2"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.http
            .request(method, app.url("/api/partners"))
            .send()
            .await
            .unwrap();
    }
    let text = app.metrics().await;
    assert!(
        !text.contains("XYZZY") && !text.contains("FOOBAR"),
        "{text}"
    );
    assert!(text.contains(r#"method="other""#), "{text}");
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/partners", "post"),
        ("/api/partners/{id}", "get"),
        ("/api/partners/{id}", "patch"),
        ("/api/partners/{id}/commissions", "get"),
        ("/api/partners/{id}/events", "get"),
        ("/api/payments", "post"),
        ("/api/payments/{id}/verify", "post"),
        ("/api/payments/{id}/refund", "post"),
        ("/api/notifications", "get"),
        ("/api/notifications/{id}/read", "post"),
        ("/webhooks/stripe", "post"),
        ("/webhooks/paystack", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is documented"
        );
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn a_node_refuses_to_start_on_an_empty_short_or_placeholder_jwt_secret() {
    use commissions::{config::Secret, startup::Application};

    let db = crate::helpers::TestDatabase::new().await;
    for (secret, expected) in [
        ("", "JWT_SECRET is 0 bytes long"),
        ("short-secret", "JWT_SECRET is 12 bytes long"),
        (
            "local-compose-only-insecure-jwt-secret-change-me",
            "placeholder",
        ),
        (
            "changeme-changeme-changeme-changeme-changeme",
            "placeholder",
        ),
    ] {
        let mut config = crate::helpers::serve_config(&db.service_url);
        config.jwt_secret = Secret::new(secret);
        let error = Application::build(config)
            .await
            .err()
            .expect("the node refuses to start")
            .to_string();
        assert!(error.contains(expected), "{secret:?}: {error}");
        assert!(
            secret.is_empty() || !error.contains(secret),
            "the message never repeats the secret: {error}"
        );
    }
    // 32 random-looking bytes are accepted.
    let mut config = crate::helpers::serve_config(&db.service_url);
    config.jwt_secret = Secret::new("0123456789abcdef0123456789abcdef");
    assert!(Application::build(config).await.is_ok());
}

#[tokio::test]
async fn metrics_can_live_on_an_address_of_their_own() {
    use commissions::startup::Application;

    let db = crate::helpers::TestDatabase::new().await;
    let mut config = crate::helpers::serve_config(&db.service_url);
    config.metrics_bind_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = Application::build(config).await.unwrap();
    let public = format!("http://{}", app.local_addr());
    let private = format!("http://{}", app.metrics_addr().expect("a metrics address"));
    let server = tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::new();

    let on_public = http.get(format!("{public}/metrics")).send().await.unwrap();
    assert_eq!(on_public.status(), 404, "not on the public address");
    assert_eq!(
        http.get(format!("{public}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let on_private = http.get(format!("{private}/metrics")).send().await.unwrap();
    assert_eq!(on_private.status(), 200);
    assert!(on_private
        .text()
        .await
        .unwrap()
        .contains("http_requests_total"));
    assert_eq!(
        http.get(format!("{private}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the metrics address serves metrics only"
    );
    server.abort();
}
