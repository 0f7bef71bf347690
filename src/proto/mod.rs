//! The replication protocol as an I/O-free state machine: no sockets, no clock reads.
//!
//! Time comes in as an argument; datagrams, timers and events come out to be polled.

pub mod record;
pub mod version;
pub mod crypto;
pub mod drop;
pub mod fragment;
pub mod header;
pub mod replay;
pub mod wire;
