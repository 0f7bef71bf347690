//! Whether a change waits for company: the linger, switched on and off by what the data
//! messages show (Nagle's idea, learned without acknowledgements).
//!
//! After a data message, a small change waits up to `linger` for others to share its datagram:
//! under load that turns a datagram (a system call and a receive wake-up on every peer) per
//! change into one per few dozen. But a writer with one write in flight at a time (request and
//! response: write, let a peer read it, write again) never sends company: each of its writes
//! would wait out the linger for nothing, a lag of up to `linger` on every write instead of the
//! network's tens of microseconds. Timing alone cannot tell that writer from a paced stream
//! (both send a change every few hundred microseconds); the messages can:
//!
//! - a lone change that could have shared its datagram, sent less than two lingers after the
//!   previous data message (so it waited, or came too late for any to join it), shows that
//!   waiting did not pay; two such data messages in a row (with none of two changes or more
//!   between them) switch the linger **off**, and changes leave at once. One is not enough:
//!   changes paced a little slower than one per half linger fill every other message, and
//!   a linger that pays every other time still saves datagrams;
//! - a message that carries two changes or more shows they come faster than they leave: the
//!   linger goes **on** (again);
//! - while off, [`PROBE_AFTER`] data messages in a row each less than a linger after the one
//!   before (a steady stream of lone changes) switch it on to try again (a probe): a stream
//!   whose changes then gather keeps it on, a lone writer turns it off with its next write
//!   (after a probe one lone message is enough), and the next probe then waits for twice as
//!   many such messages (up to [`PROBE_AFTER_MAX`]; back to [`PROBE_AFTER`] once changes
//!   gather again).
//!
//! So a lone writer's changes wait for nothing ever more rarely (its 2nd, 3rd, 20th, 53rd,
//! 118th, 247th write, then one in 257), and a stream's wait as before. A stream that starts after a
//! long lone writer (a writer flat out after a request/response phase) sends up to
//! [`PROBE_AFTER_MAX`] datagrams of one change each before its changes linger again: the cap
//! bounds that, at a cost of one lone writer's write in 257 (0.4 %).
//! Changes too large to share a datagram never linger and leave the state as it is.

use std::time::{Duration, Instant};

/// While the linger is off: data messages in a row, each sent less than a linger after the
/// previous one, after which it is switched on again (doubled after each probe that found
/// no company, up to [`PROBE_AFTER_MAX`]).
pub(super) const PROBE_AFTER: u32 = 16;

/// The most lone data messages in a row before a probe.
pub(super) const PROBE_AFTER_MAX: u32 = 256;

/// The linger's state: when the last data message left, and whether changes wait after it.
#[derive(Debug, Clone)]
pub(super) struct Linger {
    /// When the last data message was packed.
    last_data_at: Option<Instant>,
    /// Whether small changes wait for company after a data message.
    on: bool,
    /// While off: data messages in a row sent less than a linger after the one before.
    close_in_a_row: u32,
    /// How many of those switch it on (a probe).
    probe_after: u32,
    /// On because of a probe, and no message has shown company since.
    probing: bool,
    /// While on: lone changes that waited for nothing since the last message of two changes
    /// or more (two switch it off).
    strikes: u8,
}

impl Default for Linger {
    fn default() -> Linger {
        Linger {
            last_data_at: None,
            on: true,
            close_in_a_row: 0,
            probe_after: PROBE_AFTER,
            probing: false,
            strikes: 0,
        }
    }
}

impl Linger {
    /// When the last data message was packed.
    pub(super) fn last_data_at(&self) -> Option<Instant> {
        self.last_data_at
    }

    /// Whether small changes wait for company after a data message (see the module docs).
    #[cfg(test)]
    pub(super) fn is_on(&self) -> bool {
        self.on
    }

    /// Until when a small change published now waits for company, if it does.
    pub(super) fn until(&self, now: Instant, linger: Duration) -> Option<Instant> {
        let due = self.last_data_at? + linger;
        (self.on && now < due).then_some(due)
    }

    /// Notes a data message packed at `now` with `items` changes; `shareable`: a lone change
    /// left room in the datagram for another like it (the linger applied to it). Returns true
    /// if that lone change most likely waited for nothing (a strike against the linger).
    pub(super) fn sent(
        &mut self,
        now: Instant,
        items: usize,
        shareable: bool,
        linger: Duration,
    ) -> bool {
        let since = self
            .last_data_at
            .replace(now)
            .map(|t| now.saturating_duration_since(t));
        let close = since.is_some_and(|s| s < linger);
        if items >= 2 {
            self.on = true;
            self.close_in_a_row = 0;
            self.probe_after = PROBE_AFTER;
            self.probing = false;
            self.strikes = 0;
        } else if self.on {
            if shareable && since.is_some_and(|s| s < linger * 2) {
                self.strikes += 1;
                if self.probing || self.strikes >= 2 {
                    self.on = false;
                    self.strikes = 0;
                    self.close_in_a_row = 0;
                    if std::mem::take(&mut self.probing) {
                        self.probe_after = (self.probe_after * 2).min(PROBE_AFTER_MAX);
                    }
                }
                return true;
            }
        } else if close {
            self.close_in_a_row += 1;
            if self.close_in_a_row >= self.probe_after {
                self.on = true;
                self.probing = true;
                self.close_in_a_row = 0;
            }
        } else {
            self.close_in_a_row = 0;
        }
        false
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_micros(500);

    #[test]
    fn two_lone_changes_in_a_row_after_a_message_turn_it_off() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        assert_eq!(l.until(t0, L), None, "nothing sent: a change goes at once");
        l.sent(t0, 1, true, L);
        assert!(l.is_on(), "the first message says nothing");
        assert_eq!(l.until(t0, L), Some(t0 + L));
        // A change that waited out the linger alone: one strike.
        assert!(l.sent(t0 + L, 1, true, L), "it waited for nothing");
        assert!(l.is_on());
        // A second in a row.
        assert!(l.sent(t0 + L * 2, 1, true, L));
        assert!(!l.is_on());
        assert_eq!(l.until(t0 + L * 2, L), None);
    }

    #[test]
    fn a_linger_that_pays_every_other_time_stays_on() {
        // Changes paced a little slower than one per half linger: every other message carries
        // two.
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.sent(t0, 1, true, L);
        let mut t = t0;
        for _ in 0..10 {
            t += L;
            assert!(l.sent(t, 1, true, L));
            t += L;
            assert!(!l.sent(t, 2, true, L));
            assert!(l.is_on());
        }
    }

    #[test]
    fn a_lone_change_long_after_the_last_message_leaves_it_on() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.sent(t0, 1, true, L);
        assert!(!l.sent(t0 + L * 2, 1, true, L));
        assert!(l.is_on());
    }

    #[test]
    fn changes_that_share_a_message_turn_it_on() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.sent(t0, 1, true, L);
        l.sent(t0 + L, 1, true, L);
        l.sent(t0 + L * 2, 1, true, L);
        assert!(!l.is_on());
        l.sent(t0 + L * 2 + L / 10, 2, true, L);
        assert!(l.is_on());
    }

    #[test]
    fn a_change_too_large_to_share_leaves_it_as_it_is() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.sent(t0, 1, false, L);
        assert!(!l.sent(t0 + L / 2, 1, false, L));
        assert!(l.is_on());
    }

    #[test]
    fn a_steady_stream_of_lone_changes_switches_it_on_to_try_again() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.sent(t0, 1, true, L);
        l.sent(t0 + L, 1, true, L);
        let mut t = t0 + L * 2;
        l.sent(t, 1, true, L);
        assert!(!l.is_on());
        for i in 1..=PROBE_AFTER {
            t += L / 5;
            assert!(!l.is_on(), "message {i}");
            assert!(!l.sent(t, 1, true, L));
        }
        assert!(l.is_on());
        // The probe: the next lone change waits for nothing again, which is enough.
        assert!(l.sent(t + L / 5, 1, true, L));
        assert!(!l.is_on());
        // A gap of a linger or more starts the count again.
        t += L / 5;
        for _ in 1..PROBE_AFTER {
            t += L / 5;
            l.sent(t, 1, true, L);
        }
        t += L;
        l.sent(t, 1, true, L);
        t += L / 5;
        l.sent(t, 1, true, L);
        assert!(!l.is_on(), "the count started again after the gap");
    }

    /// Lone messages, each `L / 5` after the previous one, until the linger is on; returns how
    /// many were sent and the time of the last.
    fn until_on(l: &mut Linger, mut t: Instant) -> (u32, Instant) {
        let mut n = 0;
        while !l.is_on() {
            t += L / 5;
            l.sent(t, 1, true, L);
            n += 1;
        }
        (n, t)
    }

    #[test]
    fn each_probe_that_finds_no_company_doubles_the_wait_for_the_next() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.sent(t0, 1, true, L);
        assert!(l.sent(t0 + L, 1, true, L));
        let mut t = t0 + L * 2;
        assert!(l.sent(t, 1, true, L));
        let mut waits = Vec::new();
        for _ in 0..8 {
            let (n, at) = until_on(&mut l, t);
            waits.push(n);
            // The probe: the next lone change waited for nothing.
            t = at + L;
            assert!(l.sent(t, 1, true, L));
        }
        assert_eq!(waits, [16, 32, 64, 128, 256, 256, 256, 256]);
        // Company resets it: two changes in a message, then two lone ones that waited.
        l.sent(t + L / 5, 2, true, L);
        assert!(l.is_on());
        assert!(l.sent(t + L, 1, true, L));
        assert!(l.sent(t + L * 2, 1, true, L));
        assert_eq!(until_on(&mut l, t + L * 2).0, PROBE_AFTER);
    }
}
