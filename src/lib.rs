//! # mccache
//!
//! An embeddable, cluster-aware, in-process cache. Every process of the cluster holds its own
//! copy; inserts, updates and deletes are multicast to the others as encrypted, MTU-sized UDP
//! datagrams and applied there in version order. Where multicast is not available (Kubernetes,
//! cloud VPCs), `transport = "unicast"` sends each datagram to every peer instead, with peers
//! found from a static list or DNS names (`docs/KUBERNETES.md`).
//!
//! Warnings a user must act on (plaintext traffic, datagrams from the group that cannot be
//! opened, mistyped `MCCACHE_*` variables) are [`tracing`] events at `warn` level: install a
//! subscriber (for example `tracing_subscriber::fmt().with_env_filter("warn").init()`) to route
//! them; with none installed they go to stderr. [`Node::health`] returns them as data.
#![deny(missing_docs)]
#![deny(unsafe_code)]

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "memcached")]
mod backing;
pub mod cache;
pub mod config;
pub mod diag;
pub mod error;
pub mod net;
pub mod node;
/// The replication protocol core: the I/O-free state machine of the `mccache-proto` crate.
pub use mccache_proto as proto;
mod warn;

#[cfg(feature = "memcached")]
pub use backing::{BackingMetrics, ServerEvent, ServerMetrics};
pub use cache::event::{ChangeEvent, ChangeKind, ListenerId, Metadata, Origin};
pub use cache::handle::Cache;
pub use cache::metrics::CacheMetrics;
pub use cache::store::{CacheKey, CacheValue};
pub use config::{BackingSpec, WritePolicy};
pub use config::{CacheConfig, CacheMode, Config};
pub use config::{TantrumSide, generate_key};
pub use diag::{
    AddressCheck, MulticastCheck, PeerCheck, check_multicast, check_peers, get_hops, get_mtu,
};
pub use error::{Error, Result};
pub use node::{
    ClusterAnswers, Health, Member, MemberEvent, Node, OpenFailure, Readiness, Unopened,
};
pub use proto::metrics::NetworkMetrics;
pub use proto::version::{NodeId, Version};

/// The process-wide default node and the configuration it was started with.
struct DefaultNode {
    node: Node,
    config: Config,
}

/// The process-wide default node, started on first use from [`Config::load`] or by [`init`].
static DEFAULT_NODE: parking_lot::Mutex<Option<DefaultNode>> = parking_lot::Mutex::new(None);

/// Starts the default node with `config` if it is not running yet; registers the exit hook
/// that makes it leave the cluster when the process exits.
fn start_default(slot: &mut Option<DefaultNode>, config: Config) -> Result<Node> {
    let node = Node::start(config.clone())?;
    if let Err(e) = net::sockopt::at_exit(leave_at_exit) {
        tracing::debug!(error = %e, "mccache: no exit hook; call mccache::shutdown() before exit");
    }
    *slot = Some(DefaultNode {
        node: node.clone(),
        config,
    });
    Ok(node)
}

/// Runs at process exit: the default node announces its leave, so that peers drop it at once
/// instead of after the failure detector's timeout. Never unwinds.
extern "C" fn leave_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // Never block exit on a thread that holds the slot.
        let node = DEFAULT_NODE
            .try_lock_for(std::time::Duration::from_millis(200))
            .and_then(|slot| slot.as_ref().map(|d| d.node.clone()));
        if let Some(node) = node {
            node.shutdown();
        }
    });
}

/// The process-wide default node that [`get_cache`] and the other module functions use,
/// starting it on first use: a cluster node started with `Node::start(Config::load()?)` (the
/// configuration from `mccache.toml` and `MCCACHE_*` variables), unless [`init`] started it
/// with another configuration before.
///
/// ```no_run
/// let node = mccache::default_node()?;
/// println!("{:?}", node.health());
/// # Ok::<(), mccache::Error>(())
/// ```
///
/// # Errors
/// The configuration error, or the error of [`Node::start`].
pub fn default_node() -> Result<Node> {
    let mut slot = DEFAULT_NODE.lock();
    if let Some(d) = slot.as_ref() {
        return Ok(d.node.clone());
    }
    start_default(&mut slot, Config::load()?)
}

/// Configures the process-wide default node in code, before its first use, and starts it:
/// [`get_cache`] and the other module functions then use this node. Calling it again with the
/// same configuration returns the same node; with another configuration it is an
/// [`Error::DefaultNodeConfigured`] naming the keys that differ (also when the default node
/// was already started from [`Config::load`] by an earlier [`get_cache`]).
///
/// At process exit (return from `main`, `std::process::exit`) the default node leaves the
/// cluster, so its peers drop it at once; call [`shutdown`] to leave earlier.
///
/// ```no_run
/// use mccache::Config;
///
/// fn main() -> Result<(), mccache::Error> {
///     let config = Config {
///         cluster_name: "billing".into(),
///         ..Config::load()? // mccache.toml and MCCACHE_* first
///     };
///     mccache::init(config.clone())?;
///     let sessions = mccache::get_cache::<String, String>("sessions");
///     sessions.insert("alice".into(), "token".into())?;
///     assert!(mccache::init(config).is_ok()); // the same configuration again: fine
///     Ok(())
/// }
/// ```
///
/// # Errors
/// [`Error::DefaultNodeConfigured`] as above; the error of [`Node::start`].
pub fn init(config: Config) -> Result<Node> {
    let mut slot = DEFAULT_NODE.lock();
    if let Some(d) = slot.as_ref() {
        if d.config == config {
            return Ok(d.node.clone());
        }
        return Err(Error::DefaultNodeConfigured {
            keys: config::differing_keys(&d.config, &config),
        });
    }
    start_default(&mut slot, config)
}

/// Shuts the default node down: it leaves the cluster (peers see the leave at once) and its
/// threads stop. Caches already open keep working locally without replication; afterwards
/// [`try_get_cache`] returns [`Error::Shutdown`]. Does nothing if the default node never
/// started. The default node also does this by itself at process exit.
pub fn shutdown() {
    let node = DEFAULT_NODE.lock().as_ref().map(|d| d.node.clone());
    if let Some(node) = node {
        node.shutdown();
    }
}

/// The cache `name` of the process-wide default node: a cluster node started on first use
/// from [`Config::load`] (`mccache.toml` and `MCCACHE_*` variables) or by [`init`]. Writes
/// replicate to every process of the cluster that uses the same group, port, key and
/// `cluster_name`, whether it calls `get_cache` or [`Node::start`].
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
    let node = DEFAULT_NODE.lock().as_ref()?.node.clone();
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
    let node = DEFAULT_NODE.lock().as_ref()?.node.clone();
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
/// cluster, this one included, repeating the query until every live member has answered or
/// `timeout` passes; the members that did not answer are in [`ClusterAnswers::missing`]
/// (McCache's `get_cluster_metrics`, which only logged them). See [`Node::get_cluster_metrics`].
///
/// # Errors
/// The configuration error if the default node could not start.
pub fn get_cluster_metrics(
    name: Option<&str>,
    timeout: std::time::Duration,
) -> Result<ClusterAnswers<std::collections::BTreeMap<String, CacheMetrics>>> {
    default_node()?.get_cluster_metrics(name, timeout)
}

/// Checksum of cache `name`, or of one key in it, from every node of the default node's
/// cluster, repeating the query until every live member has answered or `timeout` passes
/// (McCache's `get_cluster_checksum`). See [`Node::get_cluster_checksum`].
///
/// # Errors
/// The configuration error if the default node could not start; a serialization error for
/// the key.
pub fn get_cluster_checksum<K: serde::Serialize + ?Sized>(
    name: &str,
    key: Option<&K>,
    timeout: std::time::Duration,
) -> Result<ClusterAnswers<Option<u64>>> {
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
