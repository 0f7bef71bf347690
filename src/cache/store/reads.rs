//! Reads: point lookups (the hit path), metadata, whole-cache snapshots and metrics.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use super::entries::Entry;
use super::{CacheKey, CacheValue, Store, counts, entries};
use crate::cache::clock::CoarseCell;
use crate::cache::event::Metadata;
use crate::cache::hooks::SYNC_BUCKETS;
use crate::cache::metrics::CacheMetrics;
use crate::proto::version::Version;

/// How far (ms) a ticking coarse reading may lag the clock, as a read hit assumes: a hundred
/// times the housekeeper's refresh interval.
const COARSE_TRUST_MS: u64 = CoarseCell::TRUST;
const _: () = assert!(COARSE_TRUST_MS >= 100 * CoarseCell::TICK.as_millis() as u64);

/// A thread's read hits on a cache per catch-up of the coarse reading ([`Clock::catch_up`], on a
/// hit on an entry with a TTL).
///
/// [`Clock::catch_up`]: crate::cache::clock::Clock::catch_up
const HITS_PER_CATCH_UP: u64 = 64;

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// A read of one key: counts a lookup, marks the entry referenced and read.
    ///
    /// The hit path hashes once (the shard and the map slot come from the same hash), takes the
    /// shard's read lock, checks the expiry of an entry with a TTL, stores the referenced bit
    /// and last-lookup time (one atomic word) only when it changes, and counts the hit or miss
    /// in the calling thread's own counter slot (`counts`: a relaxed load and store, no locked
    /// instruction), still under the lock (measured faster than after it). A key found but
    /// expired counts as a miss.
    ///
    /// A hit takes the inlined [`Self::hit_fast`] when it can, and the out-of-line
    /// [`Self::hit_slow`] otherwise (near an expiry, on a catch-up, for a thread without a
    /// counter slot of its own, on a clock without a coarse cell): keeping the rarer cases out
    /// of line keeps the common one's registers few (fewer saved and restored per call).
    #[inline]
    fn lookup<R>(&self, key: &K, f: impl FnOnce(&Entry<V>) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard_of(hash);
        let g = shard.lock.read();
        let Some(e) = g.map.get_hashed(hash, key) else {
            self.reads.count(false);
            return None;
        };
        if self.hit_fast(e) {
            return Some(f(e));
        }
        self.hit_slow(e).then(|| f(e))
    }

    /// A read hit's usual case: counts the hit and touches the entry, and returns true, if the
    /// calling thread has its own counter slot, the clock a coarse cell, and the entry either
    /// no TTL or an expiry beyond [`CoarseCell::trusted_shl16`] (then it has not come), on a hit
    /// that is not a catch-up's (see [`Self::expired_on_hit`]). Otherwise does nothing and
    /// returns false.
    #[inline]
    fn hit_fast(&self, e: &Entry<V>) -> bool {
        let Some(cell) = self.coarse.as_deref() else {
            return false;
        };
        let r = counts::reader();
        if e.has_ttl()
            && self
                .reads
                .hits_at(r)
                .is_none_or(|n| n % HITS_PER_CATCH_UP == 0 || !e.due_after(cell.trusted_shl16()))
        {
            return false;
        }
        if !self.reads.hit_at(r) {
            return false;
        }
        e.touch(entries::touch_marked(cell.marked_ms31()));
        true
    }

    /// A read hit that [`Self::hit_fast`] left: counts it as a hit, or as a miss if the entry
    /// has expired; touches it if a hit. Returns whether it was a hit.
    #[cold]
    #[inline(never)]
    fn hit_slow(&self, e: &Entry<V>) -> bool {
        let hit = if e.has_ttl() {
            self.reads.count_hit_unless(|n| self.expired_on_hit(e, n))
        } else {
            self.reads.count(true);
            true
        };
        if hit {
            e.touch(self.touch_now());
        }
        hit
    }

    /// Whether an entry with a TTL has expired, for a read hit: exact, but without reading the
    /// clock unless the expiry is near.
    ///
    /// The clock's coarse reading is never ahead of the clock, so an expiry at or before it has
    /// passed. While a housekeeper refreshes that reading (every 10 ms), it is never more
    /// than [`COARSE_TRUST_MS`] behind either, so an expiry further than that ahead of it has not
    /// come. Only an entry within a second of its expiry costs an exact reading (~30 ns on our
    /// VMs; read on every hit, it made a hit with the default TTL twice as slow as one with
    /// none).
    ///
    /// A node whose threads all stood still for over a second (a stopped process) resumes with
    /// a stale reading: each thread therefore also catches the reading up itself
    /// ([`Clock::catch_up`](crate::cache::clock::Clock::catch_up), the kernel's coarse clock)
    /// on every [`HITS_PER_CATCH_UP`]th of its hits on the cache, when that hit is on an entry
    /// with a TTL. `hits` is the thread's hit count on the cache so far, which its hit counter
    /// slot holds anyway. Both choices were measured on this path: an exact clock reading
    /// there (its `rdtsc` is serializing) cost ~3 ns per hit even once every 64 hits, and a
    /// thread-local counter of its own ~1 ns.
    #[inline]
    fn expired_on_hit(&self, e: &Entry<V>, hits: u64) -> bool {
        if let Some(cell) = &self.coarse
            && cell.ticking()
        {
            if hits % HITS_PER_CATCH_UP == 0 {
                self.core.clock.catch_up();
            }
            // Milliseconds both: the coarse reading rounded down, the expiry as kept.
            let (due, coarse) = (e.due_ms(), cell.ms());
            if due <= coarse {
                return true;
            }
            if due - coarse > COARSE_TRUST_MS {
                return false;
            }
        }
        e.expired(self.core.clock.now_nanos())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::{Cond, Store, Ttl};
    use crate::Config;
    use crate::cache::clock::{Clock, SystemClock};
    use crate::cache::context::StoreContext;
    use crate::cache::hooks::NoPublisher;
    use crate::proto::version::{Hlc, NodeId};

    /// A cache with TTL `ttl` on a system clock that no housekeeper refreshes, holding key 1
    /// (written at the returned instant or just before).
    fn cache_holding_one_key(ttl: f64) -> (Store<u32, u32>, Arc<SystemClock>, Instant) {
        let clock = Arc::new(SystemClock::new());
        let core = Arc::new(StoreContext {
            id: NodeId(1),
            hlc: Arc::new(Hlc::new()),
            clock: clock.clone(),
            publisher: Arc::new(NoPublisher),
            max_message_size: 1 << 20,
        });
        let config = Config {
            cache_ttl: ttl,
            ..Config::default()
        };
        let store = Store::new("t", config.cache_config("t"), core);
        store.write(1, 1, Cond::Always, Ttl::Cache).unwrap();
        (store, clock, Instant::now())
    }

    fn wait_until(t: Instant) {
        while Instant::now() < t {
            std::thread::sleep(t - Instant::now());
        }
    }

    #[test]
    fn a_hit_does_not_trust_a_coarse_reading_that_no_housekeeper_refreshes() {
        // The write read the exact clock (the entry has a TTL), so the coarse reading is the
        // write's time; nothing advances it afterwards. Trusted, it would still put the
        // expiry 0.3 s ahead after the expiry, well beyond the trusted lag of a second.
        let (store, _clock, written) = cache_holding_one_key(1.3);
        assert_eq!(store.get(&1), Some(1));
        wait_until(written + Duration::from_millis(1_350));
        for _ in 0..10 {
            assert_eq!(store.get(&1), None, "an expired entry was returned");
        }
    }

    #[test]
    fn a_stale_ticking_reading_is_refreshed_within_64_hits_of_a_thread() {
        // A ticker is registered but never refreshes: what a stopped process sees when it
        // resumes, before its housekeeper runs. The thread's own catch-up every 64 hits bounds
        // the expired hits.
        let (store, clock, written) = cache_holding_one_key(1.3);
        let _ticker = clock.coarse_cell().unwrap().ticker();
        assert_eq!(store.get(&1), Some(1));
        wait_until(written + Duration::from_millis(1_350));
        let hits: Vec<bool> = (0..200).map(|_| store.get(&1).is_some()).collect();
        let stale = hits.iter().filter(|h| **h).count();
        assert!(stale < 64, "{stale} hits on an expired entry");
        let first_miss = hits.iter().position(|h| !h).unwrap();
        assert!(hits[first_miss..].iter().all(|h| !h), "{hits:?}");
    }

    #[test]
    fn a_hit_far_from_expiry_with_a_ticking_reading_catches_it_up_once_in_64_hits() {
        // Nobody refreshes the reading while the expiry is an hour ahead: the hits trust it,
        // except one in 64 of a thread (its first, then every 64th), which catches the
        // reading up from the kernel's coarse clock. That clock moves at the kernel's timer
        // tick (1 to 10 ms), so each step below waits 25 ms for it.
        let (store, clock, _) = cache_holding_one_key(3600.0);
        let cell = clock.coarse_cell().unwrap();
        let _ticker = cell.ticker();
        let before = cell.nanos();
        wait_until(Instant::now() + Duration::from_millis(25));
        // A fresh thread: its count of hits starts at 0.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(store.get(&1), Some(1));
                let caught_up = cell.nanos();
                assert!(
                    caught_up > before,
                    "the first hit did not catch the reading up"
                );
                if !super::super::counts::ReadCounts::own_slot() {
                    // Over 64 reader threads alive at once (other tests running beside this
                    // one): this thread counts in the shared slot, and each of its hits
                    // catches the reading up.
                    return;
                }
                wait_until(Instant::now() + Duration::from_millis(25));
                for _ in 1..64 {
                    assert_eq!(store.get(&1), Some(1));
                }
                assert_eq!(
                    cell.nanos(),
                    caught_up,
                    "a hit an hour from expiry caught the reading up out of turn"
                );
                assert_eq!(store.get(&1), Some(1));
                assert!(cell.nanos() > caught_up, "the 65th hit did not catch it up");
            });
        });
    }

    #[test]
    fn an_entry_within_the_trusted_lag_of_its_expiry_is_never_returned_once_expired() {
        // A ticking reading refreshed by hand (as a housekeeper would), so the hit path's bound
        // is the reading plus a second: an expiry 0.3 s ahead is within it, and every hit
        // after the expiry must check the clock and miss, none of them trusting the bound.
        let (store, clock, written) = cache_holding_one_key(0.3);
        let _ticker = clock.coarse_cell().unwrap().ticker();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..100 {
                    assert_eq!(store.get(&1), Some(1));
                }
                wait_until(written + Duration::from_millis(320));
                clock.refresh();
                for i in 0..200 {
                    assert_eq!(store.get(&1), None, "hit {i} returned an expired entry");
                }
            });
        });
        assert_eq!(store.reads.totals(), (100, 200));
    }

    #[test]
    fn hits_on_the_fast_path_are_counted_and_mark_the_entry_read() {
        // A ticking reading and entries an hour (or forever) from expiry: the hits take the
        // inlined path (but for a thread's first and every 64th with a TTL); each is counted,
        // and each marks its entry referenced and read at the coarse time.
        for ttl in [3600.0, 0.0] {
            let (store, clock, _) = cache_holding_one_key(ttl);
            let cell = clock.coarse_cell().unwrap();
            let _ticker = cell.ticker();
            store.write(2, 2, Cond::Always, Ttl::Cache).unwrap();
            let g = store.shard(&2).lock.read();
            assert!(g.map.get(&2).unwrap().last_lookup_ms(cell.ms()).is_none());
            drop(g);
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        assert_eq!(store.get(&1), Some(1));
                    }
                    assert_eq!(store.get(&3), None);
                });
            });
            assert_eq!(store.reads.totals(), (1_000, 1), "ttl {ttl}");
            let mut g = store.shard(&1).lock.write();
            let e = g.map.get_index_of(&1).unwrap();
            let e = &mut g.map[e];
            assert_eq!(e.last_lookup_ms(cell.ms()), Some(cell.ms()), "ttl {ttl}");
            assert!(e.take_referenced());
        }
    }
}
