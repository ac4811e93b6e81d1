//! The node's one LISTEN connection (tokio-postgres, `application_name`
//! `commissions:listener`, TLS as `DATABASE_URL`'s `sslmode` says (see
//! `db::tls`), TCP keepalives on, so a dead peer is noticed even when no
//! event flows).
//!
//! It LISTENs on the channels the hub asks for: `commissions_admin` always,
//! and `commissions_partner_<id>` per partner room in the partner mode. A
//! notification's payload is never used: it only wakes the feed
//! (src/realtime/feed.rs), which reads the events from the log. The hub
//! sends [`Command`]s in the order its rooms change; they are executed in
//! that order (batched), so the last command for a channel always wins.
//! A [`Command::Confirm`] is answered only once everything queued before it
//! has been executed on a live connection: that is how a joining socket
//! knows its LISTEN is in force before it reads the head of the log.
//!
//! When the connection drops, the listener reconnects with backoff, LISTENs
//! on every channel the rooms need at that moment, then wakes the feed,
//! which reads from its cursor whatever committed while nothing was
//! listening. Commands queued meanwhile are executed after that, in order.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{feed::Wake, hub::Hub};

pub const LISTENER_APPLICATION_NAME: &str = "commissions:listener";
pub const ADMIN_CHANNEL: &str = "commissions_admin";
pub const PARTNER_CHANNEL_PREFIX: &str = "commissions_partner_";

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Commands executed in one round trip at most.
const BATCH: usize = 512;

#[derive(Debug)]
pub enum Command {
    Listen(String),
    Unlisten(String),
    /// Answered when every command queued before it has been executed.
    Confirm(oneshot::Sender<()>),
}

impl Command {
    fn sql(&self) -> Option<String> {
        // Channel names are built by the hub from an i64 or a constant, so
        // they are always plain identifiers; quoting is belt and braces.
        match self {
            Command::Listen(channel) => Some(format!("LISTEN \"{channel}\";")),
            Command::Unlisten(channel) => Some(format!("UNLISTEN \"{channel}\";")),
            Command::Confirm(_) => None,
        }
    }
}

/// Runs until `shutdown` turns true. Never gives up on PostgreSQL.
pub async fn run(
    database_url: String,
    hub: Arc<Hub>,
    feed: Wake,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (config, tls) = match crate::db::tls::tokio_postgres(&database_url) {
        Ok((mut config, tls)) => {
            config
                .application_name(LISTENER_APPLICATION_NAME)
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(30))
                .keepalives_interval(Duration::from_secs(10))
                .keepalives_retries(3)
                .connect_timeout(Duration::from_secs(10));
            (config, tls)
        }
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "the LISTEN connection cannot use DATABASE_URL"
            );
            return;
        }
    };
    let mut backoff = BACKOFF_FIRST;
    let mut connected_before = false;
    // Commands taken from the queue but not yet executed when a connection died.
    let mut pending: Vec<Command> = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let session = connect(&config, tls.clone(), feed.clone()).await;
        let (client, mut lost, live) = match session {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(error = %with_causes(&e), retry_in = ?backoff, "the LISTEN connection failed");
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let relisten: String = hub
            .channels()
            .iter()
            .map(|c| format!("LISTEN \"{c}\";"))
            .collect();
        if let Err(e) = client.batch_execute(&relisten).await {
            tracing::warn!(error = %e, "re-LISTEN failed");
            if sleep_or_shutdown(backoff, &mut shutdown).await {
                return;
            }
            continue;
        }
        backoff = BACKOFF_FIRST;
        if connected_before {
            metrics::counter!("realtime_listener_reconnects_total").increment(1);
            tracing::info!(
                "the LISTEN connection is back; the feed reads what committed meanwhile"
            );
        }
        // Whatever committed while nothing was listening is read now, from
        // the feed's cursor: no socket needs to read the log itself (before
        // the feed, every socket did, a thousand reads per reconnect).
        // Let notifications through first, then wake: one that lands in
        // between is then a wake-up too, never dropped.
        live.store(true, Ordering::Release);
        feed.wake();
        connected_before = true;
        loop {
            if pending.is_empty() {
                tokio::select! {
                    n = commands.recv_many(&mut pending, BATCH) => if n == 0 { return },
                    _ = &mut lost => break,
                    _ = shutdown.changed() => return,
                }
            }
            let sql: String = pending.iter().filter_map(Command::sql).collect();
            if !sql.is_empty() {
                if let Err(e) = client.batch_execute(&sql).await {
                    tracing::warn!(error = %e, "LISTEN/UNLISTEN failed; reconnecting");
                    break;
                }
            }
            for command in pending.drain(..) {
                if let Command::Confirm(confirmed) = command {
                    let _ = confirmed.send(());
                }
            }
        }
        tracing::warn!("the LISTEN connection was lost; reconnecting");
    }
}

/// Connects and spawns the task that drives the connection, waking the feed
/// on every notification once the returned flag is set. The receiver
/// resolves when the connection ends.
///
/// Notifications that arrive before the flag is set are dropped, and that
/// loses nothing: the feed is woken right after the flag is set, and it
/// reads everything after its cursor.
async fn connect(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    feed: Wake,
) -> Result<
    (
        tokio_postgres::Client,
        oneshot::Receiver<()>,
        Arc<AtomicBool>,
    ),
    tokio_postgres::Error,
> {
    let (client, mut connection) = config.connect(tls).await?;
    let (lost_tx, lost) = oneshot::channel();
    let live = Arc::new(AtomicBool::new(false));
    let dispatching = live.clone();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                // The payload is not trusted (any login may NOTIFY): it only
                // wakes the feed, which reads the events from the log.
                Ok(AsyncMessage::Notification(_)) if dispatching.load(Ordering::Acquire) => {
                    feed.wake()
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the LISTEN connection failed");
                    break;
                }
            }
        }
        let _ = lost_tx.send(());
    });
    Ok((client, lost, live))
}

/// The error and its causes: tokio-postgres says only "db error" for any
/// refusal by the server (pg_hba.conf, a password), the reason is its source.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
