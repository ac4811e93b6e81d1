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

    /// One event in its own transaction (sql/07_webhooks.sql, apply_webhook_event).
    async fn one(&self, e: &StoredEvent) -> Result<Applied> {
        Ok(sqlx::query_as!(
            Applied,
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
        .fetch_one(&self.db)
        .await?)
    }

    /// Many events in one transaction (apply_webhook_events): one row per
    /// event, by its 1-based position in the batch.
    async fn many(&self, events: &[StoredEvent]) -> Result<Vec<Option<Applied>>> {
        let rows = sqlx::query!(
            r#"SELECT ordinal AS "ordinal!", outcome AS "outcome!", payment_id, parked_reason
                 FROM apply_webhook_events($1)"#,
            sqlx::types::Json(events) as _
        )
        .fetch_all(&self.db)
        .await?;
        let mut answers: Vec<Option<Applied>> = events.iter().map(|_| None).collect();
        for row in rows {
            let at = usize::try_from(row.ordinal)
                .ok()
                .and_then(|n| n.checked_sub(1));
            if let Some(answer) = at.and_then(|at| answers.get_mut(at)) {
                *answer = Some(Applied {
                    outcome: row.outcome,
                    payment_id: row.payment_id,
                    parked_reason: row.parked_reason,
                });
            }
        }
        Ok(answers)
    }
}
