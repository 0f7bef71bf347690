//! Sockets and the single tokio driver task that connects the protocol core to the network.

pub mod diagnose;
pub mod discovery;
pub mod driver;
pub mod overflow;
pub mod socket;
pub mod sockopt;
pub mod transport;
pub mod unicast;
