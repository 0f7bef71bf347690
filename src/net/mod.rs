//! Sockets and the single tokio driver task that connects the protocol core to the network.

pub(crate) mod buffers;
pub(crate) mod diagnose;
pub(crate) mod discovery;
pub(crate) mod driver;
pub(crate) mod express;
pub(crate) mod overflow;
pub(crate) mod socket;
pub(crate) mod sockopt;
pub(crate) mod supersede;
pub(crate) mod transport;
pub(crate) mod unicast;
