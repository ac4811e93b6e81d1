//! `/api/partners/{id}/webhooks`: a partner (or an admin for it) registers
//! the endpoints its events are POSTed to, lists them with their delivery
//! state, disables one, and reads an endpoint's delivery log.
//!
//! The signing secret is made here (the OS CSPRNG), stored by the engine's
//! `register_partner_webhook`, and returned in the 201 only: no read shows
//! it again, and it is never logged. For the same reason registration is
//! not under `Idempotency-Key`: the replay cache would keep the secret.
//! Every write goes through the engine's functions (sql/09_partner_webhooks.sql).

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    error::{Error, Result},
    extractor::{Caller, Json, Path, Query},
    pagination,
};
use crate::{
    partner_webhooks::{self, destination, signature},
    state::AppState,
};

/// An endpoint and its delivery state (the `partner_webhook_deliveries` view).
#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoint {
    pub id: i64,
    pub partner_id: i64,
    #[schema(example = "https://hooks.example.com/commissions")]
    pub url: String,
    /// False once disabled: nothing more is sent.
    pub enabled: bool,
    /// The delivery cursor: the last seq the receiver acknowledged with a 2xx.
    pub delivered_seq: i64,
    /// The partner's latest seq.
    pub last_seq: i64,
    /// Events not yet acknowledged: `last_seq - delivered_seq`.
    pub lag: i64,
    /// Failed attempts of the next event (0 after a success).
    pub attempts: i32,
    /// No attempt before this time (the backoff after a failure).
    pub next_attempt_at: DateTime<Utc>,
    /// The HTTP status of the last attempt; null when it got no response.
    pub last_status: Option<i32>,
    /// Why the last attempt failed; null after a success.
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// A node is sending to it now.
    pub sending: bool,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A new endpoint, with its signing secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_` + base64 of 32 random bytes; HMAC key = the decoded part (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=")]
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `https://` (at most 2048 characters, a public host, no user:password).
    #[schema(example = "https://hooks.example.com/commissions")]
    pub url: String,
    /// Deliver the events after this seq (0: the whole stream). Default: the
    /// partner's latest seq now, so only events from now on.
    pub since: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoints {
    pub items: Vec<Endpoint>,
}

/// One POST to an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    pub id: i64,
    pub seq: i64,
    pub position: i64,
    /// The `webhook-id` header it carried: `evt_<position>`.
    #[schema(example = "evt_17")]
    pub webhook_id: String,
    /// 1 for the event's first attempt, 2 for its first retry, ...
    pub attempt: i32,
    /// The receiver's HTTP status; null when it did not answer.
    pub status: Option<i32>,
    pub error: Option<String>,
    pub succeeded: bool,
    /// The sender still held the endpoint's lease when it reported (see the docs).
    pub counted: bool,
    pub duration_ms: i32,
    pub attempted_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    /// Attempts per page, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptPage {
    /// Newest first.
    pub items: Vec<Attempt>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<i64>,
}

impl From<partner_webhooks::Error> for Error {
    fn from(refusal: partner_webhooks::Error) -> Self {
        Error::Unprocessable(refusal.to_string())
    }
}

/// Register an endpoint for the partner's events. The response holds the
/// signing secret, which no later call shows.
#[utoipa::path(post, path = "/api/partners/{id}/webhooks", tag = "partner webhooks", params(("id" = i64, Path)),
    request_body = NewEndpoint,
    responses((status = 201, body = Registered), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem, description = "Not https, a private host, too long, or 10 endpoints already")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<NewEndpoint>,
) -> Result<(StatusCode, Json<Registered>)> {
    caller.require_partner_access(id)?;
    destination::check(
        &body.url,
        state
            .config
            .partner_webhooks
            .partner_webhooks_allow_http_loopback,
    )?;
    let secret = signature::new_secret().map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    let mut tx = state.db.begin().await?;
    let endpoint_id = sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM register_partner_webhook($1, $2, $3, $4)"#,
        id,
        body.url,
        secret.expose(),
        body.since
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let endpoint = find(&state, id, endpoint_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            endpoint,
            secret: secret.expose().to_owned(),
        }),
    ))
}

/// The partner's endpoints (enabled and disabled) with their delivery state; no secrets.
#[utoipa::path(get, path = "/api/partners/{id}/webhooks", tag = "partner webhooks", params(("id" = i64, Path)),
    responses((status = 200, body = Endpoints), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Endpoints>> {
    caller.require_partner_access(id)?;
    let items = endpoints(&state, id, None).await?;
    Ok(Json(Endpoints { items }))
}

/// The partner's endpoints from the delivery view, or only `endpoint_id`.
async fn endpoints(
    state: &AppState,
    partner_id: i64,
    endpoint_id: Option<i64>,
) -> Result<Vec<Endpoint>> {
    Ok(sqlx::query_as!(
        Endpoint,
        r#"SELECT endpoint_id AS "id!", partner_id AS "partner_id!", url AS "url!", enabled AS "enabled!",
                  delivered_seq AS "delivered_seq!", last_seq AS "last_seq!", lag AS "lag!",
                  attempts AS "attempts!", next_attempt_at AS "next_attempt_at!", last_status, last_error,
                  last_attempt_at, sending AS "sending!", created_at AS "created_at!", disabled_at
             FROM partner_webhook_deliveries
            WHERE partner_id = $1 AND ($2::bigint IS NULL OR endpoint_id = $2)
            ORDER BY endpoint_id"#,
        partner_id,
        endpoint_id
    )
    .fetch_all(&state.db)
    .await?)
}

async fn find(state: &AppState, partner_id: i64, endpoint_id: i64) -> Result<Endpoint> {
    endpoints(state, partner_id, Some(endpoint_id))
        .await?
        .pop()
        .ok_or_else(|| {
            Error::NotFound(format!(
                "partner {partner_id} has no webhook endpoint {endpoint_id}"
            ))
        })
}

/// Disable an endpoint: nothing more is sent to it. Its delivery log is kept.
#[utoipa::path(delete, path = "/api/partners/{id}/webhooks/{endpoint_id}", tag = "partner webhooks",
    params(("id" = i64, Path), ("endpoint_id" = i64, Path)),
    responses((status = 200, body = Endpoint), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id, endpoint_id))]
pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, endpoint_id)): Path<(i64, i64)>,
) -> Result<Json<Endpoint>> {
    caller.require_partner_access(id)?;
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM disable_partner_webhook($1, $2)"#,
        id,
        endpoint_id
    )
    .fetch_one(&state.db)
    .await?;
    Ok(Json(find(&state, id, endpoint_id).await?))
}

/// An endpoint's delivery log, newest first, in keyset pages.
#[utoipa::path(get, path = "/api/partners/{id}/webhooks/{endpoint_id}/attempts", tag = "partner webhooks",
    params(("id" = i64, Path), ("endpoint_id" = i64, Path), AttemptQuery),
    responses((status = 200, body = AttemptPage), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id, endpoint_id))]
pub async fn attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, endpoint_id)): Path<(i64, i64)>,
    Query(query): Query<AttemptQuery>,
) -> Result<Json<AttemptPage>> {
    caller.require_partner_access(id)?;
    let limit = pagination::limit(query.limit, 50, 200)?;
    let before = pagination::cursor(query.cursor)?;
    find(&state, id, endpoint_id).await?;
    let rows = sqlx::query_as!(
        Attempt,
        r#"SELECT id, seq, position, 'evt_' || position::text AS "webhook_id!", attempt, status, error,
                  succeeded, counted, duration_ms, attempted_at
             FROM partner_webhook_attempts
            WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id < $2)
            ORDER BY id DESC
            LIMIT $3"#,
        endpoint_id,
        before,
        limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    let (items, next_cursor) = pagination::split(rows, limit, |a| a.id);
    Ok(Json(AttemptPage { items, next_cursor }))
}
