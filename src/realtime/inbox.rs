//! A socket's inbox: what the hub has routed to the socket and the socket
//! has not sent yet.
//!
//! Bounded, and it never blocks the hub: a push into a full inbox fails, and
//! the hub then drops the member as too slow and sets [`Inbox::kicked`].
//!
//! While its socket replays from the log (opening, or repairing a gap), the
//! inbox queues nothing: it only notes that something arrived. Whatever
//! arrives then is committed, hence in the log the replay is reading, so a
//! socket that joins during a burst, or replays a long backlog to a slow
//! reader, cannot overflow on events it is about to read anyway. Ending the
//! replay says whether anything arrived meanwhile (then read once more);
//! both sides do this under the queue's lock, so nothing slips between.
//!
//! Why not a tokio `mpsc` channel: at tens of thousands of idle sockets the
//! inbox is a large part of a socket's memory. A bounded channel allocates
//! its shared state (cache-padded) and a first block of slots up front,
//! about 800 bytes per socket measured with massif; this one allocates
//! nothing until a notice arrives, and gives a burst's memory back once it
//! is drained.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use super::hub::Notice;

/// A drained queue keeps at most this many slots; a burst's are given back.
const KEEP_SLOTS: usize = 16;

pub struct Inbox {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Holds a permit after every push, so a notice pushed while the socket
    /// is busy elsewhere is not missed.
    arrived: Notify,
    /// Told when the hub dropped this member for being too slow.
    pub kicked: Notify,
}

#[derive(Default)]
struct Queue {
    notices: VecDeque<Notice>,
    /// The socket is reading the log: note arrivals instead of queueing them.
    replaying: bool,
    /// Something arrived while replaying.
    missed: bool,
}

impl Inbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            arrived: Notify::new(),
            kicked: Notify::new(),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Every change is a single push or pop, so a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hub's side: false when the inbox is full (the socket is too slow).
    pub fn push(&self, notice: Notice) -> bool {
        {
            let mut queue = self.queue();
            if queue.replaying {
                queue.missed = true;
                return true;
            }
            if queue.notices.len() >= self.capacity {
                return false;
            }
            queue.notices.push_back(notice);
        }
        self.arrived.notify_one();
        true
    }

    pub fn try_recv(&self) -> Option<Notice> {
        let mut queue = self.queue();
        let notice = queue.notices.pop_front();
        if queue.notices.is_empty() && queue.notices.capacity() > KEEP_SLOTS {
            queue.notices.shrink_to(KEEP_SLOTS);
        }
        notice
    }

    /// The socket starts reading the log after its cursor: what is queued is
    /// dropped (it is in the log too) and arrivals are only noted from now on.
    pub fn begin_replay(&self) {
        let mut queue = self.queue();
        queue.notices.clear();
        queue.notices.shrink_to(KEEP_SLOTS);
        queue.replaying = true;
        queue.missed = false;
    }

    /// The socket's last read of the log came back short. True if something
    /// arrived meanwhile: the replay goes on (read again). False: the socket
    /// is live, and arrivals are queued again.
    pub fn end_replay(&self) -> bool {
        let mut queue = self.queue();
        if std::mem::take(&mut queue.missed) {
            return true;
        }
        queue.replaying = false;
        false
    }

    /// The next notice. Cancel-safe: a notice is taken only by the poll that returns it.
    pub async fn recv(&self) -> Notice {
        loop {
            if let Some(notice) = self.try_recv() {
                return notice;
            }
            self.arrived.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::hub::LiveEvent;

    fn notice() -> Notice {
        Notice::Event(Arc::new(LiveEvent {
            partner_id: 7,
            seq: 1,
            position: 1,
            text: "{}".into(),
        }))
    }

    #[test]
    fn a_full_inbox_refuses_and_a_drained_one_accepts_again() {
        let inbox = Inbox::new(2);
        assert!(inbox.push(notice()));
        assert!(inbox.push(notice()));
        assert!(!inbox.push(notice()), "full");
        assert!(inbox.try_recv().is_some());
        assert!(inbox.push(notice()));
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn a_replaying_inbox_notes_arrivals_instead_of_queueing_them() {
        let inbox = Inbox::new(1);
        inbox.push(notice());
        inbox.begin_replay();
        assert!(inbox.try_recv().is_none(), "what was queued is in the log");
        for _ in 0..10 {
            assert!(inbox.push(notice()), "never full while replaying");
        }
        assert!(inbox.try_recv().is_none());
        assert!(inbox.end_replay(), "something arrived: read again");
        assert!(!inbox.end_replay(), "nothing since: live");
        assert!(inbox.push(notice()));
        assert!(!inbox.push(notice()), "live again: bounded");
    }

    #[tokio::test]
    async fn a_notice_pushed_before_anyone_waits_is_received() {
        let inbox = Inbox::new(4);
        inbox.push(notice());
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move {
                let first = inbox.recv().await;
                let second = inbox.recv().await;
                (first, second)
            }
        });
        tokio::task::yield_now().await;
        inbox.push(notice());
        let (first, second) = waiter.await.unwrap();
        assert!(matches!(
            (first, second),
            (Notice::Event(a), Notice::Event(b)) if a.seq == 1 && b.seq == 1
        ));
    }
}
