//! The partner dashboard and the JavaScript client, served by every node from
//! assets embedded in the binary: no build step, nothing fetched elsewhere.
//!
//! The page holds no authority: it shows what the REST API and the socket
//! send for the token it was opened with, and the server alone decides what
//! a token may see. The client module lives at a stable path,
//! `/client/commissions-client.js`, for integrators to import.
//!
//! Assets are revalidated on every load (`no-cache` with a content hash as
//! `ETag`), so a deploy is picked up at once and an unchanged asset costs a 304.

use std::sync::Arc;

use axum::{
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, MethodRouter},
    Router,
};
use sha2::{Digest, Sha256};

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The page's own scripts, styles and assets, by path. The client module's
/// path is public and stable: integrators import it.
const FILES: [(&str, &str, &str); 6] = [
    (
        "/dashboard/dashboard.css",
        include_str!("assets/dashboard.css"),
        CSS,
    ),
    (
        "/dashboard/dashboard.js",
        include_str!("assets/dashboard.js"),
        JS,
    ),
    // The operator console: the admin room's history, filter and actions.
    (
        "/dashboard/console.js",
        include_str!("assets/console.js"),
        JS,
    ),
    (
        "/client/commissions-client.js",
        include_str!("assets/commissions-client.js"),
        JS,
    ),
    // The earnings chart: uPlot, vendored unchanged (assets/vendor/README.md).
    (
        "/dashboard/vendor/uPlot.esm.js",
        include_str!("assets/vendor/uPlot.esm.js"),
        JS,
    ),
    (
        "/dashboard/vendor/uPlot.min.css",
        include_str!("assets/vendor/uPlot.min.css"),
        CSS,
    ),
];

/// Only our own scripts, styles and same-origin connections (the REST API and
/// the socket); the page cannot be framed, and sends no Referer with its token.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file with its content type, a strong `ETag`, and any
/// headers of its own.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
    extra: Vec<(HeaderName, HeaderValue)>,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        let etag = HeaderValue::from_str(&etag).expect("hex is a valid header value");
        Self {
            body,
            content_type,
            etag,
            extra: Vec::new(),
        }
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .any(|t| t.trim() == self.etag || t.trim() == "*")
            });
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            ([(header::CONTENT_TYPE, self.content_type)], self.body).into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in &self.extra {
            headers.insert(name.clone(), value.clone());
        }
        response
    }
}

fn serve<S: Clone + Send + Sync + 'static>(asset: Arc<Asset>) -> MethodRouter<S> {
    get(move |request: HeaderMap| async move { asset.respond(&request) })
}

/// The dashboard's paths, merged into the router by `http::router`. They read
/// no state, so they take whatever state the router has.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut page = Asset::new(include_str!("assets/dashboard.html"), HTML);
    page.extra = vec![
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    let page = Arc::new(page);
    let router = Router::new()
        .route("/", serve(page.clone()))
        .route("/dashboard", serve(page));
    FILES
        .into_iter()
        .fold(router, |router, (path, body, content_type)| {
            router.route(path, serve(Arc::new(Asset::new(body, content_type))))
        })
}
