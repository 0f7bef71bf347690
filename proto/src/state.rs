//! What the protocol core needs from the application: the caches, seen as bytes.
//!
//! The real node implements it over its typed caches; the simulator implements it over a
//! plain in-memory model. Nothing here does I/O.

use super::message::Query;
use super::record::{Record, RecordRef};
use super::version::{NodeId, Version};
use crate::sync::{Applied, KeyVersion, SyncDigest};

/// The application state the protocol replicates.
pub trait AppState {
    /// Applies a peer's change by version (the cache layer implements it, see `ErasedCache::apply_remote` in `mccache`).
    /// The record borrows the received message (an owned [`Record`] lends one with
    /// [`Record::view`]).
    fn apply(&mut self, cache: &str, record: RecordRef<'_>, origin: NodeId) -> Applied;
    /// Applies a run of a peer's changes to one cache, in order, calling `each` once per record,
    /// in the same order, with what applying it did. The default applies them one by one with
    /// [`AppState::apply`]; an application overrides it to share work over the run (finding
    /// the cache once, reading its clock once).
    fn apply_run(
        &mut self,
        cache: &str,
        records: &[RecordRef<'_>],
        origin: NodeId,
        each: &mut dyn FnMut(Applied),
    ) {
        for record in records {
            each(self.apply(cache, *record, origin));
        }
    }
    /// Applies a peer's versioned clear.
    fn apply_clear(&mut self, cache: &str, version: Version, origin: NodeId);
    /// The newest clear applied to a cache ([`Version::ZERO`] if none or no such cache).
    fn clear_floor(&self, cache: &str) -> Version;
    /// Names of the caches this node holds (and replicates).
    fn caches(&self) -> Vec<String>;
    /// Digest of one cache, `None` if this node does not hold it.
    fn digest(&self, cache: &str) -> Option<SyncDigest>;
    /// Keys and versions (tombstones included) of one bucket.
    fn bucket_versions(&self, cache: &str, bucket: usize) -> Vec<KeyVersion>;
    /// [`AppState::bucket_versions`] for several buckets at once, in the order asked (a store
    /// answers in one pass instead of one pass per bucket).
    fn buckets_versions(&self, cache: &str, buckets: &[usize]) -> Vec<Vec<KeyVersion>> {
        buckets
            .iter()
            .map(|&b| self.bucket_versions(cache, b))
            .collect()
    }
    /// The record for one key (value or tombstone), for repair.
    fn record(&self, cache: &str, key: &[u8]) -> Option<Record>;
    /// A chunk of a cache for state transfer: from `cursor`, records whose version's HLC is at
    /// or below `until` ([`u64::MAX`]: all), about `max_bytes` of them, and the next cursor
    /// (`None` at the end). A chunk may hold none (the positions it passed held only newer
    /// records), but it always advances.
    fn snapshot_chunk(
        &self,
        cache: &str,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>);
    /// Where a joiner's copy of `cache` starts its parallel streams: ascending cursors, the
    /// first 0. Each stream copies from its start up to the next one's (the last to the end),
    /// so any split is complete whatever the donor's layout; one that matches it copies in
    /// parallel instead of one chunk per round trip. The default is one stream.
    fn snapshot_starts(&self, _cache: &str) -> Vec<u64> {
        vec![0]
    }
    /// The newest HLC this node issued or observed ([`u64::MAX`] if it cannot say): a state
    /// transfer copies records up to it, and the joiner hears the rest on the stream.
    fn clock(&self) -> u64 {
        u64::MAX
    }
    /// The tombstone horizon of a cache: it may have forgotten deletes at or below this
    /// version (its collected tombstones, and entries it dropped in doubt), so it refuses
    /// records at or below it for keys it does not hold ([`Applied::BelowHorizon`]).
    /// [`Version::ZERO`] if it never forgot a delete (or has no such cache).
    fn horizon(&self, _cache: &str) -> Version {
        Version::ZERO
    }
    /// Raises a cache's horizon to `version` (a joiner adopting its donor's).
    fn raise_horizon(&mut self, _cache: &str, _version: Version) {}
    /// Drops a live entry held at `version` (no tombstone, nothing published) because a peer
    /// that does not hold it may have forgotten its delete; raises the horizon to `version`.
    /// Returns true if an entry was dropped.
    fn drop_doubtful(&mut self, _cache: &str, _key: &[u8], _version: Version) -> bool {
        false
    }
    /// Whether `cache` takes a peer's value for a key it does not hold live (false for a cache
    /// that only updates keys it already holds). When false, anti-entropy neither pulls such
    /// keys nor pushes them to a peer that lacks them: they would be skipped at every pulse.
    fn adopts_absent_keys(&self, _cache: &str) -> bool {
        true
    }
    /// The application's wall clock, in milliseconds since the Unix epoch (the core reads no
    /// clock itself; anti-entropy uses this to leave changes still in flight alone).
    fn wall_ms(&self) -> u64;
    /// A peer announced that it is loading `key` of `cache` ([`crate::message::Item::Loading`]).
    fn peer_loading(&mut self, _cache: &str, _key: &[u8], _origin: NodeId) {}
    /// The answer to a cluster query, msgpack-encoded.
    fn answer(&self, query: &Query) -> Vec<u8>;
}
