//! The driver: one tokio task, on a runtime thread the node owns, that connects the I/O-free
//! [`Endpoint`] to the sockets, the timer and the node's command channel.
//!
//! Cache calls never wait for it: they push changes with `try_send` and return. The transport
//! is the only part that knows about multicast; a unicast fan-out to a peer list would replace
//! [`Transport`] and nothing in `proto/`.

use std::collections::HashMap;
use std::net::SocketAddrV4;
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
    /// Leave the cluster and stop.
    Shutdown,
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
    /// True if this node seals its datagrams (has a `crypto_key`); set before the driver runs.
    pub sealed: AtomicBool,
    /// Datagrams from other senders that could not be opened, by likely cause.
    pub open_failures: Mutex<OpenFailures>,
}

/// The sockets: multicast to a group.
pub struct Transport {
    recv: UdpSocket,
    send: UdpSocket,
    group: SocketAddrV4,
}

impl Transport {
    /// Wraps sockets opened by [`super::socket`] (must be called inside the runtime).
    pub fn new(
        recv: std::net::UdpSocket,
        send: std::net::UdpSocket,
        group: SocketAddrV4,
    ) -> std::io::Result<Transport> {
        Ok(Transport {
            recv: UdpSocket::from_std(recv)?,
            send: UdpSocket::from_std(send)?,
            group,
        })
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
    let sealed = shared.sealed.load(Ordering::Relaxed);
    loop {
        let deadline = to_tokio(ep.poll_timeout());
        tokio::select! {
            biased;
            _ = shared.stop.notified() => stopping = true,
            cmd = commands.recv() => {
                let now = Instant::now();
                let mut next = cmd;
                let mut n = 0;
                while let Some(c) = next.take() {
                    match c {
                        Command::Publish(item) => ep.publish(now, item),
                        Command::Query(q, tx) => {
                            let id = ep.query(q);
                            queries.insert(id, (tx, now));
                        }
                        Command::Metrics(tx) => {
                            let _ = tx.send(ep.metrics());
                        }
                        Command::Shutdown => stopping = true,
                    }
                    n += 1;
                    if n < 8192 {
                        next = commands.try_recv().ok();
                    }
                }
                if commands.is_closed() && commands.is_empty() {
                    stopping = true;
                }
                ep.flush(now);
            }
            res = transport.recv.recv_from(&mut buf) => {
                let mut res = res;
                let mut n = 0;
                loop {
                    match res {
                        Ok((len, src)) => {
                            if tantrum.recv && tantrum.percent > 0.0 && rng.random::<f64>() * 100.0 < tantrum.percent {
                                ep.metrics_mut().tantrum_drops += 1;
                            } else {
                                let now = Instant::now();
                                ep.handle_datagram(now, &buf[..len], app.as_mut());
                                if let Some(cause) = ep
                                    .last_drop()
                                    .and_then(|r| OpenFailure::classify(r, &buf[..len], sealed))
                                {
                                    shared.open_failures.lock().record(cause, src, now);
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
                    res = transport.recv.try_recv_from(&mut buf);
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
            ep.schedule_pulse(Instant::now());
        }
        if stopping {
            ep.flush(Instant::now());
            ep.leave();
        }
        while let Some(d) = ep.poll_transmit() {
            if tantrum.send
                && tantrum.percent > 0.0
                && rng.random::<f64>() * 100.0 < tantrum.percent
            {
                ep.metrics_mut().tantrum_drops += 1;
                continue;
            }
            if let Err(e) = transport.send.send_to(&d, transport.group).await {
                tracing::debug!(error = %e, "send failed");
                *ep.metrics_mut()
                    .dropped
                    .entry("send_error".to_string())
                    .or_default() += 1;
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
                Event::Member(m) => {
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
        if membership_changed || shared.members.lock().len() != ep.peers().len() {
            *shared.members.lock() = ep.peers();
        } else {
            // Refresh last-seen times cheaply now and then.
            let mut m = shared.members.lock();
            if let Some(first) = m.first() {
                if first.last_seen.elapsed() > Duration::from_millis(500) {
                    *m = ep.peers();
                }
            }
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
