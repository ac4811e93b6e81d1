//! The sender's calls into PostgreSQL (sql/09_partner_webhooks.sql). Each is
//! one short statement in its own transaction: nothing is held open while a
//! POST is in flight.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::{config::Secret, events::Event};

/// An endpoint this node may send to until `leased_until`.
#[derive(Debug)]
pub struct Lease {
    pub endpoint_id: i64,
    pub partner_id: i64,
    pub url: String,
    pub secret: Secret,
    /// The last seq the receiver acknowledged; the next event is this + 1.
    pub delivered_seq: i64,
    pub token: Uuid,
}

/// What one POST came to: the receiver's status, or why there was none.
#[derive(Debug)]
pub struct Outcome {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// The timers the engine applies to a lease and to retries.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub lease: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[derive(Clone)]
pub struct Outbox {
    db: PgPool,
    timers: Timers,
}

impl Outbox {
    pub fn new(db: PgPool, timers: Timers) -> Self {
        Self { db, timers }
    }

    /// Up to `limit` due endpoints, leased to this node.
    pub async fn lease(&self, limit: i64) -> Result<Vec<Lease>, sqlx::Error> {
        let rows = sqlx::query!(
            r#"SELECT endpoint_id AS "endpoint_id!", partner_id AS "partner_id!", url AS "url!",
                      secret AS "secret!", delivered_seq AS "delivered_seq!", lease_token AS "lease_token!"
                 FROM lease_partner_webhooks(make_interval(secs => $1), $2::int)"#,
            secs(self.timers.lease),
            limit as i32
        )
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Lease {
                endpoint_id: r.endpoint_id,
                partner_id: r.partner_id,
                url: r.url,
                secret: Secret::new(r.secret),
                delivered_seq: r.delivered_seq,
                token: r.lease_token,
            })
            .collect())
    }

    /// The partner's event `seq`, as the WebSocket sends it.
    pub async fn event(&self, partner_id: i64, seq: i64) -> Result<Option<Event>, sqlx::Error> {
        sqlx::query_as!(
            Event,
            r#"SELECT partner_id, seq, position, commission_event_json(e)::text AS "json!"
                 FROM commission_events e
                WHERE partner_id = $1 AND seq = $2"#,
            partner_id,
            seq
        )
        .fetch_optional(&self.db)
        .await
    }

    /// Logs the attempt; true when the lease is still ours and another event is due.
    pub async fn record(
        &self,
        lease: &Lease,
        seq: i64,
        outcome: &Outcome,
    ) -> Result<bool, sqlx::Error> {
        let duration_ms = i32::try_from(outcome.duration.as_millis()).unwrap_or(i32::MAX);
        sqlx::query_scalar!(
            r#"SELECT record_partner_webhook_attempt($1, $2, $3, $4, $5, $6,
                      make_interval(secs => $7), make_interval(secs => $8), make_interval(secs => $9)) AS "more!""#,
            lease.endpoint_id,
            lease.token,
            seq,
            outcome.status.map(i32::from),
            outcome.error.as_deref(),
            duration_ms,
            secs(self.timers.lease),
            secs(self.timers.retry_base),
            secs(self.timers.retry_cap)
        )
        .fetch_one(&self.db)
        .await
    }

    /// Gives the lease back before it expires.
    pub async fn release(&self, lease: &Lease) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "SELECT release_partner_webhook($1, $2)",
            lease.endpoint_id,
            lease.token
        )
        .fetch_one(&self.db)
        .await
        .map(|_| ())
    }
}
