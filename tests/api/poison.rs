//! Poison inputs: what a provider or a REST caller can send that PostgreSQL
//! cannot take (a NUL character, a number out of range, no id at all). A REST
//! caller gets a 422 naming the field; a provider gets 200, the event is
//! recorded as rejected with its reason (`rejected_webhook_events`), and
//! nothing else changes, so it is not retried for days against a 500.

use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, problem},
    helpers::{create_partner, spawn_app, TestApp},
};

async fn nothing_but_events(app: &TestApp) {
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 0);
}

fn stripe_succeeded(id: &str, amount: Value, partner: Value) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","type":"payment_intent.succeeded","created":1722000000,"data":{{"object":{{"id":"pi_{id}","object":"payment_intent","amount":{amount},"amount_received":{amount},"currency":"ngn","metadata":{{"partner_id":{partner}}}}}}}}}"#
    )
}

#[tokio::test]
async fn amounts_past_what_a_payment_can_hold_are_recorded_not_applied() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let p = json!(partner.to_string());
    // 2^63 - 1 kobo fits the provider's integer but not a payment; 2^63 fits neither.
    for (id, amount, outcome) in [
        ("evt_max", json!(i64::MAX), "invalid_amount"),
        ("evt_over", json!(9_223_372_036_854_775_808u64), "ignored"),
        ("evt_huge", json!(1e300), "ignored"),
    ] {
        let receipt = json(
            app.stripe(&stripe_succeeded(id, amount, p.clone())).await,
            200,
        )
        .await;
        assert_eq!(receipt["outcome"], outcome, "{id}");
    }
    nothing_but_events(&app).await;
    assert_eq!(app.count("SELECT count(*) FROM webhook_events").await, 3);
}

#[tokio::test]
async fn a_nul_character_in_a_webhook_is_rejected_and_recorded() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    // The JSON escape \u0000 is valid JSON, and jsonb refuses it.
    let body = stripe_succeeded("evt_nul", json!(5000), json!(format!("{partner}\u{0}")));
    assert!(body.contains("\\u0000"));
    let receipt = json(app.stripe(&body).await, 200).await;
    assert_eq!(receipt["outcome"], "rejected");
    assert!(receipt["rejected_reason"].as_str().unwrap().contains("NUL"));
    let again = json(app.stripe(&body).await, 200).await;
    assert_eq!(again["outcome"], "duplicate");
    nothing_but_events(&app).await;
    let stored: (String, String) = sqlx::query_as(
        "SELECT rejected_reason, payload #>> '{data,object,metadata,partner_id}' FROM rejected_webhook_events",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(stored.0.contains("NUL"));
    assert_eq!(
        stored.1,
        format!("{partner}\u{fffd}"),
        "stored with the NUL replaced"
    );

    // Paystack too, in a key.
    let body = r#"{"event":"charge.success","data":{"reference":"T1","amount":100,"currency":"NGN","metadata":{"a\u0000b":1}}}"#;
    assert_eq!(
        json(app.paystack(body).await, 200).await["outcome"],
        "rejected"
    );
    nothing_but_events(&app).await;
}

#[tokio::test]
async fn events_without_an_id_a_reference_or_json_are_recorded_not_retried() {
    let app = spawn_app().await;
    // A Stripe event with no id cannot be deduplicated: rejected, keyed by its body.
    let no_id = r#"{"object":"event","type":"payment_intent.succeeded","data":{"object":{}}}"#;
    let receipt = json(app.stripe(no_id).await, 200).await;
    assert_eq!(receipt["outcome"], "rejected");
    assert!(receipt["event_id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        json(app.stripe(no_id).await, 200).await["outcome"],
        "duplicate"
    );
    // A Paystack charge with no reference: recorded, nothing to act on.
    let no_reference = r#"{"event":"charge.success","data":{"amount":100,"currency":"NGN"}}"#;
    assert_eq!(
        json(app.paystack(no_reference).await, 200).await["outcome"],
        "ignored"
    );
    // Paystack with no event type at all.
    let no_type = r#"{"data":{"reference":"T1"}}"#;
    assert_eq!(
        json(app.paystack(no_type).await, 200).await["outcome"],
        "rejected"
    );
    // Signed bytes that are not JSON.
    let receipt = json(app.paystack("\u{0}garbage").await, 200).await;
    assert_eq!(receipt["outcome"], "rejected");
    nothing_but_events(&app).await;
    assert_eq!(
        app.count("SELECT count(*) FROM rejected_webhook_events")
            .await,
        3
    );
}

#[tokio::test]
async fn rest_input_postgresql_cannot_store_is_a_422_naming_the_field() {
    let app = spawn_app().await;
    let admin = admin_token();
    let body = problem(
        app.post_as(&admin, "/api/partners", &json!({"name": "Ac\u{0}me"}))
            .await,
        422,
        "invalid-input",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("name"), "{body}");
    let partner = create_partner(&app.db.pool, "Acme", Some("1")).await;
    let body = problem(
        app.post_as(
            &admin,
            "/api/payments",
            &json!({"amount": "1.00", "currency": "NGN", "partner_id": partner, "reference": "x\u{0}"}),
        )
        .await,
        422,
        "invalid-input",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("reference"),
        "{body}"
    );
    problem(
        app.post_as(
            &admin,
            "/api/payments",
            &json!({"amount": "99999999999999999", "currency": "NGN", "partner_id": partner}),
        )
        .await,
        422,
        "invalid-input",
    )
    .await;
    nothing_but_events(&app).await;
}

#[tokio::test]
async fn the_largest_payments_add_up_without_overflowing_a_partners_totals() {
    let app = spawn_app().await;
    let admin = admin_token();
    // Rate 1: the commission is the whole payment, 16 whole digits each.
    let partner = create_partner(&app.db.pool, "Acme", Some("1")).await;
    for _ in 0..2 {
        let payment = json(
            app.post_as(
                &admin,
                "/api/payments",
                &json!({"amount": "9999999999999999.99", "currency": "NGN", "partner_id": partner}),
            )
            .await,
            201,
        )
        .await;
        app.verify(payment["id"].as_i64().unwrap()).await;
    }
    let read = json(
        app.get_as(&admin, &format!("/api/partners/{partner}"))
            .await,
        200,
    )
    .await;
    assert_eq!(read["totals"]["NGN"]["earned"], "19999999999999999.98");
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}
