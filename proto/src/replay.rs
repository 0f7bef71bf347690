//! Replay protection: a sliding window over each sender's packet numbers (as in IPsec and
//! WireGuard, RFC 6479).
//!
//! Every datagram carries a per-sender packet number that starts at 1 and is never reused in a
//! process. A receiver remembers, per sender, the highest number accepted and which of the
//! [`WINDOW`] numbers below it were seen. A number already seen, or older than the window, is
//! refused. Only authenticated datagrams (crc-valid in plaintext mode) may update a window,
//! otherwise a forger could push the window forward and make real traffic look old.

use std::collections::HashMap;

use super::drop::DropReason;
use super::version::NodeId;

/// Width of each sender's window, in packet numbers (4 KiB of bits per sender). Wide enough for
/// a receive buffer's backlog from one sender: a datagram that reaches a node directly (one
/// meant for it alone, on its send socket) can be read before thousands of the same sender's
/// older datagrams still queued on the group socket, and those must not then look like
/// replays. 8,192 was not: five processes flat out on two cores, each node seconds behind its
/// socket, refused up to 25,000 such datagrams per run as replays; their changes became gaps
/// its peers no longer held, and their heartbeats did not count, so peers were removed.
pub const WINDOW: u64 = 32_768;
/// Default number of senders whose windows are kept.
pub const DEFAULT_MAX_SENDERS: usize = 1024;

const WORDS: usize = (WINDOW / 64) as usize;

/// One sender's window.
///
/// ```
/// use mccache_proto::replay::ReplayWindow;
/// let mut w = ReplayWindow::new(10);
/// assert!(w.accept(12).is_ok());
/// assert!(w.accept(11).is_ok()); // late but new
/// assert!(w.accept(12).is_err()); // seen
/// assert!(w.accept(10).is_err()); // the first one
/// ```
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest packet number accepted.
    highest: u64,
    /// Bit `n % WINDOW` is set when `n` (within the window) was accepted.
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// A window whose first accepted packet number is `first`.
    pub fn new(first: u64) -> ReplayWindow {
        let mut w = ReplayWindow {
            highest: first,
            bits: [0; WORDS],
        };
        w.set(first);
        w
    }

    /// Whether `pn` would be accepted, without recording it.
    pub fn check(&self, pn: u64) -> Result<(), DropReason> {
        if pn > self.highest {
            return Ok(());
        }
        if self.highest - pn >= WINDOW || self.is_set(pn) {
            return Err(DropReason::Replay);
        }
        Ok(())
    }

    /// Records `pn` if it is new; refuses it with [`DropReason::Replay`] otherwise.
    pub fn accept(&mut self, pn: u64) -> Result<(), DropReason> {
        self.check(pn)?;
        if pn > self.highest {
            let gap = pn - self.highest;
            if gap >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                self.clear_range(self.highest + 1, pn);
            }
            self.highest = pn;
        }
        self.set(pn);
        Ok(())
    }

    /// The highest packet number accepted.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    fn slot(pn: u64) -> (usize, u64) {
        let bit = pn % WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn is_set(&self, pn: u64) -> bool {
        let (w, m) = Self::slot(pn);
        self.bits[w] & m != 0
    }

    fn set(&mut self, pn: u64) {
        let (w, m) = Self::slot(pn);
        self.bits[w] |= m;
    }

    /// Clears the bits of `from..to` (fewer than [`WINDOW`] numbers), a word at a time.
    fn clear_range(&mut self, from: u64, to: u64) {
        let mut n = from;
        while n < to {
            let (w, _) = Self::slot(n);
            let bit = n % 64;
            let len = (64 - bit).min(to - n);
            let mask = if len == 64 {
                u64::MAX
            } else {
                ((1u64 << len) - 1) << bit
            };
            self.bits[w] &= !mask;
            n += len;
        }
    }
}

/// Departed senders remembered at most (sealed mode); beyond, the oldest is forgotten and
/// the timestamp floor rises past its last datagram.
pub const DEFAULT_MAX_DEPARTED: usize = 4096;

/// How far below a sender's window a plaintext datagram may fall before the window restarts
/// there instead of refusing it (see [`ReplayGuard::plaintext`]).
pub const PLAINTEXT_RESTART_BELOW: u64 = 1 << 16;

/// Windows for a bounded number of senders, and (sealed mode) a bounded memory of senders
/// that were forgotten, so that no datagram is ever accepted twice.
///
/// Every datagram carries its sender's wall-clock send time (`sent_ms`, authenticated). In
/// sealed mode:
/// - a datagram is refused when `sent_ms` is older than the replay horizon or not above the
///   floor (`Stale`);
/// - a sender forgotten (it left, was declared dead, or was evicted from the table) is kept as
///   departed: `(highest packet number, newest sent_ms)`; its numbers up to the highest are
///   refused, so a replay is refused while it could still be fresh;
/// - a departed entry is dropped once its newest `sent_ms` is older than the horizon (any
///   replay of it is then stale); if the table is full, the entry with the oldest `sent_ms`
///   goes and the floor rises to that `sent_ms`, so its datagrams stay refused.
///
/// Memory is bounded by `max_senders + max_departed` entries.
///
/// In plaintext mode anyone can forge any header, so replay protection only filters network
/// duplicates: there is no departed memory, and a datagram far below its sender's window
/// ([`PLAINTEXT_RESTART_BELOW`]) restarts the window there, so one forged far-ahead packet
/// number cannot shut a real sender out.
#[derive(Debug)]
pub struct ReplayGuard {
    windows: HashMap<NodeId, Live, foldhash::fast::RandomState>,
    departed: HashMap<NodeId, (u64, u64), foldhash::fast::RandomState>,
    max_senders: usize,
    max_departed: usize,
    /// Datagrams sent at or before this wall time (ms) are refused (sealed mode).
    floor_ms: u64,
    sealed: bool,
    /// Logical clock for least-recently-heard eviction.
    tick: u64,
}

#[derive(Debug)]
struct Live {
    window: ReplayWindow,
    heard: u64,
    newest_ms: u64,
}

impl ReplayGuard {
    /// A guard that keeps windows for at most `max_senders` senders (at least 1), in sealed
    /// mode (departed senders remembered).
    pub fn new(max_senders: usize) -> ReplayGuard {
        ReplayGuard {
            windows: HashMap::default(),
            departed: HashMap::default(),
            max_senders: max_senders.max(1),
            max_departed: DEFAULT_MAX_DEPARTED,
            floor_ms: 0,
            sealed: true,
            tick: 0,
        }
    }

    /// The plaintext variant (see the type's documentation).
    pub fn plaintext(max_senders: usize) -> ReplayGuard {
        ReplayGuard {
            sealed: false,
            ..ReplayGuard::new(max_senders)
        }
    }

    /// Sets how many departed senders are remembered (at least 1).
    pub fn with_max_departed(mut self, max_departed: usize) -> ReplayGuard {
        self.max_departed = max_departed.max(1);
        self
    }

    /// Accepts `pn` from `sender` if it was not seen before (and is not older than the window).
    /// Call only for authenticated datagrams. `sent_ms` is the datagram's send time.
    pub fn accept(&mut self, sender: NodeId, pn: u64, sent_ms: u64) -> Result<(), DropReason> {
        self.tick += 1;
        if self.sealed && self.floor_ms != 0 && sent_ms <= self.floor_ms {
            return Err(DropReason::Stale);
        }
        if let Some(live) = self.windows.get_mut(&sender) {
            match live.window.accept(pn) {
                Ok(()) => {}
                Err(_)
                    if !self.sealed
                        && live.window.highest().saturating_sub(pn) > PLAINTEXT_RESTART_BELOW =>
                {
                    live.window = ReplayWindow::new(pn);
                }
                Err(e) => return Err(e),
            }
            live.heard = self.tick;
            live.newest_ms = live.newest_ms.max(sent_ms);
            return Ok(());
        }
        if let Some(&(highest, newest_ms)) = self.departed.get(&sender) {
            if pn <= highest {
                return Err(DropReason::Replay);
            }
            // Still sending new datagrams: it comes back.
            self.departed.remove(&sender);
            let _ = newest_ms;
        }
        if self.windows.len() >= self.max_senders {
            // O(senders), only when a new sender arrives at a full table.
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, l)| l.heard)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.forget(id);
            }
        }
        self.windows.insert(
            sender,
            Live {
                window: ReplayWindow::new(pn),
                heard: self.tick,
                newest_ms: sent_ms,
            },
        );
        Ok(())
    }

    /// Drops the window of `sender` (it left the cluster, or was declared dead). In sealed
    /// mode it is remembered as departed, so its old datagrams stay refused.
    pub fn forget(&mut self, sender: NodeId) {
        let Some(live) = self.windows.remove(&sender) else {
            return;
        };
        if !self.sealed {
            return;
        }
        if self.departed.len() >= self.max_departed {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(_, (_, ms))| *ms)
                .map(|(id, (_, ms))| (*id, *ms));
            if let Some((id, ms)) = oldest {
                self.departed.remove(&id);
                self.floor_ms = self.floor_ms.max(ms);
            }
        }
        self.departed
            .insert(sender, (live.window.highest(), live.newest_ms));
    }

    /// Forgets departed senders whose newest datagram is older than `horizon_floor_ms` (wall
    /// ms): the timestamp check refuses any replay of them from then on.
    pub fn prune(&mut self, horizon_floor_ms: u64) {
        self.departed.retain(|_, (_, ms)| *ms >= horizon_floor_ms);
    }

    /// Senders with a window.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    /// Departed senders remembered.
    pub fn departed(&self) -> usize {
        self.departed.len()
    }
}

impl Default for ReplayGuard {
    fn default() -> ReplayGuard {
        ReplayGuard::new(DEFAULT_MAX_SENDERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_accepted_once() {
        let mut w = ReplayWindow::new(1);
        for pn in 2..5000 {
            assert_eq!(w.accept(pn), Ok(()));
            assert_eq!(w.accept(pn), Err(DropReason::Replay));
        }
        assert_eq!(w.highest(), 4999);
    }

    #[test]
    fn out_of_order_within_window_is_accepted_once() {
        let mut w = ReplayWindow::new(1);
        assert_eq!(w.accept(1000), Ok(()));
        for pn in (2..1000).rev() {
            assert_eq!(w.accept(pn), Ok(()), "{pn}");
        }
        for pn in 1..=1000 {
            assert_eq!(w.accept(pn), Err(DropReason::Replay), "{pn}");
        }
    }

    #[test]
    fn older_than_window_is_refused() {
        let mut w = ReplayWindow::new(WINDOW + 5000);
        assert_eq!(w.accept(5000), Err(DropReason::Replay));
        assert_eq!(w.accept(5001), Ok(()));
        assert_eq!(w.accept(1), Err(DropReason::Replay));
    }

    #[test]
    fn large_jump_clears_the_window() {
        let mut w = ReplayWindow::new(1);
        for pn in 2..=100 {
            w.accept(pn).unwrap();
        }
        // Jump by more than a window: bits of old numbers must not alias new ones.
        let far = 100 + 10 * WINDOW;
        assert_eq!(w.accept(far), Ok(()));
        for pn in far - WINDOW + 1..far {
            assert_eq!(w.check(pn), Ok(()), "{pn}");
        }
        // Jump by less than a window: the numbers skipped over are still acceptable.
        let near = far + WINDOW - 1;
        assert_eq!(w.accept(near), Ok(()));
        assert_eq!(w.accept(far), Err(DropReason::Replay));
        assert_eq!(w.accept(far + 1), Ok(()));
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(DropReason::Replay));
    }

    #[test]
    fn jumps_of_every_size_clear_exactly_the_numbers_skipped() {
        // Against a model that remembers every number accepted: a window that is set bit by
        // bit and cleared a word at a time must refuse exactly what the model has seen within
        // the window, after jumps that start and end anywhere in a word.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut w = ReplayWindow::new(1);
        let mut seen = std::collections::BTreeSet::from([1u64]);
        let mut highest = 1u64;
        for _ in 0..3000 {
            let pn = match next(4) {
                0 => highest + 1 + next(200),
                1 => highest + 1 + next(WINDOW + 100),
                _ => highest.saturating_sub(next(WINDOW + 100)).max(1),
            };
            let fresh = pn > highest || (highest - pn < WINDOW && !seen.contains(&pn));
            assert_eq!(w.accept(pn).is_ok(), fresh, "{pn} (highest {highest})");
            if fresh {
                seen.insert(pn);
                highest = highest.max(pn);
            }
            for probe in [
                pn.saturating_sub(1),
                pn + 1,
                highest - next(WINDOW.min(highest)),
            ] {
                let ok = probe > highest || (highest - probe < WINDOW && !seen.contains(&probe));
                assert_eq!(
                    w.check(probe).is_ok(),
                    ok,
                    "probe {probe} (highest {highest})"
                );
            }
        }
    }

    #[test]
    fn guard_keeps_senders_apart_and_bounded() {
        let mut g = ReplayGuard::plaintext(3);
        for s in 1..=3 {
            g.accept(NodeId(s), 7, 1).unwrap();
        }
        assert_eq!(g.accept(NodeId(2), 7, 1), Err(DropReason::Replay));
        g.accept(NodeId(2), 8, 1).unwrap();
        g.accept(NodeId(1), 8, 1).unwrap(); // 3 is now the least recently heard
        g.accept(NodeId(4), 1, 1).unwrap();
        assert_eq!(g.senders(), 3);
        assert_eq!(g.accept(NodeId(1), 8, 1), Err(DropReason::Replay));
        assert_eq!(g.accept(NodeId(2), 8, 1), Err(DropReason::Replay));
        // Plaintext: 3 was evicted and starts a fresh window.
        assert_eq!(g.accept(NodeId(3), 7, 1), Ok(()));
        g.forget(NodeId(3));
        assert_eq!(g.accept(NodeId(3), 7, 1), Ok(()));
    }

    #[test]
    fn sealed_guard_refuses_departed_and_evicted_senders_for_good() {
        let mut g = ReplayGuard::new(1).with_max_departed(2);
        g.accept(NodeId(1), 5, 100).unwrap();
        g.accept(NodeId(2), 9, 200).unwrap();
        // 1 leaves: its numbers stay refused, new ones bring it back.
        g.forget(NodeId(1));
        assert_eq!(g.accept(NodeId(1), 5, 100), Err(DropReason::Replay));
        assert_eq!(g.accept(NodeId(1), 1, 100), Err(DropReason::Replay));
        assert_eq!(g.departed(), 1);
        // Evicted from a full table: remembered as departed too.
        g.accept(NodeId(3), 1, 300).unwrap(); // evicts 2 (least recently heard)
        assert_eq!(g.accept(NodeId(2), 9, 200), Err(DropReason::Replay));
        g.accept(NodeId(1), 6, 400).unwrap(); // 1 comes back, evicting 3
        assert_eq!(g.accept(NodeId(3), 1, 300), Err(DropReason::Replay));
        // The departed table is full (2 and 3): one more pushes out the oldest (2, at 200 ms)
        // and raises the floor past it, so 2's datagrams stay refused by time.
        g.forget(NodeId(1));
        assert_eq!(g.departed(), 2);
        assert_eq!(g.accept(NodeId(2), 9, 200), Err(DropReason::Stale));
        assert_eq!(g.accept(NodeId(2), 10, 200), Err(DropReason::Stale));
        // Pruned by the horizon: nothing remembered, the caller's timestamp check takes over.
        g.prune(10_000);
        assert_eq!(g.departed(), 0);
    }

    #[test]
    fn plaintext_far_ahead_forgery_cannot_shut_a_sender_out() {
        let mut g = ReplayGuard::plaintext(8);
        g.accept(NodeId(1), 10, 1).unwrap();
        // A forged datagram claims packet number 2^64 - 1 for the real sender.
        g.accept(NodeId(1), u64::MAX, 1).unwrap();
        // The real sender's next datagrams are still accepted (the window restarts).
        assert_eq!(g.accept(NodeId(1), 11, 1), Ok(()));
        assert_eq!(g.accept(NodeId(1), 12, 1), Ok(()));
        assert_eq!(g.accept(NodeId(1), 12, 1), Err(DropReason::Replay));
    }
}
