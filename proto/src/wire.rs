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
    DEFAULT_MAX_PER_SENDER, Reassembler, ReassemblyLimits, fragment_count, max_payload_per_datagram,
};
use super::header::{HEADER_LEN, Header, cluster_id};
use super::replay::{DEFAULT_MAX_SENDERS, ReplayGuard};
use super::version::NodeId;

/// Default replay horizon in seconds: `max_clock_skew` (60 s) plus 30 s.
pub const DEFAULT_REPLAY_HORIZON_SECS: u64 = 90;

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
    /// Sealed mode: datagrams whose send time is older than this (by the receiver's wall
    /// clock) are refused as `stale`; forgotten senders are remembered at least this long.
    pub replay_horizon: Duration,
    /// Sealed mode: datagrams whose send time is further ahead than this are refused too.
    pub max_clock_skew: Duration,
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
            replay_horizon: Duration::from_secs(DEFAULT_REPLAY_HORIZON_SECS),
            max_clock_skew: Duration::from_secs(60),
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
    /// The caller's wall clock (ms since the epoch), stamped into every header and used to
    /// check received ones; 0 until [`Wire::set_wall_ms`] is called (no time checks then).
    wall_ms: u64,
    replay_horizon_ms: u64,
    max_skew_ms: u64,
    /// The last authenticated datagram refused for its send time: (sender, its time minus ours).
    last_stale: Option<(NodeId, i64)>,
}

impl Wire {
    /// A wire for node `me` (which must be fresh at every process start: nonces depend on it).
    pub fn new(cfg: WireConfig, me: NodeId) -> Wire {
        let keyring = Keyring::new(&cfg.keys, &cfg.cluster_name);
        let chunk = max_payload_per_datagram(cfg.mtu, keyring.is_encrypted());
        Wire {
            cluster_id: cluster_id(&cfg.cluster_name),
            me,
            mtu: cfg.mtu,
            max_message_size: cfg.max_message_size,
            chunk,
            packet: 0,
            message: 0,
            replay: if keyring.is_encrypted() {
                ReplayGuard::new(DEFAULT_MAX_SENDERS)
            } else {
                ReplayGuard::plaintext(DEFAULT_MAX_SENDERS)
            },
            wall_ms: 0,
            replay_horizon_ms: millis(cfg.replay_horizon),
            max_skew_ms: millis(cfg.max_clock_skew),
            last_stale: None,
            reassembler: Reassembler::new(ReassemblyLimits {
                max_message_size: cfg.max_message_size,
                max_bytes: cfg.max_reassembly_bytes,
                timeout: cfg.reassembly_timeout,
                max_per_sender: DEFAULT_MAX_PER_SENDER,
            }),
            keyring,
        }
    }

    /// Sets the wall clock (ms since the Unix epoch): stamped into the headers of what is
    /// encoded next, and the reference for the replay horizon of what is decoded next. The
    /// wire reads no clock itself.
    pub fn set_wall_ms(&mut self, wall_ms: u64) {
        if wall_ms != self.wall_ms {
            self.wall_ms = wall_ms;
            if self.keyring.is_encrypted() && wall_ms != 0 {
                self.replay
                    .prune(wall_ms.saturating_sub(self.replay_horizon_ms));
            }
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
        let (message_id, count) = self.begin_message(payload.len(), message_id)?;
        out.reserve(usize::from(count));
        for index in 0..count {
            let mut d = Vec::new();
            self.encode_fragment(payload, message_id, index, count, &mut d)?;
            out.push(d);
        }
        Ok(message_id)
    }

    /// Checks that a `len`-byte payload can be sent and assigns its message id (a new id if
    /// `None`); returns the id and the number of fragments. Nothing is encoded yet:
    /// [`Wire::encode_fragment`] seals one datagram at a time, so a sender can write each
    /// into a buffer of its own when it is about to send it.
    pub fn begin_message(
        &mut self,
        len: usize,
        message_id: Option<u64>,
    ) -> Result<(u64, u16), EncodeError> {
        if len > self.max_message_size {
            return Err(EncodeError::TooLarge {
                size: len,
                max: self.max_message_size,
            });
        }
        if self.chunk == 0 {
            return Err(EncodeError::MtuTooSmall {
                mtu: self.mtu,
                overhead: HEADER_LEN + self.keyring.overhead(),
            });
        }
        let count = fragment_count(len, self.chunk).ok_or(EncodeError::TooManyFragments {
            size: len,
            chunk: self.chunk,
        })?;
        self.packet
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
        Ok((message_id, count))
    }

    /// Seals fragment `index` of the `count` fragments of `payload` (message `message_id`, as
    /// returned by [`Wire::begin_message`]) into `out`, which is cleared first; the datagram
    /// takes the next packet number and the current wall clock.
    pub fn encode_fragment(
        &mut self,
        payload: &[u8],
        message_id: u64,
        index: u16,
        count: u16,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let chunk = self.chunk.max(1);
        let start = (usize::from(index) * chunk).min(payload.len());
        let part = &payload[start..(start + chunk).min(payload.len())];
        self.packet = self.packet.checked_add(1).ok_or(EncodeError::Exhausted)?;
        let header = Header {
            encrypted: self.keyring.is_encrypted(),
            key_id: self.keyring.sealing_key_id().unwrap_or(0),
            frag_index: index,
            frag_count: count,
            cluster_id: self.cluster_id,
            sender: self.me,
            packet_number: self.packet,
            message_id,
            sent_ms: self.wall_ms,
        };
        out.clear();
        out.reserve(HEADER_LEN + self.keyring.overhead() + part.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(part);
        self.keyring.seal(out);
        debug_assert!(out.len() <= self.mtu);
        Ok(())
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
        if self.keyring.is_encrypted() && self.wall_ms != 0 {
            let oldest = self.wall_ms.saturating_sub(self.replay_horizon_ms);
            let newest = self.wall_ms.saturating_add(self.max_skew_ms);
            if header.sent_ms < oldest || header.sent_ms > newest {
                let offset = (i128::from(header.sent_ms) - i128::from(self.wall_ms))
                    .clamp(i128::from(i64::MIN), i128::from(i64::MAX));
                self.last_stale = Some((header.sender, offset as i64));
                return Err(DropReason::Stale);
            }
        }
        self.replay
            .accept(header.sender, header.packet_number, header.sent_ms)?;
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

    /// The sender and send-time offset (theirs minus ours, ms) of the last authenticated
    /// datagram refused as [`DropReason::Stale`], taken (cleared) by this call.
    pub fn take_last_stale(&mut self) -> Option<(NodeId, i64)> {
        self.last_stale.take()
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

    /// Forgets a sender that left: its partial messages and its replay window. In sealed mode
    /// the sender is remembered as departed (bounded; see [`ReplayGuard`]), so its recorded
    /// datagrams stay refused; in plaintext its old datagrams would pass once more.
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

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
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
                mtu: 52,
                ..WireConfig::default()
            },
            NodeId(1),
        );
        assert!(matches!(
            tiny.encode(b"a"),
            Err(EncodeError::MtuTooSmall { mtu: 52, .. })
        ));
        let cfg = WireConfig {
            mtu: 53,
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
