//! Provider webhooks, signed in the test exactly as Stripe and Paystack sign:
//! a good event verifies or refunds, a bad, stale, altered or missing
//! signature changes nothing, and redeliveries (even concurrent) count once.

use commissions::config::Secret;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::{
    callers::{json, now, paystack_signature, problem, stripe_signature},
    helpers::{
        create_partner, serve_config, spawn_app, spawn_app_with, TestApp, TestDatabase,
        PAYSTACK_SECRET, STRIPE_SECRET,
    },
};

fn stripe_succeeded(
    event_id: &str,
    intent: &str,
    amount: i64,
    partner: impl Into<Value>,
) -> String {
    stripe_succeeded_in(event_id, intent, amount, "ngn", partner)
}

fn stripe_succeeded_in(
    event_id: &str,
    intent: &str,
    amount_minor: i64,
    currency: &str,
    partner: impl Into<Value>,
) -> String {
    json!({
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": intent, "object": "payment_intent", "amount": amount_minor,
            "amount_received": amount_minor, "currency": currency,
            "metadata": {"partner_id": partner.into()}
        }}
    })
    .to_string()
}

fn stripe_refunded(event_id: &str, intent: &str) -> String {
    json!({
        "id": event_id, "object": "event", "type": "charge.refunded",
        "data": {"object": {"id": "ch_1", "object": "charge", "payment_intent": intent, "refunded": true, "amount_refunded": 1000000}}
    })
    .to_string()
}

async fn nothing_written(app: &TestApp) {
    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        0,
        "no payment"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM commissions").await,
        0,
        "no commission"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_events").await,
        0,
        "no event recorded"
    );
}

#[tokio::test]
async fn a_signed_stripe_payment_verifies_and_a_refund_reverses() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;

    let receipt = json(
        app.stripe(&stripe_succeeded(
            "evt_1",
            "pi_1",
            1_000_000,
            partner.to_string(),
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(receipt["outcome"], "verified");
    let (amount, status, provider, reference): (String, String, String, String) = sqlx::query_as(
        "SELECT money_text(amount, currency), status::text, provider, provider_reference FROM payments",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            amount.as_str(),
            status.as_str(),
            provider.as_str(),
            reference.as_str()
        ),
        ("10000.00", "verified", "stripe", "pi_1")
    );
    let commission: String = sqlx::query_scalar(
        "SELECT money_text(amount, currency) FROM commissions WHERE partner_id = $1",
    )
    .bind(partner)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(commission, "200.00");

    let receipt = json(app.stripe(&stripe_refunded("evt_2", "pi_1")).await, 200).await;
    assert_eq!(receipt["outcome"], "refunded");
    assert_eq!(
        app.count("SELECT count(*) FROM commissions WHERE kind = 'reversed'")
            .await,
        1
    );
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM webhook_events ORDER BY received_at")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(outcomes, ["verified", "refunded"]);
}

#[tokio::test]
async fn bad_stale_altered_or_missing_stripe_signatures_change_nothing() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let body = stripe_succeeded("evt_1", "pi_1", 5000, partner);
    let send = |signature: Option<String>, body: String| {
        let mut request = app
            .http
            .post(app.url("/webhooks/stripe"))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        async move { request.send().await.unwrap() }
    };

    let wrong_secret = stripe_signature("whsec_not_ours", now(), &body);
    problem(
        send(Some(wrong_secret), body.clone()).await,
        400,
        "invalid-signature",
    )
    .await;
    let stale = stripe_signature(STRIPE_SECRET, now() - 301, &body);
    let detail = problem(
        send(Some(stale), body.clone()).await,
        400,
        "invalid-signature",
    )
    .await;
    assert!(detail["detail"].as_str().unwrap().contains("300"));
    let signed = stripe_signature(STRIPE_SECRET, now(), &body);
    let altered = body.replace("5000", "9000000");
    problem(send(Some(signed), altered).await, 400, "invalid-signature").await;
    problem(send(None, body.clone()).await, 400, "invalid-signature").await;
    problem(
        send(Some("garbage".into()), body.clone()).await,
        400,
        "invalid-signature",
    )
    .await;
    nothing_written(&app).await;

    // Several v1 values (a secret being rolled): one matching is enough.
    let t = now();
    let good = stripe_signature(STRIPE_SECRET, t, &body);
    let v1 = good.split_once("v1=").unwrap().1;
    let header = format!("t={t},v1={},v1={v1}", "ab".repeat(32));
    json(send(Some(header), body.clone()).await, 200).await;
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 1);
}

#[tokio::test]
async fn the_same_event_delivered_twenty_times_at_once_counts_once() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let body = stripe_succeeded("evt_same", "pi_same", 250_000, partner);
    let receipts = join_all((0..20).map(|_| app.stripe(&body))).await;
    let mut outcomes = Vec::new();
    for receipt in receipts {
        outcomes.push(
            json(receipt, 200).await["outcome"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    outcomes.sort();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "verified").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| *o == "duplicate").count(),
        19,
        "{outcomes:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_events").await, 1);
    assert_eq!(app.count("SELECT last_seq FROM partner_streams").await, 1);

    // And Paystack, the same.
    let body = paystack_charge("ref-same", 100_000, json!({"partner_id": partner}));
    let receipts = join_all((0..20).map(|_| app.paystack(&body))).await;
    for receipt in receipts {
        assert_eq!(receipt.status(), 200);
    }
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE provider = 'paystack'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 2);
}

#[tokio::test]
async fn unknown_partners_and_unsupported_events_are_acknowledged_and_recorded() {
    let app = spawn_app().await;
    let receipt = json(
        app.stripe(&stripe_succeeded("evt_1", "pi_1", 5000, "424242"))
            .await,
        200,
    )
    .await;
    assert_eq!(
        (&receipt["outcome"], &receipt["parked_reason"]),
        (&json!("parked"), &json!("unknown_partner"))
    );
    let receipt = json(
        app.stripe(&stripe_succeeded("evt_2", "pi_2", 5000, "not-a-number"))
            .await,
        200,
    )
    .await;
    assert_eq!(receipt["outcome"], "invalid_partner");
    let other =
        json!({"id": "evt_3", "type": "customer.created", "data": {"object": {}}}).to_string();
    assert_eq!(
        json(app.stripe(&other).await, 200).await["outcome"],
        "ignored"
    );
    let refund_of_unknown = stripe_refunded("evt_4", "pi_nope");
    assert_eq!(
        json(app.stripe(&refund_of_unknown).await, 200).await["parked_reason"],
        "unknown_payment"
    );

    let recorded: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT event_id, outcome, parked_reason FROM webhook_events ORDER BY event_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let expected = [
        ("evt_1", "parked", Some("unknown_partner")),
        ("evt_2", "invalid_partner", None),
        ("evt_3", "ignored", None),
        ("evt_4", "parked", Some("unknown_payment")),
    ];
    assert_eq!(
        recorded,
        expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.map(str::to_owned)))
    );
    assert_eq!(app.count("SELECT count(*) FROM parked_events").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 0);

    // A signed body that is not JSON can never apply: recorded as rejected
    // and answered 200, so the provider stops retrying (tests/api/poison.rs).
    let receipt = json(app.stripe("not json").await, 200).await;
    assert_eq!(receipt["outcome"], "rejected");
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 0);
}

fn paystack_charge(reference: &str, kobo: i64, metadata: Value) -> String {
    json!({
        "event": "charge.success",
        "data": {"id": 302961, "status": "success", "reference": reference, "amount": kobo, "currency": "NGN", "metadata": metadata}
    })
    .to_string()
}

#[tokio::test]
async fn paystack_charge_success_verifies_and_refund_processed_reverses() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", Some("0.05")).await;

    let receipt = json(
        app.paystack(&paystack_charge(
            "T123",
            250_000,
            json!({"partner_id": partner.to_string()}),
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(receipt["outcome"], "verified");
    assert_eq!(receipt["event_id"], "charge.success:T123");
    let commission: String =
        sqlx::query_scalar("SELECT money_text(amount, currency) FROM commissions")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(commission, "125.00", "250000 kobo = 2500.00 NGN at 5%");

    // A redelivery is a 200 that changes nothing.
    let again = json(
        app.paystack(&paystack_charge(
            "T123",
            250_000,
            json!({"partner_id": partner}),
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(again["outcome"], "duplicate");
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 1);

    let refund = paystack_refund("T123", "132013318360", json!("250000"));
    assert_eq!(
        json(app.paystack(&refund).await, 200).await["outcome"],
        "refunded"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE status = 'refunded'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM commissions WHERE kind = 'reversed'")
            .await,
        1
    );
}

/// `refund.processed` as Paystack's docs show it: no event id, the refund's
/// `refund_reference`, and `amount` in kobo as a string.
fn paystack_refund(transaction: &str, refund_reference: &str, amount: Value) -> String {
    json!({
        "event": "refund.processed",
        "data": {"status": "processed", "transaction_reference": transaction, "refund_reference": refund_reference,
                 "amount": amount, "currency": "NGN", "processor": "mpgs_zen",
                 "customer": {"first_name": "Damilola", "last_name": "Kwabena", "email": "damilola@email.com"},
                 "integration": 412829, "domain": "live"}
    })
    .to_string()
}

#[tokio::test]
async fn two_partial_paystack_refunds_of_one_transaction_each_reverse_their_share() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    json(
        app.paystack(&paystack_charge(
            "T9",
            100_000,
            json!({"partner_id": partner}),
        ))
        .await,
        200,
    )
    .await;
    // 1,000.00 NGN earns 20.00. Two refunds of the same amount are two
    // refunds (told apart by their own reference), each counted once.
    let first = paystack_refund("T9", "RF-1", json!("40000"));
    assert_eq!(
        json(app.paystack(&first).await, 200).await["outcome"],
        "refunded"
    );
    let second = paystack_refund("T9", "RF-2", json!(40000));
    assert_eq!(
        json(app.paystack(&second).await, 200).await["outcome"],
        "refunded"
    );
    assert_eq!(
        json(app.paystack(&first).await, 200).await["outcome"],
        "duplicate"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM payments WHERE status = 'verified' AND refunded_amount = 800"
        )
        .await,
        1
    );
    let last = paystack_refund("T9", "RF-3", json!("20000"));
    assert_eq!(
        json(app.paystack(&last).await, 200).await["outcome"],
        "refunded"
    );
    let reversed: Vec<String> = sqlx::query_scalar(
        "SELECT money_text(amount, currency) FROM commissions WHERE kind = 'reversed' ORDER BY id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(reversed, ["8.00", "8.00", "4.00"]);
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE status = 'refunded'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn bad_altered_or_missing_paystack_signatures_change_nothing() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let body = paystack_charge("T1", 10_000, json!({"partner_id": partner}));
    let send = |signature: Option<String>, body: String| {
        let mut request = app
            .http
            .post(app.url("/webhooks/paystack"))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-paystack-signature", signature);
        }
        async move { request.send().await.unwrap() }
    };
    problem(
        send(Some(paystack_signature("sk_not_ours", &body)), body.clone()).await,
        400,
        "invalid-signature",
    )
    .await;
    let altered = body.replace("10000", "99999999");
    problem(
        send(Some(paystack_signature(PAYSTACK_SECRET, &body)), altered).await,
        400,
        "invalid-signature",
    )
    .await;
    problem(send(None, body.clone()).await, 400, "invalid-signature").await;
    problem(
        send(Some("zz-not-hex".into()), body.clone()).await,
        400,
        "invalid-signature",
    )
    .await;
    nothing_written(&app).await;
}

#[tokio::test]
async fn an_unconfigured_webhook_is_503_and_a_huge_body_413() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| {
        // Unset, and set but empty: both refuse, never check against an empty key.
        config.stripe_webhook_secret = None;
        config.paystack_secret_key = Some(Secret::new(""));
    })
    .await;
    problem(
        app.stripe(&stripe_succeeded("evt_1", "pi_1", 5000, 1))
            .await,
        503,
        "unavailable",
    )
    .await;
    problem(
        app.paystack(&paystack_charge("T1", 5000, json!({}))).await,
        503,
        "unavailable",
    )
    .await;

    let app = spawn_app().await;
    let huge = "x".repeat(10 * 1024 * 1024);
    problem(app.stripe(&huge).await, 413, "payload-too-large").await;
    problem(app.paystack(&huge).await, 413, "payload-too-large").await;
    nothing_written(&app).await;
}

#[tokio::test]
async fn redeliveries_spread_over_two_nodes_count_once() {
    let app = spawn_app().await;
    // A second node on the same database, as behind a load balancer.
    let second = commissions::startup::Application::build(serve_config(&app.db.service_url))
        .await
        .unwrap();
    let second_base = format!("http://{}", second.local_addr());
    let node = tokio::spawn(second.run_until(std::future::pending()));

    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let body = paystack_charge("T-two-nodes", 300_000, json!({"partner_id": partner}));
    let signature = paystack_signature(PAYSTACK_SECRET, &body);
    let sends = (0..20).map(|i| {
        let base = if i % 2 == 0 {
            app.base.clone()
        } else {
            second_base.clone()
        };
        let request = app
            .http
            .post(format!("{base}/webhooks/paystack"))
            .header("x-paystack-signature", &signature)
            .body(body.clone());
        async move { request.send().await.unwrap() }
    });
    let mut verified = 0;
    for response in join_all(sends).await {
        if json(response, 200).await["outcome"] == "verified" {
            verified += 1;
        }
    }
    node.abort();
    assert_eq!(verified, 1);
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM commissions").await, 1);
}

#[tokio::test]
async fn every_webhook_outcome_is_recorded_and_only_verified_and_refunded_move_money() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let outcome = |body: String| {
        let app = &app;
        async move {
            let receipt = json(app.stripe(&body).await, 200).await;
            (
                receipt["outcome"].as_str().unwrap().to_owned(),
                receipt["payment_id"].as_i64(),
            )
        }
    };
    let succeeded =
        |event_id: &'static str, intent: &'static str, amount: i64, currency: &'static str| {
            outcome(stripe_succeeded_in(
                event_id,
                intent,
                amount,
                currency,
                partner.to_string(),
            ))
        };

    // Amounts arrive in minor units, converted by each currency's own decimals.
    let (verified, jpy) = succeeded("evt_1", "pi_jpy", 2500, "jpy").await;
    assert_eq!(verified, "verified");
    let (verified, kwd) = succeeded("evt_2", "pi_kwd", 12345, "kwd").await;
    assert_eq!(verified, "verified");
    let amounts: Vec<String> = sqlx::query_scalar(
        "SELECT money_text(amount, currency) FROM payments WHERE id = ANY($1) ORDER BY id",
    )
    .bind(vec![jpy.unwrap(), kwd.unwrap()])
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(amounts, ["2500", "12.345"]);

    // Nothing to act on: recorded, no payment.
    assert_eq!(
        succeeded("evt_3", "pi_x", 500, "xyz").await,
        ("parked".to_owned(), None)
    );
    assert_eq!(
        succeeded("evt_4", "pi_y", 500, "no").await,
        ("parked".to_owned(), None)
    );
    assert_eq!(
        succeeded("evt_5", "pi_z", 0, "ngn").await,
        ("invalid_amount".to_owned(), None)
    );

    // Another event for a payment already verified, refunded, or refunded twice.
    assert_eq!(
        succeeded("evt_6", "pi_jpy", 2500, "jpy").await,
        ("already_verified".to_owned(), jpy)
    );
    assert_eq!(
        outcome(stripe_refunded("evt_7", "pi_jpy")).await,
        ("refunded".to_owned(), jpy)
    );
    assert_eq!(
        outcome(stripe_refunded("evt_8", "pi_jpy")).await,
        ("unchanged".to_owned(), jpy)
    );
    assert_eq!(
        succeeded("evt_9", "pi_jpy", 2500, "jpy").await,
        ("already_verified".to_owned(), jpy)
    );

    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM webhook_events ORDER BY received_at, event_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        [
            "verified",
            "verified",
            "parked",
            "parked",
            "invalid_amount",
            "already_verified",
            "refunded",
            "unchanged",
            "already_verified"
        ]
    );
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 2);
    // JPY 2500 earns 50 and is reversed; KWD 12.345 earns 0.247 (2%, 3 decimals).
    let ledger: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind::text, money_text(amount, currency) FROM commissions ORDER BY id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        ledger,
        [("earned", "50"), ("earned", "0.247"), ("reversed", "50")]
            .map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
}
