//! The networked side of a node: starting the driver thread, membership, readiness, network
//! metrics and the cluster-wide functions (metrics, checksums, clear).

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
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
use crate::config::{Config, TransportKind};
use crate::error::{ConfigError, Error, Result};
use crate::net::driver::{self, Command, Shared, Tantrum, Transport};
use crate::net::express::Express;
use crate::net::overflow::Backlog;
use crate::net::{discovery, socket};
use crate::node::replica::{ChannelPublisher, LagSamples, NodeApp, Registry};
use crate::proto::endpoint::{Endpoint, EndpointConfig};
use crate::proto::message::{Item, Query};
use crate::proto::metrics::NetworkMetrics;
use crate::proto::version::{NodeId, Version};
use crate::proto::wire::WireConfig;

/// A live peer as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Unicast transport: the address it is heard from (`None` over multicast).
    pub addr: Option<std::net::SocketAddr>,
}

pub use crate::proto::endpoint::MemberEvent;

/// First interval before a cluster query is repeated to the members that have not answered;
/// it doubles at each repeat up to [`QUERY_RETRY_MAX`].
const QUERY_RETRY_FIRST: Duration = Duration::from_millis(25);
/// Longest interval between repeats of a cluster query.
const QUERY_RETRY_MAX: Duration = Duration::from_millis(200);

/// The answers to a cluster-wide question ([`Node::get_cluster_metrics`],
/// [`Node::get_cluster_checksum`]): one per node that answered, this node included, and the
/// live members that did not answer within the timeout.
///
/// It dereferences to the map of answers, so `answers.len()`, `answers.get(&id)` and
/// `for (id, value) in &answers` work directly.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClusterAnswers<T> {
    /// The answers by node id, this node's own included.
    pub answers: BTreeMap<NodeId, T>,
    /// Live members that did not answer in time (empty when every member answered).
    pub missing: Vec<Member>,
}

impl<T> ClusterAnswers<T> {
    /// True if every live member answered.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

impl<T> std::ops::Deref for ClusterAnswers<T> {
    type Target = BTreeMap<NodeId, T>;
    fn deref(&self) -> &Self::Target {
        &self.answers
    }
}

impl<'a, T> IntoIterator for &'a ClusterAnswers<T> {
    type Item = (&'a NodeId, &'a T);
    type IntoIter = std::collections::btree_map::Iter<'a, NodeId, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.answers.iter()
    }
}

impl<T> IntoIterator for ClusterAnswers<T> {
    type Item = (NodeId, T);
    type IntoIter = std::collections::btree_map::IntoIter<NodeId, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.answers.into_iter()
    }
}

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

/// The sockets opened before the network thread starts (so errors reach the caller).
enum Sockets {
    Multicast(std::net::UdpSocket, std::net::UdpSocket),
    Unicast(std::net::UdpSocket),
}

impl Sockets {
    /// What the kernel charges the receiving socket for (`SO_RCVBUF` read back), if it says.
    fn recv_buffer(&self) -> Option<usize> {
        let recv = match self {
            Sockets::Multicast(recv, _) => recv,
            Sockets::Unicast(sock) => sock,
        };
        socket2::SockRef::from(recv).recv_buffer_size().ok()
    }
}

/// Starts a networked node (see [`Node::start`]).
pub(crate) fn start(config: Config) -> Result<Node> {
    config.validate()?;
    let keys = config.crypto_keyring()?;
    let unicast = config.transport == TransportKind::Unicast;
    if keys.is_empty() {
        if unicast {
            crate::warn::user_warning(
                "no crypto_key set: cache traffic is in the clear and anyone who can reach this node's port can write to the caches (make a key with `mccache keygen` or mccache::generate_key())",
            );
        } else {
            crate::warn::user_warning(
                "no crypto_key set: cache traffic is in the clear and anyone on the network segment can write to the caches (make a key with `mccache keygen` or mccache::generate_key())",
            );
        }
    }
    let group = config.group();
    let sockets = if unicast {
        let port = config.unicast_port();
        let sock = socket::unicast_socket(config.interface, port).map_err(|e| {
            let code = e.raw_os_error();
            if code == Some(libc::ENODEV) || code == Some(libc::EADDRNOTAVAIL) {
                socket_error(&config, e)
            } else {
                ConfigError::invalid_because(
                    "bind_port",
                    format!("{}:{port}", config.interface),
                    &format!("cannot be bound on interface {}", config.interface),
                    e,
                )
                .into()
            }
        })?;
        if config.peers.is_empty() {
            crate::warn::user_warning(
                "transport = unicast with no peers: this node finds nobody and is found only by nodes that list it (set peers or MCCACHE_PEERS)",
            );
        }
        Sockets::Unicast(sock)
    } else {
        let recv =
            socket::recv_socket(group, config.interface).map_err(|e| socket_error(&config, e))?;
        let send = socket::send_socket(config.interface, config.multicast_hops)
            .map_err(|e| socket_error(&config, e))?;
        Sockets::Multicast(recv, send)
    };
    let id = NodeId::from_random(rand::random());
    // Room for queue_max changes (bounded by the backlog's credits) plus control commands.
    let (tx, rx) = mpsc::channel(config.queue_max.saturating_add(1024));
    let backlog = Arc::new(Backlog::new(
        config.queue_max,
        usize::try_from(config.queue_max_bytes).unwrap_or(usize::MAX),
    ));
    let shared = Arc::new(Shared {
        backlog: backlog.clone(),
        ..Shared::default()
    });
    shared.sealed.store(!keys.is_empty(), Ordering::Relaxed);
    let express = express_lane(&config, keys, &sockets, group, id)?;
    let publisher = Arc::new(ChannelPublisher {
        tx: tx.clone(),
        queue: shared.changes.clone(),
        express: express.clone(),
        buffers: shared.buffers.clone(),
        overflow: AtomicU64::new(0),
        backlog,
        policy: config.overload,
        wait: config.overload_wait(),
        queue_max: config.queue_max,
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

    let app = NodeApp {
        registry,
        hlc: node.inner.core.hlc.clone(),
        lag,
        clock: node.inner.core.clock.clone(),
    };
    let tantrum = Tantrum {
        percent: config.monkey_tantrum,
        send: config.monkey_tantrum_side.drops_sends(),
        recv: config.monkey_tantrum_side.drops_receives(),
    };
    let silence = config.daemon_sleep() * crate::proto::endpoint::REMOVE_AFTER;
    let on_event: Box<dyn FnMut(&MemberEvent) + Send> = Box::new(move |ev| {
        log_member_event(ev, silence);
        let ls: Vec<MemberListener> = listeners.lock().clone();
        for l in ls {
            l(ev);
        }
    });
    let entries = discovery::entries(&config.peers, config.unicast_port());
    let interval = config.discovery_interval();
    // Addresses stay known as long as a silent member stays a member, and longer.
    let expiry = (config.daemon_sleep() * 12).max(Duration::from_secs(60));
    let announce = (config.daemon_sleep() * 2).max(Duration::from_millis(500));
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
                let transport = match sockets {
                    Sockets::Multicast(recv, send) => Transport::new(recv, send, group, tantrum),
                    Sockets::Unicast(sock) => {
                        Transport::unicast(sock, entries, interval, expiry, announce, tantrum)
                    }
                };
                match transport {
                    Ok(t) => driver::run(express, Box::new(app), t, rx, shared, on_event).await,
                    Err(e) => tracing::error!(error = %e, "mccache: cannot register sockets"),
                }
            });
        })?;
    if let Some(net) = &node.inner.net {
        *net.thread.lock() = Some(handle);
    }
    Ok(node)
}

/// Membership in the log: a peer removed as failed is a warning (what it writes until it is
/// heard again reaches this node only through anti-entropy; removals that repeat mean a peer,
/// or this machine, too loaded to keep up), joins and clean leaves are information, the rest
/// (suspicions, readiness) debug.
fn log_member_event(ev: &MemberEvent, silence: Duration) {
    match ev {
        MemberEvent::Left { id, failed: true } => tracing::warn!(
            peer = %id,
            "mccache: peer removed as failed: nothing heard from it for {:.1} s ({} heartbeats); \
             its changes reach this node again through anti-entropy once it is heard",
            silence.as_secs_f64(),
            crate::proto::endpoint::REMOVE_AFTER
        ),
        MemberEvent::Left { id, failed: false } => {
            tracing::info!(peer = %id, "mccache: peer left")
        }
        MemberEvent::Joined { id, name } => {
            tracing::info!(peer = %id, name = %name, "mccache: peer joined")
        }
        _ => tracing::debug!(event = ?ev, "mccache: membership"),
    }
}

/// The protocol core, behind the express lane ([`Express`]): writers that find the network
/// thread idle send their changes from a duplicate of the transport's send socket themselves.
/// Not under fault injection on sends (`monkey_tantrum`), which only the transport applies.
fn express_lane(
    config: &Config,
    keys: Vec<[u8; 32]>,
    sockets: &Sockets,
    group: SocketAddrV4,
    id: NodeId,
) -> Result<Arc<Express>> {
    let wire = WireConfig {
        cluster_name: config.cluster_name.clone(),
        keys,
        mtu: usize::from(config.packet_mtu),
        // Room for the message framing around the largest entry the caches accept.
        max_message_size: config.max_message_size + (64 << 10),
        reassembly_timeout: Duration::from_secs(5),
        max_reassembly_bytes: 4 * (config.max_message_size + (64 << 10)),
        // A peer's datagram may be this old (its clock behind by up to max_clock_skew, plus
        // time in flight) before it is refused as a possible replay.
        replay_horizon: config.max_clock_skew() + Duration::from_secs(30),
        max_clock_skew: config.max_clock_skew(),
    };
    let mut ep_cfg = EndpointConfig::new(
        config.node_name_or_default(),
        wire,
        config.daemon_sleep(),
        config.pulse(),
    );
    ep_cfg.queue_max = config.queue_max;
    // The flow-control window shrinks to what a buffer like ours holds from every peer.
    if let Some(bytes) = sockets.recv_buffer() {
        ep_cfg.recv_buffer = bytes;
    }
    ep_cfg.max_clock_skew = config.max_clock_skew();
    let endpoint = Endpoint::new(ep_cfg, id, Instant::now());
    let drops_sends = config.monkey_tantrum > 0.0 && config.monkey_tantrum_side.drops_sends();
    let (sock, targets) = match sockets {
        Sockets::Multicast(_, send) => (send, vec![SocketAddr::V4(group)]),
        Sockets::Unicast(sock) => (sock, Vec::new()),
    };
    let sock = if drops_sends {
        None
    } else {
        Some(sock.try_clone()?)
    };
    Ok(Arc::new(Express::new(endpoint, sock, targets)?))
}

/// A socket set-up failure as an error naming the configuration key and value at fault:
/// `interface: "10.0.0.5" is not an address of this host (…)`, or the port that cannot be
/// bound. Other failures keep their I/O error, with the group and interface added.
fn socket_error(config: &Config, e: std::io::Error) -> Error {
    let code = e.raw_os_error();
    if code == Some(libc::ENODEV) || code == Some(libc::EADDRNOTAVAIL) {
        return ConfigError::invalid_because(
            "interface",
            config.interface,
            "is not an address of this host",
            e,
        )
        .into();
    }
    let group = config.group();
    if code == Some(libc::EADDRINUSE) || code == Some(libc::EACCES) {
        return ConfigError::invalid_because("multicast_port", group.port(), "cannot be bound", e)
            .into();
    }
    Error::Network(std::io::Error::new(
        e.kind(),
        format!(
            "opening the sockets for group {group} on interface {}: {e}",
            config.interface
        ),
    ))
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
        let addrs = net.shared.addresses.lock().clone();
        net.shared
            .members
            .lock()
            .iter()
            .map(|p| Member {
                addr: addrs.get(&p.id).copied(),
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
    /// [`Node::wait_ready`] waits for it and says whether a peer was found.
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

    /// Reads the counters of datagrams that could not be opened (`None` for a local node).
    pub(crate) fn open_failures<T>(
        &self,
        f: impl FnOnce(&crate::net::diagnose::OpenFailures) -> T,
    ) -> Option<T> {
        self.inner
            .net
            .as_ref()
            .map(|n| f(&n.shared.open_failures.lock()))
    }

    /// Waits until `deadline` for [`Node::is_ready`]; returns whether it became ready.
    pub(crate) fn wait_ready_until(&self, deadline: Instant) -> bool {
        let Some(net) = &self.inner.net else {
            return true;
        };
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

    /// Sends `query` and collects the answers, repeating the query (at growing intervals)
    /// until every live member has answered or `timeout` passes. Returns the answers by node
    /// and the members that did not answer.
    fn ask(&self, query: Query, timeout: Duration) -> Result<ClusterAnswers<Vec<u8>>> {
        let net = self.net()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut answers: BTreeMap<NodeId, Vec<u8>> = BTreeMap::new();
        let mut interval = QUERY_RETRY_FIRST;
        loop {
            let unanswered = |answers: &BTreeMap<NodeId, Vec<u8>>| -> Vec<Member> {
                self.members()
                    .into_iter()
                    .filter(|m| !answers.contains_key(&m.id))
                    .collect()
            };
            let now = Instant::now();
            let missing = unanswered(&answers);
            if missing.is_empty() || now >= deadline {
                return Ok(ClusterAnswers { answers, missing });
            }
            match net.tx.try_send(Command::Query(query.clone(), tx.clone())) {
                // A full queue (overload): try again at the next round.
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::Shutdown),
            }
            let round_end = (now + interval).min(deadline);
            while let Some(left) = round_end.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok((from, body)) => {
                        answers.insert(from, body);
                        if unanswered(&answers).is_empty() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            interval = (interval * 2).min(QUERY_RETRY_MAX);
        }
    }

    /// Metrics of cache `name` (all caches if `None`) from every node of the cluster, this one
    /// included: node → cache name → metrics. The query is repeated until every live member
    /// has answered or `timeout` passes; [`ClusterAnswers::missing`] lists the members that
    /// did not answer. McCache only wrote these to each node's log; here they come back to the
    /// caller.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use mccache::{Config, Node};
    ///
    /// let node = Node::start(Config::load()?)?;
    /// let metrics = node.get_cluster_metrics(Some("users"), Duration::from_secs(1))?;
    /// for (id, caches) in &metrics {
    ///     println!("{id}: {caches:?}");
    /// }
    /// for m in &metrics.missing {
    ///     eprintln!("{} ({}) did not answer", m.name, m.id);
    /// }
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the node is local-only or stopped.
    pub fn get_cluster_metrics(
        &self,
        name: Option<&str>,
        timeout: Duration,
    ) -> Result<ClusterAnswers<BTreeMap<String, CacheMetrics>>> {
        let local: BTreeMap<String, CacheMetrics> = self
            .cache_names()
            .into_iter()
            .filter(|n| name.is_none_or(|x| x == n))
            .filter_map(|n| self.erased(&n).map(|c| (n, c.metrics())))
            .collect();
        let ClusterAnswers {
            answers: bodies,
            mut missing,
        } = self.ask(
            Query::Metrics {
                cache: name.map(str::to_string),
            },
            timeout,
        )?;
        let mut answers = BTreeMap::new();
        answers.insert(self.id(), local);
        for (from, body) in bodies {
            match rmp_serde::from_slice::<BTreeMap<String, CacheMetrics>>(&body) {
                Ok(m) => {
                    answers.insert(from, m);
                }
                Err(_) => missing.extend(self.members().into_iter().filter(|m| m.id == from)),
            }
        }
        Ok(ClusterAnswers { answers, missing })
    }

    /// Checksum of cache `name` — of the whole cache, or of one key's entry — from every node
    /// of the cluster, this one included. `None` where a node lacks the cache or the key.
    /// Equal values mean equal contents. Repeated like [`Node::get_cluster_metrics`] until
    /// every live member has answered or `timeout` passes.
    ///
    /// # Errors
    /// [`Error::Serialization`] if the key cannot be serialized; [`Error::Shutdown`] if the node
    /// is local-only or stopped.
    pub fn get_cluster_checksum<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: Option<&K>,
        timeout: Duration,
    ) -> Result<ClusterAnswers<Option<u64>>> {
        let key = key
            .map(|k| rmp_serde::to_vec(k).map_err(|e| Error::Serialization(Box::new(e))))
            .transpose()?;
        let local = self.erased(name).and_then(|c| match &key {
            None => Some(c.sync_digest().checksum),
            Some(k) => c.key_checksum(k).map(u64::from),
        });
        let ClusterAnswers {
            answers: bodies,
            mut missing,
        } = self.ask(
            Query::Checksum {
                cache: name.to_string(),
                key,
            },
            timeout,
        )?;
        let mut answers = BTreeMap::new();
        answers.insert(self.id(), local);
        for (from, body) in bodies {
            match rmp_serde::from_slice::<Option<u64>>(&body) {
                Ok(v) => {
                    answers.insert(from, v);
                }
                Err(_) => missing.extend(self.members().into_iter().filter(|m| m.id == from)),
            }
        }
        Ok(ClusterAnswers { answers, missing })
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
            net.registry.park(name, |p| p.clear(version));
            net.tx
                .try_send(Command::Publish(Item::Clear {
                    cache: name.into(),
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
