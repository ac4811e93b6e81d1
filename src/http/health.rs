//! Liveness and readiness for load balancers: `/healthz` says the process
//! answers; `/readyz` says it can reach PostgreSQL.

use axum::{extract::State, Json};
use serde_json::{json, Value};

use super::error::{Error, Result};
use crate::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "{\"status\": \"ok\"}")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: PostgreSQL is reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "{\"status\": \"ready\"}"), (status = 503, body = super::error::Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>> {
    sqlx::query_scalar!("SELECT 1 AS \"one!\"")
        .fetch_one(&state.db)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "readiness check failed");
            Error::Unavailable("the database is unreachable".into())
        })?;
    Ok(Json(json!({ "status": "ready" })))
}
