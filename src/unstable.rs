//! Internals for mccache's own tests, simulator, benches and fuzz harness, behind the
//! `unstable` cargo feature (the crate's dev-dependency on itself turns it on for tests).
//!
//! Not part of the public API: no semver guarantee, hidden from the docs. Each item is listed
//! here by name, so what the tests reach into stays visible in one place.

pub use crate::cache::clock::{Clock, FakeClock};
pub use crate::cache::parked::ParkedCache;
pub use crate::net::unicast::{AddressBook, route};
pub use crate::node::detached::DetachedNode;
pub use crate::node::replica::NodeApp;
