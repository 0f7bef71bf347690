//! The local store: typed caches over sharded maps with CLOCK eviction, TTL and byte caps.

pub(crate) mod backing;
pub(crate) mod clock;
pub(crate) mod context;
pub(crate) mod event;
pub(crate) mod handle;
pub(crate) mod hooks;
pub(crate) mod load;
pub(crate) mod metrics;
pub(crate) mod parked;
pub(crate) mod store;
