//! Recurring commissions: a customer is attributed to a partner by its first
//! attributed payment, and its later payments (a subscription's invoices)
//! earn for that partner for the partner's `recurring_months`, without
//! partner metadata. Events shaped and signed as Stripe and Paystack send
//! them; each scenario ends with the ledger, the audit view and both sockets
//! checked (`Watched::check_streams`).

use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, problem},
    refunds_and_disputes::{pairs, stripe_event, types, watched, Watched},
};

const T0: i64 = 1_722_000_000; // 2024-07-26
const DAY: i64 = 86_400;

/// `invoice.paid` as API versions before 2025-03-31 send it: the invoice
/// names its payment intent, the subscription's metadata names the partner.
fn invoice_paid(n: u32, customer: &str, created: i64, partner: Option<i64>) -> String {
    let metadata = match partner {
        Some(p) => json!({"partner_id": p.to_string()}),
        None => json!({}),
    };
    stripe_event(
        &format!("evt_inv{n}"),
        "invoice.paid",
        created,
        json!({"id": format!("in_{n}"), "object": "invoice", "customer": customer,
               "subscription": "sub_1", "billing_reason": if n == 1 { "subscription_create" } else { "subscription_cycle" },
               "amount_due": 5000, "amount_paid": 5000, "amount_remaining": 0, "currency": "usd",
               "status": "paid", "paid": true, "payment_intent": format!("pi_inv{n}"), "charge": format!("ch_inv{n}"),
               "metadata": {}, "subscription_details": {"metadata": metadata},
               "period_start": created, "period_end": created + 30 * DAY, "created": created,
               "status_transitions": {"paid_at": created, "finalized_at": created}}),
    )
}

/// The payment intent of a subscription invoice: no metadata, and (before
/// 2025-03-31) the invoice it pays.
fn invoice_intent(n: u32, customer: &str, created: i64, names_invoice: bool) -> String {
    let invoice = if names_invoice {
        json!(format!("in_{n}"))
    } else {
        Value::Null
    };
    stripe_event(
        &format!("evt_pi{n}"),
        "payment_intent.succeeded",
        created,
        json!({"id": format!("pi_inv{n}"), "object": "payment_intent", "amount": 5000, "amount_received": 5000,
               "currency": "usd", "status": "succeeded", "customer": customer, "invoice": invoice, "metadata": {}}),
    )
}

async fn set_recurring_months(w: &Watched, months: Value) -> Value {
    let response = w
        .app
        .http
        .patch(w.app.url(&format!("/api/partners/{}", w.partner)))
        .bearer_auth(admin_token())
        .json(&json!({ "recurring_months": months }))
        .send()
        .await
        .unwrap();
    json(response, 200).await
}

/// The ledger of each invoice's payment, and who its payment earned for.
async fn earned_by(w: &Watched, intent: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT partner_id FROM payments WHERE provider_reference = $1")
        .bind(intent)
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_subscription_earns_for_three_months_then_stops_and_a_refund_reverses_one_invoice() {
    let w = watched(None).await;
    assert_eq!(
        set_recurring_months(&w, json!(3)).await["recurring_months"],
        3
    );
    let partner = w.partner;

    // The first invoice names the partner; the next three do not. Months
    // from the first: 0, 1, 2 earn; the fourth, past 3 months, does not.
    let first = w.stripe(&invoice_paid(1, "cus_1", T0, Some(partner))).await;
    assert_eq!(first["outcome"], "verified");
    for (n, day) in [(2, 31), (3, 62), (4, 93)] {
        let created = T0 + day * DAY;
        // Its payment intent's own event names the invoice: counted there.
        let intent = w.stripe(&invoice_intent(n, "cus_1", created, true)).await;
        assert_eq!(intent["outcome"], "ignored", "invoice {n}'s intent");
        let r = w.stripe(&invoice_paid(n, "cus_1", created, None)).await;
        assert_eq!(r["outcome"], "verified", "invoice {n}");
    }
    for intent in ["pi_inv1", "pi_inv2", "pi_inv3"] {
        assert_eq!(earned_by(&w, intent).await, Some(partner), "{intent}");
        assert_eq!(
            w.ledger(intent).await,
            pairs(&[("earned", "1.00")]),
            "{intent}"
        );
    }
    assert_eq!(
        earned_by(&w, "pi_inv4").await,
        None,
        "past recurring_months"
    );
    assert!(w.ledger("pi_inv4").await.is_empty());

    // Refunding the second invoice's charge reverses its commission only.
    let refund = stripe_event(
        "evt_ref2",
        "charge.refunded",
        T0 + 40 * DAY,
        json!({"id": "ch_inv2", "object": "charge", "amount": 5000, "amount_refunded": 5000,
               "refunded": true, "currency": "usd", "payment_intent": "pi_inv2", "customer": "cus_1",
               "invoice": "in_2", "metadata": {}}),
    );
    assert_eq!(w.stripe(&refund).await["outcome"], "refunded");
    assert_eq!(
        w.ledger("pi_inv2").await,
        pairs(&[("earned", "1.00"), ("reversed", "1.00")])
    );
    for intent in ["pi_inv1", "pi_inv3"] {
        assert_eq!(
            w.ledger(intent).await,
            pairs(&[("earned", "1.00")]),
            "{intent}"
        );
    }
    let got = w.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.created",
            "commission.created",
            "commission.reversed"
        ]
    );
}

/// From API version 2025-03-31 an invoice names no payment intent and the
/// intent names no invoice: the invoice attributes the customer, the intent
/// records and earns the payment, and nothing is counted twice.
#[tokio::test]
async fn an_invoice_without_its_intent_attributes_the_customer_and_the_intent_earns_once() {
    let w = watched(None).await;
    set_recurring_months(&w, json!(0)).await;
    let basil = |n: u32, created: i64, partner: Option<i64>| {
        let metadata = partner.map_or(json!(null), |p| json!({"partner_id": p.to_string()}));
        stripe_event(
            &format!("evt_inv{n}"),
            "invoice.paid",
            created,
            json!({"id": format!("in_{n}"), "object": "invoice", "customer": "cus_2",
                   "amount_paid": 5000, "currency": "usd", "status": "paid", "metadata": {},
                   "parent": {"type": "subscription_details",
                              "subscription_details": {"subscription": "sub_2", "metadata": metadata}}}),
        )
    };
    let r = w.stripe(&basil(1, T0, Some(w.partner))).await;
    assert_eq!(r["outcome"], "attributed");
    assert_eq!(r["payment_id"], Value::Null);
    let first = w.stripe(&invoice_intent(1, "cus_2", T0 + 5, false)).await;
    assert_eq!(first["outcome"], "verified");
    assert_eq!(earned_by(&w, "pi_inv1").await, Some(w.partner));

    // recurring_months = 0: the first payment only.
    let later = T0 + 31 * DAY;
    assert_eq!(w.stripe(&basil(2, later, None)).await["outcome"], "ignored");
    assert_eq!(
        w.stripe(&invoice_intent(2, "cus_2", later, false)).await["outcome"],
        "verified"
    );
    assert_eq!(earned_by(&w, "pi_inv2").await, None);
    assert_eq!(
        w.app.count("SELECT count(*) FROM payments").await,
        2,
        "one payment per intent, none per invoice"
    );
    let got = w.check_streams().await;
    assert_eq!(types(&got), ["commission.created"]);
}

#[tokio::test]
async fn paystack_subscription_charges_earn_through_the_customer_for_its_lifetime() {
    let w = watched(None).await;
    let charge = |reference: &str, customer: &str, paid_at: &str, metadata: Value| {
        json!({"event": "charge.success", "data": {
            "id": 302961, "domain": "live", "status": "success", "reference": reference, "amount": 500_000,
            "gateway_response": "Approved", "paid_at": paid_at, "created_at": paid_at, "channel": "card",
            "currency": "NGN", "metadata": metadata, "fees": 7500,
            "customer": {"id": 84312, "first_name": "Ada", "last_name": "Obi", "email": "ada@example.com",
                         "customer_code": customer, "phone": null, "metadata": null, "risk_action": "default"},
            "plan": {"id": 9000, "name": "Monthly", "plan_code": "PLN_gx2wn530m0i3w3m", "interval": "monthly",
                     "amount": 500_000, "currency": "NGN"}}})
        .to_string()
    };
    let partner = json!({"partner_id": w.partner.to_string()});
    // The program default is lifetime (null): a charge years later still earns.
    for (reference, paid_at, metadata) in [
        ("sub_ref_1", "2024-01-05T10:00:00.000Z", partner),
        ("sub_ref_2", "2024-02-05T10:00:00.000Z", json!("")),
        ("sub_ref_3", "2027-01-05T10:00:00.000Z", json!({})),
    ] {
        let r = w
            .paystack(&charge(reference, "CUS_ada", paid_at, metadata))
            .await;
        assert_eq!(r["outcome"], "verified", "{reference}");
        assert_eq!(
            w.ledger(reference).await,
            pairs(&[("earned", "100.00")]),
            "{reference}"
        );
    }
    // Another customer's charge without metadata earns nobody.
    let r = w
        .paystack(&charge(
            "other_1",
            "CUS_bola",
            "2024-02-06T10:00:00.000Z",
            json!({}),
        ))
        .await;
    assert_eq!(r["outcome"], "verified");
    assert!(w.ledger("other_1").await.is_empty());
    let got = w.check_streams().await;
    assert_eq!(got.len(), 3);
}

#[tokio::test]
async fn recurring_months_comes_from_the_program_and_bad_values_are_refused() {
    let w = watched(None).await;
    assert_eq!(
        set_recurring_months(&w, Value::Null).await["recurring_months"],
        Value::Null,
        "null is lifetime"
    );
    let response = w
        .app
        .http
        .patch(w.app.url(&format!("/api/partners/{}", w.partner)))
        .bearer_auth(admin_token())
        .json(&json!({"recurring_months": -1}))
        .send()
        .await
        .unwrap();
    let refused = problem(response, 422, "invalid-input").await;
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("recurring_months"));
    // A rename leaves it as it was.
    let renamed = w
        .app
        .http
        .patch(w.app.url(&format!("/api/partners/{}", w.partner)))
        .bearer_auth(admin_token())
        .json(&json!({"name": "Acme Ltd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json(renamed, 200).await["recurring_months"], Value::Null);

    // A DBA sets the program's default; new partners get it unless told.
    sqlx::query("UPDATE commission_program SET default_recurring_months = 12")
        .execute(&w.app.db.pool)
        .await
        .unwrap();
    let create = |body: Value| {
        w.app
            .http
            .post(w.app.url("/api/partners"))
            .bearer_auth(admin_token())
            .json(&body)
            .send()
    };
    let defaulted = json(create(json!({"name": "Beta"})).await.unwrap(), 201).await;
    assert_eq!(defaulted["recurring_months"], 12);
    let lifetime = json(
        create(json!({"name": "Gamma", "recurring_months": null}))
            .await
            .unwrap(),
        201,
    )
    .await;
    assert_eq!(lifetime["recurring_months"], Value::Null);
    w.check_streams().await;
}

/// Review: the window had no lower bound (a payment dated before the first
/// attributed one earned), and a payment already recorded without a partner
/// never attributed its customer when an event naming the partner came.
#[tokio::test]
async fn the_window_starts_at_the_first_payment_and_a_late_naming_still_attributes() {
    let db = crate::helpers::TestDatabase::new().await;
    let partner = crate::helpers::create_partner(&db.pool, "Acme", None).await;
    let client = db.connect().await;
    let verify = |event: &str, reference: &str, partner: Option<i64>, at: &str| {
        format!(
            "SELECT outcome FROM apply_webhook_event('stripe', '{event}', 'payment_intent.succeeded', '{{}}', 'verify',
                 '{reference}', 5000, 'usd', {}, NULL, NULL, '{at}', 'cus_w')",
            partner.map_or("NULL".into(), |p| p.to_string())
        )
    };
    let outcome = |sql: String| {
        let client = &client;
        async move {
            client
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    client
        .batch_execute(&format!(
            "SELECT set_partner_recurring_months({partner}, 1)"
        ))
        .await
        .unwrap();
    // Recorded first with no partner: earns nobody.
    assert_eq!(
        outcome(verify("e1", "pi_a", None, "2024-06-10T00:00:00Z")).await,
        "verified"
    );
    // The same payment named with its partner: already verified, but the
    // customer is now attributed.
    assert_eq!(
        outcome(verify("e2", "pi_a", Some(partner), "2024-06-10T00:00:01Z")).await,
        "already_verified"
    );
    let mapped: i64 = client
        .query_one(
            "SELECT count(*) FROM customers WHERE customer_id = 'cus_w'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mapped, 1);
    // Within a month after: earns. Dated before the first: does not.
    outcome(verify("e3", "pi_b", None, "2024-06-20T00:00:00Z")).await;
    outcome(verify("e4", "pi_c", None, "2024-05-20T00:00:00Z")).await;
    let earners: Vec<(String, Option<i64>)> = client
        .query(
            "SELECT provider_reference, partner_id FROM payments ORDER BY provider_reference",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        earners,
        [
            ("pi_a".to_string(), None),
            ("pi_b".to_string(), Some(partner)),
            ("pi_c".to_string(), None)
        ]
    );
    let audit: i64 = client
        .query_one("SELECT count(*) FROM commission_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit, 0);
}
