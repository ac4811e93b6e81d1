//! `Idempotency-Key` on admin POSTs: a client that retries after a lost
//! response gets the first response again instead of a second payment or a
//! 409. Keys are per caller (the token's `sub`). The same key with a
//! different request (method, path or JSON body) is a 422.
//!
//! The first request under a key runs while a transaction-scoped advisory
//! lock on (caller, key) is held, and its response is stored in that same
//! transaction. A request that finds the lock taken gets a 409 at once
//! rather than waiting: a waiter would hold a pooled connection while the
//! request it waits for needs one, and a burst could exhaust the pool. The
//! client retries and then gets the replay. 5xx responses are not stored:
//! the client may retry them. Requests without a valid admin
//! token pass straight through to the handler, which refuses them.

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    error::{too_large_detail, Error, Result},
    extractor::IdempotencyKey,
    MAX_BODY_BYTES,
};
use crate::startup::AppState;

/// Marks a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match replay_or_record(state, request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
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
    let hash = request_hash(parts.method.as_str(), parts.uri.path(), &body);

    let mut tx = state.db.begin().await?;
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtext($1), hashtext($2)) AS "locked!""#,
        caller,
        key
    )
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Err(Error::Conflict(
            "a request with this Idempotency-Key is still in progress: retry shortly".into(),
        ));
    }
    let stored = sqlx::query!(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE caller = $1 AND key = $2",
        caller,
        key
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(stored) = stored {
        tx.rollback().await?;
        if stored.request_hash != hash {
            return Err(Error::Unprocessable(
                "this Idempotency-Key was already used with a different request: use a new key"
                    .into(),
            ));
        }
        return Ok(replay(stored.response_status, &stored.response_body));
    }

    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if response.status().is_server_error() {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("response body: {e}")))?;
    if let Ok(json) = serde_json::from_slice::<Value>(&bytes) {
        sqlx::query!(
            "INSERT INTO idempotency_keys (caller, key, request_hash, response_status, response_body)
             VALUES ($1, $2, $3, $4, $5)",
            caller,
            key,
            hash,
            parts.status.as_u16() as i16,
            json
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// The `sub` of a valid admin token, if the request carries one.
async fn admin_subject(parts: &axum::http::request::Parts, state: &AppState) -> Option<String> {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let claims = state.verifier.verify(token.trim()).await.ok()?;
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

fn replay(status: i16, body: &Value) -> Response {
    let status =
        axum::http::StatusCode::from_u16(status as u16).unwrap_or(axum::http::StatusCode::OK);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, content_type)],
        body.to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
