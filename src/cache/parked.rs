//! The record model: one cache held as byte records, by the same version rules as a typed
//! cache.
//!
//! A node learns about a cache from the network before (or without) the application calling
//! `cache::<K, V>(name)`. Its records are kept here, as bytes, and handed over when the cache is
//! opened. The same model serves mccache's simulator and fuzz harness (through
//! `mccache::unstable`), so there is one definition of what applying a record means outside
//! the typed store:
//!
//! - a record is applied if its version is newer than the key's record (value or tombstone)
//!   and than the clear floor; an invalidation is held as a delete;
//! - a key not held refuses records at or below the tombstone horizon (its delete may have been
//!   forgotten here, see [`Applied::BelowHorizon`]);
//! - tombstones older than the tombstone lifetime are collected by
//!   [`ParkedCache::housekeep`], which raises the horizon to the newest one collected;
//! - the digest is computed as the typed store computes it ([`entry_digest`] per live entry).
//!
//! Iteration is in key order, so everything a parked cache answers is deterministic. Bounded by
//! an entry and a byte cap; beyond them the oldest versions are dropped (anti-entropy restores
//! them on open), and a dropped delete raises the horizon.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::hooks::{Applied, KeyVersion, SYNC_BUCKETS, SyncDigest, entry_digest, key_bucket};
use crate::proto::record::{Op, Record};
use crate::proto::version::Version;

/// The byte records of one cache: values and tombstones by key, the clear floor and the
/// tombstone horizon.
#[derive(Debug)]
pub struct ParkedCache {
    records: BTreeMap<Vec<u8>, Record>,
    /// The same keys, oldest version first: the eviction order.
    by_version: BTreeSet<(Version, Vec<u8>)>,
    /// When each tombstone was stored (monotonic nanoseconds), for collection.
    tombs_at: BTreeMap<Vec<u8>, u64>,
    clear_floor: Version,
    /// Deletes at or below it may have been forgotten here (collected or evicted tombstones,
    /// entries dropped in doubt): records at or below it for keys not held are refused.
    horizon: Version,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for ParkedCache {
    /// An unbounded cache.
    fn default() -> ParkedCache {
        ParkedCache::new(usize::MAX, usize::MAX)
    }
}

impl ParkedCache {
    /// An empty cache holding at most `max_entries` records (tombstones included) of at most
    /// `max_bytes` ([`Record::weight`]) in all.
    pub fn new(max_entries: usize, max_bytes: usize) -> ParkedCache {
        ParkedCache {
            records: BTreeMap::new(),
            by_version: BTreeSet::new(),
            tombs_at: BTreeMap::new(),
            clear_floor: Version::ZERO,
            horizon: Version::ZERO,
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// Applies a record if newer than what is held; `now_nanos` (monotonic) dates a tombstone.
    pub fn apply(&mut self, rec: &Record, now_nanos: u64) -> Applied {
        if rec.version <= self.clear_floor {
            return Applied::Stale;
        }
        match self.records.get(&rec.key[..]) {
            Some(old) if old.version >= rec.version => return Applied::Stale,
            Some(_) => {
                self.remove(&rec.key);
            }
            None if rec.version <= self.horizon => return Applied::BelowHorizon,
            None => {}
        }
        let stored = match &rec.op {
            // An invalidation leaves a marker like a delete: the value is gone here.
            Op::Inval => Record {
                op: Op::Del,
                ..rec.clone()
            },
            _ => rec.clone(),
        };
        if !is_live(&stored) {
            self.tombs_at.insert(rec.key.to_vec(), now_nanos);
        }
        self.bytes += stored.weight();
        self.by_version
            .insert((stored.version, stored.key.to_vec()));
        self.records.insert(rec.key.to_vec(), stored);
        self.enforce_caps();
        Applied::Changed
    }

    /// Drops the oldest records while over a cap; a dropped delete raises the horizon.
    fn enforce_caps(&mut self) {
        while self.records.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.by_version.first().cloned() else {
                break;
            };
            if let Some(r) = self.remove(&oldest)
                && !is_live(&r)
            {
                self.horizon = self.horizon.max(r.version);
            }
        }
    }

    /// Removes a key's record and its bookkeeping.
    fn remove(&mut self, key: &[u8]) -> Option<Record> {
        let r = self.records.remove(key)?;
        self.bytes -= r.weight();
        self.by_version.remove(&(r.version, r.key.to_vec()));
        self.tombs_at.remove(key);
        Some(r)
    }

    /// Applies a versioned clear: every record at or below the floor goes.
    pub fn clear(&mut self, version: Version) {
        if version > self.clear_floor {
            self.clear_floor = version;
        }
        let floor = self.clear_floor;
        let gone: Vec<Vec<u8>> = self
            .by_version
            .iter()
            .take_while(|(v, _)| *v <= floor)
            .map(|(_, k)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Collects tombstones stored more than `ttl` before `now_nanos`, raising the horizon to
    /// the newest one collected (as the typed store's housekeeping does).
    pub fn housekeep(&mut self, now_nanos: u64, ttl: Duration) {
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let old: Vec<Vec<u8>> = self
            .tombs_at
            .iter()
            .filter(|(_, at)| now_nanos.saturating_sub(**at) > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            if let Some(r) = self.remove(&k) {
                self.horizon = self.horizon.max(r.version);
            }
        }
    }

    /// The clear floor.
    pub fn clear_floor(&self) -> Version {
        self.clear_floor
    }

    /// The tombstone horizon.
    pub fn horizon(&self) -> Version {
        self.horizon
    }

    /// Raises the tombstone horizon.
    pub fn raise_horizon(&mut self, version: Version) {
        self.horizon = self.horizon.max(version);
    }

    /// Drops a live record held at exactly `version` (see `ErasedCache::drop_doubtful`).
    pub fn drop_doubtful(&mut self, key: &[u8], version: Version) -> bool {
        self.raise_horizon(version);
        match self.records.get(key) {
            Some(r) if r.version == version && is_live(r) => {
                self.remove(key);
                true
            }
            _ => false,
        }
    }

    /// Takes every record, in key order (for handing over to the typed cache).
    pub fn drain(&mut self) -> Vec<Record> {
        self.bytes = 0;
        self.by_version.clear();
        self.tombs_at.clear();
        std::mem::take(&mut self.records).into_values().collect()
    }

    /// Every record held (values and tombstones), in key order.
    #[cfg(any(test, feature = "unstable"))]
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// The live records (values, no tombstones), in key order.
    #[cfg(any(test, feature = "unstable"))]
    pub fn live(&self) -> impl Iterator<Item = &Record> {
        self.records.values().filter(|r| is_live(r))
    }

    /// Records held, tombstones included.
    #[cfg(any(test, feature = "unstable"))]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if no record is held.
    #[cfg(any(test, feature = "unstable"))]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Digest of the live (non-deleted) records, computed as a typed cache computes it.
    pub fn digest(&self) -> SyncDigest {
        let mut d = SyncDigest {
            count: 0,
            checksum: 0,
            buckets: vec![0; SYNC_BUCKETS],
        };
        for r in self.records.values() {
            if let Op::Put { value, .. } = &r.op {
                let e = entry_digest(&r.key, value, r.version);
                d.count += 1;
                d.checksum = d.checksum.wrapping_add(e);
                let b = key_bucket(&r.key);
                d.buckets[b] = d.buckets[b].wrapping_add(e);
            }
        }
        d
    }

    /// Keys and versions of one bucket, in key order.
    pub fn bucket_versions(&self, bucket: usize) -> Vec<KeyVersion> {
        self.records
            .values()
            .filter(|r| key_bucket(&r.key) == bucket)
            .map(|r| KeyVersion {
                key: r.key.to_vec(),
                version: r.version,
                deleted: !is_live(r),
            })
            .collect()
    }

    /// The record for a key.
    pub fn record(&self, key: &[u8]) -> Option<Record> {
        self.records.get(key).cloned()
    }

    /// A chunk for state transfer: records from position `cursor` in key order whose HLC is
    /// at or below `until`, about `max_bytes` of them (at least one if any), and the next
    /// cursor (`None` at the end).
    pub fn snapshot_chunk(
        &self,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>) {
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = start;
        for r in self.records.values().skip(start) {
            if bytes >= max_bytes && !out.is_empty() {
                break;
            }
            next += 1;
            if r.version.hlc <= until {
                bytes += r.weight();
                out.push(r.clone());
            }
        }
        (out, (next < self.records.len()).then_some(next as u64))
    }
}

fn is_live(r: &Record) -> bool {
    matches!(r.op, Op::Put { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::version::NodeId;

    fn v(hlc: u64) -> Version {
        Version::new(hlc, NodeId(1))
    }

    fn put(k: &str, hlc: u64) -> Record {
        Record {
            key: k.as_bytes().to_vec().into(),
            version: v(hlc),
            op: Op::Put {
                value: vec![hlc as u8; 4].into(),
                ttl_ms: None,
            },
        }
    }

    fn del(k: &str, hlc: u64) -> Record {
        Record {
            key: k.as_bytes().to_vec().into(),
            version: v(hlc),
            op: Op::Del,
        }
    }

    #[test]
    fn newest_version_wins_and_tombstones_refuse_older_puts() {
        let mut p = ParkedCache::default();
        assert_eq!(p.apply(&put("a", 5), 0), Applied::Changed);
        assert_eq!(p.apply(&put("a", 4), 0), Applied::Stale);
        assert_eq!(p.apply(&del("a", 6), 0), Applied::Changed);
        assert_eq!(p.apply(&put("a", 6), 0), Applied::Stale);
        assert_eq!(p.records().filter(|r| is_live(r)).count(), 0);
        assert_eq!(p.records().count(), 1, "the tombstone is held");
        let inval = Record {
            op: Op::Inval,
            ..put("b", 3)
        };
        assert_eq!(p.apply(&inval, 0), Applied::Changed);
        assert_eq!(p.record(b"b").map(|r| r.op), Some(Op::Del));
    }

    #[test]
    fn clear_floor_removes_and_refuses_older_records() {
        let mut p = ParkedCache::default();
        p.apply(&put("a", 5), 0);
        p.apply(&put("b", 9), 0);
        p.clear(v(7));
        let keys: Vec<&[u8]> = p.records().map(|r| r.key.as_slice()).collect();
        assert_eq!(keys, [b"b"]);
        assert_eq!(p.apply(&put("c", 7), 0), Applied::Stale);
        p.clear(v(3));
        assert_eq!(p.clear_floor(), v(7), "the floor never goes down");
    }

    #[test]
    fn collected_tombstones_raise_the_horizon() {
        let ttl = Duration::from_secs(1);
        let mut p = ParkedCache::default();
        p.apply(&del("a", 5), 0);
        p.apply(&del("b", 8), 2_000_000_000);
        p.housekeep(1_500_000_000, ttl);
        assert_eq!(p.horizon(), v(5));
        assert_eq!(p.records().count(), 1, "the young tombstone stays");
        assert_eq!(p.apply(&put("a", 4), 0), Applied::BelowHorizon);
        assert_eq!(p.apply(&put("a", 6), 0), Applied::Changed);
        // Dropping in doubt removes only the version named.
        assert!(!p.drop_doubtful(b"a", v(5)));
        assert!(p.drop_doubtful(b"a", v(6)));
        assert_eq!(p.horizon(), v(6));
    }

    #[test]
    fn caps_drop_the_oldest_versions_and_remember_dropped_deletes() {
        let mut p = ParkedCache::new(2, usize::MAX);
        p.apply(&del("a", 1), 0);
        p.apply(&put("b", 2), 0);
        p.apply(&put("c", 3), 0);
        assert_eq!(p.records().count(), 2);
        assert!(p.record(b"a").is_none());
        assert_eq!(p.horizon(), v(1), "a forgotten delete");
        p.apply(&put("d", 4), 0);
        assert!(p.record(b"b").is_none());
        assert_eq!(
            p.horizon(),
            v(1),
            "an evicted value is not a forgotten delete"
        );
    }

    #[test]
    fn digest_matches_entry_digests_and_chunks_cover_everything_in_key_order() {
        let mut p = ParkedCache::default();
        for (i, k) in ["d", "a", "c", "b"].iter().enumerate() {
            p.apply(&put(k, 10 + i as u64), 0);
        }
        p.apply(&del("e", 20), 0);
        let d = p.digest();
        assert_eq!(d.count, 4);
        let sum = p.records().fold(0u64, |s, r| match &r.op {
            Op::Put { value, .. } => s.wrapping_add(entry_digest(&r.key, value, r.version)),
            _ => s,
        });
        assert_eq!(d.checksum, sum);
        assert_eq!(d.buckets.iter().fold(0u64, |s, b| s.wrapping_add(*b)), sum);
        let mut cursor = Some(0);
        let mut keys = Vec::new();
        while let Some(c) = cursor {
            let (recs, next) = p.snapshot_chunk(c, 1, u64::MAX);
            assert_eq!(recs.len(), 1);
            keys.extend(recs.into_iter().map(|r| r.key.to_vec()));
            cursor = next;
        }
        assert_eq!(keys, [b"a", b"b", b"c", b"d", b"e"]);
        let drained: Vec<Vec<u8>> = p.drain().into_iter().map(|r| r.key.to_vec()).collect();
        assert_eq!(drained, keys);
        assert_eq!(p.records().count(), 0);
    }
}
