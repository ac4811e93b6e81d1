//! `GET /notifications`, the real-time stream: the route's handler. The
//! handshake checks and the socket itself are `realtime::socket`'s; this
//! hands it what axum extracted and answers a refusal with its problem
//! (`From<realtime::Error>` in [`super::error`]).

use std::net::SocketAddr;

use axum::{
    extract::{
        rejection::QueryRejection,
        ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade},
        ConnectInfo, Query, State,
    },
    http::HeaderMap,
    response::Response,
};

use super::error::Result;
use crate::{
    realtime::socket::{self, StreamQuery},
    state::AppState,
};

/// The WebSocket endpoint. The extractors' rejections are taken as values,
/// so that the handshake decides in its own order which refusal wins.
pub async fn notifications(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    Ok(socket::accept(state.relay, &state.verifier, peer, query, &headers, upgrade).await?)
}
