//! The optional memcached tier behind the local caches (feature `memcached`).
//!
//! A cache configured with `backing = "memcached://host:port,..."` reads memcached on a local
//! miss, and takes memcached's fleet-wide lease around its loader so that one caller in the
//! whole fleet loads a missing key; its writes reach memcached as the `backing_write` policy
//! says (write-through or invalidate). See `docs/CONFIG.md` for the keys and the README for
//! the design.
//!
//! This is a small client for the meta protocol of its own, in files by responsibility:
//! `codec` (commands, responses, key and value formats; no I/O), `conn` (one connection, with
//! deadlines and bounded buffers), `server` (a bounded pool, health, counters), `client`
//! (rendezvous hashing over the servers that are up) and `tier` (one cache's view).
//!
//! memcached failing or slow never fails a cache call: every exchange has a deadline
//! (`backing_timeout`); a server that fails `backing_down_after` times in a row is marked down
//! (its keys go to the other servers) and probed again after `backing_retry_after`; failures are
//! counted in [`BackingMetrics`] and reported as [`ServerEvent`]s.

mod client;
mod codec;
mod conn;
mod seal;
mod server;
mod tier;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::cache::backing::Backing;
use crate::config::{CacheConfig, Config};

/// A memcached server going down or coming back, as seen by this process.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The server failed `backing_down_after` requests in a row; its keys go to the other
    /// servers until it answers a probe again.
    Down {
        /// The server as configured (`host:port`).
        server: String,
        /// The last failure.
        error: String,
    },
    /// A probe of a down server succeeded; its keys route to it again.
    Up {
        /// The server as configured (`host:port`).
        server: String,
    },
}

/// Counters of one memcached server, as seen by this process.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ServerMetrics {
    /// The server as configured (`host:port`).
    pub server: String,
    /// Whether it is in use (not marked down).
    pub up: bool,
    /// Exchanges attempted (one round trip each, possibly several commands).
    pub requests: u64,
    /// Reads that found a current value.
    pub hits: u64,
    /// Reads that found none (or an old generation's).
    pub misses: u64,
    /// Exchanges that failed other than by timing out (refused, reset, garbage).
    pub errors: u64,
    /// Exchanges that ran past `backing_timeout`.
    pub timeouts: u64,
    /// Times the server was marked down.
    pub marked_down: u64,
    /// Mean exchange latency, microseconds.
    pub latency_avg_us: f64,
    /// 99th percentile exchange latency, microseconds (upper bound of a power-of-two bucket).
    pub latency_p99_us: u64,
    /// Slowest exchange, microseconds.
    pub latency_max_us: u64,
    /// Connections open (idle and busy).
    pub connections: usize,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Counters of one memcached tier (one `backing` server list, shared by the caches naming it).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct BackingMetrics {
    /// The `backing` value, normalized (`memcached://a:1,b:2`).
    pub backing: String,
    /// Per-server counters, in configuration order.
    pub servers: Vec<ServerMetrics>,
    /// Calls that went on with the local tier only because memcached did not answer in time.
    pub fallbacks: u64,
    /// Calls made while every server was marked down.
    pub no_server: u64,
    /// Loads this process ran under memcached's lease (it won it).
    pub lease_won: u64,
    /// Lease reads that found another caller loading (this caller waited or served stale).
    pub lease_busy: u64,
    /// Stale values served while another caller reloads.
    pub stale_served: u64,
    /// Values found from before a `clear` (read as misses).
    pub old_generation: u64,
}

/// A [`ServerEvent`] listener.
type Listener = Arc<dyn Fn(&ServerEvent) + Send + Sync>;

/// Listeners of [`ServerEvent`]s.
#[derive(Default)]
pub(crate) struct Events {
    listeners: Mutex<Vec<Listener>>,
}

impl Events {
    pub(crate) fn emit(&self, e: &ServerEvent) {
        let listeners = self.listeners.lock().clone();
        for l in listeners {
            l(e);
        }
    }
}

/// The memcached tiers of a node: one client per distinct server list, shared by its caches.
pub(crate) struct Tiers {
    config: Config,
    sealer: Option<Arc<seal::Sealer>>,
    clients: Mutex<BTreeMap<String, Arc<client::Client>>>,
    events: Arc<Events>,
}

impl Tiers {
    pub(crate) fn new(config: &Config) -> Tiers {
        Tiers {
            // The keyring was validated with the rest of the configuration.
            sealer: config
                .crypto_keyring()
                .ok()
                .and_then(|k| seal::Sealer::new(&k))
                .map(Arc::new),
            config: config.clone(),
            clients: Mutex::new(BTreeMap::new()),
            events: Arc::new(Events::default()),
        }
    }

    /// The tier behind cache `name`, if its configuration names one.
    pub(crate) fn for_cache(&self, name: &str, cfg: &CacheConfig) -> Option<Arc<dyn Backing>> {
        let spec = cfg.backing.as_ref()?;
        let c = &self.config;
        let client = self
            .clients
            .lock()
            .entry(spec.url())
            .or_insert_with(|| {
                let limits = server::Limits {
                    timeout: crate::config::secs_to_duration(c.backing_timeout),
                    pool_max: c.backing_pool_max,
                    down_after: c.backing_down_after,
                    retry_after: crate::config::secs_to_duration(c.backing_retry_after),
                    // The value, its key (hashed keys carry it) and the header.
                    max_value: c.max_message_size.saturating_mul(2) + 64 * 1024,
                };
                Arc::new(client::Client::new(
                    &spec.servers,
                    limits,
                    self.events.clone(),
                ))
            })
            .clone();
        Some(Arc::new(tier::Tier::new(
            client,
            &c.cluster_name,
            name,
            spec.write,
            crate::config::secs_to_duration(c.backing_lease_ttl),
            crate::config::secs_to_duration(c.backing_lease_wait),
            self.sealer.clone(),
        )))
    }

    pub(crate) fn on_event(&self, listener: Listener) {
        self.events.listeners.lock().push(listener);
    }

    pub(crate) fn metrics(&self) -> Vec<BackingMetrics> {
        self.clients
            .lock()
            .iter()
            .map(|(url, c)| {
                let n = &c.counters;
                BackingMetrics {
                    backing: url.clone(),
                    servers: c.metrics(),
                    fallbacks: n.fallbacks.load(Ordering::Relaxed),
                    no_server: n.no_server.load(Ordering::Relaxed),
                    lease_won: n.lease_won.load(Ordering::Relaxed),
                    lease_busy: n.lease_busy.load(Ordering::Relaxed),
                    stale_served: n.stale_served.load(Ordering::Relaxed),
                    old_generation: n.old_generation.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
