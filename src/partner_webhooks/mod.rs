//! Outbound partner webhooks: every event of a partner's stream, POSTed to
//! each endpoint the partner registered, signed per the Standard Webhooks
//! specification, at least once and in seq order.
//!
//! The outbox is the event log itself (`commission_events`): each endpoint
//! keeps a cursor in PostgreSQL, and whichever node leases the endpoint
//! sends the events after it (sql/09_partner_webhooks.sql says why nothing
//! is lost when a node dies and why an acknowledged event is not resent).
//! A node holds no delivery state of its own.

/// Which URLs an endpoint may have, and the resolver that keeps a POST off private addresses.
pub mod destination;
/// The SQL calls of the sender: lease, read the next event, record the attempt.
mod outbox;
/// The per-node task that leases endpoints and POSTs their events.
mod sender;
/// Signing secrets and the `webhook-signature` header.
pub mod signature;

pub use sender::spawn;

/// Why an endpoint URL is refused, at registration or before a POST. The
/// message names the rule, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the endpoint URL is not a valid absolute URL")]
    Malformed,
    #[error("the endpoint URL is longer than {0} characters")]
    TooLong(usize),
    #[error("the endpoint URL must use https:// (http:// only to a loopback address, and only where the node allows it)")]
    Scheme,
    #[error("the endpoint URL must not carry a user name or password")]
    Credentials,
    #[error("the endpoint URL must name a public host, not {0}")]
    PrivateHost(String),
    #[error("{0} resolves to no public address")]
    NoPublicAddress(String),
}
