//! Local writes: insert (under a condition), remove and clear, each versioned with the node's
//! HLC, published to the replication layer and mirrored to the shared tier.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use super::encoding::{Encoded, ser_err};
use super::eviction::Room;
use super::mutation::NewSlot;
use super::{CacheKey, CacheValue, Cond, Store, Ttl, Written};
use crate::cache::event::{ChangeEvent, ChangeKind, Origin};
use crate::cache::hooks::{Change, ChangeKindWire};
use crate::config::CacheMode;
use crate::error::{Error, Result};
use crate::proto::record::{Op, OpRef, Record, RecordRef};
use crate::proto::version::Version;

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// Stores `value` under `key` if `cond` holds, with a new local version; publishes the change.
    pub(crate) fn write(&self, key: K, value: V, cond: Cond, ttl: Ttl) -> Result<Written<V>> {
        let mut enc = Encoded::empty();
        enc.encode(&key, &value)?;
        self.check_size(enc.size())?;
        self.write_encoded(key, value, &enc, cond, ttl)
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
            self.write_encoded(k, v, &enc, Cond::Always, Ttl::Cache)?;
        }
        Ok(())
    }

    /// The one local write path (`insert` and its variants, and fills from the shared tier).
    pub(super) fn write_encoded(
        &self,
        key: K,
        value: V,
        enc: &Encoded,
        cond: Cond,
        ttl: Ttl,
    ) -> Result<Written<V>> {
        // A queue slot for the change before anything is stored: the overload policy may
        // refuse the write (or wait for room) here.
        let reserved = self.reserves && self.core.publisher.reserve()?;
        let fill = match cond {
            Cond::Fill(v) => Some(v),
            _ => None,
        };
        if fill.is_some_and(|v| v <= *self.clear_floor.read()) {
            if reserved {
                self.core.publisher.release();
            }
            return Ok(Written {
                old: None,
                version: None,
            });
        }
        // One hash for the shard, the slot check, the lookup and the insert.
        let hash = self.hasher.hash_one(&key);
        let shard = self.shard_of(hash);
        let mut ev = self.events();
        let (now, wall) = self.write_time(shard, ttl);
        let mut used_slot = false;
        let mut slot_reserved = false;
        // `Ok(None)`: the condition failed, nothing stored.
        let outcome: Result<Option<(Option<V>, Version, bool)>> = {
            let mut g = shard.lock.write();
            let mut live = self.live_index(shard, &mut g, &key, hash, now, &mut ev);
            // A new key takes its entry slot before it is stored, so `len()` never exceeds
            // `cache_max`, as seen from any thread: below the cap, or by evicting while this
            // shard's lock is held (`take_slot_locked`; a victim in this shard is replaced in
            // place by `upsert`, and only if the key is stored); else with no lock held, as a
            // peer's record does (`reserve_slot_for`), and the key is looked up again.
            let mut victim = None;
            if live.is_none() && !matches!(cond, Cond::IfPresent) {
                match self.take_slot_locked(shard, &mut g, now, &mut ev) {
                    Room::Slot => slot_reserved = true,
                    Room::Replace { at, expired } => victim = Some((at, expired)),
                    Room::NotHere => {
                        drop(g);
                        slot_reserved = self.reserve_slot_for(
                            shard,
                            &key,
                            hash,
                            None,
                            now,
                            &mut ev,
                            &mut || true,
                        );
                        g = shard.lock.write();
                        live = self.live_index(shard, &mut g, &key, hash, now, &mut ev);
                    }
                }
            }
            let found = live.map(|i| g.map[i].version);
            match (cond, found) {
                (Cond::IfAbsent | Cond::Fill(_), Some(_)) | (Cond::IfPresent, None) => Ok(None),
                (Cond::Fill(v), None) if g.tombs.get(&key).is_some_and(|t| t.version >= v) => {
                    Ok(None)
                }
                (Cond::IfVersion(expected), found) if expected != found => {
                    Err(Error::VersionMismatch { expected, found })
                }
                _ => {
                    let version = fill
                        .unwrap_or_else(|| Version::new(self.core.hlc.tick(wall), self.core.id));
                    let entry = self.new_entry(value, enc, version, (now, wall), ttl);
                    let slot = match victim {
                        Some(v) => NewSlot::Replace(v),
                        None => NewSlot::Reserved(slot_reserved),
                    };
                    let up = self.upsert(
                        shard,
                        &mut g,
                        live,
                        (key, hash),
                        entry,
                        Origin::Local,
                        slot,
                        now,
                        &mut ev,
                    );
                    used_slot = up.used_slot;
                    Ok(Some((up.old, version, live.is_none())))
                }
            }
        };
        if slot_reserved && !used_slot {
            self.release_slot();
        }
        let result = match outcome {
            Ok(Some((old, version, new_key))) => {
                if fill.is_none() {
                    self.publish_put(enc, version, ttl, reserved);
                    self.backing_wrote(enc, ttl);
                } else if self.cfg.mode != CacheMode::Invalidate {
                    self.publish_put(enc, version, ttl, reserved);
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
            Ok(None) => Ok(Written {
                old: None,
                version: None,
            }),
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

    /// The monotonic and wall time of a write to `shard`. Exact, unless the write has no TTL
    /// and no entry of the shard has one (then no expiry can hinge on it): then the clock's
    /// coarse reading (at most one housekeeping tick old, about 10 ms), which costs a load
    /// instead of a clock read. Write times, versions and spike gaps are then that coarse.
    /// (A TTL entry stored in the shard concurrently, after the check, is only seen as
    /// expired late if its TTL is shorter than the coarse reading's age.)
    #[inline]
    fn write_time(&self, shard: &super::entries::Shard<K, V>, ttl: Ttl) -> (u64, u64) {
        let no_ttl = match ttl {
            Ttl::Cache => self.ttl_code == 0,
            Ttl::Entry(d) => d.is_zero(),
        };
        if no_ttl && self.coarse.is_some() && shard.next_expiry.load(Ordering::Relaxed) == u64::MAX
        {
            self.core.clock.coarse_both()
        } else {
            self.core.clock.now_both()
        }
    }

    /// Hands the record of a stored write to the publisher (if the node publishes).
    #[inline]
    fn publish_put(&self, enc: &Encoded, version: Version, ttl: Ttl, reserved: bool) {
        if self.publishes {
            self.publish_put_record(enc, version, ttl, reserved);
        }
    }

    fn publish_put_record(&self, enc: &Encoded, version: Version, ttl: Ttl, reserved: bool) {
        let inval = self.cfg.mode == CacheMode::Invalidate;
        let ttl_ms = match ttl {
            Ttl::Cache => None,
            Ttl::Entry(d) => Some(d.as_millis() as u64),
        };
        // The bytes are copied out of the thread's encode buffer only if the change is queued.
        let op = if inval {
            OpRef::Inval
        } else {
            OpRef::Put {
                value: enc.value(),
                ttl_ms,
            }
        };
        let rec = RecordRef {
            key: enc.key(),
            version,
            op,
        };
        self.core
            .publisher
            .publish_record(&self.name, rec, reserved);
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
        let reserved = self.reserves && self.core.publisher.reserve()?;
        let hash = self.hasher.hash_one(key);
        let shard = self.shard_of(hash);
        let mut ev = self.events();
        let (now, wall) = self.core.clock.now_both();
        let removed = {
            let mut g = shard.lock.write();
            self.live_index(shard, &mut g, key, hash, now, &mut ev)
                .and_then(|i| {
                    let version = Version::new(self.core.hlc.tick(wall), self.core.id);
                    let old = self.bury(
                        shard,
                        &mut g,
                        Some(i),
                        key,
                        &key_bytes,
                        version,
                        Origin::Local,
                        now,
                        &mut ev,
                    );
                    old.map(|v| (v, version))
                })
        };
        self.backing_removed(&key_bytes);
        let out = removed.map(|(v, version)| {
            if self.publishes {
                self.publish(
                    Record {
                        key: key_bytes.into(),
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
    pub(super) fn clear_at(&self, version: Version, origin: Origin) {
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
                let sm = &mut *g;
                let digests = &mut sm.digests;
                sm.map.retain(|k, e| {
                    if e.version >= version {
                        return true;
                    }
                    self.unaccount(digests, e);
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
                super::entries::bump(&shard.stats.deletes, n);
                for _ in 0..n {
                    self.note_mutation(shard, now);
                }
            }
            self.fire(ev);
        }
    }

    pub(crate) fn clear(&self) {
        let version = Version::new(self.core.hlc.tick(self.core.clock.wall_ms()), self.core.id);
        self.clear_at(version, Origin::Local);
        self.backing_cleared();
        if self.publishes {
            self.core.publisher.publish(Change {
                cache: self.name.clone(),
                kind: ChangeKindWire::Clear(version),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{bytes, setup};
    use crate::cache::hooks::ChangeKindWire;
    use crate::proto::record::{Op, Record};
    use crate::{Cache, Config};

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
                value: bytes(&10u32).into(),
                ttl_ms: None
            }
        );
        assert_eq!(
            recs[1].op,
            Op::Put {
                value: bytes(&20u32).into(),
                ttl_ms: Some(3000)
            }
        );
        assert_eq!(recs[2].op, Op::Del);
        assert_eq!(recs[0].key[..], bytes(&1u32)[..]);
        assert!(recs[0].version < recs[1].version && recs[1].version < recs[2].version);
        assert!(recs.iter().all(|r| r.version.node == node.id()));
        assert!(matches!(out[3].kind, ChangeKindWire::Clear(v) if v > recs[2].version));
        assert_eq!(&*out[0].cache, "p");
    }
}
