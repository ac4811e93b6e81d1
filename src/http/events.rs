//! Every partner's event log for admins, newest first: what the operator
//! console shows on open before it follows the admin stream.
//!
//! A page reads the head (`last_position`) first and only events at or below
//! it, so a client that renders the page and then opens the stream with
//! `since = last_position` sees every event exactly once: the older ones here,
//! the newer ones live.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::{
    error::{Error, Result},
    extractor::{Caller, Json, Query},
    pagination,
};
use crate::{
    events::{Event, EventLog},
    state::AppState,
};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminEventsQuery {
    /// Events per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page: events below this position.
    pub cursor: Option<i64>,
    /// The `last_position` of the first page, so that later pages stay below
    /// the same head (default: the head now).
    pub head: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminEventPage {
    /// The head this page was read below: open the admin stream with
    /// `since` = this to follow on with no gap or duplicate.
    pub last_position: i64,
    /// Newest first, each exactly the JSON the WebSocket sends.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Box<RawValue>>,
    /// Pass as `cursor` (with `head`) for older events; null at the start of the log.
    pub next_cursor: Option<i64>,
}

/// Every partner's events, newest first (admins).
#[utoipa::path(get, path = "/api/events", tag = "events", params(AdminEventsQuery),
    responses((status = 200, body = AdminEventPage), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AdminEventsQuery>,
) -> Result<Json<AdminEventPage>> {
    caller.require_admin()?;
    let limit = pagination::limit(query.limit, 100, 1000)?;
    let cursor = pagination::cursor(query.cursor)?;
    let log = EventLog::new(state.db.clone());
    // The head first: every event up to it is committed (positions are
    // assigned in commit order), so nothing below it can appear later.
    let head = match query.head {
        Some(h) if h < 0 => {
            return Err(Error::Unprocessable(
                "head must be a last_position, 0 or more".into(),
            ))
        }
        Some(h) => h,
        None => log.last_position().await?,
    };
    let below = cursor.map_or(head + 1, |c| c.min(head + 1));
    let rows = log.all_before(below, limit + 1).await?;
    let (rows, next_cursor) = pagination::split(rows, limit, |e| e.position);
    let events = rows
        .into_iter()
        .map(Event::into_raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(e.into()))?;
    Ok(Json(AdminEventPage {
        last_position: head,
        events,
        next_cursor,
    }))
}
