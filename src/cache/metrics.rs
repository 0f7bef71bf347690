//! Per-cache metrics, in McCache's names where they exist.

use serde::{Deserialize, Serialize};

/// A snapshot of one cache's counters.
///
/// `lookups = hits + misses`. `inserts`, `updates` and `deletes` count local and replicated
/// changes alike (as McCache does); evictions are always local decisions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheMetrics {
    /// Reads of a key (`get`, `contains_key`, `get_many` per key, ...).
    pub lookups: u64,
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing (or only an expired entry).
    pub misses: u64,
    /// New keys stored.
    pub inserts: u64,
    /// Existing keys overwritten.
    pub updates: u64,
    /// Keys removed by `remove`, `clear` or a peer's delete.
    pub deletes: u64,
    /// Entries evicted because the cache held `cache_max` entries.
    pub evictions_capacity: u64,
    /// Entries evicted because the cache held `cache_size` bytes.
    pub evictions_bytes: u64,
    /// Entries removed because their TTL passed.
    pub evictions_ttl: u64,
    /// Live entries now (McCache `count`).
    pub entries: u64,
    /// Bytes now: serialized key + value sizes (McCache `size`).
    pub bytes: u64,
    /// Mutations that came within `callback_win` of the previous one (McCache `spikes`).
    pub spikes: u64,
    /// Mean gap in seconds between spiking mutations (McCache `spikeInt`).
    pub spike_interval: f64,
    /// Values a loader of [`Cache::get_or_load`](crate::Cache::get_or_load) (or its async
    /// form) produced and stored, on a miss or as a refresh.
    pub loads: u64,
    /// Loader calls that failed (returned an error or panicked). A failed refresh leaves the
    /// stale value in place until its TTL ends (fail-safe).
    pub load_failures: u64,
    /// Background refreshes started (stale or eager).
    pub refreshes: u64,
    /// Reads that returned a stale value (older than `fresh_for`) while it was refreshed.
    pub stale_served: u64,
    /// Announcements from peers that they were loading a key of this cache.
    pub peer_loads_seen: u64,
    /// Loading reads that missed and got a peer's loaded value by waiting for it, instead of
    /// running their own loader.
    pub peer_load_waits: u64,
}

impl CacheMetrics {
    /// All evictions, whatever the cause (McCache `evicts`).
    pub fn evictions(&self) -> u64 {
        self.evictions_capacity + self.evictions_bytes + self.evictions_ttl
    }
}
