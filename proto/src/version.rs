//! Write versions: a hybrid logical clock timestamp paired with the writer's node id.
//!
//! A [`Version`] totally orders every write in the cluster: first by the HLC timestamp, then by
//! node id as a tie-break. Peers apply a change only if its version is newer than what they hold,
//! so every node converges to the same winner whatever order messages arrive in.
//!
//! The HLC is pure: callers pass the wall-clock reading (`wall_ms`), nothing here reads a clock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Bits of an HLC timestamp used for the logical counter (the rest hold milliseconds).
pub const HLC_LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << HLC_LOGICAL_BITS) - 1;

/// Identity of one node for the lifetime of its process: random at every start, never the IP,
/// so several nodes on one host (or in one process) are distinct.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A node id from random bits drawn by the caller (the core owns no RNG). Zero is reserved
    /// for "no node", so it maps to 1.
    pub fn from_random(bits: u64) -> NodeId {
        NodeId(bits.max(1))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The version of one write: `(hlc timestamp, node id)`, ordered lexicographically.
///
/// It is also the token for `Cache::compare_and_swap` in the `mccache` crate.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock timestamp: milliseconds since the Unix epoch in the high 48 bits,
    /// a logical counter in the low 16 bits.
    pub hlc: u64,
    /// The node that made the write.
    pub node: NodeId,
}

impl Version {
    /// The smallest version; every real write is newer.
    pub const ZERO: Version = Version {
        hlc: 0,
        node: NodeId(0),
    };

    /// Builds a version from its parts.
    pub const fn new(hlc: u64, node: NodeId) -> Version {
        Version { hlc, node }
    }

    /// Wall-clock milliseconds since the Unix epoch carried by the timestamp.
    pub const fn millis(&self) -> u64 {
        self.hlc >> HLC_LOGICAL_BITS
    }

    /// The logical counter part of the timestamp.
    pub const fn logical(&self) -> u16 {
        (self.hlc & LOGICAL_MASK) as u16
    }

    /// The wall-clock time of the write as a [`std::time::SystemTime`].
    pub fn system_time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.millis())
    }

    /// Big-endian bytes (hlc, node), used in checksums.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.hlc.to_be_bytes());
        b[8..].copy_from_slice(&self.node.0.to_be_bytes());
        b
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}@{}", self.millis(), self.logical(), self.node)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A lock-free hybrid logical clock (Kulkarni et al.): timestamps never go backwards, stay close
/// to wall time, and move past every timestamp this node has observed from peers.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A clock that has seen nothing yet.
    pub const fn new() -> Hlc {
        Hlc {
            last: AtomicU64::new(0),
        }
    }

    /// A new timestamp for a local event, strictly greater than every one returned or observed
    /// before. `wall_ms` is the current wall-clock reading in milliseconds since the epoch.
    pub fn tick(&self, wall_ms: u64) -> u64 {
        let physical = wall_ms << HLC_LOGICAL_BITS;
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = if physical > cur { physical } else { cur + 1 };
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Merges a timestamp received from a peer, so later local ticks order after it.
    pub fn observe(&self, remote: u64) {
        self.last.fetch_max(remote, Ordering::AcqRel);
    }

    /// The latest timestamp issued or observed.
    pub fn peek(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_monotonic_even_when_wall_clock_goes_back() {
        let h = Hlc::new();
        let a = h.tick(1_000);
        let b = h.tick(999);
        let c = h.tick(999);
        assert!(a < b && b < c);
        assert_eq!(Version::new(b, NodeId(1)).millis(), 1_000);
    }

    #[test]
    fn observe_moves_past_remote_timestamps() {
        let h = Hlc::new();
        let remote = 5_000 << HLC_LOGICAL_BITS | 7;
        h.observe(remote);
        assert!(h.tick(10) > remote);
    }

    #[test]
    fn versions_order_by_time_then_node() {
        let a = Version::new(10, NodeId(9));
        let b = Version::new(11, NodeId(1));
        let c = Version::new(11, NodeId(2));
        assert!(a < b && b < c);
    }
}
