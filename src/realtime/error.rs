//! The real-time layer's one error type: why a WebSocket handshake is
//! refused. It names the reason and its wording only; the http layer gives
//! each its status and problem+json body (`From<realtime::Error>` in
//! `http::error`), so that this layer needs nothing of HTTP's errors.

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node is closing its sockets.
    #[error("the server is shutting down; reconnect")]
    ShuttingDown,
    /// The client's address is over its handshakes for this second.
    #[error("too many WebSocket handshakes from this address; slow down")]
    HandshakesFromAddress,
    /// The query string could not be read (axum's wording).
    #[error("{0}")]
    BadQuery(String),
    #[error("a token is required: ?token=, Authorization: Bearer <token>, or Sec-WebSocket-Protocol: bearer, <token>")]
    NoToken,
    #[error("{0}")]
    InvalidToken(AuthError),
    /// The user (`sub`) is over its handshakes for this second.
    #[error("too many WebSocket handshakes for this user; slow down")]
    HandshakesForUser,
    /// A partner token asking for another partner's room.
    #[error("this token may not follow that partner")]
    OtherPartner,
    /// `auth::Verifier` refuses such tokens already; kept as a refusal, not a panic.
    #[error("a partner token must carry partner_id")]
    PartnerTokenWithoutPartner,
    #[error("since must be 0 or more")]
    NegativeSince,
    #[error("GET /notifications must be a WebSocket upgrade")]
    NotAnUpgrade,
    #[error("partner {0} does not exist")]
    UnknownPartner(i64),
    /// The user has `WS_MAX_SOCKETS_PER_USER` sockets open already.
    #[error("too many open sockets for this user")]
    TooManySockets,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}
