//! The networked side of a node: starting the driver thread, membership, readiness, network
//! metrics and the cluster-wide functions (metrics, checksums, clear).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

use super::Node;
use crate::cache::clock::SystemClock;
use crate::cache::metrics::CacheMetrics;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::net::driver::{self, Command, Shared, Tantrum, Transport};
use crate::net::socket;
use crate::node::replica::{ChannelPublisher, LagSamples, NodeApp, Registry};
use crate::proto::endpoint::{Endpoint, EndpointConfig};
use crate::proto::message::{Item, Query};
use crate::proto::metrics::NetworkMetrics;
use crate::proto::version::{NodeId, Version};
use crate::proto::wire::WireConfig;

/// A live peer as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its node id (random per process start).
    pub id: NodeId,
    /// Its `node_name`.
    pub name: String,
    /// When it was last heard from.
    pub last_seen: SystemTime,
    /// True while it is suspected (silent for 3 heartbeats); removed after 6.
    pub suspect: bool,
    /// Its replicated messages known sent but not yet received here.
    pub lag: u64,
}

pub use crate::proto::endpoint::MemberEvent;

type MemberListener = Arc<dyn Fn(&MemberEvent) + Send + Sync>;

/// The network half of a node.
pub(crate) struct Net {
    pub(crate) registry: Arc<Registry>,
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    listeners: Arc<Mutex<Vec<MemberListener>>>,
    started: Instant,
    started_wall: SystemTime,
    /// Reads the network counters (also from the housekeeper's metrics report).
    pub(crate) probe: NetProbe,
}

/// Reads the network thread's counters. Cheap to clone.
#[derive(Clone)]
pub(crate) struct NetProbe {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    lag: Arc<LagSamples>,
    publisher: Arc<ChannelPublisher>,
    /// The last counters the network thread reported, returned when it cannot answer in time.
    last_metrics: Arc<Mutex<NetworkMetrics>>,
}

impl NetProbe {
    /// The network counters, asking the network thread for at most `wait`; if it cannot
    /// answer in time (stopped, or its queue is full under overload), the last figures it gave
    /// rather than zeros.
    pub(crate) fn read(&self, wait: Duration) -> NetworkMetrics {
        let (tx, rx) = std::sync::mpsc::channel();
        let fresh = self
            .tx
            .try_send(Command::Metrics(tx))
            .ok()
            .and_then(|()| rx.recv_timeout(wait).ok());
        let mut m = match fresh {
            Some(m) => {
                *self.last_metrics.lock() = m.clone();
                m
            }
            None => self.last_metrics.lock().clone(),
        };
        m.outbound_overflow += self.publisher.overflow.load(Ordering::Relaxed);
        let (p50, p99) = self.lag.percentiles();
        m.apply_lag_p50_us = p50;
        m.apply_lag_p99_us = p99;
        m
    }

    /// Live peers now.
    pub(crate) fn members(&self) -> usize {
        self.shared.members.lock().len()
    }
}

impl Net {
    pub(crate) fn stop(&self) {
        self.shared.stop.notify_one();
        if let Some(h) = self.thread.lock().take() {
            // A listener running on the network thread may drop the last node handle: never
            // join the current thread.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// Starts a networked node (see [`Node::start`]).
pub(crate) fn start(config: Config) -> Result<Node> {
    config.validate()?;
    let keys = config.crypto_keyring()?;
    if keys.is_empty() {
        tracing::warn!(
            "mccache: no crypto_key set: cache traffic is in the clear and anyone on the segment can write to the caches"
        );
    }
    let group = config.group();
    let recv = socket::recv_socket(group, config.interface)?;
    let send = socket::send_socket(config.interface, config.multicast_hops)?;
    let id = NodeId::from_random(rand::random());
    let (tx, rx) = mpsc::channel(config.queue_max);
    let shared = Arc::new(Shared::default());
    let publisher = Arc::new(ChannelPublisher {
        tx: tx.clone(),
        overflow: AtomicU64::new(0),
        overflowed: shared.overflowed.clone(),
    });
    let registry = Arc::new(Registry::new(&config));
    let listeners: Arc<Mutex<Vec<MemberListener>>> = Arc::default();
    let lag = Arc::new(LagSamples::default());
    let net = Net {
        registry: registry.clone(),
        tx: tx.clone(),
        shared: shared.clone(),
        thread: Mutex::new(None),
        listeners: listeners.clone(),
        started: Instant::now(),
        started_wall: SystemTime::now(),
        probe: NetProbe {
            tx: tx.clone(),
            shared: shared.clone(),
            lag: lag.clone(),
            publisher: publisher.clone(),
            last_metrics: Arc::default(),
        },
    };
    let node = Node::start_with(
        config.clone(),
        publisher,
        Arc::new(SystemClock::new()),
        Some((id, net)),
    )?;

    let wire = WireConfig {
        cluster_name: config.cluster_name.clone(),
        keys,
        mtu: usize::from(config.packet_mtu),
        // Room for the message framing around the largest entry the caches accept.
        max_message_size: config.max_message_size + (64 << 10),
        reassembly_timeout: Duration::from_secs(5),
        max_reassembly_bytes: 4 * (config.max_message_size + (64 << 10)),
    };
    let mut ep_cfg = EndpointConfig::new(
        config.node_name_or_default(),
        wire,
        config.daemon_sleep(),
        config.pulse(),
    );
    ep_cfg.queue_max = config.queue_max;
    let endpoint = Endpoint::new(ep_cfg, id, Instant::now());
    let app = NodeApp {
        registry,
        hlc: node.inner.core.hlc.clone(),
        lag,
    };
    let tantrum = Tantrum {
        percent: config.monkey_tantrum,
        send: config.monkey_tantrum_side.drops_sends(),
        recv: config.monkey_tantrum_side.drops_receives(),
    };
    let on_event: Box<dyn FnMut(&MemberEvent) + Send> = Box::new(move |ev| {
        tracing::debug!(event = ?ev, "membership");
        let ls: Vec<MemberListener> = listeners.lock().clone();
        for l in ls {
            l(ev);
        }
    });
    let handle = std::thread::Builder::new()
        .name("mccache-net".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "mccache: cannot build the network runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match Transport::new(recv, send, group) {
                    Ok(t) => {
                        driver::run(endpoint, Box::new(app), t, rx, shared, tantrum, on_event).await
                    }
                    Err(e) => tracing::error!(error = %e, "mccache: cannot register sockets"),
                }
            });
        })?;
    if let Some(net) = &node.inner.net {
        *net.thread.lock() = Some(handle);
    }
    Ok(node)
}

impl Node {
    fn net(&self) -> Result<&Net> {
        self.inner.net.as_ref().ok_or(Error::Shutdown)
    }

    /// The live peers (not this node), sorted by id. Empty for a local-only node.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// for m in node.members() {
    ///     println!("{} {} lag {}", m.id, m.name, m.lag);
    /// }
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn members(&self) -> Vec<Member> {
        let Some(net) = &self.inner.net else {
            return Vec::new();
        };
        let now = Instant::now();
        net.shared
            .members
            .lock()
            .iter()
            .map(|p| Member {
                id: p.id,
                name: p.name.clone(),
                last_seen: SystemTime::now() - now.saturating_duration_since(p.last_seen),
                suspect: p.suspect,
                lag: p.lag,
            })
            .collect()
    }

    /// Registers a membership listener (join, suspect, alive, leave, ready). It runs on the
    /// network thread: keep it short.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// node.on_member_event(|e| println!("membership: {e:?}"));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn on_member_event(&self, listener: impl Fn(&MemberEvent) + Send + Sync + 'static) {
        if let Some(net) = &self.inner.net {
            net.listeners.lock().push(Arc::new(listener));
        }
    }

    /// True once this node holds a full copy of the caches its first peer offered (state
    /// transfer done), or found no peer to copy from. Always true for a local-only node.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// assert!(node.is_ready()); // local-only nodes are always ready
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn is_ready(&self) -> bool {
        self.inner
            .net
            .as_ref()
            .is_none_or(|n| *n.shared.ready.lock())
    }

    /// Waits up to `timeout` for [`Node::is_ready`]; returns whether it became ready.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// assert!(node.wait_ready(std::time::Duration::from_secs(2)));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let Some(net) = &self.inner.net else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut ready = net.shared.ready.lock();
        while !*ready {
            if net.shared.stopped.load(Ordering::Acquire) {
                return false;
            }
            if net
                .shared
                .ready_cv
                .wait_until(&mut ready, deadline)
                .timed_out()
            {
                return *ready;
            }
        }
        true
    }

    /// Network and replication counters (datagrams, drops by reason, retransmits, repairs,
    /// queue depths, apply lag). Zeroed for a local-only node.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let m = node.network_metrics();
    /// assert_eq!(m.datagrams_received, 0); // local-only
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn network_metrics(&self) -> NetworkMetrics {
        let Some(net) = &self.inner.net else {
            return NetworkMetrics::default();
        };
        net.probe.read(Duration::from_secs(2))
    }

    /// How long this node has been running, and since when (wall clock).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let (running, since) = node.uptime();
    /// assert!(since <= std::time::SystemTime::now() && running < std::time::Duration::from_secs(60));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn uptime(&self) -> (Duration, SystemTime) {
        match &self.inner.net {
            Some(n) => (n.started.elapsed(), n.started_wall),
            None => (Duration::ZERO, SystemTime::now()),
        }
    }

    fn ask(&self, query: Query, timeout: Duration) -> Result<Vec<(NodeId, Vec<u8>)>> {
        let net = self.net()?;
        let expected = self.members().len();
        let (tx, rx) = std::sync::mpsc::channel();
        net.tx
            .try_send(Command::Query(query, tx))
            .map_err(|_| Error::Shutdown)?;
        let deadline = Instant::now() + timeout;
        let mut answers = Vec::new();
        while answers.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(a) => answers.push(a),
                Err(_) => break,
            }
        }
        Ok(answers)
    }

    /// Metrics of cache `name` (all caches if `None`) from every node that answers within
    /// `timeout`, this one included: node → cache name → metrics. McCache only wrote these
    /// to each node's log; here they come back to the caller.
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the node is local-only or stopped.
    pub fn get_cluster_metrics(
        &self,
        name: Option<&str>,
        timeout: Duration,
    ) -> Result<BTreeMap<NodeId, BTreeMap<String, CacheMetrics>>> {
        let mut out = BTreeMap::new();
        let local: BTreeMap<String, CacheMetrics> = self
            .cache_names()
            .into_iter()
            .filter(|n| name.is_none_or(|x| x == n))
            .filter_map(|n| self.erased(&n).map(|c| (n, c.metrics())))
            .collect();
        out.insert(self.id(), local);
        for (from, body) in self.ask(
            Query::Metrics {
                cache: name.map(str::to_string),
            },
            timeout,
        )? {
            if let Ok(m) = rmp_serde::from_slice::<BTreeMap<String, CacheMetrics>>(&body) {
                out.insert(from, m);
            }
        }
        Ok(out)
    }

    /// Checksum of cache `name` — of the whole cache, or of one key's entry — from every node
    /// that answers within `timeout`, this one included. `None` where a node lacks the cache or
    /// the key. Equal values mean equal contents.
    ///
    /// # Errors
    /// [`Error::Serialization`] if the key cannot be serialized; [`Error::Shutdown`] if the node
    /// is local-only or stopped.
    pub fn get_cluster_checksum<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: Option<&K>,
        timeout: Duration,
    ) -> Result<BTreeMap<NodeId, Option<u64>>> {
        let key = key
            .map(|k| rmp_serde::to_vec(k).map_err(|e| Error::Serialization(e.to_string())))
            .transpose()?;
        let local = self.erased(name).and_then(|c| match &key {
            None => Some(c.sync_digest().checksum),
            Some(k) => c.key_checksum(k).map(u64::from),
        });
        let mut out = BTreeMap::new();
        out.insert(self.id(), local);
        for (from, body) in self.ask(
            Query::Checksum {
                cache: name.to_string(),
                key,
            },
            timeout,
        )? {
            if let Ok(v) = rmp_serde::from_slice::<Option<u64>>(&body) {
                out.insert(from, v);
            }
        }
        Ok(out)
    }

    /// Clears cache `name` on every node, this one included: each removes the entries older
    /// than the clear's version (a write that raced ahead of it survives everywhere).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("cc")?;
    /// c.insert(1, 1)?;
    /// node.clear_cache("cc")?;
    /// assert!(c.is_empty());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the node has stopped.
    pub fn clear_cache(&self, name: &str) -> Result<()> {
        if let Some(c) = self.erased(name) {
            c.clear_all();
            return Ok(());
        }
        // Not open here: clear the parked copy and tell the peers.
        let core = &self.inner.core;
        let version = Version::new(core.hlc.tick(core.clock.wall_ms()), core.id);
        if let Some(net) = &self.inner.net {
            net.registry
                .parked
                .lock()
                .entry(name.to_string())
                .or_default()
                .clear(version);
            net.tx
                .try_send(Command::Publish(Item::Clear {
                    cache: name.to_string(),
                    version,
                }))
                .map_err(|_| Error::Shutdown)?;
        }
        Ok(())
    }

    /// Whether writes are being replicated right now (false for local-only or stopped nodes).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// assert!(!node.is_networked());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn is_networked(&self) -> bool {
        self.inner
            .net
            .as_ref()
            .is_some_and(|n| !n.shared.stopped.load(Ordering::Acquire))
    }
}
