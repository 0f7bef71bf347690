//! The steps every write path shares, under a shard's write lock: drop the key's entry if it
//! expired, replace or insert an entry (accounting, counters, change event, tombstone), and
//! bury a key under a tombstone. Local writes, remote applies and tier fills all go through
//! these, so the three paths cannot drift apart.

use std::sync::atomic::Ordering;

use super::encoding::bucket_of;
use super::entries::{Entry, Shard, ShardMap, Tomb, bump};
use super::events::Events;
use super::{CacheKey, CacheValue, Store};
use crate::cache::event::{ChangeEvent, ChangeKind, Origin};
use crate::proto::version::Version;

/// Where a new key's entry goes (see [`Store::upsert`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum NewSlot {
    /// Appended; `true` if an entry slot was reserved for it (else it is counted now).
    Reserved(bool),
    /// In place of the victim at this position of the shard (and whether it had expired),
    /// which is evicted then (see `eviction::Room::Replace`); it takes the victim's slot.
    Replace((usize, bool)),
}

/// What [`Store::upsert`] did.
pub(super) struct Upserted<V> {
    /// The value replaced; `None` if the key was new.
    pub(super) old: Option<V>,
    /// Whether the slot reserved for a new key was used.
    pub(super) used_slot: bool,
}

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// The index of `key` (whose hash is `hash`)'s live entry in a write-locked shard. An entry that has expired is
    /// removed first (counted as a TTL eviction, with an `Expire` event) and reported absent.
    pub(super) fn live_index(
        &self,
        shard: &Shard<K, V>,
        g: &mut ShardMap<K, V>,
        key: &K,
        hash: u64,
        now: u64,
        ev: &mut Events<K>,
    ) -> Option<usize> {
        let i = g.map.find_hashed(hash, key)?;
        if !g.map[i].expired(now) {
            return Some(i);
        }
        if let Some((k, e)) = self.take_index(g, i) {
            bump(&shard.stats.ev_ttl, 1);
            self.note_mutation(shard, now);
            ev.push(|| self.expire_event(&k, &e, now));
        }
        None
    }

    /// Stores `entry` under `key` (hashed `hash`) in a write-locked shard: replaces the live entry at `live`
    /// or inserts a new one where `slot` says (in the slot reserved for it, or in a victim's place), with byte
    /// accounting, counters and an `Update`/`Insert` event from `origin`; forgets the key's
    /// tombstone. The caller has already decided that the write wins.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn upsert(
        &self,
        shard: &Shard<K, V>,
        g: &mut ShardMap<K, V>,
        live: Option<usize>,
        (key, hash): (K, u64),
        entry: Entry<V>,
        origin: Origin,
        slot: NewSlot,
        now: u64,
        ev: &mut Events<K>,
    ) -> Upserted<V> {
        let version = entry.version;
        if entry.has_ttl() {
            let at = entry.expires_at();
            // Shard first, then the cache-wide bound (see `expire_due`). Each is lowered only if
            // it is above `at`: with one TTL for every entry, a new entry expires after the
            // bound held, and a load instead of a locked `fetch_min` leaves the cache-wide
            // bound's line shared by every writer thread instead of moving it to each. Still
            // no bound is lost: the shard's is written only under its write lock, held here;
            // if a sweep replaced the cache-wide one after it was loaded here, the sweep reads
            // this shard's bound after that (all `SeqCst`), which is at most `at`.
            lower_to(&shard.next_expiry, at);
            lower_to(&self.next_expiry, at);
        }
        // A key held live has no tombstone (see `bury`): only a new key's can be left.
        debug_assert!(live.is_none() || !g.tombs.contains_key(&key));
        if live.is_none() && !g.tombs.is_empty() {
            g.tombs.swap_remove(&key);
        }
        let out = match live {
            Some(i) => {
                let slot = &mut g.map[i];
                let window = self.in_window(slot, now);
                // Same key, same slot: only bytes and digests change.
                self.unaccount_bytes(&mut g.digests, slot);
                self.account_bytes(&mut g.digests, &entry);
                let old = std::mem::replace(slot, entry);
                bump(&shard.stats.updates, 1);
                ev.push(|| ChangeEvent {
                    key,
                    kind: ChangeKind::Update,
                    origin,
                    version,
                    in_callback_window: window,
                });
                Upserted {
                    old: Some(old.value),
                    used_slot: false,
                }
            }
            None => {
                let (reserved, victim) = match slot {
                    NewSlot::Reserved(r) => (r, None),
                    NewSlot::Replace(v) => (true, Some(v)),
                };
                let used_slot = self.account_new(&mut g.digests, &entry, reserved);
                // Cloned only for listeners; the event is queued after a victim's, which is
                // evicted before the key is stored.
                let event_key = ev.is_on().then(|| key.clone());
                match victim {
                    Some(v) => self.replace_victim(shard, g, v, (key, hash), entry, now, ev),
                    None => {
                        g.map.insert_new(hash, key, entry);
                    }
                }
                if let Some(key) = event_key {
                    ev.push(|| ChangeEvent {
                        key,
                        kind: ChangeKind::Insert,
                        origin,
                        version,
                        in_callback_window: false,
                    });
                }
                bump(&shard.stats.inserts, 1);
                Upserted {
                    old: None,
                    used_slot,
                }
            }
        };
        self.note_mutation(shard, now);
        out
    }

    /// Deletes `key` at `version` in a write-locked shard: removes the live entry at `live`
    /// (counted as a delete, with a `Remove` event from `origin`) and leaves a tombstone so
    /// that older writes arriving late cannot bring the key back. Returns the removed value.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bury(
        &self,
        shard: &Shard<K, V>,
        g: &mut ShardMap<K, V>,
        live: Option<usize>,
        key: &K,
        key_bytes: &[u8],
        version: Version,
        origin: Origin,
        now: u64,
        ev: &mut Events<K>,
    ) -> Option<V> {
        let removed = live.and_then(|i| self.take_index(g, i));
        let (key, value) = match removed {
            Some((k, e)) => {
                bump(&shard.stats.deletes, 1);
                self.note_mutation(shard, now);
                ev.push(|| ChangeEvent {
                    key: k.clone(),
                    kind: ChangeKind::Remove,
                    origin,
                    version,
                    in_callback_window: self.in_window(&e, now),
                });
                (k, Some(e.value))
            }
            None => (key.clone(), None),
        };
        g.tombs.insert(
            key,
            Tomb {
                version,
                at_nanos: now,
                key_bytes: key_bytes.into(),
                bucket: bucket_of(key_bytes),
            },
        );
        value
    }
}

/// Lowers `bound` to `at` if it is above: a load, and a `fetch_min` only when it moves.
#[inline]
fn lower_to(bound: &std::sync::atomic::AtomicU64, at: u64) {
    if bound.load(Ordering::SeqCst) > at {
        bound.fetch_min(at, Ordering::SeqCst);
    }
}
