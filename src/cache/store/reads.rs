//! Reads: point lookups (the hit path), metadata, whole-cache snapshots and metrics.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use super::entries::Entry;
use super::{CacheKey, CacheValue, Store};
use crate::cache::event::Metadata;
use crate::cache::hooks::SYNC_BUCKETS;
use crate::cache::metrics::CacheMetrics;
use crate::proto::version::Version;

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// A read of one key: counts a lookup, marks the entry referenced and read.
    ///
    /// The hit path hashes once (the shard and the map slot come from the same hash), takes the
    /// shard's read lock, reads the exact clock only if the entry has a TTL, stores the
    /// referenced bit and last-lookup time (one atomic word) only when it changes, and counts
    /// the hit or miss in the calling thread's own counter slot (`counts`: a relaxed load and
    /// store, no locked instruction), still under the lock (measured faster than after it).
    #[inline]
    fn lookup<R>(&self, key: &K, f: impl FnOnce(&Entry<V>) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard_of(hash);
        let g = shard.lock.read();
        match g.map.get_hashed(hash, key) {
            Some(e) if !(e.has_ttl() && e.expired(self.core.clock.now_nanos())) => {
                e.touch(self.touch_now());
                self.reads.count(true);
                Some(f(e))
            }
            _ => {
                self.reads.count(false);
                None
            }
        }
    }

    /// A read that counts nothing and marks nothing (metadata, snapshots, internal checks).
    fn peek<R>(&self, key: &K, f: impl FnOnce(&Entry<V>, u64) -> R) -> Option<R> {
        let g = self.shard(key).lock.read();
        let e = g.map.get(key)?;
        let now = self.core.clock.now_nanos();
        (!e.expired(now)).then(|| f(e, now))
    }

    #[inline]
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
            // Monotonic ms → wall time, with the clock's current offset.
            let wall_at = |ms: u64| {
                UNIX_EPOCH
                    + Duration::from_millis(wall_now.saturating_sub(now_ms.saturating_sub(ms)))
            };
            let expires = e.expires_at();
            Metadata {
                version: e.version,
                written: wall_at(e.written_ms()),
                last_lookup: e.last_lookup_ms(now_ms).map(wall_at),
                expires: (expires != 0).then(|| {
                    UNIX_EPOCH
                        + Duration::from_millis(wall_now)
                        + Duration::from_nanos(expires.saturating_sub(now))
                }),
                size: e.size as u64,
                // Not kept per entry (4 bytes each): the value re-serialized, as a peer would
                // get it.
                crc: rmp_serde::to_vec(&e.value)
                    .map(|b| crc32fast::hash(&b))
                    .unwrap_or(0),
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

    /// The cache's checksum: the wrapping sum of its entries' digests, which is the sum of
    /// the sync bucket digests (kept per shard, added up here; no cache-wide counter is
    /// written by inserts).
    pub(crate) fn checksum(&self) -> u64 {
        self.expire_due_and_fire();
        checksum_of(&self.bucket_digests())
    }

    /// The sync bucket digests: the shards' shares added up (under each shard's read lock in
    /// turn).
    pub(super) fn bucket_digests(&self) -> Vec<u64> {
        self.shards
            .iter()
            .fold(vec![0u64; SYNC_BUCKETS], |mut sum, s| {
                let g = s.lock.read();
                for (t, d) in sum.iter_mut().zip(g.digests.0.iter()) {
                    *t = t.wrapping_add(*d);
                }
                sum
            })
    }

    pub(crate) fn metrics(&self) -> CacheMetrics {
        self.expire_due_and_fire();
        let mut m = CacheMetrics::default();
        (m.hits, m.misses) = self.reads.totals();
        for s in self.shards.iter() {
            let st = &s.stats;
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
        let mut gap_sum = 0u64;
        for s in self.shards.iter() {
            m.spikes += s.stats.spikes.load(Ordering::Relaxed);
            gap_sum = gap_sum.wrapping_add(s.stats.spike_gap_sum.load(Ordering::Relaxed));
        }
        self.loads.add_to(&mut m);
        if m.spikes > 0 {
            m.spike_interval = gap_sum as f64 / m.spikes as f64 / 1e9;
        }
        m
    }
}

/// The cache checksum from its sync bucket digests: their wrapping sum.
pub(super) fn checksum_of(buckets: &[u64]) -> u64 {
    buckets.iter().fold(0u64, |a, d| a.wrapping_add(*d))
}
