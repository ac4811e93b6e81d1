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
        .route("/notifications", get(crate::realtime::socket::notifications))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        // The span names the path only: `?token=` must never reach the logs.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}
