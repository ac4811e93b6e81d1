//! Dashboard stand-ins: WebSocket clients that check every event they get
//! (in order, no gap, no duplicate) and time it against the moment its
//! payment was sent.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

use crate::node::{self, BenchDatabase, Node};

/// When each request number was sent, in nanoseconds since `start`.
pub struct Clock {
    pub start: Instant,
    sent: Vec<AtomicU64>,
}

/// Each client socket's read buffer (a replay arrives in 4 KiB writes).
const CLIENT_READ_BUFFER: usize = 8 * 1024;

/// Payment amounts are 10000.00 NGN plus the request number in kobo, so an
/// event's `payment_amount` names the request it answers.
pub const AMOUNT_BASE_MINOR: u64 = 1_000_000;

impl Clock {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            sent: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.sent.len()
    }

    pub fn mark_sent(&self, request: u64) {
        let now = self.start.elapsed().as_nanos() as u64;
        if let Some(slot) = self.sent.get(request as usize) {
            slot.store(now.max(1), Ordering::Relaxed);
        }
    }

    fn latency_micros(&self, payment_amount: &str) -> Option<u64> {
        let minor: u64 = payment_amount.replace('.', "").parse().ok()?;
        let request = minor.checked_sub(AMOUNT_BASE_MINOR)?;
        let sent = self.sent.get(request as usize)?.load(Ordering::Relaxed);
        (sent > 0).then(|| (self.start.elapsed().as_nanos() as u64).saturating_sub(sent) / 1_000)
    }
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: Option<i64>,
    position: Option<i64>,
    #[serde(borrow)]
    data: Option<EventData<'a>>,
}

#[derive(Deserialize)]
struct EventData<'a> {
    payment_amount: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Room {
    Partner(i64),
    Admin,
}

pub struct SocketOutcome {
    pub room: Room,
    /// Distinct events received, in order.
    pub received: u64,
    pub duplicates: u64,
    /// A partner event whose seq skipped ahead: an event was lost.
    pub gaps: u64,
    /// Why the server closed the socket before the end (the client then resumed with since).
    pub closed_early: Option<String>,
    pub resumes: u64,
    pub latency_us: Histogram<u64>,
}

pub fn token(sub: &str, room: Room) -> String {
    let (role, partner_id) = match room {
        Room::Partner(id) => (commissions::auth::Role::Partner, Some(id)),
        Room::Admin => (commissions::auth::Role::Admin, None),
    };
    let claims = commissions::auth::Claims {
        sub: sub.to_owned(),
        role,
        partner_id,
        exp: chrono::Utc::now().timestamp() + 3600,
    };
    commissions::auth::mint(&claims, node::JWT_SECRET)
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and waits for `ready`; returns the socket and the head it reported.
pub async fn connect(
    ws_url: &str,
    sub: &str,
    room: Room,
    since: Option<i64>,
) -> anyhow::Result<(Socket, i64)> {
    let mut url = format!("{ws_url}?token={}", token(sub, room));
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    // tungstenite 0.26 zeroes its whole read buffer before every read: at the
    // default 128 KiB that memset was 40% of this generator's CPU (perf), CPU
    // taken from the system under test on a shared machine. Events are < 1 KiB.
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .context("websocket handshake")?;
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            let incoming: Incoming = serde_json::from_str(&text)?;
            if incoming.kind == "ready" {
                return Ok((socket, incoming.seq.or(incoming.position).unwrap_or(0)));
            }
            bail!("first message was {:?}, not ready", incoming.kind);
        }
    }
    bail!("closed before ready")
}

/// Reads events until `stop` flips and the expected count is reached (or a grace period passes).
pub async fn consume(
    mut socket: Socket,
    (ws_url, sub): (String, String),
    room: Room,
    mut last: i64,
    clock: Arc<Clock>,
    mut stop: tokio::sync::watch::Receiver<Option<u64>>,
    expected_for: impl Fn(Room) -> Option<u64> + Send,
) -> SocketOutcome {
    let mut outcome = SocketOutcome {
        room,
        received: 0,
        duplicates: 0,
        gaps: 0,
        closed_early: None,
        resumes: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if deadline.is_none() && stop.borrow().is_some() {
            deadline = Some(tokio::time::Instant::now() + Duration::from_secs(15));
        }
        if deadline.is_some() {
            if let Some(expected) = expected_for(room) {
                if outcome.received >= expected {
                    break;
                }
            }
        }
        let next = tokio::select! {
            m = socket.next() => m,
            _ = stop.changed(), if deadline.is_none() => continue,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))), if deadline.is_some() => break,
        };
        let closed = match next {
            Some(Ok(Message::Text(text))) => Ok(text),
            Some(Ok(Message::Close(frame))) => Err(frame
                .map(|f| format!("{} {}", f.code, f.reason))
                .unwrap_or_default()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => Err(e.to_string()),
            None => Err("stream ended".into()),
        };
        let text = match closed {
            Ok(text) => text,
            Err(reason) => {
                // What a dashboard does: reconnect and resume from the last event it applied.
                outcome.closed_early = Some(reason);
                match connect(&ws_url, &sub, room, Some(last)).await {
                    Ok((resumed, _)) => {
                        socket = resumed;
                        outcome.resumes += 1;
                        continue;
                    }
                    Err(e) => {
                        outcome.closed_early = Some(format!(
                            "{} (resume failed: {e:#})",
                            outcome.closed_early.take().unwrap_or_default()
                        ));
                        break;
                    }
                }
            }
        };
        let Ok(incoming) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        let cursor = match room {
            Room::Partner(_) => incoming.seq,
            Room::Admin => incoming.position,
        };
        let Some(cursor) = cursor else { continue };
        if cursor <= last {
            outcome.duplicates += 1;
            continue;
        }
        if matches!(room, Room::Partner(_)) && cursor > last + 1 {
            outcome.gaps += (cursor - last - 1) as u64;
        }
        last = cursor;
        outcome.received += 1;
        if let Some(micros) = incoming
            .data
            .and_then(|d| d.payment_amount)
            .and_then(|a| clock.latency_micros(a))
        {
            let _ = outcome.latency_us.record(micros.max(1));
        }
    }
    let _ = socket.close(None).await;
    outcome
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleRow {
    pub sockets: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_socket: f64,
}

/// RSS growth of a fresh node per idle socket held open.
pub async fn idle_rss(
    db: &BenchDatabase,
    count: usize,
    partners: usize,
) -> anyhow::Result<IdleRow> {
    let partner_ids = crate::driver::create_partners(db, partners).await?;
    let node = Node::start(db).await?;
    // Warm up: one socket per partner, so the baseline includes the code paths and LISTENs.
    let mut warm = Vec::new();
    for (i, partner) in partner_ids.iter().enumerate() {
        warm.push(
            connect(
                &node.ws(),
                &format!("warm-{i}"),
                Room::Partner(*partner),
                None,
            )
            .await?
            .0,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = node.stats().rss_kib;

    let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut holders = Vec::with_capacity(count);
    let ws = node.ws();
    let mut opened = 0;
    for chunk in (0..count).collect::<Vec<_>>().chunks(256) {
        let mut batch = Vec::new();
        for &i in chunk {
            let ws = ws.clone();
            let room = Room::Partner(partner_ids[i % partner_ids.len()]);
            batch.push(tokio::spawn(async move {
                connect(&ws, &format!("idle-{i}"), room, None).await
            }));
        }
        for task in batch {
            let (mut socket, _) = task.await??;
            opened += 1;
            let mut done = done_tx.subscribe();
            // Keep reading so pings are answered, until the measurement is over.
            holders.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        m = socket.next() => if m.is_none() { break },
                        _ = done.recv() => break,
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = node.stats().rss_kib;
    let _ = done_tx.send(());
    for holder in holders {
        let _ = holder.await;
    }
    drop(warm);
    Ok(IdleRow {
        sockets: opened,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_socket: (after.saturating_sub(before) * 1024) as f64 / opened.max(1) as f64,
    })
}
