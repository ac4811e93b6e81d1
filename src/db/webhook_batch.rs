//! Provider events that arrive together share one transaction: the
//! webhook kind of [`batch::Apply`](super::batch), one call to
//! `apply_webhook_events` (sql/07_webhooks.sql) per batch, which answers
//! every event with the outcome it has alone.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::batch::{Apply, Metrics, Stopped};

/// Why an event has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

type Result<T> = std::result::Result<T, BatchError>;

/// One event, as `apply_webhook_event` takes it (and as one element of
/// `apply_webhook_events`' array).
#[derive(Debug, Serialize)]
pub struct StoredEvent {
    pub provider: &'static str,
    pub event_id: String,
    pub event_type: String,
    pub payload: Value,
    pub action: &'static str,
    pub reference: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub partner_id: Option<i64>,
    pub object_id: Option<String>,
    pub object_state: Option<&'static str>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub customer_id: Option<String>,
}

/// What the engine did with one event (`outcome` as sql/07_webhooks.sql names it).
#[derive(Debug)]
pub struct Applied {
    pub outcome: String,
    pub payment_id: Option<i64>,
    pub parked_reason: Option<String>,
}

/// Applies provider events for a node's [`Batcher`](super::batch::Batcher).
pub struct Webhooks {
    pub db: sqlx::PgPool,
}

impl Apply for Webhooks {
    type Job = StoredEvent;
    type Answer = Applied;
    type Error = BatchError;
    const METRICS: Metrics = Metrics {
        batch_size: "webhook_batch_size",
        waiting: "webhook_events_waiting",
        failed: "webhook_batches_failed_total",
    };

    async fn one(&self, event: &StoredEvent) -> Result<Applied> {
        apply_one(&self.db, event).await
    }

    async fn many(&self, events: &[StoredEvent]) -> Result<Vec<Option<Applied>>> {
        let mut answers: Vec<Option<Applied>> = events.iter().map(|_| None).collect();
        for (at, applied) in apply_many(&self.db, events).await? {
            if let Some(answer) = answers.get_mut(at) {
                *answer = Some(applied);
            }
        }
        Ok(answers)
    }
}

/// One event in its own transaction (sql/07_webhooks.sql, apply_webhook_event).
async fn apply_one(db: &sqlx::PgPool, e: &StoredEvent) -> Result<Applied> {
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", payment_id, parked_reason
             FROM apply_webhook_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"#,
        e.provider,
        e.event_id,
        e.event_type,
        e.payload,
        e.action,
        e.reference,
        e.amount_minor,
        e.currency,
        e.partner_id,
        e.object_id,
        e.object_state,
        e.occurred_at,
        e.customer_id
    )
    .fetch_one(db)
    .await?;
    Ok(Applied {
        outcome: row.outcome,
        payment_id: row.payment_id,
        parked_reason: row.parked_reason,
    })
}

/// Many events in one transaction (apply_webhook_events): one row per
/// event, by its 1-based position in the batch.
async fn apply_many(
    db: &sqlx::PgPool,
    events: &[StoredEvent],
) -> std::result::Result<Vec<(usize, Applied)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT ordinal AS "ordinal!", outcome AS "outcome!", payment_id, parked_reason
             FROM apply_webhook_events($1)"#,
        sqlx::types::Json(events) as _
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let at = usize::try_from(row.ordinal).ok()?.checked_sub(1)?;
            let applied = Applied {
                outcome: row.outcome,
                payment_id: row.payment_id,
                parked_reason: row.parked_reason,
            };
            Some((at, applied))
        })
        .collect())
}
