//! A deterministic discrete-event simulator for clusters of mccache nodes.
//!
//! N nodes, each a protocol core ([`Endpoint`]) over the real node application state
//! ([`DetachedNode`]: `NodeApp` → `Registry` → typed `Store`s and parked caches), exchange
//! datagrams over a virtual network with seeded loss, duplication, delay jitter (hence
//! reordering), partitions, crashes, restarts, clean leaves and late joins. Time is virtual:
//! the simulator jumps from event to event, and every node's clock is a [`SimClock`] it sets.
//! Everything is derived from one seed, so a failing seed replays.
//!
//! The workload goes through typed caches as an application's would: [`BYTES`]
//! (`Cache<String, Vec<u8>>`) and [`NUMS`] (`Cache<u32, u64>`), each in the cache mode the
//! scenario gives it. A cache a node has not opened yet parks what it receives; opening it
//! hands the parked records over ([`Sim::open`] checks that they all arrive). Membership events
//! are kept per node for [`Sim::check_members`].

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mccache::unstable::{AddressBook, Clock, DetachedNode, NodeApp, ParkedCache};
use mccache::{CacheMode, Config};
use mccache_proto::endpoint::{Destination, Endpoint, EndpointConfig, Event, MemberEvent};
use mccache_proto::message::{Item, Query};
use mccache_proto::record::{Op, OpRef, Record, RecordRef};
use mccache_proto::state::AppState;
use mccache_proto::sync::{Applied, KeyVersion, SYNC_BUCKETS, SyncDigest};
use mccache_proto::version::{NodeId, Version};
use mccache_proto::wire::WireConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The workload cache of byte values: `Cache<String, Vec<u8>>`, keys `"k<n>"`.
pub const BYTES: &str = "alpha";
/// The workload cache of numbers: `Cache<u32, u64>`, keys `n`.
pub const NUMS: &str = "beta";
/// Both workload caches.
pub const CACHES: [&str; 2] = [BYTES, NUMS];

/// A write of the workload: key `n` of a cache gets a value (its bytes for [`BYTES`], the
/// first eight of them as a little-endian `u64` for [`NUMS`]) or is removed.
#[derive(Clone, Debug)]
pub enum Write {
    Put(Vec<u8>),
    Del,
}

/// A node's clock, set by the simulator before every call into the node.
#[derive(Debug, Default)]
pub struct SimClock {
    nanos: AtomicU64,
    wall_ms: AtomicU64,
}

impl SimClock {
    fn set(&self, nanos: u64, wall_ms: u64) {
        self.nanos.store(nanos, Ordering::Relaxed);
        self.wall_ms.store(wall_ms, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::Relaxed)
    }
}

/// A node's application state as the core sees it: the real [`NodeApp`], watched by an
/// oracle that never forgets a delete.
///
/// Deterministic where the store is not (its shards hash with a per-process random seed): key
/// lists are sorted by key, and snapshot chunks are cut in key order from the store's whole
/// snapshot, so that a seed replays exactly.
pub struct SimApp {
    pub node: DetachedNode,
    /// Oracle, never collected: the newest delete (or invalidation) this node applied or
    /// made, per (cache, key).
    deleted_seen: BTreeMap<(String, Vec<u8>), Version>,
    /// Resurrections seen: a put applied at or below a delete this node had applied.
    pub violations: Vec<String>,
}

impl SimApp {
    fn new(node: DetachedNode) -> SimApp {
        SimApp {
            node,
            deleted_seen: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    fn saw_delete(&mut self, cache: &str, rec: RecordRef<'_>) {
        if !matches!(rec.op, OpRef::Put { .. }) {
            let d = self
                .deleted_seen
                .entry((cache.to_string(), rec.key.to_vec()))
                .or_default();
            *d = (*d).max(rec.version);
        }
    }

    fn app(&self) -> &NodeApp {
        self.node.app_ref()
    }
}

impl AppState for SimApp {
    fn apply(&mut self, cache: &str, record: RecordRef<'_>, origin: NodeId) -> Applied {
        let deleted = self
            .deleted_seen
            .get(&(cache.to_string(), record.key.to_vec()))
            .copied();
        let resurrects =
            matches!(record.op, OpRef::Put { .. }) && deleted.is_some_and(|d| record.version <= d);
        let applied = self.node.app().apply(cache, record, origin);
        if applied == Applied::Changed {
            if resurrects {
                self.violations.push(format!(
                    "{cache}/{:?} came back at {:?} after its delete at {deleted:?}",
                    String::from_utf8_lossy(record.key),
                    record.version,
                ));
            }
            self.saw_delete(cache, record);
        }
        applied
    }
    fn apply_clear(&mut self, cache: &str, version: Version, origin: NodeId) {
        self.node.app().apply_clear(cache, version, origin)
    }
    fn clear_floor(&self, cache: &str) -> Version {
        self.app().clear_floor(cache)
    }
    fn caches(&self) -> Vec<String> {
        self.app().caches()
    }
    fn digest(&self, cache: &str) -> Option<SyncDigest> {
        self.app().digest(cache)
    }
    fn bucket_versions(&self, cache: &str, bucket: usize) -> Vec<KeyVersion> {
        let mut keys = self.app().bucket_versions(cache, bucket);
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        keys
    }
    fn buckets_versions(&self, cache: &str, buckets: &[usize]) -> Vec<Vec<KeyVersion>> {
        let mut lists = self.app().buckets_versions(cache, buckets);
        for keys in &mut lists {
            keys.sort_by(|a, b| a.key.cmp(&b.key));
        }
        lists
    }
    fn record(&self, cache: &str, key: &[u8]) -> Option<Record> {
        self.app().record(cache, key)
    }
    fn snapshot_chunk(
        &self,
        cache: &str,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>) {
        // The store's whole snapshot, cut into chunks in key order by the record model.
        let mut model = ParkedCache::default();
        let mut at = Some(0);
        while let Some(c) = at {
            let (records, next) = self.app().snapshot_chunk(cache, c, usize::MAX, u64::MAX);
            for r in &records {
                model.apply(r, 0);
            }
            at = next;
        }
        model.snapshot_chunk(cursor, max_bytes, until)
    }
    fn clock(&self) -> u64 {
        self.app().clock()
    }
    fn horizon(&self, cache: &str) -> Version {
        self.app().horizon(cache)
    }
    fn raise_horizon(&mut self, cache: &str, version: Version) {
        self.node.app().raise_horizon(cache, version)
    }
    fn drop_doubtful(&mut self, cache: &str, key: &[u8], version: Version) -> bool {
        self.node.app().drop_doubtful(cache, key, version)
    }
    fn adopts_absent_keys(&self, cache: &str) -> bool {
        self.app().adopts_absent_keys(cache)
    }
    fn wall_ms(&self) -> u64 {
        self.app().wall_ms()
    }
    fn peer_loading(&mut self, cache: &str, key: &[u8], origin: NodeId) {
        self.node.app().peer_loading(cache, key, origin)
    }
    fn answer(&self, query: &Query) -> Vec<u8> {
        self.app().answer(query)
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
    app: SimApp,
    clock: Arc<SimClock>,
    alive: bool,
    /// Writes this node made (cache, record), for the no-resurrection oracle.
    writes: Vec<(String, Record)>,
    /// Next housekeeping pass (wall ms).
    next_housekeep_ms: u64,
    /// This node's clock minus the true time, in ms.
    clock_offset_ms: i64,
    /// Membership events this incarnation reported, in order.
    events: Vec<MemberEvent>,
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

/// How a node stopped, as the scenario did it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    Crashed,
    Left,
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
    /// The mode of each cache (absent: replicate).
    modes: BTreeMap<String, CacheMode>,
    /// Every node id of every incarnation, with how it stopped (`None`: running).
    pub ids: BTreeMap<NodeId, (usize, Option<Departure>)>,
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

/// The key bytes of workload key `n` in `cache`, as its typed cache encodes them.
pub fn key_bytes(cache: &str, n: u32) -> Vec<u8> {
    if cache == NUMS {
        rmp_serde::to_vec(&n).expect("encodes")
    } else {
        rmp_serde::to_vec(&format!("k{n}")).expect("encodes")
    }
}

fn number(value: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = value.len().min(8);
    b[..n].copy_from_slice(&value[..n]);
    u64::from_le_bytes(b)
}

impl Sim {
    /// `n` nodes, every cache in mode 1 (replicate).
    pub fn new(seed: u64, n: usize, net: NetParams) -> Sim {
        Sim::with_modes(seed, n, net, &[])
    }

    /// `n` nodes whose caches have the given modes (others replicate).
    pub fn with_modes(seed: u64, n: usize, net: NetParams, modes: &[(&str, CacheMode)]) -> Sim {
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
            modes: modes.iter().map(|(c, m)| (c.to_string(), *m)).collect(),
            ids: BTreeMap::new(),
        };
        for _ in 0..n {
            sim.add_node();
        }
        sim
    }

    /// The mode of `cache`.
    pub fn mode(&self, cache: &str) -> CacheMode {
        self.modes.get(cache).copied().unwrap_or_default()
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// A fresh node: a protocol core and the node's caches (none open) with a new identity.
    fn fresh(&mut self, clock: Arc<SimClock>) -> (Endpoint, SimApp) {
        let id = NodeId(self.rng.random::<u64>() | 1);
        let cfg = EndpointConfig::new(
            format!("n{id}"),
            wire_config(self.net.mtu, self.encrypted),
            self.heartbeat,
            self.pulse,
        );
        // Entries live until deleted, and the caps stay out of the way: convergence is
        // checked on every write.
        let mut config = Config::default();
        config.cache_ttl = 0.0;
        config.cache_max = 1 << 20;
        config.cache_size = 1 << 32;
        config.cache_pulse = self.pulse.as_secs_f64();
        config.daemon_sleep = self.heartbeat.as_secs_f64();
        config.max_message_size = 1 << 20;
        for (cache, mode) in &self.modes {
            config.caches.entry(cache.clone()).or_default().cache_mode = Some(*mode);
        }
        let node = DetachedNode::new(config, id, clock).expect("a valid configuration");
        (Endpoint::new(cfg, id, self.instant()), SimApp::new(node))
    }

    /// Adds a node (a late joiner if the simulation already runs). Returns its index.
    pub fn add_node(&mut self) -> usize {
        let clock = Arc::new(SimClock::default());
        let (ep, app) = self.fresh(clock.clone());
        self.ids.insert(ep.id(), (self.nodes.len(), None));
        self.nodes.push(SimNode {
            ep,
            app,
            clock,
            alive: true,
            writes: Vec::new(),
            next_housekeep_ms: 0,
            clock_offset_ms: 0,
            events: Vec::new(),
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

    fn stopped(&mut self, i: usize, how: Departure) {
        self.nodes[i].alive = false;
        self.incarnations[i] += 1;
        let id = self.nodes[i].ep.id();
        self.ids.insert(id, (i, Some(how)));
    }

    /// Crashes node `i`: it stops at once, sends nothing more, loses its state.
    pub fn crash(&mut self, i: usize) {
        self.stopped(i, Departure::Crashed);
    }

    /// Restarts a stopped node with empty state and a new identity (a new incarnation).
    pub fn restart(&mut self, i: usize) {
        let clock = self.nodes[i].clock.clone();
        let (ep, app) = self.fresh(clock);
        self.ids.insert(ep.id(), (i, None));
        let n = &mut self.nodes[i];
        n.ep = ep;
        n.app = SimApp {
            violations: std::mem::take(&mut n.app.violations),
            ..app
        };
        n.alive = true;
        n.writes.clear();
        n.events.clear();
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

    /// Sets node `i`'s clock to now; returns now as an [`Instant`] for its core.
    fn tick(&mut self, i: usize) -> Instant {
        let wall = self.wall_of(i);
        // Monotonic time starts at 1 s, as a fresh process's would be past zero.
        let nanos = 1_000_000_000 + self.now.as_nanos() as u64;
        self.nodes[i].clock.set(nanos, wall);
        self.instant()
    }

    /// Injects a raw datagram into node `i`, as if received from the network now.
    pub fn inject(&mut self, i: usize, datagram: &[u8]) {
        let now = self.tick(i);
        let n = &mut self.nodes[i];
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
        let now = self.tick(i);
        let n = &mut self.nodes[i];
        n.ep.leave(now);
        self.pump(i);
        self.stopped(i, Departure::Left);
    }

    /// Opens `cache` on node `i` as its application would (a no-op if open), and checks the
    /// hand-over: every record parked for it is then held by the typed cache at the same
    /// version (or, in mode 0, a value for a key the cache does not hold is skipped).
    pub fn open(&mut self, i: usize, cache: &str) -> Result<(), String> {
        self.tick(i);
        let node = &self.nodes[i].app.node;
        if node.is_open(cache) {
            return Ok(());
        }
        let parked = node.parked(cache).unwrap_or_default();
        if cache == NUMS {
            node.cache::<u32, u64>(cache).map_err(|e| e.to_string())?;
        } else {
            node.cache::<String, Vec<u8>>(cache)
                .map_err(|e| e.to_string())?;
        }
        let mode = self.mode(cache);
        let app = &self.nodes[i].app;
        for rec in parked {
            let held = app.record(cache, &rec.key).map(|r| r.version);
            let skipped = mode == CacheMode::UpdateIfPresent && matches!(rec.op, Op::Put { .. });
            let expect = (!skipped).then_some(rec.version);
            if held != expect {
                return Err(format!(
                    "node {i} opened {cache}: parked {:?} at {:?} ({}) became {held:?}",
                    String::from_utf8_lossy(&rec.key),
                    rec.version,
                    if matches!(rec.op, Op::Put { .. }) {
                        "value"
                    } else {
                        "delete"
                    },
                ));
            }
        }
        Ok(())
    }

    /// Moves the changes node `i`'s caches published into its core, and notes them for the
    /// oracles.
    fn publish_local(&mut self, i: usize) {
        let now = self.tick(i);
        let n = &mut self.nodes[i];
        let items = n.app.node.take_published();
        if items.is_empty() {
            return;
        }
        for item in items {
            match &item {
                Item::Rec { cache, rec } => {
                    n.app.saw_delete(cache, rec.view());
                    n.writes.push((cache.to_string(), rec.clone()));
                    self.all_writes.push((cache.to_string(), rec.clone()));
                }
                Item::Clear { cache, version } => {
                    self.all_clears.push((cache.to_string(), *version));
                }
                Item::Loading { .. } => {}
            }
            n.ep.publish(now, item);
        }
        self.pump(i);
    }

    /// A local write on node `i` (opening the cache first, as an application must): stored
    /// through the typed cache, then published.
    pub fn write(&mut self, i: usize, cache: &str, key: u32, write: Write) {
        if !self.nodes[i].alive {
            return;
        }
        self.open(i, cache).unwrap_or_else(|e| panic!("{e}"));
        let node = &self.nodes[i].app.node;
        let done = if cache == NUMS {
            let c = node.cache::<u32, u64>(cache).expect("open");
            match write {
                Write::Put(v) => c.insert(key, number(&v)).map(drop),
                Write::Del => c.remove(&key).map(drop),
            }
        } else {
            let c = node.cache::<String, Vec<u8>>(cache).expect("open");
            match write {
                Write::Put(v) => c.insert(format!("k{key}"), v).map(drop),
                Write::Del => c.remove(&format!("k{key}")).map(drop),
            }
        };
        done.unwrap_or_else(|e| panic!("node {i}: write to {cache}: {e}"));
        self.publish_local(i);
    }

    /// A versioned clear of `cache` on node `i`.
    pub fn clear(&mut self, i: usize, cache: &str) {
        if !self.nodes[i].alive {
            return;
        }
        self.open(i, cache).unwrap_or_else(|e| panic!("{e}"));
        let node = &self.nodes[i].app.node;
        if cache == NUMS {
            node.cache::<u32, u64>(cache).expect("open").clear();
        } else {
            node.cache::<String, Vec<u8>>(cache).expect("open").clear();
        }
        self.publish_local(i);
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

    /// Schedules the delivery of datagram `data` from `from` to `to`.
    fn send(&mut self, from: usize, to: usize, data: Vec<u8>) {
        let jitter = if self.net.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.random_range(0..self.net.jitter.as_nanos() as u64))
        };
        let at = self.now + self.net.delay + jitter;
        let ev = Ev::Deliver {
            to,
            incarnation: self.incarnations[to],
            data,
            from,
        };
        let id = self.next_ev;
        self.next_ev += 1;
        self.events.insert(id, ev);
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, id)));
    }

    /// Moves node `i`'s output datagrams into the network and its events into its log.
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
                    self.send(i, to, d.clone());
                }
            }
        }
        while let Some(ev) = self.nodes[i].ep.poll_event() {
            if let Event::Member(m) = ev {
                self.nodes[i].events.push(m);
            }
        }
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
            mccache::unstable::route(&dests, &mut u.books[i])
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
            self.send(i, to, out[d].clone());
        }
        let me = self.nodes[i].ep.id();
        let now = self.instant();
        while let Some(ev) = self.nodes[i].ep.poll_event() {
            let u = self.unicast.as_mut().expect("unicast");
            match ev {
                Event::Addresses { addrs, .. } => u.books[i].told(me, &addrs, now),
                Event::Member(m) => {
                    if let MemberEvent::Left { id, .. } = &m {
                        u.books[i].forget(*id);
                    }
                    self.nodes[i].events.push(m);
                }
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
                let now = self.tick(to);
                let n = &mut self.nodes[to];
                let sender = n.ep.handle_datagram(now, &data, &mut n.app);
                self.unicast_learn(to, from, sender);
                self.pump(to);
            } else if ti != usize::MAX {
                let now = self.tick(ti);
                let wall = self.wall_of(ti);
                let ttl = self.tomb_ttl;
                let n = &mut self.nodes[ti];
                if wall >= n.next_housekeep_ms {
                    // The node's housekeeper: sweeps, and collects tombstones past their TTL.
                    n.next_housekeep_ms = wall + 250;
                    n.app.node.housekeep(ttl);
                }
                n.ep.handle_timeout(now, &mut n.app);
                self.pump(ti);
            }
        }
    }

    /// Node `i`'s live entries of `cache` (opened or parked), as peers see them: key bytes ->
    /// (version, value bytes; empty in an invalidate-mode cache, which replicates no values).
    pub fn live(&self, i: usize, cache: &str) -> BTreeMap<Vec<u8>, (Version, Vec<u8>)> {
        let app = &self.nodes[i].app;
        let buckets: Vec<usize> = (0..SYNC_BUCKETS).collect();
        app.buckets_versions(cache, &buckets)
            .into_iter()
            .flatten()
            .filter(|kv| !kv.deleted)
            .map(|kv| {
                let value = match app.record(cache, &kv.key).map(|r| r.op) {
                    Some(Op::Put { value, .. }) => value.to_vec(),
                    _ => Vec::new(),
                };
                (kv.key, (kv.version, value))
            })
            .collect()
    }

    /// Node `i`'s record (value or tombstone) of `key` in `cache`.
    pub fn record(&self, i: usize, cache: &str, key: &[u8]) -> Option<Record> {
        self.nodes[i].app.record(cache, key)
    }

    pub fn endpoint_of(&self, i: usize) -> &Endpoint {
        &self.nodes[i].ep
    }

    /// Caches node `i` holds, opened or parked.
    pub fn caches_of(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i].app.caches().into_iter().collect()
    }

    /// Node `i`'s typed handle on [`NUMS`] (opening it, as [`Sim::open`] does).
    pub fn nums(&mut self, i: usize) -> mccache::Cache<u32, u64> {
        self.open(i, NUMS).unwrap_or_else(|e| panic!("{e}"));
        self.nodes[i]
            .app
            .node
            .cache::<u32, u64>(NUMS)
            .expect("the types it was opened with")
    }

    /// True if node `i`'s application opened `cache`.
    pub fn is_open(&self, i: usize, cache: &str) -> bool {
        self.nodes[i].app.node.is_open(cache)
    }

    /// The writes made by nodes alive now.
    pub fn surviving_writes(&self) -> Vec<(String, Record)> {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.writes.iter().cloned())
            .collect()
    }

    /// The highest tombstone horizon of `cache` over live nodes: a write at or below it may
    /// have been dropped in doubt (a miss, never a resurrection).
    pub fn max_horizon(&self, cache: &str) -> Version {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.app.horizon(cache))
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

    /// Node `i`'s clock (HLC) reading: the newest timestamp it has issued or observed.
    pub fn clock_seen(&self, i: usize) -> u64 {
        self.nodes[i].app.app().hlc.peek()
    }

    /// Node `i`'s membership events, this incarnation.
    pub fn member_events(&self, i: usize) -> &[MemberEvent] {
        &self.nodes[i].events
    }

    /// Membership as the scenario made it, against every live node's events:
    /// - it saw every other live node join, and that node's last event is not a leave;
    /// - a node it saw join that has stopped since was then reported gone: as failed if it
    ///   crashed;
    /// - no event names an id that never existed or the node itself.
    pub fn check_members(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let me = n.ep.id();
            if !n.events.contains(&MemberEvent::Ready) {
                return Err(format!("node {i} never became ready"));
            }
            // id -> the last Joined/Left event about it
            let mut last: BTreeMap<NodeId, &MemberEvent> = BTreeMap::new();
            for ev in &n.events {
                let id = match ev {
                    MemberEvent::Joined { id, .. } | MemberEvent::Left { id, .. } => *id,
                    MemberEvent::Suspect { id } | MemberEvent::Alive { id } => *id,
                    _ => continue,
                };
                if id == me || !self.ids.contains_key(&id) {
                    return Err(format!("node {i}: event about an unknown node: {ev:?}"));
                }
                if matches!(ev, MemberEvent::Joined { .. } | MemberEvent::Left { .. }) {
                    last.insert(id, ev);
                }
            }
            for (id, (j, how)) in &self.ids {
                if *id == me {
                    continue;
                }
                let seen = last.get(id);
                match (how, seen) {
                    (None, Some(MemberEvent::Joined { .. })) => {}
                    (None, other) => {
                        return Err(format!(
                            "node {i} does not count live node {j} ({id}) as a member: last event {other:?}"
                        ));
                    }
                    (Some(_), None) => {}
                    (Some(Departure::Crashed), Some(MemberEvent::Left { failed: true, .. })) => {}
                    (Some(Departure::Left), Some(MemberEvent::Left { .. })) => {}
                    (Some(how), Some(ev)) => {
                        return Err(format!(
                            "node {i}: node {j} ({id}) {how:?}, last event {ev:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
