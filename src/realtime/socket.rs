//! `GET /notifications`: the handshake checks, then one task per socket. The
//! route is `http`'s, which also answers each refusal (a [`super::Error`])
//! with its problem+json.
//!
//! Handshake (refusals are problem+json, nothing is upgraded): at most
//! `WS_HANDSHAKES_PER_SECOND_PER_IP` attempts per IP and second (429); a
//! valid JWT from `?token=`, `Authorization: Bearer` or
//! `Sec-WebSocket-Protocol: bearer, <token>` (401); a partner token may only
//! follow its own partner (403); the partner must exist (404); at most
//! `WS_MAX_SOCKETS_PER_USER` open sockets per `sub` (429).
//!
//! The socket task owns everything of one socket (no reader/writer split,
//! so an idle socket costs one small task): it joins the room, sends
//! `ready`, replays, then forwards live events with the cursor rule of
//! [`super`]. It answers `{"type":"ping"}`, pings the peer, and closes with
//! a code of the documented protocol (docs/stream.md) when the peer goes
//! quiet (4002), the token expires (4001), the inbox overflows (4008), the
//! peer sends something else than a ping (1003) or a frame over 4 KiB (1009),
//! or the node shuts down (1001).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{
        rejection::QueryRejection,
        ws::{
            rejection::WebSocketUpgradeRejection, CloseFrame, Message, Utf8Bytes, WebSocket,
            WebSocketUpgrade,
        },
        Query,
    },
    http::{header, HeaderMap},
    response::Response,
};
use futures::SinkExt;
use serde::Deserialize;
use tokio::{
    sync::watch,
    time::{sleep, sleep_until, timeout, Instant},
};

use super::{
    cursor::{Cursor, Step},
    hub::{LiveEvent, Notice, RoomKey},
    inbox::Inbox,
    Error, Relay, UserSlot,
};
use crate::{
    auth::{Claims, Role, Verifier},
    events::EventLog,
};

/// The largest frame or message a client may send.
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// The read buffer each socket allocates up front (it grows for a larger
/// frame, up to [`MAX_CLIENT_MESSAGE`]). Clients send little more than pings,
/// and at tens of thousands of idle sockets every byte here counts.
const READ_BUFFER: usize = 128;
/// Events read from the log per round trip while replaying.
const REPLAY_PAGE: i64 = 500;
/// Live events written per flush at most, when several are waiting.
const LIVE_BATCH: usize = 64;
/// Bytes queued before writing to the TCP socket. A lone live event is
/// flushed at once; a replay page, or live events that were already waiting,
/// are written in chunks of this size instead of one syscall per event. The
/// buffer keeps its capacity afterwards, so it stays small: only sockets that
/// replayed or had a backlog ever grow it.
const WRITE_BUFFER: usize = 4 * 1024;
/// How long a joining socket waits for its LISTEN to be in force.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a polite close may take (the slow-consumer close gets the heartbeat timeout).
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a socket whose input is unreadable stays open after its close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    token: Option<String>,
    since: Option<i64>,
    partner_id: Option<i64>,
}

/// The WebSocket endpoint's handshake, given what its handler extracted.
/// Every refusal happens here, before the upgrade.
pub async fn accept(
    relay: Relay,
    verifier: &Verifier,
    peer: SocketAddr,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    if relay.is_shutting_down() {
        return Err(Error::ShuttingDown);
    }
    let client = relay
        .inner
        .config
        .trusted_proxies
        .client_ip(peer.ip(), headers);
    if !relay.allow_handshake(client) {
        return Err(Error::HandshakesFromAddress);
    }
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let token = handshake_token(&query, headers).ok_or(Error::NoToken)?;
    let claims = verifier.verify(token).await.map_err(Error::InvalidToken)?;
    if !relay.allow_user_handshake(&claims.sub) {
        return Err(Error::HandshakesForUser);
    }
    let room = room_for(&claims, query.partner_id)?;
    if query.since.is_some_and(|since| since < 0) {
        return Err(Error::NegativeSince);
    }
    let upgrade = upgrade.map_err(|_| Error::NotAnUpgrade)?;
    if let RoomKey::Partner(partner_id) = room {
        if relay
            .inner
            .log
            .partner_last_seq(partner_id)
            .await?
            .is_none()
        {
            return Err(Error::UnknownPartner(partner_id));
        }
    }
    let slot = relay
        .take_user_slot(&claims.sub)
        .ok_or(Error::TooManySockets)?;
    let session = Session {
        relay,
        room,
        since: query.since,
        expires_at: expiry(claims.exp),
        _slot: slot,
    };
    Ok(upgrade
        .protocols(["bearer"])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |ws| session.run(ws)))
}

/// The token from the query, the Authorization header (read by the
/// service's one parser, [`crate::auth::bearer_token`]), or the subprotocol list.
fn handshake_token<'a>(query: &'a StreamQuery, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(token) = query.token.as_deref() {
        return Some(token);
    }
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return crate::auth::bearer_token(value);
    }
    // `Sec-WebSocket-Protocol: bearer, <token>`: the token follows `bearer`.
    let mut offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    offered.find(|p| *p == "bearer")?;
    offered.next()
}

fn room_for(claims: &Claims, partner_id: Option<i64>) -> Result<RoomKey, Error> {
    match (claims.role, partner_id) {
        (Role::Admin, None) => Ok(RoomKey::Admin),
        (_, Some(partner)) if claims.may_see_partner(partner) => Ok(RoomKey::Partner(partner)),
        (_, Some(_)) => Err(Error::OtherPartner),
        // auth::Verifier guarantees a partner token carries partner_id.
        (Role::Partner, None) => claims
            .partner_id
            .map(RoomKey::Partner)
            .ok_or(Error::PartnerTokenWithoutPartner),
    }
}

/// The instant the token's `exp` (seconds since the epoch) passes. Capped at
/// a year, so an absurd `exp` cannot overflow `Instant` (such a socket is
/// closed with 4001 after a year, and simply reconnects).
fn expiry(exp: i64) -> Instant {
    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let left_ms = exp
        .saturating_mul(1000)
        .saturating_sub(now_ms)
        .clamp(0, YEAR_MS);
    Instant::now() + Duration::from_millis(left_ms as u64)
}

/// Why a socket ends.
#[derive(Debug)]
enum End {
    /// The peer closed or vanished: nothing more to say.
    Peer,
    /// We close, with an `error` message and a close frame.
    Close {
        code: u16,
        error: &'static str,
        message: &'static str,
    },
}

impl End {
    const fn close(code: u16, error: &'static str, message: &'static str) -> Self {
        End::Close {
            code,
            error,
            message,
        }
    }
    const GOING_AWAY: End = End::close(
        1001,
        "going_away",
        "the server is shutting down; reconnect with since",
    );
    const UNSUPPORTED: End = End::close(
        1003,
        "unsupported_data",
        "the only client message is {\"type\":\"ping\"} as JSON text",
    );
    const TOO_BIG: End = End::close(
        1009,
        "message_too_big",
        "client messages are limited to 4 KiB",
    );
    const INTERNAL: End = End::close(
        1011,
        "internal",
        "the server could not serve this stream; reconnect with since",
    );
    const TOKEN_EXPIRED: End = End::close(
        4001,
        "token_expired",
        "the token has expired; reconnect with a new one",
    );
    const HEARTBEAT: End = End::close(4002, "heartbeat_timeout", "heartbeat timeout");
    const TOO_SLOW: End = End::close(
        4008,
        "too_slow",
        "the send queue overflowed; reconnect with since",
    );
}

fn internal(error: sqlx::Error) -> End {
    tracing::error!(error = %error, "realtime: reading the event log failed");
    End::INTERNAL
}

/// What the handshake established, handed to the socket task.
struct Session {
    relay: Relay,
    room: RoomKey,
    since: Option<i64>,
    expires_at: Instant,
    _slot: UserSlot,
}

impl Session {
    /// Seats the socket and returns its task. The setup is done here, outside
    /// the future, on purpose: an `async fn` keeps its arguments (`ws`, 368
    /// bytes, and `self`) in the future for the socket's whole life, next to
    /// the `Stream` they were moved into. Measured with a size probe, this
    /// and the boxed handlers in [`Stream::live`] took an idle socket's
    /// future from 1,752 to 1,104 bytes.
    fn run(self, ws: WebSocket) -> impl std::future::Future<Output = ()> + Send + 'static {
        let Session {
            relay,
            room,
            since,
            expires_at,
            _slot: slot,
        } = self;
        let config = &relay.inner.config;
        let inbox = Inbox::new(config.ws_send_queue);
        // Until `ready` and its replay are out, arrivals are read from the
        // log rather than queued.
        inbox.begin_replay();
        let (membership, confirmed) = relay.inner.hub.join(room, inbox.clone());
        let now = Instant::now();
        let mut stream = Stream {
            ws,
            inbox,
            shutdown: relay.inner.shutdown.subscribe(),
            log: relay.inner.log.clone(),
            room,
            cursor: Cursor::resume(room, None, 0),
            last_heard: now,
            next_ping: now + Duration::from_millis(config.ws_ping_interval_ms),
            ping_interval: Duration::from_millis(config.ws_ping_interval_ms),
            heartbeat_timeout: Duration::from_millis(config.ws_heartbeat_timeout_ms),
            expires_at,
        };
        async move {
            // Opening and closing are boxed: their (large) state then lives on the
            // heap only while they run, and an idle socket's task stays small.
            let end = match Box::pin(stream.open(confirmed, &relay, since)).await {
                Ok(()) => stream.live().await,
                Err(end) => end,
            };
            drop(membership);
            Box::pin(stream.finish(end)).await;
            // The user's socket slot is given back last, once the socket is closed.
            drop(slot);
        }
    }
}

/// One open socket and its cursor.
struct Stream {
    ws: WebSocket,
    inbox: Arc<Inbox>,
    shutdown: watch::Receiver<bool>,
    log: EventLog,
    room: RoomKey,
    /// What was sent last, and the rule for what comes next.
    cursor: Cursor,
    last_heard: Instant,
    next_ping: Instant,
    ping_interval: Duration,
    heartbeat_timeout: Duration,
    expires_at: Instant,
}

impl Stream {
    /// Waits for the LISTEN, reads the head, sends `ready` and the replay.
    async fn open(
        &mut self,
        confirmed: tokio::sync::oneshot::Receiver<()>,
        relay: &Relay,
        since: Option<i64>,
    ) -> Result<(), End> {
        if *self.shutdown.borrow_and_update() {
            return Err(End::GOING_AWAY);
        }
        tokio::select! {
            r = confirmed => r.map_err(|_| End::INTERNAL)?,
            _ = self.shutdown.changed() => return Err(End::GOING_AWAY),
            _ = sleep(JOIN_TIMEOUT) => return Err(End::INTERNAL),
        }
        let (ready, head, replay) = match self.room {
            RoomKey::Partner(partner_id) => {
                let head = sqlx::query!(
                    r#"SELECT partner_last_seq(p.id) AS "last_seq!", partner_totals(p.id)::text AS "totals!"
                         FROM partners p
                        WHERE p.id = $1"#,
                    partner_id
                )
                .fetch_optional(&relay.inner.db)
                .await
                .map_err(internal)?
                .ok_or(End::INTERNAL)?;
                let replay = since.map_or(0, |since| (head.last_seq - since).max(0));
                let ready = format!(
                    r#"{{"type":"ready","room":"partner","partner_id":{partner_id},"seq":{},"totals":{},"replay":{replay}}}"#,
                    head.last_seq, head.totals
                );
                (ready, head.last_seq, replay)
            }
            RoomKey::Admin => {
                let head = sqlx::query!(
                    r#"SELECT (SELECT coalesce(max(position), 0) FROM commission_events) AS "position!",
                              (SELECT count(*) FROM commission_events WHERE position > $1) AS "missed!""#,
                    since.unwrap_or(i64::MAX)
                )
                .fetch_one(&relay.inner.db)
                .await
                .map_err(internal)?;
                let ready = format!(
                    r#"{{"type":"ready","room":"admin","position":{},"replay":{}}}"#,
                    head.position, head.missed
                );
                (ready, head.position, head.missed)
            }
        };
        self.cursor = Cursor::resume(self.room, since, head);
        self.send(Message::Text(ready.into())).await?;
        // The inbox has been replaying since before the join (see `run`):
        // if anything arrived since, it is read from the log here too.
        if replay > 0 || self.inbox.end_replay() {
            self.catch_up(head).await?;
        }
        Ok(())
    }

    /// Forwards live events until the socket ends.
    async fn live(&mut self) -> End {
        loop {
            let deadline = self
                .next_ping
                .min(self.last_heard + self.heartbeat_timeout)
                .min(self.expires_at);
            let step = tokio::select! {
                // The handlers are boxed so that their state is not part of
                // every idle socket's future (see `Session::run`).
                notice = self.inbox.recv() => Box::pin(self.on_notices(notice)).await,
                frame = self.ws.recv() => Box::pin(self.on_frame(frame)).await,
                _ = self.inbox.kicked.notified() => Err(End::TOO_SLOW),
                _ = self.shutdown.changed() => Err(End::GOING_AWAY),
                _ = sleep_until(deadline) => Box::pin(self.on_timer()).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles `first` and whatever else is already waiting (up to
    /// [`LIVE_BATCH`]), then flushes once: a busy socket (an admin's, one
    /// behind a burst) gets several events per write instead of one each.
    async fn on_notices(&mut self, first: Notice) -> Result<(), End> {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(notice) = next {
            match notice {
                Notice::Event(event) => self.forward(&event).await?,
            }
            handled += 1;
            next = if handled < LIVE_BATCH {
                self.inbox.try_recv()
            } else {
                None
            };
        }
        self.flush().await
    }

    /// The cursor rule: drop what was sent, queue the next, repair a gap from
    /// the log. The caller flushes.
    async fn forward(&mut self, event: &LiveEvent) -> Result<(), End> {
        match self.cursor.on_live(event.seq, event.position) {
            Step::Drop => return Ok(()),
            Step::ReadLog { want } => return Box::pin(self.catch_up(want)).await,
            Step::Send => {}
        }
        self.feed(Message::Text(event.text.clone())).await?;
        self.cursor.sent(event.seq, event.position);
        metrics::counter!("realtime_events_sent_total").increment(1);
        Ok(())
    }

    /// Reads the log after the cursor until a read comes back short, the
    /// cursor has reached `want`, and nothing arrived meanwhile. While it
    /// reads, the inbox queues nothing (src/realtime/inbox.rs): what arrives
    /// is committed, hence in the log, and only makes it read once more.
    async fn catch_up(&mut self, want: i64) -> Result<(), End> {
        self.inbox.begin_replay();
        let mut empty_reads = 0;
        loop {
            self.replay_timers().await?;
            let page = match self.room {
                RoomKey::Partner(partner_id) => {
                    self.log
                        .partner_since(partner_id, self.cursor.last(), REPLAY_PAGE)
                        .await
                }
                RoomKey::Admin => self.log.all_since(self.cursor.last(), REPLAY_PAGE).await,
            }
            .map_err(internal)?;
            let full = page.len() as i64 == REPLAY_PAGE;
            let empty = page.is_empty();
            for event in page {
                if self.cursor.on_replayed(event.seq, event.position) {
                    let message = Message::Text(Utf8Bytes::from(event.json));
                    self.replay_write(|socket| Box::pin(socket.feed(message)))
                        .await?;
                    metrics::counter!("realtime_events_replayed_total").increment(1);
                }
            }
            self.replay_write(|socket| Box::pin(socket.flush())).await?;
            if full {
                continue;
            }
            if want > self.cursor.last() {
                if empty {
                    // The event that asked for this read came from the log;
                    // not finding it there means something is badly off.
                    empty_reads += 1;
                    if empty_reads > 50 {
                        tracing::error!(
                            want,
                            last = self.cursor.last(),
                            "realtime: an event seen in the log is missing from it"
                        );
                        return Err(End::INTERNAL);
                    }
                    sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
            if !self.inbox.end_replay() {
                return Ok(());
            }
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let message = match frame {
            None => return Err(End::Peer),
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                let too_big = matches!(
                    e.into_inner().downcast::<tungstenite::Error>().map(|e| *e),
                    Ok(tungstenite::Error::Capacity(_))
                );
                return Err(if too_big { End::TOO_BIG } else { End::Peer });
            }
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) if is_ping(&text) => {
                self.send(Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#)))
                    .await
            }
            Message::Text(_) | Message::Binary(_) => Err(End::UNSUPPORTED),
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(End::Peer),
        }
    }

    async fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if now >= self.expires_at {
            return Err(End::TOKEN_EXPIRED);
        }
        if now >= self.last_heard + self.heartbeat_timeout {
            return Err(End::HEARTBEAT);
        }
        if now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            self.send(Message::Ping(Default::default())).await?;
        }
        Ok(())
    }

    /// A replay keeps the socket out of its live loop, possibly for long (a big
    /// backlog, a slow reader): its timers are kept here instead. The token's
    /// expiry ends it with 4001, and pings keep going out.
    async fn replay_timers(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if now >= self.expires_at {
            return Err(End::TOKEN_EXPIRED);
        }
        if now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            self.feed(Message::Ping(Default::default())).await?;
        }
        Ok(())
    }

    /// One replay write, bounded by the socket's timers: a peer that takes in
    /// nothing for the heartbeat timeout is as gone as a silent one (4002),
    /// and a write still pending when the token expires ends the socket (4001).
    async fn replay_write<'a>(
        &'a mut self,
        write: impl FnOnce(
            &'a mut Self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), End>> + Send + 'a>,
        >,
    ) -> Result<(), End> {
        let expires_at = self.expires_at;
        let stalled_at = Instant::now() + self.heartbeat_timeout;
        match tokio::time::timeout_at(expires_at.min(stalled_at), write(self)).await {
            Ok(written) => written,
            Err(_) if Instant::now() >= expires_at => Err(End::TOKEN_EXPIRED),
            Err(_) => Err(End::HEARTBEAT),
        }
    }

    /// Sends one message.
    async fn send(&mut self, message: Message) -> Result<(), End> {
        unless_stopped(&self.inbox, &mut self.shutdown, self.ws.send(message)).await
    }

    /// Queues one message without flushing (see [`WRITE_BUFFER`]); [`Self::flush`] ends a batch.
    async fn feed(&mut self, message: Message) -> Result<(), End> {
        unless_stopped(&self.inbox, &mut self.shutdown, self.ws.feed(message)).await
    }

    async fn flush(&mut self) -> Result<(), End> {
        unless_stopped(&self.inbox, &mut self.shutdown, self.ws.flush()).await
    }

    /// Says why (an `error` message, then the close frame) and waits briefly
    /// for the peer's close. A slow consumer gets the heartbeat timeout to
    /// drain what is queued before its close frame.
    async fn finish(mut self, end: End) {
        let End::Close {
            code,
            error,
            message,
        } = end
        else {
            let _ = timeout(CLOSE_GRACE, SinkExt::close(&mut self.ws)).await;
            return;
        };
        let grace = if code == End::TOO_SLOW.code() {
            self.heartbeat_timeout
        } else {
            CLOSE_GRACE
        };
        let error =
            serde_json::json!({ "type": "error", "code": error, "message": message }).to_string();
        let _ = timeout(grace, async {
            self.ws.send(Message::Text(error.into())).await?;
            self.ws
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(message),
                })))
                .await?;
            if code == End::TOO_BIG.code() {
                // The rest of the oversized frame is still unread, so closing the
                // TCP socket now would send a reset that can destroy our close
                // frame before the peer reads it: linger a little instead.
                sleep(CLOSE_LINGER).await;
            } else {
                while let Some(Ok(_)) = self.ws.recv().await {}
            }
            Ok::<_, axum::Error>(())
        })
        .await;
    }
}

impl End {
    fn code(&self) -> u16 {
        match self {
            End::Close { code, .. } => *code,
            End::Peer => 1000,
        }
    }
}

/// Runs a write to the socket, giving up when the hub kicks the socket or the
/// node shuts down (a peer that stops reading would otherwise hold it forever).
async fn unless_stopped(
    inbox: &Inbox,
    shutdown: &mut watch::Receiver<bool>,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), End> {
    tokio::select! {
        written = write => written.map_err(|_| End::Peer),
        _ = inbox.kicked.notified() => Err(End::TOO_SLOW),
        _ = shutdown.changed() => Err(End::GOING_AWAY),
    }
}

fn is_ping(text: &str) -> bool {
    #[derive(Deserialize)]
    struct ClientMessage<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<ClientMessage>(text).is_ok_and(|m| m.kind == "ping")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn query(token: Option<&str>) -> StreamQuery {
        StreamQuery {
            token: token.map(str::to_owned),
            since: None,
            partner_id: None,
        }
    }

    fn header_value() -> impl Strategy<Value = Option<HeaderValue>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60))
            .prop_map(|bytes| bytes.and_then(|b| HeaderValue::from_bytes(&b).ok()))
    }

    proptest! {
        /// Whatever a client puts in the three places, a token or none, never
        /// a panic; `?token=` wins.
        #[test]
        fn any_handshake_headers_give_a_token_or_none(
            token in proptest::option::of(".{0,20}"),
            authorization in header_value(),
            protocols in proptest::collection::vec(header_value(), 0..3),
        ) {
            let mut headers = HeaderMap::new();
            if let Some(value) = authorization {
                headers.insert(header::AUTHORIZATION, value);
            }
            for value in protocols.into_iter().flatten() {
                headers.append(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            let query = query(token.as_deref());
            let found = handshake_token(&query, &headers);
            if let Some(token) = &token {
                prop_assert_eq!(found, Some(token.as_str()));
            }
        }

        #[test]
        fn each_place_of_the_token_is_read(
            token in "[A-Za-z0-9._-]{1,120}",
            scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]",
            others in proptest::collection::vec("[a-z0-9.]{1,10}", 0..3),
        ) {
            let none = query(None);
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("{scheme} {token}")).unwrap());
            prop_assert_eq!(handshake_token(&none, &headers), Some(token.as_str()));

            let mut offered = others.clone();
            offered.extend(["bearer".to_owned(), token.clone()]);
            let mut headers = HeaderMap::new();
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&offered.join(", ")).unwrap());
            prop_assert_eq!(handshake_token(&none, &headers), Some(token.as_str()));
        }

        /// A client frame is a ping exactly when it is a JSON object whose
        /// `type` is `"ping"`, whatever else it carries; anything else is no ping.
        #[test]
        fn only_a_ping_message_is_a_ping(text in ".{0,40}", extra in "[a-z]{1,6}", value in any::<i64>()) {
            prop_assert!(!is_ping(&text) || text.contains("ping"));
            let ping = format!(r#"{{"{extra}x":{value},"type":"ping"}}"#);
            prop_assert!(is_ping(&ping));
            let other = format!(r#"{{"type":"{extra}"}}"#);
            prop_assert_eq!(is_ping(&other), extra == "ping");
        }
    }
}
