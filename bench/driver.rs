//! Drives verified payments into the service, straight through SQL or
//! through the signed Stripe webhook, at a fixed rate or as fast as it goes,
//! while the sockets of `clients` check and time every event.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    clients::{self, Clock, Room, SocketOutcome, AMOUNT_BASE_MINOR},
    cpu,
    node::{listener_backends_cpu, BenchDatabase, ListenMode, Node, STRIPE_SECRET},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Path {
    Sql,
    Webhook,
}

#[derive(Debug, Clone)]
pub struct Load {
    pub nodes: usize,
    pub sockets: usize,
    pub admin_sockets: usize,
    pub partners: usize,
    pub concurrency: usize,
    pub duration: Duration,
    /// Payments per second; None = as fast as possible.
    pub rate: Option<u64>,
    pub path: Path,
    pub kill_listener_every: Option<Duration>,
    pub listen_mode: ListenMode,
}

pub struct Outcome {
    pub sent: u64,
    pub failed_requests: u64,
    pub elapsed: Duration,
    pub committed_events: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub closed_early: u64,
    pub latency_us: Histogram<u64>,
    pub server_peak_rss_kib: u64,
    pub listener_kills: u64,
    /// CPU of the nodes' LISTEN backends in PostgreSQL, % of one core (None if one was replaced).
    pub listener_backend_cpu_percent: Option<f64>,
    pub cpu: cpu::Spent,
    /// How many payments each commit of the load phase verified: (payments
    /// in one commit, commits of that size), from the ledger's `xact_id`.
    pub commit_sizes: Vec<(i64, i64)>,
}

/// Untimed requests each sender makes before the sockets open.
const WARM_UP_PER_SENDER: usize = 10;
/// Warm-up requests are numbered from here, far above any measured one, so their
/// event ids and payment references never collide with the measured requests'.
const WARM_UP_FIRST_REQUEST: u64 = 50_000_000;

/// Each partner's `last_seq`: the number of events its room has had so far.
async fn partner_seqs(
    client: &tokio_postgres::Client,
    partners: &[i64],
) -> anyhow::Result<HashMap<i64, i64>> {
    Ok(client
        .query(
            "SELECT id, partner_last_seq(id) FROM partners WHERE id = ANY($1)",
            &[&partners],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub async fn create_partners(db: &BenchDatabase, count: usize) -> anyhow::Result<Vec<i64>> {
    let client = db.connect().await?;
    let rows = client
        .query("INSERT INTO partners (name) SELECT 'bench partner ' || i FROM generate_series(1, $1::int) i RETURNING id", &[&(count as i32)])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn amount_of(request: u64) -> rust_decimal::Decimal {
    rust_decimal::Decimal::new((AMOUNT_BASE_MINOR + request) as i64, 2)
}

/// Tells this load's webhook events apart from every earlier load's in the same
/// bench database: a provider event id seen before is (rightly) a duplicate.
fn run_tag() -> String {
    static LOADS: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        LOADS.fetch_add(1, Ordering::Relaxed)
    )
}

fn stripe_event(run: &str, request: u64, partner: i64) -> String {
    serde_json::json!({
        "id": format!("evt_bench_{run}_{request}"),
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": { "object": {
            "id": format!("pi_bench_{run}_{request}"),
            "object": "payment_intent",
            "amount": AMOUNT_BASE_MINOR + request,
            "amount_received": AMOUNT_BASE_MINOR + request,
            "currency": "ngn",
            "status": "succeeded",
            "metadata": { "partner_id": partner.to_string() }
        }}
    })
    .to_string()
}

fn stripe_signature(body: &str) -> String {
    let timestamp = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

enum Sender {
    Sql(tokio_postgres::Client, tokio_postgres::Statement),
    /// The client, the nodes' base URLs, and this load's run tag.
    Webhook(reqwest::Client, Vec<String>, String),
}

impl Sender {
    async fn send(&self, request: u64, partner: i64) -> anyhow::Result<()> {
        match self {
            Sender::Sql(client, statement) => {
                client
                    .execute(statement, &[&amount_of(request), &partner])
                    .await?;
            }
            Sender::Webhook(http, nodes, run) => {
                let body = stripe_event(run, request, partner);
                let node = &nodes[request as usize % nodes.len()];
                let response = http
                    .post(format!("{node}/webhooks/stripe"))
                    .header("content-type", "application/json")
                    .header("stripe-signature", stripe_signature(&body))
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "webhook answered {}",
                    response.status()
                );
                // A 200 also acknowledges what changed nothing (a duplicate, say): only
                // `verified` is a payment verified.
                let receipt: serde_json::Value = response.json().await?;
                anyhow::ensure!(
                    receipt["outcome"] == "verified",
                    "webhook outcome {}",
                    receipt["outcome"]
                );
            }
        }
        Ok(())
    }
}

pub async fn run(db: &BenchDatabase, load: &Load) -> anyhow::Result<Outcome> {
    let partners = create_partners(db, load.partners).await?;
    let mut nodes = Vec::new();
    for _ in 0..load.nodes {
        nodes.push(Node::start_in(db, load.listen_mode).await?);
    }

    // Senders first, warmed up before any socket opens: a node's pool opens its
    // connections and PostgreSQL compiles the engine's functions on first use,
    // which would otherwise put a startup cost into the measured tail.
    let run = run_tag();
    let mut senders = Vec::with_capacity(load.concurrency);
    for _ in 0..load.concurrency {
        senders.push(Arc::new(match load.path {
            Path::Sql => {
                let client = db.connect().await?;
                let statement = client
                    .prepare("INSERT INTO payments (amount, currency, partner_id, status) VALUES ($1, 'NGN', $2, 'verified')")
                    .await?;
                Sender::Sql(client, statement)
            }
            Path::Webhook => Sender::Webhook(
                reqwest::Client::new(),
                nodes.iter().map(Node::http).collect(),
                run.clone(),
            ),
        }));
    }
    let warm_ups: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, sender)| {
            let (sender, partners) = (sender.clone(), partners.clone());
            tokio::spawn(async move {
                for k in 0..WARM_UP_PER_SENDER {
                    let request = WARM_UP_FIRST_REQUEST + (i * WARM_UP_PER_SENDER + k) as u64;
                    sender
                        .send(request, partners[request as usize % partners.len()])
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for warm_up in warm_ups {
        warm_up.await?.context("warm-up request")?;
    }

    // Open every socket and wait for its `ready` before any payment is sent.
    let mut rooms = Vec::new();
    for i in 0..load.sockets {
        rooms.push((i, Room::Partner(partners[i % partners.len()])));
    }
    for i in 0..load.admin_sockets {
        rooms.push((load.sockets + i, Room::Admin));
    }
    let mut sockets = Vec::with_capacity(rooms.len());
    for chunk in rooms.chunks(256) {
        let mut batch = Vec::new();
        for &(i, room) in chunk {
            let ws = nodes[i % nodes.len()].ws();
            batch.push(tokio::spawn(async move {
                let sub = format!("bench-{i}");
                clients::connect(&ws, &sub, room, None)
                    .await
                    .map(|(s, head)| (s, (ws, sub), room, head))
            }));
        }
        for task in batch {
            sockets.push(task.await?.context("open socket")?);
        }
    }

    let capacity = match load.rate {
        Some(rate) => (rate as f64 * load.duration.as_secs_f64() * 1.5) as usize + 10_000,
        None => 400_000,
    };
    let clock = Clock::new(capacity);
    let expected: Arc<OnceLock<HashMap<Room, u64>>> = Arc::new(OnceLock::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let mut consumers = Vec::new();
    for (socket, address, room, head) in sockets {
        let (clock, stop, expected) = (clock.clone(), stop_rx.clone(), expected.clone());
        consumers.push(tokio::spawn(async move {
            clients::consume(socket, address, room, head, clock, stop, move |r| {
                expected.get().and_then(|m| m.get(&r).copied())
            })
            .await
        }));
    }
    // What each partner's sockets will be owed is counted from here (the warm-up came before).
    let partner_heads = partner_seqs(&db.connect().await?, &partners).await?;
    let admin_head = db
        .connect()
        .await?
        .query_one(
            "SELECT coalesce(max(position), 0) FROM commission_events",
            &[],
        )
        .await?
        .get::<_, i64>(0);

    // Commits are counted from the ledger: each earned entry carries the
    // transaction that wrote it, so a batch shows as one xact_id.
    let ledger_head: i64 = db
        .connect()
        .await?
        .query_one("SELECT coalesce(max(id), 0) FROM commissions", &[])
        .await?
        .get(0);

    let kills = Arc::new(AtomicU64::new(0));
    let killer = load.kill_listener_every.map(|every| {
        let (url, name, kills) = (db.url.clone(), db.name.clone(), kills.clone());
        tokio::spawn(async move {
            let client = crate::node::connect(&url).await?;
            loop {
                tokio::time::sleep(every).await;
                let n = client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'commissions:listener' AND datname = $1",
                        &[&name],
                    )
                    .await?;
                kills.fetch_add(n, Ordering::Relaxed);
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    });

    let node_pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
    let backends_before = listener_backends_cpu(db).await?;
    let cpu_before = cpu::Snapshot::take(&node_pids);
    let next_request = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut workers = Vec::new();
    for sender in senders {
        let (clock, partners, next_request, failed) = (
            clock.clone(),
            partners.clone(),
            next_request.clone(),
            failed.clone(),
        );
        let rate = load.rate;
        workers.push(tokio::spawn(async move {
            loop {
                let request = next_request.fetch_add(1, Ordering::Relaxed);
                match rate {
                    // Request n is due at n / rate: a schedule, not a feedback loop, so a
                    // slow answer makes the next requests late, never fewer.
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(request as f64 / rate as f64);
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                    }
                    None if Instant::now() >= deadline => break,
                    None => {}
                }
                if request as usize >= clock.capacity() {
                    break;
                }
                clock.mark_sent(request);
                if let Err(e) = sender
                    .send(request, partners[request as usize % partners.len()])
                    .await
                {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("request {request} failed: {e:#}");
                    }
                }
            }
            sender
        }));
    }
    // The senders live until the CPU is read: a SQL sender's backend exits
    // with its connection, and its CPU with it.
    let mut idle_senders = Vec::new();
    for worker in workers {
        idle_senders.extend(worker.await);
    }
    let elapsed = started.elapsed();
    let cpu = cpu::Snapshot::take(&node_pids).spent_since(&cpu_before, elapsed);
    drop(idle_senders);
    if let Some(killer) = killer {
        killer.abort();
    }
    let backends_after = listener_backends_cpu(db).await?;
    let listener_backend_cpu_percent = (backends_before.len() == nodes.len()
        && backends_after.len() == nodes.len()
        && backends_before
            .iter()
            .all(|(pid, _)| backends_after.iter().any(|(p, _)| p == pid)))
    .then(|| {
        let used: f64 = backends_after.iter().map(|(_, s)| s).sum::<f64>()
            - backends_before.iter().map(|(_, s)| s).sum::<f64>();
        100.0 * used / elapsed.as_secs_f64()
    });

    // What each room should have received: the log says.
    let client = db.connect().await?;
    let mut want = HashMap::new();
    for (id, seq) in partner_seqs(&client, &partners).await? {
        let head = partner_heads.get(&id).copied().unwrap_or(0);
        want.insert(Room::Partner(id), (seq - head) as u64);
    }
    let committed_events: i64 = client
        .query_one(
            "SELECT count(*) FROM commission_events WHERE position > $1",
            &[&admin_head],
        )
        .await?
        .get(0);
    want.insert(Room::Admin, committed_events as u64);
    let commit_sizes = client
        .query(
            "SELECT n, count(*) FROM (SELECT count(*) AS n FROM commissions
                                       WHERE id > $1 AND kind = 'earned' GROUP BY xact_id) per_commit
              GROUP BY n ORDER BY n",
            &[&ledger_head],
        )
        .await?
        .iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        .collect();
    let _ = expected.set(want.clone());
    let _ = stop_tx.send(Some(committed_events as u64));

    let mut outcome = Outcome {
        sent: next_request
            .load(Ordering::Relaxed)
            .min(clock.capacity() as u64),
        failed_requests: failed.load(Ordering::Relaxed),
        elapsed,
        committed_events: committed_events as u64,
        delivered: 0,
        expected_deliveries: 0,
        duplicates: 0,
        gaps: 0,
        closed_early: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        server_peak_rss_kib: nodes
            .iter()
            .map(|n| n.stats().peak_rss_kib)
            .max()
            .unwrap_or(0),
        listener_kills: kills.load(Ordering::Relaxed),
        listener_backend_cpu_percent,
        cpu,
        commit_sizes,
    };
    for consumer in consumers {
        let socket: SocketOutcome = consumer.await?;
        outcome.expected_deliveries += want.get(&socket.room).copied().unwrap_or(0);
        outcome.delivered += socket.received;
        outcome.duplicates += socket.duplicates;
        outcome.gaps += socket.gaps;
        if let Some(reason) = &socket.closed_early {
            if outcome.closed_early < 3 {
                eprintln!("a socket was closed by the server and resumed {} time(s); last reason: {reason}", socket.resumes);
            }
            outcome.closed_early += socket.resumes.max(1);
        }
        outcome.latency_us.add(&socket.latency_us)?;
    }
    Ok(outcome)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ResumeRow {
    pub missed: usize,
    pub received: usize,
    pub duplicates: usize,
    pub millis_to_all: f64,
}

/// A partner's dashboard misses `missed` events, then reconnects with since.
pub async fn resume(db: &BenchDatabase, missed: usize) -> anyhow::Result<ResumeRow> {
    let partner = create_partners(db, 1).await?[0];
    let node = Node::start(db).await?;
    let (socket, head) =
        clients::connect(&node.ws(), "resume", Room::Partner(partner), None).await?;
    drop(socket);
    db.connect()
        .await?
        .execute(
            "INSERT INTO payments (amount, currency, partner_id, status) \
             SELECT 100, 'NGN', $1, 'verified' FROM generate_series(1, $2::int)",
            &[&partner, &(missed as i32)],
        )
        .await?;
    let target = head + missed as i64;
    let started = Instant::now();
    let (mut socket, _) =
        clients::connect(&node.ws(), "resume", Room::Partner(partner), Some(head)).await?;
    let (mut received, mut duplicates, mut last) = (0usize, 0usize, head);
    while last < target {
        let Some(message) = tokio::time::timeout(Duration::from_secs(30), socket.next()).await?
        else {
            break;
        };
        if let Message::Text(text) = message? {
            // Every message is parsed whole (serde checks the JSON through to its end); only
            // the fields the count needs are kept.
            #[derive(serde::Deserialize)]
            struct Received<'a> {
                #[serde(rename = "type")]
                kind: &'a str,
                seq: Option<i64>,
            }
            let got: Received = serde_json::from_str(&text)?;
            if let Some(seq) = got.seq.filter(|_| got.kind != "ready") {
                if seq <= last {
                    duplicates += 1;
                } else {
                    received += 1;
                    last = seq;
                }
            }
        }
    }
    Ok(ResumeRow {
        missed,
        received,
        duplicates,
        millis_to_all: started.elapsed().as_secs_f64() * 1000.0,
    })
}
