//! What a shard holds (entries, tombstones, its CLOCK hand and counters) and the cache-wide
//! accounting of entries, bytes and checksums that every insert and removal keeps exact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use indexmap::IndexMap;
use parking_lot::RwLock;

use super::encoding::Encoded;
use super::events::Events;
use super::table::Table;
use super::{CacheKey, CacheValue, Hasher, Store, Ttl, mix64};
use crate::config::CacheMode;
use crate::error::{Error, Result};
use crate::proto::version::Version;

/// One stored value and its bookkeeping.
pub(super) struct Entry<V> {
    pub(super) value: V,
    pub(super) version: Version,
    /// Serialized key + value bytes (saturating; accounted as stored, so always in balance).
    pub(super) size: u32,
    /// Wall ms of the last write on this node.
    pub(super) written_ms: u64,
    /// Monotonic nanos when the entry expires; 0 = never.
    pub(super) expires_at: u64,
    /// Per-entry TTL in ms as replicated; [`CACHE_TTL`]: the cache's TTL. (Not an `Option`:
    /// that would cost 8 more bytes per entry.)
    ttl_ms: u64,
    /// crc32(key ‖ value ‖ version).
    pub(super) crc: u32,
    /// crc32(value).
    pub(super) value_crc: u32,
    pub(super) bucket: u8,
    pub(super) referenced: AtomicBool,
    /// Monotonic ms + 1 of the last read hit; 0 = never read.
    pub(super) last_lookup: AtomicU64,
}

/// `Entry::ttl_ms` of an entry that follows the cache's TTL.
const CACHE_TTL: u64 = u64::MAX;

impl<V> Entry<V> {
    /// The per-entry TTL in ms as replicated (`None`: the cache's TTL).
    pub(super) fn ttl_ms(&self) -> Option<u64> {
        (self.ttl_ms != CACHE_TTL).then_some(self.ttl_ms)
    }

    pub(super) fn digest(&self) -> u64 {
        mix64(self.crc as u64)
    }

    pub(super) fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

/// A deleted key: remembered so that an older put arriving late cannot bring it back.
pub(super) struct Tomb {
    pub(super) version: Version,
    pub(super) at_nanos: u64,
    pub(super) key_bytes: Box<[u8]>,
    pub(super) bucket: u8,
}

pub(super) struct ShardMap<K, V> {
    pub(super) map: Table<K, Entry<V>>,
    pub(super) tombs: IndexMap<K, Tomb, Hasher>,
    /// The CLOCK hand: an index into `map`'s dense order.
    pub(super) hand: usize,
}

/// A shard's counters (striped: threads on different shards never share a counter line).
#[derive(Default)]
pub(super) struct Stats {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) inserts: AtomicU64,
    pub(super) updates: AtomicU64,
    pub(super) deletes: AtomicU64,
    pub(super) ev_capacity: AtomicU64,
    pub(super) ev_bytes: AtomicU64,
    pub(super) ev_ttl: AtomicU64,
}

#[repr(align(128))]
pub(super) struct Shard<K, V> {
    pub(super) lock: RwLock<ShardMap<K, V>>,
    /// Lower bound of the earliest `expires_at` in the shard; `u64::MAX` if none.
    pub(super) next_expiry: AtomicU64,
    pub(super) stats: Stats,
}

impl<K, V> Shard<K, V> {
    pub(super) fn new(hasher: Hasher) -> Shard<K, V> {
        Shard {
            lock: RwLock::new(ShardMap {
                map: Table::with_hasher(hasher),
                tombs: IndexMap::with_hasher(hasher),
                hand: 0,
            }),
            next_expiry: AtomicU64::new(u64::MAX),
            stats: Stats::default(),
        }
    }
}

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    pub(super) fn account(&self, e: &Entry<V>) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.account_bytes(e);
    }

    fn account_bytes(&self, e: &Entry<V>) {
        self.bytes.fetch_add(e.size as u64, Ordering::Relaxed);
        self.checksum.fetch_add(e.digest(), Ordering::Relaxed);
        self.buckets[e.bucket as usize].fetch_add(e.digest(), Ordering::Relaxed);
    }

    /// Accounts a new entry; with `reserved`, its entry slot was already taken by
    /// [`Self::reserve_slot_for`]. Returns whether the reservation was used.
    pub(super) fn account_new(&self, e: &Entry<V>, reserved: bool) -> bool {
        if !reserved {
            self.account(e);
            return false;
        }
        self.account_bytes(e);
        true
    }

    pub(super) fn unaccount(&self, e: &Entry<V>) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(e.size as u64, Ordering::Relaxed);
        self.checksum.fetch_sub(e.digest(), Ordering::Relaxed);
        self.buckets[e.bucket as usize].fetch_sub(e.digest(), Ordering::Relaxed);
    }

    /// If `key` is not held (a hint, read before the write lock), takes one entry slot below
    /// `cache_max`, sweeping expired entries and evicting (CLOCK) first when the cache is full.
    /// Returns whether a slot is held; the caller releases it if it ends up not inserting.
    /// (If the key disappears between this check and the write lock, the insert accounts
    /// normally and the caps are enforced right after, as before.)
    pub(super) fn reserve_slot_for(
        &self,
        shard: &Shard<K, V>,
        key: &K,
        hash: u64,
        remote: Option<Version>,
        now: u64,
        ev: &mut Events<K>,
    ) -> bool {
        {
            let g = shard.lock.read();
            if g.map.find_hashed(hash, key).is_some() {
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

    /// Gives back a slot taken by [`Self::reserve_slot_for`] that no insert used.
    pub(super) fn release_slot(&self) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn check_size(&self, size: u64) -> Result<()> {
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

    pub(super) fn new_entry(
        &self,
        value: V,
        enc: &Encoded,
        version: Version,
        (now, wall): (u64, u64),
        ttl: Ttl,
    ) -> Entry<V> {
        let (ttl_nanos, ttl_ms) = match ttl {
            Ttl::Cache => (self.ttl_nanos, CACHE_TTL),
            Ttl::Entry(d) => (nanos(d), (d.as_millis() as u64).min(CACHE_TTL - 1)),
        };
        Entry {
            value,
            version,
            size: enc.size().min(u32::MAX as u64) as u32,
            written_ms: wall,
            expires_at: if ttl_nanos == 0 {
                0
            } else {
                now.saturating_add(ttl_nanos).max(1)
            },
            ttl_ms,
            crc: enc.entry_crc(&version),
            value_crc: enc.value_crc(),
            bucket: enc.bucket(),
            referenced: AtomicBool::new(true),
            last_lookup: AtomicU64::new(0),
        }
    }

    /// Removes the entry at `idx` (expired, evicted, deleted or cleared), keeping the hand valid.
    pub(super) fn take_index(&self, g: &mut ShardMap<K, V>, idx: usize) -> Option<(K, Entry<V>)> {
        let (k, e) = g.map.swap_remove_index(idx)?;
        self.unaccount(&e);
        if g.hand > g.map.len() {
            g.hand = 0;
        }
        Some((k, e))
    }
}

/// A duration in nanoseconds, saturating.
pub(super) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
