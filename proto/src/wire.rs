//! Messages to datagrams and back: fragmentation, sealing, replay protection and reassembly,
//! combined. Pure: no sockets, no clock reads; `now` is an argument.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mccache_proto::wire::{Wire, WireConfig};
//! use mccache_proto::version::NodeId;
//!
//! let cfg = WireConfig { keys: vec![[1u8; 32]], mtu: 1472, ..WireConfig::default() };
//! let mut alice = Wire::new(cfg.clone(), NodeId(1));
//! let mut bob = Wire::new(cfg, NodeId(2));
//!
//! let message = vec![42u8; 5000];
//! let datagrams = alice.encode(&message).unwrap();
//! assert_eq!(datagrams.len(), 4);
//! assert!(datagrams.iter().all(|d| d.len() <= 1472));
//!
//! let now = Instant::now();
//! let mut got = None;
//! for d in datagrams.iter().rev() {
//!     if let Some(done) = bob.decode(now, d).unwrap() {
//!         got = Some(done);
//!     }
//! }
//! assert_eq!(got, Some((NodeId(1), message)));
//! // Replaying a datagram is refused.
//! assert!(bob.decode(now, &datagrams[0]).is_err());
//! ```

use std::time::{Duration, Instant};

use serde::Serialize;

use super::crypto::Keyring;
use super::drop::DropReason;
use super::fragment::{
    DEFAULT_MAX_PER_SENDER, Reassembler, ReassemblyLimits, fragment_count,
    max_payload_per_datagram, split,
};
use super::header::{HEADER_LEN, Header, cluster_id};
use super::replay::{DEFAULT_MAX_SENDERS, ReplayGuard};
use super::version::NodeId;

/// Settings of a [`Wire`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WireConfig {
    /// Cluster label: its crc32 is in every header and the name itself is authenticated.
    pub cluster_name: String,
    /// Keyring: `keys[0]` seals, all open. Empty = plaintext with a crc32.
    pub keys: Vec<[u8; 32]>,
    /// Largest datagram, header and tag included (`packet_mtu`).
    pub mtu: usize,
    /// Largest message payload accepted for sending and reassembly.
    pub max_message_size: usize,
    /// A partial message idle this long is dropped.
    pub reassembly_timeout: Duration,
    /// Most bytes held in partial messages (raised to fit at least one largest message).
    pub max_reassembly_bytes: usize,
}

impl Default for WireConfig {
    /// Cluster `"mccache"`, plaintext, MTU 1472, 1 MiB messages, 2 s timeout, 4 MiB held.
    fn default() -> WireConfig {
        WireConfig {
            cluster_name: "mccache".to_string(),
            keys: Vec::new(),
            mtu: 1472,
            max_message_size: 1024 * 1024,
            reassembly_timeout: Duration::from_secs(2),
            max_reassembly_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why a message could not be encoded. Nothing was sent and no counter was consumed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is larger than `max_message_size`.
    #[error("message of {size} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge {
        /// Payload bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The MTU leaves no room for payload after the header and tag.
    #[error("packet_mtu {mtu} cannot carry any payload (header and tag take {overhead} bytes)")]
    MtuTooSmall {
        /// The configured MTU.
        mtu: usize,
        /// Header plus tag (or crc) bytes.
        overhead: usize,
    },
    /// The message needs more than 65,535 fragments at this MTU.
    #[error("message of {size} bytes needs more than 65535 fragments of {chunk} bytes")]
    TooManyFragments {
        /// Payload bytes.
        size: usize,
        /// Payload bytes per datagram.
        chunk: usize,
    },
    /// The 64-bit packet counter is exhausted; the node must restart with a new node id.
    #[error("packet numbers exhausted")]
    Exhausted,
}

/// Gauges and counters of a [`Wire`].
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize)]
pub struct WireStats {
    /// Messages being reassembled.
    pub in_progress: usize,
    /// Bytes held by partial messages.
    pub bytes_held: usize,
    /// Partial messages dropped for inactivity ([`DropReason::Expired`]).
    pub expired: u64,
    /// Partial messages evicted to respect a bound ([`DropReason::ReassemblyLimit`]).
    pub evicted: u64,
    /// Senders with a replay window.
    pub replay_senders: usize,
    /// Datagrams sealed so far.
    pub datagrams_sent: u64,
    /// Messages encoded so far.
    pub messages_sent: u64,
}

/// One node's end of the wire: its keyring, node id, packet and message counters, replay windows
/// and reassembler. See the module example.
#[derive(Debug)]
pub struct Wire {
    keyring: Keyring,
    cluster_id: u32,
    me: NodeId,
    mtu: usize,
    max_message_size: usize,
    chunk: usize,
    /// Last packet number used (0 = none yet).
    packet: u64,
    /// Last message id used (0 = none yet).
    message: u64,
    replay: ReplayGuard,
    reassembler: Reassembler,
}

impl Wire {
    /// A wire for node `me` (which must be fresh at every process start: nonces depend on it).
    pub fn new(cfg: WireConfig, me: NodeId) -> Wire {
        let keyring = Keyring::new(&cfg.keys, &cfg.cluster_name);
        let chunk = max_payload_per_datagram(cfg.mtu, keyring.is_encrypted());
        Wire {
            cluster_id: cluster_id(&cfg.cluster_name),
            keyring,
            me,
            mtu: cfg.mtu,
            max_message_size: cfg.max_message_size,
            chunk,
            packet: 0,
            message: 0,
            replay: ReplayGuard::new(DEFAULT_MAX_SENDERS),
            reassembler: Reassembler::new(ReassemblyLimits {
                max_message_size: cfg.max_message_size,
                max_bytes: cfg.max_reassembly_bytes,
                timeout: cfg.reassembly_timeout,
                max_per_sender: DEFAULT_MAX_PER_SENDER,
            }),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// Payload bytes per datagram at this MTU and mode.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Splits, seals and returns the datagrams of one message (each at most `mtu` bytes).
    pub fn encode(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(payload, &mut out)?;
        Ok(out)
    }

    /// Like [`Wire::encode`], appending the datagrams to `out`. Returns how many were added.
    pub fn encode_into(
        &mut self,
        payload: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Result<usize, EncodeError> {
        let before = out.len();
        self.encode_as(payload, None, out)?;
        Ok(out.len() - before)
    }

    /// Encodes `payload` as message `message_id` (a new id if `None`) and returns the id used.
    ///
    /// Resending a message under its original id (with fresh packet numbers, so the replay
    /// window accepts them) lets a receiver complete a partial reassembly from fragments of
    /// several transmissions: under loss, a long message then needs a few rounds, not one
    /// lossless round.
    pub fn encode_as(
        &mut self,
        payload: &[u8],
        message_id: Option<u64>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<u64, EncodeError> {
        let size = payload.len();
        if size > self.max_message_size {
            return Err(EncodeError::TooLarge {
                size,
                max: self.max_message_size,
            });
        }
        if self.chunk == 0 {
            return Err(EncodeError::MtuTooSmall {
                mtu: self.mtu,
                overhead: HEADER_LEN + self.keyring.overhead(),
            });
        }
        let count = fragment_count(size, self.chunk).ok_or(EncodeError::TooManyFragments {
            size,
            chunk: self.chunk,
        })?;
        let last_packet = self
            .packet
            .checked_add(u64::from(count))
            .ok_or(EncodeError::Exhausted)?;
        let message_id = match message_id {
            Some(id) => id,
            None => {
                let id = self.message.checked_add(1).ok_or(EncodeError::Exhausted)?;
                self.message = id;
                id
            }
        };
        out.reserve(usize::from(count));
        let overhead = HEADER_LEN + self.keyring.overhead();
        for (index, part) in (0u16..).zip(split(payload, self.chunk)) {
            self.packet += 1;
            let header = Header {
                encrypted: self.keyring.is_encrypted(),
                key_id: self.keyring.sealing_key_id().unwrap_or(0),
                frag_index: index,
                frag_count: count,
                cluster_id: self.cluster_id,
                sender: self.me,
                packet_number: self.packet,
                message_id,
            };
            let mut d = Vec::with_capacity(overhead + part.len());
            d.extend_from_slice(&header.encode());
            d.extend_from_slice(part);
            self.keyring.seal(&mut d);
            debug_assert!(d.len() <= self.mtu);
            out.push(d);
        }
        debug_assert_eq!(self.packet, last_packet);
        Ok(message_id)
    }

    /// Opens one datagram. Returns `Ok(Some((sender, payload)))` when a message completes,
    /// `Ok(None)` when a fragment was stored, `Err(reason)` when it was dropped (the caller
    /// counts it). `now` drives reassembly timeouts.
    ///
    /// Order of checks: header structure, cluster id ([`DropReason::ForeignCluster`]), own echo,
    /// authentication (tag or crc), replay window, reassembly. Only datagrams that pass
    /// authentication touch the replay window or the reassembler.
    pub fn decode(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Result<Option<(NodeId, Vec<u8>)>, DropReason> {
        let header = Header::decode(datagram)?;
        if header.cluster_id != self.cluster_id {
            return Err(DropReason::ForeignCluster);
        }
        if header.sender == self.me {
            return Err(DropReason::OwnEcho);
        }
        let payload = self.keyring.open(&header, datagram)?;
        self.replay.accept(header.sender, header.packet_number)?;
        let done = self.reassembler.insert(
            now,
            header.sender,
            header.message_id,
            header.frag_index,
            header.frag_count,
            payload,
        )?;
        Ok(done.map(|p| (header.sender, p)))
    }

    /// True when `datagram` is this node's own and authentic (its header names this node and
    /// it opens with this node's keys). A unicast transport that resolved its own address
    /// among its seeds learns from this to stop sending to it. Touches no replay window.
    pub fn is_own_echo(&mut self, datagram: &[u8]) -> bool {
        let Ok(header) = Header::decode(datagram) else {
            return false;
        };
        header.cluster_id == self.cluster_id
            && header.sender == self.me
            && self.keyring.open(&header, datagram).is_ok()
    }

    /// Drops partial messages idle for the reassembly timeout; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.reassembler.expire(now)
    }

    /// Forgets a sender that left: its partial messages and its replay window.
    ///
    /// After this, the sender's old datagrams would pass the replay check once more; forget only
    /// senders that are gone (a new process has a new node id).
    pub fn forget_sender(&mut self, sender: NodeId) {
        self.reassembler.forget_sender(sender);
        self.replay.forget(sender);
    }

    /// Current gauges and counters.
    pub fn stats(&self) -> WireStats {
        WireStats {
            in_progress: self.reassembler.in_progress(),
            bytes_held: self.reassembler.bytes_held(),
            expired: self.reassembler.expired(),
            evicted: self.reassembler.evicted(),
            replay_senders: self.replay.senders(),
            datagrams_sent: self.packet,
            messages_sent: self.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(keys: Vec<[u8; 32]>) -> (Wire, Wire) {
        let cfg = WireConfig {
            keys,
            ..WireConfig::default()
        };
        (
            Wire::new(cfg.clone(), NodeId(10)),
            Wire::new(cfg, NodeId(20)),
        )
    }

    #[test]
    fn own_datagrams_are_echoes() {
        let (mut a, _) = pair(vec![[3; 32]]);
        let d = a.encode(b"x").unwrap();
        assert_eq!(a.decode(Instant::now(), &d[0]), Err(DropReason::OwnEcho));
    }

    #[test]
    fn only_an_authentic_own_datagram_is_an_own_echo() {
        for keys in [vec![[3; 32]], Vec::new()] {
            let (mut a, mut b) = pair(keys);
            let mine = a.encode(b"x").unwrap().remove(0);
            let theirs = b.encode(b"y").unwrap().remove(0);
            assert!(a.is_own_echo(&mine));
            assert!(!a.is_own_echo(&theirs));
            let mut tampered = mine.clone();
            *tampered.last_mut().unwrap() ^= 1;
            assert!(!a.is_own_echo(&tampered));
            // It touches no replay window: the echo can be checked again.
            assert!(a.is_own_echo(&mine));
        }
    }

    #[test]
    fn counters_start_at_one_and_advance_per_datagram() {
        let (mut a, _) = pair(vec![]);
        let chunk = a.chunk_size();
        let d1 = a.encode(&vec![0; chunk * 2 + 1]).unwrap();
        let d2 = a.encode(b"").unwrap();
        let hs: Vec<Header> = d1
            .iter()
            .chain(&d2)
            .map(|d| Header::decode(d).unwrap())
            .collect();
        let pns: Vec<u64> = hs.iter().map(|h| h.packet_number).collect();
        let mids: Vec<u64> = hs.iter().map(|h| h.message_id).collect();
        assert_eq!(pns, [1, 2, 3, 4]);
        assert_eq!(mids, [1, 1, 1, 2]);
        assert_eq!(a.stats().datagrams_sent, 4);
    }

    #[test]
    fn too_large_and_tiny_mtu_are_errors_that_consume_nothing() {
        let cfg = WireConfig {
            max_message_size: 100,
            ..WireConfig::default()
        };
        let mut w = Wire::new(cfg, NodeId(1));
        assert_eq!(
            w.encode(&[0; 101]),
            Err(EncodeError::TooLarge {
                size: 101,
                max: 100
            })
        );
        let mut tiny = Wire::new(
            WireConfig {
                mtu: 44,
                ..WireConfig::default()
            },
            NodeId(1),
        );
        assert!(matches!(
            tiny.encode(b"a"),
            Err(EncodeError::MtuTooSmall { mtu: 44, .. })
        ));
        let cfg = WireConfig {
            mtu: 45,
            max_message_size: 1 << 20,
            ..WireConfig::default()
        };
        let mut one_byte = Wire::new(cfg, NodeId(1));
        assert_eq!(
            one_byte.encode(&[0; 70_000]),
            Err(EncodeError::TooManyFragments {
                size: 70_000,
                chunk: 1
            })
        );
        assert_eq!(one_byte.encode(b"ab").unwrap().len(), 2);
        assert_eq!(w.stats().datagrams_sent + tiny.stats().datagrams_sent, 0);
    }
}
