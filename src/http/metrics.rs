//! Prometheus metrics at `/metrics`: requests by route and status, webhook
//! outcomes by provider, commissions written through this API.
//!
//! The recorder is global to the process, and tests start many apps in one
//! process, so it is installed once ([`OnceLock`]) and shared by them all.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{header, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        // Batch sizes as a histogram (how many events each commit carried),
        // not the summary the exporter gives by default.
        let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("webhook_batch_size".into()), &sizes)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("verify_batch_size".into()), &sizes)
            })
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // An embedding program may have installed its own recorder first;
        // the metrics then go there and this endpoint has nothing to show.
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn render() -> impl IntoResponse {
    let handle = handle();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

/// Counts every request by method, route template (never the raw path, which
/// holds ids) and status, and times it. Every label has a bounded set of
/// values, so no client can grow the registry: a method outside the standard
/// ones is `other`, a path no route matches is `unmatched`.
pub async fn track(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    ::metrics::counter!("http_requests_total", &labels).increment(1);
    ::metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn webhook_outcome(provider: &'static str, outcome: &'static str) {
    ::metrics::counter!("webhook_events_total", "provider" => provider, "outcome" => outcome)
        .increment(1);
}

/// `kind` is `earned` or `reversed`.
pub fn commission_written(kind: &'static str) {
    ::metrics::counter!("commissions_total", "kind" => kind).increment(1);
}
