//! The timer table and [`Endpoint::handle_timeout`]: every deadline the core keeps is one slot
//! of [`Timers`], and [`Endpoint::poll_timeout`] is their minimum.

use super::*;
use crate::message::Msg;

/// The core's timers: one deadline each in [`Timers`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The joining `Hello` (at creation; it waits for the first timer run, which brings the
    /// wall clock its header's send time needs).
    Hello,
    /// Changes lingering for more to join them (`linger`) must be packed.
    Linger,
    /// The next tail announcement.
    Tail,
    /// The earliest NAK due over all peers' streams.
    Nak,
    /// The next heartbeat (and failure detection).
    Heartbeat,
    /// The next wire housekeeping ([`HOUSEKEEPING_PERIOD`]).
    Housekeeping,
    /// Joining: when to stop waiting for a peer, or to ask the donor again.
    Join,
    /// The next anti-entropy pulse.
    Pulse,
}

impl Timer {
    pub(super) const COUNT: usize = 8;
}

/// The deadline of each [`Timer`]; [`Endpoint::poll_timeout`] is their minimum.
#[derive(Debug, Default)]
pub(super) struct Timers([Option<Instant>; Timer::COUNT]);

impl Timers {
    pub(super) fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }

    pub(super) fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }

    /// Sets `t` to `at` unless it is already due earlier.
    pub(super) fn bring_forward(&mut self, t: Timer, at: Instant) {
        let slot = &mut self.0[t as usize];
        *slot = Some(slot.map_or(at, |cur| cur.min(at)));
    }

    pub(super) fn is_due(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| at <= now)
    }

    pub(super) fn earliest(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

impl Endpoint {
    /// Runs the timers that are due: the joining announcement, tail announcements, NAKs,
    /// heartbeats and failure detection, housekeeping, joining, pulses.
    pub fn handle_timeout(&mut self, now: Instant, app: &mut dyn AppState) {
        if self.left {
            return;
        }
        self.set_wall(now, app.wall_ms());
        self.credit_stall(now);
        if self.timers.is_due(Timer::Hello, now) {
            self.timers.stop(Timer::Hello);
            self.send_hello(true, Vec::new());
        }
        if self.timers.is_due(Timer::Linger, now) {
            // Packed by the next poll_transmit.
            self.timers.stop(Timer::Linger);
        }
        if self.timers.is_due(Timer::Tail, now) {
            self.send_msg(&Msg::Tail {
                seq_hi: self.send.seq_hi(),
            });
            self.tail_repeats = self.tail_repeats.saturating_sub(1);
            if self.tail_repeats > 0 {
                let at = now + self.cfg.tail_delay * TAIL_REPEAT_SPACING;
                self.timers.set(Timer::Tail, at);
            } else {
                self.timers.stop(Timer::Tail);
            }
        }
        if self.timers.is_due(Timer::Nak, now) {
            self.send_due_naks(now);
        }
        if self.timers.is_due(Timer::Heartbeat, now) {
            self.timers.set(Timer::Heartbeat, now + self.cfg.heartbeat);
            self.send_hello(false, app.caches());
            self.detect_failures(now);
        }
        if self.timers.is_due(Timer::Housekeeping, now) {
            self.timers
                .set(Timer::Housekeeping, now + HOUSEKEEPING_PERIOD);
            self.wire.expire(now);
            let pending = self.pull_pending();
            self.coalesce.expire(now, pending, self.outbox.is_empty());
        }
        if self.timers.is_due(Timer::Join, now) {
            self.join_timeout(now);
        }
        if self.timers.is_due(Timer::Pulse, now) {
            if self.defer_periodic_pulse(now) {
                // Data is flowing: digests differ by what is in flight, and comparing every
                // bucket would stall this thread for nothing. Look again after the settle time.
                self.periodic_pulse = now + self.cfg.settle;
            } else {
                self.pulse_deferred_since = None;
                self.periodic_pulse = now + self.cfg.pulse;
                self.last_pulse_at = Some(now);
                self.send_pulse(app);
            }
            self.timers.set(Timer::Pulse, self.periodic_pulse);
        }
        self.refresh_nak_timer();
    }

    /// Sets [`Timer::Nak`] to the earliest NAK due over all peers' streams (after anything
    /// that may have changed them).
    pub(super) fn refresh_nak_timer(&mut self) {
        match self.peers.values().filter_map(|p| p.recv.next_nak()).min() {
            Some(at) => self.timers.set(Timer::Nak, at),
            None => self.timers.stop(Timer::Nak),
        }
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn the_table_yields_the_earliest_deadline() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.earliest(), None);
        t.set(Timer::Heartbeat, t0 + Duration::from_millis(30));
        t.set(Timer::Pulse, t0 + Duration::from_millis(20));
        assert_eq!(t.earliest(), Some(t0 + Duration::from_millis(20)));
        t.bring_forward(Timer::Pulse, t0 + Duration::from_millis(50));
        assert_eq!(t.get(Timer::Pulse), Some(t0 + Duration::from_millis(20)));
        t.bring_forward(Timer::Pulse, t0 + Duration::from_millis(10));
        assert!(t.is_due(Timer::Pulse, t0 + Duration::from_millis(10)));
        assert!(!t.is_due(Timer::Heartbeat, t0 + Duration::from_millis(10)));
        t.stop(Timer::Pulse);
        assert_eq!(t.earliest(), Some(t0 + Duration::from_millis(30)));
        t.bring_forward(Timer::Tail, t0);
        assert_eq!(t.earliest(), Some(t0));
    }

    #[test]
    fn heartbeats_follow_the_heartbeat_period() {
        let t0 = Instant::now();
        let mut ep = endpoint(1, t0);
        let mut app = MapApp::default();
        ep.handle_timeout(t0, &mut app);
        drain(&mut ep, t0);
        let hb = ep.cfg.heartbeat;
        assert_eq!(ep.timers.get(Timer::Heartbeat), Some(t0 + hb));
        // Nothing is due before then: a timer run sends nothing.
        ep.handle_timeout(t0 + hb / 2, &mut app);
        assert!(drain(&mut ep, t0 + hb / 2).is_empty());
        ep.handle_timeout(t0 + hb, &mut app);
        assert_eq!(drain(&mut ep, t0 + hb).len(), 1, "one heartbeat");
        assert_eq!(ep.timers.get(Timer::Heartbeat), Some(t0 + hb * 2));
    }

    #[test]
    fn after_leaving_no_timer_is_due() {
        let t0 = Instant::now();
        let mut ep = endpoint(1, t0);
        ep.leave(t0);
        assert_eq!(ep.poll_timeout(), None);
        assert_eq!(drain(&mut ep, t0).len(), 1, "the Leave");
    }
}
