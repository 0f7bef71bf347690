//! Remote changes: a peer's put, delete or invalidation, applied if its version is newer than
//! everything known for the key (live entry, tombstone, clear floor, tombstone horizon), and
//! the drop of an entry held in doubt.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::encoding::Encoded;
use super::events::Events;
use super::mutation::NewSlot;
use super::{CacheKey, CacheValue, Store, Ttl};
use crate::cache::event::{ChangeEvent, ChangeKind, Origin};
use crate::cache::hooks::Applied;
use crate::config::CacheMode;
use crate::proto::record::{OpRef, RecordRef};
use crate::proto::version::{NodeId, Version};

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    pub(super) fn decode_key(bytes: &[u8]) -> Option<K> {
        rmp_serde::from_slice(bytes).ok()
    }

    /// Applies a run of peer records in order (see
    /// [`ErasedCache::apply_remote_run`](crate::cache::hooks::ErasedCache::apply_remote_run)):
    /// the clock, the clear floor and the listener count are read once for the run, and its
    /// change events fire after the last record, with no lock held.
    pub(super) fn apply_remote_records(
        &self,
        records: &[RecordRef<'_>],
        origin: NodeId,
        each: &mut dyn FnMut(Applied),
    ) {
        let mut ev = self.events();
        let now = self.core.clock.now_both();
        let floor = *self.clear_floor.read();
        for rec in records {
            each(self.apply_remote_record(rec, origin, floor, now, &mut ev));
        }
        self.fire(ev);
    }

    /// Applies one peer record, its events into `ev`.
    fn apply_remote_record(
        &self,
        rec: &RecordRef<'_>,
        origin: NodeId,
        floor: Version,
        (now, wall): (u64, u64),
        ev: &mut Events<K>,
    ) -> Applied {
        let Some(key) = Self::decode_key(rec.key) else {
            return Applied::Undecodable;
        };
        if rec.version <= floor {
            return Applied::Stale;
        }
        let origin = Origin::Remote(origin);
        // The value's bytes: decoded (and copied, checksummed) only once the record is known
        // to win, under the lock below (or, for a new key of a full cache, just before room is
        // made for it). A stale record (a peer's change older than the copy held, a repair of
        // what is already here) costs the key's decode and a lookup.
        let put = match rec.op {
            OpRef::Put { value, ttl_ms } if self.cfg.mode != CacheMode::Invalidate => {
                // The size `Encoded::from_parts` would give.
                if (rec.key.len() + value.len()) as u64 > self.cfg.max_bytes {
                    return Applied::Skipped;
                }
                let ttl = match ttl_ms {
                    None => Ttl::Cache,
                    Some(ms) => Ttl::Entry(Duration::from_millis(ms)),
                };
                Some((value, ttl))
            }
            // Del, Inval, or a Put into an invalidate-mode cache.
            _ => None,
        };
        let hash = self.hasher.hash_one(&key);
        let shard = self.shard_of(hash);
        let version = rec.version;
        let mut new_key = false;
        // A slot is reserved (room made before the write lock) only when the cache is full;
        // below `cache_max` a new key is accounted as it is inserted, and the caps enforced
        // after it as usual, which spares the pre-check under the read lock.
        let full = self.entries.load(Ordering::Relaxed) >= self.cfg.max_entries.max(1) as u64;
        // In a full cache, a new key's value is decoded before a victim makes room for it: a
        // value that does not decode (a peer with another value type for this cache) evicts
        // nothing.
        let mut early: Option<Option<V>> = None;
        let reserved = match put {
            Some((bytes, _)) if full => {
                let mut decode = || {
                    let v = rmp_serde::from_slice::<V>(bytes).ok();
                    let ok = v.is_some();
                    early = Some(v);
                    ok
                };
                self.reserve_slot_for(shard, &key, hash, Some(version), now, ev, &mut decode)
            }
            _ => false,
        };
        let mut early = match early {
            Some(None) => return Applied::Undecodable,
            Some(Some(v)) => Some(v),
            None => None,
        };
        let mut used_slot = false;
        let applied = {
            let mut g = shard.lock.write();
            let live = self.live_index(shard, &mut g, &key, hash, now, ev);
            // A key held live has no tombstone (`upsert` drops it, `bury` takes the entry), so
            // the tombstones are looked up only for a key not held.
            let (held, tomb) = match live {
                Some(i) => (Some(g.map[i].version), None),
                None => (None, g.tombs.get(&key).map(|t| t.version)),
            };
            if held.or(tomb).is_some_and(|v| version <= v) {
                Applied::Stale
            } else if held.is_none() && tomb.is_none() && version <= *self.horizon.read() {
                // Not held, and its delete may have been forgotten here.
                Applied::BelowHorizon
            } else {
                match put {
                    Some(_) if live.is_none() && self.cfg.mode == CacheMode::UpdateIfPresent => {
                        Applied::Skipped
                    }
                    Some((bytes, ttl)) => match early
                        .take()
                        .map_or_else(|| rmp_serde::from_slice::<V>(bytes).ok(), Some)
                    {
                        None => Applied::Undecodable,
                        Some(value) => {
                            let enc = Encoded::from_parts(rec.key, bytes);
                            let entry = self.new_entry(value, &enc, version, (now, wall), ttl);
                            new_key = live.is_none();
                            used_slot = self
                                .upsert(
                                    shard,
                                    &mut g,
                                    live,
                                    (key, hash),
                                    entry,
                                    origin,
                                    NewSlot::Reserved(reserved),
                                    now,
                                    ev,
                                )
                                .used_slot;
                            Applied::Changed
                        }
                    },
                    None => {
                        self.bury(shard, &mut g, live, &key, rec.key, version, origin, now, ev);
                        Applied::Changed
                    }
                }
            }
        };
        if reserved && !used_slot {
            self.release_slot();
        }
        if new_key {
            self.enforce_caps(version, now, ev);
        }
        applied
    }

    /// Drops the live entry of `key_bytes` if it is held at exactly `version`; no tombstone,
    /// nothing published (a local decision, like an eviction). Raises the horizon first.
    pub(super) fn drop_doubtful_entry(&self, key_bytes: &[u8], version: Version) -> bool {
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
                        super::entries::bump(&shard.stats.ev_capacity, 1);
                        self.note_mutation(shard, now);
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
        self.fire(ev);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::testing::{bytes, erased, put, put_bytes, remote, setup};
    use crate::cache::event::{ChangeKind, Origin};
    use crate::cache::hooks::{Applied, ChangeKindWire};
    use crate::config::CacheMode;
    use crate::proto::record::{Op, Record};
    use crate::proto::version::{NodeId, Version};
    use crate::{Cache, Config};

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
        assert_eq!(
            e.apply_remote(put(1, 11, v).view(), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(c.get(&1), None);
        // The invalidation is a floor for older puts.
        let older = Version::new(v.hlc - 1, NodeId(7));
        assert_eq!(
            e.apply_remote(put(1, 12, older).view(), NodeId(7)),
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        c.on_change(move |ev| s.lock().unwrap().push((ev.kind, ev.origin)));

        assert_eq!(
            e.apply_remote(put(1, 1, remote(100)).view(), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(c.get(&1), Some(1));
        assert_eq!(
            e.apply_remote(put(1, 2, remote(99)).view(), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(
            e.apply_remote(put(1, 1, remote(100)).view(), NodeId(7)),
            Applied::Stale
        );
        let del = Record {
            key: bytes(&1u32).into(),
            version: remote(101),
            op: Op::Del,
        };
        assert_eq!(e.apply_remote(del.view(), NodeId(7)), Applied::Changed);
        assert_eq!(c.get(&1), None);
        // An older put can't resurrect the key; a newer one can.
        assert_eq!(
            e.apply_remote(put(1, 3, remote(100)).view(), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(e.record(&bytes(&1u32)).unwrap().op, Op::Del);
        assert_eq!(
            e.apply_remote(put(1, 4, remote(102)).view(), NodeId(7)),
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
            e.apply_remote(put(3, 3, remote(1500)).view(), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(
            e.apply_remote(put(3, 3, remote(2001)).view(), NodeId(7)),
            Applied::Changed
        );
        // Garbage.
        let bad = Record {
            key: vec![0xc1].into(),
            version: remote(3000),
            op: Op::Del,
        };
        assert_eq!(e.apply_remote(bad.view(), NodeId(7)), Applied::Undecodable);
        let bad_val = put_bytes(5, vec![0xc1, 0xff], remote(3000));
        assert_eq!(
            e.apply_remote(bad_val.view(), NodeId(7)),
            Applied::Undecodable
        );

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
    fn a_stale_record_is_refused_on_its_version_before_its_value_is_decoded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static DECODED: AtomicUsize = AtomicUsize::new(0);
        #[derive(Clone, Debug, PartialEq, serde::Serialize)]
        struct Counted(u32);
        impl<'de> serde::Deserialize<'de> for Counted {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                DECODED.fetch_add(1, Ordering::Relaxed);
                <u32 as serde::Deserialize>::deserialize(d).map(Counted)
            }
        }
        let (node, _, _) = setup(Config::default());
        let c: Cache<u32, Counted> = node.cache("lazy").unwrap();
        let e = erased(&node, "lazy");
        let rec = |v: u32, at: u64| put_bytes(1, bytes(&Counted(v)), remote(at));
        assert_eq!(
            e.apply_remote(rec(1, 100).view(), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(DECODED.load(Ordering::Relaxed), 1);
        // An older change, and the same one again (a repair of what is held).
        assert_eq!(e.apply_remote(rec(2, 99).view(), NodeId(7)), Applied::Stale);
        assert_eq!(
            e.apply_remote(rec(1, 100).view(), NodeId(7)),
            Applied::Stale
        );
        assert_eq!(
            DECODED.load(Ordering::Relaxed),
            1,
            "stale values were decoded"
        );
        // A newer one is decoded once and stored.
        assert_eq!(
            e.apply_remote(rec(3, 101).view(), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(DECODED.load(Ordering::Relaxed), 2);
        assert_eq!(c.get(&1), Some(Counted(3)));
        // A value that does not decode as `Counted` is refused and leaves the entry alone.
        let bad = put_bytes(1, bytes(&"not a number"), remote(102));
        assert_eq!(e.apply_remote(bad.view(), NodeId(7)), Applied::Undecodable);
        assert_eq!(c.get(&1), Some(Counted(3)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn remote_inserts_into_a_full_cache_evict_down_to_cache_max() {
        let (node, _, _) = setup(Config {
            cache_max: 3,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("cap").unwrap();
        let e = erased(&node, "cap");
        for k in 0..8u32 {
            let applied = e.apply_remote(put(k, k, remote(100 + u64::from(k))).view(), NodeId(7));
            assert_eq!(applied, Applied::Changed);
            assert!(c.len() <= 3, "{} entries after key {k}", c.len());
        }
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.get(&7),
            Some(7),
            "the key being inserted is never the victim"
        );
        assert_eq!(e.metrics().evictions_capacity, 5);
    }

    #[test]
    fn a_value_that_does_not_decode_evicts_nothing_from_a_full_cache() {
        let (node, _, _) = setup(Config {
            cache_max: 3,
            ..Config::default()
        });
        let c: Cache<u32, u32> = node.cache("full").unwrap();
        let e = erased(&node, "full");
        for k in 0..3u32 {
            c.insert(k, k).unwrap();
        }
        // A newer write of a new key, whose value is not a `u32` (a peer with another value
        // type for this cache).
        let other_type = put_bytes(
            9,
            bytes(&"not a number"),
            Version::new(node.core().hlc.peek() + 1, NodeId(7)),
        );
        assert_eq!(
            e.apply_remote(other_type.view(), NodeId(7)),
            Applied::Undecodable
        );
        assert_eq!(c.len(), 3);
        assert_eq!(e.metrics().evictions_capacity, 0);
        assert!((0..3u32).all(|k| c.get(&k) == Some(k)));
        // One that decodes takes a victim's place.
        let newer = put(9, 9, Version::new(node.core().hlc.peek() + 2, NodeId(7)));
        assert_eq!(e.apply_remote(newer.view(), NodeId(7)), Applied::Changed);
        assert_eq!((c.len(), c.get(&9)), (3, Some(9)));
        assert_eq!(e.metrics().evictions_capacity, 1);
    }

    #[test]
    fn a_run_reports_each_record_in_order_and_fires_its_events_after_the_last() {
        let (node, _, _) = setup(Config::default());
        let c: Cache<u32, u32> = node.cache("run").unwrap();
        let e = erased(&node, "run");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let c2 = c.clone();
        c.on_change(move |ev| s.lock().unwrap().push((ev.kind, c2.get(&1))));
        let del = Record {
            key: bytes(&1u32).into(),
            version: remote(102),
            op: Op::Del,
        };
        let bad = Record {
            key: vec![0xc1].into(),
            version: remote(103),
            op: Op::Del,
        };
        let records = [
            put(1, 1, remote(100)),
            put(1, 2, remote(99)),
            bad,
            put(2, 2, remote(101)),
            del,
        ];
        let views: Vec<_> = records.iter().map(Record::view).collect();
        let mut outcomes = Vec::new();
        e.apply_remote_run(&views, NodeId(7), &mut |a| outcomes.push(a));
        assert_eq!(
            outcomes,
            [
                Applied::Changed,
                Applied::Stale,
                Applied::Undecodable,
                Applied::Changed,
                Applied::Changed
            ]
        );
        assert_eq!((c.get(&1), c.get(&2)), (None, Some(2)));
        // Listeners ran after the whole run: key 1 was already deleted when they saw its insert.
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (ChangeKind::Insert, None),
                (ChangeKind::Insert, None),
                (ChangeKind::Remove, None)
            ]
        );
    }

    #[test]
    fn collected_tombstones_raise_a_horizon_that_refuses_older_records_for_absent_keys() {
        let (node, _, clock) = setup(Config::default());
        let c: Cache<u32, u32> = node.cache("h").unwrap();
        let e = erased(&node, "h");
        assert_eq!(e.horizon(), Version::ZERO);
        e.apply_remote(put(1, 1, remote(100)).view(), NodeId(7));
        e.apply_remote(put(2, 2, remote(100)).view(), NodeId(7));
        let del = Record {
            key: bytes(&1u32).into(),
            version: remote(200),
            op: Op::Del,
        };
        assert_eq!(e.apply_remote(del.view(), NodeId(7)), Applied::Changed);
        // Young tombstones stay; the horizon only moves when one is collected.
        e.housekeep(Duration::from_secs(60));
        assert_eq!(e.horizon(), Version::ZERO);
        clock.advance(Duration::from_secs(61));
        e.housekeep(Duration::from_secs(60));
        assert_eq!(e.horizon(), remote(200));
        assert!(e.record(&bytes(&1u32)).is_none(), "tombstone collected");
        // The late copy of the deleted write is refused, not re-introduced...
        assert_eq!(
            e.apply_remote(put(1, 1, remote(100)).view(), NodeId(7)),
            Applied::BelowHorizon
        );
        assert_eq!(c.get(&1), None);
        // ...while a newer write, and updates of keys still held, apply as usual.
        assert_eq!(
            e.apply_remote(put(1, 5, remote(201)).view(), NodeId(7)),
            Applied::Changed
        );
        assert_eq!(
            e.apply_remote(put(2, 3, remote(150)).view(), NodeId(7)),
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
            e.apply_remote(put(1, 1, remote(100)).view(), NodeId(7)),
            Applied::Skipped
        );
        assert!(!c.contains_key(&1));
        c.insert(1, 0).unwrap();
        let v = Version::new(node.core().hlc.peek() + 1, NodeId(7));
        assert_eq!(
            e.apply_remote(put(1, 5, v).view(), NodeId(7)),
            Applied::Changed
        );
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
            key: bytes(&1u32).into(),
            version: remote(1), // written "long ago" by the peer's clock
            op: Op::Put {
                value: bytes(&1u32).into(),
                ttl_ms: Some(1000),
            },
        };
        assert_eq!(e.apply_remote(rec.view(), NodeId(7)), Applied::Changed);
        assert_eq!(c.get(&1), Some(1));
        clock.advance(Duration::from_millis(1001));
        assert_eq!(c.get(&1), None);
        // An expiring entry leaves no tombstone: the record is gone.
        e.housekeep(Duration::from_secs(60));
        assert!(e.record(&bytes(&1u32)).is_none());
        assert_eq!(e.metrics().evictions_ttl, 1);
    }
}
