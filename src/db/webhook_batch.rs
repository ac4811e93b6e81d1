//! Group apply: provider events that arrive together share one transaction.
//!
//! Every notifying commit passes through PostgreSQL's one notify queue lock
//! and its own WAL flush, so one event per commit caps a primary at a few
//! thousand webhooks a second however cheap the engine is. The batcher takes
//! whatever has queued while the node's previous batches are in the database
//! and hands it over as one `apply_webhook_events` call (sql/07_webhooks.sql):
//! one COMMIT, one NOTIFY per partner, one engine run over all its payments.
//!
//! * No timer. A batch leaves as soon as a slot is free, so a lone webhook
//!   waits for nothing; batches only grow when the database is busy, which
//!   is when they pay.
//! * Each request is answered only after its batch commits, with its own
//!   event's outcome: exactly what it would have had alone.
//! * A batch that fails as a whole (a deadlock, a lock timeout behind a
//!   DBA's open transaction, a constraint a DBA added that one event breaks)
//!   wrote nothing, so its events are applied again one per transaction:
//!   the bad one gets its own error and its neighbours their answers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::WebhookBatchConfig;

/// Why an event has no outcome. Only `Database` can come from PostgreSQL;
/// the others mean this node could not run or finish the batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("this node is shutting down")]
    Closed,
    #[error("the webhook batch ended without an answer for event {0} of {1}")]
    NoAnswer(usize, usize),
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

struct Job {
    event: StoredEvent,
    answer: oneshot::Sender<Result<Applied>>,
}

/// The node's batcher. Cheap to clone; its task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    pub fn start(db: sqlx::PgPool, config: &WebhookBatchConfig) -> Batcher {
        let max = config.webhook_batch_max.max(1);
        // Room for a few batches' worth: past that, requests wait to queue
        // (their HTTP connections hold them) instead of the node buffering
        // without bound.
        let (jobs, queue) = mpsc::channel(max * 4);
        let slots = Arc::new(Semaphore::new(config.webhook_batches_in_flight.max(1)));
        tokio::spawn(run(db, queue, slots, max));
        Batcher { jobs }
    }

    /// Applies one event with whatever else is waiting, once its batch has committed.
    pub async fn apply(&self, event: StoredEvent) -> Result<Applied> {
        let (answer, answered) = oneshot::channel();
        ::metrics::gauge!("webhook_events_waiting").increment(1.0);
        let sent = self.jobs.send(Job { event, answer }).await;
        if sent.is_err() {
            ::metrics::gauge!("webhook_events_waiting").decrement(1.0);
            return Err(BatchError::Closed);
        }
        answered.await.map_err(|_| BatchError::NoAnswer(1, 1))?
    }
}

async fn run(db: sqlx::PgPool, mut queue: mpsc::Receiver<Job>, slots: Arc<Semaphore>, max: usize) {
    loop {
        // A slot first, then the batch: whatever arrives while every slot is
        // busy waits in the queue and leaves together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        ::metrics::gauge!("webhook_events_waiting").decrement(batch.len() as f64);
        let db = db.clone();
        tokio::spawn(async move { apply_batch(&db, batch, slot).await });
    }
}

/// Applies a batch and answers each of its jobs. The slot is held while the
/// batch is in the database and given back before a failed batch's events
/// are retried alone, so a batch stuck behind a DBA's lock costs the node one
/// slot for one lock timeout, not the retries' time as well.
async fn apply_batch(db: &sqlx::PgPool, batch: Vec<Job>, slot: OwnedSemaphorePermit) {
    ::metrics::histogram!("webhook_batch_size").record(batch.len() as f64);
    if batch.len() == 1 {
        let job = batch.into_iter().next().expect("one job");
        let applied = apply_one(db, &job.event).await;
        let _ = job.answer.send(applied);
        return;
    }
    match apply_many(db, &batch).await {
        Ok(rows) => {
            let mut answers: Vec<Option<Result<Applied>>> = batch.iter().map(|_| None).collect();
            for (at, applied) in rows {
                if let Some(answer) = answers.get_mut(at) {
                    *answer = Some(Ok(applied));
                }
            }
            let size = batch.len();
            for (i, (job, answer)) in batch.into_iter().zip(answers).enumerate() {
                let answer = answer.unwrap_or(Err(BatchError::NoAnswer(i + 1, size)));
                let _ = job.answer.send(answer);
            }
        }
        Err(e) => {
            drop(slot);
            // Rolled back, nothing of it written: each event on its own, at once.
            tracing::warn!(error = %e, events = batch.len(), "a webhook batch failed; applying its events one by one");
            ::metrics::counter!("webhook_batches_failed_total").increment(1);
            futures::future::join_all(batch.into_iter().map(|job| async move {
                let applied = apply_one(db, &job.event).await;
                let _ = job.answer.send(applied);
            }))
            .await;
        }
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
    batch: &[Job],
) -> std::result::Result<Vec<(usize, Applied)>, sqlx::Error> {
    let events: Vec<&StoredEvent> = batch.iter().map(|j| &j.event).collect();
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
