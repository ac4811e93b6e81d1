//! Engine v2's money rules through the real path: events shaped and signed as
//! Stripe and Paystack send them (fields as in their API references), a real
//! node, real sockets. Every scenario ends with the same three checks: the
//! ledger says what the rule says, the audit view is empty, and the partner's
//! socket and an admin socket saw each event once, in order, with nothing
//! missing (a last, known event proves nothing extra arrived before it).

use serde_json::{json, Value};

use crate::{
    callers::{json, problem},
    helpers::{create_partner, create_payment, spawn_app, TestApp},
    realtime::{admin_token, events, open, partner_token, seqs, Ws},
    streams::check_streams,
};

// ---------------------------------------------------------------------------
// Payloads, as the providers send them.
// ---------------------------------------------------------------------------

pub fn stripe_event(id: &str, event_type: &str, created: i64, object: Value) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "created": created,
        "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type, "data": {"object": object}
    })
    .to_string()
}

fn stripe_succeeded(id: &str, intent: &str, amount: i64, currency: &str, partner: Value) -> String {
    stripe_event(
        id,
        "payment_intent.succeeded",
        1_722_000_000,
        json!({"id": intent, "object": "payment_intent", "amount": amount, "amount_received": amount,
               "currency": currency, "status": "succeeded", "metadata": {"partner_id": partner}}),
    )
}

/// `charge.refunded`: the charge with its cumulative `amount_refunded`;
/// `refunded` is true only once all of it is refunded.
fn stripe_refunded(
    id: &str,
    intent: &str,
    amount: i64,
    amount_refunded: i64,
    created: i64,
) -> String {
    stripe_event(
        id,
        "charge.refunded",
        created,
        json!({"id": format!("ch_{intent}"), "object": "charge", "amount": amount, "amount_captured": amount,
               "amount_refunded": amount_refunded, "refunded": amount_refunded == amount,
               "captured": true, "paid": true, "disputed": false, "status": "succeeded",
               "currency": "usd", "payment_intent": intent, "created": 1_722_000_000, "metadata": {}}),
    )
}

fn stripe_dispute(
    id: &str,
    event_type: &str,
    intent: &str,
    amount: i64,
    status: &str,
    created: i64,
) -> String {
    stripe_event(
        id,
        event_type,
        created,
        json!({"id": format!("dp_{intent}"), "object": "dispute", "amount": amount, "currency": "usd",
               "charge": format!("ch_{intent}"), "payment_intent": intent, "status": status,
               "reason": "fraudulent", "is_charge_refundable": false, "created": 1_722_000_100,
               "livemode": false, "metadata": {}, "balance_transactions": []}),
    )
}

fn paystack_charge(reference: &str, kobo: i64, partner: i64) -> String {
    json!({"event": "charge.success", "data": {
        "id": 302961, "domain": "live", "status": "success", "reference": reference, "amount": kobo,
        "gateway_response": "Approved by Financial Institution", "paid_at": "2026-11-30T21:10:19.000Z",
        "created_at": "2026-11-30T21:09:56.000Z", "channel": "card", "currency": "NGN",
        "metadata": {"partner_id": partner.to_string()}, "fees": null, "plan": {}}})
    .to_string()
}

fn paystack_dispute(
    event: &str,
    dispute_id: i64,
    reference: &str,
    kobo: i64,
    refund: i64,
    resolution: Value,
) -> String {
    let resolved = resolution.is_string();
    json!({"event": event, "data": {
        "id": dispute_id, "refund_amount": refund, "currency": "NGN",
        "status": if resolved { "resolved" } else { "awaiting-merchant-feedback" },
        "resolution": resolution, "domain": "live",
        "transaction": {"id": 896467688, "domain": "live", "status": if resolved { "reversed" } else { "success" },
                        "reference": reference, "amount": kobo, "currency": "NGN", "metadata": ""},
        "transaction_reference": null, "category": "chargeback",
        "created_at": "2026-12-01T13:46:57.000Z",
        "updated_at": if resolved { "2026-12-01T18:00:02.000Z" } else { "2026-12-01T13:46:57.000Z" }}})
    .to_string()
}

// ---------------------------------------------------------------------------
// The harness every scenario ends with.
// ---------------------------------------------------------------------------

pub struct Watched {
    pub app: TestApp,
    pub partner: i64,
    partner_ws: Ws,
    admin_ws: Ws,
}

pub async fn watched(rate: Option<&str>) -> Watched {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", rate).await;
    let (partner_ws, _) = open(app.address, &format!("token={}", partner_token(partner))).await;
    let (admin_ws, _) = open(app.address, &format!("token={}", admin_token())).await;
    Watched {
        app,
        partner,
        partner_ws,
        admin_ws,
    }
}

impl Watched {
    /// `payment_intent.succeeded` for `pi_1`, attributed to the watched partner.
    async fn stripe_paid(&self, amount_minor: i64, currency: &str) -> Value {
        let body = stripe_succeeded(
            "evt_s",
            "pi_1",
            amount_minor,
            currency,
            json!(self.partner.to_string()),
        );
        self.stripe(&body).await
    }

    pub async fn stripe(&self, body: &str) -> Value {
        json(self.app.stripe(body).await, 200).await
    }

    pub async fn paystack(&self, body: &str) -> Value {
        json(self.app.paystack(body).await, 200).await
    }

    /// The partner's ledger for one payment: (kind, amount) in order.
    /// The ledger of the payment with this provider reference.
    pub async fn ledger(&self, reference: &str) -> Vec<(String, String)> {
        let payment: i64 =
            sqlx::query_scalar("SELECT id FROM payments WHERE provider_reference = $1")
                .bind(reference)
                .fetch_one(&self.app.db.pool)
                .await
                .unwrap();
        self.ledger_by_id(payment).await
    }

    async fn totals(&self) -> Value {
        let partner = json(
            self.app
                .get_as(&admin_token(), &format!("/api/partners/{}", self.partner))
                .await,
            200,
        )
        .await;
        partner["totals"].clone()
    }

    /// Every event the log holds went to both sockets once and in order, and
    /// nothing else did. Returns the partner's events (without the sentinel).
    pub async fn check_streams(mut self) -> Vec<Value> {
        check_streams(
            &self.app,
            self.partner,
            &mut self.partner_ws,
            &mut self.admin_ws,
        )
        .await
    }
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect()
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_partial_stripe_refunds_then_a_full_one_reverse_the_exact_remainder() {
    let w = watched(None).await;
    // 333.33 USD at 2% earns 6.67 (6.6666 rounded half away from zero).
    let r = w.stripe_paid(33_333, "usd").await;
    assert_eq!(r["outcome"], "verified");
    // Cumulative totals: 100.00, 200.00, then all of it.
    for (id, total, expected) in [
        ("evt_r1", 10_000, "refunded"),
        ("evt_r2", 20_000, "refunded"),
        ("evt_r3", 33_333, "refunded"),
    ] {
        let r = w
            .stripe(&stripe_refunded(id, "pi_1", 33_333, total, 1_722_000_100))
            .await;
        assert_eq!(r["outcome"], expected, "{id}");
    }
    // round(6.67 * 100/333.33) = 2.00, round(6.67 * 200/333.33) = 4.00, and
    // the full refund reverses exactly the 2.67 that is left.
    assert_eq!(
        w.ledger("pi_1").await,
        pairs(&[
            ("earned", "6.67"),
            ("reversed", "2.00"),
            ("reversed", "2.00"),
            ("reversed", "2.67")
        ])
    );
    assert_eq!(
        w.app.count("SELECT count(*) FROM payments WHERE status = 'refunded' AND refunded_amount = amount").await,
        1
    );
    assert_eq!(w.totals().await["USD"]["pending"], "0.00");
    assert_eq!(w.totals().await["USD"]["reversed"], "6.67");
    let got = w.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.reversed",
            "commission.reversed",
            "commission.reversed"
        ]
    );
    assert_eq!(got[3]["data"]["amount"], "2.67");
    assert_eq!(got[3]["data"]["totals"]["USD"]["reversed"], "6.67");
}

#[tokio::test]
async fn partial_refunds_arriving_in_reverse_order_count_the_larger_total_once() {
    let w = watched(None).await;
    w.stripe_paid(10_000, "usd").await;
    // The later refund (60.00 in all) arrives first, then the older 30.00.
    let r = w
        .stripe(&stripe_refunded(
            "evt_r2",
            "pi_1",
            10_000,
            6_000,
            1_722_000_200,
        ))
        .await;
    assert_eq!(r["outcome"], "refunded");
    let r = w
        .stripe(&stripe_refunded(
            "evt_r1",
            "pi_1",
            10_000,
            3_000,
            1_722_000_100,
        ))
        .await;
    assert_eq!(
        r["outcome"], "unchanged",
        "an older, smaller total changes nothing"
    );
    assert_eq!(
        w.ledger("pi_1").await,
        pairs(&[("earned", "2.00"), ("reversed", "1.20")])
    );
    assert_eq!(
        w.app
            .count(
                "SELECT count(*) FROM payments WHERE status = 'verified' AND refunded_amount = 60"
            )
            .await,
        1
    );
    let got = w.check_streams().await;
    assert_eq!(types(&got), ["commission.created", "commission.reversed"]);
}

#[tokio::test]
async fn a_refund_that_arrives_before_its_payment_is_parked_then_applied_with_it() {
    let w = watched(None).await;
    let r = w
        .stripe(&stripe_refunded(
            "evt_r",
            "pi_1",
            10_000,
            5_000,
            1_722_000_100,
        ))
        .await;
    assert_eq!(
        (r["outcome"].as_str(), r["parked_reason"].as_str()),
        (Some("parked"), Some("unknown_payment"))
    );
    assert_eq!(w.app.count("SELECT count(*) FROM parked_events").await, 1);
    assert_eq!(w.app.count("SELECT count(*) FROM payments").await, 0);

    let r = w.stripe_paid(10_000, "usd").await;
    assert_eq!(r["outcome"], "verified");
    // Applied in the transaction that recorded the payment: never earned in full alone.
    assert_eq!(
        w.ledger("pi_1").await,
        pairs(&[("earned", "2.00"), ("reversed", "1.00")])
    );
    assert_eq!(w.app.count("SELECT count(*) FROM parked_events").await, 0);
    let applied: (String, Option<String>, bool) = sqlx::query_as(
        "SELECT outcome, parked_reason, applied_at IS NOT NULL FROM webhook_events WHERE event_id = 'evt_r'",
    )
    .fetch_one(&w.app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        applied,
        ("refunded".into(), Some("unknown_payment".into()), true)
    );
    let got = w.check_streams().await;
    assert_eq!(types(&got), ["commission.created", "commission.reversed"]);
    assert_eq!(got[1]["data"]["totals"]["USD"]["pending"], "1.00");
}

#[tokio::test]
async fn a_stripe_dispute_holds_then_reverses_when_funds_are_withdrawn_and_reinstates_when_won() {
    let w = watched(None).await;
    w.stripe_paid(10_000, "usd").await;
    let steps = [
        (
            "evt_d1",
            "charge.dispute.created",
            "needs_response",
            "dispute_updated",
        ),
        (
            "evt_d2",
            "charge.dispute.funds_withdrawn",
            "needs_response",
            "dispute_updated",
        ),
        (
            "evt_d3",
            "charge.dispute.funds_reinstated",
            "won",
            "dispute_updated",
        ),
        ("evt_d4", "charge.dispute.closed", "won", "unchanged"),
        // A late `created` after the dispute ended reopens nothing.
        (
            "evt_d5",
            "charge.dispute.updated",
            "under_review",
            "unchanged",
        ),
    ];
    for (id, event_type, status, expected) in steps {
        let r = w
            .stripe(&stripe_dispute(
                id,
                event_type,
                "pi_1",
                10_000,
                status,
                1_722_000_300,
            ))
            .await;
        assert_eq!(r["outcome"], expected, "{event_type}");
    }
    assert_eq!(
        w.ledger("pi_1").await,
        pairs(&[
            ("earned", "2.00"),
            ("held", "2.00"),
            ("released", "2.00"),
            ("reversed", "2.00"),
            ("reinstated", "2.00"),
        ])
    );
    let totals = w.totals().await;
    assert_eq!(
        totals["USD"],
        json!({"earned": "2.00", "pending": "2.00", "approved": "0.00", "balance": "0.00", "in_payout": "0.00", "paid": "0.00", "reversed": "0.00", "held": "0.00"})
    );
    let got = w.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.held",
            "commission.released",
            "commission.reversed",
            "commission.reinstated"
        ]
    );
    assert_eq!(got[1]["data"]["totals"]["USD"]["held"], "2.00");
}

#[tokio::test]
async fn a_lost_paystack_dispute_reverses_in_proportion_to_the_amount_charged_back() {
    let w = watched(None).await;
    // 5,000.00 NGN earns 100.00.
    let r = w
        .paystack(&paystack_charge("T-1", 500_000, w.partner))
        .await;
    assert_eq!(r["outcome"], "verified");
    let create = paystack_dispute(
        "charge.dispute.create",
        358950,
        "T-1",
        500_000,
        500_000,
        Value::Null,
    );
    assert_eq!(w.paystack(&create).await["outcome"], "dispute_updated");
    let remind = paystack_dispute(
        "charge.dispute.remind",
        358950,
        "T-1",
        500_000,
        500_000,
        Value::Null,
    );
    assert_eq!(w.paystack(&remind).await["outcome"], "unchanged");
    assert_eq!(w.paystack(&create).await["outcome"], "duplicate");
    assert_eq!(w.totals().await["NGN"]["held"], "100.00");
    // Lost for 1,500.00 of the 5,000.00: 30% of the commission is reversed.
    let resolve = paystack_dispute(
        "charge.dispute.resolve",
        358950,
        "T-1",
        500_000,
        150_000,
        json!("merchant-accepted"),
    );
    let r = w.paystack(&resolve).await;
    assert_eq!(r["outcome"], "dispute_updated");
    assert_eq!(r["event_id"], "charge.dispute.resolve:358950");
    assert_eq!(
        w.ledger("T-1").await,
        pairs(&[
            ("earned", "100.00"),
            ("held", "100.00"),
            ("released", "100.00"),
            ("reversed", "30.00")
        ])
    );
    assert_eq!(
        w.totals().await["NGN"],
        json!({"earned": "100.00", "pending": "70.00", "approved": "0.00", "balance": "0.00", "in_payout": "0.00", "paid": "0.00", "reversed": "30.00", "held": "0.00"})
    );
    let got = w.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.held",
            "commission.released",
            "commission.reversed"
        ]
    );
    assert_eq!(got[3]["data"]["reason"], "dispute");
}

#[tokio::test]
async fn an_event_for_a_partner_created_later_is_parked_then_reapplied_by_an_operator() {
    let w = watched(None).await;
    // The next partner id, before that partner exists: created a minute later.
    let late_id = w.partner + 1;
    let r = w
        .stripe(&stripe_succeeded(
            "evt_s",
            "pi_1",
            10_000,
            "usd",
            json!(late_id.to_string()),
        ))
        .await;
    assert_eq!(
        (r["outcome"].as_str(), r["parked_reason"].as_str()),
        (Some("parked"), Some("unknown_partner"))
    );
    let r = w
        .stripe(&stripe_refunded(
            "evt_r",
            "pi_1",
            10_000,
            2_500,
            1_722_000_100,
        ))
        .await;
    assert_eq!(r["parked_reason"], "unknown_payment");

    // Re-applying before the partner exists changes nothing.
    let report = json(
        w.app
            .post_as(&admin_token(), "/api/parked-events/reapply", &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        (report["applied"].as_i64(), report["still_parked"].as_i64()),
        (Some(0), Some(2))
    );
    let listed = json(
        w.app.get_as(&admin_token(), "/api/parked-events").await,
        200,
    )
    .await;
    assert_eq!(listed["events"].as_array().unwrap().len(), 2);
    problem(
        w.app
            .get_as(&partner_token(w.partner), "/api/parked-events")
            .await,
        403,
        "forbidden",
    )
    .await;

    let created = json(
        w.app
            .post_as(
                &admin_token(),
                "/api/partners",
                &json!({"name": "Late Partner"}),
            )
            .await,
        201,
    )
    .await;
    assert_eq!(created["id"], late_id);
    let (mut late_ws, _) = open(w.app.address, &format!("token={}", partner_token(late_id))).await;

    let report = json(
        w.app
            .post_as(&admin_token(), "/api/parked-events/reapply", &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        (report["applied"].as_i64(), report["still_parked"].as_i64()),
        (Some(2), Some(0)),
        "{report}"
    );
    let outcomes: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["verified", "refunded"]);
    assert_eq!(
        w.ledger("pi_1").await,
        pairs(&[("earned", "2.00"), ("reversed", "0.50")])
    );
    let late = events(&mut late_ws, 2).await;
    assert_eq!(seqs(&late), [1, 2]);
    assert_eq!(types(&late), ["commission.created", "commission.reversed"]);
    assert_eq!(w.app.count("SELECT count(*) FROM parked_events").await, 0);
    assert_eq!(
        w.app.count("SELECT count(*) FROM commission_audit").await,
        0
    );
}

#[tokio::test]
async fn an_unsupported_currency_parks_until_an_operator_adds_it() {
    let w = watched(None).await;
    let r = w.stripe_paid(10_000, "isk").await;
    assert_eq!(r["parked_reason"], "unsupported_currency");
    let client = w.app.db.connect().await;
    client
        .batch_execute(
            "INSERT INTO currencies (code, minor_units, name) VALUES ('ISK', 0, 'Iceland Krona')",
        )
        .await
        .unwrap();
    let rows = client
        .query("SELECT outcome FROM reapply_parked_events()", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>(),
        ["verified"]
    );
    // 10000 ISK (no minor units) at 2% is 200.
    assert_eq!(w.ledger("pi_1").await, pairs(&[("earned", "200")]));
    let got = w.check_streams().await;
    assert_eq!(types(&got), ["commission.created"]);
}

#[tokio::test]
async fn changing_a_currencys_minor_units_changes_no_existing_payment() {
    let w = watched(None).await;
    let admin = admin_token();
    // 12.345 KWD (3 decimals) earns 0.247.
    let payment = json(
        w.app
            .post_as(
                &admin,
                "/api/payments",
                &json!({"amount": "12.345", "currency": "KWD", "partner_id": w.partner}),
            )
            .await,
        201,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    w.app.verify(payment).await;
    // An operator changes KWD's minor units afterwards.
    let client = w.app.db.connect().await;
    client
        .batch_execute("UPDATE currencies SET minor_units = 2 WHERE code = 'KWD'")
        .await
        .unwrap();

    // A partial refund in the payment's own units (3 decimals) is accepted...
    let partial = json(w.refund(payment, json!({"amount": "2.469"})).await, 200).await;
    assert_eq!(partial["payment"]["refunded_amount"], "2.469");
    assert_eq!(partial["payment"]["amount"], "12.345");
    // round(0.247 * 2.469 / 12.345, 3) = 0.049
    assert_eq!(partial["reversal"]["amount"], "0.049");
    // ... more than is left is refused and changes nothing ...
    let refused = problem(
        w.refund(payment, json!({"amount": "10.000"})).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("would pass the amount paid"),
        "{refused}"
    );
    problem(
        w.refund(payment, json!({"amount": "0.0001"})).await,
        422,
        "invalid-input",
    )
    .await;
    problem(
        w.refund(payment, json!({"amount": "-1"})).await,
        422,
        "invalid-input",
    )
    .await;
    // ... and the rest (no amount) reverses exactly what is left: 0.198.
    let full = json(w.refund(payment, json!({})).await, 200).await;
    assert_eq!(full["payment"]["status"], "refunded");
    assert_eq!(full["reversal"]["amount"], "0.198");
    assert_eq!(
        w.ledger_by_id(payment).await,
        pairs(&[
            ("earned", "0.247"),
            ("reversed", "0.049"),
            ("reversed", "0.198")
        ])
    );
    problem(w.refund(payment, json!({})).await, 409, "conflict").await;
    let got = w.check_streams().await;
    assert_eq!(got[2]["data"]["amount"], "0.198");
}

impl Watched {
    /// `POST /api/payments/{id}/refund` as an admin.
    async fn refund(&self, payment: i64, body: Value) -> reqwest::Response {
        self.app
            .post_as(
                &admin_token(),
                &format!("/api/payments/{payment}/refund"),
                &body,
            )
            .await
    }

    async fn ledger_by_id(&self, payment: i64) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT kind::text, round(amount, minor_units)::text FROM commissions WHERE payment_id = $1 ORDER BY id",
        )
        .bind(payment)
        .fetch_all(&self.app.db.pool)
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_dba_refunds_in_part_and_in_full_in_sql() {
    let w = watched(Some("0.1")).await;
    let payment = create_payment(&w.app.db.pool, "80.00", "NGN", Some(w.partner)).await;
    let client = w.app.db.connect().await;
    client
        .execute("SELECT verify_payment($1)", &[&payment])
        .await
        .unwrap();
    client
        .execute("SELECT refund_payment($1, 20.00)", &[&payment])
        .await
        .unwrap();
    // Straight UPDATEs pass the same rules: refunds only grow, never past the amount.
    let shrink = client
        .execute(
            "UPDATE payments SET refunded_amount = 10 WHERE id = $1",
            &[&payment],
        )
        .await
        .unwrap_err();
    assert!(
        shrink
            .as_db_error()
            .unwrap()
            .message()
            .contains("only grows"),
        "{shrink}"
    );
    let past = client
        .execute(
            "UPDATE payments SET refunded_amount = 81 WHERE id = $1",
            &[&payment],
        )
        .await
        .unwrap_err();
    assert!(
        past.as_db_error()
            .unwrap()
            .message()
            .contains("would pass the amount paid"),
        "{past}"
    );
    client
        .execute(
            "UPDATE payments SET status = 'refunded' WHERE id = $1",
            &[&payment],
        )
        .await
        .unwrap();
    assert_eq!(
        w.ledger_by_id(payment).await,
        pairs(&[
            ("earned", "8.00"),
            ("reversed", "2.00"),
            ("reversed", "6.00")
        ])
    );
    let got = w.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.reversed",
            "commission.reversed"
        ]
    );
}

#[tokio::test]
async fn disputes_written_in_sql_follow_the_same_rules() {
    let w = watched(None).await;
    let client = w.app.db.connect().await;
    // A dispute recorded before the payment is verified is settled when it is.
    let payment = create_payment(&w.app.db.pool, "100.00", "USD", Some(w.partner)).await;
    client
        .execute(
            "INSERT INTO disputes (provider, dispute_id, payment_id, amount, state) VALUES ('stripe', 'dp_sql', $1, 100, 'lost')",
            &[&payment],
        )
        .await
        .unwrap();
    client
        .execute("SELECT verify_payment($1)", &[&payment])
        .await
        .unwrap();
    assert_eq!(
        w.ledger_by_id(payment).await,
        pairs(&[("earned", "2.00"), ("reversed", "2.00")])
    );
    // A dispute never moves backwards, never changes payment, is never deleted.
    for sql in [
        "UPDATE disputes SET state = 'open' WHERE dispute_id = 'dp_sql'",
        "UPDATE disputes SET state = 'won' WHERE dispute_id = 'dp_sql'",
        "UPDATE disputes SET payment_id = payment_id + 1 WHERE dispute_id = 'dp_sql'",
        "DELETE FROM disputes WHERE dispute_id = 'dp_sql'",
        "TRUNCATE disputes",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let code = error.as_db_error().unwrap().code().code().to_owned();
        assert!(
            ["CM001", "CM003"].contains(&code.as_str()),
            "{sql}: {error}"
        );
    }
    // Nor is a ledger entry or an event typed by hand.
    for sql in [
        "INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units) \
         SELECT id, partner_id, 'reinstated', 2, currency, 0.02, amount, 'dispute', 2 FROM payments",
        "INSERT INTO commission_events (position, partner_id, seq, type, data) SELECT 999, id, 999, 'commission.created', '{}' FROM partners",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(error.as_db_error().unwrap().code().code(), "CM003", "{sql}: {error}");
    }
    let got = w.check_streams().await;
    assert_eq!(types(&got), ["commission.created", "commission.reversed"]);
}

#[tokio::test]
async fn event_totals_match_the_api_after_a_currencys_minor_units_change() {
    let w = watched(Some("0.2")).await;
    let client = w.app.db.connect().await;
    let yen = create_payment(&w.app.db.pool, "105", "JPY", Some(w.partner)).await;
    client
        .execute("SELECT verify_payment($1)", &[&yen])
        .await
        .unwrap();
    client
        .batch_execute("UPDATE currencies SET minor_units = 2 WHERE code = 'JPY'")
        .await
        .unwrap();
    let cents = create_payment(&w.app.db.pool, "100.55", "JPY", Some(w.partner)).await;
    client
        .execute("SELECT verify_payment($1)", &[&cents])
        .await
        .unwrap();
    client
        .execute("SELECT refund_payment($1, 50)", &[&yen])
        .await
        .unwrap();
    let totals = w.totals().await;
    let got = w.check_streams().await;
    assert_eq!(
        got.last().unwrap()["data"]["totals"],
        totals,
        "the socket and the API agree"
    );
    assert_eq!(totals["JPY"]["earned"], "41.11");
}

/// A backlog larger than one call: each call tries at most `limit` events,
/// those tried longest ago first, so successive calls take turns through the
/// backlog instead of retrying its head; `remaining` says when it is done.
#[tokio::test]
async fn a_parked_backlog_is_reapplied_in_bounded_calls_that_take_turns() {
    let w = watched(None).await;
    let late_id = w.partner + 1;
    for n in 1..=5 {
        let r = w
            .stripe(&stripe_succeeded(
                &format!("evt_{n}"),
                &format!("pi_{n}"),
                10_000,
                "usd",
                json!(late_id.to_string()),
            ))
            .await;
        assert_eq!(r["parked_reason"], "unknown_partner");
    }
    let reapply = |limit: i64| {
        let app = &w.app;
        async move {
            json(
                app.post_as(
                    &admin_token(),
                    &format!("/api/parked-events/reapply?limit={limit}"),
                    &json!({}),
                )
                .await,
                200,
            )
            .await
        }
    };
    let tried = |report: &Value| -> Vec<String> {
        report["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = reapply(2).await;
    assert_eq!(tried(&first), ["evt_1", "evt_2"]);
    assert_eq!(first["remaining"], 5);
    let second = reapply(2).await;
    assert_eq!(tried(&second), ["evt_3", "evt_4"], "not the head again");

    let created = json(
        w.app
            .post_as(&admin_token(), "/api/partners", &json!({"name": "Late"}))
            .await,
        201,
    )
    .await;
    assert_eq!(created["id"], late_id);
    let mut order = Vec::new();
    loop {
        let report = reapply(2).await;
        order.extend(tried(&report));
        if report["remaining"] == 0 {
            break;
        }
        assert!(order.len() < 10, "no progress: {order:?}");
    }
    assert_eq!(order, ["evt_5", "evt_1", "evt_2", "evt_3", "evt_4"]);
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM commissions WHERE kind = 'earned'")
            .await,
        5
    );
    problem(
        w.app
            .post_as(
                &admin_token(),
                "/api/parked-events/reapply?limit=0",
                &json!({}),
            )
            .await,
        422,
        "invalid-input",
    )
    .await;
    // The events are the late partner's: the audit, not the watched sockets.
    assert_eq!(
        w.app.count("SELECT count(*) FROM commission_audit").await,
        0
    );
}
