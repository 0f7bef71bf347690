//! The local store: typed caches over sharded maps with CLOCK eviction, TTL and byte caps.

pub(crate) mod backing;
pub mod clock;
pub(crate) mod context;
pub mod event;
pub mod handle;
pub mod hooks;
pub(crate) mod load;
pub mod metrics;
pub mod parked;
pub mod store;
