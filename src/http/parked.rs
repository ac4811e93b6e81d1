//! `/api/parked-events`: provider events that arrived before what they need
//! (their payment, partner or currency), for operators to see and re-apply.
//! The rules are the engine's (`reapply_parked_events` in sql/07_webhooks.sql);
//! this only calls them.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    error::{Error, Result},
    extractor::{Caller, Json, Query},
};
use crate::state::AppState;

/// A parked provider event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedEvent {
    pub provider: String,
    pub event_id: String,
    pub event_type: String,
    /// `unknown_payment`, `payment_not_verified`, `unknown_partner` or `unsupported_currency`.
    pub parked_reason: String,
    /// The provider's payment reference it is about.
    pub reference: Option<String>,
    /// What would make it apply.
    pub what_applies_it: Option<String>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedEvents {
    pub events: Vec<ParkedEvent>,
}

/// List the parked provider events, oldest first.
#[utoipa::path(get, path = "/api/parked-events", tag = "webhooks",
    responses((status = 200, body = ParkedEvents), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<ParkedEvents>> {
    caller.require_admin()?;
    let events = sqlx::query_as!(
        ParkedEvent,
        r#"SELECT provider AS "provider!", event_id AS "event_id!", event_type AS "event_type!",
                  parked_reason AS "parked_reason!", reference, what_applies_it, received_at AS "received_at!"
             FROM parked_events
            ORDER BY received_at, event_id
            LIMIT 1000"#
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(ParkedEvents { events }))
}

/// One event tried again, with what happened now.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reapplied {
    pub provider: String,
    pub event_id: String,
    pub event_type: String,
    /// `parked` if it still cannot apply, else what the engine did (`verified`, `refunded`, ...).
    pub outcome: String,
    pub parked_reason: Option<String>,
    pub payment_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReapplyReport {
    /// Of the events tried, how many applied now.
    pub applied: usize,
    /// Of the events tried, how many still cannot apply.
    pub still_parked: usize,
    /// Parked events left in all, tried or not: call again while the backlog
    /// is larger than `limit`.
    pub remaining: i64,
    pub events: Vec<Reapplied>,
}

/// How many parked events one call tries (each in a transaction of its own,
/// in the lock order a webhook takes), so a large backlog takes several calls.
const DEFAULT_REAPPLY_LIMIT: i32 = 500;
const MAX_REAPPLY_LIMIT: i32 = 5_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReapplyQuery {
    /// Events to try, 1 to 5000 (default 500), those tried longest ago first.
    pub limit: Option<i32>,
}

/// Try parked events again (after creating the partner or adding the
/// currency they waited for); what still cannot apply stays parked. Each
/// call tries at most `limit`, those tried longest ago first, and says how
/// many are left.
#[utoipa::path(post, path = "/api/parked-events/reapply", tag = "webhooks",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response"), ReapplyQuery),
    responses((status = 200, body = ReapplyReport), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn reapply(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ReapplyQuery>,
) -> Result<Json<ReapplyReport>> {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(DEFAULT_REAPPLY_LIMIT);
    if !(1..=MAX_REAPPLY_LIMIT).contains(&limit) {
        return Err(Error::Unprocessable(format!(
            "limit must be from 1 to {MAX_REAPPLY_LIMIT}"
        )));
    }
    // One event per transaction: the locks one event takes (its reference,
    // its payment, itself) are the order a webhook takes them in, so a
    // re-apply never deadlocks with a webhook or a payout run by holding the
    // locks of the events before. It needs no idempotency mark: it only
    // touches events still parked, so running it again applies nothing twice.
    let next = sqlx::query!(
        r#"SELECT provider AS "provider!", event_id AS "event_id!" FROM next_parked_events(NULL, NULL, $1)"#,
        limit
    )
    .fetch_all(&state.db)
    .await?;
    let mut events = Vec::with_capacity(next.len());
    for key in next {
        let tried = sqlx::query_as!(
            Reapplied,
            r#"SELECT provider AS "provider!", event_id AS "event_id!", event_type AS "event_type!",
                      outcome AS "outcome!", parked_reason, payment_id
                 FROM reapply_parked_events($1, $2, 1)"#,
            key.provider,
            key.event_id
        )
        .fetch_optional(&state.db)
        .await?;
        // Not parked any more: an event before it took it along (a payment
        // applies its parked refunds). Report what it is now.
        let event = match tried {
            Some(event) => event,
            None => {
                sqlx::query_as!(
                    Reapplied,
                    "SELECT provider, event_id, event_type, outcome, parked_reason, payment_id
                       FROM webhook_events WHERE provider = $1 AND event_id = $2",
                    key.provider,
                    key.event_id
                )
                .fetch_one(&state.db)
                .await?
            }
        };
        events.push(event);
    }
    let remaining = sqlx::query_scalar!(
        r#"SELECT count(*) AS "remaining!" FROM webhook_events WHERE outcome = 'parked'"#
    )
    .fetch_one(&state.db)
    .await?;
    let still_parked = events.iter().filter(|e| e.outcome == "parked").count();
    Ok(Json(ReapplyReport {
        applied: events.len() - still_parked,
        still_parked,
        remaining,
        events,
    }))
}
