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
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use utoipa::ToSchema;

use super::{
    error::{Error, Result},
    metrics, money,
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

pub async fn apply(state: &AppState, delivery: Delivery<'_>) -> Result<Receipt> {
    let Delivery {
        provider,
        event_id,
        event_type,
        payload,
        action,
    } = delivery;
    let mut tx = state.db.begin().await?;
    let fresh = sqlx::query_scalar!(
        "INSERT INTO webhook_events (provider, event_id, event_type, outcome, payload)
         VALUES ($1, $2, $3, 'processing', $4)
         ON CONFLICT (provider, event_id) DO NOTHING
         RETURNING 1 AS one",
        provider,
        event_id,
        event_type,
        payload
    )
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    if !fresh {
        tx.rollback().await?;
        metrics::webhook_outcome(provider, "duplicate");
        return Ok(Receipt {
            event_id,
            outcome: "duplicate".into(),
            payment_id: None,
        });
    }

    let (outcome, payment_id) = match action {
        Action::Verify {
            reference,
            amount_minor,
            currency,
            partner_id,
        } => {
            verify(
                &mut tx,
                provider,
                &reference,
                amount_minor,
                &currency,
                partner_id,
            )
            .await?
        }
        Action::Refund {
            reference,
            amount_minor,
        } => refund(&mut tx, provider, &reference, amount_minor).await?,
        Action::PartialRefund => ("partial_refund_ignored", None),
        Action::Unsupported => ("ignored", None),
    };
    sqlx::query!(
        "UPDATE webhook_events SET outcome = $3, payment_id = $4 WHERE provider = $1 AND event_id = $2",
        provider,
        event_id,
        outcome,
        payment_id
    )
    .execute(&mut *tx)
    .await?;
    // The engine runs last: from its advisory lock to COMMIT every
    // verification in the system takes turns, so nothing else may sit in
    // between (one more round trip there costs every other request too).
    match (outcome, payment_id) {
        ("verified", Some(id)) => {
            sqlx::query_scalar!(r#"SELECT id AS "id!" FROM verify_payment($1)"#, id)
                .fetch_one(&mut *tx)
                .await?;
        }
        ("refunded", Some(id)) => {
            sqlx::query_scalar!(r#"SELECT id AS "id!" FROM refund_payment($1)"#, id)
                .fetch_one(&mut *tx)
                .await?;
        }
        _ => {}
    }
    tx.commit().await?;
    tracing::info!(
        provider,
        event_id,
        event_type,
        outcome,
        payment_id,
        "webhook event applied"
    );
    metrics::webhook_outcome(provider, outcome);
    match outcome {
        "verified" => metrics::commission_written("earned"),
        "refunded" => metrics::commission_written("reversed"),
        _ => {}
    }
    Ok(Receipt {
        event_id,
        outcome: outcome.into(),
        payment_id,
    })
}

type Outcome = (&'static str, Option<i64>);

async fn verify(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    reference: &str,
    amount_minor: i64,
    currency: &str,
    partner: Option<PartnerRef>,
) -> Result<Outcome> {
    let currency = currency.to_ascii_uppercase();
    let Ok(minor_units) = money::minor_units(&mut **tx, &currency).await else {
        return Ok(("unsupported_currency", None));
    };
    let amount = money::from_minor_units(amount_minor, minor_units);
    if amount <= Decimal::ZERO {
        return Ok(("invalid_amount", None));
    }
    let partner_id = match partner {
        None => None,
        Some(PartnerRef::Invalid(_)) => return Ok(("unknown_partner", None)),
        Some(PartnerRef::Id(id)) => {
            let exists = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1) AS "exists!""#,
                id
            )
            .fetch_one(&mut **tx)
            .await?;
            if !exists {
                return Ok(("unknown_partner", None));
            }
            Some(id)
        }
    };

    let existing = payment_by_reference(tx, provider, reference).await?;
    let payment_id = match existing {
        Some(p) if p.status == "pending" => p.id,
        Some(p) if p.status == "verified" => return Ok(("already_verified", Some(p.id))),
        Some(p) => return Ok(("illegal_transition", Some(p.id))),
        // Unknown: record it pending, then verify, so the payment passes
        // through the same state machine as a manual one.
        None => {
            sqlx::query_scalar!(
                "INSERT INTO payments (amount, currency, partner_id, provider, provider_reference)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                amount,
                currency,
                partner_id,
                provider,
                reference
            )
            .fetch_one(&mut **tx)
            .await?
        }
    };
    // `apply` calls verify_payment last, once the event row is final.
    Ok(("verified", Some(payment_id)))
}

/// The payment with this provider reference, locked until the transaction ends.
async fn payment_by_reference(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    reference: &str,
) -> Result<Option<LockedPayment>> {
    Ok(sqlx::query_as!(
        LockedPayment,
        r#"SELECT p.id, p.status::text AS "status!", p.amount, c.minor_units
             FROM payments p JOIN currencies c ON c.code = p.currency
            WHERE p.provider = $1 AND p.provider_reference = $2
              FOR UPDATE OF p"#,
        provider,
        reference
    )
    .fetch_optional(&mut **tx)
    .await?)
}

struct LockedPayment {
    id: i64,
    status: String,
    amount: Decimal,
    minor_units: i16,
}

async fn refund(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    reference: &str,
    amount_minor: Option<i64>,
) -> Result<Outcome> {
    let existing = payment_by_reference(tx, provider, reference).await?;
    match existing {
        None => Ok(("unknown_payment", None)),
        Some(p)
            if amount_minor
                .is_some_and(|minor| money::from_minor_units(minor, p.minor_units) < p.amount) =>
        {
            Ok(("partial_refund_ignored", Some(p.id)))
        }
        Some(p) if p.status == "refunded" => Ok(("already_refunded", Some(p.id))),
        Some(p) if p.status != "verified" => Ok(("illegal_transition", Some(p.id))),
        // `apply` calls refund_payment last, once the event row is final.
        Some(p) => Ok(("refunded", Some(p.id))),
    }
}
