//! Internals for mccache's own tests, simulator, benches and fuzz harness, behind the
//! `unstable` cargo feature (the crate's dev-dependency on itself turns it on for tests).
//!
//! Not part of the public API: no semver guarantee, hidden from the docs. Each item is listed
//! here by name, so what the tests reach into stays visible in one place.

use std::sync::Arc;

use crate::cache::hooks::NoPublisher;
use crate::{Config, Node, Result};

pub use crate::cache::clock::{Clock, CoarseCell, FakeClock, SystemClock};
pub use crate::cache::hooks::ErasedCache;
pub use crate::cache::parked::ParkedCache;
pub use crate::net::socket::{recv_socket, recv_socket_uncoalesced, send_socket};
pub use crate::net::sockopt::enter_netns;
pub use crate::net::unicast::{AddressBook, route};
pub use crate::node::detached::DetachedNode;
pub use crate::node::replica::{LagSamples, NodeApp, Registered, Registry};

/// Starts a local-only node on a given clock: tests drive time with a [`FakeClock`].
///
/// # Errors
/// The configuration error, if `config` is invalid.
pub fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Node> {
    Node::start_with(config, Arc::new(NoPublisher), clock, None)
}

/// One cache of `node` without types, by name: the view the replication layer drives
/// (remote applies, digests, snapshots).
pub fn erased_cache(node: &Node, name: &str) -> Option<Arc<dyn ErasedCache>> {
    node.erased(name)
}
