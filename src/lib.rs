//! # mccache
//!
//! An embeddable, cluster-aware, in-process cache. Every process of the cluster holds its own
//! copy; inserts, updates and deletes are multicast to the others as encrypted, MTU-sized UDP
//! datagrams and applied there in version order.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod cache;
pub mod config;
pub mod diag;
pub mod error;
pub mod net;
pub mod proto;
pub mod replica;

pub use cache::metrics::CacheMetrics;
pub use config::{CacheConfig, CacheMode, Config};
pub use config::{TantrumSide, generate_key};
pub use diag::{MulticastCheck, check_multicast, get_hops, get_mtu};
pub use error::{Error, Result};
pub use proto::version::{NodeId, Version};
