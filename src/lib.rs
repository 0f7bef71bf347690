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
pub mod node;
pub mod proto;
pub mod replica;

pub use cache::builder::CacheBuilder;
pub use cache::event::{ChangeEvent, ChangeKind, ListenerId, Metadata, Origin};
pub use cache::handle::Cache;
pub use cache::metrics::CacheMetrics;
pub use cache::store::{CacheKey, CacheValue};
pub use config::{CacheConfig, CacheMode, Config};
pub use config::{TantrumSide, generate_key};
pub use diag::{MulticastCheck, check_multicast, get_hops, get_mtu};
pub use error::{Error, Result};
pub use node::{Member, MemberEvent, Node};
pub use proto::metrics::NetworkMetrics;
pub use proto::version::{NodeId, Version};

/// The process-wide default node, started on first use from [`Config::load`].
static DEFAULT_NODE: parking_lot::Mutex<Option<Node>> = parking_lot::Mutex::new(None);

/// The default node, starting it from [`Config::load`] on first use.
pub(crate) fn default_node() -> Result<Node> {
    let mut slot = DEFAULT_NODE.lock();
    if let Some(n) = slot.as_ref() {
        return Ok(n.clone());
    }
    let node = Node::start_local(Config::load()?)?;
    *slot = Some(node.clone());
    Ok(node)
}

/// The cache `name` of the process-wide default node, which is started on first use from
/// [`Config::load`] (`mccache.toml` and `MCCACHE_*` variables).
///
/// # Panics
/// If the configuration is invalid (the message names the key and value at fault), or if
/// `name` is already open with other key/value types. Use [`try_get_cache`] to handle these.
///
/// ```no_run
/// let cache = mccache::get_cache::<String, String>("sessions");
/// cache.insert("alice".into(), "token".into()).unwrap();
/// ```
pub fn get_cache<K: CacheKey, V: CacheValue>(name: &str) -> Cache<K, V> {
    match try_get_cache(name) {
        Ok(c) => c,
        Err(e) => panic!("mccache::get_cache({name:?}): {e}"),
    }
}

/// Like [`get_cache`], returning errors instead of panicking.
///
/// # Errors
/// The configuration error if the default node could not start, or [`Error::TypeMismatch`] if
/// `name` is already open with other types.
pub fn try_get_cache<K: CacheKey, V: CacheValue>(name: &str) -> Result<Cache<K, V>> {
    default_node()?.cache(name)
}

/// The local metrics of cache `name` of the default node (McCache's `get_local_metrics`), or
/// `None` if the default node has not started or has no cache of that name. Unlike McCache,
/// it never creates the cache.
pub fn get_local_metrics(name: &str) -> Option<CacheMetrics> {
    let node = DEFAULT_NODE.lock().clone()?;
    node.erased(name).map(|c| c.metrics())
}

/// Checksums of cache `name` of the default node (McCache's `get_local_checksum`).
///
/// Without `key`: the cache's order-independent checksum of all live entries (see
/// [`Cache::checksum`]). With `key`: that entry's crc (see [`Cache::key_checksum`]) widened to
/// `u64`. `None` if the default node has not started, the cache does not exist, or the key is
/// not live. Never creates the cache.
pub fn get_local_checksum<K: serde::Serialize + ?Sized>(
    name: &str,
    key: Option<&K>,
) -> Option<u64> {
    let node = DEFAULT_NODE.lock().clone()?;
    let cache = node.erased(name)?;
    match key {
        None => Some(cache.sync_digest().checksum),
        Some(k) => {
            let bytes = rmp_serde::to_vec(k).ok()?;
            cache.key_checksum(&bytes).map(u64::from)
        }
    }
}

/// Metrics of cache `name` (all caches if `None`) from every node of the default node's
/// cluster that answers within `timeout`, this one included (McCache's `get_cluster_metrics`,
/// which only logged them).
///
/// # Errors
/// The configuration error if the default node could not start.
pub fn get_cluster_metrics(
    name: Option<&str>,
    timeout: std::time::Duration,
) -> Result<std::collections::BTreeMap<NodeId, std::collections::BTreeMap<String, CacheMetrics>>> {
    default_node()?.get_cluster_metrics(name, timeout)
}

/// Checksum of cache `name`, or of one key in it, from every node of the default node's
/// cluster that answers within `timeout` (McCache's `get_cluster_checksum`).
///
/// # Errors
/// The configuration error if the default node could not start; a serialization error for
/// the key.
pub fn get_cluster_checksum<K: serde::Serialize + ?Sized>(
    name: &str,
    key: Option<&K>,
    timeout: std::time::Duration,
) -> Result<std::collections::BTreeMap<NodeId, Option<u64>>> {
    default_node()?.get_cluster_checksum(name, key, timeout)
}

/// Clears cache `name` on every node of the default node's cluster, this one included
/// (McCache's `clear_cache`, which never cleared the caller and crashed its peers).
///
/// # Errors
/// The configuration error if the default node could not start.
pub fn clear_cache(name: &str) -> Result<()> {
    default_node()?.clear_cache(name)
}
