//! The HTTP surface. This file alone decides the paths; each resource has its
//! own module.
//!
//! Every request passes, outermost first: sensitive headers marked (so the
//! token and webhook signatures are never logged), tracing (path only: a
//! query may hold a WebSocket `token`), metrics, the timeout, and the body
//! limit (a declared Content-Length over it is refused before reading; a
//! streamed body is cut off at it).

/// `/api/approvals/run`: approve what is due now, on demand.
mod approvals;
/// Ledger entries as the API shows them.
mod commissions;
/// The error type and its problem+json mapping.
pub mod error;
/// `/api/events`: every partner's event log, newest first (admins).
mod events;
/// CSV exports of the lists (`?format=csv`), streamed.
mod export;
/// The authenticated caller and problem-speaking JSON, query and path extractors.
pub mod extractor;
/// `/healthz` and `/readyz`.
mod health;
/// Replays admin POSTs sent again with the same `Idempotency-Key`.
mod idempotency;
/// `/metrics` and the request counters.
pub mod metrics;
/// Amounts and rates on the wire: decimal strings, never floats.
pub mod money;
/// `/api/notifications`.
mod notifications;
/// `/openapi.json`.
pub mod openapi;
/// Keyset pages: limits, cursors, `next_cursor`.
mod pagination;
/// `/api/parked-events`: provider events waiting for their payment, partner or currency.
mod parked;
/// `/api/partners/{id}/webhooks/...`: a partner's outbound webhook endpoints and their delivery log.
mod partner_webhooks;
/// `/api/partners/...`: partners, their ledger and event log.
mod partners;
/// `/api/payments/...`: record, verify and refund by hand.
mod payments;
/// `/api/payouts/...`: run payouts, list them, record sent, paid or failed.
mod payouts;
/// `/notifications`: the WebSocket upgrade, handed to `realtime::socket`.
mod stream;
/// Admin verifications that arrive together, applied in one transaction.
pub mod verifications;
/// `/webhooks/stripe` and `/webhooks/paystack`.
pub mod webhooks;

use std::{iter::once, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Router,
};
use tower_http::{
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    trace::{DefaultOnResponse, TraceLayer},
};

use crate::state::AppState;

/// The largest request body accepted. Every body this API takes is a small
/// JSON document; providers' webhook events are a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `/metrics` alone: merged into the main router, or served on
/// `METRICS_BIND_ADDR` by itself so that the public never reaches it.
pub fn metrics_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    metrics::handle();
    Router::new().route("/metrics", get(metrics::render))
}

pub fn router(state: AppState) -> Router {
    metrics::handle();
    let state_metrics_elsewhere = state.config.metrics_bind_addr.is_some();
    // Admin POSTs honour Idempotency-Key.
    let admin_posts = Router::new()
        .route("/api/partners", post(partners::create))
        .route("/api/payments", post(payments::create))
        .route("/api/payments/{id}/verify", post(payments::verify))
        .route("/api/payments/{id}/refund", post(payments::refund))
        .route("/api/parked-events/reapply", post(parked::reapply))
        .route("/api/payouts/run", post(payouts::run))
        .route("/api/approvals/run", post(approvals::run))
        .route("/api/payouts/{id}/sent", post(payouts::sent))
        .route("/api/payouts/{id}/paid", post(payouts::paid))
        .route("/api/payouts/{id}/failed", post(payouts::failed))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ));

    Router::new()
        .merge(admin_posts)
        // The search is a read: outside the Idempotency-Key layer.
        .route("/api/partners", get(partners::list))
        .route("/api/partners/{id}", get(partners::show).patch(partners::update))
        .route("/api/partners/{id}/commissions", get(partners::commissions))
        .route("/api/partners/{id}/earnings", get(partners::earnings))
        .route("/api/partners/{id}/events", get(partners::events))
        .route(
            "/api/partners/{id}/webhooks",
            get(partner_webhooks::list).post(partner_webhooks::register),
        )
        .route(
            "/api/partners/{id}/webhooks/{endpoint_id}",
            delete(partner_webhooks::disable),
        )
        .route(
            "/api/partners/{id}/webhooks/{endpoint_id}/attempts",
            get(partner_webhooks::attempts),
        )
        .route("/api/events", get(events::list))
        .route("/api/parked-events", get(parked::list))
        .route("/api/payouts", get(payouts::list))
        .route("/api/partners/{id}/payouts", get(payouts::for_partner))
        .route("/api/notifications", get(notifications::list))
        .route("/api/notifications/{id}/read", post(notifications::mark_read))
        .route("/webhooks/stripe", post(webhooks::stripe::receive))
        .route("/webhooks/paystack", post(webhooks::paystack::receive))
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/notifications", get(stream::notifications))
        .merge(crate::dashboard::routes())
        .merge(match state_metrics_elsewhere {
            true => Router::new(),
            false => metrics_router(),
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(refuse_oversized))
        .layer(middleware::from_fn(deadline))
        .layer(middleware::from_fn(metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetSensitiveRequestHeadersLayer::new(
            [header::AUTHORIZATION, header::HeaderName::from_static("stripe-signature"), header::HeaderName::from_static("x-paystack-signature")]
                .into_iter()
                .chain(once(header::COOKIE)),
        ))
        .with_state(state)
}

/// How long a request may take before it is answered with a 408 problem. A
/// WebSocket is not held to it: its handler returns once the upgrade is set up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// tower-http's `TimeoutLayer` answers with an empty body; this answers with
/// a problem like every other error. The request's future is dropped, which
/// rolls back any transaction it had open. A webhook or verification waiting
/// in its node's batcher is then dropped from the queue too; one already in
/// a batch in the database is applied with it (`db::batch`): its 408 is the
/// same "outcome unknown" as any timeout, and the provider's retry or the
/// Idempotency-Key finds it applied.
async fn deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::Error::Timeout(format!(
            "the request took longer than {} s",
            REQUEST_TIMEOUT.as_secs()
        ))
        .into_response(),
    }
}

/// Refuses a body declared larger than [`MAX_BODY_BYTES`] before reading any
/// of it; [`DefaultBodyLimit`] catches one that streams without a length.
async fn refuse_oversized(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return error::Error::PayloadTooLarge(error::too_large_detail()).into_response();
    }
    next.run(request).await
}

async fn not_found() -> error::Error {
    error::Error::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> Response {
    let problem = error::Problem {
        kind: "/problems/method-not-allowed".into(),
        title: "Method Not Allowed".into(),
        status: 405,
        detail: Some("this endpoint does not take that method".into()),
    };
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/problem+json")],
        axum::Json(problem),
    )
        .into_response()
}
