//! The node's side of replication: the [`AppState`] the protocol core works on (the node's
//! caches, opened or parked), and the [`Publisher`] that feeds local changes to the driver.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use crate::cache::clock::Clock;
use crate::cache::hooks::{
    Applied, Change, ChangeKindWire, ErasedCache, KeyVersion, Publisher, SyncDigest,
};
use crate::cache::metrics::CacheMetrics;
use crate::cache::parked::ParkedCache;
use crate::config::Overload;
use crate::error::Error;
use crate::net::buffers::BufferPool;
use crate::net::driver::Command;
use crate::net::express::Express;
use crate::net::overflow::{Backlog, ChangeQueue, charge, record_charge, record_charge_of};
use crate::proto::message::{Item, Query};
use crate::proto::record::{Op, OpRef, Record, RecordRef};
use crate::proto::state::AppState;
use crate::proto::version::{Hlc, NodeId, Version};

/// One opened cache: its untyped view (for replication) and its typed store (for handles).
pub struct Registered {
    /// The view the protocol drives.
    pub erased: Arc<dyn ErasedCache>,
    /// The typed `Store<K, V>`, for downcasting in `Node::cache`.
    pub typed: Arc<dyn std::any::Any + Send + Sync>,
}

/// The caches of one node, by name: the opened (typed) ones and the parked ones.
pub struct Registry {
    /// Caches opened by the application.
    pub open: RwLock<HashMap<String, Registered>>,
    /// Peers' data for caches not opened here yet.
    pub parked: Mutex<BTreeMap<String, ParkedCache>>,
    /// Bounds for parked caches (node-wide `cache_max`, `cache_size`).
    pub parked_limits: (usize, usize),
}

/// Runs `f` on a parked cache, created with the node-wide bounds if absent.
fn park_in<R>(
    parked: &mut BTreeMap<String, ParkedCache>,
    limits: (usize, usize),
    name: &str,
    f: impl FnOnce(&mut ParkedCache) -> R,
) -> R {
    match parked.get_mut(name) {
        Some(p) => f(p),
        None => f(parked
            .entry(name.to_string())
            .or_insert_with(|| ParkedCache::new(limits.0, limits.1))),
    }
}

impl Registry {
    /// An empty registry; parked caches are bounded by the node-wide caps.
    pub fn new(config: &crate::Config) -> Registry {
        Registry {
            open: RwLock::new(HashMap::new()),
            parked: Mutex::new(BTreeMap::new()),
            parked_limits: (
                config.cache_max.max(1),
                usize::try_from(config.cache_size).unwrap_or(usize::MAX),
            ),
        }
    }

    /// Runs `f` on the parked cache `name`, creating it (empty, bounded) if absent.
    pub fn park<R>(&self, name: &str, f: impl FnOnce(&mut ParkedCache) -> R) -> R {
        park_in(&mut self.parked.lock(), self.parked_limits, name, f)
    }

    /// Collects the parked caches' tombstones older than `ttl` (see [`ParkedCache::housekeep`]).
    /// One housekeeping pass over every cache, opened and parked (expiry, tombstones older
    /// than `ttl`); returns the opened caches it visited.
    pub fn housekeep(&self, now_nanos: u64, ttl: Duration) -> Vec<Arc<dyn ErasedCache>> {
        let caches: Vec<Arc<dyn ErasedCache>> = self
            .open
            .read()
            .values()
            .map(|r| r.erased.clone())
            .collect();
        for c in &caches {
            c.housekeep(ttl);
        }
        for p in self.parked.lock().values_mut() {
            p.housekeep(now_nanos, ttl);
        }
        caches
    }

    /// Registers a cache the application has just opened (the caller holds the write lock
    /// `open`), then hands it the records parked under its name.
    pub fn register(
        &self,
        mut open: parking_lot::RwLockWriteGuard<'_, HashMap<String, Registered>>,
        name: &str,
        cache: Registered,
    ) {
        let erased = cache.erased.clone();
        open.insert(name.to_string(), cache);
        drop(open);
        self.unpark(name, erased.as_ref());
    }

    /// Hands the parked records of `name` to a cache that has just been opened.
    pub fn unpark(&self, name: &str, cache: &dyn ErasedCache) {
        let Some(mut parked) = self.parked.lock().remove(name) else {
            return;
        };
        let floor = parked.clear_floor();
        if floor != Version::ZERO {
            cache.apply_clear(floor, floor.node);
        }
        // The records first: each was accepted by the parked cache's rules, and one held at
        // or below the parked horizon would be refused by an empty cache with that horizon.
        let horizon = parked.horizon();
        for rec in parked.drain() {
            cache.apply_remote(rec.view(), rec.version.node);
        }
        cache.raise_horizon(horizon);
    }

    fn opened(&self, name: &str) -> Option<Arc<dyn ErasedCache>> {
        self.open.read().get(name).map(|r| r.erased.clone())
    }
}

/// Apply-lag samples (origin write time to local apply), in microseconds, kept in a small ring.
#[derive(Default)]
pub struct LagSamples {
    ring: Mutex<Vec<u64>>,
    next: AtomicU64,
}

impl LagSamples {
    const CAP: usize = 4096;

    /// Records one sample.
    #[cfg(feature = "unstable")]
    pub fn record(&self, us: u64) {
        self.record_all(&[us]);
    }

    /// Records several samples, taking the lock once.
    pub fn record_all(&self, samples: &[u64]) {
        if samples.is_empty() {
            return;
        }
        let first = self.next.fetch_add(samples.len() as u64, Ordering::Relaxed) as usize;
        let mut r = self.ring.lock();
        for (n, &us) in samples.iter().enumerate() {
            if r.len() < Self::CAP {
                r.push(us);
            } else {
                r[first.wrapping_add(n) % Self::CAP] = us;
            }
        }
    }

    /// (p50, p99) of the samples held.
    pub fn percentiles(&self) -> (u64, u64) {
        let mut v = self.ring.lock().clone();
        if v.is_empty() {
            return (0, 0);
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.50), at(0.99))
    }
}

/// The [`AppState`] over a node's registry. Owned by the driver task.
pub struct NodeApp {
    /// The caches.
    pub registry: Arc<Registry>,
    /// The node's clock, advanced past every remote version seen.
    pub hlc: Arc<Hlc>,
    /// Apply lag samples.
    pub lag: Arc<LagSamples>,
    /// The node's clock: wall time for the core, monotonic time for parked tombstones.
    pub clock: Arc<dyn Clock>,
}

impl NodeApp {
    fn park<R>(&self, cache: &str, f: impl FnOnce(&mut ParkedCache) -> R) -> R {
        self.registry.park(cache, f)
    }
}

/// Parallel streams of a state transfer: a joiner copies this many parts of each cache at once
/// (one request each in flight), not one chunk per round trip.
const SNAPSHOT_STREAMS: u64 = 8;

impl AppState for NodeApp {
    fn apply(&mut self, cache: &str, record: RecordRef<'_>, origin: NodeId) -> Applied {
        let mut applied = Applied::Skipped;
        self.apply_run(cache, &[record], origin, &mut |a| applied = a);
        applied
    }

    /// One lookup of the cache, one clock observation (of the run's newest version) and one
    /// lock of the lag ring per run.
    fn apply_run(
        &mut self,
        cache: &str,
        records: &[RecordRef<'_>],
        origin: NodeId,
        each: &mut dyn FnMut(Applied),
    ) {
        let Some(newest) = records.iter().map(|r| r.version.hlc).max() else {
            return;
        };
        self.hlc.observe(newest);
        let mut lags = Vec::new();
        match self.registry.opened(cache) {
            Some(c) => {
                let wall_us = self.clock.wall_us();
                let mut i = 0;
                c.apply_remote_run(records, origin, &mut |applied| {
                    if applied == Applied::Changed
                        && let Some(r) = records.get(i)
                    {
                        if lags.capacity() == 0 {
                            lags.reserve(records.len() - i);
                        }
                        lags.push(wall_us.saturating_sub(r.version.millis() * 1000));
                    }
                    i += 1;
                    each(applied);
                });
            }
            None => {
                let now = self.clock.now_nanos();
                let wall_us = self.clock.wall_us();
                self.park(cache, |p| {
                    for r in records {
                        let applied = p.apply(&r.to_record(), now);
                        if applied == Applied::Changed {
                            lags.push(wall_us.saturating_sub(r.version.millis() * 1000));
                        }
                        each(applied);
                    }
                });
            }
        }
        self.lag.record_all(&lags);
    }

    fn apply_clear(&mut self, cache: &str, version: Version, origin: NodeId) {
        self.hlc.observe(version.hlc);
        match self.registry.opened(cache) {
            Some(c) => c.apply_clear(version, origin),
            None => self.park(cache, |p| p.clear(version)),
        }
    }

    fn peer_loading(&mut self, cache: &str, key: &[u8], _origin: NodeId) {
        if let Some(c) = self.registry.opened(cache) {
            c.peer_loading(key);
        }
    }

    fn clear_floor(&self, cache: &str) -> Version {
        match self.registry.opened(cache) {
            Some(c) => c.clear_floor(),
            None => self
                .registry
                .parked
                .lock()
                .get(cache)
                .map(|p| p.clear_floor())
                .unwrap_or(Version::ZERO),
        }
    }

    fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    fn adopts_absent_keys(&self, cache: &str) -> bool {
        // A parked cache (not opened yet) holds whatever it is sent.
        self.registry
            .opened(cache)
            .is_none_or(|c| c.adopts_absent_keys())
    }

    fn horizon(&self, cache: &str) -> Version {
        match self.registry.opened(cache) {
            Some(c) => c.horizon(),
            None => self
                .registry
                .parked
                .lock()
                .get(cache)
                .map(|p| p.horizon())
                .unwrap_or(Version::ZERO),
        }
    }

    fn raise_horizon(&mut self, cache: &str, version: Version) {
        self.hlc.observe(version.hlc);
        match self.registry.opened(cache) {
            Some(c) => c.raise_horizon(version),
            None => self.park(cache, |p| p.raise_horizon(version)),
        }
    }

    fn drop_doubtful(&mut self, cache: &str, key: &[u8], version: Version) -> bool {
        match self.registry.opened(cache) {
            Some(c) => c.drop_doubtful(key, version),
            None => self
                .registry
                .parked
                .lock()
                .get_mut(cache)
                .is_some_and(|p| p.drop_doubtful(key, version)),
        }
    }

    fn caches(&self) -> Vec<String> {
        let mut names: Vec<String> = self.registry.open.read().keys().cloned().collect();
        names.extend(self.registry.parked.lock().keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    fn digest(&self, cache: &str) -> Option<SyncDigest> {
        match self.registry.opened(cache) {
            Some(c) => Some(c.sync_digest()),
            None => self.registry.parked.lock().get(cache).map(|p| p.digest()),
        }
    }

    fn buckets_versions(&self, cache: &str, buckets: &[usize]) -> Vec<Vec<KeyVersion>> {
        match self.registry.opened(cache) {
            Some(c) => c.buckets_versions(buckets),
            None => buckets
                .iter()
                .map(|&b| self.bucket_versions(cache, b))
                .collect(),
        }
    }

    fn bucket_versions(&self, cache: &str, bucket: usize) -> Vec<KeyVersion> {
        match self.registry.opened(cache) {
            Some(c) => c.bucket_versions(bucket),
            None => self
                .registry
                .parked
                .lock()
                .get(cache)
                .map(|p| p.bucket_versions(bucket))
                .unwrap_or_default(),
        }
    }

    fn record(&self, cache: &str, key: &[u8]) -> Option<Record> {
        match self.registry.opened(cache) {
            Some(c) => c.record(key),
            None => self
                .registry
                .parked
                .lock()
                .get(cache)
                .and_then(|p| p.record(key)),
        }
    }

    fn snapshot_chunk(
        &self,
        cache: &str,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>) {
        match self.registry.opened(cache) {
            Some(c) => c.snapshot_chunk(cursor, max_bytes, until),
            None => self
                .registry
                .parked
                .lock()
                .get(cache)
                .map(|p| p.snapshot_chunk(cursor, max_bytes, until))
                .unwrap_or_default(),
        }
    }

    /// [`SNAPSHOT_STREAMS`] streams over the shards a store of this build has here (a store's
    /// cursor is `shard << 32 | position`; a donor with other shards, or a cache it has only
    /// parked, still gets a complete split, less even).
    fn snapshot_starts(&self, _cache: &str) -> Vec<u64> {
        let shards = crate::cache::store::shard_count() as u64;
        let streams = SNAPSHOT_STREAMS.min(shards);
        (0..streams).map(|k| (k * shards / streams) << 32).collect()
    }

    /// Every version this node holds was ticked or observed by its HLC; the wall clock's
    /// reading is a floor (a fresh clock says 0).
    fn clock(&self) -> u64 {
        self.hlc.peek().max((self.clock.wall_ms() << 16) | 0xFFFF)
    }

    fn answer(&self, query: &Query) -> Vec<u8> {
        let encoded = match query {
            Query::Metrics { cache } => {
                let open = self.registry.open.read();
                let m: BTreeMap<String, CacheMetrics> = open
                    .iter()
                    .filter(|(n, _)| cache.as_ref().is_none_or(|c| c == *n))
                    .map(|(n, c)| (n.clone(), c.erased.metrics()))
                    .collect();
                rmp_serde::to_vec_named(&m)
            }
            Query::Checksum { cache, key } => {
                let answer: Option<u64> = match (self.registry.opened(cache), key) {
                    (Some(c), None) => Some(c.sync_digest().checksum),
                    (Some(c), Some(k)) => c.key_checksum(k).map(u64::from),
                    (None, _) => None,
                };
                rmp_serde::to_vec(&answer)
            }
        };
        encoded.unwrap_or_default()
    }
}

/// Sends local changes to the driver, under the node's overload policy (`overload`).
///
/// The queue ([`ChangeQueue`]) holds `queue_max` changes (credits in [`Backlog`]), and no more
/// than about `queue_max_bytes` of them. When it is full: `repair` stores the write, skips
/// queueing its change, remembers the key and raises the overflow flag: the driver re-sends
/// the key's newest record as soon as the queue drains (and falls back to anti-entropy pulses
/// past `queue_max` remembered keys). `block` waits up to `overload_timeout` for room, then
/// refuses the write; `error` refuses it at once. A refused write stores nothing and returns
/// [`Error::Overloaded`].
pub(crate) struct ChannelPublisher {
    /// To the driver: closed once it has stopped (changes are then dropped).
    pub tx: mpsc::Sender<Command>,
    /// Where changes holding a credit wait for the driver.
    pub queue: Arc<ChangeQueue>,
    /// The core, for changes sent while the driver is idle (the express lane).
    pub express: Arc<Express>,
    /// Used buffers for the records' key and value bytes (see `net::buffers`).
    pub buffers: Arc<BufferPool>,
    /// Changes not queued because the queue was full.
    pub overflow: AtomicU64,
    /// Queue credits and the keys waiting for the targeted repair.
    pub backlog: Arc<Backlog>,
    /// What a write does when the queue is full.
    pub policy: Overload,
    /// The longest a write waits under [`Overload::Block`].
    pub wait: Duration,
    /// `queue_max`, for error messages.
    pub queue_max: usize,
}

/// The replicated item for a local change.
pub(crate) fn change_item(change: Change) -> Item {
    let cache = change.cache;
    match change.kind {
        ChangeKindWire::Record(rec) => Item::Rec { cache, rec },
        ChangeKindWire::Clear(version) => Item::Clear { cache, version },
        ChangeKindWire::Loading(key) => Item::Loading { cache, key },
    }
}

impl ChannelPublisher {
    /// Counts a change that found no room (warning once); the caller has remembered it in the
    /// backlog, for the targeted repair.
    fn overflowed(&self) {
        if self.overflow.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                "mccache: replication queue full (queue_max {} changes, queue_max_bytes {}): changes are repaired as soon as it drains (overload = \"{}\")",
                self.queue_max,
                self.backlog.bytes_max(),
                self.policy.as_str()
            );
        }
    }

    /// Sends a change holding a credit: at once through the express lane if the driver is
    /// idle (as the item `make` builds from it), else through the queue (`queue` appends it;
    /// the credit is given back when the change leaves the queue, or at once if the driver
    /// has stopped).
    #[inline]
    fn dispatch<C>(&self, change: C, make: impl FnOnce(C) -> Item, queue: impl FnOnce(C)) {
        if self.tx.is_closed() {
            self.backlog.give(1);
            return;
        }
        match self.express.try_send(change, make, &self.queue) {
            Ok(()) => self.backlog.give(1),
            Err(change) => queue(change),
        }
    }

    /// [`ChannelPublisher::dispatch`] for any change.
    fn send(&self, item: Item) {
        self.dispatch(
            item,
            |item| item,
            |item| {
                // Counted before it is visible to the driver, which subtracts it.
                self.backlog.add_bytes(charge(&item));
                self.queue.push(item)
            },
        );
    }

    /// [`ChannelPublisher::dispatch`] for a record of `cache`: the item (a count on the cache
    /// name's `Arc`) is built only if the express lane sends it; the queue adds the record to
    /// its cache's run.
    fn send_record(&self, cache: &Arc<str>, rec: Record) {
        let make = |rec| Item::Rec {
            cache: cache.clone(),
            rec,
        };
        self.dispatch(rec, make, |rec| {
            self.backlog.add_bytes(record_charge(&rec));
            self.queue.push_record(cache, rec)
        });
    }

    fn refused(&self) -> Error {
        self.overflow.fetch_add(1, Ordering::Relaxed);
        Error::Overloaded {
            queue_max: self.queue_max,
            queue_max_bytes: self.backlog.bytes_max() as u64,
            policy: self.policy.as_str(),
        }
    }
}

impl Publisher for ChannelPublisher {
    fn publish(&self, change: Change) {
        let item = change_item(change);
        if self.backlog.try_take() {
            self.send(item);
        } else if !self.tx.is_closed() {
            self.backlog.mark(&item);
            self.overflowed();
        }
    }

    #[inline]
    fn publish_record(&self, cache: &Arc<str>, rec: RecordRef<'_>, reserved: bool) {
        if reserved || self.backlog.try_take() {
            let key = self.buffers.copy_of(rec.key);
            let op = match rec.op {
                OpRef::Put { value, ttl_ms } => Op::Put {
                    value: self.buffers.copy_of(value),
                    ttl_ms,
                },
                OpRef::Del => Op::Del,
                OpRef::Inval => Op::Inval,
            };
            let version = rec.version;
            if self.tx.is_closed() || self.express.may_send() {
                self.send_record(cache, Record { key, version, op });
            } else {
                // The express lane is closed (the driver is busy, or streaming): the record
                // is built in its place in the queue, not moved there through the lane.
                let charge = record_charge_of(&rec);
                self.backlog.add_bytes(charge);
                self.queue
                    .push_record_with(cache, charge, || Record { key, version, op });
            }
        } else if !self.tx.is_closed() {
            self.backlog.mark_key(cache, rec.key, rec.version);
            self.overflowed();
        }
    }

    fn reserve(&self) -> crate::Result<bool> {
        if self.tx.is_closed() {
            return Ok(false);
        }
        match self.policy {
            Overload::Repair => Ok(false),
            Overload::Error if self.backlog.try_take() => Ok(true),
            Overload::Block if self.backlog.take_wait(self.wait) => Ok(true),
            Overload::Error | Overload::Block => Err(self.refused()),
        }
    }

    fn reserves(&self) -> bool {
        // `repair` never reserves (a full queue marks the key for the targeted repair).
        self.policy != Overload::Repair
    }

    fn publish_reserved(&self, change: Change) {
        self.send(change_item(change));
    }

    fn release(&self) {
        self.backlog.give(1);
    }
}
