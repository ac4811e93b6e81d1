//! `POST /webhooks/paystack`. `x-paystack-signature` is the hex HMAC-SHA512
//! of the raw body, keyed with the Paystack secret key; compared in constant
//! time.
//!
//! Paystack events carry no id, so ours names the thing that happened, and a
//! redelivery maps to the same id:
//! * `charge.success:<reference>` verifies (`data.reference`, amount in the
//!   currency's minor unit, partner from `data.metadata.partner_id`);
//! * `refund.processed:<refund>` refunds `data.amount` (a string or a number)
//!   of `data.transaction_reference`, where `<refund>` is the refund's own id
//!   (`data.id`), else its `refund_reference`: two refunds of one transaction
//!   are two refunds, each counted once;
//! * `charge.dispute.create` / `.remind` (open) and `.resolve` (`resolution`
//!   `merchant-accepted` or `auto-accepted`: lost; `declined`: won), keyed
//!   `<event>:<dispute id>`, about `data.transaction.reference`, for
//!   `data.refund_amount` (else the transaction's amount);
//! * anything else is recorded as ignored, keyed `<event>:<reference>`, or
//!   `<event>:sha256:<digest of the body>` when it names no reference.

use axum::{extract::State, http::HeaderMap};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use super::{
    customer_id, minor_units, text, Action, DisputeStage, PartnerRef, Provider, ProviderEvent,
    Refund,
};
use crate::{
    config::{Secret, ServeConfig},
    http::{
        error::{Error, Result},
        extractor::{Json, RawBody},
    },
    state::AppState,
};

pub struct Paystack;

impl Provider for Paystack {
    const NAME: &'static str = "paystack";
    const SIGNATURE_HEADER: &'static str = "x-paystack-signature";

    fn secret(config: &ServeConfig) -> Option<&Secret> {
        config.paystack_secret_key.as_ref()
    }

    fn check_signature(header: &str, body: &[u8], secret: &[u8], _now: i64) -> Result<()> {
        check_signature(header, body, secret)
    }

    fn parse(event: &Value, body: &[u8]) -> Result<ProviderEvent> {
        let event_type = text(&event["event"])
            .ok_or_else(|| Error::BadRequest("the event has no event type".into()))?
            .to_owned();
        let data = &event["data"];
        let (key, action) = read(&event_type, data)?;
        let key = match key {
            Some(key) => key,
            None => format!("sha256:{}", hex::encode(Sha256::digest(body))),
        };
        Ok(ProviderEvent {
            id: format!("{event_type}:{key}"),
            occurred_at: ["updated_at", "paid_at", "created_at"]
                .iter()
                .find_map(|f| data[*f].as_str())
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            event_type,
            action,
        })
    }
}

/// Receive a Paystack event.
#[utoipa::path(post, path = "/webhooks/paystack", tag = "webhooks",
    params(("x-paystack-signature" = String, Header, description = "hex HMAC-SHA512 of the raw body")),
    request_body(content = Object, description = "A Paystack event, exactly as Paystack sent it"),
    responses((status = 200, body = super::Receipt, description = "Accepted (also for redeliveries, parked events and events we do not act on)"),
              (status = 400, body = crate::http::error::Problem, description = "Missing or wrong signature"),
              (status = 413, body = crate::http::error::Problem), (status = 503, body = crate::http::error::Problem, description = "Not configured")))]
#[tracing::instrument(skip_all)]
pub async fn receive(
    state: State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Json<super::Receipt>> {
    super::receive::<Paystack>(state, headers, body).await
}

/// The event's key (what makes its id unique) and its action, or why it can
/// never apply (the event is then recorded as rejected).
fn read(event_type: &str, data: &Value) -> Result<(Option<String>, Action)> {
    let reference = text(&data["reference"]).map(str::to_owned);
    match event_type {
        "charge.success" => {
            let action = match (
                &reference,
                minor_units(&data["amount"]),
                text(&data["currency"]),
            ) {
                (Some(reference), Some(amount_minor), Some(currency)) => Action::Succeeded {
                    reference: reference.clone(),
                    amount_minor,
                    currency: currency.to_owned(),
                    partner_id: PartnerRef::from_metadata(data["metadata"].get("partner_id")),
                    // A subscription's charges carry the plan and the same
                    // customer, usually without metadata.
                    customer: customer_id(&data["customer"]["customer_code"]),
                },
                _ => Action::Other,
            };
            Ok((reference, action))
        }
        "refund.processed" => {
            let transaction = text(&data["transaction_reference"]).or(reference.as_deref());
            let refund = text(&data["id"])
                .map(str::to_owned)
                .or_else(|| data["id"].as_i64().map(|id| id.to_string()))
                .or_else(|| text(&data["refund_reference"]).map(str::to_owned));
            match (transaction, refund) {
                (Some(transaction), Some(refund)) => Ok((
                    Some(refund),
                    Action::Refunded {
                        reference: transaction.to_owned(),
                        // An amount we cannot read is invalid_amount, never "all of it".
                        refund: Refund::Single {
                            amount_minor: minor_units(&data["amount"]),
                        },
                    },
                )),
                // Without its own id a refund cannot be told from another
                // refund of the same transaction.
                (_, None) => Err(Error::BadRequest(
                    "refund.processed names no refund id or refund_reference, so it cannot be counted exactly once".into(),
                )),
                (None, _) => Err(Error::BadRequest(
                    "refund.processed names no transaction_reference".into(),
                )),
            }
        }
        "charge.dispute.create" | "charge.dispute.remind" | "charge.dispute.resolve" => {
            let dispute_id = text(&data["id"])
                .map(str::to_owned)
                .or_else(|| data["id"].as_i64().map(|id| id.to_string()));
            let transaction = text(&data["transaction"]["reference"])
                .or_else(|| text(&data["transaction_reference"]));
            let stage = match (event_type, data["resolution"].as_str()) {
                ("charge.dispute.resolve", Some("merchant-accepted" | "auto-accepted")) => {
                    DisputeStage::Lost
                }
                ("charge.dispute.resolve", Some("declined")) => DisputeStage::Won,
                // Ignoring it would hold the commission for good: recorded for an operator.
                ("charge.dispute.resolve", resolution) => {
                    return Err(Error::BadRequest(format!(
                        "charge.dispute.resolve with resolution {resolution:?} is not one we know (merchant-accepted, auto-accepted, declined)"
                    )))
                }
                _ => DisputeStage::Open,
            };
            let amount_minor = minor_units(&data["refund_amount"])
                .filter(|a| *a > 0)
                .or_else(|| minor_units(&data["transaction"]["amount"]));
            match (dispute_id, transaction) {
                (Some(dispute_id), Some(transaction)) => Ok((
                    Some(dispute_id.clone()),
                    Action::Dispute {
                        reference: transaction.to_owned(),
                        dispute_id,
                        amount_minor,
                        stage,
                    },
                )),
                _ => Err(Error::BadRequest(format!(
                    "{event_type} names no dispute id or no transaction reference"
                ))),
            }
        }
        _ => Ok((reference, Action::Other)),
    }
}

/// Checks `x-paystack-signature` against the raw body.
pub fn check_signature(signature: &str, body: &[u8], secret: &[u8]) -> Result<()> {
    let expected = hex::decode(signature.trim())
        .map_err(|_| Error::InvalidSignature("x-paystack-signature is not hex".into()))?;
    let mut mac = Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| Error::InvalidSignature("x-paystack-signature does not match the body".into()))
}
