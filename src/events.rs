//! The durable event log (`commission_events`), as both the REST API and the
//! WebSocket relay read it. Events are returned as the exact JSON text the
//! engine NOTIFYs (built by the SQL function `commission_event_json`), so a
//! replayed event is byte-for-byte the live one and can be forwarded as is.

use sqlx::PgPool;

/// One event of the log: its coordinates plus the wire JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub partner_id: i64,
    /// The partner's gapless, commit-ordered number (resume cursor of a partner room).
    pub seq: i64,
    /// The global commit-ordered number (resume cursor of the admin room).
    pub position: i64,
    /// `{"type", "position", "partner_id", "seq", "occurred_at", "data"}` as text.
    pub json: String,
}

impl Event {
    /// The wire JSON as is, for a REST page to embed without re-encoding it.
    pub fn into_raw(self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        serde_json::value::RawValue::from_string(self.json)
    }
}

/// The longest page one read returns; callers loop for more.
pub const MAX_PAGE: i64 = 10_000;

#[derive(Clone)]
pub struct EventLog {
    db: PgPool,
}

impl EventLog {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    /// A partner's events with `seq > since`, oldest first, at most `limit`.
    pub async fn partner_since(
        &self,
        partner_id: i64,
        since: i64,
        limit: i64,
    ) -> Result<Vec<Event>, sqlx::Error> {
        sqlx::query_as!(
            Event,
            r#"SELECT partner_id, seq, position, commission_event_json(e)::text AS "json!"
                 FROM commission_events e
                WHERE partner_id = $1 AND seq > $2
                ORDER BY seq
                LIMIT $3"#,
            partner_id,
            since,
            limit.clamp(1, MAX_PAGE)
        )
        .fetch_all(&self.db)
        .await
    }

    /// Every partner's events with `position > since`, oldest first, at most `limit`.
    pub async fn all_since(&self, since: i64, limit: i64) -> Result<Vec<Event>, sqlx::Error> {
        sqlx::query_as!(
            Event,
            r#"SELECT partner_id, seq, position, commission_event_json(e)::text AS "json!"
                 FROM commission_events e
                WHERE position > $1
                ORDER BY position
                LIMIT $2"#,
            since,
            limit.clamp(1, MAX_PAGE)
        )
        .fetch_all(&self.db)
        .await
    }

    /// Every partner's events with `position < before`, newest first, at most `limit`.
    pub async fn all_before(&self, before: i64, limit: i64) -> Result<Vec<Event>, sqlx::Error> {
        sqlx::query_as!(
            Event,
            r#"SELECT partner_id, seq, position, commission_event_json(e)::text AS "json!"
                 FROM commission_events e
                WHERE position < $1
                ORDER BY position DESC
                LIMIT $2"#,
            before,
            limit.clamp(1, MAX_PAGE)
        )
        .fetch_all(&self.db)
        .await
    }

    /// The latest seq of a partner (0 before its first event); `None` if no such partner.
    pub async fn partner_last_seq(&self, partner_id: i64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT partner_last_seq(id) AS "last_seq!" FROM partners WHERE id = $1"#,
            partner_id
        )
        .fetch_optional(&self.db)
        .await
    }

    /// The latest global position (0 before the first event).
    pub async fn last_position(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT coalesce(max(position), 0) AS "position!" FROM commission_events"#
        )
        .fetch_one(&self.db)
        .await
    }
}
