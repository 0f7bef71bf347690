//! A deterministic discrete-event simulator for clusters of protocol cores.
//!
//! N [`Endpoint`]s exchange datagrams over a virtual network with seeded loss, duplication,
//! delay jitter (hence reordering), partitions, crashes, restarts and late joins. Time is virtual:
//! the simulator jumps from event to event. Everything is derived from one seed, so a failing
//! seed replays exactly.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use mccache::cache::hooks::{
    Applied, KeyVersion, SYNC_BUCKETS, SyncDigest, entry_digest, key_bucket,
};
use mccache::net::unicast::AddressBook;
use mccache::proto::endpoint::{Destination, Endpoint, EndpointConfig, Event, MemberEvent};
use mccache::proto::message::{Item, Query};
use mccache::proto::record::{Op, Record};
use mccache::proto::state::AppState;
use mccache::proto::version::{Hlc, NodeId, Version};
use mccache::proto::wire::WireConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One node's caches, as the simulator models them: key -> latest record (puts and tombstones).
#[derive(Default, Clone, Debug)]
pub struct Model {
    pub caches: BTreeMap<String, ModelCache>,
    /// Highest HLC timestamp seen in peers' changes (the real node's clock observes these).
    pub seen: u64,
    /// Virtual wall clock, set by the simulator before every call.
    pub wall_ms: u64,
    /// Resurrections seen: a put applied at or below a delete this node had applied.
    pub violations: Vec<String>,
}

#[derive(Default, Clone, Debug)]
pub struct ModelCache {
    pub records: BTreeMap<Vec<u8>, Record>,
    pub floor: Version,
    /// Tombstone horizon, as the real store keeps it.
    pub horizon: Version,
    /// When each tombstone was stored (wall ms), for collection.
    tomb_at: BTreeMap<Vec<u8>, u64>,
    /// Oracle, never collected: the newest delete this node applied per key.
    deleted_seen: BTreeMap<Vec<u8>, Version>,
}

impl ModelCache {
    fn apply(&mut self, rec: &Record, wall_ms: u64) -> Applied {
        if rec.version <= self.floor {
            return Applied::Stale;
        }
        match self.records.get(&rec.key) {
            Some(old) if old.version >= rec.version => return Applied::Stale,
            None if rec.version <= self.horizon => return Applied::BelowHorizon,
            _ => {}
        }
        self.records.insert(rec.key.clone(), rec.clone());
        if matches!(rec.op, Op::Put { .. }) {
            self.tomb_at.remove(&rec.key);
        } else {
            self.tomb_at.insert(rec.key.clone(), wall_ms);
            let d = self.deleted_seen.entry(rec.key.clone()).or_default();
            *d = (*d).max(rec.version);
        }
        Applied::Changed
    }

    /// A put at or below a delete this node applied before (the invariant under test).
    fn resurrects(&self, rec: &Record) -> bool {
        matches!(rec.op, Op::Put { .. })
            && self
                .deleted_seen
                .get(&rec.key)
                .is_some_and(|d| rec.version <= *d)
    }

    /// Collects tombstones stored more than `ttl_ms` ago, raising the horizon.
    pub fn gc(&mut self, wall_ms: u64, ttl_ms: u64) {
        let old: Vec<Vec<u8>> = self
            .tomb_at
            .iter()
            .filter(|(_, at)| wall_ms.saturating_sub(**at) > ttl_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.tomb_at.remove(&k);
            if let Some(r) = self.records.remove(&k) {
                self.horizon = self.horizon.max(r.version);
            }
        }
    }

    /// Live entries: key -> (version, value).
    pub fn live(&self) -> BTreeMap<Vec<u8>, (Version, Vec<u8>)> {
        self.records
            .iter()
            .filter_map(|(k, r)| match &r.op {
                Op::Put { value, .. } => Some((k.clone(), (r.version, value.clone()))),
                _ => None,
            })
            .collect()
    }
}

impl AppState for Model {
    fn apply(&mut self, cache: &str, record: &Record, _origin: NodeId) -> Applied {
        self.seen = self.seen.max(record.version.hlc);
        let wall = self.wall_ms;
        let c = self.caches.entry(cache.to_string()).or_default();
        let resurrects = c.resurrects(record);
        let applied = c.apply(record, wall);
        if resurrects && applied == Applied::Changed {
            self.violations.push(format!(
                "{cache}/{:?} came back at {:?} after its delete at {:?}",
                String::from_utf8_lossy(&record.key),
                record.version,
                c.deleted_seen.get(&record.key)
            ));
        }
        applied
    }
    fn horizon(&self, cache: &str) -> Version {
        self.caches
            .get(cache)
            .map(|c| c.horizon)
            .unwrap_or_default()
    }
    fn raise_horizon(&mut self, cache: &str, version: Version) {
        self.seen = self.seen.max(version.hlc);
        let c = self.caches.entry(cache.to_string()).or_default();
        c.horizon = c.horizon.max(version);
    }
    fn drop_doubtful(&mut self, cache: &str, key: &[u8], version: Version) -> bool {
        let Some(c) = self.caches.get_mut(cache) else {
            return false;
        };
        c.horizon = c.horizon.max(version);
        match c.records.get(key) {
            Some(r) if r.version == version && matches!(r.op, Op::Put { .. }) => {
                c.records.remove(key);
                true
            }
            _ => false,
        }
    }
    fn apply_clear(&mut self, cache: &str, version: Version, _origin: NodeId) {
        self.seen = self.seen.max(version.hlc);
        let c = self.caches.entry(cache.to_string()).or_default();
        if version > c.floor {
            c.floor = version;
        }
        let floor = c.floor;
        c.records.retain(|_, r| r.version > floor);
        let records = &c.records;
        c.tomb_at.retain(|k, _| records.contains_key(k));
    }
    fn clear_floor(&self, cache: &str) -> Version {
        self.caches.get(cache).map(|c| c.floor).unwrap_or_default()
    }
    fn wall_ms(&self) -> u64 {
        self.wall_ms
    }
    fn caches(&self) -> Vec<String> {
        self.caches.keys().cloned().collect()
    }
    fn digest(&self, cache: &str) -> Option<SyncDigest> {
        let c = self.caches.get(cache)?;
        let mut d = SyncDigest {
            count: 0,
            checksum: 0,
            buckets: vec![0; SYNC_BUCKETS],
        };
        for (k, (v, val)) in c.live() {
            let e = entry_digest(&k, &val, v);
            d.count += 1;
            d.checksum = d.checksum.wrapping_add(e);
            d.buckets[key_bucket(&k)] = d.buckets[key_bucket(&k)].wrapping_add(e);
        }
        Some(d)
    }
    fn bucket_versions(&self, cache: &str, bucket: usize) -> Vec<KeyVersion> {
        let Some(c) = self.caches.get(cache) else {
            return Vec::new();
        };
        c.records
            .values()
            .filter(|r| key_bucket(&r.key) == bucket)
            .map(|r| KeyVersion {
                key: r.key.clone(),
                version: r.version,
                deleted: !matches!(r.op, Op::Put { .. }),
            })
            .collect()
    }
    fn record(&self, cache: &str, key: &[u8]) -> Option<Record> {
        self.caches.get(cache)?.records.get(key).cloned()
    }
    fn snapshot_chunk(
        &self,
        cache: &str,
        cursor: u64,
        max_bytes: usize,
    ) -> (Vec<Record>, Option<u64>) {
        let Some(c) = self.caches.get(cache) else {
            return (Vec::new(), None);
        };
        let all: Vec<&Record> = c.records.values().collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = cursor as usize;
        while i < all.len() && (bytes < max_bytes || out.is_empty()) {
            bytes += all[i].weight();
            out.push(all[i].clone());
            i += 1;
        }
        (out, (i < all.len()).then_some(i as u64))
    }
    fn answer(&self, _query: &Query) -> Vec<u8> {
        Vec::new()
    }
}

/// Network and fault parameters of one scenario.
#[derive(Clone, Debug)]
pub struct NetParams {
    pub loss: f64,
    pub dup: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub mtu: usize,
}

struct SimNode {
    ep: Endpoint,
    app: Model,
    hlc: Hlc,
    alive: bool,
    /// Writes this node made (cache, record), for the no-resurrection oracle.
    writes: Vec<(String, Record)>,
    /// Next tombstone collection (wall ms).
    next_gc_ms: u64,
    /// This node's clock minus the true time, in ms.
    clock_offset_ms: i64,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        incarnation: u64,
        data: Vec<u8>,
        /// The sending node (its address is the datagram's source under unicast).
        from: usize,
    },
}

/// Unicast fan-out (the `transport = "unicast"` path): each node sends only to the addresses
/// in its own [`AddressBook`] (the real one from `net::unicast`), learned from its seeds, from
/// authentic datagrams and from members' `Addresses` announcements. Node `i` lives at
/// [`Sim::addr_of`]`(i)`; a restarted node keeps its address.
pub struct UnicastNet {
    books: Vec<AddressBook>,
    next_announce: Vec<Duration>,
    /// Per directed link (from, to): loss probability replacing `NetParams::loss`.
    pub link_loss: BTreeMap<(usize, usize), f64>,
    /// Directed links (from, to) that drop everything (a peer reachable by some nodes only).
    pub blocked: BTreeSet<(usize, usize)>,
    /// Copies sent, over all links.
    pub copies: u64,
}

/// The simulated cluster.
pub struct Sim {
    pub rng: StdRng,
    base: Instant,
    pub now: Duration,
    nodes: Vec<SimNode>,
    incarnations: Vec<u64>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    next_ev: usize,
    seq: u64,
    pub net: NetParams,
    /// Partition: nodes in the same group can talk; `None` = fully connected.
    pub partition: Option<Vec<u8>>,
    heartbeat: Duration,
    pulse: Duration,
    pub delivered: u64,
    pub dropped: u64,
    /// Every write ever made, by any node or incarnation (crashed ones included).
    pub all_writes: Vec<(String, Record)>,
    /// Every clear ever made: (cache, version).
    pub all_clears: Vec<(String, Version)>,
    /// Whether datagrams are sealed (all nodes of one cluster share the mode).
    pub encrypted: bool,
    /// (node, datagrams) being recorded.
    recording: Option<(usize, Vec<Vec<u8>>)>,
    /// Tombstone lifetime (the node's is max(60 s, 12 pulses); the simulator uses 12 pulses
    /// so that collection happens within short scenarios).
    pub tomb_ttl: Duration,
    /// `Some`: unicast fan-out instead of multicast (see [`Sim::use_unicast`]).
    pub unicast: Option<UnicastNet>,
}

pub fn wire_config(mtu: usize, encrypted: bool) -> WireConfig {
    WireConfig {
        cluster_name: "sim".to_string(),
        keys: if encrypted {
            vec![[7u8; 32]]
        } else {
            Vec::new()
        },
        mtu,
        max_message_size: 1 << 20,
        reassembly_timeout: Duration::from_secs(2),
        max_reassembly_bytes: 8 << 20,
        ..WireConfig::default()
    }
}

impl Sim {
    pub fn new(seed: u64, n: usize, net: NetParams) -> Sim {
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            incarnations: Vec::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_ev: 0,
            seq: 0,
            net,
            partition: None,
            heartbeat: Duration::from_millis(100),
            pulse: Duration::from_millis(500),
            delivered: 0,
            dropped: 0,
            all_writes: Vec::new(),
            all_clears: Vec::new(),
            encrypted: seed % 2 == 0,
            tomb_ttl: Duration::from_millis(500) * 12,
            recording: None,
            unicast: None,
        };
        for _ in 0..n {
            sim.add_node();
        }
        sim
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn endpoint(&mut self) -> Endpoint {
        let id = NodeId(self.rng.random::<u64>() | 1);
        let cfg = EndpointConfig::new(
            format!("n{id}"),
            wire_config(self.net.mtu, self.encrypted),
            self.heartbeat,
            self.pulse,
        );
        Endpoint::new(cfg, id, self.instant())
    }

    /// Adds a node (a late joiner if the simulation already runs). Returns its index.
    pub fn add_node(&mut self) -> usize {
        let ep = self.endpoint();
        self.nodes.push(SimNode {
            ep,
            app: Model::default(),
            hlc: Hlc::new(),
            alive: true,
            writes: Vec::new(),
            next_gc_ms: 0,
            clock_offset_ms: 0,
        });
        self.incarnations.push(0);
        let i = self.nodes.len() - 1;
        self.pump(i);
        i
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].alive
    }

    /// Crashes node `i`: it stops at once, sends nothing more, loses its state.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.incarnations[i] += 1;
    }

    /// Restarts a crashed node with empty state and a new identity (a new incarnation).
    pub fn restart(&mut self, i: usize) {
        let ep = self.endpoint();
        let n = &mut self.nodes[i];
        n.ep = ep;
        n.app = Model {
            violations: std::mem::take(&mut n.app.violations),
            ..Model::default()
        };
        n.hlc = Hlc::new();
        n.alive = true;
        n.writes.clear();
        self.incarnations[i] += 1;
        if let Some(u) = self.unicast.as_mut() {
            // A new process: it knows its configured peers again, nothing it had learned.
            let mut b = AddressBook::new(Duration::from_secs(60));
            for (entry, addrs) in u.books[i].seeds() {
                b.set_seed(entry, addrs.clone());
            }
            u.books[i] = b;
            u.next_announce[i] = Duration::ZERO;
        }
        self.pump(i);
    }

    fn wall_ms(&self) -> u64 {
        1_700_000_000_000 + self.now.as_millis() as u64
    }

    /// Node `i`'s wall clock: the simulation's, shifted by the node's clock offset.
    pub fn wall_of(&self, i: usize) -> u64 {
        self.wall_ms()
            .saturating_add_signed(self.nodes[i].clock_offset_ms)
    }

    /// Sets node `i`'s clock offset from the true time (a node with a wrong clock).
    pub fn set_clock_offset(&mut self, i: usize, offset_ms: i64) {
        self.nodes[i].clock_offset_ms = offset_ms;
    }

    /// Injects a raw datagram into node `i`, as if received from the network now.
    pub fn inject(&mut self, i: usize, datagram: &[u8]) {
        let now = self.instant();
        let wall = self.wall_of(i);
        let n = &mut self.nodes[i];
        n.app.wall_ms = wall;
        n.ep.handle_datagram(now, datagram, &mut n.app);
        self.pump(i);
    }

    /// Every datagram node `i` sends from now on is also recorded (for replay tests).
    pub fn record_from(&mut self, i: usize) {
        self.recording = Some((i, Vec::new()));
    }

    /// The datagrams recorded so far.
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.recording
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    }

    /// Node `i` leaves cleanly (announces it) and stops.
    pub fn leave(&mut self, i: usize) {
        let now = self.instant();
        let n = &mut self.nodes[i];
        n.ep.leave(now);
        self.pump(i);
        self.nodes[i].alive = false;
        self.incarnations[i] += 1;
    }

    /// The version of a new local write on node `i`, which must be alive: its clock first
    /// moves past every version the node has seen (as the real node's apply path does).
    fn next_version(&mut self, i: usize) -> Version {
        let wall = self.wall_of(i);
        let n = &mut self.nodes[i];
        n.hlc.observe(n.app.seen);
        Version::new(n.hlc.tick(wall), n.ep.id())
    }

    /// Publishes a local change of node `i` and moves its datagrams into the network.
    fn publish(&mut self, i: usize, item: Item) {
        let now = self.instant();
        let n = &mut self.nodes[i];
        n.ep.publish(now, item);
        self.pump(i);
    }

    /// A local write on node `i`: applied locally, then published.
    pub fn write(&mut self, i: usize, cache: &str, key: Vec<u8>, op: Op) {
        if !self.nodes[i].alive {
            return;
        }
        let version = self.next_version(i);
        let rec = Record { key, version, op };
        let wall = self.wall_of(i);
        let n = &mut self.nodes[i];
        n.app.wall_ms = wall;
        n.app
            .caches
            .entry(cache.to_string())
            .or_default()
            .apply(&rec, wall);
        n.writes.push((cache.to_string(), rec.clone()));
        self.all_writes.push((cache.to_string(), rec.clone()));
        let cache = cache.to_string();
        self.publish(i, Item::Rec { cache, rec });
    }

    /// A versioned clear on node `i`.
    pub fn clear(&mut self, i: usize, cache: &str) {
        if !self.nodes[i].alive {
            return;
        }
        let version = self.next_version(i);
        let n = &mut self.nodes[i];
        n.app.apply_clear(cache, version, n.ep.id());
        self.all_clears.push((cache.to_string(), version));
        let cache = cache.to_string();
        self.publish(i, Item::Clear { cache, version });
    }

    fn can_talk(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            None => true,
            Some(groups) => groups.get(a) == groups.get(b),
        }
    }

    /// Node `i`'s (simulated) unicast address.
    pub fn addr_of(i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 4000))
    }

    fn node_at(&self, addr: std::net::SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|i| Self::addr_of(*i) == addr)
    }

    /// A cluster of `seeds.len()` nodes over unicast fan-out: node `i` starts with the
    /// addresses of nodes `seeds[i]` as its `peers`, and knows nobody else.
    pub fn new_unicast(seed: u64, net: NetParams, seeds: &[Vec<usize>]) -> Sim {
        let mut sim = Sim::new(seed, 0, net);
        sim.unicast = Some(UnicastNet {
            books: Vec::new(),
            next_announce: Vec::new(),
            link_loss: BTreeMap::new(),
            blocked: BTreeSet::new(),
            copies: 0,
        });
        for s in seeds {
            sim.add_unicast_node(s);
        }
        sim
    }

    /// Adds a node under unicast whose `peers` are `seeds`. Returns its index.
    pub fn add_unicast_node(&mut self, seeds: &[usize]) -> usize {
        let mut b = AddressBook::new(Duration::from_secs(60));
        b.set_seed("peers", seeds.iter().map(|j| Self::addr_of(*j)).collect());
        let u = self.unicast.as_mut().expect("use_unicast first");
        u.books.push(b);
        u.next_announce.push(Duration::ZERO);
        self.add_node()
    }

    /// Unicast: where datagrams from `i` go now (its book's targets), after announcing its
    /// members' addresses when due (every 2 heartbeats, as the driver does).
    fn unicast_targets(&mut self, i: usize) -> Vec<usize> {
        let now = self.now;
        let heartbeat = self.heartbeat;
        let Some(u) = self.unicast.as_mut() else {
            return Vec::new();
        };
        if now >= u.next_announce[i] && self.nodes[i].alive {
            u.next_announce[i] = now + heartbeat * 2;
            u.books[i].expire(self.base + now);
            let pairs = u.books[i].first_hand();
            let at = self.base + now;
            self.nodes[i].ep.announce_addresses(at, pairs);
        }
        let targets: Vec<std::net::SocketAddr> = u.books[i].targets().to_vec();
        targets
            .into_iter()
            .filter_map(|a| self.node_at(a))
            .collect()
    }

    /// Unicast: what node `to` learns from an accepted datagram and from its events.
    fn unicast_learn(&mut self, to: usize, from: usize, sender: Option<NodeId>) {
        let me = self.nodes[to].ep.id();
        let now = self.instant();
        if let (Some(u), Some(id)) = (self.unicast.as_mut(), sender) {
            if id == me {
                u.books[to].own(Self::addr_of(from));
            } else {
                u.books[to].heard(id, Self::addr_of(from), now);
            }
        }
    }

    /// Moves node `i`'s output datagrams into the network.
    fn pump(&mut self, i: usize) {
        if self.unicast.is_some() {
            return self.pump_unicast(i);
        }
        let now = self.instant();
        let mut d = Vec::new();
        while self.nodes[i].ep.poll_transmit(now, &mut d).is_some() {
            assert!(
                d.len() <= self.net.mtu,
                "datagram of {} bytes exceeds the MTU {}",
                d.len(),
                self.net.mtu
            );
            if !self.nodes[i].alive {
                continue;
            }
            if let Some((r, log)) = &mut self.recording {
                if *r == i {
                    log.push(d.clone());
                }
            }
            for to in 0..self.nodes.len() {
                if !self.can_talk(i, to) {
                    self.dropped += 1;
                    continue;
                }
                let copies = if self.rng.random_bool(self.net.dup) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    if self.rng.random_bool(self.net.loss) {
                        self.dropped += 1;
                        continue;
                    }
                    let jitter = if self.net.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_nanos(
                            self.rng.random_range(0..self.net.jitter.as_nanos() as u64),
                        )
                    };
                    let at = self.now + self.net.delay + jitter;
                    let ev = Ev::Deliver {
                        to,
                        incarnation: self.incarnations[to],
                        data: d.clone(),
                        from: i,
                    };
                    let id = self.next_ev;
                    self.next_ev += 1;
                    self.events.insert(id, ev);
                    self.seq += 1;
                    self.queue.push(Reverse((at, self.seq, id)));
                }
            }
        }
        while self.nodes[i].ep.poll_event().is_some() {}
    }

    /// Unicast [`Sim::pump`]: one copy per target of the sender's book, each link with its own
    /// loss; membership events feed the book as the driver does.
    fn pump_unicast(&mut self, i: usize) {
        self.unicast_targets(i); // announces when due
        let (mut out, mut dests) = (Vec::new(), Vec::new());
        let now = self.instant();
        let mut d = Vec::new();
        while let Some(t) = self.nodes[i].ep.poll_transmit(now, &mut d) {
            assert!(d.len() <= self.net.mtu, "datagram exceeds the MTU");
            dests.push(match t.destination {
                Destination::Group => None,
                Destination::Node(id) => Some(id),
            });
            out.push(std::mem::take(&mut d));
        }
        if !self.nodes[i].alive {
            out.clear();
            dests.clear();
        }
        let copies = {
            let u = self.unicast.as_mut().expect("unicast");
            mccache::net::unicast::route(&dests, &mut u.books[i])
        };
        for (d, addr) in copies {
            let Some(to) = self.node_at(addr) else {
                continue;
            };
            let u = self.unicast.as_mut().expect("unicast");
            u.copies += 1;
            let loss = u.link_loss.get(&(i, to)).copied().unwrap_or(self.net.loss);
            if u.blocked.contains(&(i, to)) || !self.can_talk(i, to) || self.rng.random_bool(loss) {
                self.dropped += 1;
                continue;
            }
            let jitter = if self.net.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.random_range(0..self.net.jitter.as_nanos() as u64))
            };
            let at = self.now + self.net.delay + jitter;
            let ev = Ev::Deliver {
                to,
                incarnation: self.incarnations[to],
                data: out[d].clone(),
                from: i,
            };
            let id = self.next_ev;
            self.next_ev += 1;
            self.events.insert(id, ev);
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, id)));
        }
        let me = self.nodes[i].ep.id();
        let now = self.instant();
        while let Some(ev) = self.nodes[i].ep.poll_event() {
            let u = self.unicast.as_mut().expect("unicast");
            match ev {
                Event::Addresses { addrs, .. } => u.books[i].told(me, &addrs, now),
                Event::Member(MemberEvent::Left { id, .. }) => u.books[i].forget(id),
                _ => {}
            }
        }
    }

    /// Unicast: the addresses node `i` sends to.
    pub fn unicast_targets_of(&mut self, i: usize) -> Vec<usize> {
        let u = self.unicast.as_mut().expect("unicast");
        let t: Vec<std::net::SocketAddr> = u.books[i].targets().to_vec();
        t.into_iter().filter_map(|a| self.node_at(a)).collect()
    }

    /// Runs the simulation until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        loop {
            let next_net = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let (ti, next_timer) = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive)
                .filter_map(|(i, n)| {
                    Some((i, n.ep.poll_timeout()?.saturating_duration_since(self.base)))
                })
                .min_by_key(|(_, t)| *t)
                .unwrap_or((usize::MAX, Duration::MAX));
            let next = next_net.unwrap_or(Duration::MAX).min(next_timer);
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            if next_net == Some(next) {
                let Some(Reverse((_, _, id))) = self.queue.pop() else {
                    continue;
                };
                let Some(Ev::Deliver {
                    to,
                    incarnation,
                    data,
                    from,
                }) = self.events.remove(&id)
                else {
                    continue;
                };
                if !self.nodes[to].alive || self.incarnations[to] != incarnation {
                    continue;
                }
                self.delivered += 1;
                let now = self.instant();
                let wall = self.wall_of(to);
                let n = &mut self.nodes[to];
                n.app.wall_ms = wall;
                let sender = n.ep.handle_datagram(now, &data, &mut n.app);
                self.unicast_learn(to, from, sender);
                self.pump(to);
            } else if ti != usize::MAX {
                let now = self.instant();
                let wall = self.wall_of(ti);
                let n = &mut self.nodes[ti];
                n.app.wall_ms = wall;
                if wall >= n.next_gc_ms {
                    // The node's housekeeper: collect tombstones older than the TTL.
                    n.next_gc_ms = wall + 250;
                    let ttl = self.tomb_ttl.as_millis() as u64;
                    for c in n.app.caches.values_mut() {
                        c.gc(wall, ttl);
                    }
                }
                n.ep.handle_timeout(now, &mut n.app);
                self.pump(ti);
            }
        }
    }

    /// Node `i`'s live entries of `cache`.
    pub fn live(&self, i: usize, cache: &str) -> BTreeMap<Vec<u8>, (Version, Vec<u8>)> {
        self.nodes[i]
            .app
            .caches
            .get(cache)
            .map(|c| c.live())
            .unwrap_or_default()
    }

    pub fn endpoint_of(&self, i: usize) -> &Endpoint {
        &self.nodes[i].ep
    }

    pub fn caches_of(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i].app.caches.keys().cloned().collect()
    }

    /// The newest write per (cache, key) made by nodes alive now, with clears applied.
    pub fn surviving_writes(&self) -> Vec<(String, Record)> {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.writes.iter().cloned())
            .collect()
    }

    pub fn model(&self, i: usize) -> &Model {
        &self.nodes[i].app
    }

    /// The highest tombstone horizon of `cache` over live nodes: a write at or below it may
    /// have been dropped in doubt (a miss, never a resurrection).
    pub fn max_horizon(&self, cache: &str) -> Version {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .filter_map(|n| n.app.caches.get(cache).map(|c| c.horizon))
            .max()
            .unwrap_or_default()
    }

    /// Resurrections any node (of any incarnation still alive) has seen.
    pub fn violations(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| n.app.violations.iter().cloned())
            .collect()
    }
}
