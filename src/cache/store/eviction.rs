//! Expiry and eviction: sweeping entries whose TTL has passed, CLOCK (second chance) eviction
//! under the global `cache_max` and `cache_size` caps, and the collection of old tombstones,
//! which raises the tombstone horizon.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::entries::{Entry, Shard, ShardMap, bump, nanos};
use super::events::Events;
use super::{CacheKey, CacheValue, Store};
use crate::cache::event::{ChangeEvent, ChangeKind, Origin};
use crate::proto::version::Version;

/// What [`Store::take_slot_locked`] found for a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// Nothing here: the caller lets go of the shard and takes a slot the slow way.
    NotHere,
    /// An entry slot is held (below the cap, or another shard's victim was evicted and its slot
    /// handed over); the caller releases it if it stores nothing.
    Slot,
    /// The entry at `at` of the key's own shard is CLOCK's victim (`expired` if it had
    /// expired): nothing is evicted yet. Storing the key replaces it in place
    /// ([`Store::replace_victim`]); a write that stores nothing leaves it be.
    Replace {
        /// Its slab position.
        at: usize,
        /// Whether it had expired (counted as an expiry, not an eviction).
        expired: bool,
    },
}

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// Sweeps expired entries from shards whose earliest expiry has passed.
    ///
    /// The cache-wide lower bound `next_expiry` makes this O(1) while nothing is due. It is
    /// reset before the shards are read and lowered again by each shard read, so a TTL write
    /// that races with a sweep is never lost: a write lowers its shard's bound under the
    /// shard's lock and then the cache-wide one (all `SeqCst`).
    pub(super) fn expire_due(&self, now: u64, ev: &mut Events<K>) {
        if self.next_expiry.load(Ordering::SeqCst) > now {
            return;
        }
        self.next_expiry.store(u64::MAX, Ordering::SeqCst);
        for shard in self.shards.iter() {
            if shard.next_expiry.load(Ordering::SeqCst) <= now {
                self.sweep_shard(shard, now, ev);
            }
            self.next_expiry
                .fetch_min(shard.next_expiry.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    pub(super) fn expire_due_and_fire(&self) {
        let mut ev = self.events();
        self.expire_due(self.core.clock.now_nanos(), &mut ev);
        self.fire(ev);
    }

    fn sweep_shard(&self, shard: &Shard<K, V>, now: u64, ev: &mut Events<K>) {
        let mut g = shard.lock.write();
        let mut next = u64::MAX;
        let mut n = 0;
        let sm = &mut *g;
        let digests = &mut sm.digests;
        sm.map.retain(|k, e| {
            if e.expired(now) {
                self.unaccount(digests, e);
                n += 1;
                ev.push(|| self.expire_event(k, e, now));
                false
            } else {
                if e.has_ttl() {
                    next = next.min(e.expires_at());
                }
                true
            }
        });
        if g.hand >= g.map.len() {
            g.hand = 0;
        }
        shard.next_expiry.store(next, Ordering::SeqCst);
        bump(&shard.stats.ev_ttl, n);
        for _ in 0..n {
            self.note_mutation(shard, now);
        }
        drop(g);
    }

    /// Brings the cache back under both caps after a new key was stored (never evicting the
    /// entry written at `protect`).
    pub(super) fn enforce_caps(&self, protect: Version, now: u64, ev: &mut Events<K>) {
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
            if !self.evict_one(over_entries, false, protect, now, ev) {
                return;
            }
        }
    }

    /// Evicts one entry (CLOCK). With `keep_slot`, the victim's entry slot stays counted: the
    /// caller takes it over for the key it is inserting (see `reserve_slot_for`).
    pub(super) fn evict_one(
        &self,
        capacity: bool,
        keep_slot: bool,
        protect: Version,
        now: u64,
        ev: &mut Events<K>,
    ) -> bool {
        // Two rounds: the first may only clear referenced bits everywhere.
        let n = self.shards.len();
        for _ in 0..2 * n {
            let si = self.evict_hand.fetch_add(1, Ordering::Relaxed) & (n - 1);
            if self.clock_evict(&self.shards[si], capacity, keep_slot, protect, now, ev) {
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
        keep_slot: bool,
        protect: Version,
        now: u64,
        ev: &mut Events<K>,
    ) -> bool {
        let mut g = shard.lock.write();
        self.clock_evict_in(shard, &mut g, capacity, keep_slot, protect, now, ev)
    }

    /// For a local write holding the write lock of its key's `shard` (guard `g`), which found
    /// the key absent: makes room for it without letting go of `g`. Below `cache_max` it takes
    /// an entry slot ([`Room::Slot`]). When the cache is full it asks CLOCK for a victim in
    /// this shard first ([`Room::Replace`]: nothing evicted yet, the key takes its place when
    /// stored), then evicts one from the shards in the global hand's order, another shard only
    /// if its write lock is free (`try_write`, which never waits, so no two writers can wait
    /// on each other's shards), its slot handed over ([`Room::Slot`]; the caller releases it
    /// if it ends up not inserting). [`Room::NotHere`] when this cannot be done here: entries
    /// are due to expire (the sweep takes every shard's lock), or every other shard was busy or
    /// had only referenced entries for two rounds; the caller then lets go of `g` and takes the
    /// slot with [`Store::reserve_slot_for`].
    ///
    /// Saves the insert of a new key into a full cache a second lock of its shard and a second
    /// lookup (the slot was taken under a read lock of its own before).
    pub(super) fn take_slot_locked(
        &self,
        shard: &Shard<K, V>,
        g: &mut ShardMap<K, V>,
        now: u64,
        ev: &mut Events<K>,
    ) -> Room {
        if self.take_free_slot() {
            return Room::Slot;
        }
        if self.next_expiry.load(Ordering::SeqCst) <= now {
            return Room::NotHere;
        }
        // The writer's own shard first: its lines are in this core's cache (the key was just
        // looked up there) and its lock is held, so this costs no shared atomic and no other
        // shard's cache lines; it also keeps the shards' sizes level, as inserts spread evenly.
        if let Some((at, expired)) = Self::clock_pick_in(g, Version::ZERO, now) {
            return Room::Replace { at, expired };
        }
        let count = self.shards.len();
        for i in 0..2 * count {
            let si = self.evict_hand.fetch_add(1, Ordering::Relaxed) & (count - 1);
            let victim = &self.shards[si];
            let evicted = if std::ptr::eq(victim, shard) {
                // Its hand has just made a whole pass, taking every second chance in it: its
                // entries go only after the other shards have had their pass (else an entry
                // read moments ago could go while an unread one waits in another shard).
                i >= count && self.clock_evict_in(shard, g, true, true, Version::ZERO, now, ev)
            } else if let Some(mut vg) = victim.lock.try_write() {
                self.clock_evict_in(victim, &mut vg, true, true, Version::ZERO, now, ev)
            } else {
                false
            };
            if evicted {
                return Room::Slot;
            }
        }
        Room::NotHere
    }

    /// [`Self::clock_evict`] on a shard whose write lock the caller holds (guard `g`).
    #[allow(clippy::too_many_arguments)]
    fn clock_evict_in(
        &self,
        shard: &Shard<K, V>,
        g: &mut ShardMap<K, V>,
        capacity: bool,
        keep_slot: bool,
        protect: Version,
        now: u64,
        ev: &mut Events<K>,
    ) -> bool {
        let Some((at, expired)) = Self::clock_pick_in(g, protect, now) else {
            return false;
        };
        let Some((k, e)) = self.take_index_keeping_slot(g, at, keep_slot) else {
            return false;
        };
        self.note_eviction(shard, k, &e, expired, capacity, now, ev);
        true
    }

    /// CLOCK's choice in a write-locked shard: from the hand, clears referenced bits until it
    /// finds an unreferenced (or expired) entry other than `protect`; returns its position and
    /// whether it expired, the hand left on it. `None` after one pass over the shard.
    fn clock_pick_in(g: &mut ShardMap<K, V>, protect: Version, now: u64) -> Option<(usize, bool)> {
        let mut expired = false;
        let (hand, found) = g.map.clock_scan(g.hand, |e| {
            if e.version == protect {
                return false;
            }
            expired = e.expired(now);
            expired || !e.take_referenced()
        });
        g.hand = hand;
        found.then_some((hand, expired))
    }

    /// Counts an entry that CLOCK removed (an expiry if it had expired) and queues its event.
    #[allow(clippy::too_many_arguments)]
    fn note_eviction(
        &self,
        shard: &Shard<K, V>,
        k: K,
        e: &Entry<V>,
        expired: bool,
        capacity: bool,
        now: u64,
        ev: &mut Events<K>,
    ) {
        let (counter, kind) = if expired {
            (&shard.stats.ev_ttl, ChangeKind::Expire)
        } else if capacity {
            (&shard.stats.ev_capacity, ChangeKind::Evict)
        } else {
            (&shard.stats.ev_bytes, ChangeKind::Evict)
        };
        bump(counter, 1);
        self.note_mutation(shard, now);
        ev.push(|| ChangeEvent {
            key: k,
            kind,
            origin: Origin::Local,
            version: e.version,
            in_callback_window: self.in_window(e, now),
        });
    }

    /// Stores a new key (hashed `hash`) in place of the victim at `at` that
    /// [`Self::take_slot_locked`] chose in the key's own write-locked shard (see
    /// [`Room::Replace`]): the victim is evicted now, its entry slot and its position in the
    /// slab go to the new entry, which the caller has accounted (bytes, digest) already.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replace_victim(
        &self,
        shard: &Shard<K, V>,
        g: &mut ShardMap<K, V>,
        (at, expired): (usize, bool),
        (key, hash): (K, u64),
        entry: Entry<V>,
        now: u64,
        ev: &mut Events<K>,
    ) {
        self.unaccount_bytes(&mut g.digests, &g.map[at]);
        let (k, e) = g.map.replace_index(at, hash, key, entry);
        // Past the new entry: the hand comes back to it last, a whole round from now (as to
        // an entry appended at the end).
        g.hand = at + 1;
        self.note_eviction(shard, k, &e, expired, true, now, ev);
    }

    /// Drops tombstones older than `ttl`, raising the horizon to the newest one dropped (the
    /// horizon is raised before the tombstone goes, so no record slips in between).
    pub(super) fn gc_tombs(&self, ttl: Duration) {
        let now = self.core.clock.now_nanos();
        let ttl = nanos(ttl);
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

    pub(super) fn raise_horizon_to(&self, version: Version) {
        let mut h = self.horizon.write();
        if version > *h {
            *h = version;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::setup;
    use crate::error::Error;
    use crate::{Cache, Config};

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
    fn a_new_key_takes_its_victims_place_after_the_victims_event() {
        // 64 entries over the shards: most inserts into the full cache find their victim in
        // their own shard and replace it in place, the others evict elsewhere; either way the
        // victim's event comes first and the counts balance.
        use crate::{ChangeKind, Origin};
        use std::sync::{Arc, Mutex};
        let (node, _, _) = setup(Config {
            cache_max: 64,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("r").unwrap();
        for i in 0..64 {
            c.insert(i, i).unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        c.on_change(move |e| s.lock().unwrap().push((e.key, e.kind, e.origin)));
        for i in 64..1_064 {
            c.insert(i, i).unwrap();
            assert_eq!(c.len(), 64);
            assert_eq!(c.get(&i), Some(i), "the new key is stored");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2_000, "one eviction and one insert per write");
        for pair in seen.chunks(2) {
            assert_eq!(pair[0].1, ChangeKind::Evict, "{pair:?}");
            assert_eq!((pair[1].1, pair[1].2), (ChangeKind::Insert, Origin::Local));
        }
        let m = c.metrics();
        assert_eq!(
            (m.entries, m.evictions_capacity, m.inserts),
            (64, 1_000, 1_064)
        );
        // Every survivor is found where the index says, with its own value.
        for k in c.keys() {
            assert_eq!(c.get(&k), Some(k));
        }
    }

    #[test]
    fn writers_evicting_across_shards_keep_counts_exact() {
        // New keys into a full cache from several threads at once: each takes its slot by
        // evicting while it holds its own shard (`take_slot_locked`), or, when another shard
        // is busy, the slow way. Either way the counts must balance.
        let (node, _, _) = setup(Config {
            cache_max: 8,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("w").unwrap();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let c = c.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        c.insert(t * 10_000 + i, i).unwrap();
                        assert!(c.len() <= 8);
                    }
                });
            }
        });
        let m = c.metrics();
        assert_eq!((c.len(), m.entries), (8, 8));
        assert_eq!(m.inserts, 8_000);
        assert_eq!(m.evictions_capacity, 8_000 - 8);
        assert_eq!(c.keys().len(), 8);
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
    fn a_full_cache_sweeps_due_entries_before_evicting_and_keeps_finding_them() {
        let (node, _, clock) = setup(Config {
            cache_max: 3,
            cache_ttl: 0.0,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("e").unwrap();
        c.insert(1, 1).unwrap();
        c.insert_with_ttl(2, 2, Duration::from_secs(1)).unwrap();
        c.insert(3, 3).unwrap();
        clock.advance(Duration::from_millis(1001));
        c.insert(4, 4).unwrap();
        let m = c.metrics();
        assert_eq!((m.evictions_ttl, m.evictions_capacity), (1, 0));
        // A TTL entry written after that sweep is found by the next one.
        c.insert_with_ttl(5, 5, Duration::from_secs(1)).unwrap();
        assert_eq!(c.metrics().evictions_capacity, 1);
        clock.advance(Duration::from_millis(1001));
        c.insert(6, 6).unwrap();
        let m = c.metrics();
        assert_eq!((m.evictions_ttl, m.evictions_capacity), (2, 1));
        assert!(!c.contains_key(&5) && c.contains_key(&6));
    }
}
