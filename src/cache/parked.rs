//! Peers' data for caches this node has not opened yet.
//!
//! A node learns about a cache from the network before (or without) the application calling
//! `cache::<K, V>(name)`. Its records are kept here, as bytes, by the same version rules as a
//! typed cache, and handed over when the cache is opened. Bounded by the node-wide entry and byte
//! caps; beyond them the oldest versions are dropped (anti-entropy restores them on open).

use std::collections::HashMap;

use super::hooks::{Applied, KeyVersion, SYNC_BUCKETS, SyncDigest, entry_digest, key_bucket};
use crate::proto::record::{Op, Record};
use crate::proto::version::Version;

/// The byte records of one unopened cache.
#[derive(Debug, Default)]
pub struct ParkedCache {
    records: HashMap<Vec<u8>, Record>,
    clear_floor: Version,
    /// Deletes at or below it may have been forgotten here (evicted tombstones, entries
    /// dropped in doubt): records at or below it for keys not held are refused.
    horizon: Version,
    bytes: usize,
}

impl ParkedCache {
    /// Applies a record if newer than what is held.
    pub fn apply(&mut self, rec: &Record, max_entries: usize, max_bytes: usize) -> Applied {
        if rec.version <= self.clear_floor {
            return Applied::Stale;
        }
        match self.records.get(&rec.key) {
            Some(old) if old.version >= rec.version => return Applied::Stale,
            Some(old) => self.bytes -= old.weight(),
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
        self.bytes += stored.weight();
        self.records.insert(rec.key.clone(), stored);
        while self.records.len() > max_entries || self.bytes > max_bytes {
            let Some(oldest) = self
                .records
                .values()
                .min_by_key(|r| r.version)
                .map(|r| r.key.clone())
            else {
                break;
            };
            if let Some(r) = self.records.remove(&oldest) {
                self.bytes -= r.weight();
                if !matches!(r.op, Op::Put { .. }) && r.version > self.horizon {
                    // A forgotten delete.
                    self.horizon = r.version;
                }
            }
        }
        Applied::Changed
    }

    /// Applies a versioned clear.
    pub fn clear(&mut self, version: Version) {
        if version > self.clear_floor {
            self.clear_floor = version;
        }
        let floor = self.clear_floor;
        self.records.retain(|_, r| r.version > floor);
        self.bytes = self.records.values().map(|r| r.weight()).sum();
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
            Some(r) if r.version == version && matches!(r.op, Op::Put { .. }) => {
                if let Some(r) = self.records.remove(key) {
                    self.bytes -= r.weight();
                }
                true
            }
            _ => false,
        }
    }

    /// Takes every record (for handing over to the typed cache).
    pub fn drain(&mut self) -> Vec<Record> {
        self.bytes = 0;
        self.records.drain().map(|(_, r)| r).collect()
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

    /// Keys and versions of one bucket.
    pub fn bucket_versions(&self, bucket: usize) -> Vec<KeyVersion> {
        self.records
            .values()
            .filter(|r| key_bucket(&r.key) == bucket)
            .map(|r| KeyVersion {
                key: r.key.clone(),
                version: r.version,
                deleted: !matches!(r.op, Op::Put { .. }),
            })
            .collect()
    }

    /// The record for a key.
    pub fn record(&self, key: &[u8]) -> Option<Record> {
        self.records.get(key).cloned()
    }

    /// A chunk for state transfer, by position in a sorted key order.
    pub fn snapshot_chunk(&self, cursor: u64, max_bytes: usize) -> (Vec<Record>, Option<u64>) {
        let mut keys: Vec<&Vec<u8>> = self.records.keys().collect();
        keys.sort();
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = cursor as usize;
        while i < keys.len() && (bytes < max_bytes || out.is_empty()) {
            let r = &self.records[keys[i]];
            bytes += r.weight();
            out.push(r.clone());
            i += 1;
        }
        (out, (i < keys.len()).then_some(i as u64))
    }
}
