//! What every cache of a node shares, handed down by the node when it opens a cache: identity,
//! version clock, time source, where local changes go, and the size limit of a change.
//!
//! The cache layer depends on this, never on the node that builds it.

use std::sync::Arc;

use crate::cache::clock::Clock;
use crate::cache::hooks::Publisher;
use crate::proto::version::{Hlc, NodeId};

/// The context a [`Store`](crate::cache::store::Store) works in.
pub(crate) struct StoreContext {
    /// The node's id: the tie-breaker of every version this node writes.
    pub(crate) id: NodeId,
    /// The node's hybrid logical clock, shared by all its caches.
    pub(crate) hlc: Arc<Hlc>,
    /// Monotonic and wall time (injectable in tests).
    pub(crate) clock: Arc<dyn Clock>,
    /// Where local writes go to be replicated.
    pub(crate) publisher: Arc<dyn Publisher>,
    /// Largest serialized key + value that is replicated (`max_message_size`).
    pub(crate) max_message_size: usize,
}
