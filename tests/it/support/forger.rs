//! An insider's forgery for the hostile-input tests: authentic datagrams (sealed with the
//! cluster's keys, or plaintext with a valid checksum) with arbitrary header fields.
//!
//! Use it from a test module with `use crate::support::forger;`.
#![allow(dead_code)]

use mccache::NodeId;
use mccache_proto::crypto::{Keyring, key_id};
use mccache_proto::header::{Header, cluster_id};

/// Builds datagrams as a member holding `keys` (none: plaintext) of cluster `cluster` could.
pub struct Forger {
    ring: Keyring,
    keys: Vec<[u8; 32]>,
    cluster: String,
    /// Whether headers carry the wall clock's time as their send time (as real senders do);
    /// otherwise send time 0.
    pub stamp_now: bool,
}

impl Forger {
    /// A forger for `cluster` with `keys`, stamping send time 0.
    pub fn new(keys: Vec<[u8; 32]>, cluster: &str) -> Forger {
        Forger {
            ring: Keyring::new(&keys, cluster),
            keys,
            cluster: cluster.into(),
            stamp_now: false,
        }
    }

    /// Like [`Forger::new`], stamping the wall clock's time into every header.
    pub fn stamping(keys: Vec<[u8; 32]>, cluster: &str) -> Forger {
        Forger {
            stamp_now: true,
            ..Forger::new(keys, cluster)
        }
    }

    /// A header from `sender` with the given packet number, message id and fragment place.
    pub fn header(&self, sender: NodeId, pn: u64, mid: u64, index: u16, count: u16) -> Header {
        Header {
            encrypted: !self.keys.is_empty(),
            key_id: self.keys.first().map(key_id).unwrap_or(0),
            frag_index: index,
            frag_count: count,
            cluster_id: cluster_id(&self.cluster),
            sender,
            packet_number: pn,
            message_id: mid,
            sent_ms: if self.stamp_now { wall_ms_now() } else { 0 },
        }
    }

    /// `h` and `body`, sealed (or checksummed) as the wire does.
    pub fn seal(&mut self, h: Header, body: &[u8]) -> Vec<u8> {
        let mut d = h.encode().to_vec();
        d.extend_from_slice(body);
        self.ring.seal(&mut d);
        d
    }

    /// One authentic datagram: [`Forger::header`] then [`Forger::seal`].
    pub fn datagram(
        &mut self,
        sender: NodeId,
        pn: u64,
        mid: u64,
        index: u16,
        count: u16,
        body: &[u8],
    ) -> Vec<u8> {
        let h = self.header(sender, pn, mid, index, count);
        self.seal(h, body)
    }
}

/// The wall clock in ms since the Unix epoch.
pub fn wall_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
