//! The seam between typed caches and the rest of the node: local writes go out through a
//! [`Publisher`]; remote changes, digests and housekeeping come in through [`ErasedCache`].
//!
//! Both sides speak bytes ([`Record`]) so that the replication layer never needs `K` or `V`.

use std::sync::Arc;

use crate::proto::record::{Record, RecordRef};
use crate::proto::version::NodeId;

/// A local write to be replicated: the cache name and the record (key, version, op).
#[derive(Clone, Debug)]
pub(crate) struct Change {
    /// The cache the write happened in.
    pub cache: Arc<str>,
    /// What happened.
    pub kind: ChangeKindWire,
}

/// The replicated forms of a local write.
#[derive(Clone, Debug)]
pub(crate) enum ChangeKindWire {
    /// One key changed (put, delete or invalidate).
    Record(Record),
    /// The whole cache was cleared at this version: entries older than it are removed.
    Clear(crate::proto::version::Version),
    /// This node started loading the key (these bytes) from the application's source.
    Loading(Vec<u8>),
}

/// Where a cache hands its local writes. A node that cannot queue a change marks it for repair
/// (see the overload policy, `overload`, in docs/CONFIG.md).
///
/// A write calls [`Publisher::reserve`] before it stores anything: `Ok(true)` holds a queue slot
/// for its change, which then goes out through [`Publisher::publish_reserved`] (or the slot is
/// given back with [`Publisher::release`] if the write changed nothing); `Ok(false)` means the
/// change goes through [`Publisher::publish`]; an error refuses the write.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// Queues one change for replication (no slot reserved: never blocks).
    fn publish(&self, change: Change);

    /// Reserves a queue slot for the change of a write about to be stored (see the trait docs).
    /// May wait, bounded, under `overload = "block"`.
    fn reserve(&self) -> crate::error::Result<bool> {
        Ok(false)
    }

    /// Queues a change for which [`Publisher::reserve`] returned `Ok(true)`.
    fn publish_reserved(&self, change: Change) {
        self.publish(change)
    }

    /// Whether [`Publisher::reserve`] may return anything but `Ok(false)`; a cache asks once,
    /// when it opens, and a write skips the call when it may not.
    fn reserves(&self) -> bool {
        true
    }

    /// Gives back a slot reserved by a write that published nothing.
    fn release(&self) {}

    /// Queues the record of one key's local write, as [`Publisher::publish`] (or
    /// [`Publisher::publish_reserved`] if `reserved`) would, but copies it out of the borrowed
    /// `rec` only if it is queued: a change that finds the queue full is remembered by its key
    /// bytes alone, so an overloaded node copies nothing per write.
    fn publish_record(&self, cache: &Arc<str>, rec: RecordRef<'_>, reserved: bool) {
        let change = Change {
            cache: cache.clone(),
            kind: ChangeKindWire::Record(rec.to_record()),
        };
        if reserved {
            self.publish_reserved(change);
        } else {
            self.publish(change);
        }
    }

    /// Whether published changes go anywhere. Caches skip building records when this is
    /// `false` (a local-only node), which keeps local writes cheap.
    fn enabled(&self) -> bool {
        true
    }
}

/// A publisher that drops everything: a node with no network.
#[derive(Debug, Default)]
pub(crate) struct NoPublisher;

impl Publisher for NoPublisher {
    fn publish(&self, _change: Change) {}

    fn enabled(&self) -> bool {
        false
    }
}

pub(crate) use crate::proto::sync::{
    Applied, KeyVersion, SYNC_BUCKETS, SyncDigest, entry_digest, key_bucket, splitmix64,
};

/// A cache seen without its types: what the node and the protocol need from every cache.
///
/// Implemented by the typed store. Every method is safe to call from the network thread while
/// application threads use the cache.
pub trait ErasedCache: Send + Sync + 'static {
    /// The cache name.
    fn name(&self) -> &str;
    /// `"K, V"` type names, for type-mismatch errors.
    fn type_names(&self) -> String;
    /// Applies a peer's change if its version is newer than what is held (tombstones and the
    /// clear floor included); fires change listeners with origin = remote(`origin`).
    fn apply_remote(&self, record: RecordRef<'_>, origin: NodeId) -> Applied;
    /// Applies a run of a peer's changes in order, calling `each` once per record, in the same
    /// order, with what applying it did (see `AppState::apply_run` in the protocol core). The
    /// store reads its clock and clear floor once for the run and fires the run's change
    /// events after the last record.
    fn apply_remote_run(
        &self,
        records: &[RecordRef<'_>],
        origin: NodeId,
        each: &mut dyn FnMut(Applied),
    ) {
        for record in records {
            each(self.apply_remote(*record, origin));
        }
    }
    /// Applies a peer's `clear`: removes every entry older than `version`, raises the clear floor.
    fn apply_clear(&self, version: crate::proto::version::Version, origin: NodeId);
    /// The current record for a key (live value or tombstone), re-serialized, for repair.
    fn record(&self, key: &[u8]) -> Option<Record>;
    /// The digest of live entries.
    fn sync_digest(&self) -> SyncDigest;
    /// Every key of one bucket with its version, tombstones included.
    fn bucket_versions(&self, bucket: usize) -> Vec<KeyVersion>;
    /// Several buckets at once, in the order asked.
    fn buckets_versions(&self, buckets: &[usize]) -> Vec<Vec<KeyVersion>> {
        buckets.iter().map(|&b| self.bucket_versions(b)).collect()
    }
    /// Live records (and tombstones) in a stable cursor order for state transfer: returns up to
    /// roughly `max_bytes` of records starting at `cursor` whose HLC is at or below `until`
    /// ([`u64::MAX`]: all), and the next cursor (`None` at end). A chunk passes at most
    /// [`crate::cache::store::SNAPSHOT_SCAN`] positions, so it may hold none.
    fn snapshot_chunk(
        &self,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>);
    /// Housekeeping: sweep expired entries, collect tombstones older than `tombstone_ttl`
    /// (raising the tombstone horizon to the newest collected).
    fn housekeep(&self, tombstone_ttl: std::time::Duration);
    /// The tombstone horizon: deletes at or below it may have been forgotten here (see
    /// [`Applied::BelowHorizon`]).
    fn horizon(&self) -> crate::proto::version::Version {
        crate::proto::version::Version::ZERO
    }
    /// Raises the tombstone horizon.
    fn raise_horizon(&self, _version: crate::proto::version::Version) {}
    /// Drops the live entry of `key` if it is held at exactly `version` (no tombstone, no
    /// publish) and raises the horizon to `version`. True if dropped.
    fn drop_doubtful(&self, _key: &[u8], _version: crate::proto::version::Version) -> bool {
        false
    }
    /// Whether a peer's value for a key not held live is taken (false in update-if-present
    /// mode, see `AppState::adopts_absent_keys` in the protocol core).
    fn adopts_absent_keys(&self) -> bool {
        true
    }
    /// Local metrics.
    fn metrics(&self) -> crate::cache::metrics::CacheMetrics;
    /// Clears the cache here and publishes a versioned clear (what `Cache::clear` does).
    fn clear_all(&self);
    /// A peer is loading the key with these bytes (see `Cache::get_or_load`).
    fn peer_loading(&self, _key: &[u8]) {}
    /// The newest clear applied (entries at or below it are refused).
    fn clear_floor(&self) -> crate::proto::version::Version;
    /// The per-entry crc of a live key (`crc32(key bytes ‖ value bytes ‖ version bytes)`), as
    /// [`crate::Cache::key_checksum`] returns it. The default derives it from [`Self::record`].
    fn key_checksum(&self, key: &[u8]) -> Option<u32> {
        match self.record(key)? {
            Record {
                key,
                version,
                op: crate::proto::record::Op::Put { value, .. },
            } => {
                let mut h = crc32fast::Hasher::new();
                h.update(&key);
                h.update(&value);
                h.update(&version.to_bytes());
                Some(h.finalize())
            }
            _ => None,
        }
    }
}
