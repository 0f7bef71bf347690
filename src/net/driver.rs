//! The driver: one tokio task, on a runtime thread the node owns, that connects the I/O-free
//! [`Endpoint`] to the sockets, the timer and the node's command channel.
//!
//! Cache calls never wait for it: they push changes with `try_send` and return. The
//! [`Transport`] is the only part that knows how datagrams travel: to a multicast group, or
//! to each peer by unicast ([`super::unicast`], with discovery from [`super::discovery`]).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::diagnose::{OpenFailure, OpenFailures};
use crate::proto::endpoint::{Endpoint, Event, MemberEvent, PeerInfo};
use crate::proto::message::{Item, Query};
use crate::proto::metrics::NetworkMetrics;
use crate::proto::state::AppState;
use crate::proto::version::NodeId;

use super::discovery::{self, Resolved};
use super::unicast::{self, AddressBook};

/// Where the answers to one cluster query go: (answering node, msgpack body).
pub type ReplySender = std::sync::mpsc::Sender<(NodeId, Vec<u8>)>;

/// Requests from the node to the driver.
pub enum Command {
    /// Replicate a local change.
    Publish(Item),
    /// Ask the cluster; every reply is forwarded to the sender.
    Query(Query, ReplySender),
    /// Snapshot of the counters.
    Metrics(std::sync::mpsc::Sender<NetworkMetrics>),
}

/// Where the fault injector drops datagrams.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Tantrum {
    /// Percent of datagrams dropped (0–100).
    pub percent: f64,
    /// Drop on send.
    pub send: bool,
    /// Drop on receive.
    pub recv: bool,
}

/// State the driver shares with the node: membership, readiness.
#[derive(Default)]
pub struct Shared {
    /// Live peers, refreshed by the driver.
    pub members: Mutex<Vec<PeerInfo>>,
    /// True once the node holds a full copy.
    pub ready: Mutex<bool>,
    /// Signalled when `ready` turns true.
    pub ready_cv: Condvar,
    /// Set when the driver has stopped.
    pub stopped: AtomicBool,
    /// Set by the publisher when its queue overflowed: the driver schedules a repair pulse.
    pub overflowed: Arc<AtomicBool>,
    /// Notified to stop the driver (it leaves the cluster first).
    pub stop: tokio::sync::Notify,
    /// Outbound queue credits and the keys waiting for a targeted repair after an overflow.
    pub backlog: Arc<super::overflow::Backlog>,
    /// Unicast: where each member was heard from (empty for multicast).
    pub addresses: Mutex<HashMap<NodeId, SocketAddr>>,
    /// True if this node seals its datagrams (has a `crypto_key`); set before the driver runs.
    pub sealed: AtomicBool,
    /// Datagrams from other senders that could not be opened, by likely cause.
    pub open_failures: Mutex<OpenFailures>,
}

/// How datagrams travel.
pub enum Transport {
    /// To a multicast group: one socket joined to it, one to send from.
    Multicast {
        /// Joined to the group.
        recv: UdpSocket,
        /// Bound to the interface.
        send: UdpSocket,
        /// The group.
        group: SocketAddrV4,
    },
    /// To each peer: one socket bound to `interface:bind_port`.
    Unicast(Unicast),
}

/// The unicast transport's state.
pub struct Unicast {
    sock: UdpSocket,
    /// The `peers` entries with ports, re-resolved every `interval`.
    entries: Vec<String>,
    interval: Duration,
    /// Heard addresses expire after this long without news.
    expiry: Duration,
    /// How often this node announces the addresses it hears its members from.
    announce: Duration,
}

impl Transport {
    /// Wraps multicast sockets opened by [`super::socket`] (must be called inside the runtime).
    pub fn new(
        recv: std::net::UdpSocket,
        send: std::net::UdpSocket,
        group: SocketAddrV4,
    ) -> std::io::Result<Transport> {
        Ok(Transport::Multicast {
            recv: UdpSocket::from_std(recv)?,
            send: UdpSocket::from_std(send)?,
            group,
        })
    }

    /// Wraps a unicast socket ([`super::socket::unicast_socket`]; inside the runtime).
    /// `entries` are the `peers` with their ports, resolved every `interval`; addresses heard
    /// from are forgotten after `expiry` without news; members' addresses are announced every
    /// `announce`.
    pub fn unicast(
        sock: std::net::UdpSocket,
        entries: Vec<String>,
        interval: Duration,
        expiry: Duration,
        announce: Duration,
    ) -> std::io::Result<Transport> {
        Ok(Transport::Unicast(Unicast {
            sock: UdpSocket::from_std(sock)?,
            entries,
            interval,
            expiry,
            announce,
        }))
    }

    fn recv_socket(&self) -> &UdpSocket {
        match self {
            Transport::Multicast { recv, .. } => recv,
            Transport::Unicast(u) => &u.sock,
        }
    }
}

/// Applies one round of resolutions to the book, saying when an entry starts or stops
/// resolving (once per change, not every round).
fn apply_resolved(
    book: &mut AddressBook,
    found: Vec<Resolved>,
    failing: &mut HashMap<String, bool>,
) {
    for r in found {
        match r.addrs {
            Ok(addrs) => {
                if failing.insert(r.entry.clone(), false) == Some(true) {
                    tracing::info!(peer = %r.entry, ?addrs, "mccache: peer resolves again");
                }
                tracing::debug!(peer = %r.entry, ?addrs, "peer resolved");
                book.set_seed(&r.entry, addrs);
            }
            Err(e) => {
                if failing.insert(r.entry.clone(), true) != Some(true) {
                    tracing::warn!(
                        peer = %r.entry,
                        error = %e,
                        "mccache: peers: cannot resolve this entry (kept its last addresses; retried every discovery_interval)"
                    );
                }
                book.set_seed(&r.entry, Vec::new());
            }
        }
    }
}

/// Runs the driver until shutdown. `on_event` sees every membership event.
pub async fn run(
    mut ep: Endpoint,
    mut app: Box<dyn AppState + Send>,
    transport: Transport,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    tantrum: Tantrum,
    mut on_event: Box<dyn FnMut(&MemberEvent) + Send>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut queries: HashMap<u64, (ReplySender, Instant)> = HashMap::new();
    let mut rng = rand::rng();
    let epoch = tokio::time::Instant::now();
    let base = Instant::now();
    let to_tokio = |t: Instant| epoch + t.saturating_duration_since(base);
    let mut stopping = false;
    let queue_max = shared.backlog.capacity().max(1);
    let sealed = shared.sealed.load(Ordering::Relaxed);
    // Unicast: the address book, the first resolution of `peers` (before the first datagram
    // leaves, so the join announcement reaches them), and the resolver task.
    let mut book = None;
    let mut failing = HashMap::new();
    let (disc_tx, mut disc_rx) = mpsc::channel::<Vec<Resolved>>(1);
    let mut next_announce = Instant::now();
    let mut announce_soon = false;
    if let Transport::Unicast(u) = &transport {
        let mut b = AddressBook::new(u.expiry);
        let found = discovery::resolve_all(&u.entries).await;
        apply_resolved(&mut b, found, &mut failing);
        book = Some(b);
        let (entries, interval) = (u.entries.clone(), u.interval);
        if !entries.is_empty() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let found = discovery::resolve_all(&entries).await;
                    if disc_tx.send(found).await.is_err() {
                        break; // the driver stopped
                    }
                }
            });
        }
    } else {
        drop(disc_tx);
    }
    let unicast = book.is_some();
    loop {
        let deadline = to_tokio(ep.poll_timeout());
        tokio::select! {
            biased;
            _ = shared.stop.notified() => stopping = true,
            // Changes wait in the channel (holding their credits) while the core's outbox is
            // full, so the overload policy, not the core, decides what happens to them.
            cmd = commands.recv(), if ep.outbox_len() < queue_max => {
                let now = Instant::now();
                let mut next = cmd;
                let mut n = 0;
                let mut published = 0;
                while let Some(c) = next.take() {
                    match c {
                        Command::Publish(item) => {
                            published += 1;
                            ep.publish(now, item);
                        }
                        Command::Query(q, tx) => {
                            let id = ep.query(q);
                            queries.insert(id, (tx, now));
                        }
                        Command::Metrics(tx) => {
                            let _ = tx.send(ep.metrics());
                        }
                    }
                    n += 1;
                    if n < 8192 && ep.outbox_len() < queue_max {
                        next = commands.try_recv().ok();
                    }
                }
                shared.backlog.give(published);
                if commands.is_closed() && commands.is_empty() {
                    stopping = true;
                }
                ep.flush(now);
            }
            Some(found) = disc_rx.recv(), if unicast => {
                if let Some(b) = book.as_mut() {
                    apply_resolved(b, found, &mut failing);
                }
            }
            res = transport.recv_socket().recv_from(&mut buf) => {
                let mut res = res;
                let mut n = 0;
                loop {
                    match res {
                        Ok((len, src)) => {
                            if tantrum.recv && tantrum.percent > 0.0 && rng.random::<f64>() * 100.0 < tantrum.percent {
                                ep.metrics_mut().tantrum_drops += 1;
                            } else {
                                let now = Instant::now();
                                let sender = ep.handle_datagram(now, &buf[..len], app.as_mut());
                                if let Some(cause) = ep
                                    .last_drop()
                                    .and_then(|r| OpenFailure::classify(r, &buf[..len], sealed))
                                {
                                    shared.open_failures.lock().record(cause, src, now);
                                }
                                // Only authentic datagrams teach addresses.
                                if let (Some(b), Some(id)) = (book.as_mut(), sender) {
                                    if id == ep.id() {
                                        b.own(src);
                                    } else {
                                        b.heard(id, src, now);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "recv failed");
                            break;
                        }
                    }
                    n += 1;
                    if n >= 256 {
                        break;
                    }
                    res = transport.recv_socket().try_recv_from(&mut buf);
                    if matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                        break;
                    }
                }
                ep.flush(Instant::now());
            }
            _ = tokio::time::sleep_until(deadline) => {
                ep.handle_timeout(Instant::now(), app.as_mut());
            }
        }
        // Timers run on every pass, whichever branch woke us: under steady traffic the biased
        // select above would otherwise starve heartbeats (acks), NAKs and tail announcements.
        let now = Instant::now();
        if now >= ep.poll_timeout() {
            ep.handle_timeout(now, app.as_mut());
        }
        if shared.overflowed.swap(false, Ordering::AcqRel) {
            ep.metrics_mut().outbound_overflow += 1;
        }
        if commands.is_empty() {
            super::overflow::repair_step(&mut ep, app.as_ref(), &shared.backlog, Instant::now());
        }
        if stopping {
            ep.flush(Instant::now());
            ep.leave();
        }
        if let (Transport::Unicast(u), Some(b)) = (&transport, book.as_mut()) {
            let now = Instant::now();
            if !stopping && (announce_soon || now >= next_announce) {
                // Tell the members where we hear each of them from: a node that knows one
                // seed learns everyone this way.
                b.expire(now);
                ep.announce_addresses(b.first_hand());
                next_announce = now + u.announce;
                announce_soon = false;
            }
        }
        match &transport {
            Transport::Multicast { send, group, .. } => {
                while let Some(d) = ep.poll_transmit() {
                    if tantrum.send
                        && tantrum.percent > 0.0
                        && rng.random::<f64>() * 100.0 < tantrum.percent
                    {
                        ep.metrics_mut().tantrum_drops += 1;
                        continue;
                    }
                    if let Err(e) = send.send_to(&d, *group).await {
                        tracing::debug!(error = %e, "send failed");
                        *ep.metrics_mut()
                            .dropped
                            .entry("send_error".to_string())
                            .or_default() += 1;
                    }
                }
            }
            Transport::Unicast(u) => {
                let (mut out, mut dests) = (Vec::new(), Vec::new());
                while let Some((to, d)) = ep.poll_transmit_to() {
                    dests.push(to);
                    out.push(d);
                }
                if let (false, Some(b)) = (out.is_empty(), book.as_mut()) {
                    let mut copies = unicast::route(&dests, b);
                    if tantrum.send && tantrum.percent > 0.0 {
                        // Fault injection per copy: each link loses on its own.
                        let before = copies.len();
                        copies.retain(|_| rng.random::<f64>() * 100.0 >= tantrum.percent);
                        ep.metrics_mut().tantrum_drops += (before - copies.len()) as u64;
                    }
                    let (_, failed) = unicast::fan_out(&u.sock, &out, &copies).await;
                    if failed > 0 {
                        *ep.metrics_mut()
                            .dropped
                            .entry("send_error".to_string())
                            .or_default() += failed;
                    }
                }
            }
        }
        let mut membership_changed = false;
        while let Some(ev) = ep.poll_event() {
            match &ev {
                Event::Reply { id, from, body } => {
                    if let Some((tx, _)) = queries.get(id) {
                        if tx.send((*from, body.clone())).is_err() {
                            queries.remove(id);
                        }
                    }
                }
                Event::Addresses { addrs, .. } => {
                    if let Some(b) = book.as_mut() {
                        b.told(ep.id(), addrs, Instant::now());
                    }
                }
                Event::Member(m) => {
                    if let Some(b) = book.as_mut() {
                        match m {
                            MemberEvent::Left { id, .. } => b.forget(*id),
                            MemberEvent::Joined { .. } => announce_soon = true,
                            _ => {}
                        }
                    }
                    if *m == MemberEvent::Ready {
                        *shared.ready.lock() = true;
                        shared.ready_cv.notify_all();
                    } else {
                        membership_changed = true;
                    }
                    on_event(m);
                }
            }
        }
        let mut refreshed = false;
        if membership_changed || shared.members.lock().len() != ep.peers().len() {
            *shared.members.lock() = ep.peers();
            refreshed = true;
        } else {
            // Refresh last-seen times cheaply now and then.
            let mut m = shared.members.lock();
            if let Some(first) = m.first() {
                if first.last_seen.elapsed() > Duration::from_millis(500) {
                    *m = ep.peers();
                    refreshed = true;
                }
            }
        }
        if let (true, Some(b)) = (refreshed, book.as_ref()) {
            let members = shared.members.lock();
            *shared.addresses.lock() = members
                .iter()
                .filter_map(|p| b.address_of(p.id).map(|a| (p.id, a)))
                .collect();
        }
        let now = Instant::now();
        queries.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        if stopping {
            break;
        }
    }
    shared.stopped.store(true, Ordering::Release);
    // Wake anyone waiting for readiness so they can see the node stopped.
    shared.ready_cv.notify_all();
}
