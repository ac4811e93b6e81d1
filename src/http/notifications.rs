//! A caller's notifications (one per commission event, written by the
//! engine): list them newest first and mark them read. A partner sees only
//! its own; an admin sees every partner's, or one partner's with `partner_id`.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    error::{Error, Result},
    extractor::{Caller, Json, Path, Query},
    pagination,
};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Notification {
    pub id: i64,
    pub partner_id: i64,
    /// The event's global position (see `/api/partners/{id}/events`).
    pub event_position: i64,
    pub title: String,
    pub body: String,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Admins: only this partner's. Partners: must be their own, if given.
    pub partner_id: Option<i64>,
    /// Only unread ones.
    #[serde(default)]
    pub unread: bool,
    /// 1 to 100 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    pub next_cursor: Option<i64>,
}

/// Which partner's notifications the caller means: a partner always its own.
fn scope(caller: &Caller, requested: Option<i64>) -> Result<Option<i64>> {
    match (caller.claims().is_admin(), requested) {
        (true, requested) => Ok(requested),
        (false, Some(id)) => caller.require_partner_access(id).map(|()| Some(id)),
        (false, None) => Ok(caller.claims().partner_id),
    }
}

/// The caller's notifications, newest first.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(ListQuery),
    responses((status = 200, body = NotificationPage), (status = 401, body = super::error::Problem),
              (status = 403, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<NotificationPage>> {
    let partner_id = scope(&caller, query.partner_id)?;
    let limit = pagination::limit(query.limit, 50, 100)?;
    let before = pagination::cursor(query.cursor)?;
    let rows = sqlx::query_as!(
        Notification,
        "SELECT id, partner_id, event_position, title, body, read_at, created_at
           FROM notifications
          WHERE ($1::bigint IS NULL OR partner_id = $1)
            AND (NOT $2 OR read_at IS NULL)
            AND ($3::bigint IS NULL OR id < $3)
          ORDER BY id DESC
          LIMIT $4",
        partner_id,
        query.unread,
        before,
        limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    let (items, next_cursor) = pagination::split(rows, limit, |n| n.id);
    Ok(Json(NotificationPage { items, next_cursor }))
}

/// Mark one of the caller's notifications read (idempotent: the first read time is kept).
#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications", params(("id" = i64, Path)),
    responses((status = 200, body = Notification), (status = 401, body = super::error::Problem),
              (status = 404, body = super::error::Problem, description = "No such notification of the caller's")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, notification_id = id))]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Notification>> {
    // Another partner's notification is "not found": its existence is not ours to tell.
    let partner_id = scope(&caller, None)?;
    sqlx::query_as!(
        Notification,
        r#"SELECT id AS "id!", partner_id AS "partner_id!", event_position AS "event_position!",
                  title AS "title!", body AS "body!", read_at, created_at AS "created_at!"
             FROM mark_notification_read($1, $2)"#,
        id,
        partner_id
    )
    .fetch_optional(&state.db)
    .await?
    .map(Json)
    .ok_or_else(|| Error::NotFound(format!("notification {id} does not exist")))
}
