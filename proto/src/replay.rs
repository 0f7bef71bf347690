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

/// Width of each sender's window, in packet numbers.
pub const WINDOW: u64 = 1024;
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
                for n in self.highest + 1..pn {
                    self.clear(n);
                }
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

    fn clear(&mut self, pn: u64) {
        let (w, m) = Self::slot(pn);
        self.bits[w] &= !m;
    }
}

/// Windows for a bounded number of senders; the least recently heard sender is forgotten when
/// a new one arrives and the table is full.
///
/// A forgotten sender's next datagram starts a fresh window, so its old datagrams could be
/// replayed once after that; the protocol layer's version ordering keeps such replays harmless
/// for data (an old version never overwrites a newer one).
#[derive(Debug)]
pub struct ReplayGuard {
    windows: HashMap<NodeId, (ReplayWindow, u64), foldhash::fast::RandomState>,
    max_senders: usize,
    /// Logical clock for least-recently-heard eviction.
    tick: u64,
}

impl ReplayGuard {
    /// A guard that keeps windows for at most `max_senders` senders (at least 1).
    pub fn new(max_senders: usize) -> ReplayGuard {
        ReplayGuard {
            windows: HashMap::default(),
            max_senders: max_senders.max(1),
            tick: 0,
        }
    }

    /// Accepts `pn` from `sender` if it was not seen before (and is not older than the window).
    /// Call only for authenticated datagrams.
    pub fn accept(&mut self, sender: NodeId, pn: u64) -> Result<(), DropReason> {
        self.tick += 1;
        if let Some((w, heard)) = self.windows.get_mut(&sender) {
            w.accept(pn)?;
            *heard = self.tick;
            return Ok(());
        }
        if self.windows.len() >= self.max_senders {
            // O(senders), only when a new sender arrives at a full table.
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.windows.remove(&id);
            }
        }
        self.windows
            .insert(sender, (ReplayWindow::new(pn), self.tick));
        Ok(())
    }

    /// Drops the window of `sender` (it left the cluster).
    pub fn forget(&mut self, sender: NodeId) {
        self.windows.remove(&sender);
    }

    /// Senders with a window.
    pub fn senders(&self) -> usize {
        self.windows.len()
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
        let mut w = ReplayWindow::new(5000);
        assert_eq!(w.accept(5000 - WINDOW), Err(DropReason::Replay));
        assert_eq!(w.accept(5000 - WINDOW + 1), Ok(()));
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
    fn guard_keeps_senders_apart_and_bounded() {
        let mut g = ReplayGuard::new(3);
        for s in 1..=3 {
            g.accept(NodeId(s), 7).unwrap();
        }
        assert_eq!(g.accept(NodeId(2), 7), Err(DropReason::Replay));
        g.accept(NodeId(2), 8).unwrap();
        g.accept(NodeId(1), 8).unwrap(); // 3 is now the least recently heard
        g.accept(NodeId(4), 1).unwrap();
        assert_eq!(g.senders(), 3);
        assert_eq!(g.accept(NodeId(1), 8), Err(DropReason::Replay));
        assert_eq!(g.accept(NodeId(2), 8), Err(DropReason::Replay));
        // 3 was evicted: it starts a fresh window.
        assert_eq!(g.accept(NodeId(3), 7), Ok(()));
        g.forget(NodeId(3));
        assert_eq!(g.accept(NodeId(3), 7), Ok(()));
    }
}
