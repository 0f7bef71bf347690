//! The seam between a cache and an optional shared tier behind it (memcached, with the
//! `memcached` feature): consulted on a local miss and told about local writes.
//!
//! It speaks bytes (serialized keys and values, as the replication layer does), so a tier
//! never needs `K` or `V`. A tier never fails a cache call: its failures are counted and the
//! cache carries on with its local tier.
// Without the `memcached` feature nothing implements the seam yet.
#![cfg_attr(not(feature = "memcached"), allow(dead_code))]

use std::time::Duration;

/// What a read of the shared tier found.
#[derive(Debug)]
pub(crate) enum Read {
    /// A value, and the time it has left there (`None`: no expiry).
    Hit {
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    /// Not there.
    Miss,
    /// The tier could not answer in time (the failure is counted).
    Failed,
}

/// What a read that may take the fleet-wide load lease found.
#[derive(Debug)]
pub(crate) enum Lease {
    /// A value: no load needed.
    Hit {
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    /// This caller won the lease: it runs the loader and hands the value to
    /// [`Backing::fulfil`] (or calls [`Backing::abandon`] if the loader fails).
    Won(u64),
    /// Another caller holds the lease; `stale` is the previous value if the tier still has one.
    Busy { stale: Option<Vec<u8>> },
    /// No lease to be had (the tier failed or has no lease support): load locally.
    Unavailable,
}

/// A shared tier behind one cache.
pub(crate) trait Backing: Send + Sync {
    /// Reads `key` (a local miss in [`Cache::get`](crate::Cache::get)).
    fn read(&self, key: &[u8]) -> Read;

    /// Reads `key`, taking the load lease if it is missing (a local miss in
    /// `get_or_insert_with`).
    fn lease(&self, key: &[u8]) -> Lease;

    /// Stores the value loaded under the lease `token`.
    fn fulfil(&self, key: &[u8], token: u64, value: &[u8], ttl: Option<Duration>);

    /// Gives the lease `token` back after a failed load, so another caller can load.
    fn abandon(&self, key: &[u8], token: u64);

    /// A local write: write-through stores the value, invalidate-through deletes the copy.
    fn wrote(&self, key: &[u8], value: &[u8], ttl: Option<Duration>);

    /// A value loaded without a lease (the lease wait ran out or the tier failed): stored if
    /// the tier is reachable.
    fn loaded(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) {
        self.wrote(key, value, ttl);
    }

    /// A local remove: the shared copy is deleted.
    fn removed(&self, key: &[u8]);

    /// A local clear: every shared copy of this cache stops being visible.
    fn cleared(&self);

    /// How long a caller waits for another caller's lease before it loads by itself.
    fn lease_wait(&self) -> Duration;
}
