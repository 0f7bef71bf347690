//! mccache's replication protocol as an I/O-free state machine: no sockets, no clock reads, no
//! RNG. This crate's dependency tree has no async runtime and no socket library, so the
//! compiler enforces the rule.
//!
//! Time comes in as an argument; datagrams, timers and events come out to be polled.
//!
//! - [`wire`]: datagram format ([`header`]), sealing ([`crypto`]), fragments ([`fragment`]),
//!   replay protection ([`replay`]), drop reasons ([`drop`](mod@drop));
//! - [`message`]: what travels inside; [`record`] and [`version`]: the changes and their order;
//! - [`endpoint`]: the state machine (membership, [`reliability`], anti-entropy, state transfer);
//! - [`state`]: what the core needs from the application; [`sync`]: digests and buckets.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod budget;
pub mod codec;
pub mod crypto;
pub mod drop;
pub mod endpoint;
pub mod fragment;
pub mod header;
pub mod message;
pub mod metrics;
pub mod record;
pub mod reliability;
pub mod replay;
pub mod state;
pub mod sync;
pub mod version;
pub mod wire;
