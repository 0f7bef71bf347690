//! The protocol core: one node's replication state machine.
//!
//! It is I/O-free in the manner of quinn-proto: the driver feeds it datagrams
//! ([`Endpoint::handle_datagram`]), timer expiries ([`Endpoint::handle_timeout`]) and local changes
//! ([`Endpoint::publish`]), always passing `now`; it writes datagrams to send into the driver's
//! buffer ([`Endpoint::poll_transmit`]) and yields the next deadline
//! ([`Endpoint::poll_timeout`]) and events ([`Endpoint::poll_event`]). The same code runs under
//! the tokio driver and the simulator.
//!
//! Every datagram can go to the whole group; messages meant for one peer name it (`to`,
//! [`Destination::Node`]) and the others ignore them. A unicast fan-out transport can therefore
//! be added in the driver alone.
//!
//! One responsibility per file, each an `impl Endpoint` block over the state declared here:
//! `config` ([`EndpointConfig`] and the named constants), `timers` (the timer table and
//! [`Endpoint::handle_timeout`]), `inbound` (datagram dispatch, the peers' reliable streams),
//! `outbound` (publishing, batching, the send queue, retransmissions), `linger` (whether
//! changes wait for company, learned from the data messages), `membership` (peers,
//! heartbeats, acks, failure detection), `clock` (peers' clocks and versions from the future),
//! `anti_entropy` (pulses, digests, sums of parts, bucket lists, pulls, answer budgets),
//! `bucket_lists` (this node's own bucket lists and the sums of their parts, kept for the
//! messages of one exchange), `transfer` (state transfer to joiners), `queries` (cluster
//! queries, address books).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::AnswerBudget;
use super::drop::{DropCounters, DropReason};
use super::message::{Item, Msg, Query};
use super::metrics::NetworkMetrics;
use super::reliability::{RecvStream, SendBuffer};
use super::state::AppState;
use super::version::NodeId;
use super::wire::Wire;

mod anti_entropy;
mod bucket_lists;
mod clock;
mod coalesce;
mod config;
mod inbound;
mod linger;
mod membership;
mod outbound;
mod queries;
mod spent;
#[cfg(test)]
mod testing;
mod timers;
mod transfer;

pub use config::*;
use membership::PeerMap;
use outbound::Outgoing;
use timers::{Timer, Timers};
use transfer::{JoinState, Served};

/// Membership and readiness events (public as `mccache::MemberEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A peer was heard for the first time (or again after it was removed).
    Joined {
        /// The peer.
        id: NodeId,
        /// Its name.
        name: String,
    },
    /// A peer missed `suspect_after` heartbeats (3 by default).
    Suspect {
        /// The peer.
        id: NodeId,
    },
    /// A suspected peer was heard again.
    Alive {
        /// The peer.
        id: NodeId,
    },
    /// A peer left cleanly (`failed: false`) or went silent for `remove_after` heartbeats
    /// (6 by default; `failed: true`).
    Left {
        /// The peer.
        id: NodeId,
        /// True if it failed rather than leaving.
        failed: bool,
    },
    /// This node holds a full copy of the caches its first peer offered (or found no peer).
    Ready,
}

/// What the core reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A membership or readiness change.
    Member(MemberEvent),
    /// A peer answered query `id`.
    Reply {
        /// Request id.
        id: u64,
        /// The peer.
        from: NodeId,
        /// Its answer, msgpack-encoded.
        body: Vec<u8>,
    },
    /// A peer's address book (unicast transports, [`Endpoint::announce_addresses`]).
    Addresses {
        /// The peer that sent it.
        from: NodeId,
        /// `(member, address)` pairs as that peer heard them, at most
        /// [`crate::message::MAX_ADDRESSES`].
        addrs: Vec<(NodeId, SocketAddr)>,
    },
}

/// Where a datagram from [`Endpoint::poll_transmit`] goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Every peer (the multicast group, or every unicast target).
    Group,
    /// One peer: a NAK, a retransmission for the peer that asked, a state-transfer chunk, a
    /// query reply, anti-entropy lists. A multicast transport sends it to the group anyway
    /// (the others ignore it); a unicast transport can send it to that peer alone.
    Node(NodeId),
}

/// One datagram written by [`Endpoint::poll_transmit`] into the caller's buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes.
    pub destination: Destination,
    /// Its length: the buffer holds exactly these bytes.
    pub size: usize,
}

/// A peer as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// True while suspected.
    pub suspect: bool,
    /// Its data messages not yet received here.
    pub lag: u64,
}

/// One node's replication state machine.
pub struct Endpoint {
    cfg: EndpointConfig,
    me: NodeId,
    wire: Wire,
    peers: PeerMap,
    send: SendBuffer,
    outbox: VecDeque<Item>,
    outbox_bytes: usize,
    /// Buffers of changes already encoded, for the application to reuse.
    spent: spent::Spent,
    /// Messages to send, encoded a datagram at a time by [`Endpoint::poll_transmit`].
    transmits: VecDeque<Outgoing>,
    /// Bytes on the wire of the messages in `transmits` (whole messages until their last
    /// datagram is written).
    transmit_bytes: usize,
    events: VecDeque<Event>,
    /// Counters (its `dropped` stays empty: drops are counted in `drops`).
    metrics: NetworkMetrics,
    drops: DropCounters,
    timers: Timers,
    tail_repeats: u8,
    /// When the last data message was packed, and whether small changes wait for company
    /// after it.
    linger: linger::Linger,
    /// When the last data message arrived from a peer.
    last_data_rx: Option<Instant>,
    /// The periodic pulse's due time (the pulse timer is earlier when a pulse was asked for).
    periodic_pulse: Instant,
    /// Since when periodic pulses have been put off because replication data was flowing.
    pulse_deferred_since: Option<Instant>,
    /// Whether the driver's targeted repair (keys whose changes overflowed its queue) is still
    /// pending ([`Endpoint::set_repair_pending`]).
    repair_pending: bool,
    /// Since when answers to peers' digests have been put off for that repair.
    lists_deferred_since: Option<Instant>,
    /// Where the next answer to a differing digest starts among the differing buckets, so that
    /// answers cut to the asker's budget cover every bucket in turn.
    digest_cursor: usize,
    /// Digests answered since the start of the current pulse period (when it started).
    digest_answers: (u32, Option<Instant>),
    /// The mean bytes of one key in our bucket lists (key and version), learned from the lists
    /// sent; sizes an answer to the asker's budget before the lists are built.
    list_entry_bytes: usize,
    join: JoinState,
    next_query: u64,
    left: bool,
    /// Recently served snapshot chunks, for resending under the same message id.
    served: VecDeque<Served>,
    /// What each requester may still be sent in answers.
    budget: AnswerBudget,
    /// Bucket lists kept for the messages of one anti-entropy exchange.
    bucket_lists: bucket_lists::BucketLists,
    /// When the last anti-entropy pulse went out.
    last_pulse_at: Option<Instant>,
    /// The latest `now` of a datagram or timer handled ([`Endpoint::credit_stall`]).
    last_call: Option<Instant>,
    /// Repairs waiting in the outbox and pulls in flight, so neither is repeated.
    coalesce: coalesce::Coalescer,
    /// The application's wall clock at the last call that passed it in (ms since the epoch;
    /// 0 until then). The core reads no clock: the driver's `AppState::wall_ms` is the source.
    wall_ms: u64,
    /// `(now, wall_ms)` at that call, to derive the wall clock at later `now`s.
    wall_anchor: Option<Instant>,
    /// When a warning of each kind was last logged (rate limit).
    warned_skew: Option<Instant>,
    warned_offset: Option<Instant>,
    /// Why the last datagram handed to [`Endpoint::handle_datagram`] was dropped, if it was.
    last_drop: Option<DropReason>,
}

impl Endpoint {
    /// A node that has just started: it announces itself on the first
    /// [`Endpoint::handle_timeout`] (its timer is due at once).
    pub fn new(cfg: EndpointConfig, me: NodeId, now: Instant) -> Endpoint {
        let wire = Wire::new(cfg.wire.clone(), me);
        let send = SendBuffer::new(cfg.retransmit_bytes);
        let mut timers = Timers::default();
        timers.set(Timer::Hello, now);
        timers.set(Timer::Heartbeat, now + cfg.heartbeat);
        timers.set(Timer::Pulse, now + cfg.pulse);
        timers.set(Timer::Housekeeping, now + HOUSEKEEPING_PERIOD);
        timers.set(Timer::Join, now + cfg.join_wait);
        Endpoint {
            me,
            wire,
            peers: PeerMap::new(),
            send,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            spent: spent::Spent::default(),
            transmits: VecDeque::new(),
            transmit_bytes: 0,
            events: VecDeque::new(),
            metrics: NetworkMetrics::default(),
            drops: DropCounters::default(),
            timers,
            tail_repeats: 0,
            linger: linger::Linger::default(),
            last_data_rx: None,
            periodic_pulse: now + cfg.pulse,
            pulse_deferred_since: None,
            repair_pending: false,
            lists_deferred_since: None,
            digest_cursor: 0,
            digest_answers: (0, None),
            list_entry_bytes: 40,
            join: JoinState::Waiting,
            next_query: 1,
            left: false,
            served: VecDeque::new(),
            budget: AnswerBudget::new(!cfg.wire.keys.is_empty(), cfg.heartbeat * 3),
            bucket_lists: bucket_lists::BucketLists::default(),
            last_pulse_at: None,
            last_call: None,
            coalesce: coalesce::Coalescer::default(),
            wall_ms: 0,
            wall_anchor: None,
            warned_skew: None,
            warned_offset: None,
            last_drop: None,
            cfg,
        }
    }

    /// Takes the application's wall clock at `now` (the core reads no clock).
    pub(super) fn set_wall(&mut self, now: Instant, wall_ms: u64) {
        self.wall_ms = wall_ms;
        self.wall_anchor = Some(now);
        self.wire.set_wall_ms(wall_ms);
    }

    /// Advances the wall clock from the last reading to `now`.
    pub(super) fn advance_wall(&mut self, now: Instant) {
        if let Some(at) = self.wall_anchor {
            let ms = now.saturating_duration_since(at).as_millis() as u64;
            self.wire.set_wall_ms(self.wall_ms.saturating_add(ms));
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// True once this node holds a full copy (see [`MemberEvent::Ready`]).
    pub fn is_ready(&self) -> bool {
        matches!(self.join, JoinState::Ready)
    }

    /// Changes queued and not yet packed into data messages.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Encoded bytes of the changes queued in the outbox (an estimate: their weights).
    pub fn outbox_bytes(&self) -> usize {
        self.outbox_bytes
    }

    /// How old a key's newest version must be before anti-entropy repairs it.
    pub fn settle(&self) -> Duration {
        self.cfg.settle
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest moment [`Endpoint::handle_timeout`] has work to do (`None`: no timer
    /// is set, which happens only after [`Endpoint::leave`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        self.timers.earliest()
    }

    /// Whether a data message went out less than `linger` before `now` and changes linger
    /// (their datagrams showed they gather company: see the `linger` module): the node is
    /// sending steadily, and a change published now would wait for others to join it (unless
    /// it fills a datagram alone).
    pub fn is_streaming(&self, now: Instant) -> bool {
        self.linger.until(now, self.cfg.linger).is_some()
    }

    /// While the node is streaming ([`Endpoint::is_streaming`]): until when a change published
    /// now lingers, and how many bytes of changes (as [`Item::weight`] counts them) the lingering
    /// data message still takes before it is full and goes at once. Changes that fit wait for
    /// the deadline whenever they are published before it, so a driver may gather them
    /// elsewhere until then. `None` when a change published now would go at once (not
    /// streaming, or the message is full already).
    pub fn lingering(&self, now: Instant) -> Option<(Instant, usize)> {
        let due = self.linger.until(now, self.cfg.linger)?;
        if self.left {
            return None;
        }
        let chunk = self.wire.chunk_size().max(64);
        let room = chunk.checked_sub(DATA_MSG_OVERHEAD + self.outbox_bytes)?;
        (room > 0).then_some((due, room))
    }

    /// How many live peers there are (without building [`Endpoint::peers`]).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Live peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(id, p)| PeerInfo {
                id: *id,
                name: p.name.clone(),
                last_seen: p.last_seen,
                suspect: p.suspect,
                lag: p.recv.seq_hi() - p.recv.contiguous(),
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Counters, with the gauges filled in.
    pub fn metrics(&self) -> NetworkMetrics {
        let mut m = self.metrics.clone();
        let ws = self.wire.stats();
        m.reassemblies_in_progress = ws.in_progress as u64;
        m.reassembly_bytes = ws.bytes_held as u64;
        m.outbound_queue = self.outbox.len() as u64;
        m.retransmit_buffer_msgs = self.send.len() as u64;
        m.retransmit_buffer_bytes = self.send.bytes() as u64;
        // Saturating: peers' announcements are untrusted, and a forged far-ahead one can make
        // a stream abandon close to 2^64 numbers (a plain sum overflowed and killed the thread).
        let sat = |acc: u64, x: u64| acc.saturating_add(x);
        m.gaps = self
            .peers
            .values()
            .map(|p| p.recv.gaps_detected)
            .fold(self.metrics.gaps, sat);
        m.gaps_abandoned = self
            .peers
            .values()
            .map(|p| p.recv.abandoned)
            .fold(self.metrics.gaps_abandoned, sat);
        m.peer_lag = self
            .peers
            .iter()
            .map(|(id, p)| (id.to_string(), p.recv.seq_hi() - p.recv.contiguous()))
            .collect();
        m.dropped = self.drops.to_map();
        m
    }

    /// Drops counted so far, by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Changes queued, not yet sent.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Data messages sent but not yet acknowledged by every live peer.
    pub fn in_flight(&self) -> u64 {
        let hi = self.send.seq_hi();
        // Suspected peers do not hold the window shut: they are removed or come back.
        self.peers
            .values()
            .filter(|p| !p.suspect)
            .map(|p| hi.saturating_sub(p.acked))
            .max()
            .unwrap_or(0)
    }

    /// The flow-control window now: the data messages each peer may have unacknowledged, at
    /// most `cfg.window`, and fewer when a receive buffer like this node's
    /// (`cfg.recv_buffer`) could not hold that many from every peer at once (each peer may be
    /// sending to it too). A kernel that caps the buffer (`net.core.rmem_max` without
    /// `CAP_NET_ADMIN`, as in most containers) then shrinks the window instead of dropping
    /// what the senders' windows allow. At least [`MIN_WINDOW`].
    pub fn window(&self) -> u64 {
        let senders = self.peers.len().max(1);
        let fits = self.cfg.recv_buffer / DATAGRAM_CHARGE / senders;
        (fits as u64).max(MIN_WINDOW).min(self.cfg.window)
    }

    /// Data messages received from one peer between two cumulative acks: a quarter of the
    /// window (so a sender never waits for a heartbeat to reopen it), at most `cfg.ack_every`.
    pub(super) fn ack_every(&self) -> u64 {
        (self.window() / 4).clamp(1, self.cfg.ack_every.max(1))
    }

    /// True when nothing is queued, in flight or missing: the node has quiesced.
    pub fn is_quiet(&self) -> bool {
        self.outbox.is_empty()
            && self.in_flight() == 0
            && self.peers.values().all(|p| p.recv.missing() == 0)
            && self.transmits.is_empty()
    }

    /// Why the datagram last handed to [`Endpoint::handle_datagram`] was dropped at the wire
    /// layer (`None` if it was accepted); the driver uses it to tell users about datagrams it
    /// cannot open.
    pub fn last_drop(&self) -> Option<DropReason> {
        self.last_drop
    }

    /// Bytes on the wire for a message payload of `len` bytes (headers and tags included).
    pub(super) fn wire_size(&self, len: usize) -> usize {
        let chunk = self.wire.chunk_size().max(1);
        len + len.div_ceil(chunk).max(1) * (crate::header::HEADER_LEN + 16)
    }

    /// Bytes a control list may take before it is split: a few datagrams, so that one message
    /// gets through a lossy network with good odds.
    pub(super) fn list_budget(&self) -> usize {
        self.wire.chunk_size().max(256) * 4
    }
}

/// Where a message goes: to the one peer it names, or to every peer.
fn destination(msg: &Msg) -> Destination {
    msg.target().map_or(Destination::Group, Destination::Node)
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_new_endpoint_announces_itself_at_once_and_is_quiet() {
        let now = Instant::now();
        let mut ep = endpoint(1, now);
        assert_eq!(ep.poll_timeout(), Some(now));
        assert!(!ep.is_ready());
        assert!(ep.is_quiet());
        let mut app = MapApp::default();
        ep.handle_timeout(now, &mut app);
        let mut buf = Vec::new();
        let t = ep.poll_transmit(now, &mut buf).expect("the joining hello");
        assert_eq!(t.destination, Destination::Group);
        assert_eq!(t.size, buf.len());
        assert!(ep.poll_transmit(now, &mut buf).is_none());
        assert!(ep.poll_timeout().is_some_and(|t| t > now));
        assert_eq!(ep.metrics().datagrams_sent, 1);
    }

    #[test]
    fn metrics_show_typed_drops_by_name() {
        let now = Instant::now();
        let mut ep = endpoint(1, now);
        let mut app = MapApp::default();
        assert_eq!(ep.handle_datagram(now, b"not ours", &mut app), None);
        assert_eq!(ep.last_drop(), Some(DropReason::BadMagic));
        assert_eq!(ep.drops().get(DropReason::BadMagic), 1);
        assert_eq!(ep.metrics().dropped.get("bad_magic"), Some(&1));
        assert_eq!(ep.metrics().datagrams_received, 1);
    }
}
