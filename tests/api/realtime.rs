//! The WebSocket relay over real sockets: real nodes on port 0, real
//! PostgreSQL, commissions committed through SQL as the engine's callers do.
//! Timeouts here only keep a broken build from hanging; nothing asserts speed.

use std::{net::SocketAddr, time::Duration};

use commissions::{
    auth::{mint, Claims, Role},
    config::{ListenMode, ServeConfig},
};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{net::TcpStream, time::timeout};
use tokio_tungstenite::{
    client_async,
    tungstenite::{self, client::IntoClientRequest, Message},
    WebSocketStream,
};

use crate::helpers::{
    create_partner, create_payment, spawn_app, spawn_app_with, spawn_node, TestDatabase, JWT_SECRET,
};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// A second node that LISTENs per partner (the first one uses the default,
/// the firehose), so the tests that span two nodes cover both listen modes.
fn per_partner(config: &mut ServeConfig) {
    config.realtime.listen_mode = ListenMode::Partner;
}

/// Long enough for a loaded CI box; only there so a bug fails instead of hanging.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn partner_token(partner_id: i64) -> String {
    token(
        Role::Partner,
        Some(partner_id),
        &format!("partner-user-{partner_id}"),
        now() + 3600,
    )
}

pub(crate) fn admin_token() -> String {
    token(Role::Admin, None, "admin-user", now() + 3600)
}

fn token(role: Role, partner_id: Option<i64>, sub: &str, exp: i64) -> String {
    mint(
        &Claims {
            sub: sub.into(),
            role,
            partner_id,
            exp,
        },
        JWT_SECRET,
    )
}

fn url(address: SocketAddr, query: &str) -> String {
    format!("ws://{address}/notifications?{query}")
}

async fn try_open(
    address: SocketAddr,
    request: tungstenite::handshake::client::Request,
    recv_buffer: Option<u32>,
) -> Result<Ws, tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(address).await.expect("tcp connect");
    client_async(request, stream).await.map(|(ws, _)| ws)
}

/// Opens a socket and returns it with its `ready` message.
pub(crate) async fn open(address: SocketAddr, query: &str) -> (Ws, Value) {
    let mut ws = try_open(
        address,
        url(address, query).into_client_request().unwrap(),
        None,
    )
    .await
    .expect("the handshake succeeds");
    let ready = next_message(&mut ws).await;
    assert_eq!(
        ready["type"], "ready",
        "the first message is ready: {ready}"
    );
    (ws, ready)
}

/// The next JSON message; WebSocket pings and pongs are skipped.
pub(crate) async fn next_message(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message before the patience runs out")
            .expect("the socket is open")
            .expect("a readable frame");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("messages are JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads `n` events and returns them.
pub(crate) async fn events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let message = next_message(ws).await;
        let kind = message["type"].as_str().unwrap();
        assert!(
            kind.starts_with("commission.") || kind.starts_with("payout."),
            "an event, got {message}"
        );
        out.push(message);
    }
    out
}

pub(crate) fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

/// Reads until the close frame; returns its code and the `error` message sent before it.
async fn closed(ws: &mut Ws) -> (u16, Option<Value>, usize) {
    let mut error = None;
    let mut events_before = 0;
    loop {
        let frame = timeout(PATIENCE, ws.next())
            .await
            .expect("a close before the patience runs out");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "error" {
                    error = Some(message);
                } else {
                    events_before += 1;
                }
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), error, events_before)
            }
            Some(Ok(Message::Close(None))) => panic!("a close without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket failed instead of closing: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

async fn refused(
    address: SocketAddr,
    request: tungstenite::handshake::client::Request,
) -> (u16, Value) {
    match try_open(address, request, None).await {
        Ok(_) => panic!("the handshake should be refused"),
        Err(tungstenite::Error::Http(response)) => {
            let content_type = response
                .headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(content_type, "application/problem+json");
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Commits `n` commissions for a partner, one transaction each, through `verify_payment`.
async fn commit_commissions(db: &sqlx::PgPool, partner_id: i64, n: usize) {
    for _ in 0..n {
        let payment = timeout(
            PATIENCE,
            create_payment(db, "100.00", "NGN", Some(partner_id)),
        )
        .await
        .expect("the payment is inserted in time");
        let verify = sqlx::query("SELECT verify_payment($1)")
            .bind(payment)
            .execute(db);
        timeout(PATIENCE, verify)
            .await
            .expect("verify_payment returns in time")
            .expect("verify");
    }
}

#[tokio::test]
async fn events_reach_every_socket_of_their_partner_on_every_node_and_no_other_partner() {
    let app = spawn_app().await;
    let other_node = spawn_node(&app.db.service_url, per_partner).await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let globex = create_partner(&app.db.pool, "Globex", None).await;

    let (mut tab1, ready) = open(app.address, &format!("token={}", partner_token(acme))).await;
    assert_eq!(
        ready,
        serde_json::json!({"type": "ready", "room": "partner", "partner_id": acme, "seq": 0, "totals": {}, "replay": 0})
    );
    let (mut tab2, _) = open(app.address, &format!("token={}", partner_token(acme))).await;
    let (mut tab_on_b, _) = open(
        other_node.address,
        &format!("token={}", partner_token(acme)),
    )
    .await;
    let (mut globex_tab, _) = open(app.address, &format!("token={}", partner_token(globex))).await;
    let (mut globex_on_b, _) = open(
        other_node.address,
        &format!("token={}", partner_token(globex)),
    )
    .await;
    let (mut admin, admin_ready) =
        open(other_node.address, &format!("token={}", admin_token())).await;
    assert_eq!(
        admin_ready,
        serde_json::json!({"type": "ready", "room": "admin", "position": 0, "replay": 0})
    );

    commit_commissions(&app.db.pool, acme, 2).await;
    for ws in [&mut tab1, &mut tab2, &mut tab_on_b] {
        let got = events(ws, 2).await;
        assert_eq!(seqs(&got), vec![1, 2]);
        assert!(got.iter().all(|e| e["partner_id"] == acme));
        assert_eq!(got[0]["type"], "commission.created");
        assert_eq!(got[0]["data"]["amount"], "2.00");
        assert_eq!(got[1]["data"]["totals"]["NGN"]["earned"], "4.00");
    }
    commit_commissions(&app.db.pool, globex, 1).await;
    // Acme's two events committed first: had any reached Globex's sockets, they would come before this one.
    for ws in [&mut globex_tab, &mut globex_on_b] {
        let got = events(ws, 1).await;
        assert_eq!(
            (got[0]["partner_id"].as_i64(), got[0]["seq"].as_i64()),
            (Some(globex), Some(1))
        );
    }

    let all = events(&mut admin, 3).await;
    let partners: Vec<i64> = all
        .iter()
        .map(|e| e["partner_id"].as_i64().unwrap())
        .collect();
    assert_eq!(partners, vec![acme, acme, globex]);
    let positions: Vec<i64> = all
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "admin events in position order: {positions:?}"
    );

    // A socket opened now starts from the head, with the current totals.
    let (_late, ready) = open(
        other_node.address,
        &format!("token={}", partner_token(acme)),
    )
    .await;
    assert_eq!(ready["seq"], 2);
    assert_eq!(ready["totals"]["NGN"]["earned"], "4.00");
    assert_eq!(ready["totals"]["NGN"]["pending"], "4.00");
    assert_eq!(ready["totals"]["NGN"]["paid"], "0.00");
}

#[tokio::test]
async fn a_resumed_socket_gets_exactly_what_it_missed_then_live_events() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let token = partner_token(acme);

    let (mut ws, _) = open(app.address, &format!("token={token}")).await;
    commit_commissions(&app.db.pool, acme, 1).await;
    let first = events(&mut ws, 1).await;
    ws.close(None).await.unwrap();
    drop(ws);

    commit_commissions(&app.db.pool, acme, 100).await;
    let (mut ws, ready) = open(app.address, &format!("token={token}&since=1")).await;
    assert_eq!(
        (ready["seq"].as_i64(), ready["replay"].as_i64()),
        (Some(101), Some(100))
    );
    assert_eq!(ready["totals"]["NGN"]["earned"], "202.00");
    let missed = events(&mut ws, 100).await;
    assert_eq!(seqs(&missed), (2..=101).collect::<Vec<_>>());
    commit_commissions(&app.db.pool, acme, 1).await;
    let live = events(&mut ws, 1).await;
    assert_eq!(seqs(&live), vec![102]);

    // A replayed event is byte for byte what the live socket saw.
    let (mut again, _) = open(app.address, &format!("token={token}&since=0")).await;
    assert_eq!(events(&mut again, 1).await[0], first[0]);
}

#[tokio::test]
async fn replay_racing_with_commits_has_no_gap_and_no_duplicate() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    commit_commissions(&app.db.pool, acme, 300).await;

    let pool = app.db.pool.clone();
    let racing = tokio::spawn(async move { commit_commissions(&pool, acme, 200).await });
    let address = app.address;
    let partner_query = format!("token={}&since=0", partner_token(acme));
    let admin_query = format!("token={}&since=0", admin_token());
    let partner = tokio::spawn(async move {
        let (mut ws, _) = open(address, &partner_query).await;
        let got = events(&mut ws, 500).await;
        (ws, got)
    });
    let admin = tokio::spawn(async move {
        let (mut ws, _) = open(address, &admin_query).await;
        let got = events(&mut ws, 500).await;
        (ws, got)
    });
    racing.await.unwrap();

    let (mut partner, got) = partner.await.unwrap();
    assert_eq!(seqs(&got), (1..=500).collect::<Vec<_>>());
    let (_admin, got) = admin.await.unwrap();
    let positions: Vec<i64> = got
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    let logged: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM commission_events ORDER BY position")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(positions, logged);
    // And nothing more follows: the next message answers our ping.
    partner
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(next_message(&mut partner).await["type"], "pong");
}

#[tokio::test]
async fn killing_the_listen_connection_during_a_thousand_commits_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    let other_node = spawn_node(&app.db.service_url, per_partner).await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let token = partner_token(acme);
    let (on_a, _) = open(app.address, &format!("token={token}")).await;
    let (on_b, _) = open(other_node.address, &format!("token={token}")).await;
    let (admin, _) = open(app.address, &format!("token={}", admin_token())).await;
    // Every socket reads as the commits flow, as a dashboard does.
    let readers = [on_a, on_b, admin].map(|mut ws| {
        tokio::spawn(async move {
            let got = events(&mut ws, 1000).await;
            (ws, got)
        })
    });

    let pool = app.db.pool.clone();
    let committing = tokio::spawn(async move { commit_commissions(&pool, acme, 1000).await });
    let mut killed = 0;
    while !committing.is_finished() {
        let n = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'commissions:listener' AND datname = current_database()) t",
        )
        .fetch_one(&app.db.pool);
        let n = timeout(PATIENCE, n)
            .await
            .expect("the kill returns in time")
            .unwrap();
        killed += n;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    committing.await.unwrap();
    assert!(
        killed >= 2,
        "the listeners were terminated during the commits ({killed} times)"
    );

    let [on_a, on_b, admin] = readers;
    let (mut on_a, got) = on_a.await.unwrap();
    assert_eq!(seqs(&got), (1..=1000).collect::<Vec<_>>());
    let (mut on_b, got) = on_b.await.unwrap();
    assert_eq!(seqs(&got), (1..=1000).collect::<Vec<_>>());
    let (mut admin, got) = admin.await.unwrap();
    let positions: Vec<i64> = got
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    for ws in [&mut on_a, &mut on_b, &mut admin] {
        ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
        assert_eq!(
            next_message(ws).await["type"],
            "pong",
            "no duplicate after the last event"
        );
    }
    // The node listens again: a new commission still arrives live.
    commit_commissions(&app.db.pool, acme, 1).await;
    assert_eq!(seqs(&events(&mut on_a, 1).await), vec![1001]);
}

#[tokio::test]
async fn bad_handshakes_are_refused_with_problem_json_and_the_node_keeps_serving() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let globex = create_partner(&app.db.pool, "Globex", None).await;
    let (mut bystander, _) = open(app.address, &format!("token={}", partner_token(acme))).await;
    let request = |query: &str| url(app.address, query).into_client_request().unwrap();

    let (status, problem) = refused(app.address, request("")).await;
    assert_eq!(status, 401);
    assert_eq!(problem["type"], "/problems/unauthorized");
    let forged = mint(
        &Claims {
            sub: "x".into(),
            role: Role::Admin,
            partner_id: None,
            exp: now() + 3600,
        },
        "another-secret-of-sufficient-length",
    );
    assert_eq!(
        refused(app.address, request(&format!("token={forged}")))
            .await
            .0,
        401
    );
    assert_eq!(
        refused(app.address, request("token=not.a.jwt")).await.0,
        401
    );
    let expired = token(Role::Partner, Some(acme), "p", now() - 10);
    assert_eq!(
        refused(app.address, request(&format!("token={expired}")))
            .await
            .0,
        401
    );
    let (status, problem) = refused(
        app.address,
        request(&format!(
            "token={}&partner_id={globex}",
            partner_token(acme)
        )),
    )
    .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (403, Some("/problems/forbidden"))
    );
    assert_eq!(
        refused(
            app.address,
            request(&format!("token={}&since=-1", partner_token(acme)))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        refused(
            app.address,
            request(&format!("token={}&partner_id=999999", admin_token()))
        )
        .await
        .0,
        404
    );

    // A plain GET is not an upgrade.
    let response = app
        .http
        .get(format!(
            "{}/notifications?token={}",
            app.base,
            partner_token(acme)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // The other two places a token may come from.
    let mut by_header = request("");
    by_header.headers_mut().insert(
        "authorization",
        format!("Bearer {}", partner_token(acme)).parse().unwrap(),
    );
    let mut ws = try_open(app.address, by_header, None)
        .await
        .expect("Authorization: Bearer is accepted");
    assert_eq!(next_message(&mut ws).await["type"], "ready");
    let mut by_protocol = request("");
    by_protocol.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {}", partner_token(acme)).parse().unwrap(),
    );
    let mut ws = try_open(app.address, by_protocol, None)
        .await
        .expect("the bearer subprotocol is accepted");
    assert_eq!(next_message(&mut ws).await["type"], "ready");
    // An admin may watch one partner.
    let (_, ready) = open(
        app.address,
        &format!("token={}&partner_id={acme}", admin_token()),
    )
    .await;
    assert_eq!(ready["room"], "partner");

    commit_commissions(&app.db.pool, acme, 1).await;
    assert_eq!(seqs(&events(&mut bystander, 1).await), vec![1]);
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_the_socket_with_the_documented_code() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let query = format!("token={}", partner_token(acme));
    let (mut bystander, _) = open(app.address, &query).await;

    let (mut ws, _) = open(app.address, &query).await;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        serde_json::json!({"type": "pong"})
    );

    let garbage = [
        Message::binary(vec![1u8, 2, 3]),
        Message::text("not json"),
        Message::text(r#"{"type":"subscribe","partner_id":1}"#),
    ];
    for frame in garbage {
        let (mut ws, _) = open(app.address, &query).await;
        ws.send(frame).await.unwrap();
        let (code, error, _) = closed(&mut ws).await;
        assert_eq!(code, 1003);
        assert_eq!(error.unwrap()["code"], "unsupported_data");
    }

    let (mut ws, _) = open(app.address, &query).await;
    ws.send(Message::text("x".repeat(5000))).await.unwrap();
    let (code, error, _) = closed(&mut ws).await;
    assert_eq!(code, 1009);
    assert_eq!(error.unwrap()["code"], "message_too_big");

    commit_commissions(&app.db.pool, acme, 1).await;
    assert_eq!(seqs(&events(&mut bystander, 1).await), vec![1]);
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_closed_with_4008_and_others_keep_receiving() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| config.realtime.ws_send_queue = 64).await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let query = format!("token={}", partner_token(acme));
    // A tiny receive window, so the kernel buffers fill quickly and the server's queue must take the rest.
    let mut slow = try_open(
        app.address,
        url(app.address, &query).into_client_request().unwrap(),
        Some(4096),
    )
    .await
    .unwrap();
    assert_eq!(next_message(&mut slow).await["type"], "ready");
    let (mut fast, _) = open(app.address, &query).await;

    // The fast socket reads while the commissions commit; the slow one never does.
    let pool = app.db.pool.clone();
    let committing = tokio::spawn(async move { commit_commissions(&pool, acme, 2000).await });
    assert_eq!(
        seqs(&events(&mut fast, 2000).await),
        (1..=2000).collect::<Vec<_>>()
    );
    committing.await.unwrap();

    let mut got = Vec::new();
    let (code, error) = loop {
        let frame = timeout(PATIENCE, slow.next()).await.unwrap_or_else(|_| {
            panic!(
                "no close after {} events: the slow socket was never cut off",
                got.len()
            )
        });
        match frame {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "error" {
                    let Some(Ok(Message::Close(Some(close)))) =
                        timeout(PATIENCE, slow.next()).await.unwrap()
                    else {
                        panic!("a close frame follows the error")
                    };
                    break (u16::from(close.code), message);
                }
                got.push(message["seq"].as_i64().unwrap());
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close with 4008, got {other:?}"),
        }
    };
    assert_eq!((code, error["code"].as_str()), (4008, Some("too_slow")));
    assert!(
        got.len() < 2000,
        "the slow socket was cut off before the end"
    );
    assert_eq!(
        got,
        (1..=got.len() as i64).collect::<Vec<_>>(),
        "what it got has no gap"
    );

    // It resumes where it stopped.
    let last = got.last().copied().unwrap_or(0);
    let (mut resumed, ready) = open(app.address, &format!("{query}&since={last}")).await;
    assert_eq!(ready["replay"], 2000 - last);
    let rest = events(&mut resumed, (2000 - last) as usize).await;
    assert_eq!(seqs(&rest), (last + 1..=2000).collect::<Vec<_>>());
}

#[tokio::test]
async fn sockets_close_with_4001_when_the_token_expires_and_4002_when_the_peer_is_silent() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| {
        config.realtime.ws_ping_interval_ms = 200;
        config.realtime.ws_heartbeat_timeout_ms = 1500;
    })
    .await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;

    let short_lived = token(Role::Partner, Some(acme), "short", now() + 2);
    let (mut expiring, _) = open(app.address, &format!("token={short_lived}")).await;
    let (code, error, _) = closed(&mut expiring).await;
    assert_eq!(
        (code, error.unwrap()["code"].as_str().map(str::to_owned)),
        (4001, Some("token_expired".into()))
    );

    // This client never reads, so it never answers the server's pings.
    let (mut silent, _) = open(app.address, &format!("token={}", partner_token(acme))).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (code, error, _) = closed(&mut silent).await;
    assert_eq!(
        (code, error.unwrap()["code"].as_str().map(str::to_owned)),
        (4002, Some("heartbeat_timeout".into()))
    );

    // A client that reads (and so answers pings) stays open past the timeout.
    let (mut alive, _) = open(app.address, &format!("token={}", partner_token(acme))).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(3000);
    while let Ok(frame) = tokio::time::timeout_at(until, alive.next()).await {
        assert!(
            matches!(frame, Some(Ok(Message::Ping(_)))),
            "only pings while idle, got {frame:?}"
        );
    }
    commit_commissions(&app.db.pool, acme, 1).await;
    assert_eq!(seqs(&events(&mut alive, 1).await), vec![1]);
}

#[tokio::test]
async fn sockets_per_user_and_handshakes_per_ip_are_limited() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| config.realtime.ws_max_sockets_per_user = 2).await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let query = format!("token={}", partner_token(acme));
    let (first, _) = open(app.address, &query).await;
    let (_second, _) = open(app.address, &query).await;
    let (status, problem) = refused(
        app.address,
        url(app.address, &query).into_client_request().unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (429, Some("/problems/too-many-requests"))
    );
    // Another user is not affected, and a closed socket frees its slot.
    open(
        app.address,
        &format!(
            "token={}",
            token(Role::Partner, Some(acme), "colleague", now() + 60)
        ),
    )
    .await;
    drop(first);
    let reopened = async {
        loop {
            if let Ok(ws) = try_open(
                app.address,
                url(app.address, &query).into_client_request().unwrap(),
                None,
            )
            .await
            {
                return ws;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    timeout(PATIENCE, reopened)
        .await
        .expect("the slot is freed");

    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| {
        config.realtime.ws_handshakes_per_second_per_ip = 3
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            refused(
                app.address,
                url(app.address, "").into_client_request().unwrap(),
            )
            .await
            .0,
        );
    }
    assert!(
        statuses.contains(&429),
        "a burst of handshakes is cut off: {statuses:?}"
    );
    assert!(
        statuses.contains(&401),
        "the first handshakes get through to the token check: {statuses:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_every_socket_with_1001() {
    let mut app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let (mut partner, _) = open(app.address, &format!("token={}", partner_token(acme))).await;
    let (mut admin, _) = open(app.address, &format!("token={}", admin_token())).await;
    app.stop().await;
    for ws in [&mut partner, &mut admin] {
        let (code, error, _) = closed(ws).await;
        assert_eq!(code, 1001);
        assert_eq!(error.unwrap()["code"], "going_away");
    }
}

#[tokio::test]
async fn an_admin_resumes_by_position_and_a_rolled_back_verification_leaves_no_gap() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let globex = create_partner(&app.db.pool, "Globex", None).await;
    let query = format!("token={}", admin_token());
    let (mut admin, _) = open(app.address, &query).await;
    commit_commissions(&app.db.pool, acme, 1).await;
    let seen = events(&mut admin, 1).await[0]["position"].as_i64().unwrap();
    drop(admin);

    commit_commissions(&app.db.pool, acme, 2).await;
    // A verification that rolls back draws no position: positions are taken
    // at commit (sql/03_commission_engine.sql), so the log has no gap.
    let mut conn = app.db.connect().await;
    let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(globex)).await;
    let tx = conn.transaction().await.unwrap();
    tx.execute("SELECT verify_payment($1)", &[&payment])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    commit_commissions(&app.db.pool, globex, 2).await;

    let (mut admin, ready) = open(app.address, &format!("{query}&since={seen}")).await;
    assert_eq!(ready["replay"], 4);
    let missed = events(&mut admin, 4).await;
    let positions: Vec<i64> = missed
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {positions:?}"
    );
    assert_eq!(positions.last().copied(), ready["position"].as_i64());
    assert_eq!(
        positions,
        (seen + 1..=seen + 4).collect::<Vec<_>>(),
        "gapless after a rollback"
    );
    let partners: Vec<i64> = missed
        .iter()
        .map(|e| e["partner_id"].as_i64().unwrap())
        .collect();
    assert_eq!(partners, vec![acme, acme, globex, globex]);
    commit_commissions(&app.db.pool, acme, 1).await;
    assert_eq!(events(&mut admin, 1).await[0]["seq"], 4);
}

#[tokio::test]
async fn a_payment_verified_through_node_b_reaches_a_socket_on_node_a() {
    let app = spawn_app().await;
    let node_b = spawn_node(&app.db.service_url, |_| {}).await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let payment = create_payment(&app.db.pool, "250.00", "NGN", Some(acme)).await;
    let (mut on_a, _) = open(app.address, &format!("token={}", partner_token(acme))).await;

    let response = app
        .http
        .post(format!("{}/api/payments/{payment}/verify", node_b.base))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let got = events(&mut on_a, 1).await;
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["data"]["payment_id"], payment);
    assert_eq!(got[0]["data"]["amount"], "5.00");
}

#[tokio::test]
async fn a_forged_notify_reaches_no_socket_and_moves_no_cursor() {
    let app = spawn_app().await;
    let node_b = spawn_node(&app.db.service_url, per_partner).await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let mut sockets = Vec::new();
    for address in [app.address, node_b.address] {
        sockets.push(
            open(address, &format!("token={}", partner_token(acme)))
                .await
                .0,
        );
        sockets.push(open(address, &format!("token={}", admin_token())).await.0);
    }
    // Any login may NOTIFY: a fake commission for Acme, and an admin cursor of 9e9.
    let forged = format!(
        r#"{{"type":"commission.created","position":9000000000,"partner_id":{acme},"seq":1,"occurred_at":"2026-01-01T00:00:00.000000Z","data":{{"amount":"1000000.00","currency":"NGN"}}}}"#
    );
    let intruder = app.db.connect().await;
    for channel in [
        "commissions_admin".to_owned(),
        format!("commissions_partner_{acme}"),
    ] {
        intruder
            .execute("SELECT pg_notify($1, $2)", &[&channel, &forged])
            .await
            .unwrap();
    }
    // Then a real commission: it is the first thing every socket gets, with
    // the real seq and position (a socket that took the forged position as
    // its cursor would drop it).
    commit_commissions(&app.db.pool, acme, 1).await;
    for ws in &mut sockets {
        let got = events(ws, 1).await;
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(got[0]["position"], 1);
        assert_eq!(
            got[0]["data"]["amount"], "2.00",
            "the engine's event, not the forged one"
        );
    }
}

#[tokio::test]
async fn a_long_replay_still_ends_when_the_token_expires() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    const BACKLOG: usize = 5_000;
    sqlx::query(
        "INSERT INTO payments (amount, currency, partner_id, status)
         SELECT 100, 'NGN', $1, 'verified' FROM generate_series(1, $2::int)",
    )
    .bind(acme)
    .bind(BACKLOG as i32)
    .execute(&app.db.pool)
    .await
    .unwrap();
    // A token with two seconds left, and a client that reads slowly through
    // small buffers: the replay cannot be over before the token expires.
    let expiring = token(Role::Partner, Some(acme), "slow-reader", now() + 2);
    let mut ws = try_open(
        app.address,
        url(app.address, &format!("token={expiring}&since=0"))
            .into_client_request()
            .unwrap(),
        Some(4096),
    )
    .await
    .expect("the handshake succeeds");
    let mut read = 0;
    let code = loop {
        let frame = timeout(PATIENCE, ws.next())
            .await
            .expect("a close before the patience runs out")
            .expect("the socket is open")
            .expect("a readable frame");
        match frame {
            Message::Text(_) => {
                read += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Message::Close(Some(frame)) => break u16::from(frame.code),
            _ => {}
        }
    };
    assert_eq!(code, 4001, "closed for the expired token");
    assert!(
        read < BACKLOG,
        "closed during the replay, not after it ({read} messages read)"
    );
}

fn forwarded_request(
    address: SocketAddr,
    query: &str,
    client: &str,
) -> tungstenite::handshake::client::Request {
    let mut request = url(address, query).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    request
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_handshake_budget() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| {
        config.realtime.ws_handshakes_per_second_per_ip = 3;
        config.realtime.trusted_proxies = "127.0.0.1/32".parse().unwrap();
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            refused(
                app.address,
                forwarded_request(app.address, "", "203.0.113.1"),
            )
            .await
            .0,
        );
    }
    assert!(
        statuses.contains(&429),
        "one client's burst is cut off: {statuses:?}"
    );
    // Another client behind the same proxy still gets through to the token check.
    let (status, _) = refused(
        app.address,
        forwarded_request(app.address, "", "203.0.113.2"),
    )
    .await;
    assert_eq!(status, 401);

    // Without trusted proxies the header is the client's own word: ignored.
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| {
        config.realtime.ws_handshakes_per_second_per_ip = 3
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        let client = format!("198.51.100.{i}");
        statuses.push(
            refused(app.address, forwarded_request(app.address, "", &client))
                .await
                .0,
        );
    }
    assert!(
        statuses.contains(&429),
        "spoofed addresses share the peer's budget: {statuses:?}"
    );
}

#[tokio::test]
async fn one_user_reconnecting_in_a_loop_is_limited_after_authentication() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |config| {
        config.realtime.ws_handshakes_per_second_per_user = 2;
        config.realtime.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let query = format!("token={}", partner_token(acme));
    let mut statuses = Vec::new();
    let mut open_sockets = Vec::new();
    for i in 0..8 {
        // From different addresses: the per-IP budget is not what stops it.
        match try_open(
            app.address,
            forwarded_request(app.address, &query, &format!("192.0.2.{i}")),
            None,
        )
        .await
        {
            Ok(ws) => {
                statuses.push(101);
                open_sockets.push(ws);
            }
            Err(tungstenite::Error::Http(response)) => statuses.push(response.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another user is not affected.
    open(
        app.address,
        &format!(
            "token={}",
            token(Role::Partner, Some(acme), "colleague", now() + 60)
        ),
    )
    .await;
}
