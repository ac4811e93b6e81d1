//! The HTTP layer's one error type, and the one place it becomes an
//! `application/problem+json` response (RFC 9457). Each variant has a stable
//! `type` URI clients can match on. A 500 logs its cause and sends none of it.
//! A layer below with errors of its own (`realtime::Error`) is given its
//! statuses here, so that it never imports this layer.

use axum::{
    extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use crate::realtime;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No token, or one that is malformed, forged or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid caller asking for what is not theirs.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but clashes with the current state
    /// (an illegal payment status or payout state change, a duplicate).
    #[error("{0}")]
    Conflict(String),
    /// The body or query could not be read at all.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input with invalid values.
    #[error("{0}")]
    Unprocessable(String),
    /// A webhook whose signature is missing, malformed, stale or wrong.
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request ran past the server's deadline.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The problem document. `type` and `title` are fixed per kind of error;
/// `detail` is specific to this occurrence.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<crate::db::webhook_batch::BatchError> for Error {
    fn from(error: crate::db::webhook_batch::BatchError) -> Error {
        use crate::db::webhook_batch::BatchError;
        match error {
            BatchError::Database(e) => Error::Database(e),
            BatchError::Stopped(stopped) => stopped.into(),
        }
    }
}

impl Error {
    /// Our engine raises its own SQLSTATEs (see `sql/`); map them to what they mean over HTTP.
    fn from_database(error: &sqlx::Error) -> Option<Error> {
        // Every pooled connection stayed busy for the pool's acquire timeout:
        // nothing was sent to the database, so a retry is safe.
        if matches!(error, sqlx::Error::PoolTimedOut) {
            return Some(Error::Unavailable(
                "every database connection is busy: retry shortly".into(),
            ));
        }
        let db = error.as_database_error()?;
        let message = db.message().to_owned();
        match db.code().as_deref() {
            // CM006: an illegal payout state change (sql/08_lifecycle.sql).
            Some("CM001") | Some("CM003") | Some("CM005") | Some("CM006") => {
                Some(Error::Conflict(message))
            }
            Some("CM002") => Some(Error::Unprocessable(message)),
            Some("CM004") => Some(Error::NotFound(message)),
            // check_violation, not_null_violation, foreign_key_violation on input we passed through.
            Some("23514") | Some("23502") => Some(Error::Unprocessable(message)),
            Some("23503") => Some(Error::Unprocessable(message)),
            Some("23505") => Some(Error::Conflict(message)),
            // Input no handler check caught: a NUL in text, a number out of range.
            Some("22P05") | Some("22021") => Some(Error::Unprocessable(
                "the request contains a character PostgreSQL cannot store (NUL, \\u0000)".into(),
            )),
            Some("22003") => Some(Error::Unprocessable(
                "a number in the request is out of range".into(),
            )),
            // lock_timeout, statement_timeout (the pool's session limits): the
            // data is busy, not wrong; nothing was changed, so a retry is safe.
            Some("55P03") | Some("57014") | Some("40P01") => Some(Error::Unavailable(
                "the database is busy with this record (a lock or a long statement): retry shortly"
                    .into(),
            )),
            _ => None,
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::InvalidSignature(_) => StatusCode::BAD_REQUEST,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not-found",
            Error::Conflict(_) => "conflict",
            Error::BadRequest(_) => "bad-request",
            Error::Unprocessable(_) => "invalid-input",
            Error::InvalidSignature(_) => "invalid-signature",
            Error::UnsupportedMediaType(_) => "unsupported-media-type",
            Error::PayloadTooLarge(_) => "payload-too-large",
            Error::Timeout(_) => "timeout",
            Error::TooManyRequests(_) => "too-many-requests",
            Error::Unavailable(_) => "unavailable",
            Error::Database(_) | Error::Internal(_) => "internal",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        let detail = match self {
            Error::Database(_) | Error::Internal(_) => None,
            other => Some(other.to_string()),
        };
        Problem {
            kind: format!("/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let this = match self {
            Error::Database(ref e) => Error::from_database(e).unwrap_or(self),
            other => other,
        };
        match &this {
            Error::Database(e) => tracing::error!(error = ?e, "database error"),
            Error::Internal(e) => tracing::error!(error = ?e, "internal error"),
            _ => {}
        }
        let problem = this.problem();
        let status = this.status_code();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(problem),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here is temporary (busy, not configured yet, shutting down).
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Every body the API reads goes through axum's extractors; their
/// rejections become problems here instead of axum's plain-text bodies.
impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Error::Unprocessable(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Error::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Error::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(e) => Error::from_body_failure(e.status(), e.body_text()),
            other => Error::BadRequest(other.body_text()),
        }
    }
}

impl From<BytesRejection> for Error {
    fn from(rejection: BytesRejection) -> Self {
        Error::from_body_failure(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Error::Unprocessable(rejection.body_text())
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(e) => Error::BadRequest(e.body_text()),
            other => Error::Internal(anyhow::anyhow!(other.body_text())),
        }
    }
}

/// A refused WebSocket handshake (`GET /notifications`) as its problem: the
/// relay says why, this says with which status.
impl From<realtime::Error> for Error {
    fn from(refusal: realtime::Error) -> Self {
        use realtime::Error as Refusal;
        let detail = refusal.to_string();
        match refusal {
            Refusal::ShuttingDown => Error::Unavailable(detail),
            Refusal::HandshakesFromAddress
            | Refusal::HandshakesForUser
            | Refusal::TooManySockets => Error::TooManyRequests(detail),
            Refusal::BadQuery(_) | Refusal::NegativeSince | Refusal::NotAnUpgrade => {
                Error::BadRequest(detail)
            }
            Refusal::NoToken | Refusal::InvalidToken(_) | Refusal::PartnerTokenWithoutPartner => {
                Error::Unauthorized(detail)
            }
            Refusal::OtherPartner => Error::Forbidden(detail),
            Refusal::UnknownPartner(_) => Error::NotFound(detail),
            Refusal::Database(e) => Error::Database(e),
        }
    }
}

impl Error {
    fn from_body_failure(status: StatusCode, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(too_large_detail())
        } else {
            Error::BadRequest(text)
        }
    }
}

/// The one wording of a body over [`super::MAX_BODY_BYTES`].
pub fn too_large_detail() -> String {
    format!(
        "the request body is larger than the {} KiB this API accepts",
        super::MAX_BODY_BYTES / 1024
    )
}

/// Lets a handler turn one named constraint into a 4xx and pass every other
/// error through: `.map_err(|e| on_constraint(e, "payments_provider_reference_unique", |_| Error::Conflict(..)))`.
pub fn on_constraint(
    error: sqlx::Error,
    name: &str,
    map: impl FnOnce(&dyn sqlx::error::DatabaseError) -> Error,
) -> Error {
    match error.as_database_error() {
        Some(db) if db.constraint() == Some(name) => map(db),
        _ => Error::Database(error),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::AuthError, realtime::Error as Refusal};

    /// The handshake's refusals were problems of this layer before the relay
    /// had an error type of its own: each keeps its status, type and wording.
    #[test]
    fn every_handshake_refusal_keeps_its_problem() {
        let token_required = "a token is required: ?token=, Authorization: Bearer <token>, or Sec-WebSocket-Protocol: bearer, <token>";
        let cases = [
            (
                Refusal::ShuttingDown,
                503,
                "unavailable",
                "the server is shutting down; reconnect",
            ),
            (
                Refusal::HandshakesFromAddress,
                429,
                "too-many-requests",
                "too many WebSocket handshakes from this address; slow down",
            ),
            (
                Refusal::BadQuery("bad query".into()),
                400,
                "bad-request",
                "bad query",
            ),
            (Refusal::NoToken, 401, "unauthorized", token_required),
            (
                Refusal::InvalidToken(AuthError::Expired),
                401,
                "unauthorized",
                "the token has expired",
            ),
            (
                Refusal::HandshakesForUser,
                429,
                "too-many-requests",
                "too many WebSocket handshakes for this user; slow down",
            ),
            (
                Refusal::OtherPartner,
                403,
                "forbidden",
                "this token may not follow that partner",
            ),
            (
                Refusal::PartnerTokenWithoutPartner,
                401,
                "unauthorized",
                "a partner token must carry partner_id",
            ),
            (
                Refusal::NegativeSince,
                400,
                "bad-request",
                "since must be 0 or more",
            ),
            (
                Refusal::NotAnUpgrade,
                400,
                "bad-request",
                "GET /notifications must be a WebSocket upgrade",
            ),
            (
                Refusal::UnknownPartner(7),
                404,
                "not-found",
                "partner 7 does not exist",
            ),
            (
                Refusal::TooManySockets,
                429,
                "too-many-requests",
                "too many open sockets for this user",
            ),
        ];
        for (refusal, status, slug, detail) in cases {
            let problem = Error::from(refusal).problem();
            assert_eq!(problem.status, status);
            assert_eq!(problem.kind, format!("/problems/{slug}"));
            assert_eq!(problem.detail.as_deref(), Some(detail));
        }
        // A failed read of the log is the database error it was: mapped by
        // its SQLSTATE (or a pool timeout) like every other, otherwise a 500.
        let error = Error::from(Refusal::Database(sqlx::Error::PoolTimedOut));
        assert!(matches!(error, Error::Database(sqlx::Error::PoolTimedOut)));
        assert_eq!(
            error.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
