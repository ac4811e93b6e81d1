//! `POST /webhooks/stripe`. The `Stripe-Signature` header is
//! `t=<unix time>,v1=<hex>[,v1=<hex>...]`; each `v1` is HMAC-SHA256, keyed
//! with the endpoint's signing secret, of `"<t>.<raw body>"`. Any matching
//! `v1` is accepted (Stripe sends several while a secret is being rolled),
//! compared in constant time, and `t` must be within five minutes of now.
//!
//! Events acted on (shapes as in Stripe's API reference; the payment is
//! always found by its payment intent id):
//! * `payment_intent.succeeded` verifies (`amount_received` in minor units,
//!   lowercase currency, partner from `metadata.partner_id`);
//! * `charge.refunded` carries the charge's cumulative `amount_refunded`,
//!   partial (`refunded: false`) or full: applying a total is order-proof;
//! * `charge.dispute.created` / `.updated` (open), `.funds_withdrawn`,
//!   `.funds_reinstated` (won) and `.closed` (by the dispute's `status`:
//!   `lost`, or `won` / `warning_closed` / `prevented`), with the dispute's
//!   `amount`.

use axum::{extract::State, http::HeaderMap};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{customer_id, text, Action, DisputeStage, PartnerRef, Provider, ProviderEvent, Refund};
use crate::{
    config::{Secret, ServeConfig},
    http::{
        error::{Error, Result},
        extractor::{Json, RawBody},
    },
    state::AppState,
};

/// How far the signed timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 300;

pub struct Stripe;

impl Provider for Stripe {
    const NAME: &'static str = "stripe";
    const SIGNATURE_HEADER: &'static str = "Stripe-Signature";

    fn secret(config: &ServeConfig) -> Option<&Secret> {
        config.stripe_webhook_secret.as_ref()
    }

    fn check_signature(header: &str, body: &[u8], secret: &[u8], now: i64) -> Result<()> {
        check_signature(header, body, secret, now)
    }

    fn parse(event: &Value, _body: &[u8]) -> Result<ProviderEvent> {
        let id =
            text(&event["id"]).ok_or_else(|| Error::BadRequest("the event has no id".into()))?;
        let event_type = event["type"].as_str().unwrap_or_default().to_owned();
        Ok(ProviderEvent {
            id: id.to_owned(),
            action: action(&event_type, &event["data"]["object"]),
            occurred_at: event["created"]
                .as_i64()
                .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
            event_type,
        })
    }
}

/// Receive a Stripe event.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "t=<unix time>,v1=<hex HMAC-SHA256>")),
    request_body(content = Object, description = "A Stripe event, exactly as Stripe sent it"),
    responses((status = 200, body = super::Receipt, description = "Accepted (also for redeliveries, parked events and events we do not act on)"),
              (status = 400, body = crate::http::error::Problem, description = "Missing, stale or wrong signature"),
              (status = 413, body = crate::http::error::Problem), (status = 503, body = crate::http::error::Problem, description = "Not configured")))]
#[tracing::instrument(skip_all)]
pub async fn receive(
    state: State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Json<super::Receipt>> {
    super::receive::<Stripe>(state, headers, body).await
}

fn action(event_type: &str, object: &Value) -> Action {
    let intent = text(&object["payment_intent"]).map(str::to_owned);
    match event_type {
        // An invoice's payment intent (API versions that say so): the
        // invoice's own event carries it with the subscription's metadata.
        "payment_intent.succeeded" if text(&object["invoice"]).is_some() => Action::Other,
        "payment_intent.succeeded" => {
            let (Some(reference), Some(amount_minor), Some(currency)) = (
                text(&object["id"]),
                object["amount_received"]
                    .as_i64()
                    .or_else(|| object["amount"].as_i64()),
                text(&object["currency"]),
            ) else {
                return Action::Other;
            };
            Action::Succeeded {
                reference: reference.to_owned(),
                amount_minor,
                currency: currency.to_owned(),
                partner_id: PartnerRef::from_metadata(object["metadata"].get("partner_id")),
                customer: customer_id(&object["customer"]),
            }
        }
        "invoice.paid" => invoice_paid(object),
        "charge.refunded" => {
            let Some(reference) = intent else {
                return Action::Other;
            };
            // `refunded` is true once the whole amount is refunded; the total
            // is `amount_refunded` either way.
            let amount_minor = match (
                object["amount_refunded"].as_i64(),
                object["refunded"].as_bool(),
            ) {
                (Some(total), _) => total,
                (None, Some(true)) => match object["amount"].as_i64() {
                    Some(amount) => amount,
                    None => return Action::Other,
                },
                _ => return Action::Other,
            };
            Action::Refunded {
                reference,
                refund: Refund::Cumulative { amount_minor },
            }
        }
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated"
        | "charge.dispute.closed" => {
            let (Some(reference), Some(dispute_id)) = (intent, text(&object["id"])) else {
                return Action::Other;
            };
            let stage = match (object["status"].as_str(), event_type) {
                (Some("lost"), _) => DisputeStage::Lost,
                (Some("won" | "warning_closed" | "prevented"), _) => DisputeStage::Won,
                (_, "charge.dispute.funds_reinstated") => DisputeStage::Won,
                (_, "charge.dispute.funds_withdrawn") => DisputeStage::FundsWithdrawn,
                (_, "charge.dispute.closed") => return Action::Other,
                _ => DisputeStage::Open,
            };
            Action::Dispute {
                reference,
                dispute_id: dispute_id.to_owned(),
                amount_minor: object["amount"].as_i64(),
                stage,
            }
        }
        _ => Action::Other,
    }
}

/// A paid invoice (a subscription's, usually). Its payment is its payment
/// intent: `payment_intent` before API version 2025-03-31, else in the
/// (expanded) `payments` list; refunds name the same intent. Where the
/// invoice names none, the payment intent's own event records the payment,
/// and the invoice only attributes the customer to the partner its metadata
/// names, so no payment is counted twice.
fn invoice_paid(invoice: &Value) -> Action {
    let partner = [
        &invoice["metadata"],
        &invoice["parent"]["subscription_details"]["metadata"],
        &invoice["subscription_details"]["metadata"],
    ]
    .into_iter()
    .find_map(|metadata| metadata.get("partner_id"));
    let intent = text(&invoice["payment_intent"]).or_else(|| {
        invoice["payments"]["data"]
            .as_array()?
            .iter()
            .find_map(|p| text(&p["payment"]["payment_intent"]))
    });
    let customer = customer_id(&invoice["customer"]);
    match (
        intent,
        invoice["amount_paid"].as_i64(),
        text(&invoice["currency"]),
    ) {
        (Some(reference), Some(amount_minor), Some(currency)) => Action::Succeeded {
            reference: reference.to_owned(),
            amount_minor,
            currency: currency.to_owned(),
            partner_id: PartnerRef::from_metadata(partner),
            customer,
        },
        _ => match customer {
            Some(customer) => Action::Attribute {
                customer,
                partner_id: PartnerRef::from_metadata(partner),
                object_id: text(&invoice["id"]).map(str::to_owned),
            },
            None => Action::Other,
        },
    }
}

/// Checks a `Stripe-Signature` header against the raw body at time `now`.
pub fn check_signature(header: &str, body: &[u8], secret: &[u8], now: i64) -> Result<()> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp
        .ok_or_else(|| Error::InvalidSignature("Stripe-Signature has no valid t=".into()))?;
    if signatures.is_empty() {
        return Err(Error::InvalidSignature(
            "Stripe-Signature has no v1 signature".into(),
        ));
    }
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(Error::InvalidSignature(format!(
            "the signature's timestamp is more than {TOLERANCE_SECS} s from now (replayed or clock skew)"
        )));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // verify_slice compares in constant time; clone per candidate since it consumes the MAC.
    if signatures
        .iter()
        .any(|s| mac.clone().verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(Error::InvalidSignature(
            "no v1 signature matches the body".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn any_v1_may_match_and_others_are_ignored() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(b"whsec_x", 1000, body);
        let header = format!("t=1000,v0=abc,v1={},v1={good}", "00".repeat(32));
        assert!(check_signature(&header, body, b"whsec_x", 1100).is_ok());
        assert!(check_signature(&header, body, b"whsec_y", 1100).is_err());
        assert!(check_signature(&header, br#"{"id":"evt_2"}"#, b"whsec_x", 1100).is_err());
        assert!(check_signature(&header, body, b"whsec_x", 1000 + TOLERANCE_SECS + 1).is_err());
        assert!(check_signature(&format!("v1={good}"), body, b"whsec_x", 1000).is_err());
    }

    #[test]
    fn a_customer_id_past_255_characters_attributes_nothing_and_the_payment_still_counts() {
        let intent = |customer: String| {
            serde_json::json!({"id": "pi_1", "amount_received": 100, "currency": "usd",
                               "customer": customer, "metadata": {}})
        };
        match action("payment_intent.succeeded", &intent("c".repeat(256))) {
            Action::Succeeded { customer, .. } => assert_eq!(customer, None),
            other => panic!("{other:?}"),
        }
        match action("payment_intent.succeeded", &intent("cus_1".into())) {
            Action::Succeeded { customer, .. } => assert_eq!(customer.as_deref(), Some("cus_1")),
            other => panic!("{other:?}"),
        }
    }
}
