//! The real-time relay: every committed commission event, pushed to every
//! socket allowed to see it, exactly once and in order.
//!
//! How it fits together:
//! - [`listener`]: one LISTEN connection per node, always on the admin
//!   channel (and per partner room in the partner mode); a notification
//!   only wakes the feed. Reconnects and wakes the feed when it drops.
//! - [`feed`]: reads every event after its cursor from the log on each
//!   wake-up and hands it to the hub. NOTIFY payloads are never forwarded:
//!   any login may NOTIFY, only the engine writes the log.
//! - [`hub`]: the rooms (one per partner, one for admins) and the routing of
//!   each notification to its room's sockets only.
//! - [`socket`]: `GET /notifications`, the handshake checks and the task that
//!   runs one socket. Its route is `http`'s; a refused handshake is an
//!   [`Error`], which `http` turns into a problem response. This layer
//!   imports nothing of `http` or of the state handlers share.
//!
//! Why no event is lost or repeated:
//! - A partner's `seq` is gapless and in commit order (the engine's publisher
//!   bumps `partner_streams.last_seq` at commit, under its row lock, held
//!   through the commit), and the feed hands events to the rooms in log
//!   order. So a partner socket keeps the next `seq` it expects: a
//!   live event below it is a duplicate and is dropped, the expected one is
//!   sent, and one above it reveals a gap, which is read from the event log
//!   before going on. Reconnects and races can only cause gaps or
//!   duplicates, and both are repaired by that rule.
//! - The admin room's `position` is in commit order and, since engine v2,
//!   gapless too (taken at commit from `event_log_head`). The room does not
//!   rely on that (logs written by v1 have gaps where a transaction rolled
//!   back), so it cannot use a jump to reveal a gap. It drops
//!   `position <= last sent`. It needs no jump detection: the feed reads the
//!   log by its own cursor, so it hands every event to the room, in order,
//!   even across a lost LISTEN connection (it reads what it missed when the
//!   connection is back).
//! - Joining: the socket takes its seat first and waits until its LISTEN is
//!   executed; only then does it read the head of the log, send `ready`, and
//!   replay `(since, head]`. Any event that commits after the head was read
//!   is already on its way by NOTIFY; anything before is in the replay.
//!   While replaying, the socket keeps reading the log until a read comes
//!   back short and no newer live event has arrived, so its inbox never has
//!   to buffer a long replay.

/// A socket's place in its room's order, and what to do with each event.
pub mod cursor;
/// Why a handshake is refused.
mod error;
pub mod feed;
pub mod hub;
pub mod inbox;
pub mod listener;
pub mod socket;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch, Notify};

use crate::{config::RealtimeConfig, events::EventLog};

pub use error::Error;
use hub::Hub;

/// The relay of one node, shared by every socket. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    log: EventLog,
    db: sqlx::PgPool,
    config: RealtimeConfig,
    shutdown: watch::Sender<bool>,
    /// Open sockets per user (`sub`).
    users: Mutex<HashMap<String, usize>>,
    handshakes: Mutex<HandshakeWindow>,
    open: AtomicUsize,
    all_closed: Notify,
}

/// Handshakes per client IP and per user in the current one-second window.
struct HandshakeWindow {
    started: Instant,
    counts: HashMap<IpAddr, u32>,
    users: HashMap<String, u32>,
}

impl Relay {
    /// Starts the node's LISTEN connection. Sockets come later, through [`socket`].
    /// Starts the LISTEN connection and the feed. The feed's cursor is the
    /// log's head, read here, before the node serves any socket: every event
    /// committed after it reaches the rooms, and every socket replays what
    /// came before its own `ready` from the log.
    pub async fn start(
        database_url: &str,
        db: sqlx::PgPool,
        config: RealtimeConfig,
    ) -> Result<Self, sqlx::Error> {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(config.listen_mode, commands));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let log = EventLog::new(db.clone());
        let wake = feed::Wake::default();
        let cursor = feed::start_position(&log).await?;
        tokio::spawn(feed::run(
            log.clone(),
            hub.clone(),
            wake.clone(),
            cursor,
            shutdown_rx.clone(),
        ));
        tokio::spawn(listener::run(
            database_url.to_owned(),
            hub.clone(),
            wake,
            commands_rx,
            shutdown_rx,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                log,
                db,
                config,
                shutdown,
                users: Mutex::default(),
                handshakes: Mutex::new(HandshakeWindow {
                    started: Instant::now(),
                    counts: HashMap::new(),
                    users: HashMap::new(),
                }),
                open: AtomicUsize::new(0),
                all_closed: Notify::new(),
            }),
        })
    }

    /// Closes every socket with 1001 (going away), stops the listener, and
    /// waits (at most `grace`) for the sockets to finish closing.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.send_replace(true);
        let wait = async {
            loop {
                let closed = self.inner.all_closed.notified();
                if self.inner.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                closed.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!(
                open = self.open_sockets(),
                "sockets still open after the shutdown grace period"
            );
        }
    }

    pub fn open_sockets(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    fn handshake_window(&self) -> std::sync::MutexGuard<'_, HandshakeWindow> {
        let mut window = self
            .inner
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if window.started.elapsed() >= Duration::from_secs(1) {
            window.started = Instant::now();
            window.counts.clear();
            window.users.clear();
        }
        window
    }

    /// Counts a handshake from `ip` (before the token is checked, so that
    /// checking tokens cannot be made to burn CPU); false once the IP is over
    /// its budget for this second.
    fn allow_handshake(&self, ip: IpAddr) -> bool {
        let mut window = self.handshake_window();
        let count = window.counts.entry(ip).or_insert(0);
        *count += 1;
        *count <= self.inner.config.ws_handshakes_per_second_per_ip
    }

    /// Counts an authenticated handshake of `sub`: behind one proxy many users
    /// share an address, and one user's reconnect loop must not spend theirs.
    fn allow_user_handshake(&self, sub: &str) -> bool {
        let mut window = self.handshake_window();
        let count = match window.users.get_mut(sub) {
            Some(count) => count,
            None => window.users.entry(sub.to_owned()).or_insert(0),
        };
        *count += 1;
        *count <= self.inner.config.ws_handshakes_per_second_per_user
    }

    /// Takes one of the user's socket slots, given back when the guard drops.
    fn take_user_slot(&self, sub: &str) -> Option<UserSlot> {
        let mut users = self.inner.users.lock().unwrap_or_else(|p| p.into_inner());
        let count = users.entry(sub.to_owned()).or_insert(0);
        if *count >= self.inner.config.ws_max_sockets_per_user {
            return None;
        }
        *count += 1;
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("realtime_sockets").increment(1.0);
        Some(UserSlot {
            relay: self.clone(),
            sub: sub.to_owned(),
        })
    }
}

/// One open socket of a user. Dropping it frees the slot.
struct UserSlot {
    relay: Relay,
    sub: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let inner = &self.relay.inner;
        {
            let mut users = inner.users.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = users.get_mut(&self.sub) {
                *count -= 1;
                if *count == 0 {
                    users.remove(&self.sub);
                }
            }
        }
        metrics::gauge!("realtime_sockets").decrement(1.0);
        if inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.all_closed.notify_waiters();
        }
    }
}
