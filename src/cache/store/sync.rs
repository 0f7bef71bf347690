//! The [`ErasedCache`] side of a store, which the node and the protocol drive without knowing
//! `K` and `V`: remote applies, digests and bucket key lists for anti-entropy, snapshot chunks
//! for state transfer, housekeeping and the tombstone horizon.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::encoding;
use super::entries::Entry;
use super::{CacheKey, CacheValue, Store, type_names};
use crate::cache::event::Origin;
use crate::cache::hooks::{Applied, ErasedCache, KeyVersion, SYNC_BUCKETS, SyncDigest};
use crate::cache::metrics::CacheMetrics;
use crate::config::CacheMode;
use crate::proto::record::{InlineBytes, Op, Record, RecordRef};
use crate::proto::version::{NodeId, Version};

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// The record of a live entry, re-serialized (`key_bytes` empty: serialize `key`).
    fn record_of(&self, key_bytes: &[u8], key: &K, e: &Entry<V>) -> Option<Record> {
        let op = if self.cfg.mode == CacheMode::Invalidate {
            Op::Inval
        } else {
            Op::Put {
                value: rmp_serde::to_vec(&e.value).ok()?.into(),
                ttl_ms: e.ttl_ms(),
            }
        };
        let key = if key_bytes.is_empty() {
            encoding::to_vec(key).ok()?.into()
        } else {
            InlineBytes::from_slice(key_bytes)
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

    fn apply_remote(&self, record: RecordRef<'_>, origin: NodeId) -> Applied {
        let mut applied = Applied::Skipped;
        self.apply_remote_run(&[record], origin, &mut |a| applied = a);
        applied
    }

    fn apply_remote_run(
        &self,
        records: &[RecordRef<'_>],
        origin: NodeId,
        each: &mut dyn FnMut(Applied),
    ) {
        self.apply_remote_records(records, origin, each)
    }

    fn apply_clear(&self, version: Version, origin: NodeId) {
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
            key: InlineBytes::from_slice(key),
            version: t.version,
            op: Op::Del,
        })
    }

    fn sync_digest(&self) -> SyncDigest {
        self.expire_due_and_fire();
        let buckets = self.bucket_digests();
        SyncDigest {
            count: self.entries.load(Ordering::Relaxed),
            checksum: super::reads::checksum_of(&buckets),
            buckets,
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
                let i = slot[e.bucket() as usize];
                if i != usize::MAX
                    && !e.expired(now)
                    && let Ok(key) = encoding::to_vec(k)
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
                if e.bucket() as usize == bucket
                    && !e.expired(now)
                    && let Ok(key) = encoding::to_vec(k)
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

    fn snapshot_chunk(
        &self,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>) {
        let now = self.core.clock.now_nanos();
        let mut out = Vec::new();
        let mut weight = 0usize;
        let mut scanned = 0usize;
        let mut si = (cursor >> 32) as usize;
        let mut pos = (cursor & 0xffff_ffff) as usize;
        while si < self.shards.len() {
            let g = self.shards[si].lock.read();
            let total = g.map.len() + g.tombs.len();
            while pos < total {
                let rec = if pos < g.map.len() {
                    g.map.get_index(pos).and_then(|(k, e)| {
                        if e.version.hlc > until || e.expired(now) {
                            None
                        } else {
                            self.record_of(&[], k, e)
                        }
                    })
                } else {
                    g.tombs
                        .get_index(pos - g.map.len())
                        .filter(|(_, t)| t.version.hlc <= until)
                        .map(|(_, t)| Record {
                            key: InlineBytes::from_slice(&t.key_bytes),
                            version: t.version,
                            op: Op::Del,
                        })
                };
                pos += 1;
                scanned += 1;
                if let Some(r) = rec {
                    weight += r.weight();
                    out.push(r);
                }
                if weight >= max_bytes || scanned >= super::SNAPSHOT_SCAN {
                    let (nsi, npos) = if pos < total { (si, pos) } else { (si + 1, 0) };
                    let next =
                        (nsi < self.shards.len()).then_some(((nsi as u64) << 32) | npos as u64);
                    return (out, next);
                }
            }
            drop(g);
            si += 1;
            pos = 0;
        }
        (out, None)
    }

    fn housekeep(&self, tombstone_ttl: Duration) {
        self.expire_due_and_fire();
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

    fn adopts_absent_keys(&self) -> bool {
        self.cfg.mode != CacheMode::UpdateIfPresent
    }

    fn raise_horizon(&self, version: Version) {
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

#[cfg(test)]
mod tests {
    use super::super::mix64;
    use super::super::testing::{erased, setup};
    use super::*;
    use crate::{Cache, Config};

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
            let (chunk, next) = e.snapshot_chunk(cursor, 1000, u64::MAX);
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
            assert_eq!(e2.apply_remote(r.view(), node.id()), Applied::Changed);
        }
        assert_eq!(c2.checksum(), c.checksum());
        assert_eq!(c2.len(), 450);
        // Bounded by an HLC: only the records at or below it, in chunks that always advance.
        let mut hlcs: Vec<u64> = recs.iter().map(|r| r.version.hlc).collect();
        hlcs.sort_unstable();
        let until = hlcs[199];
        let (mut cursor, mut bounded, mut chunks) = (Some(0), Vec::new(), 0);
        while let Some(at) = cursor {
            let (chunk, next) = e.snapshot_chunk(at, 1000, until);
            assert!(next.is_none_or(|n| n > at), "a chunk advances");
            bounded.extend(chunk);
            cursor = next;
            chunks += 1;
        }
        assert!(chunks > 1);
        assert_eq!(bounded.len(), 200);
        assert!(bounded.iter().all(|r| r.version.hlc <= until));
    }

    #[test]
    fn mix64_spreads_small_inputs() {
        assert_ne!(mix64(1), mix64(2));
        assert_ne!(mix64(0), 0);
    }
}
