//! The driver: one tokio task, on a runtime thread the node owns, that connects the I/O-free
//! [`Endpoint`] to the sockets, the timer and the node's command channel.
//!
//! Cache calls never wait for it: they append changes to the [`super::overflow::ChangeQueue`]
//! and return (waking it only if it is parked, and while the core lingers only once their
//! changes would fill the lingering data message). The
//! [`Transport`] is the only part that knows how datagrams travel: to a multicast group, or
//! to each peer by unicast ([`super::unicast`], with discovery from [`super::discovery`]).
//! Each pass of the loop waits for one wake-up, reads the clock once and gives that `now` to
//! every call into the core.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;

use super::diagnose::{OpenFailure, OpenFailures};
use super::express::Express;
use super::overflow::charge;
use super::supersede::Superseder;
use crate::proto::drop::DropReason;
use crate::proto::endpoint::{Endpoint, Event, MemberEvent, PeerInfo};
use crate::proto::message::{Item, Query};
use crate::proto::metrics::NetworkMetrics;
use crate::proto::state::AppState;
use crate::proto::version::NodeId;

use super::discovery::{self, Resolved};
pub(crate) use super::transport::{Tantrum, Transport};
use super::unicast::AddressBook;

/// Where the answers to one cluster query go: (answering node, msgpack body).
pub(crate) type ReplySender = std::sync::mpsc::Sender<(NodeId, Vec<u8>)>;

/// Requests from the node to the driver.
pub(crate) enum Command {
    /// Replicate a change that holds no queue credit (a clear of a cache not opened here);
    /// caches' changes come through [`Shared::changes`].
    Publish(Item),
    /// Ask the cluster; every reply is forwarded to the sender.
    Query(Query, ReplySender),
    /// Snapshot of the counters.
    Metrics(std::sync::mpsc::Sender<NetworkMetrics>),
}

/// State the driver shares with the node: membership, readiness.
#[derive(Default)]
pub(crate) struct Shared {
    /// Live peers, refreshed by the driver.
    pub members: Mutex<Vec<PeerInfo>>,
    /// True once the node holds a full copy.
    pub ready: Mutex<bool>,
    /// Signalled when `ready` turns true.
    pub ready_cv: Condvar,
    /// Set when the driver has stopped.
    pub stopped: AtomicBool,
    /// Notified to stop the driver (it leaves the cluster first).
    pub stop: tokio::sync::Notify,
    /// Outbound queue credits and the keys waiting for a targeted repair after an overflow.
    pub backlog: Arc<super::overflow::Backlog>,
    /// The caches' changes, each holding one of the backlog's credits.
    pub changes: Arc<super::overflow::ChangeQueue>,
    /// Key and value buffers of sent changes, returned to the writers after each pass.
    pub buffers: Arc<super::buffers::BufferPool>,
    /// Unicast: where each member was heard from (empty for multicast).
    pub addresses: Mutex<HashMap<NodeId, SocketAddr>>,
    /// True if this node seals its datagrams (has a `crypto_key`); set before the driver runs.
    pub sealed: AtomicBool,
    /// Datagrams from other senders that could not be opened, by likely cause.
    pub open_failures: Mutex<OpenFailures>,
}

/// Counters the driver keeps itself (the core counts the rest); merged into the core's when
/// metrics are read ([`DriverCounters::merged`]).
#[derive(Debug, Default)]
struct DriverCounters {
    /// Datagrams the socket refused to send.
    send_errors: u64,
    /// Records dropped for a newer one of the same key in the same batch.
    superseded: u64,
}

impl DriverCounters {
    /// The core's metrics with the driver's, the express lane's and the transport's counters
    /// added.
    fn merged(&self, ep: &Endpoint, express: &Express, transport: &Transport) -> NetworkMetrics {
        let mut m = ep.metrics();
        m.express_changes += express.changes();
        m.tantrum_drops += transport.tantrum_drops();
        if transport.own_echoes() > 0 {
            *m.dropped
                .entry(DropReason::OwnEcho.as_str().to_string())
                .or_default() += transport.own_echoes();
        }
        m.changes_superseded += self.superseded;
        let send_errors = self.send_errors + express.send_errors();
        if send_errors > 0 {
            *m.dropped
                .entry(DropReason::SendError.as_str().to_string())
                .or_default() += send_errors;
        }
        m
    }
}

/// What woke the driver up.
enum Wake {
    Stop,
    Command(Option<Command>),
    /// Changes to take: found at the top of the pass, or `woken` by a writer.
    Changes {
        woken: bool,
    },
    Resolved(Vec<Resolved>),
    Datagram(std::io::Result<(usize, SocketAddr)>),
    Timer,
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
pub(crate) async fn run(
    express: Arc<Express>,
    mut app: Box<dyn AppState + Send>,
    mut transport: Transport,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    mut on_event: Box<dyn FnMut(&MemberEvent) + Send>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut queries: HashMap<u64, (ReplySender, Instant)> = HashMap::new();
    let mut counters = DriverCounters::default();
    let base = Instant::now();
    let mut stopping = false;
    let queue_max = shared.backlog.capacity().max(1);
    let outbox_max = queue_max.min(4096);
    let sealed = shared.sealed.load(Ordering::Relaxed);
    // Unicast: the address book, the first resolution of `peers` (before the first datagram
    // leaves, so the join announcement reaches them), and the resolver task.
    let mut book = None;
    let mut failing = HashMap::new();
    let (disc_tx, mut disc_rx) = mpsc::channel::<Vec<Resolved>>(1);
    let mut next_announce = base;
    let mut next_interleaved_repair = base;
    let mut announce_soon = false;
    if let Some(u) = transport.unicast_settings() {
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
    let announce_every = transport.unicast_settings().map(|u| u.announce);
    // Changes taken off the shared queue, still holding their credits, and the buffers the
    // writers fill next.
    let mut staged: VecDeque<Item> = VecDeque::new();
    let mut spare = super::overflow::Spare::default();
    let mut superseder = Superseder::default();
    // Buffers of the changes the core has encoded, on their way back to the writers.
    let mut spent: Vec<Vec<u8>> = Vec::new();
    // The timer is the express lane's timerfd: armed for the core's next deadline before each
    // wait, and moved earlier by writers that send their own changes.
    let timer = match express.timer() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "mccache: cannot register the network timer");
            shared.stopped.store(true, Ordering::Release);
            shared.ready_cv.notify_all();
            return;
        }
    };
    // When the queue may be taken again (see TAKE_INTERVAL).
    let mut next_take = base;
    // While the core lingers, the driver parks on the change queue right after a take instead
    // of waiting TAKE_INTERVAL: writers wake it only when their changes would fill the
    // lingering data message, and the timer at its deadline (so at moderate rates it wakes once
    // a message, and full messages leave at once). But a writer that fills messages faster than
    // every TAKE_INTERVAL would then pay a wake-up system call every few dozen changes (a
    // flat-out networked insert measured 213 against 165 ns): when a writer wakes the driver
    // that soon after it parked, the driver goes back to taking every TAKE_INTERVAL until
    // `batch_until`, and writers do not wake it meanwhile. `parked_at`: when it last parked.
    let mut parked_at = base;
    let mut batch_until = base;
    // When datagrams were last read (see READ_STARVED).
    let mut last_read = base;
    // The core's lock is held for the work of a pass, never across a wait (writers only try it).
    loop {
        let (take, changes_ready) = {
            let mut guard = express.lock();
            // Changes wait in the queue (holding their credits) while the core's outbox is
            // full, so the overload policy, not the core, decides what happens to them.
            let room = has_room(&guard.ep, outbox_max);
            let now = Instant::now();
            // While the core lingers, changes that join its data message wait for its deadline
            // wherever they are: the driver leaves them queued and parks until then (or until
            // they would fill it) instead of taking them or being woken for each one, and
            // need not wait for TAKE_INTERVAL (see `batch_until`).
            let lingering = guard.ep.lingering(now);
            let take = room
                && (!staged.is_empty()
                    || now >= next_take
                    || (lingering.is_some() && now >= batch_until));
            let defer_room = lingering.map_or(0, |(_, room)| room);
            let changes_ready = take
                && shared
                    .changes
                    .take_or_park(&mut staged, &mut spare, defer_room);
            // Parked with nothing staged or waiting: writers may send their changes themselves.
            let idle = take && !changes_ready && staged.is_empty() && commands.is_empty();
            let wake_at = if room && !take {
                Some(next_take)
            } else if take && !changes_ready {
                parked_at = now;
                lingering.map(|(due, _)| due)
            } else {
                None
            };
            express.park(&mut guard, idle, wake_at);
            (take, changes_ready)
        };
        let wake = tokio::select! {
            biased;
            _ = shared.stop.notified() => Wake::Stop,
            // Commands are taken whatever the outbox holds: metrics and cluster queries must
            // not wait for an overloaded outbox to drain (they waited seconds behind a targeted
            // repair), and the only change that comes this way, a clear of a cache not open
            // here, holds no credit and may overshoot the outbox's bound by the channel's size.
            cmd = commands.recv() => Wake::Command(cmd),
            _ = std::future::ready(()), if changes_ready => Wake::Changes { woken: false },
            _ = shared.changes.woken(), if take && !changes_ready => Wake::Changes { woken: true },
            Some(found) = disc_rx.recv(), if unicast => Wake::Resolved(found),
            res = transport.recv(&mut buf) => Wake::Datagram(res),
            fired = express.fired(&timer) => {
                if let Err(e) = fired {
                    tracing::warn!(error = %e, "mccache: network timer failed");
                }
                Wake::Timer
            }
        };
        // The one clock reading of this pass.
        let now = Instant::now();
        {
            let mut guard = express.lock();
            express.unpark(&mut guard);
            let ep = &mut guard.ep;
            match wake {
                Wake::Stop => stopping = true,
                Wake::Changes { woken } => {
                    if shared.changes.take_or_park(&mut staged, &mut spare, 0) {
                        if staged.len() < COALESCE_BELOW {
                            next_take = now + TAKE_INTERVAL;
                        }
                        if woken && now < parked_at + TAKE_INTERVAL {
                            batch_until = now + TAKE_INTERVAL;
                            next_take = next_take.max(batch_until);
                        }
                        let thinned = publish_thinned(
                            ep,
                            now,
                            &mut staged,
                            &mut superseder,
                            &shared,
                            outbox_max,
                        );
                        counters.superseded += thinned.changes as u64;
                    }
                    // Busy (changes were waiting, no wait for a writer) and no datagram read
                    // for READ_STARVED: datagrams waiting are read too. The select prefers
                    // changes, and under writers flat out it would otherwise read only once
                    // the outbox filled: requests, NAKs and acks waited behind the writers for
                    // hundreds of ms. Not after a wait, where the reads (two system calls when
                    // nothing waits) would delay the change (low-load lag p50 +10 µs), nor on
                    // every busy pass (the capacity bench's coherent rate fell by a third).
                    if !woken && now >= last_read + READ_STARVED {
                        last_read = now;
                        let mut inbound = Inbound {
                            transport: &mut transport,
                            buf: &mut buf,
                            book: book.as_mut(),
                            shared: &shared,
                            sealed,
                        };
                        inbound.receive(None, ep, app.as_mut(), now);
                    }
                }
                Wake::Command(cmd) => {
                    let mut next = cmd;
                    let mut n = 0;
                    while let Some(c) = next.take() {
                        match c {
                            Command::Publish(item) => ep.publish(now, item),
                            Command::Query(q, tx) => {
                                let id = ep.query(now, q);
                                queries.insert(id, (tx, now));
                            }
                            Command::Metrics(tx) => {
                                let _ = tx.send(counters.merged(ep, &express, &transport));
                            }
                        }
                        n += 1;
                        if n < 8192 && has_room(ep, outbox_max) {
                            next = commands.try_recv().ok();
                        }
                    }
                    if commands.is_closed() && commands.is_empty() {
                        stopping = true;
                    }
                }
                Wake::Resolved(found) => {
                    if let Some(b) = book.as_mut() {
                        apply_resolved(b, found, &mut failing);
                    }
                }
                Wake::Datagram(first) => {
                    last_read = now;
                    let mut inbound = Inbound {
                        transport: &mut transport,
                        buf: &mut buf,
                        book: book.as_mut(),
                        shared: &shared,
                        sealed,
                    };
                    inbound.receive(Some(first), ep, app.as_mut(), now);
                }
                Wake::Timer => {
                    // The lingering data message's deadline: the changes that waited for it in
                    // the queue go in it (packed at the send below), not in the next one a
                    // linger later.
                    if ep.lingering(now).is_none()
                        && has_room(ep, outbox_max)
                        && !shared.changes.is_empty()
                        && shared.changes.take_or_park(&mut staged, &mut spare, 0)
                    {
                        let thinned = publish_thinned(
                            ep,
                            now,
                            &mut staged,
                            &mut superseder,
                            &shared,
                            outbox_max,
                        );
                        counters.superseded += thinned.changes as u64;
                    }
                }
            }
            // Timers run on every pass, whichever branch woke us: under steady traffic the biased
            // select above would otherwise starve heartbeats (acks), NAKs and tail announcements.
            if ep.poll_timeout().is_some_and(|t| now >= t) {
                ep.handle_timeout(now, app.as_mut());
            }
            // The targeted repair: at once when the queue has drained, and every
            // REPAIR_INTERLEAVE while it stays full, so that under sustained overload a key
            // whose change found no room does not wait for the writers to pause.
            let drained =
                commands.is_empty() && staged.is_empty() && shared.backlog.nothing_queued();
            if drained {
                super::overflow::repair_step(ep, app.as_ref(), &shared.backlog, now, false);
            } else if now >= next_interleaved_repair {
                next_interleaved_repair = now + super::overflow::REPAIR_INTERLEAVE;
                super::overflow::repair_step(ep, app.as_ref(), &shared.backlog, now, true);
            }
            ep.set_repair_pending(shared.backlog.has_dirty());
            if stopping {
                // What the caches queued before the stop goes out ahead of the leave, as far as
                // the core's outbox takes it.
                for _ in 0..queue_max / 8192 + 2 {
                    if !shared.changes.take_all(&mut staged, &mut spare) {
                        break;
                    }
                    // The stop: as many as the queue held, whatever their bytes.
                    publish_staged(ep, now, &mut staged, &shared, (queue_max, usize::MAX));
                }
                ep.leave(now);
            }
            if let (Some(every), Some(b)) = (announce_every, book.as_mut()) {
                if !stopping && (announce_soon || now >= next_announce) {
                    // Tell the members where we hear each of them from: a node that knows one
                    // seed learns everyone this way.
                    b.expire(now);
                    ep.announce_addresses(now, b.first_hand());
                    next_announce = now + every;
                    announce_soon = false;
                }
            }
        }
        counters.send_errors += transport.send(&express, now, book.as_mut()).await.failed;
        let mut guard = express.lock();
        let ep = &mut guard.ep;
        ep.take_spent_buffers(&mut spent);
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
                        b.told(ep.id(), addrs, now);
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
        if membership_changed || shared.members.lock().len() != ep.peer_count() {
            *shared.members.lock() = ep.peers();
            refreshed = true;
        } else {
            // Refresh last-seen times cheaply now and then.
            let mut m = shared.members.lock();
            if let Some(first) = m.first() {
                if now.saturating_duration_since(first.last_seen) > MEMBERS_REFRESH {
                    *m = ep.peers();
                    refreshed = true;
                }
            }
        }
        if let Some(b) = book.as_mut() {
            Express::set_targets(&mut guard, b.targets());
            if refreshed {
                let members = shared.members.lock();
                *shared.addresses.lock() = members
                    .iter()
                    .filter_map(|p| b.address_of(p.id).map(|a| (p.id, a)))
                    .collect();
            }
        }
        drop(guard);
        shared.buffers.give(&mut spent);
        queries.retain(|_, (_, at)| now.duration_since(*at) < QUERY_LIFETIME);
        if stopping {
            break;
        }
    }
    shared.stopped.store(true, Ordering::Release);
    // Wake anyone waiting for readiness so they can see the node stopped.
    shared.ready_cv.notify_all();
}

/// Most datagrams handed to the core in one pass.
const RECV_BATCH: usize = 256;

/// A busy pass also reads the datagrams waiting when none was read for this long.
const READ_STARVED: Duration = Duration::from_millis(1);

/// What reading datagrams needs besides the core: the sockets, the buffer, the unicast address
/// book, and where open failures are recorded.
struct Inbound<'a> {
    transport: &'a mut Transport,
    buf: &'a mut [u8],
    book: Option<&'a mut AddressBook>,
    shared: &'a Shared,
    sealed: bool,
}

impl Inbound<'_> {
    /// Hands `first` (or, if `None`, the first datagram waiting) and those waiting after it,
    /// at most [`RECV_BATCH`] in all, to the core. Never waits.
    fn receive(
        &mut self,
        first: Option<std::io::Result<(usize, SocketAddr)>>,
        ep: &mut Endpoint,
        app: &mut dyn AppState,
        now: Instant,
    ) {
        let mut res = match first {
            Some(r) => r,
            None => self.transport.try_recv(self.buf),
        };
        let mut n = 0;
        loop {
            match res {
                Ok((len, src)) => {
                    let sender = ep.handle_datagram(now, &self.buf[..len], app);
                    if let Some(cause) = ep
                        .last_drop()
                        .and_then(|r| OpenFailure::classify(r, &self.buf[..len], self.sealed))
                    {
                        self.shared.open_failures.lock().record(cause, src, now);
                    }
                    // Only authentic datagrams teach addresses.
                    match (self.book.as_mut(), sender) {
                        (Some(b), Some(id)) if id == ep.id() => b.own(src),
                        (Some(b), Some(id)) => b.heard(id, src, now),
                        (None, Some(id)) if id != ep.id() => self.transport.heard(id, src),
                        _ => {}
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "recv failed");
                    return;
                }
            }
            n += 1;
            if n >= RECV_BATCH {
                return; // the rest stays in the transport's batch or the socket
            }
            res = self.transport.try_recv(self.buf);
        }
    }
}

/// Drops the staged changes that newer ones of the batch supersede, then publishes the rest
/// into the core's outbox (up to `outbox_max` and [`OUTBOX_BYTES`]).
fn publish_thinned(
    ep: &mut Endpoint,
    now: Instant,
    staged: &mut VecDeque<Item>,
    superseder: &mut Superseder,
    shared: &Shared,
    outbox_max: usize,
) -> super::supersede::Thinned {
    let thinned = superseder.thin(staged);
    shared.backlog.give_queued(thinned.changes, thinned.bytes);
    publish_staged(ep, now, staged, shared, (outbox_max, OUTBOX_BYTES));
    thinned
}

/// Hands staged changes to the core, up to 8,192 per pass and while its outbox holds fewer
/// than `limit` changes and `limit_bytes` bytes, giving their credits back.
fn publish_staged(
    ep: &mut Endpoint,
    now: Instant,
    staged: &mut VecDeque<Item>,
    shared: &Shared,
    (limit, limit_bytes): (usize, usize),
) {
    let (mut published, mut bytes) = (0, 0);
    while published < 8192 && ep.outbox_len() < limit && ep.outbox_bytes() < limit_bytes {
        let Some(item) = staged.pop_front() else {
            break;
        };
        bytes += charge(&item);
        ep.publish(now, item);
        published += 1;
    }
    shared.backlog.give_queued(published, bytes);
}

/// A busy driver that took fewer than [`COALESCE_BELOW`] changes off the queue takes it
/// again only after this long (it sleeps on the timer; datagrams still wake it), so the
/// changes of a writer that keeps writing gather in the queue instead of being taken one or
/// two at a time. Taking per write made the queue's lock and its records' cache lines bounce
/// between the writer's core and the driver's on every write: on a flat-out networked writer
/// the queue's unlock alone was ~half of the handoff's samples. An idle driver is not
/// affected: writers then send their own changes (the express lane).
const TAKE_INTERVAL: Duration = Duration::from_micros(50);

/// See [`TAKE_INTERVAL`]: about a datagram's worth of small changes.
const COALESCE_BELOW: usize = 64;

/// Most bytes of changes the core's outbox holds before the driver leaves the rest in the
/// change queue (where the overload policy governs them): 4,096 small changes are ~100 KiB,
/// but 4,096 of 9 KB would be 37 MB, seconds of sending.
const OUTBOX_BYTES: usize = 2 << 20;

/// Whether the core's outbox takes more changes: fewer than `max` and [`OUTBOX_BYTES`].
fn has_room(ep: &Endpoint, max: usize) -> bool {
    ep.outbox_len() < max && ep.outbox_bytes() < OUTBOX_BYTES
}

/// How stale the shared members' last-seen times may get before they are refreshed.
const MEMBERS_REFRESH: Duration = Duration::from_millis(500);

/// How long the answers to a cluster query are forwarded.
const QUERY_LIFETIME: Duration = Duration::from_secs(60);
