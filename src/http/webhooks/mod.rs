//! Provider webhooks: one receive path for every provider. A provider is a
//! [`Provider`]: it checks its signature over the raw body and reads its JSON
//! into a typed [`ProviderEvent`]; this module hands that to the engine in
//! one SQL call and answers with the engine's [`Outcome`]. Adding a provider
//! is one file implementing the trait, plus its route.
//!
//! Invariants:
//! * The provider's event id is inserted into `webhook_events` in the same
//!   transaction as its effect. The primary key makes a redelivery (even
//!   twenty at once: the later inserts wait for the first to commit, then
//!   find the row) a 200 that changes nothing.
//! * Nothing a provider sent is dropped. An event that cannot apply yet (its
//!   payment, partner or currency is not known) is parked with its reason in
//!   the transaction that answers 200, and applied when what it waits for
//!   arrives (sql/07_webhooks.sql). Whatever can never apply (an unsupported
//!   type, a partner id that is not a number) is recorded with its outcome.
//!   Only failures that a retry may cure (the database is down) answer 5xx,
//!   and then nothing is recorded.

/// Paystack: `x-paystack-signature`, HMAC-SHA512 of the raw body.
pub mod paystack;
#[cfg(test)]
mod properties;
/// Stripe: `Stripe-Signature`, `t=…,v1=…` HMAC-SHA256 over `t.body`.
pub mod stripe;

use axum::{extract::State, http::HeaderMap};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{
    error::{Error, Result},
    extractor::{Json, RawBody},
    metrics,
};
use crate::{
    config::{Secret, ServeConfig},
    db::webhook_batch::StoredEvent,
    state::AppState,
};

/// One payment provider's side of the webhook contract.
pub trait Provider {
    /// The provider's name in `payments.provider` and `webhook_events`.
    const NAME: &'static str;
    /// The header carrying the signature.
    const SIGNATURE_HEADER: &'static str;

    /// The configured signing secret, if any.
    fn secret(config: &ServeConfig) -> Option<&Secret>;

    /// Checks the signature header over the raw body at time `now` (unix seconds).
    fn check_signature(header: &str, body: &[u8], secret: &[u8], now: i64) -> Result<()>;

    /// Reads an authenticated event. Fails only when the event cannot even be
    /// identified (no id to deduplicate it by).
    fn parse(event: &Value, body: &[u8]) -> Result<ProviderEvent>;
}

/// An authenticated provider event, in the engine's terms.
#[derive(Debug)]
pub struct ProviderEvent {
    /// Unique per provider and per thing that happened: a redelivery has the same id.
    pub id: String,
    /// The provider's type, e.g. `charge.refunded`.
    pub event_type: String,
    /// When the provider says it happened (parked events apply in this order).
    pub occurred_at: Option<DateTime<Utc>>,
    pub action: Action,
}

/// What an event asks of us. Amounts are the provider's integers in minor units.
#[derive(Debug)]
pub enum Action {
    /// A successful charge: record the payment with this reference if new, verify it.
    Succeeded {
        reference: String,
        amount_minor: i64,
        currency: String,
        partner_id: Option<PartnerRef>,
        /// The provider's customer: its later payments earn for the partner
        /// that brought it (recurring commissions, sql/07 attribute_payment).
        customer: Option<String>,
    },
    /// Which partner brought this customer, from an event that carries no
    /// payment of its own (a Stripe invoice without its payment intent).
    Attribute {
        customer: String,
        partner_id: Option<PartnerRef>,
        /// The event's object (the invoice), for the DBA.
        object_id: Option<String>,
    },
    /// A refund of the payment with this reference.
    Refunded { reference: String, refund: Refund },
    /// A dispute (chargeback) of the payment with this reference.
    Dispute {
        reference: String,
        dispute_id: String,
        amount_minor: Option<i64>,
        stage: DisputeStage,
    },
    /// An event type we do not act on.
    Other,
}

#[derive(Debug)]
pub enum Refund {
    /// The total refunded so far (Stripe's `amount_refunded`): order-proof and
    /// idempotent, a late smaller figure changes nothing.
    Cumulative { amount_minor: i64 },
    /// One refund (Paystack), counted once by its event id; `None`: the rest.
    Single { amount_minor: Option<i64> },
}

/// Where a dispute stands. Stages only move forward (open, funds withdrawn,
/// then won or lost); the engine ignores a late, older one.
#[derive(Debug, Clone, Copy)]
pub enum DisputeStage {
    /// The commission is held while the dispute is open.
    Open,
    /// The funds left the merchant: the commission is reversed (it may still be won).
    FundsWithdrawn,
    /// Won or reinstated: nothing is reversed, what was is reinstated.
    Won,
    /// Lost: the commission is reversed in proportion to the disputed amount.
    Lost,
}

impl DisputeStage {
    fn as_sql(self) -> &'static str {
        match self {
            DisputeStage::Open => "open",
            DisputeStage::FundsWithdrawn => "funds_withdrawn",
            DisputeStage::Won => "won",
            DisputeStage::Lost => "lost",
        }
    }
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

/// What the engine did with an event: every outcome `apply_webhook_event`
/// (sql/07_webhooks.sql) records, mapped here once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Verified,
    AlreadyVerified,
    Refunded,
    DisputeUpdated,
    /// A refund total or dispute stage we already had (or an older one).
    Unchanged,
    /// Stored, to apply when its payment, partner or currency exists (`parked_reason`).
    Parked,
    InvalidAmount,
    InvalidPartner,
    IllegalTransition,
    Ignored,
    /// The customer is now attributed to the partner the event named.
    Attributed,
    /// Authenticated but unreadable (no id, a NUL character, not JSON): recorded
    /// with `rejected_reason`, answered 200 so the provider stops retrying.
    Rejected,
    Duplicate,
}

impl Outcome {
    const ALL: [Outcome; 13] = [
        Outcome::Verified,
        Outcome::AlreadyVerified,
        Outcome::Refunded,
        Outcome::DisputeUpdated,
        Outcome::Unchanged,
        Outcome::Parked,
        Outcome::InvalidAmount,
        Outcome::InvalidPartner,
        Outcome::IllegalTransition,
        Outcome::Ignored,
        Outcome::Attributed,
        Outcome::Rejected,
        Outcome::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::AlreadyVerified => "already_verified",
            Outcome::Refunded => "refunded",
            Outcome::DisputeUpdated => "dispute_updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Parked => "parked",
            Outcome::InvalidAmount => "invalid_amount",
            Outcome::InvalidPartner => "invalid_partner",
            Outcome::IllegalTransition => "illegal_transition",
            Outcome::Ignored => "ignored",
            Outcome::Attributed => "attributed",
            Outcome::Rejected => "rejected",
            Outcome::Duplicate => "duplicate",
        }
    }

    fn from_sql(outcome: &str) -> Result<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == outcome)
            .ok_or_else(|| {
                Error::Internal(anyhow::anyhow!(
                    "the engine returned an unknown webhook outcome {outcome:?}"
                ))
            })
    }
}

/// The acknowledgement a provider gets (it only reads the status).
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipt {
    pub event_id: String,
    pub outcome: Outcome,
    /// Why the event is parked: `unknown_payment`, `payment_not_verified`,
    /// `unknown_partner` or `unsupported_currency`.
    pub parked_reason: Option<String>,
    /// Why an unreadable event was rejected.
    pub rejected_reason: Option<String>,
    pub payment_id: Option<i64>,
}

/// `POST /webhooks/{provider}`: check the signature, read the event, apply it.
pub async fn receive<P: Provider>(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Receipt>> {
    let secret = P::secret(&state.config).ok_or_else(|| {
        Error::Unavailable(format!(
            "the {} webhook is not configured on this server",
            P::NAME
        ))
    })?;
    let header = headers
        .get(P::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::InvalidSignature(format!("the {} header is missing", P::SIGNATURE_HEADER))
        })?;
    P::check_signature(
        header,
        &body,
        secret.expose().as_bytes(),
        Utc::now().timestamp(),
    )?;
    // From here on the provider sent it: anything we cannot read would fail
    // the same way on every retry, so it is recorded and answered 200.
    let read = match serde_json::from_slice::<Value>(&body) {
        Ok(payload) if has_nul(&payload) => Err((
            without_nul(payload),
            "the event contains a NUL character (\\u0000), which PostgreSQL cannot store"
                .to_owned(),
        )),
        Ok(payload) => match P::parse(&payload, &body) {
            Ok(event) => Ok((payload, event)),
            Err(e) => Err((payload, e.to_string())),
        },
        Err(e) => Err((
            json!({"unparsed_body": String::from_utf8_lossy(&body).replace('\0', "\u{fffd}")}),
            format!("the body is not JSON: {e}"),
        )),
    };
    let receipt = match read {
        Ok((payload, event)) => apply(&state, P::NAME, event, payload).await?,
        Err((payload, reason)) => reject(&state, P::NAME, &body, &payload, reason).await?,
    };
    Ok(Json(receipt))
}

/// Records an event that can never apply, keyed by its body's digest (a
/// redelivery of the same bytes is a duplicate).
async fn reject(
    state: &AppState,
    provider: &'static str,
    body: &[u8],
    payload: &Value,
    reason: String,
) -> Result<Receipt> {
    let event_id = format!("sha256:{}", hex::encode(Sha256::digest(body)));
    let event_type = [&payload["type"], &payload["event"]]
        .into_iter()
        .find_map(|t| t.as_str())
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect::<String>();
    let outcome = sqlx::query_scalar!(
        r#"SELECT outcome AS "outcome!" FROM record_rejected_webhook_event($1, $2, $3, $4, $5)"#,
        provider,
        event_id,
        event_type,
        payload,
        reason
    )
    .fetch_one(&state.db)
    .await?;
    let outcome = Outcome::from_sql(&outcome)?;
    if outcome == Outcome::Rejected {
        tracing::warn!(provider, event_id, reason, "webhook event rejected");
    }
    metrics::webhook_outcome(provider, outcome.as_str());
    Ok(Receipt {
        event_id,
        outcome,
        parked_reason: None,
        rejected_reason: (outcome == Outcome::Rejected).then_some(reason),
        payment_id: None,
    })
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The payload with every NUL replaced by U+FFFD, so that it can be stored.
fn without_nul(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.replace('\0', "\u{fffd}"), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The arguments of `apply_webhook_event` an action fills in.
#[derive(Default)]
struct Step {
    action: &'static str,
    reference: Option<String>,
    amount_minor: Option<i64>,
    currency: Option<String>,
    partner_id: Option<i64>,
    object_id: Option<String>,
    object_state: Option<&'static str>,
    customer_id: Option<String>,
}

impl From<Action> for Step {
    fn from(action: Action) -> Step {
        match action {
            Action::Succeeded {
                partner_id: Some(PartnerRef::Invalid(_)),
                ..
            } => Step {
                action: "invalid_partner",
                ..Step::default()
            },
            Action::Succeeded {
                reference,
                amount_minor,
                currency,
                partner_id,
                customer,
            } => Step {
                action: "verify",
                reference: Some(reference),
                amount_minor: Some(amount_minor),
                currency: Some(currency),
                partner_id: match partner_id {
                    Some(PartnerRef::Id(id)) => Some(id),
                    _ => None,
                },
                customer_id: customer,
                ..Step::default()
            },
            Action::Refunded {
                reference,
                refund: Refund::Cumulative { amount_minor },
            } => Step {
                action: "refund_cumulative",
                reference: Some(reference),
                amount_minor: Some(amount_minor),
                ..Step::default()
            },
            Action::Refunded {
                reference,
                refund: Refund::Single { amount_minor },
            } => Step {
                action: "refund",
                reference: Some(reference),
                amount_minor,
                ..Step::default()
            },
            Action::Dispute {
                reference,
                dispute_id,
                amount_minor,
                stage,
            } => Step {
                action: "dispute",
                reference: Some(reference),
                amount_minor,
                object_id: Some(dispute_id),
                object_state: Some(stage.as_sql()),
                ..Step::default()
            },
            Action::Attribute {
                partner_id: Some(PartnerRef::Invalid(_)),
                ..
            } => Step {
                action: "invalid_partner",
                ..Step::default()
            },
            Action::Attribute {
                customer,
                partner_id,
                object_id,
            } => Step {
                action: "attribute",
                partner_id: match partner_id {
                    Some(PartnerRef::Id(id)) => Some(id),
                    _ => None,
                },
                customer_id: Some(customer),
                object_id,
                ..Step::default()
            },
            Action::Other => Step {
                action: "ignored",
                ..Step::default()
            },
        }
    }
}

/// Applies the event with the others that arrive with it, in one call to
/// `apply_webhook_events` (or `apply_webhook_event` alone): its row in
/// `webhook_events`, the payment change and the engine, in one transaction
/// and one round trip (why: sql/07_webhooks.sql and src/db/webhook_batch.rs).
async fn apply(
    state: &AppState,
    provider: &'static str,
    event: ProviderEvent,
    payload: Value,
) -> Result<Receipt> {
    let ProviderEvent {
        id: event_id,
        event_type,
        occurred_at,
        action,
    } = event;
    let step = Step::from(action);
    let applied = state
        .webhooks
        .apply(StoredEvent {
            provider,
            event_id: event_id.clone(),
            event_type: event_type.clone(),
            payload,
            action: step.action,
            reference: step.reference,
            amount_minor: step.amount_minor,
            currency: step.currency,
            partner_id: step.partner_id,
            object_id: step.object_id,
            object_state: step.object_state,
            occurred_at,
            customer_id: step.customer_id,
        })
        .await?;
    let outcome = Outcome::from_sql(&applied.outcome)?;
    let payment_id = applied.payment_id;
    if outcome != Outcome::Duplicate {
        tracing::info!(
            provider,
            event_id,
            event_type,
            outcome = outcome.as_str(),
            parked_reason = applied.parked_reason,
            payment_id,
            "webhook event applied"
        );
    }
    metrics::webhook_outcome(provider, outcome.as_str());
    if outcome == Outcome::Verified {
        metrics::commission_written("earned");
    }
    Ok(Receipt {
        event_id,
        outcome,
        parked_reason: applied.parked_reason,
        rejected_reason: None,
        payment_id,
    })
}

/// A provider amount in minor units, sent as a JSON number or a string of
/// digits (Paystack sends both).
pub fn minor_units(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A non-empty string field.
pub fn text(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// A provider's customer id, if it is one we can key on (at most 255
/// characters, no NUL). Anything else attributes nothing: the payment is
/// still recorded, it just cannot earn through its customer.
pub fn customer_id(value: &Value) -> Option<String> {
    text(value)
        .filter(|id| id.chars().count() <= 255 && !id.contains('\0'))
        .map(str::to_owned)
}
