//! The in-process hub: the rooms of this node and who sits in them.
//!
//! A [`PartnerRoom`] holds the sockets of one partner (and admins watching
//! that partner); the [`AdminRoom`] holds the admin sockets that watch every
//! partner. How events reach the rooms depends on the node's [`ListenMode`]:
//! - `partner`: the node LISTENs on `commissions_partner_<id>` for each
//!   partner room and on `commissions_admin` for the admin room;
//! - `firehose`: only on `commissions_admin`.
//!
//! Either way a notification only wakes the feed (src/realtime/feed.rs),
//! which reads the events from the log; each goes to the admin room and to
//! the room of its `partner_id` as the log has it. No socket receives an
//! event of a partner it may not see, nor one the engine did not write.
//!
//! A room exists exactly while it has a member. The admin channel is
//! listened always (it keeps the feed's cursor current); in `partner` mode
//! the LISTEN connection is also told to LISTEN when a partner room appears
//! and UNLISTEN when it empties. Those commands are sent while the hub's
//! lock is held, so the listener sees them in the same order as the
//! membership changes that caused them.
//!
//! Delivery never blocks: each member has a bounded inbox, and a member whose
//! inbox is full is too slow. It is taken out of its room at once and told
//! to close (4008); everyone else is unaffected.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{
    inbox::Inbox,
    listener::{Command, ADMIN_CHANNEL, PARTNER_CHANNEL_PREFIX},
};
use crate::config::ListenMode;

/// Which stream a socket follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKey {
    /// One partner's events, ordered and resumed by the partner's `seq`.
    Partner(i64),
    /// Every partner's events, ordered and resumed by the global `position`.
    Admin,
}

impl RoomKey {
    pub fn channel(self) -> String {
        match self {
            RoomKey::Partner(id) => format!("{PARTNER_CHANNEL_PREFIX}{id}"),
            RoomKey::Admin => ADMIN_CHANNEL.to_owned(),
        }
    }
}

/// One committed event as the feed read it from the log: its coordinates and
/// the wire text, shared by every socket that forwards it (never copied per socket).
#[derive(Debug)]
pub struct LiveEvent {
    pub partner_id: i64,
    pub seq: i64,
    pub position: i64,
    pub text: Utf8Bytes,
}

/// What the hub puts in a socket's inbox.
#[derive(Debug, Clone)]
pub enum Notice {
    Event(Arc<LiveEvent>),
}

/// The hub's side of one socket.
struct Member {
    inbox: Arc<Inbox>,
}

/// The sockets following one partner.
#[derive(Default)]
struct PartnerRoom {
    members: HashMap<u64, Member>,
}

/// The sockets following every partner.
#[derive(Default)]
struct AdminRoom {
    members: HashMap<u64, Member>,
}

#[derive(Default)]
struct Rooms {
    partners: HashMap<i64, PartnerRoom>,
    admin: AdminRoom,
    next_id: u64,
}

impl Rooms {
    fn members_mut(&mut self, key: RoomKey) -> Option<&mut HashMap<u64, Member>> {
        match key {
            RoomKey::Partner(id) => self.partners.get_mut(&id).map(|room| &mut room.members),
            RoomKey::Admin => Some(&mut self.admin.members),
        }
    }
}

pub struct Hub {
    mode: ListenMode,
    rooms: Mutex<Rooms>,
    listener: mpsc::UnboundedSender<Command>,
}

/// A socket's seat in a room; leaving the room happens on drop, so a socket
/// task that ends in any way (even a panic) gives its seat back.
pub struct Membership {
    hub: Arc<Hub>,
    key: RoomKey,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.key, self.id);
    }
}

impl Hub {
    pub fn new(mode: ListenMode, listener: mpsc::UnboundedSender<Command>) -> Self {
        Self {
            mode,
            rooms: Mutex::default(),
            listener,
        }
    }

    /// The channel to LISTEN on (or UNLISTEN from) now that `key`'s room has
    /// just opened (or closed). The admin channel is listened always, rooms or
    /// not: it wakes the feed on every commit, so the feed's cursor never
    /// falls behind while no room is open (a room opening later would
    /// otherwise be handed every event committed since). In partner mode a
    /// partner room's own channel comes and goes with it.
    fn switched_channel(&self, key: RoomKey) -> Option<String> {
        match (self.mode, key) {
            (ListenMode::Partner, RoomKey::Partner(_)) => Some(key.channel()),
            _ => None,
        }
    }

    /// A room just got its first member: LISTEN on what it needs.
    fn room_opened(&self, key: RoomKey) {
        if let Some(channel) = self.switched_channel(key) {
            let _ = self.listener.send(Command::Listen(channel));
        }
    }

    /// A room just lost its last member: UNLISTEN what nobody needs any more.
    fn room_closed(&self, key: RoomKey) {
        if let Some(channel) = self.switched_channel(key) {
            let _ = self.listener.send(Command::Unlisten(channel));
        }
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // A panic while holding the lock leaves the maps consistent (every
        // change is a single insert or remove), so poisoning is ignored.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seats a socket in its room. The returned receiver resolves once this
    /// node's LISTEN on the room's channel has been executed, so from then on
    /// every event that commits reaches `inbox`.
    pub fn join(
        self: &Arc<Self>,
        key: RoomKey,
        inbox: Arc<Inbox>,
    ) -> (Membership, oneshot::Receiver<()>) {
        let (confirmed, on_confirmed) = oneshot::channel();
        let mut rooms = self.rooms();
        let id = rooms.next_id;
        rooms.next_id += 1;
        let members = match key {
            RoomKey::Partner(partner) => &mut rooms.partners.entry(partner).or_default().members,
            RoomKey::Admin => &mut rooms.admin.members,
        };
        let first = members.is_empty();
        members.insert(id, Member { inbox });
        if first {
            self.room_opened(key);
        }
        // Queued behind the LISTEN (ours or the one a previous member caused).
        let _ = self.listener.send(Command::Confirm(confirmed));
        drop(rooms);
        (
            Membership {
                hub: self.clone(),
                key,
                id,
            },
            on_confirmed,
        )
    }

    /// Idempotent: a member may already have been dropped for being slow.
    fn leave(&self, key: RoomKey, id: u64) {
        let mut rooms = self.rooms();
        self.remove(&mut rooms, key, id);
    }

    fn remove(&self, rooms: &mut Rooms, key: RoomKey, id: u64) {
        let Some(members) = rooms.members_mut(key) else {
            return;
        };
        if members.remove(&id).is_none() || !members.is_empty() {
            return;
        }
        if let RoomKey::Partner(partner) = key {
            rooms.partners.remove(&partner);
        }
        self.room_closed(key);
    }

    /// The channels to LISTEN on right now, read under the lock, for the
    /// listener to LISTEN on when it (re)connects: the admin channel always,
    /// and in partner mode each partner room's.
    pub fn channels(&self) -> Vec<String> {
        let rooms = self.rooms();
        let partners: Vec<String> = match self.mode {
            ListenMode::Firehose => Vec::new(),
            ListenMode::Partner => rooms
                .partners
                .keys()
                .map(|&id| RoomKey::Partner(id).channel())
                .collect(),
        };
        partners
            .into_iter()
            .chain([ADMIN_CHANNEL.to_owned()])
            .collect()
    }

    /// Hands one event read from the log (src/realtime/feed.rs) to the admin
    /// room and to its partner's room, whatever the listen mode: which
    /// channels woke the feed does not decide who may see an event, its
    /// `partner_id` in the log does.
    pub fn deliver(&self, event: Arc<LiveEvent>) {
        let notice = Notice::Event(event.clone());
        let mut rooms = self.rooms();
        self.deliver_notice(&mut rooms, RoomKey::Admin, &notice);
        self.deliver_notice(&mut rooms, RoomKey::Partner(event.partner_id), &notice);
    }

    fn deliver_notice(&self, rooms: &mut Rooms, key: RoomKey, notice: &Notice) {
        let Some(members) = rooms.members_mut(key) else {
            return;
        };
        let mut gone = Vec::new();
        for (&id, member) in members.iter() {
            if !member.inbox.push(notice.clone()) {
                metrics::counter!("realtime_slow_consumers_total").increment(1);
                member.inbox.kicked.notify_one();
                gone.push(id);
            }
        }
        for id in gone {
            self.remove(rooms, key, id);
        }
    }

    /// Sockets seated on this node, for metrics and tests.
    pub fn socket_count(&self) -> usize {
        let rooms = self.rooms();
        rooms.admin.members.len()
            + rooms
                .partners
                .values()
                .map(|room| room.members.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (Arc<Hub>, mpsc::UnboundedReceiver<Command>) {
        hub_in(ListenMode::Partner)
    }

    fn hub_in(mode: ListenMode) -> (Arc<Hub>, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Hub::new(mode, tx)), rx)
    }

    fn sql(commands: &mut mpsc::UnboundedReceiver<Command>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(command) = commands.try_recv() {
            out.push(match command {
                Command::Listen(c) => format!("LISTEN {c}"),
                Command::Unlisten(c) => format!("UNLISTEN {c}"),
                Command::Confirm(_) => "confirm".into(),
            });
        }
        out
    }

    fn seat(hub: &Arc<Hub>, key: RoomKey, capacity: usize) -> (Membership, Arc<Inbox>) {
        let inbox = Inbox::new(capacity);
        let (membership, _confirmed) = hub.join(key, inbox.clone());
        (membership, inbox)
    }

    fn event(partner_id: i64, seq: i64, position: i64) -> String {
        format!(
            r#"{{"type":"commission.created","position":{position},"partner_id":{partner_id},"seq":{seq},"data":{{}}}}"#
        )
    }

    fn live(partner_id: i64, seq: i64, position: i64) -> Arc<LiveEvent> {
        Arc::new(LiveEvent {
            partner_id,
            seq,
            position,
            text: Utf8Bytes::from(event(partner_id, seq, position)),
        })
    }

    #[test]
    fn a_channel_is_listened_while_its_room_has_a_member() {
        let (hub, mut commands) = hub();
        let (tab1, ..) = seat(&hub, RoomKey::Partner(7), 4);
        let (tab2, ..) = seat(&hub, RoomKey::Partner(7), 4);
        let (admin, ..) = seat(&hub, RoomKey::Admin, 4);
        assert_eq!(
            sql(&mut commands),
            [
                "LISTEN commissions_partner_7",
                "confirm",
                "confirm",
                "confirm"
            ]
        );
        let mut channels = hub.channels();
        channels.sort();
        assert_eq!(channels, ["commissions_admin", "commissions_partner_7"]);
        drop(tab1);
        assert!(sql(&mut commands).is_empty(), "one tab is still open");
        drop(tab2);
        drop(admin);
        assert_eq!(sql(&mut commands), ["UNLISTEN commissions_partner_7"]);
        assert_eq!(hub.channels(), ["commissions_admin"], "always listened");
        assert_eq!(hub.socket_count(), 0);
    }

    #[test]
    fn an_event_reaches_the_admin_room_and_its_partners_room_only() {
        let (hub, _commands) = hub();
        let (_a, acme) = seat(&hub, RoomKey::Partner(7), 4);
        let (_g, globex) = seat(&hub, RoomKey::Partner(8), 4);
        let (_x, admin) = seat(&hub, RoomKey::Admin, 4);
        hub.deliver(live(7, 1, 10));
        let Some(Notice::Event(got)) = acme.try_recv() else {
            panic!("acme gets its event")
        };
        assert_eq!((got.partner_id, got.seq, got.position), (7, 1, 10));
        assert_eq!(got.text.as_str(), event(7, 1, 10));
        assert!(acme.try_recv().is_none());
        assert!(globex.try_recv().is_none(), "globex sees nothing of acme");
        assert!(matches!(admin.try_recv(), Some(Notice::Event(e)) if e.position == 10));
        assert!(admin.try_recv().is_none());
    }

    #[test]
    fn a_member_with_a_full_inbox_is_kicked_and_the_others_keep_receiving() {
        let (hub, mut commands) = hub();
        let (_slow_seat, slow) = seat(&hub, RoomKey::Partner(7), 1);
        let (_fast_seat, fast) = seat(&hub, RoomKey::Partner(7), 8);
        sql(&mut commands);
        for seq in 1..=3 {
            hub.deliver(live(7, seq, seq));
            assert!(matches!(fast.try_recv(), Some(Notice::Event(e)) if e.seq == seq));
        }
        assert_eq!(hub.socket_count(), 1, "the slow member left the room");
        // The kick is remembered even though nobody was waiting for it yet.
        futures::executor::block_on(slow.kicked.notified());
        assert!(
            sql(&mut commands).is_empty(),
            "the fast member keeps the channel listened"
        );
    }

    #[test]
    fn a_firehose_node_listens_on_one_channel() {
        let (hub, mut commands) = hub_in(ListenMode::Firehose);
        let (acme_seat, acme) = seat(&hub, RoomKey::Partner(7), 4);
        let (globex_seat, globex) = seat(&hub, RoomKey::Partner(8), 4);
        let (admin_seat, admin) = seat(&hub, RoomKey::Admin, 4);
        assert_eq!(sql(&mut commands), ["confirm", "confirm", "confirm"]);
        assert_eq!(hub.channels(), ["commissions_admin"]);

        hub.deliver(live(7, 1, 10));
        assert!(matches!(acme.try_recv(), Some(Notice::Event(e)) if e.seq == 1));
        assert!(matches!(admin.try_recv(), Some(Notice::Event(e)) if e.position == 10));
        assert!(globex.try_recv().is_none(), "globex sees nothing of acme");

        drop(acme_seat);
        drop(admin_seat);
        assert!(
            sql(&mut commands).is_empty(),
            "nothing to switch: the admin channel is always listened"
        );
        drop(globex_seat);
        assert!(
            sql(&mut commands).is_empty(),
            "the admin channel stays listened"
        );
        assert_eq!(hub.channels(), ["commissions_admin"]);
    }
}
