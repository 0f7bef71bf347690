//! A node: the caches of one process (or of one part of it), their shared clock and write
//! versions, and the housekeeper thread that sweeps expired entries.
//!
//! Several nodes can live in one process; each has its own random [`NodeId`] and its own caches.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::cache::clock::{Clock, SystemClock};
use crate::cache::context::StoreContext;
use crate::cache::handle::Cache;
use crate::cache::hooks::{ErasedCache, NoPublisher, Publisher};
use crate::cache::store::{CacheKey, CacheValue, Store, type_names};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::version::{Hlc, NodeId};
use builder::{CacheBuilder, Requested};

pub(crate) mod builder;
mod cluster;
#[cfg(any(test, feature = "unstable"))]
pub(crate) mod detached;
mod health;
mod nonblocking;
pub(crate) mod replica;
mod report;
#[cfg(feature = "memcached")]
mod tiered;

pub use cluster::{ClusterAnswers, Member, MemberEvent};
pub use health::{Health, OpenFailure, Readiness, Unopened};

type Registry = Arc<crate::node::replica::Registry>;
use crate::node::replica::Registered;

struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

struct NodeInner {
    core: Arc<StoreContext>,
    config: Config,
    registry: Registry,
    stop: Arc<Stop>,
    housekeeper: Mutex<Option<JoinHandle<()>>>,
    /// The network side; `None` for a local-only node ([`Node::start_local`]).
    net: Option<cluster::Net>,
    /// The memcached tiers behind the caches that name one.
    #[cfg(feature = "memcached")]
    tiers: crate::backing::Tiers,
}

/// A cache node. `Clone` is cheap (an `Arc`); the node stops when [`Node::shutdown`] is called
/// or the last handle is dropped. Cache handles keep working locally after that, but nothing
/// sweeps their expired entries in the background any more (reads still never return them).
///
/// ```
/// use mccache::{Config, Node};
///
/// let node = Node::start_local(Config::default())?;
/// let a = node.cache::<u32, String>("a")?;
/// a.insert(1, "one".into())?;
/// assert_eq!(node.cache_names(), vec!["a".to_string()]);
/// // The same name with other types is refused.
/// assert!(node.cache::<String, String>("a").is_err());
/// node.shutdown();
/// # Ok::<(), mccache::Error>(())
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.core.id)
            .finish_non_exhaustive()
    }
}

/// How long a tombstone is kept: long enough for every peer's late or repaired copy of the
/// deleted write to arrive (12 anti-entropy pulses, at least one minute).
pub(crate) fn tombstone_ttl(config: &Config) -> Duration {
    Duration::from_secs_f64((config.cache_pulse * 12.0).max(60.0))
}

impl Node {
    /// Starts a cluster node with `config` (validated first): it joins the multicast group
    /// `multicast_ip:multicast_port` on `interface`, announces itself, fetches the caches' state
    /// from a peer (see [`Node::wait_ready`]) and replicates every local write.
    ///
    /// Networking runs on a background thread the node owns; no cache call ever waits for it.
    ///
    /// ```no_run
    /// use mccache::{Config, Node};
    ///
    /// let mut config = Config::load()?;
    /// config.interface = "10.0.0.5".parse().unwrap();
    /// let node = Node::start(config)?;
    /// if !node.wait_ready(std::time::Duration::from_secs(2)).found_peers() {
    ///     eprintln!("no peer yet: {:?}", node.health());
    /// }
    /// let users = node.cache::<u64, String>("users")?;
    /// users.insert(1, "ada".into())?; // now on every node of the cluster
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// The configuration error if `config` is invalid; an [`Error::Config`] naming the key and
    /// value if the sockets cannot be opened with them (`interface: "10.0.0.5" is not an
    /// address of this host`, a port that cannot be bound); [`Error::Network`] otherwise.
    pub fn start(config: Config) -> Result<Node> {
        cluster::start(config)
    }

    /// Starts a node that replicates nothing: the same caches and API, no sockets, no threads
    /// but the housekeeper. Useful in tests and single-process tools.
    ///
    /// ```
    /// let node = mccache::Node::start_local(mccache::Config::default())?;
    /// assert!(!node.is_networked());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// The configuration error, if `config` is invalid.
    pub fn start_local(config: Config) -> Result<Node> {
        Node::start_with(
            config,
            Arc::new(NoPublisher),
            Arc::new(SystemClock::new()),
            None,
        )
    }

    /// Starts a node whose caches hand their local writes to `publisher`.
    pub(crate) fn start_with(
        config: Config,
        publisher: Arc<dyn Publisher>,
        clock: Arc<dyn Clock>,
        net: Option<(NodeId, cluster::Net)>,
    ) -> Result<Node> {
        config.validate()?;
        #[cfg(feature = "memcached")]
        let config_for_tiers = config.clone();
        let (id, net) = match net {
            Some((id, net)) => (id, Some(net)),
            None => (NodeId::from_random(rand::random()), None),
        };
        let core = Arc::new(StoreContext {
            id,
            hlc: Arc::new(Hlc::new()),
            clock,
            publisher,
            max_message_size: config.max_message_size,
        });
        let registry: Registry = match &net {
            Some(n) => n.registry.clone(),
            None => Arc::new(crate::node::replica::Registry::new(&config)),
        };
        let stop = Arc::new(Stop {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let period = Duration::from_secs_f64(config.daemon_sleep.max(0.001));
        let tomb_ttl = tombstone_ttl(&config);
        let reporter = report::Reporter::new(&config, net.as_ref().map(|n| n.probe.clone()));
        let handle = {
            let registry = registry.clone();
            let stop = stop.clone();
            let clock = core.clock.clone();
            std::thread::Builder::new()
                .name("mccache-housekeeper".into())
                .spawn(move || housekeeper(registry, stop, clock, period, tomb_ttl, reporter))?
        };
        Ok(Node {
            inner: Arc::new(NodeInner {
                core,
                config,
                registry,
                stop,
                housekeeper: Mutex::new(Some(handle)),
                net,
                #[cfg(feature = "memcached")]
                tiers: crate::backing::Tiers::new(&config_for_tiers),
            }),
        })
    }

    /// Opens (creating on first use) the cache `name` with key type `K` and value type `V`.
    /// Its settings are the node's, with `[caches.NAME]` overrides applied; an open cache is
    /// returned as it is. [`Node::cache_builder`] sets them in code.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if `name` is already open with other types;
    /// [`Error::Shutdown`] after [`Node::shutdown`].
    pub fn cache<K: CacheKey, V: CacheValue>(&self, name: &str) -> Result<Cache<K, V>> {
        self.open_cache(name, None)
    }

    /// A builder for cache `name` with settings given in code (TTL, caps, mode, callback
    /// window, stale-while-revalidate), merged with the configuration: see [`CacheBuilder`].
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let users = node.cache_builder::<u64, String>("users").max_entries(10_000).build()?;
    /// assert_eq!(users.config().max_entries, 10_000);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn cache_builder<K: CacheKey, V: CacheValue>(&self, name: &str) -> CacheBuilder<'_, K, V> {
        CacheBuilder::new(self, name)
    }

    pub(crate) fn open_cache<K: CacheKey, V: CacheValue>(
        &self,
        name: &str,
        requested: Option<&Requested>,
    ) -> Result<Cache<K, V>> {
        if *self.inner.stop.stopped.lock() {
            return Err(Error::Shutdown);
        }
        let existing = |r: &Registered| -> Result<Cache<K, V>> {
            let cache = Self::typed(name, r)?;
            if let Some((setting, existing, requested)) =
                requested.and_then(|q| q.conflict(cache.config()))
            {
                return Err(Error::CacheConflict {
                    name: name.to_string(),
                    setting,
                    existing,
                    requested,
                });
            }
            Ok(cache)
        };
        if let Some(r) = self.inner.registry.open.read().get(name) {
            return existing(r);
        }
        let reg = self.inner.registry.open.write();
        if let Some(r) = reg.get(name) {
            return existing(r);
        }
        let mut cfg = self.inner.config.cache_config(name);
        if let Some(q) = requested {
            cfg = q.apply(cfg)?;
        }
        let store = Arc::new(Store::<K, V>::new(name, cfg, self.inner.core.clone()));
        #[cfg(feature = "memcached")]
        if let Some(b) = self.inner.tiers.for_cache(name, store.config()) {
            store.set_backing(b);
        }
        // Peers' data that arrived before the application opened the cache is handed over.
        self.inner.registry.register(
            reg,
            name,
            Registered {
                erased: store.clone(),
                typed: store.clone(),
            },
        );
        Ok(Cache { store })
    }

    pub(crate) fn typed<K: CacheKey, V: CacheValue>(
        name: &str,
        r: &Registered,
    ) -> Result<Cache<K, V>> {
        match r.typed.clone().downcast::<Store<K, V>>() {
            Ok(store) => Ok(Cache { store }),
            Err(_) => Err(Error::TypeMismatch {
                name: name.to_string(),
                existing: r.erased.type_names(),
                requested: type_names::<K, V>(),
            }),
        }
    }

    /// This node's random id (fresh at every start).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("id")?;
    /// c.insert(1, 1)?;
    /// assert_eq!(c.get_with_version(&1).unwrap().1.node, node.id());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn id(&self) -> crate::NodeId {
        self.inner.core.id
    }

    /// The configuration the node was started with.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// assert_eq!(node.config().cache_max, 256);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Names of the caches opened so far, sorted.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// node.cache::<u32, u32>("b")?;
    /// node.cache::<u32, u32>("a")?;
    /// assert_eq!(node.cache_names(), vec!["a", "b"]);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn cache_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.registry.open.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Leaves the cluster (peers see a leave at once), stops the network thread and the
    /// housekeeper, and joins them. Idempotent; also done when the last handle is dropped.
    /// Afterwards [`Node::cache`] returns [`Error::Shutdown`]; caches already open keep working
    /// locally, without replication.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// node.shutdown();
    /// assert!(node.cache::<u32, u32>("late").is_err());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    /// Every cache of the node, without types (for the replication layer).
    #[allow(dead_code)]
    pub(crate) fn erased_caches(&self) -> Vec<Arc<dyn ErasedCache>> {
        self.inner
            .registry
            .open
            .read()
            .values()
            .map(|r| r.erased.clone())
            .collect()
    }

    /// One cache without types, by name.
    pub(crate) fn erased(&self, name: &str) -> Option<Arc<dyn ErasedCache>> {
        self.inner
            .registry
            .open
            .read()
            .get(name)
            .map(|r| r.erased.clone())
    }

    /// The shared core (id, HLC, clock, publisher).
    #[allow(dead_code)]
    pub(crate) fn core(&self) -> &Arc<StoreContext> {
        &self.inner.core
    }
}

impl NodeInner {
    fn stop(&self) {
        if let Some(net) = &self.net {
            net.stop();
        }
        *self.stop.stopped.lock() = true;
        self.stop.wake.notify_all();
        if let Some(h) = self.housekeeper.lock().take() {
            // The housekeeper never holds a node handle, so this is never its own thread.
            let _ = h.join();
        }
    }
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often the housekeeper refreshes the clock's coarse reading (last-lookup granularity).
const CLOCK_TICK: Duration = crate::cache::clock::CoarseCell::TICK;

fn housekeeper(
    registry: Registry,
    stop: Arc<Stop>,
    clock: Arc<dyn Clock>,
    period: Duration,
    tomb_ttl: Duration,
    mut reporter: report::Reporter,
) {
    let mut next = std::time::Instant::now() + period;
    // Read hits trust the clock's coarse reading only while it is refreshed (see
    // `Store::expired_on_hit`).
    let _ticker = clock.coarse_cell().map(|cell| cell.ticker());
    loop {
        {
            let mut stopped = stop.stopped.lock();
            if !*stopped {
                stop.wake.wait_for(&mut stopped, CLOCK_TICK.min(period));
            }
            if *stopped {
                return;
            }
        }
        clock.refresh();
        let now = std::time::Instant::now();
        if now < next {
            continue;
        }
        next = now + period;
        let caches = registry.housekeep(clock.now_nanos(), tomb_ttl);
        reporter.tick(&caches, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::record::{Op, Record};

    fn cfg() -> Config {
        Config {
            daemon_sleep: 0.01,
            ..Config::default()
        }
    }

    #[test]
    fn housekeeper_sweeps_expired_entries_without_reads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let node = Node::start_local(Config {
            cache_ttl: 0.05,
            ..cfg()
        })
        .unwrap();
        let c = node.cache::<u32, u32>("t").unwrap();
        let expired = Arc::new(AtomicUsize::new(0));
        let e2 = expired.clone();
        c.on_change(move |e| {
            if e.kind == crate::ChangeKind::Expire {
                e2.fetch_add(1, Ordering::SeqCst);
            }
        });
        c.insert(1, 1).unwrap();
        // No call on the cache from here on: only the housekeeper can expire the entry.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while expired.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "entry never swept");
            std::thread::sleep(Duration::from_millis(5));
        }
        let erased = node.erased("t").unwrap();
        assert_eq!(erased.metrics().evictions_ttl, 1);
        assert_eq!(erased.metrics().entries, 0);
    }

    #[test]
    fn shutdown_joins_and_refuses_new_caches() {
        let node = Node::start_local(cfg()).unwrap();
        let c = node.cache::<u32, u32>("x").unwrap();
        node.shutdown();
        node.shutdown();
        assert!(matches!(node.cache::<u32, u32>("y"), Err(Error::Shutdown)));
        c.insert(1, 2).unwrap();
        assert_eq!(c.get(&1), Some(2));
        assert!(node.inner.housekeeper.lock().is_none());
    }

    #[test]
    fn erased_view_reaches_typed_cache() {
        let node = Node::start_local(cfg()).unwrap();
        let c = node.cache::<String, u64>("e").unwrap();
        c.insert("k".into(), 5).unwrap();
        let e = node.erased_caches();
        assert_eq!(e.len(), 1);
        let key = rmp_serde::to_vec(&"k".to_string()).unwrap();
        let rec = e[0].record(&key).unwrap();
        assert_eq!(
            rec.op,
            Op::Put {
                value: rmp_serde::to_vec(&5u64).unwrap().into(),
                ttl_ms: None
            }
        );
        assert_eq!(e[0].key_checksum(&key), c.key_checksum(&"k".to_string()));
        let _: Record = rec;
    }
}
