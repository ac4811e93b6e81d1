//! A socket's place in its room's order, and the rule that decides what
//! happens to each event (see [`super`], "Why no event is lost or repeated").
//! Pure: the socket task does the sending and the reading of the log.
//!
//! A partner room counts by `seq`, gapless per partner: a live event at or
//! below the cursor is a duplicate and is dropped, the next one is sent, one
//! further on reveals a gap, which is read from the log first. The admin room
//! counts by `position`, which it does not trust to be gapless (logs written
//! by engine v1 have holes): it drops what is at or below the cursor and sends
//! the rest; its gaps are repaired by the read after each reconnect.

use super::hub::RoomKey;

/// What to do with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already sent: a duplicate.
    Drop,
    /// Send it, then [`Cursor::sent`].
    Send,
    /// Events are missing before it: read the log until the cursor reaches it.
    ReadLog { want: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Whether a jump above the cursor reveals a gap (partner rooms: `seq`).
    gapless: bool,
    /// The last `seq` (partner room) or `position` (admin room) sent.
    last: i64,
}

impl Cursor {
    /// Where a socket resumes: after `since`, or at the head when it sent
    /// none. A cursor beyond the head (a client of another database?)
    /// resumes from the head.
    pub fn resume(room: RoomKey, since: Option<i64>, head: i64) -> Self {
        Self {
            gapless: matches!(room, RoomKey::Partner(_)),
            last: since.map_or(head, |since| since.min(head)),
        }
    }

    pub fn last(&self) -> i64 {
        self.last
    }

    /// The event's number in this room's order.
    pub fn coordinate(&self, seq: i64, position: i64) -> i64 {
        if self.gapless {
            seq
        } else {
            position
        }
    }

    /// The rule for a live event.
    pub fn on_live(&self, seq: i64, position: i64) -> Step {
        let at = self.coordinate(seq, position);
        if at <= self.last {
            Step::Drop
        } else if self.gapless && at > self.last.saturating_add(1) {
            Step::ReadLog { want: at }
        } else {
            Step::Send
        }
    }

    /// An event read from the log (in order): true if it is to be sent, and
    /// the cursor has moved to it.
    pub fn on_replayed(&mut self, seq: i64, position: i64) -> bool {
        let at = self.coordinate(seq, position);
        let new = at > self.last;
        if new {
            self.last = at;
        }
        new
    }

    /// A live event of [`Step::Send`] went out.
    pub fn sent(&mut self, seq: i64, position: i64) {
        self.last = self.coordinate(seq, position);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PARTNER: RoomKey = RoomKey::Partner(7);

    #[test]
    fn a_partner_cursor_drops_duplicates_sends_the_next_and_reads_the_log_for_a_gap() {
        let cursor = Cursor::resume(PARTNER, Some(3), 10);
        assert_eq!(cursor.last(), 3);
        assert_eq!(cursor.on_live(2, 100), Step::Drop);
        assert_eq!(cursor.on_live(3, 100), Step::Drop);
        assert_eq!(cursor.on_live(4, 100), Step::Send);
        assert_eq!(cursor.on_live(6, 100), Step::ReadLog { want: 6 });
    }

    #[test]
    fn an_admin_cursor_counts_by_position_and_never_reads_for_a_jump() {
        let cursor = Cursor::resume(RoomKey::Admin, None, 50);
        assert_eq!(cursor.last(), 50);
        assert_eq!(cursor.on_live(1, 50), Step::Drop);
        assert_eq!(cursor.on_live(1, 51), Step::Send);
        assert_eq!(cursor.on_live(1, 90), Step::Send);
    }

    #[test]
    fn a_cursor_beyond_the_head_resumes_from_the_head() {
        assert_eq!(Cursor::resume(PARTNER, Some(99), 10).last(), 10);
        assert_eq!(Cursor::resume(RoomKey::Admin, Some(0), 10).last(), 0);
    }

    #[test]
    fn a_replay_sends_only_what_is_above_the_cursor() {
        let mut cursor = Cursor::resume(PARTNER, Some(2), 5);
        let sent: Vec<i64> = (1..=5).filter(|&s| cursor.on_replayed(s, 0)).collect();
        assert_eq!(sent, [3, 4, 5]);
        assert_eq!(cursor.last(), 5);
    }

    /// A socket driven by the rule over a log `1..=n`: live events arrive
    /// in any order with any duplicates (a reconnect, a race), and a
    /// [`Step::ReadLog`] reads the log up to what it wants.
    fn deliver(mut cursor: Cursor, live: &[i64], n: i64) -> Vec<i64> {
        let mut out = Vec::new();
        for &seq in live {
            match cursor.on_live(seq, seq) {
                Step::Drop => {}
                Step::Send => {
                    cursor.sent(seq, seq);
                    out.push(seq);
                }
                Step::ReadLog { want } => {
                    // The log holds every committed event; the wanted one is in it.
                    for s in (cursor.last() + 1)..=want.min(n) {
                        if cursor.on_replayed(s, s) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }

    proptest! {
        /// Whatever order and repetition live events come in, a partner
        /// socket sends a gapless, duplicate-free run after its cursor.
        #[test]
        fn a_partner_socket_sends_each_seq_once_in_order(
            n in 1i64..60,
            since in 0i64..60,
            live in proptest::collection::vec(1i64..60, 0..200),
        ) {
            let live: Vec<i64> = live.into_iter().filter(|s| *s <= n).collect();
            let start = since.min(n);
            let out = deliver(Cursor::resume(PARTNER, Some(since), n), &live, n);
            let expected: Vec<i64> = ((start + 1)..=(start + out.len() as i64)).collect();
            prop_assert_eq!(&out, &expected);
            // Everything live up to the highest event seen has been sent.
            if let Some(max) = live.iter().copied().filter(|s| *s > start).max() {
                prop_assert!(out.last().copied().unwrap_or(start) >= max);
            }
        }

        /// An admin socket never sends a position twice and only sends upwards.
        #[test]
        fn an_admin_socket_sends_strictly_increasing_positions(
            since in proptest::option::of(0i64..100),
            head in 0i64..100,
            live in proptest::collection::vec(0i64..200, 0..200),
        ) {
            let mut cursor = Cursor::resume(RoomKey::Admin, since, head);
            let mut sent = Vec::new();
            for position in live {
                match cursor.on_live(1, position) {
                    Step::Drop => prop_assert!(position <= cursor.last()),
                    Step::Send => {
                        cursor.sent(1, position);
                        sent.push(position);
                    }
                    Step::ReadLog { .. } => prop_assert!(false, "the admin room never reads for a jump"),
                }
            }
            prop_assert!(sent.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(sent.first().is_none_or(|first| *first > since.unwrap_or(head).min(head)));
        }

        /// The rule never panics nor overflows, whatever numbers arrive.
        #[test]
        fn any_numbers_are_handled(last in any::<i64>(), seq in any::<i64>(), position in any::<i64>()) {
            for room in [PARTNER, RoomKey::Admin] {
                let mut cursor = Cursor::resume(room, Some(last), i64::MAX);
                let step = cursor.on_live(seq, position);
                let at = cursor.coordinate(seq, position);
                prop_assert_eq!(step == Step::Drop, at <= last);
                prop_assert_eq!(cursor.on_replayed(seq, position), at > last);
            }
        }
    }
}
