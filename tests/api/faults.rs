//! Faults to survive (issue 13), each against real PostgreSQL and real
//! sockets: PostgreSQL restarted under load, a node killed in the middle of
//! webhook requests, every pooled connection busy. What each proves is in
//! docs/reliability.md, "Faults".

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use commissions::{config::ListenMode, db};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    callers::{now, stripe_signature},
    cluster::Cluster,
    helpers::{
        create_partner, create_payment, spawn_app_with, spawn_node, TestDatabase, JWT_SECRET,
        STRIPE_SECRET,
    },
    realtime::{admin_token, open, partner_token, Ws, PATIENCE},
};

/// Commits a verified payment in SQL, as a DBA's or another service's
/// session would, retrying across an outage. The reference makes a retry of
/// a commit whose answer was lost a no-op instead of a second payment.
async fn commit_payment(pool: &PgPool, partner: i64, reference: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let inserted = sqlx::query(
            "INSERT INTO payments (amount, currency, partner_id, status, provider_reference) \
             VALUES (100, 'NGN', $1, 'verified', $2) \
             ON CONFLICT (provider, provider_reference) DO NOTHING",
        )
        .bind(partner)
        .bind(reference)
        .execute(pool)
        .await;
        match inserted {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "commit failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the payment {reference} could not be committed: {e}"),
        }
    }
}

/// A socket as a client following the protocol keeps it: when the node
/// closes it (or it breaks), it reconnects with `since` = the last number it
/// got. `key` is the field it counts by: `seq` (partner) or `position` (admin).
struct Follower {
    address: SocketAddr,
    token: String,
    key: &'static str,
    ws: Ws,
    got: Vec<i64>,
    reconnects: usize,
}

impl Follower {
    async fn open(address: SocketAddr, token: String, key: &'static str) -> Self {
        let (ws, _) = open(address, &format!("token={token}")).await;
        Self {
            address,
            token,
            key,
            ws,
            got: Vec::new(),
            reconnects: 0,
        }
    }

    /// Reads until it holds `n` events.
    async fn read_until(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.got.len() < n {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {n} events by {} before the patience ran out: {:?}",
                        self.got.len(),
                        self.key,
                        self.got
                    )
                });
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("commission."))
                    {
                        self.got.push(message[self.key].as_i64().unwrap());
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => self.reconnect().await,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn reconnect(&mut self) {
        self.reconnects += 1;
        let since = self.got.last().copied().unwrap_or(0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = format!(
                "ws://{}/notifications?token={}&since={since}",
                self.address, self.token
            );
            let attempt = async {
                let stream = tokio::net::TcpStream::connect(self.address).await.ok()?;
                tokio_tungstenite::client_async(url, stream)
                    .await
                    .ok()
                    .map(|(ws, _)| ws)
            };
            if let Some(ws) = attempt.await {
                self.ws = ws;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no reconnect within the patience"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Nothing more arrives (a late duplicate would).
    async fn quiet(&mut self) {
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(500), self.ws.next()).await
        {
            if let Message::Text(text) = frame {
                panic!("after every event, {} still got {text}", self.key);
            }
        }
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> Option<u16> {
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_postgresql_restart_under_load_loses_and_repeats_no_event_and_readyz_is_503_meanwhile() {
    let cluster = Cluster::start_new("restart");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    db::migrate(&url).await.expect("migrate the cluster");
    // The nodes log in as the service, as in production (the cluster trusts local logins).
    let service_url = format!(
        "postgres://commissions_service@127.0.0.1:{}/postgres",
        cluster.port
    );
    // Both listen modes: the firehose node, and one LISTENing per partner.
    let firehose = spawn_node(&service_url, |_| {}).await;
    let per_partner = spawn_node(&service_url, |c| {
        c.realtime.listen_mode = ListenMode::Partner
    })
    .await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .unwrap();
    let partners = [
        create_partner(&pool, "Acme", None).await,
        create_partner(&pool, "Globex", None).await,
    ];
    let mut followers = Vec::new();
    for node in [&firehose, &per_partner] {
        for partner in partners {
            followers.push(Follower::open(node.address, partner_token(partner), "seq").await);
        }
        followers.push(Follower::open(node.address, admin_token(), "position").await);
    }

    const PER_PARTNER: usize = 30;
    let committed = Arc::new(AtomicUsize::new(0));
    let payments = tokio::spawn({
        let (pool, committed) = (pool.clone(), committed.clone());
        async move {
            for i in 0..PER_PARTNER * 2 {
                commit_payment(&pool, partners[i % 2], &format!("restart-{i}")).await;
                committed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    while committed.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The restart, with /readyz polled on both nodes while it runs.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let restarting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poll = tokio::spawn({
        let (http, bases, restarting) = (
            http.clone(),
            [firehose.base.clone(), per_partner.base.clone()],
            restarting.clone(),
        );
        async move {
            let mut seen = Vec::new();
            while restarting.load(Ordering::SeqCst) {
                for base in &bases {
                    seen.push(readyz(&http, base).await);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }
    });
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    restarting.store(false, Ordering::SeqCst);
    let seen = poll.await.unwrap();
    let cluster = if seen.contains(&Some(503)) {
        cluster
    } else {
        // Too fast to catch: take the database away for longer.
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.stop();
            cluster
        })
        .await
        .unwrap();
        for node in [&firehose, &per_partner] {
            assert_eq!(readyz(&http, &node.base).await, Some(503), "{seen:?}");
        }
        tokio::task::spawn_blocking(move || {
            cluster.start();
            cluster
        })
        .await
        .unwrap()
    };

    payments.await.unwrap();
    // The nodes are ready again, without a restart of their own.
    for node in [&firehose, &per_partner] {
        let deadline = Instant::now() + PATIENCE;
        while readyz(&http, &node.base).await != Some(200) {
            assert!(Instant::now() < deadline, "{} never ready again", node.base);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every socket ends with every event once, in order.
    for follower in &mut followers {
        let n = match follower.key {
            "seq" => PER_PARTNER,
            _ => PER_PARTNER * 2,
        };
        follower.read_until(n).await;
        assert_eq!(
            follower.got,
            (1..=n as i64).collect::<Vec<_>>(),
            "{} on {}, after {} reconnects",
            follower.key,
            follower.address,
            follower.reconnects
        );
        follower.quiet().await;
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM commissions")
            .fetch_one(&pool)
            .await
            .unwrap(),
        (PER_PARTNER * 2) as i64
    );
    // A socket opened after the outage replays from the log like any other.
    let mut late = Follower::open(per_partner.address, admin_token(), "position").await;
    late.reconnect().await; // since=0: the whole log
    late.read_until(PER_PARTNER * 2).await;
    assert_eq!(late.got, (1..=(PER_PARTNER * 2) as i64).collect::<Vec<_>>());
    pool.close().await;
    drop((firehose, per_partner));
    drop(cluster);
}

/// One `commissions serve` process, killed on drop.
struct ServeProcess {
    child: Child,
    base: String,
}

impl ServeProcess {
    async fn start(database_url: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_commissions"))
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("DB_MAX_CONNECTIONS", "6")
            // Batches of two: a kill then lands between commits, with some
            // webhooks answered, some in a batch in flight and some queued.
            .env("WEBHOOK_BATCH_MAX", "2")
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("JWT_SECRET", JWT_SECRET)
            .env("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start commissions serve");
        let node = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        while readyz(&http, &node.base).await != Some(200) {
            assert!(Instant::now() < deadline, "the node never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// SIGKILL: no graceful shutdown, no transaction finished on its behalf.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn succeeded(i: usize, partner: i64) -> String {
    json!({
        "id": format!("evt_kill_{i}"),
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": format!("pi_kill_{i}"), "object": "payment_intent",
            "amount": 10000, "amount_received": 10000, "currency": "ngn",
            "metadata": {"partner_id": partner.to_string()}
        }}
    })
    .to_string()
}

/// Sends one webhook as Stripe does; the status, or None if the node went away.
async fn deliver(http: &reqwest::Client, base: &str, body: String) -> Option<u16> {
    http.post(format!("{base}/webhooks/stripe"))
        .header(
            "Stripe-Signature",
            stripe_signature(STRIPE_SECRET, now(), &body),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_node_killed_in_the_middle_of_webhooks_counts_each_event_once_after_the_retries() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let mut node = ServeProcess::start(&db.service_url).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    const N: usize = 60;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut deliveries = Vec::new();
    for i in 0..N {
        let (http, base, answered) = (http.clone(), node.base.clone(), answered.clone());
        deliveries.push(tokio::spawn(async move {
            let status = deliver(&http, &base, succeeded(i, partner)).await;
            if status.is_some() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            status
        }));
    }
    // Mid-way: some answered, the rest in flight or not yet sent.
    let deadline = Instant::now() + PATIENCE;
    while answered.load(Ordering::SeqCst) < N / 4 {
        assert!(Instant::now() < deadline, "no webhook answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    node.kill();
    let mut first = Vec::new();
    for delivery in deliveries {
        first.push(delivery.await.unwrap());
    }
    assert!(
        first.iter().all(|s| matches!(s, None | Some(200))),
        "{first:?}"
    );
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let before = count("SELECT count(*) FROM payments").await as usize;
    assert!(before < N, "the kill came after every webhook: {first:?}");
    // Whatever was answered 200 is committed.
    let answered_ok = first.iter().filter(|s| **s == Some(200)).count();
    assert!(
        before >= answered_ok,
        "{before} payments, {answered_ok} 200s"
    );

    // The provider retries everything it has no 200 for, and more (its
    // retries race its own timeouts): send all of them again to a new node.
    let node = ServeProcess::start(&db.service_url).await;
    let mut retries = Vec::new();
    for i in 0..N {
        let (http, base) = (http.clone(), node.base.clone());
        retries.push(tokio::spawn(async move {
            deliver(&http, &base, succeeded(i, partner)).await
        }));
    }
    for retry in retries {
        assert_eq!(retry.await.unwrap(), Some(200));
    }
    assert_eq!(count("SELECT count(*) FROM payments").await, N as i64);
    assert_eq!(count("SELECT count(*) FROM commissions").await, N as i64);
    assert_eq!(
        count(
            "SELECT count(DISTINCT event_id) FROM webhook_events WHERE event_id LIKE 'evt_kill_%'"
        )
        .await,
        N as i64
    );
    assert_eq!(count("SELECT count(*) FROM webhook_events").await, N as i64);
    assert_eq!(count("SELECT count(*) FROM commission_audit").await, 0);
    drop(node);
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_with_retry_after_within_the_request_timeout() {
    let db = TestDatabase::new().await;
    // One connection, and a lock wait long enough to hold it past the pool's
    // acquire timeout (5 s).
    let app = spawn_app_with(db, |config| {
        config.database.db_max_connections = 1;
        config.database.db_lock_timeout_ms = 20_000;
        config.database.db_statement_timeout_ms = 25_000;
    })
    .await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;

    // A DBA's open transaction holds the payment's row...
    let mut dba = app.db.connect().await;
    let open = dba.transaction().await.unwrap();
    open.execute(
        "SELECT 1 FROM payments WHERE id = $1 FOR UPDATE",
        &[&payment],
    )
    .await
    .unwrap();
    // ...so a verification waits on it, holding the node's only connection.
    let verify = tokio::spawn({
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/api/payments/{payment}/verify")),
        );
        async move {
            http.post(url)
                .bearer_auth(admin_token())
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let deadline = Instant::now() + PATIENCE;
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'commissions:api' \
         AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the verification never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Any request that needs the database now: a 503 to retry, not a 500 nor a hang.
    let started = Instant::now();
    let response = app
        .get_as(&admin_token(), &format!("/api/partners/{partner}"))
        .await;
    let waited = started.elapsed();
    assert!(
        waited < commissions::http::REQUEST_TIMEOUT,
        "answered after {waited:?}"
    );
    let retry_after = response.headers().get("retry-after").cloned();
    let body = crate::callers::problem(response, 503, "unavailable").await;
    assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    assert!(body["detail"].as_str().unwrap().contains("busy"), "{body}");
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    // Once the lock goes, the held request finishes and the pool serves again.
    open.commit().await.unwrap();
    assert_eq!(verify.await.unwrap(), 200);
    let response = app
        .get_as(&admin_token(), &format!("/api/partners/{partner}"))
        .await;
    assert_eq!(response.status(), 200);
}
