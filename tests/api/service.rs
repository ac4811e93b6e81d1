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
