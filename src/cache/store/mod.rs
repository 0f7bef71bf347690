//! The typed store behind every [`Cache`](crate::Cache): sharded maps, CLOCK eviction under
//! global caps, TTL, incremental checksums, change events, and the
//! [`ErasedCache`](crate::cache::hooks::ErasedCache) side that the replication layer drives.
//!
//! # Layout
//! The key space is split over a power-of-two number of shards (4 × cores, 16 to 64). Each shard
//! is a `parking_lot::RwLock` over a dense slab of entries with a `hashbrown` index (`table`),
//! padded to its own cache lines, next to its own write counters (striped counters: threads on
//! different shards never share a counter line). Hits and misses are counted per reader thread
//! (`counts`: 64 slots of 64 bytes per cache, one per reader thread alive, plus a shared one),
//! with a relaxed load and store instead of a locked increment. A read takes only its shard's
//! read lock; on a hit it sets the entry's *referenced* bit and last-lookup time, which share
//! one atomic word, with one relaxed load (and a store only when the word changes, at most once
//! a millisecond), so hot keys do not bounce cache lines between readers.
//!
//! # Entries and time
//! An entry keeps 40 bytes besides its value (`entries::Entry`): the version, the serialized
//! size and checksum, and times narrowed to milliseconds of the monotonic clock. Their limits:
//! - **TTL**: exact to the millisecond up to 2³¹ ms (≈ 24.8 days); longer TTLs are kept in
//!   whole seconds (rounded up, so up to 1 s late) up to 2³¹ − 1 s (≈ 68 years; longer ones
//!   are capped there, which covers every `cache_ttl` the config accepts). The write time is
//!   rounded up to the millisecond, so an entry expires between its TTL and 1 ms after, never
//!   before. A per-entry TTL below 1 ms is 1 ms.
//! - **Expiry on a read hit** is decided against the exact clock, but the clock is read only
//!   near the expiry (`reads::expired_on_hit`): the clock's coarse reading, which the
//!   housekeeper refreshes every 10 ms, is never ahead of the clock, and while it is refreshed
//!   it is taken to be less than a second behind, so a hit on an entry whose expiry is more
//!   than a second ahead of it reads no clock (with the default TTL of an hour, reading the
//!   clock on every hit made a hit twice as slow). The cell keeps that bound ready (the
//!   reading plus a second, or none while no housekeeper ticks) in the form of the entry's
//!   stamp, whose top 48 bits are the expiry: the test is one comparison. Without a refreshing housekeeper (a stopped
//!   node) every such hit reads the clock. Each thread also reads it itself every 64 hits on
//!   entries with a TTL, which bounds what a process resuming after being stopped for over a
//!   second can see before its housekeeper runs again: at most 63 hits per thread on entries
//!   that expired while it stood still.
//! - **Last lookup** (metadata and the callback window) is kept modulo 2³¹ ms: exact for reads
//!   less than ≈ 24.8 days ago; an older read may be reported a multiple of that later.
//! - **Write time** (metadata `written`) is monotonic, turned into wall time with the clock's
//!   current offset when asked for.
//! - The value's crc (metadata `crc`) is not kept: `metadata` re-serializes the value.
//!
//! # Caps and eviction
//! `cache_max` (entries) and `cache_size` (serialized key + value bytes) are global to the
//! cache: a cache never evicts while it is under both. Inserting a *new* key that pushes the
//! cache over a cap first sweeps expired entries from shards that have some due, then evicts
//! with CLOCK (second chance): a local insert tries its key's shard first (its write lock is
//! held), then a hand moves round-robin over the shards (remote applies and cap enforcement
//! start there); inside a shard a hand moves over the map's dense order; an entry whose
//! referenced bit is set (by a hit or its insert) has the bit cleared and is passed over; the
//! first unreferenced entry is removed with `swap_remove_index` (O(1)), or, for a local
//! insert whose own shard holds the victim, replaced in place by the new key
//! (`replace_index`, evicted only if the key is stored). An eviction made to find room for a
//! new key hands the victim's entry slot over to that key (the entry count does not move).
//! The key being inserted is never the victim. Updating an existing key never evicts: an update that grows a value may
//! leave the cache above `cache_size` until the next insert of a new key trims it.
//!
//! # Locks and counters
//! A thread waits for at most one shard lock at a time, holding none: a local insert of a new
//! key into a full cache may, holding its own shard's write lock, evict from another shard whose
//! write lock it *tries* (`try_write`, never waiting; a busy shard is skipped), so no two
//! threads can wait on each other. Listeners and the publisher are called after every lock is
//! released. A shard's write counters (inserts, updates, deletes, evictions, spikes and
//! their gap sum) change only under its write lock, so they are bumped with a plain load and
//! store, not a locked read-modify-write. Likewise each shard keeps its share of the 64 sync
//! bucket digests (plain sums, 512 bytes per shard), which the cache's digest and its checksum
//! (their sum) add up under each shard's read lock. The cache-wide counters (entries, bytes,
//! the last mutation time) are atomics on a cache line of their own, apart from the fields
//! every operation only reads.
//!
//! # Files
//! `entries` (what a shard holds, accounting), `counts` (hit and miss counters), `crc` (the
//! protocol's crc32 for short inputs), `mutation`
//! (the upsert and tombstone steps every write path shares), `reads`, `local` (local
//! writes), `remote` (peer records), `eviction` (expiry, CLOCK, tombstone collection),
//! `events` (listeners), `flight` (single flight),
//! `sync` (the `ErasedCache` side: digests, snapshots), `tiered` (the shared tier),
//! `encoding` (the serialized form of a write).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::backing::Backing;
use crate::cache::context::StoreContext;
use crate::cache::event::ChangeEvent;
use crate::config::CacheConfig;
use crate::proto::version::Version;

mod counts;
mod crc;
mod encoding;
mod entries;
mod events;
mod eviction;
mod fastser;
mod flight;
mod local;
mod mutation;
mod reads;
mod remote;
mod sync;
mod table;
#[cfg(test)]
mod testing;
/// The shared-tier side of the store (read-through, load-through, write hooks).
mod tiered;

use entries::{Shard, nanos};
pub(crate) use flight::Flight;

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

/// Most positions one state-transfer chunk passes (under a shard's read lock): a chunk that
/// skips records newer than its `until` still ends, and the joiner asks on.
pub(crate) const SNAPSHOT_SCAN: usize = 16_384;

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

/// A typed cache's whole state. `Cache<K, V>` is an `Arc` of this.
///
/// Laid out in three groups (`repr(C)`, each starting on its own 128-byte line): what every
/// operation reads and nothing writes after construction; the cache-wide counters every insert
/// writes; the locks and rarer state. So a writer's counter updates do not evict the
/// read-mostly fields from the other cores' caches.
#[repr(C)]
pub(crate) struct Store<K, V> {
    // Read-mostly.
    name: Arc<str>,
    cfg: CacheConfig,
    pub(crate) core: Arc<StoreContext>,
    hasher: Hasher,
    shards: Box<[Shard<K, V>]>,
    /// `shards.len() - 1` (a power of two less one): kept, so that a read does not derive it.
    shard_mask: usize,
    /// Hit and miss counts (per reader thread).
    reads: counts::ReadCounts,
    /// The cache's TTL as entries keep it (`entries::encode_ttl`; 0 = none).
    ttl_code: u32,
    /// The clock's coarse reading, when it keeps one in a cell (see `Clock::coarse_cell`).
    coarse: Option<Arc<crate::cache::clock::CoarseCell>>,
    win_ms: u64,
    /// The callback window in nanoseconds (spikes).
    win_nanos: u64,
    /// `core.publisher.enabled()`, kept: a write reads a field, not two virtual calls.
    publishes: bool,
    /// Whether a write asks the publisher for a queue slot first (`Publisher::reserves`).
    reserves: bool,
    listener_count: AtomicUsize,
    _hot: LineBreak,
    // Written by every insert.
    entries: AtomicU64,
    bytes: AtomicU64,
    evict_hand: AtomicUsize,
    /// Lower bound of the earliest `expires_at` in the cache; `u64::MAX` if none.
    next_expiry: AtomicU64,
    last_mutation: AtomicU64,
    _cold: LineBreak,
    clear_floor: RwLock<Version>,
    /// Tombstone horizon: deletes at or below it may have been forgotten here (collected
    /// tombstones, entries dropped in doubt). Records at or below it for keys not held are
    /// refused (docs/PROTOCOL.md, "No resurrection").
    horizon: RwLock<Version>,
    listeners: RwLock<Vec<(u64, Listener<K>)>>,
    next_listener: AtomicU64,
    pub(crate) flights: Mutex<HashMap<K, Arc<Flight<V>>, Hasher>>,
    /// The optional shared tier (see `tiered`).
    backing: OnceLock<Arc<dyn Backing>>,
    /// Loader counters and refresh state of [`Cache::get_or_load`](crate::Cache::get_or_load).
    pub(crate) loads: crate::cache::load::LoadState<K>,
}

/// Shards per cache: four per core, a power of two from 16 to 64. A state-transfer cursor is
/// `shard << 32 | position` ([`crate::cache::hooks::ErasedCache::snapshot_chunk`]).
pub(crate) fn shard_count() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4);
    (cores * 4).next_power_of_two().clamp(16, 64)
}

/// A zero-sized field that starts the next field of a `repr(C)` struct on a new 128-byte line
/// (two 64-byte lines: adjacent-line prefetchers pair them).
#[derive(Default)]
#[repr(align(128))]
struct LineBreak;

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    pub(crate) fn new(name: &str, cfg: CacheConfig, core: Arc<StoreContext>) -> Store<K, V> {
        let n = shard_count();
        let hasher = Hasher::default();
        let shards: Box<[Shard<K, V>]> = (0..n).map(|_| Shard::new(hasher)).collect();
        Store {
            name: Arc::from(name),
            ttl_code: entries::encode_ttl(cfg.ttl.map(nanos).unwrap_or(0).div_ceil(1_000_000)),
            coarse: core.clock.coarse_cell(),
            win_ms: cfg.callback_win.as_millis().min(u64::MAX as u128) as u64,
            win_nanos: nanos(cfg.callback_win),
            publishes: core.publisher.enabled(),
            reserves: core.publisher.enabled() && core.publisher.reserves(),
            cfg,
            core,
            hasher,
            shard_mask: shards.len() - 1,
            shards,
            reads: counts::ReadCounts::new(),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            evict_hand: AtomicUsize::new(0),
            next_expiry: AtomicU64::new(u64::MAX),
            clear_floor: RwLock::new(Version::ZERO),
            horizon: RwLock::new(Version::ZERO),
            last_mutation: AtomicU64::new(0),
            listeners: RwLock::new(Vec::new()),
            _hot: LineBreak,
            _cold: LineBreak,
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

    /// The `touch` word of a read hit now (referenced, coarse last-lookup time): a load from the
    /// clock's cell, which keeps the millisecond form ready, when it has one.
    #[inline]
    fn touch_now(&self) -> u32 {
        match &self.coarse {
            Some(cell) => entries::touch_marked(cell.marked_ms31()),
            None => entries::touch_at(self.core.clock.coarse_nanos()),
        }
    }

    #[inline]
    fn shard(&self, key: &K) -> &Shard<K, V> {
        self.shard_of(self.hasher.hash_one(key))
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> &Shard<K, V> {
        // Middle bits: hashbrown uses the low bits for the slot and the top 7 as the tag.
        &self.shards[(hash >> 32) as usize & self.shard_mask]
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
