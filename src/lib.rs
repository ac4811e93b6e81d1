//! Real-time commissions: payments verified in PostgreSQL earn partner
//! commissions (computed in SQL, see `sql/`), and every node relays each
//! committed event over WebSocket to the sockets allowed to see it.

/// The approval timer: each node runs the engine's `approve_due_commissions` every few seconds.
pub mod approvals;
/// JWT claims and roles: who a caller is and which partner they may see.
pub mod auth;
/// The subcommands (`migrate`, `serve`, `token`, ...) behind `main.rs`.
pub mod cli;
/// The client's address behind trusted proxies (X-Forwarded-For, Forwarded).
pub mod client_ip;
/// Configuration from flags and the environment, with secrets kept out of logs.
pub mod config;
/// The partner dashboard page and the JavaScript client, embedded in the binary.
pub mod dashboard;
/// The connection pool and the migrator (refinery, then the engine in `sql/`).
pub mod db;
/// The `demo` and `simulate-payment` subcommands: see a commission arrive in minutes.
pub mod demo;
/// The durable event log both the REST API and the relay read from.
pub mod events;
/// REST endpoints, webhooks and the problem+json error mapping.
pub mod http;
/// Outbound partner webhooks: each partner's events POSTed to its endpoints, signed, in order, at least once.
pub mod partner_webhooks;
/// LISTEN, the rooms and the WebSocket: each committed event to every socket allowed to see it, once.
pub mod realtime;
/// Builds the app from config and binds it, so tests run the real server on port 0.
pub mod startup;
/// `AppState`, what every handler shares: below `http`, above what it holds.
pub mod state;
/// Structured logging.
pub mod telemetry;
