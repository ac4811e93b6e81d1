//! Outbound partner webhooks against a receiver the test runs (axum on
//! 127.0.0.1:0): every delivery is checked with the Standard Webhooks
//! reference algorithm written out here, the receiver goes down (503,
//! connection refused, a timeout) and comes back, two nodes share the work,
//! and a node dies mid-POST. Each scenario ends with the receiver having
//! acknowledged every event once, in seq order, and never seeing an event
//! again after acknowledging it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{
    callers::{admin_token, json, now, partner_token, problem},
    helpers::{
        create_partner, create_payment, spawn_app_with, spawn_node, until, TestApp, TestDatabase,
    },
};

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Unavailable,
    /// Reads the request and never answers: the sender times out (or dies).
    Hang,
    /// 503 for every third request, 200 otherwise.
    Flaky,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    seq: i64,
    body: String,
    signature_ok: bool,
    timestamp_ok: bool,
    /// The status it answered; `None` when it did not answer.
    answered: Option<u16>,
}

impl Delivery {
    fn acknowledged(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

struct Inbox {
    key: Vec<u8>,
    mode: Mode,
    requests: u64,
    deliveries: Vec<Delivery>,
}

type Shared = Arc<Mutex<Inbox>>;

/// The partner's own server. It can be stopped (connections refused) and
/// started again on the same port.
struct Receiver {
    addr: SocketAddr,
    inbox: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbox = Arc::new(Mutex::new(Inbox {
            key: Vec::new(),
            mode: Mode::Up,
            requests: 0,
            deliveries: Vec::new(),
        }));
        let mut receiver = Self {
            addr: listener.local_addr().unwrap(),
            inbox,
            stop: None,
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.inbox.clone());
        self.stop = Some(tx);
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        }));
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Gives the receiver the secret the registration returned (the partner's ops would).
    fn trust(&self, secret: &str) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
            .expect("the secret is base64");
        assert!(key.len() >= 24, "24 bytes or more (the spec's floor)");
        self.inbox.lock().unwrap().key = key;
    }

    fn set(&self, mode: Mode) {
        self.inbox.lock().unwrap().mode = mode;
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.inbox.lock().unwrap().deliveries.clone()
    }

    /// Stops listening and closes its connections: the sender's next POST is refused.
    async fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the receiver stops")
                .unwrap();
        }
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the receiver's port is free again");
        self.serve(listener);
    }

    /// Waits until the receiver has acknowledged seqs 1..=n (from `first`).
    async fn until_acknowledged(&self, first: i64, last: i64) {
        until(&format!("seqs {first}..={last} acknowledged"), || {
            let acked: Vec<i64> = self
                .deliveries()
                .iter()
                .filter(|d| d.acknowledged())
                .map(|d| d.seq)
                .collect();
            async move { acked.last().is_some_and(|&s| s >= last).then_some(()) }
        })
        .await;
    }

    /// The promise, checked on everything the receiver got: every delivery
    /// signed and recent; seqs `first..=last` each acknowledged exactly once,
    /// in order; no event sent again after it was acknowledged; the ids
    /// stable (`evt_<position>`, one per seq).
    fn check(&self, first: i64, last: i64) -> Vec<Delivery> {
        let deliveries = self.deliveries();
        for d in &deliveries {
            assert!(d.signature_ok, "signature verified: {d:?}");
            assert!(d.timestamp_ok, "timestamp within 5 minutes: {d:?}");
        }
        let acked: Vec<i64> = deliveries
            .iter()
            .filter(|d| d.acknowledged())
            .map(|d| d.seq)
            .collect();
        assert_eq!(
            acked,
            (first..=last).collect::<Vec<_>>(),
            "each event acknowledged once, in seq order"
        );
        let mut highest_acked = first - 1;
        for d in &deliveries {
            assert!(
                d.seq > highest_acked,
                "seq {} sent again after its 2xx (or out of order)",
                d.seq
            );
            if d.acknowledged() {
                highest_acked = d.seq;
            }
        }
        for d in &deliveries {
            let same_seq: Vec<&str> = deliveries
                .iter()
                .filter(|o| o.seq == d.seq)
                .map(|o| o.id.as_str())
                .collect();
            assert!(
                same_seq.iter().all(|id| *id == d.id),
                "one id per event: {same_seq:?}"
            );
        }
        deliveries
    }
}

/// The Standard Webhooks reference algorithm, written out: base64 of
/// HMAC-SHA256 keyed with the decoded secret over `{id}.{timestamp}.{body}`,
/// compared with each space-separated `v1,<signature>`.
fn verify_signature(key: &[u8], headers: &HeaderMap, body: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .any(|(version, signature)| version == "v1" && signature == expected)
}

async fn receive(State(inbox): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let (mode, answer) = {
        let mut inbox = inbox.lock().unwrap();
        inbox.requests += 1;
        let mode = inbox.mode;
        let answer = match mode {
            Mode::Up => Some(200),
            Mode::Unavailable => Some(503),
            Mode::Flaky if inbox.requests % 3 == 0 => Some(503),
            Mode::Flaky => Some(204),
            Mode::Hang => None,
        };
        let event: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let timestamp = headers
            .get("webhook-timestamp")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let delivery = Delivery {
            id: headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            seq: event["seq"].as_i64().unwrap_or(-1),
            signature_ok: verify_signature(&inbox.key, &headers, &body),
            timestamp_ok: timestamp.is_some_and(|t| (now() - t).abs() <= 300),
            body,
            answered: answer,
        };
        inbox.deliveries.push(delivery);
        (mode, answer)
    };
    match (mode, answer) {
        (_, Some(status)) => StatusCode::from_u16(status).unwrap(),
        // Never answers; the connection is dropped by the sender's timeout or death.
        _ => std::future::pending().await,
    }
}

type Configure = fn(&mut commissions::config::ServeConfig);

fn fast(config: &mut commissions::config::ServeConfig) {
    config.partner_webhooks.partner_webhooks_poll_ms = 50;
}

/// A node with fast polling, a partner, and its endpoint at `receiver`.
async fn setup(receiver: &Receiver, configure: Configure) -> (TestApp, i64, i64) {
    let app = spawn_app_with(TestDatabase::new().await, configure).await;
    let partner = create_partner(&app.db.pool, "Acme", Some("0.1")).await;
    let (endpoint, secret) = register(&app, partner, &receiver.url()).await;
    receiver.trust(&secret);
    (app, partner, endpoint)
}

/// Registers as the partner itself; returns the endpoint id and the secret.
async fn register(app: &TestApp, partner: i64, url: &str) -> (i64, String) {
    let created = json(
        app.post_as(
            &partner_token(partner),
            &format!("/api/partners/{partner}/webhooks"),
            &json!({ "url": url }),
        )
        .await,
        201,
    )
    .await;
    (
        created["id"].as_i64().unwrap(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// `n` commissions for the partner, each verified in SQL as an operator would.
async fn commissions(app: &TestApp, partner: i64, n: usize) {
    for _ in 0..n {
        let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;
        sqlx::query("SELECT verify_payment($1)")
            .bind(payment)
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
}

/// GET as the partner, expecting 200.
async fn read(app: &TestApp, partner: i64, path: &str) -> Value {
    json(app.get_as(&partner_token(partner), path).await, 200).await
}

async fn attempts(app: &TestApp, partner: i64, endpoint: i64) -> Vec<Value> {
    let path = format!("/api/partners/{partner}/webhooks/{endpoint}/attempts?limit=200");
    read(app, partner, &path).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn endpoint_state(app: &TestApp, partner: i64) -> Value {
    read(app, partner, &format!("/api/partners/{partner}/webhooks")).await["items"][0].clone()
}

async fn audit_is_empty(app: &TestApp) {
    assert_eq!(
        app.count("SELECT count(*) FROM commission_audit").await,
        0,
        "the audit view is empty"
    );
}

#[tokio::test]
async fn deliveries_are_signed_per_standard_webhooks_with_the_sockets_json() {
    let receiver = Receiver::start().await;
    let (app, partner, endpoint) = setup(&receiver, fast).await;
    commissions(&app, partner, 3).await;
    receiver.until_acknowledged(1, 3).await;
    let deliveries = receiver.check(1, 3);

    // The body is the event exactly as the socket and the REST log send it.
    let log = read(
        &app,
        partner,
        &format!("/api/partners/{partner}/events?since=0"),
    )
    .await;
    for (delivery, event) in deliveries.iter().zip(log["events"].as_array().unwrap()) {
        let body: Value = serde_json::from_str(&delivery.body).unwrap();
        assert_eq!(&body, event);
        assert_eq!(delivery.id, format!("evt_{}", event["position"]));
    }

    // The secret is shown once: no read returns it, and a DBA cannot read it.
    let state = endpoint_state(&app, partner).await;
    assert!(state.get("secret").is_none(), "{state}");
    assert_eq!(state["id"], endpoint);
    assert_eq!(state["delivered_seq"], 3);
    assert_eq!(state["lag"], 0);
    assert_eq!(state["last_status"], 200);
    let (dba, connection) = tokio_postgres::connect(&app.db.dba_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let refused = dba
        .query("SELECT secret FROM partner_webhook_secrets", &[])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let lag: i64 = dba
        .query_one("SELECT lag FROM partner_webhook_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lag, 0, "DBAs see the delivery state");
    audit_is_empty(&app).await;
}

/// The sender's timeout short, so that a hanging receiver fails fast.
fn fast_timeout(config: &mut commissions::config::ServeConfig) {
    fast(config);
    config.partner_webhooks.partner_webhooks_timeout_ms = 500;
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_every_event_afterwards_in_order_once() {
    let mut receiver = Receiver::start().await;
    let (app, partner, endpoint) = setup(&receiver, fast_timeout).await;
    commissions(&app, partner, 2).await;
    receiver.until_acknowledged(1, 2).await;

    // 503s: retried with backoff.
    receiver.set(Mode::Unavailable);
    commissions(&app, partner, 2).await;
    until("two 503s for seq 3", || {
        let n = receiver
            .deliveries()
            .iter()
            .filter(|d| d.seq == 3 && d.answered == Some(503))
            .count();
        async move { (n >= 2).then_some(()) }
    })
    .await;

    // Connection refused.
    receiver.down().await;
    commissions(&app, partner, 2).await;
    until("a refused connection in the log", || async {
        let log = attempts(&app, partner, endpoint).await;
        log.iter()
            .any(|a| a["status"].is_null() && !a["succeeded"].as_bool().unwrap())
            .then_some(())
    })
    .await;

    // Up again but hanging: the sender times out.
    receiver.up().await;
    receiver.set(Mode::Hang);
    until("a timed-out attempt in the log", || async {
        let log = attempts(&app, partner, endpoint).await;
        log.iter().any(|a| a["error"] == "timed out").then_some(())
    })
    .await;

    receiver.set(Mode::Up);
    receiver.until_acknowledged(1, 6).await;
    let deliveries = receiver.check(1, 6);
    assert!(
        deliveries.iter().any(|d| d.answered.is_none()),
        "the hung requests were received, never acknowledged, and sent again"
    );

    // The delivery log shows what happened, newest first. The receiver has
    // answered the last POST; the sender records it just after: wait for it.
    let log = until("the last success in the log", || async {
        let log = attempts(&app, partner, endpoint).await;
        log.iter()
            .any(|a| a["seq"] == 6 && a["succeeded"].as_bool().unwrap())
            .then_some(log)
    })
    .await;
    let ids: Vec<i64> = log.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert!(log.iter().any(|a| a["status"] == 503));
    assert!(log
        .iter()
        .all(|a| a["succeeded"].as_bool().unwrap() == a["error"].is_null()));
    let succeeded: Vec<i64> = log
        .iter()
        .rev()
        .filter(|a| a["succeeded"].as_bool().unwrap())
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(succeeded, (1..=6).collect::<Vec<_>>());
    let retried = log
        .iter()
        .find(|a| a["seq"] == 3 && a["succeeded"].as_bool().unwrap())
        .unwrap();
    assert!(retried["attempt"].as_i64().unwrap() >= 3, "{retried}");

    // A page of the log, then the next.
    let first = json(
        app.get_as(
            &admin_token(),
            &format!("/api/partners/{partner}/webhooks/{endpoint}/attempts?limit=2"),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = json(
        app.get_as(
            &admin_token(),
            &format!(
                "/api/partners/{partner}/webhooks/{endpoint}/attempts?limit=2&cursor={}",
                first["next_cursor"]
            ),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(next["items"][0]["id"], ids[2]);

    let state = endpoint_state(&app, partner).await;
    assert_eq!(state["delivered_seq"], 6);
    assert_eq!(state["lag"], 0);
    assert_eq!(state["attempts"], 0);
    assert_eq!(state["last_error"], Value::Null);
    audit_is_empty(&app).await;
}

#[tokio::test]
async fn two_nodes_deliver_each_event_once_in_order() {
    let receiver = Receiver::start().await;
    receiver.set(Mode::Flaky);
    let (app, partner, _) = setup(&receiver, fast).await;
    let _second = spawn_node(&app.db.service_url, fast).await;
    let other = create_partner(&app.db.pool, "Other", Some("0.1")).await;
    let (_, other_secret) = register(&app, other, &receiver.url()).await;
    assert_ne!(other_secret, "", "each endpoint has a secret of its own");

    commissions(&app, partner, 20).await;
    receiver.until_acknowledged(1, 20).await;
    receiver.check(1, 20);
    // The other partner's endpoint got nothing: it has no events.
    assert!(receiver
        .deliveries()
        .iter()
        .all(|d| d.body.contains(&format!("\"partner_id\": {partner}"))
            || d.body.contains(&format!("\"partner_id\":{partner}"))));
    audit_is_empty(&app).await;
}

fn lease_soon(config: &mut commissions::config::ServeConfig) {
    fast(config);
    // Lease = 3 x timeout = 3 s: how long the dead node's endpoint waits.
    config.partner_webhooks.partner_webhooks_timeout_ms = 1_000;
}

#[tokio::test]
async fn a_node_killed_mid_delivery_loses_its_lease_and_another_node_delivers() {
    let receiver = Receiver::start().await;
    receiver.set(Mode::Hang);
    let (mut app, partner, _) = setup(&receiver, |c| {
        fast(c);
        // Long enough that this node's POST is still in flight when it is
        // killed; its lease is 3 x 2 s.
        c.partner_webhooks.partner_webhooks_timeout_ms = 2_000;
    })
    .await;
    commissions(&app, partner, 3).await;
    until("the first node's POST reached the receiver", || {
        let n = receiver.deliveries().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    app.stop().await;
    let leased: bool = sqlx::query_scalar("SELECT sending FROM partner_webhook_deliveries")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(leased, "the dead node's lease is still held");

    receiver.set(Mode::Up);
    let _second = spawn_node(&app.db.service_url, lease_soon).await;
    receiver.until_acknowledged(1, 3).await;
    let deliveries = receiver.check(1, 3);
    assert_eq!(
        deliveries[0].answered, None,
        "the first POST was never answered"
    );
    assert_eq!(deliveries[0].seq, 1);
    audit_is_empty(&app).await;
}

#[tokio::test]
async fn bad_endpoints_are_refused_and_nothing_is_registered() {
    let app = spawn_app_with(TestDatabase::new().await, |c| {
        c.partner_webhooks.partner_webhooks_allow_http_loopback = false;
    })
    .await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let other = create_partner(&app.db.pool, "Other", None).await;
    let path = format!("/api/partners/{partner}/webhooks");
    let token = partner_token(partner);
    let long = format!("https://hooks.example.com/{}", "a".repeat(2100));
    for url in [
        "http://hooks.example.com/commissions",
        "http://127.0.0.1:9/hook",
        "https://10.0.0.7/hook",
        "https://192.168.1.10/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://localhost/hook",
        "https://[::1]/hook",
        "https://user:password@hooks.example.com/",
        "not a url",
        long.as_str(),
    ] {
        let response = app.post_as(&token, &path, &json!({ "url": url })).await;
        let body = problem(response, 422, "invalid-input").await;
        assert!(!body.to_string().contains("whsec_"), "{body}");
    }
    // Another partner's token may not register (or read) this partner's endpoints.
    let response = app
        .post_as(
            &partner_token(other),
            &path,
            &json!({ "url": "https://hooks.example.com/x" }),
        )
        .await;
    problem(response, 403, "forbidden").await;
    problem(
        app.get_as(&partner_token(other), &path).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM partner_webhook_endpoints")
            .await,
        0
    );

    // A public https endpoint is accepted (nothing is sent: no events), then disabled.
    let (endpoint, _) = register(&app, partner, "https://hooks.example.com/x").await;
    let disabled = json(
        app.http
            .delete(app.url(&format!("{path}/{endpoint}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(disabled["enabled"], false);
    let missing = app
        .http
        .delete(app.url(&format!("{path}/{}", endpoint + 100)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(missing, 404, "not-found").await;
    audit_is_empty(&app).await;
}
