//! What listeners and `metadata` see: change events, their origin, and per-entry metadata.

use std::time::SystemTime;

use crate::proto::version::{NodeId, Version};

/// What happened to a key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A new key was stored.
    Insert,
    /// An existing key got a new value (or a new TTL through `touch`).
    Update,
    /// The key was removed by `remove`, or by a peer's delete or invalidation.
    Remove,
    /// The key's TTL passed (a local decision, never replicated).
    Expire,
    /// The key was evicted to respect `cache_max` or `cache_size` (local, never replicated).
    Evict,
    /// The key was removed by a `clear` of the whole cache (local or a peer's).
    Clear,
}

/// Where a change came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// This node: a call on a `Cache` handle, or a local eviction/expiry.
    Local,
    /// A peer's replicated change.
    Remote(NodeId),
}

/// One change to one key, as delivered to listeners registered with
/// [`Cache::on_change`](crate::Cache::on_change).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeEvent<K> {
    /// The key that changed.
    pub key: K,
    /// What happened.
    pub kind: ChangeKind,
    /// Who made the change.
    pub origin: Origin,
    /// The version of the change: the new version for inserts and updates, the delete/clear
    /// version for removals and clears, the removed entry's version for evictions and expiries.
    pub version: Version,
    /// McCache's `callback_win` rule: `true` when the key was *read* (a hit by `get`,
    /// `get_many`, `get_with_version`, `contains_key` or `get_or_insert_with`) at most
    /// `callback_win` before this change, and the change is an update, removal, expiry,
    /// eviction or clear. Always `false` for an [`ChangeKind::Insert`] and when `callback_win`
    /// is zero. Reads are timed on the monotonic clock with the granularity of its coarse
    /// reading (the housekeeper refreshes it every 10 ms; see `SystemClock`).
    pub in_callback_window: bool,
}

/// Identifies a listener registered with [`Cache::on_change`](crate::Cache::on_change), for
/// [`Cache::remove_listener`](crate::Cache::remove_listener).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u64);

/// What the cache knows about one live entry, from [`Cache::metadata`](crate::Cache::metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The version of the last write (the token for `compare_and_swap`).
    pub version: Version,
    /// When this node stored the last write (local wall clock, also for replicated writes).
    pub written: SystemTime,
    /// The last read hit on this node, if any (millisecond granularity).
    pub last_lookup: Option<SystemTime>,
    /// When the entry expires, if it has a TTL.
    pub expires: Option<SystemTime>,
    /// Serialized key + value bytes (what counts against `cache_size`).
    pub size: u64,
    /// crc32 of the serialized value bytes.
    pub crc: u32,
}
