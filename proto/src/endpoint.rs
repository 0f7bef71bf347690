//! The protocol core: one node's replication state machine.
//!
//! It is I/O-free in the manner of quinn-proto: the driver feeds it datagrams
//! ([`Endpoint::handle_datagram`]), timer expiries ([`Endpoint::handle_timeout`]) and local changes
//! ([`Endpoint::publish`]), always passing `now`; it yields datagrams to send
//! ([`Endpoint::poll_transmit`]), the next deadline ([`Endpoint::poll_timeout`]) and events
//! ([`Endpoint::poll_event`]). The same code runs under the tokio driver and the simulator.
//!
//! Every datagram goes to the whole group; messages meant for one peer name it (`to`) and the
//! others ignore them. A unicast fan-out transport can therefore be added in the driver alone.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

type PeerMap = BTreeMap<NodeId, Peer>;
use std::time::{Duration, Instant};

use super::budget::AnswerBudget;
use super::drop::DropReason;
use super::message::{CacheDigest, Item, Msg, Query};
use super::metrics::NetworkMetrics;
use super::record::Record;
use super::reliability::{Arrival, NakPolicy, RecvStream, SendBuffer, to_ranges};

/// Most bytes of datagrams queued for sending before NAKs stop being served: a NAK storm (or
/// one forged NAK naming a whole retransmit buffer of large messages, many times over) must
/// not queue unbounded memory. Unserved NAKs are simply asked again later.
pub const MAX_QUEUED_TRANSMIT_BYTES: usize = 8 << 20;

/// Most missing sequence numbers tracked over all peers. An announcement that would open more
/// makes that peer's stream jump to it instead (counted as `gap_budget`): the skipped span is
/// repaired by anti-entropy, acks keep flowing, and spoofed peers announcing far-ahead streams
/// cannot grow memory or the per-wakeup NAK timer scan (which is linear in tracked gaps).
pub const MAX_TRACKED_GAPS: u64 = 1 << 14;
use super::state::AppState;
use super::version::{NodeId, Version, too_far_ahead};
use super::wire::{Wire, WireConfig};
use crate::sync::{Applied, KeyVersion, SYNC_BUCKETS, key_part};

/// Default of `max_clock_skew`, in seconds.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Shortest interval between two warnings of one kind (clock skew, clock offset).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Tunables of the protocol core. [`EndpointConfig::new`] derives sane values from the node
/// configuration; the simulator shrinks them.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Human name announced in heartbeats.
    pub name: String,
    /// Datagram format, keys and limits.
    pub wire: WireConfig,
    /// Heartbeat and housekeeping period (`daemon_sleep`).
    pub heartbeat: Duration,
    /// Anti-entropy pulse period (`cache_pulse`).
    pub pulse: Duration,
    /// Heartbeats missed before a peer is suspected.
    pub suspect_after: u32,
    /// Heartbeats missed before a peer is removed.
    pub remove_after: u32,
    /// NAK timing.
    pub nak: NakPolicy,
    /// Bytes of sent data messages kept for retransmission.
    pub retransmit_bytes: usize,
    /// Unacknowledged data messages allowed in flight before new data waits (flow control).
    pub window: u64,
    /// Changes that may wait to be sent; beyond it changes are dropped and repaired by
    /// anti-entropy.
    pub queue_max: usize,
    /// Delay after a burst before the tail announcement.
    pub tail_delay: Duration,
    /// Bytes per state-transfer chunk.
    pub snapshot_chunk: usize,
    /// How long a joining node waits for a peer before declaring itself ready alone.
    pub join_wait: Duration,
    /// Send a cumulative ack after this many data messages received.
    pub ack_every: u64,
    /// Most peers tracked (membership table bound).
    pub max_peers: usize,
    /// Batching window: when a data message went out less than this long ago and the queued
    /// changes do not fill a datagram, they wait (at most this long) for more to join them.
    /// At low load every change leaves at once; under load datagrams fill up.
    pub linger: Duration,
    /// Anti-entropy leaves alone keys whose newest version is younger than this: they are most
    /// likely still in flight on the reliable stream, and repairing them would only add load.
    pub settle: Duration,
    /// Versions (and clear floors, horizons) further ahead of this node's wall clock than this
    /// are refused (`clock_skew`), counted, warned about and never observed into the clock.
    pub max_clock_skew: Duration,
}

impl EndpointConfig {
    /// Defaults derived from the heartbeat and pulse periods.
    pub fn new(
        name: String,
        wire: WireConfig,
        heartbeat: Duration,
        pulse: Duration,
    ) -> EndpointConfig {
        EndpointConfig {
            name,
            wire,
            heartbeat,
            pulse,
            suspect_after: 3,
            remove_after: 6,
            nak: NakPolicy::default(),
            retransmit_bytes: 32 << 20,
            window: 16_384,
            queue_max: 65_536,
            tail_delay: Duration::from_millis(2),
            snapshot_chunk: 32 << 10,
            join_wait: heartbeat.mul_f64(1.5).max(Duration::from_millis(300)),
            ack_every: 256,
            max_peers: 256,
            settle: (pulse / 2).min(Duration::from_secs(1)),
            linger: Duration::from_micros(200),
            max_clock_skew: Duration::from_secs(DEFAULT_MAX_CLOCK_SKEW_SECS),
        }
    }
}

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

#[derive(Debug)]
struct Peer {
    name: String,
    last_seen: Instant,
    suspect: bool,
    /// Our stream, as acknowledged by this peer.
    acked: u64,
    /// This peer's stream, as received here.
    recv: RecvStream,
    received_since_ack: u64,
    /// Its wall clock minus ours, in ms, from its last heartbeat (`None` until one arrives).
    clock_offset_ms: Option<i64>,
}

#[derive(Debug)]
struct Transfer {
    donor: NodeId,
    pending: BTreeMap<String, (u64, Instant)>,
    deadline: Instant,
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
    /// Datagrams to send, each with the one peer it is for (`None`: every peer).
    transmits: VecDeque<(Option<NodeId>, Vec<u8>)>,
    /// Bytes in `transmits`.
    transmit_bytes: usize,
    events: VecDeque<Event>,
    metrics: NetworkMetrics,
    next_heartbeat: Instant,
    next_pulse: Instant,
    next_housekeeping: Instant,
    tail_at: Option<Instant>,
    tail_repeats: u8,
    /// When the last data message was sent, and when lingering changes must go out.
    last_data_at: Option<Instant>,
    /// When the last data message arrived from a peer.
    last_data_rx: Option<Instant>,
    /// The periodic pulse's due time (`next_pulse` is earlier when a pulse was asked for).
    periodic_pulse: Instant,
    /// Since when periodic pulses have been put off because replication data was flowing.
    pulse_deferred_since: Option<Instant>,
    flush_at: Option<Instant>,
    join: JoinState,
    next_query: u64,
    left: bool,
    /// Recently served snapshot chunks, for resending under the same message id.
    served: VecDeque<Served>,
    /// What each requester may still be sent in answers.
    budget: AnswerBudget,
    /// When the last anti-entropy pulse went out.
    last_pulse_at: Option<Instant>,
    /// The application's wall clock at the last call that passed it in (ms since the epoch;
    /// 0 until then). The core reads no clock: the driver's `AppState::wall_ms` is the source.
    wall_ms: u64,
    /// `(now, wall_ms)` at that call, to derive the wall clock at later `now`s.
    wall_anchor: Option<Instant>,
    /// The joining `Hello` waits for the first timer run, which brings the wall clock its
    /// header's send time needs.
    hello_pending: bool,
    created: Instant,
    /// When a warning of each kind was last logged (rate limit).
    warned_skew: Option<Instant>,
    warned_offset: Option<Instant>,
    /// Why the last datagram handed to [`Endpoint::handle_datagram`] was dropped, if it was.
    last_drop: Option<DropReason>,
}

/// A received snapshot chunk.
struct Chunk {
    cache: String,
    cursor: u64,
    records: Vec<Record>,
    next: Option<u64>,
    horizon: Version,
}

/// A snapshot chunk sent: (requester, cache, cursor), wire message id, payload.
type Served = ((NodeId, String, u64), u64, Vec<u8>);

#[derive(Debug)]
enum JoinState {
    Waiting { until: Instant },
    Transferring(Transfer),
    Ready,
}

impl Endpoint {
    /// A node that has just started: it will announce itself on the first
    /// [`Endpoint::handle_timeout`] (or right away through [`Endpoint::poll_transmit`]).
    pub fn new(cfg: EndpointConfig, me: NodeId, now: Instant) -> Endpoint {
        let wire = Wire::new(cfg.wire.clone(), me);
        let send = SendBuffer::new(cfg.retransmit_bytes);
        let join_until = now + cfg.join_wait;
        Endpoint {
            me,
            wire,
            peers: PeerMap::new(),
            send,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            transmits: VecDeque::new(),
            transmit_bytes: 0,
            events: VecDeque::new(),
            metrics: NetworkMetrics::default(),
            next_heartbeat: now + cfg.heartbeat,
            next_pulse: now + cfg.pulse,
            next_housekeeping: now + Duration::from_millis(250),
            tail_at: None,
            tail_repeats: 0,
            last_data_at: None,
            last_data_rx: None,
            periodic_pulse: now + cfg.pulse,
            pulse_deferred_since: None,
            flush_at: None,
            join: JoinState::Waiting { until: join_until },
            next_query: 1,
            left: false,
            served: VecDeque::new(),
            budget: AnswerBudget::new(!cfg.wire.keys.is_empty(), cfg.heartbeat * 3),
            last_pulse_at: None,
            wall_ms: 0,
            wall_anchor: None,
            hello_pending: true,
            created: now,
            warned_skew: None,
            warned_offset: None,
            last_drop: None,
            cfg,
        }
    }

    /// Takes the application's wall clock at `now` (the core reads no clock).
    fn set_wall(&mut self, now: Instant, wall_ms: u64) {
        self.wall_ms = wall_ms;
        self.wall_anchor = Some(now);
        self.wire.set_wall_ms(wall_ms);
    }

    /// Advances the wall clock from the last reading to `now`.
    fn advance_wall(&mut self, now: Instant) {
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

    /// Queues a local change for replication. Never blocks: if the outbound queue is full the
    /// change is dropped, counted, and an anti-entropy pulse is scheduled so peers repair it.
    pub fn publish(&mut self, now: Instant, item: Item) {
        if self.left {
            return;
        }
        if self.outbox.len() >= self.cfg.queue_max {
            self.metrics.outbound_overflow += 1;
            self.next_pulse = self.next_pulse.min(now + Duration::from_millis(50));
            return;
        }
        self.outbox_bytes += item.weight();
        self.outbox.push_back(item);
    }

    /// Packs queued changes into data messages (as many per datagram as fit) and queues the
    /// datagrams. Call after a batch of [`Endpoint::publish`] calls.
    pub fn flush(&mut self, now: Instant) {
        self.advance_wall(now);
        let chunk = self.wire.chunk_size().max(64);
        if self.outbox.is_empty() {
            self.flush_at = None;
            return;
        }
        if self.outbox_bytes + 16 < chunk {
            if let Some(last) = self.last_data_at {
                let due = last + self.cfg.linger;
                if now < due {
                    self.flush_at = Some(due);
                    return;
                }
            }
        }
        self.flush_at = None;
        let mut sent_any = false;
        while !self.outbox.is_empty() {
            if self.in_flight() >= self.cfg.window {
                break; // flow control: wait for acks (or for slow peers to be removed)
            }
            let mut items = Vec::new();
            let mut bytes = 16;
            while let Some(item) = self.outbox.front() {
                let w = item.weight();
                if !items.is_empty() && bytes + w > chunk {
                    break;
                }
                bytes += w;
                self.outbox_bytes = self.outbox_bytes.saturating_sub(w);
                items.push(self.outbox.pop_front().expect("front() was Some"));
                if bytes >= chunk {
                    break;
                }
            }
            self.metrics.changes_sent += items.len() as u64;
            let seq = self.send.next_seq();
            let payload = Msg::Data { seq, items }.encode();
            self.metrics.data_messages_sent += 1;
            if let Some(id) = self.transmit_as(&payload, None, None) {
                if !self.peers.is_empty() {
                    self.send.keep(seq, id, payload);
                }
            }
            sent_any = true;
        }
        if sent_any {
            self.last_data_at = Some(now);
            self.tail_at = Some(now + self.cfg.tail_delay);
            self.tail_repeats = 2;
        }
    }

    /// Runs an anti-entropy pulse soon (after local changes could not be queued).
    pub fn schedule_pulse(&mut self, now: Instant) {
        self.next_pulse = self.next_pulse.min(now + Duration::from_millis(50));
    }

    /// Runs an anti-entropy pulse at `at` at the latest.
    pub fn schedule_pulse_at(&mut self, at: Instant) {
        self.next_pulse = self.next_pulse.min(at);
    }

    /// Sends the newest records of keys whose changes could not be queued (the targeted repair
    /// after an overload), on the reliable stream, past the `queue_max` bound.
    pub fn repair(&mut self, now: Instant, items: Vec<Item>) {
        if !self.left && !items.is_empty() {
            self.send_repair(now, items);
        }
    }

    /// Changes queued and not yet packed into data messages.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// How old a key's newest version must be before anti-entropy repairs it.
    pub fn settle(&self) -> Duration {
        self.cfg.settle
    }

    /// Sends a cluster query; answers arrive as [`Event::Reply`] with the returned id.
    pub fn query(&mut self, query: Query) -> u64 {
        let id = self.next_query;
        self.next_query += 1;
        self.send_msg(&Msg::Query { id, query });
        id
    }

    /// Sends this node's address book to the cluster (unicast transports): where each member
    /// was heard from. Truncated to [`crate::message::MAX_ADDRESSES`] pairs. The core
    /// does not interpret addresses; peers' books arrive as [`Event::Addresses`].
    pub fn announce_addresses(&mut self, mut addrs: Vec<(NodeId, SocketAddr)>) {
        if self.left {
            return;
        }
        addrs.truncate(super::message::MAX_ADDRESSES);
        self.send_msg(&Msg::Addresses { addrs });
    }

    /// Announces that this node leaves; peers drop it at once.
    pub fn leave(&mut self) {
        if !self.left {
            self.send_msg(&Msg::Leave);
            self.left = true;
        }
    }

    /// The next datagram to send to the group.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.poll_transmit_to().map(|(_, d)| d)
    }

    /// The next datagram to send, with the one peer it is meant for (`None`: every peer).
    /// A multicast transport sends everything to the group; a unicast transport can send a
    /// targeted datagram (a NAK, a retransmission for the peer that asked, a state-transfer
    /// chunk, a query reply, anti-entropy lists) to that peer alone. The others would only
    /// have ignored it.
    pub fn poll_transmit_to(&mut self) -> Option<(Option<NodeId>, Vec<u8>)> {
        let (to, d) = self.transmits.pop_front()?;
        self.transmit_bytes = self.transmit_bytes.saturating_sub(d.len());
        Some((to, d))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest moment [`Endpoint::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self
            .next_heartbeat
            .min(self.next_pulse)
            .min(self.next_housekeeping);
        if self.hello_pending {
            t = t.min(self.created);
        }
        if let Some(tail) = self.tail_at {
            t = t.min(tail);
        }
        if let Some(f) = self.flush_at {
            t = t.min(f);
        }
        for p in self.peers.values() {
            if let Some(n) = p.recv.next_nak() {
                t = t.min(n);
            }
        }
        match &self.join {
            JoinState::Waiting { until } => t = t.min(*until),
            JoinState::Transferring(tr) => t = t.min(tr.deadline),
            JoinState::Ready => {}
        }
        t
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
        m
    }

    /// Mutable counters, for the driver (send/receive byte counts, drops it decides).
    pub fn metrics_mut(&mut self) -> &mut NetworkMetrics {
        &mut self.metrics
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

    /// Handles one received datagram. Returns the sender when the datagram was authentic (it
    /// opened with the cluster's keys, or passed the crc in plaintext, and was no replay), even
    /// if it only completed part of a message; `Some(own id)` for this node's own authentic
    /// echo; `None` when it was dropped. A unicast driver learns members' addresses from this.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        app: &mut dyn AppState,
    ) -> Option<NodeId> {
        self.set_wall(now, app.wall_ms());
        self.metrics.datagrams_received += 1;
        self.metrics.bytes_received += datagram.len() as u64;
        self.last_drop = None;
        let (from, payload) = match self.wire.decode(now, datagram) {
            Ok(Some(done)) => done,
            Ok(None) => {
                return super::header::Header::decode(datagram)
                    .ok()
                    .map(|h| h.sender);
            }
            Err(super::drop::DropReason::OwnEcho) if self.wire.is_own_echo(datagram) => {
                self.last_drop = Some(super::drop::DropReason::OwnEcho);
                *self
                    .metrics
                    .dropped
                    .entry("own_echo".to_string())
                    .or_default() += 1;
                return Some(self.me);
            }
            Err(reason) => {
                self.last_drop = Some(reason);
                *self
                    .metrics
                    .dropped
                    .entry(reason.as_str().to_string())
                    .or_default() += 1;
                tracing::trace!(reason = reason.as_str(), "datagram dropped");
                if let Some((sender, offset)) = self.wire.take_last_stale() {
                    self.warn_stale(now, sender, offset);
                }
                return None;
            }
        };
        let Some(msg) = Msg::decode(&payload) else {
            self.metrics.malformed_messages += 1;
            *self
                .metrics
                .dropped
                .entry("malformed".to_string())
                .or_default() += 1;
            tracing::debug!(%from, len = payload.len(), "undecodable message dropped");
            return Some(from);
        };
        if self.left {
            return Some(from);
        }
        // Credit for answers: a message for this node alone (whatever the transport) can be
        // answered only here; one for everybody may be answered by every member.
        // (For one node alone, 3/4 of the bound: a margin for the framing estimate.)
        let size = self.wire_size(payload.len());
        match msg.target() {
            Some(to) if to == self.me => self.budget.earn(now, from, size * 3 / 4, 1),
            Some(_) => {}
            None => self.budget.earn(now, from, size, self.peers.len() + 1),
        }
        if let Some(to) = msg.target() {
            if to != self.me {
                // Still proof of life.
                if let Some(p) = self.peers.get_mut(&from) {
                    p.last_seen = now;
                }
                return Some(from);
            }
        }
        self.handle_msg(now, from, msg, app);
        Some(from)
    }

    fn handle_msg(&mut self, now: Instant, from: NodeId, msg: Msg, app: &mut dyn AppState) {
        if matches!(msg, Msg::Leave) {
            if self.peers.remove(&from).is_some() {
                self.wire.forget_sender(from);
                self.budget.forget(from);
                self.events.push_back(Event::Member(MemberEvent::Left {
                    id: from,
                    failed: false,
                }));
                self.release_acked();
            }
            return;
        }
        let is_hello = matches!(msg, Msg::Hello { .. });
        if !self.touch_peer(now, from, &msg) {
            return;
        }
        match msg {
            Msg::Data { seq, items } => {
                self.last_data_rx = Some(now);
                self.bound_gaps(now, from, seq.saturating_sub(1));
                let p = self.peers.get_mut(&from).expect("touch_peer inserted it");
                match p.recv.receive(now, seq, &self.cfg.nak) {
                    Arrival::Duplicate => {
                        self.metrics.duplicates += 1;
                        *self
                            .metrics
                            .dropped
                            .entry("duplicate".to_string())
                            .or_default() += 1;
                    }
                    Arrival::New => {
                        p.received_since_ack += 1;
                        let ack_now = p.received_since_ack >= self.cfg.ack_every;
                        self.apply_items(now, &items, from, app, false);
                        if ack_now {
                            self.send_ack();
                        }
                    }
                }
            }
            Msg::Hello {
                name,
                join,
                seq_hi,
                acks,
                caches,
                wall_ms,
            } => {
                let _ = is_hello;
                self.on_peer_clock(now, from, wall_ms);
                self.on_ack_list(from, &acks);
                self.bound_gaps(now, from, seq_hi);
                if let Some(p) = self.peers.get_mut(&from) {
                    p.name = name;
                    p.recv.learn_hi(now, seq_hi, &self.cfg.nak);
                }
                if join {
                    // Answer at once so the joiner learns the membership and our caches (if
                    // its budget allows; otherwise it hears our next heartbeat).
                    let caches = app.caches();
                    let size = 128
                        + 24 * self.peers.len()
                        + caches.iter().map(|c| c.len() + 2).sum::<usize>();
                    if self.pay(now, from, self.wire_size(size)) {
                        self.send_hello(false, caches);
                    }
                }
                self.maybe_start_transfer(now, from, caches);
            }
            Msg::Ack { acks } => self.on_ack_list(from, &acks),
            Msg::Tail { seq_hi } => {
                self.bound_gaps(now, from, seq_hi);
                if let Some(p) = self.peers.get_mut(&from) {
                    p.recv.learn_hi(now, seq_hi, &self.cfg.nak);
                }
            }
            Msg::Leave => {}
            Msg::Nak { ranges, .. } => self.on_nak(from, &ranges),
            Msg::Gone { ranges, .. } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.recv.give_up(&ranges);
                }
                // What was lost must come back through anti-entropy: pulse soon.
                self.pulse_soon(now, Duration::from_millis(10));
            }
            Msg::Digest { caches } => self.on_digest(now, from, caches, app),
            Msg::Buckets {
                cache,
                parts,
                keys,
                horizon,
                ..
            } => {
                if !self.refuse_ahead(now, &horizon, from) {
                    self.on_buckets(now, from, &cache, &parts, keys, horizon, app)
                }
            }
            Msg::Pull { cache, keys, .. } => {
                let items: Vec<Item> = keys
                    .iter()
                    .filter_map(|k| app.record(&cache, k))
                    .map(|rec| Item::Rec {
                        cache: cache.clone(),
                        rec,
                    })
                    .collect();
                let items = self.affordable(now, from, items);
                self.send_repair(now, items);
            }
            Msg::Repair { items } => self.apply_items(now, &items, from, app, true),
            Msg::SnapshotReq { cache, cursor, .. } => {
                let key = (from, cache.clone(), cursor);
                if let Some((id, payload)) = self
                    .served
                    .iter()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, id, p)| (*id, p.clone()))
                {
                    // A repeated request: resend under the same message id so fragments the
                    // joiner already holds still count.
                    if self.pay(now, from, self.wire_size(payload.len())) {
                        self.transmit_as(&payload, Some(id), Some(from));
                    }
                    return;
                }
                // What this requester may be sent, less room for the framing.
                let may = self.budget.available(now, from).saturating_sub(256) as usize;
                let budget = self.cfg.snapshot_chunk.min(self.list_budget()).min(may);
                if budget < 64 {
                    self.count_drop("answer_budget");
                    return;
                }
                let (records, next) = app.snapshot_chunk(&cache, cursor, budget);
                self.metrics.snapshot_chunks_served += 1;
                let floor = app.clear_floor(&cache);
                let horizon = app.horizon(&cache);
                let payload = Msg::SnapshotChunk {
                    to: from,
                    cache,
                    cursor,
                    records,
                    next,
                    floor,
                    horizon,
                }
                .encode();
                if !self.pay(now, from, self.wire_size(payload.len())) {
                    // A record larger than the credit: asked again, the credit grows.
                    return;
                }
                if let Some(id) = self.transmit_as(&payload, None, Some(from)) {
                    if self.served.len() >= 16 {
                        self.served.pop_front();
                    }
                    self.served.push_back((key, id, payload));
                }
            }
            Msg::SnapshotChunk {
                cache,
                cursor,
                mut records,
                next,
                floor,
                horizon,
                ..
            } => {
                if self.refuse_ahead(now, &floor, from) || self.refuse_ahead(now, &horizon, from) {
                    return;
                }
                if floor > app.clear_floor(&cache) {
                    app.apply_clear(&cache, floor, from);
                }
                records.retain(|r| !self.refuse_ahead(now, &r.version, from));
                let chunk = Chunk {
                    cache,
                    cursor,
                    records,
                    next,
                    horizon,
                };
                self.on_snapshot_chunk(now, from, chunk, app)
            }
            Msg::Query { id, query } => {
                let body = app.answer(&query);
                let reply = Msg::Reply { to: from, id, body }.encode();
                if self.pay(now, from, self.wire_size(reply.len())) {
                    self.transmit_as(&reply, None, Some(from));
                }
            }
            Msg::Reply { id, body, .. } => self.events.push_back(Event::Reply { id, from, body }),
            Msg::Addresses { mut addrs } => {
                addrs.truncate(super::message::MAX_ADDRESSES);
                self.events.push_back(Event::Addresses { from, addrs });
            }
        }
    }

    /// Records that `from` is alive; adds it if new. Returns false if the table is full.
    fn touch_peer(&mut self, now: Instant, from: NodeId, msg: &Msg) -> bool {
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_seen = now;
            if p.suspect {
                p.suspect = false;
                self.events
                    .push_back(Event::Member(MemberEvent::Alive { id: from }));
            }
            return true;
        }
        if self.peers.len() >= self.cfg.max_peers {
            *self
                .metrics
                .dropped
                .entry("membership_full".to_string())
                .or_default() += 1;
            return false;
        }
        // Where its stream starts for us: history before we met is covered by state transfer
        // and anti-entropy. A young stream is taken from the start so that its first messages,
        // if lost, are still NAKed.
        let base = match msg {
            Msg::Hello { seq_hi, .. } => *seq_hi,
            Msg::Data { seq, .. } if *seq <= 4096 => 0,
            Msg::Data { seq, .. } => seq - 1,
            _ => 0,
        };
        let name = match msg {
            Msg::Hello { name, .. } => name.clone(),
            _ => String::new(),
        };
        self.peers.insert(
            from,
            Peer {
                name: name.clone(),
                last_seen: now,
                suspect: false,
                // It does not need our past: it fetches state on its own.
                acked: self.send.seq_hi(),
                recv: RecvStream::new(base),
                received_since_ack: 0,
                clock_offset_ms: None,
            },
        );
        self.events
            .push_back(Event::Member(MemberEvent::Joined { id: from, name }));
        if !matches!(msg, Msg::Hello { .. }) {
            // Learn its name and our caches quickly; also ask it to announce itself (paid from
            // what it sent: a stream of new forged ids must not buy a Hello each).
            let size = 128 + 24 * self.peers.len();
            if self.pay(now, from, self.wire_size(size)) {
                self.send_hello(true, Vec::new());
            }
        }
        // A peer that (re)appears may have missed anything: compare digests soon.
        self.pulse_soon(now, Duration::from_millis(20));
        true
    }

    /// Before learning that `from` has sent up to `seq_hi`: if that would take the gaps
    /// tracked over all peers past [`MAX_TRACKED_GAPS`], gives the whole span up instead (the
    /// stream jumps to `seq_hi`; anti-entropy repairs what was in it) and counts `gap_budget`.
    fn bound_gaps(&mut self, now: Instant, from: NodeId, seq_hi: u64) {
        let Some(p) = self.peers.get(&from) else {
            return;
        };
        // A stream opens at most MAX_AHEAD gaps at once (it abandons beyond that).
        let opens = seq_hi
            .saturating_sub(p.recv.seq_hi())
            .min(super::reliability::MAX_AHEAD);
        if opens <= 1 {
            return;
        }
        let tracked: u64 = self.peers.values().map(|p| p.recv.missing()).sum();
        if tracked.saturating_add(opens) <= MAX_TRACKED_GAPS {
            return;
        }
        *self
            .metrics
            .dropped
            .entry("gap_budget".to_string())
            .or_default() += 1;
        if let Some(p) = self.peers.get_mut(&from) {
            // O(1) jump (walking the span would cost the CPU the budget is meant to save).
            let old = std::mem::replace(&mut p.recv, RecvStream::new(seq_hi));
            p.recv.gaps_detected = old.gaps_detected;
            p.recv.abandoned = old
                .abandoned
                .saturating_add(seq_hi.saturating_sub(old.contiguous()));
        }
        self.pulse_soon(now, Duration::from_millis(20));
    }

    fn apply_items(
        &mut self,
        now: Instant,
        items: &[Item],
        from: NodeId,
        app: &mut dyn AppState,
        repair: bool,
    ) {
        for item in items {
            match item {
                Item::Rec { rec, .. } if self.refuse_ahead(now, &rec.version, from) => {}
                Item::Clear { version, .. } if self.refuse_ahead(now, version, from) => {}
                Item::Rec { cache, rec } => match app.apply(cache, rec, from) {
                    Applied::Changed => {
                        self.metrics.changes_applied += 1;
                        if repair {
                            self.metrics.snapshot_records_applied += 1;
                        }
                    }
                    Applied::Stale | Applied::Skipped => self.metrics.changes_stale += 1,
                    Applied::BelowHorizon => {
                        self.metrics.changes_stale += 1;
                        self.count_drop("below_horizon");
                    }
                    Applied::Undecodable => {
                        *self
                            .metrics
                            .dropped
                            .entry("undecodable_record".to_string())
                            .or_default() += 1
                    }
                },
                Item::Clear { cache, version } => app.apply_clear(cache, *version, from),
                Item::Loading { cache, key } => app.peer_loading(cache, key, from),
            }
        }
    }

    fn on_ack_list(&mut self, from: NodeId, acks: &[(NodeId, u64)]) {
        if let Some(&(_, upto)) = acks.iter().find(|(id, _)| *id == self.me) {
            if let Some(p) = self.peers.get_mut(&from) {
                p.acked = p.acked.max(upto.min(self.send.seq_hi()));
            }
            self.release_acked();
        }
    }

    fn release_acked(&mut self) {
        match self.peers.values().map(|p| p.acked).min() {
            Some(min) => self.send.release(min),
            None => self.send.release_all(),
        }
    }

    fn on_nak(&mut self, from: NodeId, ranges: &[(u64, u64)]) {
        let mut gone = Vec::new();
        let mut budget = 4096u32; // bound the work one NAK can cause
        for &(a, b) in ranges {
            if a > b || b > self.send.seq_hi() {
                continue;
            }
            for seq in a..=b {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                if self.transmit_bytes >= MAX_QUEUED_TRANSMIT_BYTES {
                    // Shed: the asker NAKs again after its backoff.
                    *self
                        .metrics
                        .dropped
                        .entry("nak_shed".to_string())
                        .or_default() += 1;
                    budget = 0;
                    break;
                }
                match self.send.get(seq).map(|(id, p)| (id, p.to_vec())) {
                    Some((id, payload)) => {
                        self.metrics.retransmits_served += 1;
                        // Same message id: fragments the receiver already holds still count.
                        // For the peer that asked (others missing it ask on their own).
                        self.transmit_as(&payload, Some(id), Some(from));
                    }
                    None => gone.push(seq),
                }
            }
        }
        if !gone.is_empty() {
            self.metrics.retransmits_gone += gone.len() as u64;
            self.send_msg(&Msg::Gone {
                to: from,
                ranges: to_ranges(&gone),
            });
        }
    }

    fn on_digest(
        &mut self,
        now: Instant,
        from: NodeId,
        caches: Vec<CacheDigest>,
        app: &mut dyn AppState,
    ) {
        for line in caches {
            if app.digest(&line.cache).is_none() {
                continue;
            }
            // A clear this node missed (it joined later, or the message was lost for good).
            if line.floor > app.clear_floor(&line.cache)
                && !self.refuse_ahead(now, &line.floor, from)
            {
                app.apply_clear(&line.cache, line.floor, from);
            }
            let Some(mine) = app.digest(&line.cache) else {
                continue;
            };
            if mine.checksum == line.digest.checksum && mine.count == line.digest.count {
                continue;
            }
            self.metrics.ae_exchanges += 1;
            let differing: Vec<u16> = (0..SYNC_BUCKETS)
                .filter(|&b| mine.buckets.get(b) != line.digest.buckets.get(b))
                .map(|b| b as u16)
                .collect();
            // Send our key versions for those buckets in messages of a few datagrams each, so
            // they get through a lossy network. A bucket too long for one message is split into
            // parts by a second hash both sides compute, so every list is compared exactly.
            let budget = self.list_budget();
            let horizon = app.horizon(&line.cache);
            let mut parts: Vec<(u16, u16, u16)> = Vec::new();
            let mut keys = Vec::new();
            let mut bytes = 0usize;
            let wanted: Vec<usize> = differing.iter().map(|&b| b as usize).collect();
            let lists = app.buckets_versions(&line.cache, &wanted);
            for (b, all) in differing.into_iter().zip(lists) {
                let size: usize = all.iter().map(|k| k.key.len() + 24).sum();
                let of = size.div_ceil(budget).clamp(1, 4096) as u16;
                let mut split: Vec<Vec<KeyVersion>> = vec![Vec::new(); of as usize];
                for kv in all {
                    split[key_part(&kv.key, of) as usize].push(kv);
                }
                for (p, part_keys) in split.into_iter().enumerate() {
                    let part_bytes: usize = part_keys.iter().map(|k| k.key.len() + 24).sum();
                    if !parts.is_empty() && bytes + part_bytes > budget {
                        let msg = Msg::Buckets {
                            to: from,
                            cache: line.cache.clone(),
                            parts: std::mem::take(&mut parts),
                            keys: std::mem::take(&mut keys),
                            horizon,
                        };
                        if !self.send_paid(now, from, &msg) {
                            return;
                        }
                        bytes = 0;
                    }
                    parts.push((b, p as u16, of));
                    keys.extend(part_keys);
                    bytes += part_bytes;
                }
            }
            if !parts.is_empty() {
                let msg = Msg::Buckets {
                    to: from,
                    cache: line.cache.clone(),
                    parts,
                    keys,
                    horizon,
                };
                if !self.send_paid(now, from, &msg) {
                    return;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_buckets(
        &mut self,
        now: Instant,
        from: NodeId,
        cache: &str,
        parts: &[(u16, u16, u16)],
        theirs: Vec<KeyVersion>,
        their_horizon: Version,
        app: &mut dyn AppState,
    ) {
        if app.digest(cache).is_none() {
            return;
        }
        let mut their_map: BTreeMap<Vec<u8>, KeyVersion> = BTreeMap::new();
        for kv in theirs {
            their_map.insert(kv.key.clone(), kv);
        }
        let mut push = Vec::new();
        let mut pull = Vec::new();
        let mut doubtful = Vec::new();
        let my_horizon = app.horizon(cache);
        let cutoff = app
            .wall_ms()
            .saturating_sub(self.cfg.settle.as_millis() as u64);
        let settled = |v: &crate::version::Version| v.millis() <= cutoff;
        let valid: Vec<(u16, u16, u16)> = parts
            .iter()
            .copied()
            .filter(|&(b, part, of)| (b as usize) < SYNC_BUCKETS && of != 0 && part < of)
            .collect();
        let mut wanted: Vec<usize> = valid.iter().map(|&(b, _, _)| b as usize).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let lists = app.buckets_versions(cache, &wanted);
        for &(b, part, of) in &valid {
            let Ok(i) = wanted.binary_search(&(b as usize)) else {
                continue;
            };
            for mine in lists[i]
                .iter()
                .filter(|kv| key_part(&kv.key, of) == part)
                .cloned()
            {
                match their_map.remove(&mine.key) {
                    Some(t) if t.version > mine.version => {
                        if settled(&t.version) {
                            pull.push(mine.key)
                        }
                    }
                    Some(t) if t.version == mine.version => {}
                    // They do not hold the key and may have forgotten its delete: a live
                    // entry is dropped here (a miss is safe, a resurrection is not), a
                    // tombstone need not be sent (they refuse what it would refuse).
                    None if mine.version <= their_horizon => {
                        if !mine.deleted {
                            doubtful.push((mine.key, mine.version));
                        }
                    }
                    _ => {
                        if settled(&mine.version) {
                            push.push(mine.key)
                        }
                    }
                }
            }
        }
        for (key, version) in doubtful {
            if app.drop_doubtful(cache, &key, version) {
                self.metrics.horizon_drops += 1;
            }
        }
        // Keys they hold and we do not know at all (unless we would refuse them: they drop
        // those live ones when they compare against our horizon).
        pull.extend(
            their_map
                .into_values()
                .filter(|kv| settled(&kv.version) && kv.version > my_horizon)
                .map(|kv| kv.key),
        );
        let items: Vec<Item> = push
            .iter()
            .filter_map(|k| app.record(cache, k))
            .map(|rec| Item::Rec {
                cache: cache.to_string(),
                rec,
            })
            .collect();
        let items = self.affordable(now, from, items);
        self.send_repair(now, items);
        let budget = self.list_budget();
        let mut keys = Vec::new();
        let mut bytes = 0;
        for k in pull {
            bytes += k.len() + 4;
            keys.push(serde_bytes::ByteBuf::from(k));
            if bytes >= budget {
                self.send_msg(&Msg::Pull {
                    to: from,
                    cache: cache.to_string(),
                    keys: std::mem::take(&mut keys),
                });
                bytes = 0;
            }
        }
        if !keys.is_empty() {
            self.send_msg(&Msg::Pull {
                to: from,
                cache: cache.to_string(),
                keys,
            });
        }
    }

    fn maybe_start_transfer(&mut self, now: Instant, from: NodeId, caches: Vec<String>) {
        if !matches!(self.join, JoinState::Waiting { .. }) || caches.is_empty() {
            return;
        }
        let mut pending = BTreeMap::new();
        for cache in caches {
            let req = self.snapshot_req(from, cache.clone(), 0);
            self.send_msg(&req);
            pending.insert(cache, (0, now));
        }
        self.join = JoinState::Transferring(Transfer {
            donor: from,
            pending,
            deadline: now + self.transfer_timeout(),
        });
    }

    /// How long a joiner waits for a chunk before asking again (the donor resends it under
    /// the same message id, so partial reassemblies complete).
    fn transfer_timeout(&self) -> Duration {
        (self.cfg.tail_delay * 25).min(self.cfg.heartbeat)
    }

    fn on_snapshot_chunk(
        &mut self,
        now: Instant,
        from: NodeId,
        chunk: Chunk,
        app: &mut dyn AppState,
    ) {
        let Chunk {
            cache,
            cursor,
            records,
            next,
            horizon,
        } = chunk;
        for rec in &records {
            if app.apply(&cache, rec, from) == Applied::Changed {
                self.metrics.snapshot_records_applied += 1;
            }
        }
        let timeout = self.transfer_timeout();
        let JoinState::Transferring(tr) = &mut self.join else {
            return;
        };
        if tr.donor != from || tr.pending.get(&cache).map(|(c, _)| *c) != Some(cursor) {
            return;
        }
        match next {
            Some(n) => {
                tr.pending.insert(cache.clone(), (n, now));
                tr.deadline = now + timeout;
                let req = self.snapshot_req(from, cache, n);
                self.send_msg(&req);
            }
            None => {
                tr.pending.remove(&cache);
                // The copy is complete: it forgot what the donor forgot. (Adopted only now, so
                // that the donor's own records older than its horizon are not refused.)
                app.raise_horizon(&cache, horizon);
                if tr.pending.is_empty() {
                    self.metrics.state_transfers += 1;
                    self.become_ready(now);
                }
            }
        }
    }

    fn become_ready(&mut self, now: Instant) {
        self.join = JoinState::Ready;
        self.events.push_back(Event::Member(MemberEvent::Ready));
        // Close any race between the snapshot cursor and live changes.
        self.next_pulse = self.next_pulse.min(now + Duration::from_millis(5));
    }

    /// Runs timers: heartbeats, tail announcements, NAKs, failure detection, pulses, joins.
    pub fn handle_timeout(&mut self, now: Instant, app: &mut dyn AppState) {
        if self.left {
            return;
        }
        self.set_wall(now, app.wall_ms());
        if std::mem::take(&mut self.hello_pending) {
            self.send_hello(true, Vec::new());
        }
        self.flush(now);
        if let Some(t) = self.tail_at {
            if now >= t {
                self.send_msg(&Msg::Tail {
                    seq_hi: self.send.seq_hi(),
                });
                self.tail_repeats = self.tail_repeats.saturating_sub(1);
                self.tail_at = (self.tail_repeats > 0).then(|| now + self.cfg.tail_delay * 8);
            }
        }
        // NAKs, one message per peer with gaps.
        let mut naks = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if p.recv.next_nak().is_some_and(|t| t <= now) {
                let ranges = p.recv.due_naks(now, &self.cfg.nak);
                if !ranges.is_empty() {
                    naks.push((*id, ranges));
                }
            }
        }
        for (to, ranges) in naks {
            self.metrics.retransmits_requested += ranges.len() as u64;
            self.send_msg(&Msg::Nak { to, ranges });
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.cfg.heartbeat;
            self.send_hello(false, app.caches());
            self.detect_failures(now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + Duration::from_millis(250);
            self.wire.expire(now);
        }
        match &mut self.join {
            JoinState::Waiting { until } if now >= *until => self.become_ready(now),
            JoinState::Transferring(tr) if now >= tr.deadline => {
                // The donor stalled: ask again from where we are, or give up if it is gone.
                if self.peers.contains_key(&tr.donor) {
                    tr.deadline = now + (self.cfg.tail_delay * 25).min(self.cfg.heartbeat);
                    let donor = tr.donor;
                    let asks: Vec<(String, u64)> = tr
                        .pending
                        .iter()
                        .map(|(c, (cursor, _))| (c.clone(), *cursor))
                        .collect();
                    for (cache, cursor) in asks {
                        let req = self.snapshot_req(donor, cache, cursor);
                        self.send_msg(&req);
                    }
                } else {
                    // Anti-entropy with the remaining peers completes the copy.
                    self.become_ready(now);
                }
            }
            _ => {}
        }
        if now >= self.next_pulse {
            if self.defer_periodic_pulse(now) {
                // Data is flowing: digests differ by what is in flight, and comparing every
                // bucket would stall this thread for nothing. Look again after the settle time.
                self.next_pulse = now + self.cfg.settle;
                self.periodic_pulse = self.next_pulse;
            } else {
                self.pulse_deferred_since = None;
                self.next_pulse = now + self.cfg.pulse;
                self.periodic_pulse = self.next_pulse;
                self.last_pulse_at = Some(now);
                self.send_pulse(app);
            }
        }
    }

    /// Whether the periodic pulse due now waits: only a periodic one (not one asked for by a
    /// new peer, a loss or an overload), only while data messages were sent or received within
    /// the settle time, and for at most 4 pulse periods in a row.
    fn defer_periodic_pulse(&mut self, now: Instant) -> bool {
        if self.next_pulse != self.periodic_pulse {
            return false;
        }
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < self.cfg.settle);
        if !(recent(self.last_data_at) || recent(self.last_data_rx)) {
            return false;
        }
        let since = *self.pulse_deferred_since.get_or_insert(now);
        now.duration_since(since) < self.cfg.pulse * 4
    }

    fn detect_failures(&mut self, now: Instant) {
        let suspect_after = self.cfg.heartbeat * self.cfg.suspect_after;
        let remove_after = self.cfg.heartbeat * self.cfg.remove_after;
        let mut removed = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let silent = now.saturating_duration_since(p.last_seen);
            if silent >= remove_after {
                removed.push(*id);
            } else if silent >= suspect_after && !p.suspect {
                p.suspect = true;
                self.events
                    .push_back(Event::Member(MemberEvent::Suspect { id: *id }));
            }
        }
        for id in removed {
            self.peers.remove(&id);
            self.wire.forget_sender(id);
            self.budget.forget(id);
            self.events
                .push_back(Event::Member(MemberEvent::Left { id, failed: true }));
        }
        self.release_acked();
    }

    fn send_pulse(&mut self, app: &mut dyn AppState) {
        if self.peers.is_empty() {
            return;
        }
        let caches: Vec<CacheDigest> = app
            .caches()
            .into_iter()
            .filter_map(|cache| {
                let floor = app.clear_floor(&cache);
                app.digest(&cache).map(|digest| CacheDigest {
                    cache,
                    digest,
                    floor,
                })
            })
            .collect();
        if caches.is_empty() {
            return;
        }
        self.metrics.pulses_sent += 1;
        self.send_msg(&Msg::Digest { caches });
    }

    fn send_hello(&mut self, join: bool, caches: Vec<String>) {
        let acks = self.ack_list();
        for p in self.peers.values_mut() {
            p.received_since_ack = 0;
        }
        let msg = Msg::Hello {
            name: self.cfg.name.clone(),
            join,
            seq_hi: self.send.seq_hi(),
            acks,
            caches,
            wall_ms: self.wall_ms,
        };
        self.send_msg(&msg);
    }

    fn send_ack(&mut self) {
        let acks = self.ack_list();
        for p in self.peers.values_mut() {
            p.received_since_ack = 0;
        }
        self.send_msg(&Msg::Ack { acks });
    }

    fn ack_list(&self) -> Vec<(NodeId, u64)> {
        self.peers
            .iter()
            .map(|(id, p)| (*id, p.recv.contiguous()))
            .collect()
    }

    /// Repairs travel on the reliable stream like local changes (they are idempotent by
    /// version), so they get the same loss recovery.
    fn send_repair(&mut self, now: Instant, items: Vec<Item>) {
        self.metrics.ae_repairs += items.len() as u64;
        for item in items {
            self.outbox_bytes += item.weight();
            self.outbox.push_back(item);
        }
        self.flush(now);
    }

    /// Sends an answer to `to` if its answer budget pays for it.
    fn send_paid(&mut self, now: Instant, to: NodeId, msg: &Msg) -> bool {
        let payload = msg.encode();
        if !self.pay(now, to, self.wire_size(payload.len())) {
            return false;
        }
        self.transmit_as(&payload, None, msg.target());
        true
    }

    fn send_msg(&mut self, msg: &Msg) -> Option<u64> {
        let payload = msg.encode();
        self.transmit_as(&payload, None, msg.target())
    }

    /// Encodes and queues one message for `to` (`None`: every peer); returns its wire
    /// message id.
    fn transmit_as(&mut self, payload: &[u8], id: Option<u64>, to: Option<NodeId>) -> Option<u64> {
        let mut out = Vec::new();
        match self.wire.encode_as(payload, id, &mut out) {
            Ok(id) => {
                for d in out {
                    self.metrics.datagrams_sent += 1;
                    self.metrics.bytes_sent += d.len() as u64;
                    self.transmit_bytes += d.len();
                    self.transmits.push_back((to, d));
                }
                Some(id)
            }
            Err(e) => {
                // Only oversized messages fail; caches refuse entries that could cause this.
                tracing::warn!(error = %e, len = payload.len(), "message not sent");
                *self
                    .metrics
                    .dropped
                    .entry("unsendable".to_string())
                    .or_default() += 1;
                None
            }
        }
    }

    /// Brings the next pulse forward to `now + delay`, but no closer than half a heartbeat after
    /// the last one: peers (or forged senders) appearing, or `Gone` answers, cannot make this
    /// node multicast digests back to back.
    fn pulse_soon(&mut self, now: Instant, delay: Duration) {
        let mut at = now + delay;
        if let Some(last) = self.last_pulse_at {
            at = at.max(last + (self.cfg.heartbeat / 2).max(Duration::from_millis(20)));
        }
        self.next_pulse = self.next_pulse.min(at);
    }

    /// Takes `bytes` of `to`'s answer budget; counts `answer_budget` and returns false if it
    /// does not have them.
    fn pay(&mut self, now: Instant, to: NodeId, bytes: usize) -> bool {
        if self.budget.spend(now, to, bytes) {
            return true;
        }
        self.count_drop("answer_budget");
        false
    }

    /// The longest prefix of `items` that `to`'s answer budget pays for (the rest is asked
    /// again at a later pulse).
    fn affordable(&mut self, now: Instant, to: NodeId, mut items: Vec<Item>) -> Vec<Item> {
        let may = self.budget.available(now, to) as usize;
        let mut total = 0usize;
        let mut n = 0;
        for it in &items {
            let w = self.wire_size(it.weight());
            if total + w > may {
                break;
            }
            total += w;
            n += 1;
        }
        if n < items.len() {
            self.count_drop("answer_budget");
            items.truncate(n);
        }
        if total > 0 {
            self.budget.spend(now, to, total);
        }
        items
    }

    /// Bytes on the wire for a message payload of `len` bytes (headers and tags included).
    fn wire_size(&self, len: usize) -> usize {
        let chunk = self.wire.chunk_size().max(1);
        len + len.div_ceil(chunk).max(1) * (super::header::HEADER_LEN + 16)
    }

    /// A snapshot request, padded to about one datagram so the donor's answer is paid for.
    fn snapshot_req(&self, to: NodeId, cache: String, cursor: u64) -> Msg {
        let pad = self
            .wire
            .chunk_size()
            .saturating_sub(cache.len() + 64)
            .min(1 << 16);
        Msg::SnapshotReq {
            to,
            cache,
            cursor,
            pad: serde_bytes::ByteBuf::from(vec![0u8; pad]),
        }
    }

    fn count_drop(&mut self, reason: &str) {
        match self.metrics.dropped.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.metrics.dropped.insert(reason.to_string(), 1);
            }
        }
    }

    /// True (and counted as `clock_skew`, with a rate-limited warning) if `version` is further
    /// ahead of this node's wall clock than `max_clock_skew`: it must not be applied, stored
    /// as a floor or horizon, or observed into the clock.
    fn refuse_ahead(&mut self, now: Instant, version: &Version, from: NodeId) -> bool {
        let skew = self.cfg.max_clock_skew.as_millis().min(u64::MAX as u128) as u64;
        if self.wall_ms == 0 || !too_far_ahead(version, self.wall_ms, skew) {
            return false;
        }
        self.count_drop("clock_skew");
        if self
            .warned_skew
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY)
        {
            self.warned_skew = Some(now);
            tracing::warn!(
                peer = %from,
                ahead_ms = version.millis().saturating_sub(self.wall_ms),
                max_clock_skew_ms = skew,
                "refused a version further ahead of this node's clock than max_clock_skew \
                 (a peer's clock is wrong, or the datagram is forged)"
            );
        }
        true
    }

    /// An authentic datagram stamped too far from this node's clock: one of the two clocks is
    /// wrong (or it is a replay). Rate-limited warning.
    fn warn_stale(&mut self, now: Instant, sender: NodeId, offset: i64) {
        let skew = self.cfg.max_clock_skew.as_millis().min(i64::MAX as u128) as i64;
        if offset.abs() <= skew.saturating_mul(2) {
            // Plausibly an old replay rather than a clock problem: counted, not warned about.
            return;
        }
        if self
            .warned_offset
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            return;
        }
        self.warned_offset = Some(now);
        if self.peers.is_empty() {
            self.metrics.clock_offset_ms = -offset;
        }
        tracing::warn!(
            peer = %sender,
            offset_ms = offset,
            "refusing authentic datagrams stamped this far from this node's clock (beyond \
             the replay horizon / max_clock_skew): this node's clock or the peer's is wrong"
        );
    }

    /// Notes a peer's wall clock from its heartbeat; warns (rate-limited) when this node's
    /// clock is more than half of `max_clock_skew` away from every peer's, or one peer's is.
    fn on_peer_clock(&mut self, now: Instant, from: NodeId, their_wall: u64) {
        if their_wall == 0 || self.wall_ms == 0 {
            return;
        }
        let offset = (their_wall as i128 - self.wall_ms as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.clock_offset_ms = Some(offset);
        let limit = (self.cfg.max_clock_skew.as_millis() / 2).min(i64::MAX as u128) as i64;
        let offsets: Vec<i64> = self
            .peers
            .values()
            .filter_map(|p| p.clock_offset_ms)
            .collect();
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        self.metrics.clock_offset_ms = sorted
            .get(sorted.len().saturating_sub(1) / 2)
            .map_or(0, |m| -m);
        if offset.unsigned_abs() <= limit as u64 {
            return;
        }
        if self
            .warned_offset
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            return;
        }
        self.warned_offset = Some(now);
        if offsets
            .iter()
            .all(|o| o.unsigned_abs() > limit as u64 && o.signum() == offset.signum())
        {
            tracing::warn!(
                offset_ms = -offset,
                peers = offsets.len(),
                "this node's clock is {} of every peer's by more than half of max_clock_skew: \
                 fix its time synchronisation (its writes may be refused or lose to older ones)",
                if offset > 0 { "behind" } else { "ahead" }
            );
        } else {
            tracing::warn!(
                peer = %from,
                offset_ms = offset,
                "a peer's clock differs from this node's by more than half of max_clock_skew"
            );
        }
    }

    /// Bytes a control list may take before it is split: a few datagrams, so that one message
    /// gets through a lossy network with good odds.
    fn list_budget(&self) -> usize {
        self.wire.chunk_size().max(256) * 4
    }
}
