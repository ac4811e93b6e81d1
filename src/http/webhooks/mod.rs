//! Provider webhooks. Each provider module checks its signature over the raw
//! body and translates its event into an [`Action`]; this module applies it.
//!
//! Invariants:
//! * The provider's event id is inserted into `webhook_events` in the same
//!   transaction as the payment change. The primary key makes a redelivery
//!   (even twenty at once: the later inserts wait for the first to commit,
//!   then find the row) a 200 that changes nothing.
//! * Whatever we cannot act on (unsupported type, unknown partner, currency
//!   or payment, an illegal status change) is acknowledged with 200 and
//!   recorded with its outcome: a retry would not make it any better, and an
//!   operator finds it in `webhook_events`. An event naming a partner we do
//!   not know creates no payment: verified for nobody, its commission could
//!   never be earned; recorded with its payload, an operator can act on it.
//!   Only failures that a retry may cure (the database is down) answer 5xx,
//!   and then nothing is recorded.

/// Paystack: `x-paystack-signature`, HMAC-SHA512 of the raw body.
pub mod paystack;
/// Stripe: `Stripe-Signature`, `t=…,v1=…` HMAC-SHA256 over `t.body`.
pub mod stripe;

use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    error::{Error, Result},
    metrics,
};
use crate::{config::Secret, startup::AppState};

/// What a provider event asks of us, in our terms.
#[derive(Debug)]
pub enum Action {
    /// A successful charge: verify the payment with this provider reference,
    /// recording it first if we have not seen it.
    Verify {
        reference: String,
        amount_minor: i64,
        currency: String,
        partner_id: Option<PartnerRef>,
    },
    /// A refund of the payment with this provider reference: in full, or of
    /// `amount_minor` when the provider says how much (less is partial).
    Refund {
        reference: String,
        amount_minor: Option<i64>,
    },
    /// A refund for part of the amount: the ledger reverses only whole payments.
    PartialRefund,
    /// An event type we do not act on.
    Unsupported,
}

/// The partner named in the payment's metadata, as sent (providers send
/// metadata values as strings; some integrations send numbers).
#[derive(Debug)]
pub enum PartnerRef {
    Id(i64),
    Invalid(String),
}

impl PartnerRef {
    pub fn from_metadata(value: Option<&Value>) -> Option<PartnerRef> {
        match value? {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(
                s.trim()
                    .parse()
                    .map(PartnerRef::Id)
                    .unwrap_or_else(|_| PartnerRef::Invalid(s.clone())),
            ),
            Value::Number(n) => Some(
                n.as_i64()
                    .map(PartnerRef::Id)
                    .unwrap_or_else(|| PartnerRef::Invalid(n.to_string())),
            ),
            other => Some(PartnerRef::Invalid(other.to_string())),
        }
    }
}

/// The acknowledgement a provider gets (it only reads the status).
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipt {
    pub event_id: String,
    /// `verified`, `refunded`, `duplicate`, `ignored`, `unknown_partner`, ...
    pub outcome: String,
    pub payment_id: Option<i64>,
}

/// One received, authenticated event.
pub struct Delivery<'a> {
    pub provider: &'static str,
    pub event_id: String,
    pub event_type: String,
    pub payload: &'a Value,
    pub action: Action,
}

/// The configured secret, or 503: an unconfigured webhook must not accept
/// unsigned events, and 503 tells the provider to retry later.
pub fn secret<'a>(secret: &'a Option<Secret>, provider: &str) -> Result<&'a Secret> {
    secret.as_ref().ok_or_else(|| {
        Error::Unavailable(format!(
            "the {provider} webhook is not configured on this server"
        ))
    })
}

/// A signature header's value, or the 400 a provider (and its dashboard) shows.
pub fn signature_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::InvalidSignature(format!("the {name} header is missing")))
}

/// The body as JSON, once its signature has been checked.
pub fn parse_body(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// Every outcome `apply_webhook_event` (sql/07_webhooks.sql) returns, as the
/// static labels metrics need.
const OUTCOMES: &[&str] = &[
    "verified",
    "refunded",
    "duplicate",
    "ignored",
    "partial_refund_ignored",
    "unknown_partner",
    "unsupported_currency",
    "invalid_amount",
    "already_verified",
    "already_refunded",
    "illegal_transition",
    "unknown_payment",
];

/// Applies the event in one call to `apply_webhook_event`: its row in
/// `webhook_events`, the payment change and the engine, in one transaction
/// and one round trip (why: sql/07_webhooks.sql).
pub async fn apply(state: &AppState, delivery: Delivery<'_>) -> Result<Receipt> {
    let Delivery {
        provider,
        event_id,
        event_type,
        payload,
        action,
    } = delivery;
    let (step, reference, amount_minor, currency, partner_id) = match action {
        Action::Verify {
            partner_id: Some(PartnerRef::Invalid(_)),
            ..
        } => ("unknown_partner", None, None, None, None),
        Action::Verify {
            reference,
            amount_minor,
            currency,
            partner_id,
        } => {
            let partner_id = match partner_id {
                Some(PartnerRef::Id(id)) => Some(id),
                _ => None,
            };
            (
                "verify",
                Some(reference),
                Some(amount_minor),
                Some(currency),
                partner_id,
            )
        }
        Action::Refund {
            reference,
            amount_minor,
        } => ("refund", Some(reference), amount_minor, None, None),
        Action::PartialRefund => ("partial_refund_ignored", None, None, None, None),
        Action::Unsupported => ("ignored", None, None, None, None),
    };
    let applied = sqlx::query!(
        r#"SELECT outcome AS "outcome!", payment_id
             FROM apply_webhook_event($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        provider,
        event_id,
        event_type,
        payload,
        step,
        reference,
        amount_minor,
        currency,
        partner_id
    )
    .fetch_one(&state.db)
    .await?;
    let outcome = OUTCOMES
        .iter()
        .copied()
        .find(|o| *o == applied.outcome)
        .unwrap_or("other");
    let payment_id = applied.payment_id;
    if outcome != "duplicate" {
        tracing::info!(
            provider,
            event_id,
            event_type,
            outcome,
            payment_id,
            "webhook event applied"
        );
    }
    metrics::webhook_outcome(provider, outcome);
    match outcome {
        "verified" => metrics::commission_written("earned"),
        "refunded" => metrics::commission_written("reversed"),
        _ => {}
    }
    Ok(Receipt {
        event_id,
        outcome: applied.outcome,
        payment_id,
    })
}
