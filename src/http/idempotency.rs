//! `Idempotency-Key` on admin POSTs: a client that retries after a lost
//! response gets the first response again instead of a second payment.
//!
//! A key is scoped to (caller, method, route template, key): the caller is
//! the token's `sub`, the route the matched template
//! (`/api/payments/{id}/verify`). The request under it is identified by the
//! method, the concrete path and the canonical JSON body: the same key on
//! payment 5 and then payment 6, or with another body, is a 422, never a
//! replay of the other request's response.
//!
//! Invariants:
//! - The handler runs at most once per key. The key is claimed first (a row
//!   `in_progress` with the request hash, committed in one short statement)
//!   and only the request that inserted the claim runs the handler. A
//!   concurrent or later request under a claim still `in_progress` gets a 409
//!   (retry later) and never runs it; one under a `completed` key replays.
//! - No connection is held by this layer while the handler runs, so a burst
//!   cannot starve the pool: each request needs one connection at a time.
//! - A claim is released (deleted) only when the handler answered 5xx and
//!   its effect did not commit. A handler marks the claim applied in the
//!   same transaction as its effect ([`mark_applied`]), so "did not commit"
//!   is a fact in the database, not a guess from the status: a COMMIT whose
//!   acknowledgement was lost answers 5xx, but its claim is applied and
//!   stays, and a retry gets a 409 saying the request took effect.
//! - A claim whose response was never stored (the process died, the request
//!   hit its deadline, or storing the response failed after the effect
//!   committed) stays `in_progress` for good. That is the safe side: we cannot
//!   tell whether the effect committed, and expiring the claim would let a
//!   retry repeat a payment. The client gets 409s (after 5 minutes saying the
//!   outcome is unknown); operators see it in `idempotency_stuck_claims` and
//!   clear it with `release_idempotency_claim` once they know the effect did
//!   not happen (migrations/V4__idempotency_claims.sql).
//!
//! Requests without a valid admin token pass straight through to the
//! handler, which refuses them.

use axum::{
    body::{to_bytes, Body, Bytes},
    extract::{MatchedPath, Request, State},
    http::{header, request::Parts, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{
    error::{too_large_detail, Error, Result},
    extractor::IdempotencyKey,
    MAX_BODY_BYTES,
};
use crate::{auth, state::AppState};

/// Marks a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Keys stored before migration V4 were scoped to (caller, key) and carry
/// this route; they are still honoured.
const LEGACY_ROUTE: &str = "";

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match replay_or_record(state, request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// Who sent which request under which key.
#[derive(Clone)]
struct Scope {
    caller: String,
    method: String,
    route: String,
    path: String,
    key: String,
}

async fn replay_or_record(state: AppState, request: Request, next: Next) -> Result<Response> {
    let (mut parts, body) = request.into_parts();
    let Some(IdempotencyKey(key)) = <IdempotencyKey as axum::extract::OptionalFromRequestParts<
        AppState,
    >>::from_request_parts(&mut parts, &state)
    .await?
    else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let Some(caller) = admin_subject(&parts, &state).await else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let body = to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| Error::PayloadTooLarge(too_large_detail()))?;
    let scope = Scope {
        caller,
        method: parts.method.as_str().to_owned(),
        // This layer is a route_layer: the route has matched.
        route: parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_else(|| parts.uri.path().to_owned()),
        path: parts.uri.path().to_owned(),
        key,
    };
    let hash = request_hash(&scope.method, &scope.path, &body);

    if let Some(answer) = earlier_request(&state, &scope, &hash).await? {
        return Ok(answer);
    }
    if !claim(&state, &scope, &hash).await? {
        // Another request claimed the key between the look and the claim.
        return Ok(earlier_request(&state, &scope, &hash)
            .await?
            .unwrap_or_else(|| in_progress(false)));
    }

    // The claim is committed and no connection is held while the handler runs.
    parts.extensions.insert(Claim(Arc::new(scope.clone())));
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if response.status().is_server_error() {
        release_or_settle(&state, &scope).await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("response body: {e}")))?;
    store(&state, &scope, &parts, &bytes).await;
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// The claim a request runs under, for its handler to mark applied in the
/// transaction of its effect. Handlers take it as `Option<Extension<Claim>>`:
/// a request without a key has none.
#[derive(Clone)]
pub struct Claim(Arc<Scope>);

/// Marks the request's claim applied, in the caller's transaction: the mark
/// commits if and only if the effect does.
pub async fn mark_applied(tx: &mut sqlx::PgConnection, claim: Option<&Claim>) -> Result<()> {
    mark_all_applied(tx, claim.as_slice()).await
}

/// [`mark_applied`] for the requests of a batch that share one transaction.
pub async fn mark_all_applied(tx: &mut sqlx::PgConnection, claims: &[&Claim]) -> Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    let column = |field: fn(&Scope) -> &String| -> Vec<String> {
        claims
            .iter()
            .map(|Claim(scope)| field(scope).clone())
            .collect()
    };
    let marked = sqlx::query!(
        "UPDATE idempotency_keys k SET applied_at = now()
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c(caller, method, route, key)
          WHERE (k.caller, k.method, k.route, k.key) = (c.caller, c.method, c.route, c.key)
            AND k.state = 'in_progress'",
        &column(|s| &s.caller),
        &column(|s| &s.method),
        &column(|s| &s.route),
        &column(|s| &s.key)
    )
    .execute(tx)
    .await?
    .rows_affected();
    // A claim is gone (an operator released it while this request ran): an
    // effect without its mark could run again, so it rolls back instead.
    if marked != claims.len() as u64 {
        return Err(Error::Conflict(
            "this request's Idempotency-Key was released while it ran: nothing was changed, send it again".into(),
        ));
    }
    Ok(())
}

/// The answer to a request under a key already claimed: a replay, a 422 for
/// a different request, or a 409 while the first is in progress. `None` if
/// the key is free.
async fn earlier_request(state: &AppState, scope: &Scope, hash: &str) -> Result<Option<Response>> {
    let stored = sqlx::query!(
        r#"SELECT request_hash, state, response_status, response_body, response_content_type,
                  applied_at IS NOT NULL AS "applied!",
                  created_at < now() - interval '5 minutes' AS "stuck!"
             FROM idempotency_keys
            WHERE caller = $1 AND key = $4
              AND ((method = $2 AND route = $3) OR route = $5)
            ORDER BY route = $5
            LIMIT 1"#,
        scope.caller,
        scope.method,
        scope.route,
        scope.key,
        LEGACY_ROUTE,
    )
    .fetch_optional(&state.db)
    .await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    if stored.request_hash != hash {
        return Err(Error::Unprocessable(
            "this Idempotency-Key was already used with a different request: use a new key".into(),
        ));
    }
    match (
        stored.state.as_str(),
        stored.response_status,
        stored.response_body,
    ) {
        ("completed", Some(status), Some(body)) => Ok(Some(replay(
            status,
            &body,
            stored.response_content_type.as_deref(),
        ))),
        // Applied, no response yet: the first request may still be on its
        // way to storing it (409, retry shortly) unless it is long past any
        // request's deadline.
        _ if stored.applied && stored.stuck => Ok(Some(applied_without_response(&scope.path))),
        _ => Ok(Some(in_progress(stored.stuck))),
    }
}

/// The 409 answer. While the first request may still be running it carries
/// `Retry-After: 1`; a stuck claim does not, as retrying will not help.
fn in_progress(stuck: bool) -> Response {
    if stuck {
        return Error::Conflict("the first request with this Idempotency-Key never recorded its outcome: check whether it took effect, then use a new key".into()).into_response();
    }
    let mut response = Error::Conflict(
        "a request with this Idempotency-Key is still in progress: retry shortly".into(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// 409 for a request that took effect but whose response was lost (the
/// COMMIT's acknowledgement, or storing the response, failed). Running it
/// again would repeat the effect; the client reads the result instead.
fn applied_without_response(path: &str) -> Response {
    lost_response(path).into_response()
}

fn lost_response(path: &str) -> Error {
    Error::Conflict(format!(
        "the first request with this Idempotency-Key took effect, but its response was lost: read the result (GET what {path} changed) instead of retrying"
    ))
}

/// Claims the key in a statement of its own (committed at once); false if
/// another request holds it.
async fn claim(state: &AppState, scope: &Scope, hash: &str) -> Result<bool> {
    let claimed = sqlx::query!(
        "INSERT INTO idempotency_keys (caller, method, route, path, key, request_hash, state)
         VALUES ($1, $2, $3, $4, $5, $6, 'in_progress')
         ON CONFLICT DO NOTHING",
        scope.caller,
        scope.method,
        scope.route,
        scope.path,
        scope.key,
        hash
    )
    .execute(&state.db)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// After a 5xx: unless the handler's transaction committed its mark (the
/// 5xx came after the COMMIT landed), the effect rolled back and the client
/// may retry under the same key. If it did commit, the claim is completed
/// with the 409 that says so, for every retry to replay. If either write
/// fails, the claim stays (safe: a retry gets a 409, never a second effect).
async fn release_or_settle(state: &AppState, scope: &Scope) {
    if release(state, scope).await == Some(0) {
        let lost = lost_response(&scope.path).into_response();
        let (parts, body) = lost.into_parts();
        if let Ok(bytes) = to_bytes(body, usize::MAX).await {
            store(state, scope, &parts, &bytes).await;
        }
    }
}

/// Deletes the claim unless its effect is marked applied; how many it
/// deleted, or None if that failed.
async fn release(state: &AppState, scope: &Scope) -> Option<u64> {
    let released = sqlx::query!(
        "DELETE FROM idempotency_keys
          WHERE caller = $1 AND method = $2 AND route = $3 AND key = $4 AND state = 'in_progress'
            AND applied_at IS NULL",
        scope.caller,
        scope.method,
        scope.route,
        scope.key
    )
    .execute(&state.db)
    .await;
    match released {
        Ok(done) => Some(done.rows_affected()),
        Err(error) => {
            tracing::error!(%error, key = %scope.key, "cannot release an idempotency claim: retries get 409 until an operator releases it");
            None
        }
    }
}

/// Stores the response for replays. If that fails, the effect has
/// committed all the same: the client still gets its response, and the claim
/// stays `in_progress` so that no retry repeats the effect.
async fn store(state: &AppState, scope: &Scope, parts: &axum::http::response::Parts, body: &Bytes) {
    let json = serde_json::from_slice::<Value>(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let stored = sqlx::query!(
        "UPDATE idempotency_keys
            SET state = 'completed', response_status = $5, response_body = $6,
                response_content_type = $7, completed_at = now()
          WHERE caller = $1 AND method = $2 AND route = $3 AND key = $4 AND state = 'in_progress'",
        scope.caller,
        scope.method,
        scope.route,
        scope.key,
        parts.status.as_u16() as i16,
        json,
        content_type
    )
    .execute(&state.db)
    .await;
    if let Err(error) = stored {
        tracing::error!(%error, key = %scope.key, path = %scope.path, "cannot store an idempotent response: the claim stays in_progress (idempotency_stuck_claims)");
    }
}

/// The `sub` of a valid admin token, if the request carries one.
async fn admin_subject(parts: &Parts, state: &AppState) -> Option<String> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let claims = state
        .verifier
        .verify(auth::bearer_token(value)?)
        .await
        .ok()?;
    claims.is_admin().then_some(claims.sub)
}

/// SHA-256 of method, path and body. A JSON body is hashed in a canonical
/// form (keys sorted, no spaces), so a retry that re-serialises it matches.
fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok());
    let mut sha = Sha256::new();
    sha.update(method.as_bytes());
    sha.update(b"\n");
    sha.update(path.as_bytes());
    sha.update(b"\n");
    sha.update(canonical.as_deref().unwrap_or(body));
    hex::encode(sha.finalize())
}

fn replay(status: i16, body: &Value, content_type: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let default_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let content_type = content_type.unwrap_or(default_type);
    // A body that was not JSON was stored as a JSON string of its text.
    let body = match body {
        Value::String(text) if !content_type.contains("json") => text.clone(),
        json => json.to_string(),
    };
    let mut response = (status, body).into_response();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
