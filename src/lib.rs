//! # mccache
//!
//! An embeddable, cluster-aware, in-process cache for Rust. Every process of the cluster holds
//! its own copy of each cache (an LRU-style map with TTL, entry and byte caps); inserts,
//! updates and deletes reach the other processes as encrypted, MTU-sized UDP multicast
//! datagrams and are applied there in version order, so reads are local memory reads and no
//! cache server is needed. Where multicast is not available (Kubernetes, cloud VPCs),
//! `transport = "unicast"` sends each datagram to every peer instead, with peers found from a
//! static list or DNS names (`docs/KUBERNETES.md`). It is the Rust descendant of McCache for
//! Python.
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use mccache::{Config, Node};
//!
//! // A local-only node (no sockets) for this example; `Node::start(Config::load()?)` joins
//! // the cluster configured in `mccache.toml` / `MCCACHE_*`.
//! let node = Node::start_local(Config::default())?;
//! let users = node
//!     .cache_builder::<u64, String>("users")
//!     .ttl(Duration::from_secs(600))
//!     .max_entries(10_000)
//!     .build()?;
//! users.insert(1, "ada".to_string())?;
//! assert_eq!(users.get(&1).as_deref(), Some("ada"));
//! let name = users.get_or_insert_with(2, || "grace".to_string())?;
//! assert_eq!(name, "grace");
//! # node.shutdown();
//! # Ok::<(), mccache::Error>(())
//! ```
//!
//! In an application, the process-wide default node is one call away:
//!
//! ```no_run
//! let sessions = mccache::get_cache::<String, String>("sessions");
//! sessions.insert("alice".into(), "token".into())?; // replicated to every node
//! # Ok::<(), mccache::Error>(())
//! ```
//!
//! ## Features
//!
//! - **Caches**: typed ([`Cache<K, V>`] over serde types), sharded, CLOCK eviction under
//!   entry and byte caps, TTL per cache or per entry, compare-and-swap, change listeners,
//!   single-flight loading ([`Cache::get_or_insert_with`]).
//! - **Replication**: every write multicast to the cluster, reliable delivery with NAKs and
//!   retransmits, anti-entropy repair, state transfer to joining nodes, three modes per cache
//!   ([`CacheMode`]), cluster-wide queries ([`Node::get_cluster_metrics`],
//!   [`Node::get_cluster_checksum`]) and clear.
//! - **Security**: AES-256-GCM-SIV sealed datagrams with key rotation
//!   ([`Config::crypto_keyring`]), replay protection, bounded buffers.
//! - **Per-cache builder**: [`Node::cache_builder`] merges settings given in code with the
//!   configuration file ([`CacheBuilder`]).
//! - **Stale-while-revalidate and fail-safe**: [`Cache::get_or_load`] serves a stale value at
//!   once while one refresh runs, keeps it when the loader fails, refreshes hot keys early.
//! - **Async**: [`Cache::get_or_load_async`], [`Cache::get_or_insert_with_async`],
//!   [`Node::wait_ready_async`], [`Node::get_cluster_metrics_async`] and friends work under
//!   any executor.
//! - **Metrics**: [`Cache::metrics`], [`Node::network_metrics`]; with the `metrics` cargo
//!   feature, Prometheus-style series through the [`metrics`](https://docs.rs/metrics) facade;
//!   a periodic summary in the logs (`metrics_log_interval`).
//! - **Diagnostics**: [`check_multicast`], [`get_mtu`], [`get_hops`].
//!
//! Cargo features: `metrics` (the facade), `cli` (the `mccache` tool: demo, stress node with
//! `--metrics-addr`, reports and charts).
//!
//! ## Calls that block
//!
//! Cache reads and writes never wait for the network: they take a shard lock for a short
//! critical section and return. These calls wait, and have async forms:
//!
//! | call | waits for | async form |
//! | --- | --- | --- |
//! | [`Node::wait_ready`] | state transfer, up to its timeout | [`Node::wait_ready_async`] |
//! | [`Node::get_cluster_metrics`], [`Node::get_cluster_checksum`] | peers' answers, up to the timeout | `…_async` |
//! | [`Node::network_metrics`] | the network thread, up to 2 s | [`Node::network_metrics_async`] |
//! | [`Cache::get_or_insert_with`], [`Cache::get_or_load`] | the loader on a miss (this caller's, or a concurrent caller's of the same key), unbounded; `get_or_load` also up to `peer_load_wait` (1 s) for a peer that announced it is loading the key | [`Cache::get_or_insert_with_async`], [`Cache::get_or_load_async`] |
//! | [`Node::shutdown`] | the node's threads to stop (milliseconds) | |
//!
//! ## Metrics (feature `metrics`)
//! Every series has a `node` label (`node_name`, default `hostname:pid`); cache series also a
//! `cache` label. Counters end in `_total`; durations are in seconds.
//!
//! | name | type | extra labels |
//! | --- | --- | --- |
//! | `mccache_cache_hits_total`, `mccache_cache_misses_total` | counter | |
//! | `mccache_cache_inserts_total`, `mccache_cache_updates_total`, `mccache_cache_deletes_total` | counter | |
//! | `mccache_cache_evictions_total` | counter | `reason` = `capacity`, `bytes`, `ttl` |
//! | `mccache_cache_loads_total`, `mccache_cache_load_failures_total` | counter | |
//! | `mccache_cache_refreshes_total`, `mccache_cache_stale_served_total` | counter | |
//! | `mccache_cache_peer_loads_seen_total`, `mccache_cache_peer_load_waits_total` | counter | |
//! | `mccache_cache_spikes_total` | counter | |
//! | `mccache_cache_entries`, `mccache_cache_bytes` | gauge | |
//! | `mccache_net_datagrams_sent_total`, `mccache_net_datagrams_received_total` | counter | |
//! | `mccache_net_bytes_sent_total`, `mccache_net_bytes_received_total` | counter | |
//! | `mccache_net_dropped_total` | counter | `reason` (as in `NetworkMetrics::dropped`) |
//! | `mccache_net_changes_sent_total`, `mccache_net_changes_applied_total`, `mccache_net_changes_stale_total` | counter | |
//! | `mccache_net_express_changes_total` (changes a writing thread sent itself) | counter | |
//! | `mccache_net_changes_superseded_total` (changes not sent: a newer one of the same key followed in one batch) | counter | |
//! | `mccache_net_lingered_alone_total` (data messages whose one change waited for company that never came) | counter | |
//! | `mccache_net_gaps_total`, `mccache_net_retransmits_requested_total`, `mccache_net_retransmits_served_total` | counter | |
//! | `mccache_net_repairs_total`, `mccache_net_outbound_overflow_total` | counter | |
//! | `mccache_net_repairs_coalesced_total` (anti-entropy repairs and pulls not repeated while the same was under way) | counter | |
//! | `mccache_net_keys_listed_total` (key versions listed to peers by anti-entropy: small buckets whole, long ones only in the parts whose sums differ) | counter | |
//! | `mccache_net_pushes_deferred_total` (anti-entropy pushes left for a later exchange while the node was overloaded and its outbox held a backlog; the peer pulls them) | counter | |
//! | `mccache_net_stalls_total` (times the node itself stood still for over two heartbeats: that time is not held against its peers' liveness) | counter | |
//! | `mccache_net_members`, `mccache_net_outbound_queue` | gauge | |
//! | `mccache_net_apply_lag_seconds` | gauge | `quantile` = `0.5`, `0.99` |
//!
//! The figures are copied into the facade on every housekeeping pass (`daemon_sleep`), so a
//! scrape sees them at most one pass old. Install any `metrics` recorder (for example
//! `metrics-exporter-prometheus`) before or after starting the node.
//!
//! ```no_run
//! // In a tokio service: install the exporter, then start the node.
//! metrics_exporter_prometheus::PrometheusBuilder::new()
//!     .with_http_listener(([127, 0, 0, 1], 9464))
//!     .install()?;
//! let node = mccache::Node::start(mccache::Config::load()?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Documentation
//!
//! - Configuration keys, files and environment: `docs/CONFIG.md` in the repository, and
//!   [`Config`].
//! - Wire protocol: `docs/PROTOCOL.md`.
//! - Threat model, keys and bounds: `docs/SECURITY.md`.
//! - Architecture (layers, the path of a write): `docs/ARCHITECTURE.md`.
//!
//! ## Warnings and logs
//!
//! Warnings a user must act on (plaintext traffic, datagrams from the group that cannot be
//! opened, mistyped `MCCACHE_*` variables) are [`tracing`] events at `warn` level: install a
//! subscriber (for example `tracing_subscriber::fmt().with_env_filter("warn").init()`) to route
//! them; with none installed they go to stderr. [`Node::health`] returns them as data. The
//! periodic metrics summaries are `info` events with target `mccache::metrics`.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unnameable_types)]
#![warn(unreachable_pub)]
// Items that only `mccache::unstable` exports (test hooks) are `pub` on purpose; without that
// feature they look unreachable. Every test and CI build has the feature, and is checked.
#![cfg_attr(not(feature = "unstable"), allow(unreachable_pub))]

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "memcached")]
mod backing;
mod cache;
mod config;
mod diag;
mod error;
mod net;
mod node;
// The replication protocol core (crate `mccache-proto`), as `crate::proto` inside.
use mccache_proto as proto;
#[cfg(feature = "unstable")]
#[doc(hidden)]
pub mod unstable;
mod warn;

#[cfg(feature = "memcached")]
pub use backing::{BackingMetrics, ServerEvent, ServerMetrics};
pub use cache::event::{ChangeEvent, ChangeKind, ListenerId, Metadata, Origin};
pub use cache::handle::Cache;
pub use cache::metrics::CacheMetrics;
pub use cache::store::{CacheKey, CacheValue};
pub use config::{BackingSpec, WritePolicy};
pub use config::{CacheConfig, CacheMode, CacheOverrides, Config};
pub use config::{Overload, TantrumSide, TransportKind, generate_key};
pub use diag::{
    AddressCheck, MulticastCheck, PeerCheck, check_multicast, check_peers, get_hops, get_mtu,
};
pub use error::{ConfigError, Error, Result};
pub use mccache_proto::metrics::NetworkMetrics;
pub use mccache_proto::version::{NodeId, Version};
pub use node::builder::CacheBuilder;
pub use node::{
    ClusterAnswers, Health, Member, MemberEvent, Node, OpenFailure, Readiness, Unopened,
};

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
///     let mut config = Config::load()?; // mccache.toml and MCCACHE_* first
///     config.cluster_name = "billing".into();
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
