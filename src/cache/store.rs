//! The typed store behind every [`Cache`](crate::Cache): sharded maps, CLOCK eviction under
//! global caps, TTL, incremental checksums, change events, and the [`ErasedCache`] side that
//! the replication layer drives.
//!
//! # Layout
//! The key space is split over a power-of-two number of shards (4 × cores, 16 to 64). Each shard
//! is a `parking_lot::RwLock<IndexMap<K, Entry<V>>>` padded to its own cache lines, next to its
//! own hit/miss/write counters (striped counters: threads on different shards never share a
//! counter line). A read takes only its shard's read lock; on a hit it sets the entry's
//! *referenced* bit and last-lookup time with relaxed atomics (skipping the store when the value
//! is already current), so hot keys do not bounce cache lines between readers.
//!
//! # Caps and eviction
//! `cache_max` (entries) and `cache_size` (serialized key + value bytes) are global to the
//! cache: a cache never evicts while it is under both. Inserting a *new* key that pushes the
//! cache over a cap first sweeps expired entries from shards that have some due, then evicts
//! with CLOCK (second chance): a hand moves round-robin over the shards and, inside a shard,
//! over the map's dense order; an entry whose referenced bit is set (by a hit or its insert) has
//! the bit cleared and is passed over; the first unreferenced entry is removed with
//! `swap_remove_index` (O(1)). The key being inserted is never the victim. Updating an existing
//! key never evicts: an update that grows a value may leave the cache above `cache_size` until
//! the next insert of a new key trims it.
//!
//! # Locks
//! At most one shard lock is held at a time; listeners and the publisher are called after every
//! lock is released.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use indexmap::IndexMap;
use indexmap::map::RawEntryApiV1;
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::backing::Backing;
use crate::cache::context::StoreContext;
use crate::cache::event::{ChangeEvent, ChangeKind, ListenerId, Metadata, Origin};
use crate::cache::hooks::{
    Applied, Change, ChangeKindWire, ErasedCache, KeyVersion, SYNC_BUCKETS, SyncDigest,
};
use crate::cache::metrics::CacheMetrics;
use crate::config::{CacheConfig, CacheMode};
use crate::error::{Error, Result};
use crate::proto::record::{Op, Record};
use crate::proto::version::{NodeId, Version};

/// Bounds on what a cache key must be: a serde type that hashes.
pub trait CacheKey:
    Serialize + DeserializeOwned + Clone + Hash + Eq + Send + Sync + 'static
{
}
impl<T: Serialize + DeserializeOwned + Clone + Hash + Eq + Send + Sync + 'static> CacheKey for T {}

/// Bounds on what a cache value must be: a serde type that can be cloned out to readers.
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

type Hasher = foldhash::fast::RandomState;
pub(crate) type Listener<K> = Arc<dyn Fn(&ChangeEvent<K>) + Send + Sync>;

pub(crate) use super::hooks::splitmix64 as mix64;

/// The shared-tier side of the store (read-through, load-through, write hooks).
mod tiered;

fn bucket_of(key_bytes: &[u8]) -> u8 {
    super::hooks::key_bucket(key_bytes) as u8
}

fn ser_err(e: impl std::fmt::Display) -> Error {
    Error::Serialization(e.to_string())
}

thread_local! {
    static ENCODE_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Serialized key ‖ value in one buffer borrowed from a thread-local (returned on drop), plus
/// the crcs the store needs.
struct Encoded {
    buf: Vec<u8>,
    klen: usize,
    key_crc: crc32fast::Hasher,
    value_crc: crc32fast::Hasher,
}

impl Encoded {
    fn new<K: Serialize, V: Serialize>(key: &K, value: &V) -> Result<Encoded> {
        let mut buf = ENCODE_BUF.with(|c| c.take());
        buf.clear();
        rmp_serde::encode::write(&mut buf, key).map_err(ser_err)?;
        let klen = buf.len();
        rmp_serde::encode::write(&mut buf, value).map_err(ser_err)?;
        Ok(Encoded::from_buf(buf, klen))
    }

    fn from_parts(key: &[u8], value: &[u8]) -> Encoded {
        let mut buf = Vec::with_capacity(key.len() + value.len());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Encoded::from_buf(buf, key.len())
    }

    fn from_buf(buf: Vec<u8>, klen: usize) -> Encoded {
        let mut key_crc = crc32fast::Hasher::new();
        key_crc.update(&buf[..klen]);
        let mut value_crc = crc32fast::Hasher::new();
        value_crc.update(&buf[klen..]);
        Encoded {
            buf,
            klen,
            key_crc,
            value_crc,
        }
    }

    fn size(&self) -> u64 {
        self.buf.len() as u64
    }

    fn key(&self) -> &[u8] {
        &self.buf[..self.klen]
    }

    fn value(&self) -> &[u8] {
        &self.buf[self.klen..]
    }

    fn bucket(&self) -> u8 {
        (self.key_crc.clone().finalize() as usize % SYNC_BUCKETS) as u8
    }

    /// crc32(key ‖ value ‖ version bytes). (One pass over the buffer: `Hasher::combine` is
    /// far slower than re-hashing small entries.)
    fn entry_crc(&self, version: &Version) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.buf);
        h.update(&version.to_bytes());
        h.finalize()
    }
}

impl Drop for Encoded {
    fn drop(&mut self) {
        // Keep small buffers for the next write on this thread.
        if self.buf.capacity() <= 64 * 1024 {
            let buf = std::mem::take(&mut self.buf);
            ENCODE_BUF.with(|c| {
                let old = c.take();
                c.set(if old.capacity() >= buf.capacity() {
                    old
                } else {
                    buf
                });
            });
        }
    }
}

/// One stored value and its bookkeeping.
struct Entry<V> {
    value: V,
    version: Version,
    size: u64,
    /// Wall ms of the last write on this node.
    written_ms: u64,
    /// Monotonic nanos when the entry expires; 0 = never.
    expires_at: u64,
    /// Per-entry TTL in ms as replicated (`None`: the cache's TTL).
    ttl_ms: Option<u64>,
    /// crc32(key ‖ value ‖ version).
    crc: u32,
    /// crc32(value).
    value_crc: u32,
    bucket: u8,
    referenced: AtomicBool,
    /// Monotonic ms + 1 of the last read hit; 0 = never read.
    last_lookup: AtomicU64,
}

impl<V> Entry<V> {
    fn digest(&self) -> u64 {
        mix64(self.crc as u64)
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

/// A deleted key: remembered so that an older put arriving late cannot bring it back.
struct Tomb {
    version: Version,
    at_nanos: u64,
    key_bytes: Box<[u8]>,
    bucket: u8,
}

struct ShardMap<K, V> {
    map: IndexMap<K, Entry<V>, Hasher>,
    tombs: IndexMap<K, Tomb, Hasher>,
    hand: usize,
}

#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    ev_capacity: AtomicU64,
    ev_bytes: AtomicU64,
    ev_ttl: AtomicU64,
}

#[repr(align(128))]
struct Shard<K, V> {
    lock: RwLock<ShardMap<K, V>>,
    /// Lower bound of the earliest `expires_at` in the shard; `u64::MAX` if none.
    next_expiry: AtomicU64,
    stats: Stats,
}

/// Events collected while locks are held, fired after they are released.
pub(crate) struct Events<K> {
    on: bool,
    list: Vec<ChangeEvent<K>>,
}

impl<K> Events<K> {
    fn push(&mut self, make: impl FnOnce() -> ChangeEvent<K>) {
        if self.on {
            self.list.push(make());
        }
    }
}

/// The condition a local write is made under.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Cond {
    Always,
    IfAbsent,
    IfPresent,
    IfVersion(Option<Version>),
    /// A value read from (or loaded for) the shared tier: stored only if the key is absent and
    /// no delete or clear newer than this version (taken before the read) is known.
    Fill(Version),
}

/// The TTL a local write asks for.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Ttl {
    Cache,
    Entry(Duration),
}

/// What a local write did.
pub(crate) struct Written<V> {
    /// The value replaced, if any.
    pub(crate) old: Option<V>,
    /// The new version, `None` if the condition failed and nothing was stored.
    pub(crate) version: Option<Version>,
}

/// A single-flight load in progress. Blocking waiters sleep on `done`, async waiters on
/// `event`; whoever completes the flight sets `state` and wakes both.
pub(crate) struct Flight<V> {
    pub(crate) state: Mutex<Option<Option<V>>>,
    pub(crate) done: Condvar,
    pub(crate) event: event_listener::Event,
}

impl<V> Flight<V> {
    pub(crate) fn new() -> Flight<V> {
        Flight {
            state: Mutex::new(None),
            done: Condvar::new(),
            event: event_listener::Event::new(),
        }
    }

    /// Completes the flight with `value` (`None`: the load failed) and wakes every waiter.
    pub(crate) fn complete(&self, value: Option<V>) {
        *self.state.lock() = Some(value);
        self.done.notify_all();
        self.event.notify(usize::MAX);
    }
}

/// A typed cache's whole state. `Cache<K, V>` is an `Arc` of this.
pub(crate) struct Store<K, V> {
    name: Arc<str>,
    cfg: CacheConfig,
    pub(crate) core: Arc<StoreContext>,
    hasher: Hasher,
    shards: Box<[Shard<K, V>]>,
    ttl_nanos: u64,
    win_ms: u64,
    entries: AtomicU64,
    bytes: AtomicU64,
    checksum: AtomicU64,
    buckets: Box<[AtomicU64]>,
    evict_hand: AtomicUsize,
    clear_floor: RwLock<Version>,
    /// Tombstone horizon: deletes at or below it may have been forgotten here (collected
    /// tombstones, entries dropped in doubt). Records at or below it for keys not held are
    /// refused (docs/PROTOCOL.md, "No resurrection").
    horizon: RwLock<Version>,
    last_mutation: AtomicU64,
    spikes: AtomicU64,
    spike_gap_sum: AtomicU64,
    listeners: RwLock<Vec<(u64, Listener<K>)>>,
    listener_count: AtomicUsize,
    next_listener: AtomicU64,
    pub(crate) flights: Mutex<HashMap<K, Arc<Flight<V>>, Hasher>>,
    /// The optional shared tier (see `tiered`).
    backing: OnceLock<Arc<dyn Backing>>,
    /// Loader counters and refresh state of [`Cache::get_or_load`](crate::Cache::get_or_load).
    pub(crate) loads: crate::cache::load::LoadState<K>,
}

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    pub(crate) fn new(name: &str, cfg: CacheConfig, core: Arc<StoreContext>) -> Store<K, V> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(4);
        let n = (cores * 4).next_power_of_two().clamp(16, 64);
        let hasher = Hasher::default();
        let shards = (0..n)
            .map(|_| Shard {
                lock: RwLock::new(ShardMap {
                    map: IndexMap::with_hasher(hasher),
                    tombs: IndexMap::with_hasher(hasher),
                    hand: 0,
                }),
                next_expiry: AtomicU64::new(u64::MAX),
                stats: Stats::default(),
            })
            .collect();
        Store {
            name: Arc::from(name),
            ttl_nanos: cfg
                .ttl
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
                .unwrap_or(0),
            win_ms: cfg.callback_win.as_millis().min(u64::MAX as u128) as u64,
            cfg,
            core,
            hasher,
            shards,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            checksum: AtomicU64::new(0),
            buckets: (0..SYNC_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            evict_hand: AtomicUsize::new(0),
            clear_floor: RwLock::new(Version::ZERO),
            horizon: RwLock::new(Version::ZERO),
            last_mutation: AtomicU64::new(0),
            spikes: AtomicU64::new(0),
            spike_gap_sum: AtomicU64::new(0),
            listeners: RwLock::new(Vec::new()),
            listener_count: AtomicUsize::new(0),
            next_listener: AtomicU64::new(1),
            flights: Mutex::new(HashMap::with_hasher(hasher)),
            backing: OnceLock::new(),
            loads: crate::cache::load::LoadState::new(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    fn shard(&self, key: &K) -> &Shard<K, V> {
        self.shard_of(self.hasher.hash_one(key))
    }

    fn shard_of(&self, hash: u64) -> &Shard<K, V> {
        // Middle bits: hashbrown uses the low bits for the slot and the top 7 as the tag.
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }

    fn events(&self) -> Events<K> {
        Events {
            on: self.listener_count.load(Ordering::Acquire) > 0,
            list: Vec::new(),
        }
    }

    fn now_ms1(now: u64) -> u64 {
        now / 1_000_000 + 1
    }

    fn in_window(&self, e: &Entry<V>, now: u64) -> bool {
        if self.win_ms == 0 {
            return false;
        }
        let ll = e.last_lookup.load(Ordering::Relaxed);
        ll != 0 && Self::now_ms1(now).saturating_sub(ll) <= self.win_ms
    }

    /// McCache's spike metric: compares each mutation's time to the previous one.
    fn note_mutation(&self, now: u64) {
        let prev = self.last_mutation.swap(now + 1, Ordering::Relaxed);
        if prev != 0 {
            let gap = now.saturating_sub(prev - 1);
            if gap <= self.cfg.callback_win.as_nanos().min(u64::MAX as u128) as u64 {
                self.spikes.fetch_add(1, Ordering::Relaxed);
                self.spike_gap_sum.fetch_add(gap, Ordering::Relaxed);
            }
        }
    }

    fn account(&self, e: &Entry<V>) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(e.size, Ordering::Relaxed);
        self.checksum.fetch_add(e.digest(), Ordering::Relaxed);
        self.buckets[e.bucket as usize].fetch_add(e.digest(), Ordering::Relaxed);
    }

    /// Accounts a new entry; with `reserved`, its entry slot was already taken by
    /// [`Self::reserve_slot_for`]. Returns whether the reservation was used.
    fn account_new(&self, e: &Entry<V>, reserved: bool) -> bool {
        if !reserved {
            self.account(e);
            return false;
        }
        self.bytes.fetch_add(e.size, Ordering::Relaxed);
        self.checksum.fetch_add(e.digest(), Ordering::Relaxed);
        self.buckets[e.bucket as usize].fetch_add(e.digest(), Ordering::Relaxed);
        true
    }

    /// If `key` is not held (a hint, read before the write lock), takes one entry slot below
    /// `cache_max`, sweeping expired entries and evicting (CLOCK) first when the cache is full.
    /// Returns whether a slot is held; the caller releases it if it ends up not inserting.
    /// (If the key disappears between this check and the write lock, the insert accounts
    /// normally and the caps are enforced right after, as before.)
    fn reserve_slot_for(
        &self,
        shard: &Shard<K, V>,
        key: &K,
        remote: Option<Version>,
        now: u64,
        ev: &mut Events<K>,
    ) -> bool {
        {
            let g = shard.lock.read();
            if g.map.contains_key(key) {
                return false;
            }
            // A remote record that will be refused needs no slot (and must not evict).
            if let Some(v) = remote
                && (g.tombs.get(key).is_some_and(|t| v <= t.version)
                    || (!g.tombs.contains_key(key) && v <= *self.horizon.read())
                    || self.cfg.mode == CacheMode::UpdateIfPresent)
            {
                return false;
            }
        }
        let max = self.cfg.max_entries.max(1) as u64;
        let mut swept = false;
        let mut rounds = 0;
        loop {
            let n = self.entries.load(Ordering::Relaxed);
            if n < max {
                if self
                    .entries
                    .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !swept {
                swept = true;
                self.expire_due(now, ev);
                continue;
            }
            rounds += 1;
            if rounds > 64 || !self.evict_one(true, Version::ZERO, now, ev) {
                return false;
            }
        }
    }

    fn unaccount(&self, e: &Entry<V>) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(e.size, Ordering::Relaxed);
        self.checksum.fetch_sub(e.digest(), Ordering::Relaxed);
        self.buckets[e.bucket as usize].fetch_sub(e.digest(), Ordering::Relaxed);
    }

    fn check_size(&self, size: u64) -> Result<()> {
        let max_msg = self.core.max_message_size;
        if size > max_msg as u64 {
            return Err(Error::TooLarge {
                size: size as usize,
                max: max_msg,
            });
        }
        if size > self.cfg.max_bytes {
            return Err(Error::ExceedsCacheSize {
                size,
                max: self.cfg.max_bytes,
            });
        }
        Ok(())
    }

    fn new_entry(
        &self,
        value: V,
        enc: &Encoded,
        version: Version,
        (now, wall): (u64, u64),
        ttl: Ttl,
    ) -> Entry<V> {
        let (ttl_nanos, ttl_ms) = match ttl {
            Ttl::Cache => (self.ttl_nanos, None),
            Ttl::Entry(d) => (
                d.as_nanos().min(u64::MAX as u128) as u64,
                Some(d.as_millis() as u64),
            ),
        };
        Entry {
            value,
            version,
            size: enc.size(),
            written_ms: wall,
            expires_at: if ttl_nanos == 0 {
                0
            } else {
                now.saturating_add(ttl_nanos).max(1)
            },
            ttl_ms,
            crc: enc.entry_crc(&version),
            value_crc: enc.value_crc.clone().finalize(),
            bucket: enc.bucket(),
            referenced: AtomicBool::new(true),
            last_lookup: AtomicU64::new(0),
        }
    }

    /// Removes the entry at `idx` (expired, evicted, deleted or cleared), keeping the hand valid.
    fn take_index(&self, g: &mut ShardMap<K, V>, idx: usize) -> Option<(K, Entry<V>)> {
        let (k, e) = g.map.swap_remove_index(idx)?;
        self.unaccount(&e);
        if g.hand > g.map.len() {
            g.hand = 0;
        }
        Some((k, e))
    }

    fn expire_event(&self, k: &K, e: &Entry<V>, now: u64) -> ChangeEvent<K> {
        ChangeEvent {
            key: k.clone(),
            kind: ChangeKind::Expire,
            origin: Origin::Local,
            version: e.version,
            in_callback_window: self.in_window(e, now),
        }
    }

    // ---------------------------------------------------------------- reads

    /// A read of one key: counts a lookup, marks the entry referenced and read.
    ///
    /// The hit path hashes once (the shard and the map slot come from the same hash), takes the
    /// shard's read lock, reads the exact clock only if the entry has a TTL, and stores the
    /// referenced bit and last-lookup time only when they change.
    fn lookup<R>(&self, key: &K, f: impl FnOnce(&Entry<V>) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard_of(hash);
        let out = {
            let g = shard.lock.read();
            match g.map.raw_entry_v1().from_hash(hash, |k| k == key) {
                Some((_, e)) => {
                    if e.expires_at != 0 && e.expired(self.core.clock.now_nanos()) {
                        None
                    } else {
                        if !e.referenced.load(Ordering::Relaxed) {
                            e.referenced.store(true, Ordering::Relaxed);
                        }
                        let ms = Self::now_ms1(self.core.clock.coarse_nanos());
                        if e.last_lookup.load(Ordering::Relaxed) != ms {
                            e.last_lookup.store(ms, Ordering::Relaxed);
                        }
                        Some(f(e))
                    }
                }
                None => None,
            }
        };
        let counter = if out.is_some() {
            &shard.stats.hits
        } else {
            &shard.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// A read that counts nothing and marks nothing (metadata, snapshots, internal checks).
    fn peek<R>(&self, key: &K, f: impl FnOnce(&Entry<V>, u64) -> R) -> Option<R> {
        let g = self.shard(key).lock.read();
        let e = g.map.get(key)?;
        let now = self.core.clock.now_nanos();
        (!e.expired(now)).then(|| f(e, now))
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.lookup(key, |e| e.value.clone())
    }

    pub(crate) fn get_with_version(&self, key: &K) -> Option<(V, Version)> {
        self.lookup(key, |e| (e.value.clone(), e.version))
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.lookup(key, |_| ()).is_some()
    }

    pub(crate) fn peek_value(&self, key: &K) -> Option<(V, Version)> {
        self.peek(key, |e, _| (e.value.clone(), e.version))
    }

    pub(crate) fn metadata(&self, key: &K) -> Option<Metadata> {
        let wall_now = self.core.clock.wall_ms();
        self.peek(key, |e, now| {
            let now_ms = now / 1_000_000;
            let ll = e.last_lookup.load(Ordering::Relaxed);
            Metadata {
                version: e.version,
                written: UNIX_EPOCH + Duration::from_millis(e.written_ms),
                last_lookup: (ll != 0).then(|| {
                    let ago = now_ms.saturating_sub(ll - 1);
                    UNIX_EPOCH + Duration::from_millis(wall_now.saturating_sub(ago))
                }),
                expires: (e.expires_at != 0).then(|| {
                    UNIX_EPOCH
                        + Duration::from_millis(wall_now)
                        + Duration::from_nanos(e.expires_at.saturating_sub(now))
                }),
                size: e.size,
                crc: e.value_crc,
            }
        })
    }

    pub(crate) fn key_checksum(&self, key: &K) -> Option<u32> {
        self.peek(key, |e, _| e.crc)
    }

    fn snapshot<R>(&self, mut f: impl FnMut(&K, &Entry<V>) -> R) -> Vec<R> {
        let now = self.core.clock.now_nanos();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let g = shard.lock.read();
            out.extend(
                g.map
                    .iter()
                    .filter(|(_, e)| !e.expired(now))
                    .map(|(k, e)| f(k, e)),
            );
        }
        out
    }

    pub(crate) fn keys(&self) -> Vec<K> {
        self.snapshot(|k, _| k.clone())
    }

    pub(crate) fn entries(&self) -> Vec<(K, V)> {
        self.snapshot(|k, e| (k.clone(), e.value.clone()))
    }

    /// Live entries (expired ones are swept first, from shards that have some due).
    pub(crate) fn len(&self) -> usize {
        self.expire_due_and_fire();
        self.entries.load(Ordering::Relaxed) as usize
    }

    pub(crate) fn checksum(&self) -> u64 {
        self.expire_due_and_fire();
        self.checksum.load(Ordering::Relaxed)
    }

    pub(crate) fn metrics(&self) -> CacheMetrics {
        self.expire_due_and_fire();
        let mut m = CacheMetrics::default();
        for s in self.shards.iter() {
            let st = &s.stats;
            m.hits += st.hits.load(Ordering::Relaxed);
            m.misses += st.misses.load(Ordering::Relaxed);
            m.inserts += st.inserts.load(Ordering::Relaxed);
            m.updates += st.updates.load(Ordering::Relaxed);
            m.deletes += st.deletes.load(Ordering::Relaxed);
            m.evictions_capacity += st.ev_capacity.load(Ordering::Relaxed);
            m.evictions_bytes += st.ev_bytes.load(Ordering::Relaxed);
            m.evictions_ttl += st.ev_ttl.load(Ordering::Relaxed);
        }
        m.lookups = m.hits + m.misses;
        m.entries = self.entries.load(Ordering::Relaxed);
        m.bytes = self.bytes.load(Ordering::Relaxed);
        m.spikes = self.spikes.load(Ordering::Relaxed);
        self.loads.add_to(&mut m);
        if m.spikes > 0 {
            m.spike_interval =
                self.spike_gap_sum.load(Ordering::Relaxed) as f64 / m.spikes as f64 / 1e9;
        }
        m
    }

    // ---------------------------------------------------------------- local writes

    /// Stores `value` under `key` if `cond` holds, with a new local version; publishes the change.
    pub(crate) fn write(&self, key: K, value: V, cond: Cond, ttl: Ttl) -> Result<Written<V>> {
        let enc = Encoded::new(&key, &value)?;
        self.check_size(enc.size())?;
        self.write_encoded(key, value, enc, cond, ttl)
    }

    /// Validates every pair first, then stores them one by one: an oversized pair refuses the
    /// whole batch before anything is stored.
    pub(crate) fn write_many(&self, items: Vec<(K, V)>) -> Result<()> {
        let mut encoded = Vec::with_capacity(items.len());
        for (k, v) in items {
            let enc = Encoded::new(&k, &v)?;
            self.check_size(enc.size())?;
            encoded.push((k, v, enc));
        }
        for (k, v, enc) in encoded {
            self.write_encoded(k, v, enc, Cond::Always, Ttl::Cache)?;
        }
        Ok(())
    }

    fn write_encoded(
        &self,
        key: K,
        value: V,
        enc: Encoded,
        cond: Cond,
        ttl: Ttl,
    ) -> Result<Written<V>> {
        // A queue slot for the change before anything is stored: the overload policy may
        // refuse the write (or wait for room) here.
        let reserved = self.core.publisher.enabled() && self.core.publisher.reserve()?;
        let shard = self.shard(&key);
        let mut ev = self.events();
        let (now, wall) = self.core.clock.now_both();
        let mut mutations = 0;
        let fill = match cond {
            Cond::Fill(v) => Some(v),
            _ => None,
        };
        if fill.is_some_and(|v| v <= *self.clear_floor.read()) {
            return Ok(Written {
                old: None,
                version: None,
            });
        }
        // A new key takes its entry slot before it is stored, so `len()` never exceeds
        // `cache_max`, as seen from any thread.
        let slot_reserved = self.reserve_slot_for(shard, &key, None, now, &mut ev);
        let mut used_slot = false;
        let outcome: Result<(Option<V>, Version, bool)> = 'locked: {
            let mut g = shard.lock.write();
            let mut live = g.map.get_index_of(&key);
            if let Some(i) = live
                && g.map[i].expired(now)
            {
                if let Some((k, e)) = self.take_index(&mut g, i) {
                    shard.stats.ev_ttl.fetch_add(1, Ordering::Relaxed);
                    mutations += 1;
                    ev.push(|| self.expire_event(&k, &e, now));
                }
                live = None;
            }
            let found = live.map(|i| g.map[i].version);
            match (cond, found) {
                (Cond::IfAbsent | Cond::Fill(_), Some(_)) | (Cond::IfPresent, None) => {
                    break 'locked Ok((None, Version::ZERO, false));
                }
                (Cond::Fill(v), None) if g.tombs.get(&key).is_some_and(|t| t.version >= v) => {
                    break 'locked Ok((None, Version::ZERO, false));
                }
                (Cond::IfVersion(expected), found) if expected != found => {
                    break 'locked Err(Error::VersionMismatch { expected, found });
                }
                _ => {}
            }
            if !g.tombs.is_empty() {
                g.tombs.swap_remove(&key);
            }
            let version =
                fill.unwrap_or_else(|| Version::new(self.core.hlc.tick(wall), self.core.id));
            let entry = self.new_entry(value, &enc, version, (now, wall), ttl);
            let expires_at = entry.expires_at;
            let old = match live {
                Some(i) => {
                    let slot = &mut g.map[i];
                    let window = self.in_window(slot, now);
                    self.unaccount(slot);
                    self.account(&entry);
                    let old = std::mem::replace(slot, entry);
                    shard.stats.updates.fetch_add(1, Ordering::Relaxed);
                    ev.push(|| ChangeEvent {
                        key: key.clone(),
                        kind: ChangeKind::Update,
                        origin: Origin::Local,
                        version,
                        in_callback_window: window,
                    });
                    Some(old.value)
                }
                None => {
                    used_slot = self.account_new(&entry, slot_reserved);
                    ev.push(|| ChangeEvent {
                        key: key.clone(),
                        kind: ChangeKind::Insert,
                        origin: Origin::Local,
                        version,
                        in_callback_window: false,
                    });
                    g.map.insert(key, entry);
                    shard.stats.inserts.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            mutations += 1;
            if expires_at != 0 {
                shard.next_expiry.fetch_min(expires_at, Ordering::Relaxed);
            }
            Ok((old, version, live.is_none()))
        };
        if slot_reserved && !used_slot {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        for _ in 0..mutations {
            self.note_mutation(now);
        }
        let result = match outcome {
            Ok((old, version, new_key)) if version != Version::ZERO => {
                if fill.is_none() {
                    self.publish_put(&enc, version, ttl, reserved);
                    self.backing_wrote(&enc, ttl);
                } else if self.cfg.mode != CacheMode::Invalidate {
                    self.publish_put(&enc, version, ttl, reserved);
                } else if reserved {
                    self.core.publisher.release();
                }
                if new_key {
                    self.enforce_caps(version, now, &mut ev);
                }
                Ok(Written {
                    old,
                    version: Some(version),
                })
            }
            Ok((old, _, _)) => Ok(Written { old, version: None }),
            Err(e) => Err(e),
        };
        if reserved
            && !matches!(
                result,
                Ok(Written {
                    version: Some(_),
                    ..
                })
            )
        {
            self.core.publisher.release();
        }
        self.fire(ev);
        result
    }

    fn publish_put(&self, enc: &Encoded, version: Version, ttl: Ttl, reserved: bool) {
        let p = &self.core.publisher;
        if !p.enabled() {
            return;
        }
        let op = if self.cfg.mode == CacheMode::Invalidate {
            Op::Inval
        } else {
            let ttl_ms = match ttl {
                Ttl::Cache => None,
                Ttl::Entry(d) => Some(d.as_millis() as u64),
            };
            Op::Put {
                value: enc.value().to_vec(),
                ttl_ms,
            }
        };
        self.publish(
            Record {
                key: enc.key().to_vec(),
                version,
                op,
            },
            reserved,
        );
    }

    fn publish(&self, record: Record, reserved: bool) {
        let change = Change {
            cache: self.name.clone(),
            kind: ChangeKindWire::Record(record),
        };
        if reserved {
            self.core.publisher.publish_reserved(change);
        } else {
            self.core.publisher.publish(change);
        }
    }

    /// Removes `key`, leaving a tombstone; publishes a delete. Returns the removed value.
    pub(crate) fn remove(&self, key: &K) -> Result<Option<V>> {
        let key_bytes = rmp_serde::to_vec(key).map_err(ser_err)?;
        let reserved = self.core.publisher.enabled() && self.core.publisher.reserve()?;
        let shard = self.shard(key);
        let mut ev = self.events();
        let (now, wall) = self.core.clock.now_both();
        let removed = {
            let mut g = shard.lock.write();
            match g.map.get_index_of(key) {
                None => None,
                Some(i) => {
                    let expired = g.map[i].expired(now);
                    match self.take_index(&mut g, i) {
                        Some((k, e)) if expired => {
                            shard.stats.ev_ttl.fetch_add(1, Ordering::Relaxed);
                            ev.push(|| self.expire_event(&k, &e, now));
                            self.note_mutation(now);
                            None
                        }
                        Some((k, e)) => {
                            let version = Version::new(self.core.hlc.tick(wall), self.core.id);
                            let window = self.in_window(&e, now);
                            shard.stats.deletes.fetch_add(1, Ordering::Relaxed);
                            ev.push(|| ChangeEvent {
                                key: k.clone(),
                                kind: ChangeKind::Remove,
                                origin: Origin::Local,
                                version,
                                in_callback_window: window,
                            });
                            let bucket = bucket_of(&key_bytes);
                            g.tombs.insert(
                                k,
                                Tomb {
                                    version,
                                    at_nanos: now,
                                    key_bytes: key_bytes.clone().into(),
                                    bucket,
                                },
                            );
                            self.note_mutation(now);
                            Some((e.value, version))
                        }
                        None => None,
                    }
                }
            }
        };
        self.backing_removed(&key_bytes);
        let out = removed.map(|(v, version)| {
            if self.core.publisher.enabled() {
                self.publish(
                    Record {
                        key: key_bytes,
                        version,
                        op: Op::Del,
                    },
                    reserved,
                );
            }
            v
        });
        if reserved && out.is_none() {
            self.core.publisher.release();
        }
        self.fire(ev);
        Ok(out)
    }

    /// Removes every entry older than `version` and raises the clear floor.
    fn clear_at(&self, version: Version, origin: Origin) {
        {
            let mut floor = self.clear_floor.write();
            if version > *floor {
                *floor = version;
            }
        }
        let now = self.core.clock.now_nanos();
        for shard in self.shards.iter() {
            let mut ev = self.events();
            {
                let mut g = shard.lock.write();
                let mut n = 0u64;
                g.map.retain(|k, e| {
                    if e.version >= version {
                        return true;
                    }
                    self.unaccount(e);
                    n += 1;
                    ev.push(|| ChangeEvent {
                        key: k.clone(),
                        kind: ChangeKind::Clear,
                        origin,
                        version,
                        in_callback_window: self.in_window(e, now),
                    });
                    false
                });
                g.tombs.retain(|_, t| t.version > version);
                g.hand = 0;
                shard.stats.deletes.fetch_add(n, Ordering::Relaxed);
                for _ in 0..n {
                    self.note_mutation(now);
                }
            }
            self.fire(ev);
        }
    }

    pub(crate) fn clear(&self) {
        let version = Version::new(self.core.hlc.tick(self.core.clock.wall_ms()), self.core.id);
        self.clear_at(version, Origin::Local);
        self.backing_cleared();
        if self.core.publisher.enabled() {
            self.core.publisher.publish(Change {
                cache: self.name.clone(),
                kind: ChangeKindWire::Clear(version),
            });
        }
    }

    // ---------------------------------------------------------------- expiry and eviction

    /// Sweeps expired entries from shards whose earliest expiry has passed.
    fn expire_due(&self, now: u64, ev: &mut Events<K>) {
        for shard in self.shards.iter() {
            if shard.next_expiry.load(Ordering::Relaxed) <= now {
                self.sweep_shard(shard, now, ev);
            }
        }
    }

    fn expire_due_and_fire(&self) {
        let mut ev = self.events();
        self.expire_due(self.core.clock.now_nanos(), &mut ev);
        self.fire(ev);
    }

    fn sweep_shard(&self, shard: &Shard<K, V>, now: u64, ev: &mut Events<K>) {
        let mut g = shard.lock.write();
        let mut next = u64::MAX;
        let mut n = 0;
        g.map.retain(|k, e| {
            if e.expired(now) {
                self.unaccount(e);
                n += 1;
                ev.push(|| self.expire_event(k, e, now));
                false
            } else {
                if e.expires_at != 0 {
                    next = next.min(e.expires_at);
                }
                true
            }
        });
        if g.hand >= g.map.len() {
            g.hand = 0;
        }
        shard.next_expiry.store(next, Ordering::Relaxed);
        shard.stats.ev_ttl.fetch_add(n, Ordering::Relaxed);
        drop(g);
        for _ in 0..n {
            self.note_mutation(now);
        }
    }

    /// Brings the cache back under both caps after a new key was stored (never evicting the
    /// entry written at `protect`).
    fn enforce_caps(&self, protect: Version, now: u64, ev: &mut Events<K>) {
        let mut swept = false;
        loop {
            let over_entries =
                self.entries.load(Ordering::Relaxed) > self.cfg.max_entries.max(1) as u64;
            let over_bytes = self.bytes.load(Ordering::Relaxed) > self.cfg.max_bytes;
            if !over_entries && !over_bytes {
                return;
            }
            if !swept {
                swept = true;
                self.expire_due(now, ev);
                continue;
            }
            if !self.evict_one(over_entries, protect, now, ev) {
                return;
            }
        }
    }

    fn evict_one(&self, capacity: bool, protect: Version, now: u64, ev: &mut Events<K>) -> bool {
        // Two rounds: the first may only clear referenced bits everywhere.
        let n = self.shards.len();
        for _ in 0..2 * n {
            let si = self.evict_hand.fetch_add(1, Ordering::Relaxed) & (n - 1);
            if self.clock_evict(&self.shards[si], capacity, protect, now, ev) {
                return true;
            }
        }
        false
    }

    /// CLOCK over one shard's dense order: clears referenced bits until it finds an
    /// unreferenced (or expired) entry other than `protect`, and removes it. Gives up after one
    /// pass over the shard, leaving the hand where it stopped, so the global hand moves on to
    /// the next shard (bits cleared here are checked on the next visit).
    fn clock_evict(
        &self,
        shard: &Shard<K, V>,
        capacity: bool,
        protect: Version,
        now: u64,
        ev: &mut Events<K>,
    ) -> bool {
        let mut g = shard.lock.write();
        let len = g.map.len();
        if len == 0 {
            return false;
        }
        for _ in 0..len {
            if g.hand >= g.map.len() {
                g.hand = 0;
            }
            let hand = g.hand;
            let e = &g.map[hand];
            if e.version == protect {
                g.hand += 1;
                continue;
            }
            let expired = e.expired(now);
            if !expired && e.referenced.swap(false, Ordering::Relaxed) {
                g.hand += 1;
                continue;
            }
            let Some((k, e)) = self.take_index(&mut g, hand) else {
                return false;
            };
            let (counter, kind) = if expired {
                (&shard.stats.ev_ttl, ChangeKind::Expire)
            } else if capacity {
                (&shard.stats.ev_capacity, ChangeKind::Evict)
            } else {
                (&shard.stats.ev_bytes, ChangeKind::Evict)
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(g);
            self.note_mutation(now);
            ev.push(|| ChangeEvent {
                key: k,
                kind,
                origin: Origin::Local,
                version: e.version,
                in_callback_window: self.in_window(&e, now),
            });
            return true;
        }
        false
    }

    /// Drops tombstones older than `ttl`, raising the horizon to the newest one dropped (the
    /// horizon is raised before the tombstone goes, so no record slips in between).
    fn gc_tombs(&self, ttl: Duration) {
        let now = self.core.clock.now_nanos();
        let ttl = ttl.as_nanos().min(u64::MAX as u128) as u64;
        for shard in self.shards.iter() {
            let stale = {
                let g = shard.lock.read();
                g.tombs
                    .values()
                    .filter(|t| now.saturating_sub(t.at_nanos) > ttl)
                    .map(|t| t.version)
                    .max()
            };
            if let Some(newest) = stale {
                let mut g = shard.lock.write();
                let mut top = newest;
                g.tombs.retain(|_, t| {
                    let keep = now.saturating_sub(t.at_nanos) <= ttl;
                    if !keep {
                        top = top.max(t.version);
                    }
                    keep
                });
                self.raise_horizon_to(top);
            }
        }
    }

    fn raise_horizon_to(&self, version: Version) {
        let mut h = self.horizon.write();
        if version > *h {
            *h = version;
        }
    }

    /// Drops the live entry of `key_bytes` if it is held at exactly `version`; no tombstone,
    /// nothing published (a local decision, like an eviction). Raises the horizon first.
    fn drop_doubtful_entry(&self, key_bytes: &[u8], version: Version) -> bool {
        let Some(key) = Self::decode_key(key_bytes) else {
            return false;
        };
        self.raise_horizon_to(version);
        let shard = self.shard(&key);
        let mut ev = self.events();
        let now = self.core.clock.now_nanos();
        let dropped = {
            let mut g = shard.lock.write();
            match g.map.get_index_of(&key) {
                Some(i) if g.map[i].version == version => match self.take_index(&mut g, i) {
                    Some((k, e)) => {
                        shard.stats.ev_capacity.fetch_add(1, Ordering::Relaxed);
                        ev.push(|| ChangeEvent {
                            key: k,
                            kind: ChangeKind::Evict,
                            origin: Origin::Local,
                            version: e.version,
                            in_callback_window: self.in_window(&e, now),
                        });
                        true
                    }
                    None => false,
                },
                _ => false,
            }
        };
        if dropped {
            self.note_mutation(now);
        }
        self.fire(ev);
        dropped
    }

    // ---------------------------------------------------------------- listeners

    pub(crate) fn on_change(&self, f: Listener<K>) -> ListenerId {
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        let mut l = self.listeners.write();
        l.push((id, f));
        self.listener_count.store(l.len(), Ordering::Release);
        ListenerId(id)
    }

    pub(crate) fn remove_listener(&self, id: ListenerId) -> bool {
        let mut l = self.listeners.write();
        let before = l.len();
        l.retain(|(i, _)| *i != id.0);
        self.listener_count.store(l.len(), Ordering::Release);
        l.len() != before
    }

    fn fire(&self, ev: Events<K>) {
        if ev.list.is_empty() {
            return;
        }
        // Clone the list so listeners may register or remove listeners themselves.
        let listeners: Vec<Listener<K>> = self
            .listeners
            .read()
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for e in &ev.list {
            for f in &listeners {
                f(e);
            }
        }
    }

    // ---------------------------------------------------------------- remote side

    fn decode_key(bytes: &[u8]) -> Option<K> {
        rmp_serde::from_slice(bytes).ok()
    }

    fn apply_remote_inner(&self, rec: &Record, origin: NodeId) -> Applied {
        let Some(key) = Self::decode_key(&rec.key) else {
            return Applied::Undecodable;
        };
        self.core.hlc.observe(rec.version.hlc);
        if rec.version <= *self.clear_floor.read() {
            return Applied::Stale;
        }
        let origin_ev = Origin::Remote(origin);
        let put = match &rec.op {
            Op::Put { value, ttl_ms } if self.cfg.mode != CacheMode::Invalidate => {
                let Ok(v) = rmp_serde::from_slice::<V>(value) else {
                    return Applied::Undecodable;
                };
                let enc = Encoded::from_parts(&rec.key, value);
                if enc.size() > self.cfg.max_bytes {
                    return Applied::Skipped;
                }
                let ttl = match ttl_ms {
                    None => Ttl::Cache,
                    Some(ms) => Ttl::Entry(Duration::from_millis(*ms)),
                };
                Some((v, enc, ttl))
            }
            _ => None,
        };
        let shard = self.shard(&key);
        let mut ev = self.events();
        let (now, wall) = self.core.clock.now_both();
        let version = rec.version;
        let mut new_key = false;
        let reserved =
            put.is_some() && self.reserve_slot_for(shard, &key, Some(version), now, &mut ev);
        let mut used_slot = false;
        let applied = {
            let mut g = shard.lock.write();
            let tomb_newer = g.tombs.get(&key).is_some_and(|t| version <= t.version);
            let mut live = g.map.get_index_of(&key);
            if let Some(i) = live
                && g.map[i].expired(now)
            {
                if let Some((k, e)) = self.take_index(&mut g, i) {
                    shard.stats.ev_ttl.fetch_add(1, Ordering::Relaxed);
                    self.note_mutation(now);
                    ev.push(|| self.expire_event(&k, &e, now));
                }
                live = None;
            }
            if tomb_newer || live.is_some_and(|i| version <= g.map[i].version) {
                Applied::Stale
            } else if live.is_none()
                && !g.tombs.contains_key(&key)
                && version <= *self.horizon.read()
            {
                // Not held, and its delete may have been forgotten here.
                Applied::BelowHorizon
            } else {
                match put {
                    Some((value, enc, ttl)) => {
                        if live.is_none() && self.cfg.mode == CacheMode::UpdateIfPresent {
                            Applied::Skipped
                        } else {
                            let entry = self.new_entry(value, &enc, version, (now, wall), ttl);
                            if entry.expires_at != 0 {
                                shard
                                    .next_expiry
                                    .fetch_min(entry.expires_at, Ordering::Relaxed);
                            }
                            match live {
                                Some(i) => {
                                    let slot = &mut g.map[i];
                                    let window = self.in_window(slot, now);
                                    self.unaccount(slot);
                                    self.account(&entry);
                                    *slot = entry;
                                    shard.stats.updates.fetch_add(1, Ordering::Relaxed);
                                    ev.push(|| ChangeEvent {
                                        key: key.clone(),
                                        kind: ChangeKind::Update,
                                        origin: origin_ev,
                                        version,
                                        in_callback_window: window,
                                    });
                                }
                                None => {
                                    used_slot = self.account_new(&entry, reserved);
                                    g.map.insert(key.clone(), entry);
                                    shard.stats.inserts.fetch_add(1, Ordering::Relaxed);
                                    new_key = true;
                                    ev.push(|| ChangeEvent {
                                        key: key.clone(),
                                        kind: ChangeKind::Insert,
                                        origin: origin_ev,
                                        version,
                                        in_callback_window: false,
                                    });
                                }
                            }
                            g.tombs.swap_remove(&key);
                            self.note_mutation(now);
                            Applied::Changed
                        }
                    }
                    None => {
                        // Del, Inval, or a Put into an invalidate-mode cache.
                        if let Some(i) = live
                            && let Some((k, e)) = self.take_index(&mut g, i)
                        {
                            shard.stats.deletes.fetch_add(1, Ordering::Relaxed);
                            self.note_mutation(now);
                            ev.push(|| ChangeEvent {
                                key: k,
                                kind: ChangeKind::Remove,
                                origin: origin_ev,
                                version,
                                in_callback_window: self.in_window(&e, now),
                            });
                        }
                        let bucket = bucket_of(&rec.key);
                        g.tombs.insert(
                            key,
                            Tomb {
                                version,
                                at_nanos: now,
                                key_bytes: rec.key.clone().into(),
                                bucket,
                            },
                        );
                        Applied::Changed
                    }
                }
            }
        };
        if reserved && !used_slot {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        if new_key {
            self.enforce_caps(version, now, &mut ev);
        }
        self.fire(ev);
        applied
    }

    fn record_of(&self, key_bytes: &[u8], key: &K, e: &Entry<V>) -> Option<Record> {
        let op = if self.cfg.mode == CacheMode::Invalidate {
            Op::Inval
        } else {
            Op::Put {
                value: rmp_serde::to_vec(&e.value).ok()?,
                ttl_ms: e.ttl_ms,
            }
        };
        let key = if key_bytes.is_empty() {
            rmp_serde::to_vec(key).ok()?
        } else {
            key_bytes.to_vec()
        };
        Some(Record {
            key,
            version: e.version,
            op,
        })
    }
}

impl<K: CacheKey, V: CacheValue> ErasedCache for Store<K, V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_names(&self) -> String {
        type_names::<K, V>()
    }

    fn peer_loading(&self, key: &[u8]) {
        self.loads.peer_loading(key, self.core.clock.now_nanos());
    }

    fn apply_remote(&self, record: &Record, origin: NodeId) -> Applied {
        self.apply_remote_inner(record, origin)
    }

    fn apply_clear(&self, version: Version, origin: NodeId) {
        self.core.hlc.observe(version.hlc);
        self.clear_at(version, Origin::Remote(origin));
    }

    fn record(&self, key: &[u8]) -> Option<Record> {
        let k = Self::decode_key(key)?;
        let g = self.shard(&k).lock.read();
        let now = self.core.clock.now_nanos();
        if let Some(e) = g.map.get(&k)
            && !e.expired(now)
        {
            return self.record_of(key, &k, e);
        }
        g.tombs.get(&k).map(|t| Record {
            key: key.to_vec(),
            version: t.version,
            op: Op::Del,
        })
    }

    fn sync_digest(&self) -> SyncDigest {
        self.expire_due_and_fire();
        SyncDigest {
            count: self.entries.load(Ordering::Relaxed),
            checksum: self.checksum.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }

    fn buckets_versions(&self, buckets: &[usize]) -> Vec<Vec<KeyVersion>> {
        // One pass over the shards for all the buckets asked.
        let mut slot = [usize::MAX; SYNC_BUCKETS];
        for (i, &b) in buckets.iter().enumerate() {
            if b < SYNC_BUCKETS {
                slot[b] = i;
            }
        }
        let mut out: Vec<Vec<KeyVersion>> = vec![Vec::new(); buckets.len()];
        let now = self.core.clock.now_nanos();
        for shard in self.shards.iter() {
            let g = shard.lock.read();
            for (k, e) in g.map.iter() {
                let i = slot[e.bucket as usize];
                if i != usize::MAX
                    && !e.expired(now)
                    && let Ok(key) = rmp_serde::to_vec(k)
                {
                    out[i].push(KeyVersion {
                        key,
                        version: e.version,
                        deleted: false,
                    });
                }
            }
            for t in g.tombs.values() {
                let i = slot[t.bucket as usize];
                if i != usize::MAX {
                    out[i].push(KeyVersion {
                        key: t.key_bytes.to_vec(),
                        version: t.version,
                        deleted: true,
                    });
                }
            }
        }
        out
    }

    fn bucket_versions(&self, bucket: usize) -> Vec<KeyVersion> {
        let now = self.core.clock.now_nanos();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let g = shard.lock.read();
            for (k, e) in g.map.iter() {
                if e.bucket as usize == bucket
                    && !e.expired(now)
                    && let Ok(key) = rmp_serde::to_vec(k)
                {
                    out.push(KeyVersion {
                        key,
                        version: e.version,
                        deleted: false,
                    });
                }
            }
            for t in g.tombs.values() {
                if t.bucket as usize == bucket {
                    out.push(KeyVersion {
                        key: t.key_bytes.to_vec(),
                        version: t.version,
                        deleted: true,
                    });
                }
            }
        }
        out
    }

    fn snapshot_chunk(&self, cursor: u64, max_bytes: usize) -> (Vec<Record>, Option<u64>) {
        let now = self.core.clock.now_nanos();
        let mut out = Vec::new();
        let mut weight = 0usize;
        let mut si = (cursor >> 32) as usize;
        let mut pos = (cursor & 0xffff_ffff) as usize;
        while si < self.shards.len() {
            let g = self.shards[si].lock.read();
            let total = g.map.len() + g.tombs.len();
            while pos < total {
                let rec = if pos < g.map.len() {
                    g.map.get_index(pos).and_then(|(k, e)| {
                        if e.expired(now) {
                            None
                        } else {
                            self.record_of(&[], k, e)
                        }
                    })
                } else {
                    g.tombs.get_index(pos - g.map.len()).map(|(_, t)| Record {
                        key: t.key_bytes.to_vec(),
                        version: t.version,
                        op: Op::Del,
                    })
                };
                pos += 1;
                if let Some(r) = rec {
                    weight += r.weight();
                    out.push(r);
                    if weight >= max_bytes {
                        let (nsi, npos) = if pos < total { (si, pos) } else { (si + 1, 0) };
                        let next =
                            (nsi < self.shards.len()).then_some(((nsi as u64) << 32) | npos as u64);
                        return (out, next);
                    }
                }
            }
            drop(g);
            si += 1;
            pos = 0;
        }
        (out, None)
    }

    fn housekeep(&self, tombstone_ttl: Duration) {
        let mut ev = self.events();
        let now = self.core.clock.now_nanos();
        for shard in self.shards.iter() {
            if shard.next_expiry.load(Ordering::Relaxed) <= now {
                self.sweep_shard(shard, now, &mut ev);
            }
        }
        self.fire(ev);
        self.gc_tombs(tombstone_ttl);
    }

    fn clear_all(&self) {
        self.clear();
    }

    fn clear_floor(&self) -> Version {
        *self.clear_floor.read()
    }

    fn horizon(&self) -> Version {
        *self.horizon.read()
    }

    fn raise_horizon(&self, version: Version) {
        self.core.hlc.observe(version.hlc);
        self.raise_horizon_to(version);
    }

    fn drop_doubtful(&self, key: &[u8], version: Version) -> bool {
        self.drop_doubtful_entry(key, version)
    }

    fn metrics(&self) -> CacheMetrics {
        Store::metrics(self)
    }

    fn key_checksum(&self, key: &[u8]) -> Option<u32> {
        let k = Self::decode_key(key)?;
        Store::key_checksum(self, &k)
    }
}

/// `"K, V"` type names, as type-mismatch errors show them.
pub(crate) fn type_names<K, V>() -> String {
    format!(
        "{}, {}",
        std::any::type_name::<K>(),
        std::any::type_name::<V>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::clock::FakeClock;
    use crate::cache::hooks::Publisher;
    use crate::node::Node;
    use crate::{Cache, Config};
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder(StdMutex<Vec<Change>>);

    impl Publisher for Recorder {
        fn publish(&self, change: Change) {
            self.0.lock().unwrap().push(change);
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<Change> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn setup(config: Config) -> (Node, Arc<Recorder>, Arc<FakeClock>) {
        let rec = Arc::new(Recorder::default());
        let clock = Arc::new(FakeClock::new());
        let node = Node::start_with(config, rec.clone(), clock.clone(), None).unwrap();
        (node, rec, clock)
    }

    fn bytes<T: Serialize>(t: &T) -> Vec<u8> {
        rmp_serde::to_vec(t).unwrap()
    }

    fn put(key: u32, value: u32, version: Version) -> Record {
        Record {
            key: bytes(&key),
            version,
            op: Op::Put {
                value: bytes(&value),
                ttl_ms: None,
            },
        }
    }

    /// A peer's version `ms` milliseconds after the fake clock's wall origin.
    fn remote(ms: u64) -> Version {
        Version::new((1_700_000_000_000 + ms) << 16, NodeId(7))
    }

    fn erased(node: &Node, name: &str) -> Arc<dyn ErasedCache> {
        node.erased(name).unwrap()
    }

    #[test]
    fn local_writes_publish_versioned_records() {
        let (node, rec, _) = setup(Config::default());
        let c: Cache<u32, u32> = node.cache("p").unwrap();
        c.insert(1, 10).unwrap();
        c.insert_with_ttl(2, 20, Duration::from_secs(3)).unwrap();
        c.remove(&1).unwrap();
        c.remove(&99).unwrap(); // absent: nothing published
        c.clear();
        let out = rec.take();
        assert_eq!(out.len(), 4);
        let recs: Vec<&Record> = out
            .iter()
            .filter_map(|c| match &c.kind {
                ChangeKindWire::Record(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(
            recs[0].op,
            Op::Put {
                value: bytes(&10u32),
                ttl_ms: None
            }
        );
        assert_eq!(
            recs[1].op,
            Op::Put {
                value: bytes(&20u32),
                ttl_ms: Some(3000)
            }
        );
        assert_eq!(recs[2].op, Op::Del);
        assert_eq!(recs[0].key, bytes(&1u32));
        assert!(recs[0].version < recs[1].version && recs[1].version < recs[2].version);
        assert!(recs.iter().all(|r| r.version.node == node.id()));
        assert!(matches!(out[3].kind, ChangeKindWire::Clear(v) if v > recs[2].version));
        assert_eq!(&*out[0].cache, "p");
    }

    #[test]
    fn invalidate_mode_publishes_inval_and_applies_puts_as_invalidations() {
        let config = Config {
            cache_mode: CacheMode::Invalidate,
            ..Config::default()
        };
        let (node, rec, _) = setup(config);
        let c: Cache<u32, u32> = node.cache("i").unwrap();
        c.insert(1, 10).unwrap();
        let out = rec.take();
        assert!(matches!(&out[0].kind, ChangeKindWire::Record(r) if r.op == Op::Inval));
        let e = erased(&node, "i");
        let v = Version::new(node.core().hlc.peek() + 1, NodeId(7));
        assert_eq!(e.apply_remote(&put(1, 11, v), NodeId(7)), Applied::Changed);
        assert_eq!(c.get(&1), None);
        // The invalidation is a floor for older puts.
        let older = Version::new(v.hlc - 1, NodeId(7));
        assert_eq!(
            e.apply_remote(&put(1, 12, older), NodeId(7)),
            Applied::Stale
        );
        assert!(
            rec.take().is_empty(),
            "remote applies are never re-published"
        );
    }

    #[test]
    fn remote_apply_orders_by_version_with_tombstones_and_clear_floor() {
        let (node, _, _) = setup(Config::default());
        let c: Cache<u32, u32> = node.cache("r").unwrap();
        let e = erased(&node, "r");
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        c.on_change(move |ev| s.lock().unwrap().push((ev.kind, ev.origin)));

        assert_eq!(
            e.apply_remote(&put(1, 1, remote(100)), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(c.get(&1), Some(1));
        assert_eq!(
            e.apply_remote(&put(1, 2, remote(99)), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(
            e.apply_remote(&put(1, 1, remote(100)), NodeId(7)),
            Applied::Stale
        );
        let del = Record {
            key: bytes(&1u32),
            version: remote(101),
            op: Op::Del,
        };
        assert_eq!(e.apply_remote(&del, NodeId(7)), Applied::Changed);
        assert_eq!(c.get(&1), None);
        // An older put can't resurrect the key; a newer one can.
        assert_eq!(
            e.apply_remote(&put(1, 3, remote(100)), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(e.record(&bytes(&1u32)).unwrap().op, Op::Del);
        assert_eq!(
            e.apply_remote(&put(1, 4, remote(102)), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(c.get(&1), Some(4));
        // Local writes version after everything observed.
        c.insert(2, 2).unwrap();
        assert!(c.get_with_version(&2).unwrap().1 > remote(102));
        // Clear floor.
        e.apply_clear(remote(2000), NodeId(7));
        assert!(c.is_empty());
        assert_eq!(
            e.apply_remote(&put(3, 3, remote(1500)), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(
            e.apply_remote(&put(3, 3, remote(2001)), NodeId(7)),
            Applied::Changed
        );
        // Garbage.
        let bad = Record {
            key: vec![0xc1],
            version: remote(3000),
            op: Op::Del,
        };
        assert_eq!(e.apply_remote(&bad, NodeId(7)), Applied::Undecodable);
        let bad_val = Record {
            key: bytes(&5u32),
            version: remote(3000),
            op: Op::Put {
                value: vec![0xc1, 0xff],
                ttl_ms: None,
            },
        };
        assert_eq!(e.apply_remote(&bad_val, NodeId(7)), Applied::Undecodable);

        let r = Origin::Remote(NodeId(7));
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[..4],
            [
                (ChangeKind::Insert, r),
                (ChangeKind::Remove, r),
                (ChangeKind::Insert, r),
                (ChangeKind::Insert, Origin::Local)
            ]
        );
        assert!(seen.contains(&(ChangeKind::Clear, r)));
    }

    #[test]
    fn collected_tombstones_raise_a_horizon_that_refuses_older_records_for_absent_keys() {
        let (node, _, clock) = setup(Config::default());
        let c: Cache<u32, u32> = node.cache("h").unwrap();
        let e = erased(&node, "h");
        assert_eq!(e.horizon(), Version::ZERO);
        e.apply_remote(&put(1, 1, remote(100)), NodeId(7));
        e.apply_remote(&put(2, 2, remote(100)), NodeId(7));
        let del = Record {
            key: bytes(&1u32),
            version: remote(200),
            op: Op::Del,
        };
        assert_eq!(e.apply_remote(&del, NodeId(7)), Applied::Changed);
        // Young tombstones stay; the horizon only moves when one is collected.
        e.housekeep(Duration::from_secs(60));
        assert_eq!(e.horizon(), Version::ZERO);
        clock.advance(Duration::from_secs(61));
        e.housekeep(Duration::from_secs(60));
        assert_eq!(e.horizon(), remote(200));
        assert!(e.record(&bytes(&1u32)).is_none(), "tombstone collected");
        // The late copy of the deleted write is refused, not re-introduced...
        assert_eq!(
            e.apply_remote(&put(1, 1, remote(100)), NodeId(7)),
            Applied::BelowHorizon
        );
        assert_eq!(c.get(&1), None);
        // ...while a newer write, and updates of keys still held, apply as usual.
        assert_eq!(
            e.apply_remote(&put(1, 5, remote(201)), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(
            e.apply_remote(&put(2, 3, remote(150)), NodeId(7)),
            Applied::Changed
        );
        // Dropping in doubt removes only the version named, without a tombstone.
        assert!(!e.drop_doubtful(&bytes(&2u32), remote(149)));
        assert!(e.drop_doubtful(&bytes(&2u32), remote(150)));
        assert_eq!(c.get(&2), None);
        assert!(e.record(&bytes(&2u32)).is_none());
        assert_eq!(e.horizon(), remote(200));
    }

    #[test]
    fn update_if_present_mode_skips_puts_for_absent_keys() {
        let config = Config {
            cache_mode: CacheMode::UpdateIfPresent,
            ..Config::default()
        };
        let (node, _, _) = setup(config);
        let c: Cache<u32, u32> = node.cache("u").unwrap();
        let e = erased(&node, "u");
        assert_eq!(
            e.apply_remote(&put(1, 1, remote(100)), NodeId(7)),
            Applied::Skipped
        );
        assert!(!c.contains_key(&1));
        c.insert(1, 0).unwrap();
        let v = Version::new(node.core().hlc.peek() + 1, NodeId(7));
        assert_eq!(e.apply_remote(&put(1, 5, v), NodeId(7)), Applied::Changed);
        assert_eq!(c.get(&1), Some(5));
    }

    #[test]
    fn remote_ttl_is_counted_on_the_local_clock() {
        let (node, _, clock) = setup(Config {
            cache_ttl: 0.0,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("t").unwrap();
        let e = erased(&node, "t");
        let rec = Record {
            key: bytes(&1u32),
            version: remote(1), // written "long ago" by the peer's clock
            op: Op::Put {
                value: bytes(&1u32),
                ttl_ms: Some(1000),
            },
        };
        assert_eq!(e.apply_remote(&rec, NodeId(7)), Applied::Changed);
        assert_eq!(c.get(&1), Some(1));
        clock.advance(Duration::from_millis(1001));
        assert_eq!(c.get(&1), None);
        // An expiring entry leaves no tombstone: the record is gone.
        e.housekeep(Duration::from_secs(60));
        assert!(e.record(&bytes(&1u32)).is_none());
        assert_eq!(e.metrics().evictions_ttl, 1);
    }

    #[test]
    fn digest_buckets_and_snapshot_cover_every_entry_and_tombstone() {
        let (node, _, _) = setup(Config {
            cache_max: 10_000,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("d").unwrap();
        for i in 0..500 {
            c.insert(i, i * 3).unwrap();
        }
        for i in 0..50 {
            c.remove(&i).unwrap();
        }
        let e = erased(&node, "d");
        let d = e.sync_digest();
        assert_eq!(d.count, 450);
        assert_eq!(d.checksum, c.checksum());
        assert_eq!(
            d.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b)),
            d.checksum
        );
        let mut listed = 0;
        let mut deleted = 0;
        for b in 0..SYNC_BUCKETS {
            for kv in e.bucket_versions(b) {
                assert_eq!(crc32fast::hash(&kv.key) as usize % SYNC_BUCKETS, b);
                listed += 1;
                deleted += kv.deleted as usize;
            }
        }
        assert_eq!((listed, deleted), (500, 50));
        let mut cursor = 0;
        let mut recs = Vec::new();
        loop {
            let (chunk, next) = e.snapshot_chunk(cursor, 1000);
            assert!(chunk.iter().map(Record::weight).sum::<usize>() < 1000 + 64);
            recs.extend(chunk);
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        assert_eq!(recs.len(), 500);
        // Feeding the snapshot to another node reproduces the checksum.
        let (other, _, _) = setup(Config {
            cache_max: 10_000,
            ..Config::default()
        });
        let c2: Cache<u32, u32> = other.cache("d").unwrap();
        let e2 = erased(&other, "d");
        for r in recs.iter().rev() {
            assert_eq!(e2.apply_remote(r, node.id()), Applied::Changed);
        }
        assert_eq!(c2.checksum(), c.checksum());
        assert_eq!(c2.len(), 450);
    }

    #[test]
    fn clock_gives_referenced_entries_a_second_chance() {
        let (node, _, _) = setup(Config {
            cache_max: 4,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("c").unwrap();
        for i in 0..4 {
            c.insert(i, i).unwrap();
        }
        // One full pass clears every insert bit, evicting one entry.
        c.insert(4, 4).unwrap();
        assert_eq!(c.len(), 4);
        // Read the survivors except one; that one must be the next victim.
        let mut live: Vec<u32> = c.keys().into_iter().filter(|k| *k != 4).collect();
        live.sort();
        let victim = live[0];
        for k in &live[1..] {
            c.get(k);
        }
        c.get(&4);
        c.insert(5, 5).unwrap();
        assert!(
            !c.contains_key(&victim),
            "unreferenced {victim} should go first"
        );
        assert_eq!(c.len(), 4);
        assert_eq!(c.metrics().evictions_capacity, 2);
    }

    #[test]
    fn byte_cap_evicts_for_bytes_and_updates_never_evict() {
        // Each u32 key (1..5 bytes) + 10-byte string value.
        let (node, _, _) = setup(Config {
            cache_size: 60,
            cache_max: 100,
            ..Config::default()
        });
        let c: Cache<u32, String> = node.cache("b").unwrap();
        for i in 0..5 {
            c.insert(i, "x".repeat(10)).unwrap();
        }
        assert_eq!(c.len(), 5);
        assert_eq!(c.metrics().bytes, 60);
        // Growing an update overshoots the cap without evicting.
        c.insert(0, "x".repeat(30)).unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(c.metrics().evictions(), 0);
        assert!(c.metrics().bytes > 60);
        // The next new key trims back under the cap.
        c.insert(9, "y".repeat(10)).unwrap();
        let m = c.metrics();
        assert!(m.bytes <= 60, "{m:?}");
        assert!(m.evictions_bytes >= 1 && m.evictions_capacity == 0);
        assert_eq!(c.get(&9), Some("y".repeat(10)));
        assert!(matches!(
            c.insert(10, "z".repeat(100)),
            Err(Error::ExceedsCacheSize { size: 103, max: 60 })
        ));
    }

    #[test]
    fn spikes_count_mutations_within_the_window() {
        let (node, _, clock) = setup(Config {
            callback_win: 1.0,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("s").unwrap();
        c.insert(1, 1).unwrap(); // first mutation: nothing to compare with
        clock.advance(Duration::from_millis(500));
        c.insert(2, 2).unwrap(); // gap 0.5 s
        clock.advance(Duration::from_millis(1500));
        c.insert(3, 3).unwrap(); // gap 1.5 s: not a spike
        clock.advance(Duration::from_millis(250));
        c.remove(&3).unwrap(); // gap 0.25 s
        let m = c.metrics();
        assert_eq!(m.spikes, 2);
        assert!(
            (m.spike_interval - 0.375).abs() < 1e-9,
            "{}",
            m.spike_interval
        );
    }

    #[test]
    fn mix64_spreads_small_inputs() {
        assert_ne!(mix64(1), mix64(2));
        assert_ne!(mix64(0), 0);
    }
}
