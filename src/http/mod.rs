//! The HTTP surface. This file alone decides the paths; each resource has its
//! own module.

/// The error type and its problem+json mapping.
pub mod error;
/// `/healthz` and `/readyz`.
mod health;

use std::time::Duration;

use axum::{routing::get, Router};
use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};

use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(crate::dashboard::routes())
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
