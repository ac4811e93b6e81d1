//! The state every request handler shares. It sits below `http` and above
//! what it holds (the pool, the configuration, the token verifier and the
//! node's relay), so that both `http` and `startup` import it downward:
//! `startup` builds it, `http` reads it, and nothing it holds imports it.

use std::sync::Arc;

use crate::{
    auth::Verifier,
    config::ServeConfig,
    db::{batch::Batcher, webhook_batch::Webhooks},
    http::verifications::Verifications,
    realtime::Relay,
};

/// Everything a request handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: sqlx::PgPool,
    pub config: Arc<ServeConfig>,
    /// The node's WebSocket relay (LISTEN connection and rooms).
    pub relay: Relay,
    /// Checks every token (REST, idempotency, WebSocket).
    pub verifier: Arc<Verifier>,
    /// Applies provider webhooks that arrive together in one transaction.
    pub webhooks: Batcher<Webhooks>,
    /// Applies admin verifications that arrive together in one transaction.
    /// (The one thing here from `http`: what it batches are `http` requests.)
    pub verifications: Batcher<Verifications>,
}
