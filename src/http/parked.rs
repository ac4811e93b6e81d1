//! `/api/parked-events`: provider events that arrived before what they need
//! (their payment, partner or currency), for operators to see and re-apply.
//! The rules are the engine's (`reapply_parked_events` in sql/07_webhooks.sql);
//! this only calls them.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    error::Result,
    extractor::{Caller, Json},
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
    pub applied: usize,
    pub still_parked: usize,
    pub events: Vec<Reapplied>,
}

/// Try every parked event again (after creating the partner or adding the
/// currency they waited for); what still cannot apply stays parked.
#[utoipa::path(post, path = "/api/parked-events/reapply", tag = "webhooks",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    responses((status = 200, body = ReapplyReport), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn reapply(State(state): State<AppState>, caller: Caller) -> Result<Json<ReapplyReport>> {
    caller.require_admin()?;
    let events = sqlx::query_as!(
        Reapplied,
        r#"SELECT provider AS "provider!", event_id AS "event_id!", event_type AS "event_type!",
                  outcome AS "outcome!", parked_reason, payment_id
             FROM reapply_parked_events()"#
    )
    .fetch_all(&state.db)
    .await?;
    let still_parked = events.iter().filter(|e| e.outcome == "parked").count();
    Ok(Json(ReapplyReport {
        applied: events.len() - still_parked,
        still_parked,
        events,
    }))
}
