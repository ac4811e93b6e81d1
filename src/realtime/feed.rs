//! The node's feed: what reaches the rooms is read from the event log, never
//! taken from a NOTIFY payload. Any database login may `NOTIFY` anything on
//! our channels, so a notification is only a wake-up: the feed then reads
//! every event after its cursor from `commission_events` (which only the
//! engine writes) and hands each to the hub, in position order.
//!
//! Why nothing is lost or repeated:
//! - Positions are taken at commit under a row lock held through the commit
//!   (sql/03_commission_engine.sql), so a read sees a gapless prefix of the
//!   log: reading `position > cursor` and moving the cursor to the last row
//!   read never skips an event that commits later.
//! - The cursor starts at the head of the log before the node serves, and
//!   only moves by reading, so a lost LISTEN connection, a failed read or a
//!   burst of wake-ups delays events but cannot drop any: the next read
//!   starts where the last one ended.
//! - Wake-ups coalesce: while a read is in flight, any number of
//!   notifications (real or forged) cost one more read, not one each.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{watch, Notify};

use super::hub::{Hub, LiveEvent};
use crate::events::EventLog;

/// Events read per query; the feed reads again at once when a page is full.
const PAGE: i64 = 1_000;
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Wakes the feed. Cheap to clone; waking many times before it runs is one read.
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The log's head when the node starts: the feed's first cursor.
pub async fn start_position(log: &EventLog) -> Result<i64, sqlx::Error> {
    log.last_position().await
}

/// Reads and dispatches until `shutdown` turns true.
pub async fn run(
    log: EventLog,
    hub: Arc<Hub>,
    wake: Wake,
    mut cursor: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = RETRY_FIRST;
    loop {
        tokio::select! {
            _ = wake.0.notified() => {}
            _ = shutdown.changed() => return,
        }
        loop {
            match log.all_since(cursor, PAGE).await {
                Ok(events) => {
                    retry = RETRY_FIRST;
                    let full = events.len() as i64 == PAGE;
                    for event in events {
                        cursor = event.position;
                        hub.deliver(Arc::new(LiveEvent {
                            partner_id: event.partner_id,
                            seq: event.seq,
                            position: event.position,
                            text: Utf8Bytes::from(event.json),
                        }));
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "reading the event log failed");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
