//! Property tests of the providers' parsers: whatever authenticated JSON a
//! provider (or someone holding its secret) sends, `parse` never panics, and
//! the same body always yields the same event id, which is what makes a
//! redelivery a duplicate.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{paystack::Paystack, stripe::Stripe, Provider};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        // Numbers as strings, as providers send amounts and partner ids.
        "[ +-]?[0-9]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(field(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names the parsers read, and others.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "type",
            "event",
            "data",
            "object",
            "amount",
            "amount_received",
            "amount_refunded",
            "refunded",
            "currency",
            "metadata",
            "partner_id",
            "payment_intent",
            "status",
            "reference",
            "transaction",
            "transaction_reference",
            "refund_reference",
            "resolution",
            "refund_amount",
            "created",
            "paid_at",
            "updated_at",
            "created_at",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

/// An event shaped like a real one: a known type, arbitrary contents.
fn stripe_like() -> impl Strategy<Value = Value> {
    (
        any_json(),
        prop::sample::select(vec![
            "payment_intent.succeeded",
            "charge.refunded",
            "charge.dispute.created",
            "charge.dispute.funds_withdrawn",
            "charge.dispute.funds_reinstated",
            "charge.dispute.closed",
            "customer.created",
        ]),
        any_json(),
        any_json(),
    )
        .prop_map(|(id, kind, object, created)| {
            json!({"id": id, "type": kind, "created": created, "data": {"object": object}})
        })
}

fn paystack_like() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "charge.success",
            "refund.processed",
            "charge.dispute.create",
            "charge.dispute.remind",
            "charge.dispute.resolve",
            "transfer.success",
        ]),
        any_json(),
    )
        .prop_map(|(kind, data)| json!({"event": kind, "data": data}))
}

/// Parses the body as the receive path does; the id must not depend on
/// anything but the body.
fn ids_are_stable<P: Provider>(event: &Value) -> Result<(), TestCaseError> {
    let body = serde_json::to_vec(event).unwrap();
    let reread: Value = serde_json::from_slice(&body).unwrap();
    let first = P::parse(&reread, &body).map(|e| e.id);
    let again = P::parse(&reread, &body).map(|e| e.id);
    match (first, again) {
        (Ok(a), Ok(b)) => {
            prop_assert_eq!(&a, &b);
            prop_assert!(!a.is_empty());
        }
        (Err(_), Err(_)) => {}
        (a, b) => prop_assert!(false, "the same body parsed two ways: {a:?} / {b:?}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn stripe_parses_any_json_without_panicking(event in any_json()) {
        ids_are_stable::<Stripe>(&event)?;
    }

    #[test]
    fn stripe_events_keep_their_own_id(event in stripe_like()) {
        ids_are_stable::<Stripe>(&event)?;
        let body = serde_json::to_vec(&event).unwrap();
        if let Ok(parsed) = Stripe::parse(&event, &body) {
            prop_assert_eq!(Some(parsed.id.as_str()), event["id"].as_str().map(str::trim));
        }
    }

    #[test]
    fn paystack_parses_any_json_without_panicking(event in any_json()) {
        ids_are_stable::<Paystack>(&event)?;
    }

    #[test]
    fn paystack_ids_name_the_event_and_are_stable(event in paystack_like()) {
        ids_are_stable::<Paystack>(&event)?;
        let body = serde_json::to_vec(&event).unwrap();
        if let Ok(parsed) = Paystack::parse(&event, &body) {
            let prefix = format!("{}:", event["event"].as_str().unwrap());
            prop_assert!(parsed.id.starts_with(&prefix), "{}", parsed.id);
        }
    }

    /// Two deliveries of one Paystack charge differ in what Paystack adds
    /// (timestamps, log fields) but name the same reference: one id.
    #[test]
    fn a_paystack_charge_redelivered_with_other_extras_has_one_id(
        reference in "[A-Za-z0-9_-]{1,30}",
        first in any_json(),
        second in any_json(),
    ) {
        let event = |extra: &Value| json!({
            "event": "charge.success",
            "data": {"reference": reference, "amount": 1000, "currency": "NGN", "log": extra},
        });
        let (a, b) = (event(&first), event(&second));
        let id = |e: &Value| Paystack::parse(e, &serde_json::to_vec(e).unwrap()).unwrap().id;
        prop_assert_eq!(id(&a), id(&b));
    }
}
