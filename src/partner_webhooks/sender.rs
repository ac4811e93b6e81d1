//! The sender: one task per node. Every poll it leases the endpoints that
//! have events after their cursor (as many as it has free slots), and for
//! each runs a delivery: POST the next event, record the outcome, and go on
//! while the engine says the lease is still ours and more is due. One event
//! at a time per endpoint, so a receiver sees its partner's events in seq
//! order; a failure ends the delivery and the engine schedules the retry.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::{
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use super::{
    destination::{self, PublicOnly},
    outbox::{Lease, Outbox, Outcome, Timers},
    signature,
};
use crate::{config::PartnerWebhooksConfig, events::Event};

/// Events one lease sends before it is given back, so that a long backlog
/// takes turns with other endpoints' deliveries on the same node.
const EVENTS_PER_LEASE: usize = 100;

struct Sender {
    outbox: Outbox,
    client: reqwest::Client,
    allow_http_loopback: bool,
}

/// Starts the node's sender; `None` when `PARTNER_WEBHOOKS_POLL_MS` is 0.
/// Aborting the handle stops every delivery in flight: their leases expire
/// and another node resends what was not acknowledged.
pub fn spawn(db: PgPool, config: &PartnerWebhooksConfig) -> anyhow::Result<Option<JoinHandle<()>>> {
    if config.partner_webhooks_poll_ms == 0 {
        return Ok(None);
    }
    let timeout = Duration::from_millis(config.partner_webhooks_timeout_ms.max(1));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(PublicOnly::shared(
            config.partner_webhooks_allow_http_loopback,
        ))
        .user_agent(concat!("commissions-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let timers = Timers {
        // A POST ends (or times out) well within its lease, so no other node
        // takes the endpoint while one is in flight.
        lease: timeout * 3,
        retry_base: Duration::from_millis(config.partner_webhooks_retry_base_ms.max(1)),
        retry_cap: Duration::from_millis(config.partner_webhooks_retry_cap_ms.max(1)),
    };
    let sender = Arc::new(Sender {
        outbox: Outbox::new(db, timers),
        client,
        allow_http_loopback: config.partner_webhooks_allow_http_loopback,
    });
    let poll = Duration::from_millis(config.partner_webhooks_poll_ms);
    let slots = config.partner_webhooks_concurrency.max(1);
    Ok(Some(tokio::spawn(run(sender, poll, slots))))
}

async fn run(sender: Arc<Sender>, poll: Duration, slots: usize) {
    let mut deliveries = JoinSet::new();
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        while deliveries.try_join_next().is_some() {}
        let free = slots.saturating_sub(deliveries.len());
        if free == 0 {
            continue;
        }
        match sender.outbox.lease(free as i64).await {
            Ok(leases) => {
                for lease in leases {
                    let sender = sender.clone();
                    deliveries.spawn(async move { sender.deliver(lease).await });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "leasing partner webhook endpoints failed; the next poll retries")
            }
        }
    }
}

impl Sender {
    /// Sends the events after the lease's cursor until caught up, a failure,
    /// or the lease is lost.
    async fn deliver(&self, lease: Lease) {
        let mut seq = lease.delivered_seq + 1;
        for _ in 0..EVENTS_PER_LEASE {
            let event = match self.outbox.event(lease.partner_id, seq).await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(endpoint_id = lease.endpoint_id, error = %e, "reading the event to send failed");
                    break;
                }
            };
            let outcome = self.post(&lease, &event).await;
            match self.outbox.record(&lease, seq, &outcome).await {
                Ok(true) => seq += 1,
                Ok(false) => return,
                Err(e) => {
                    // The lease expires and the event is sent again: at least once.
                    tracing::warn!(endpoint_id = lease.endpoint_id, seq, error = %e, "recording a webhook attempt failed");
                    return;
                }
            }
        }
        if let Err(e) = self.outbox.release(&lease).await {
            tracing::warn!(endpoint_id = lease.endpoint_id, error = %e, "releasing a webhook lease failed; it expires");
        }
    }

    async fn post(&self, lease: &Lease, event: &Event) -> Outcome {
        let started = Instant::now();
        let failed = |error: String| Outcome {
            status: None,
            error: Some(error),
            duration: started.elapsed(),
        };
        // Checked again at every send: the rules (or this node's flag) may
        // differ from those the endpoint was registered under.
        let url = match destination::check(&lease.url, self.allow_http_loopback) {
            Ok(url) => url,
            Err(e) => return failed(e.to_string()),
        };
        let id = format!("evt_{}", event.position);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match signature::sign(&lease.secret, &id, timestamp, &event.json) {
            Ok(signature) => signature,
            Err(e) => return failed(e.to_string()),
        };
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp)
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(event.json.clone())
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status();
                Outcome {
                    status: Some(status.as_u16()),
                    error: (!status.is_success()).then(|| format!("HTTP {}", status.as_u16())),
                    duration: started.elapsed(),
                }
            }
            Err(e) => failed(describe(e)),
        }
    }
}

/// A failed request in words, without its URL (a partner's URL may carry a
/// token of its own in the query) and with the cause that says what happened.
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
