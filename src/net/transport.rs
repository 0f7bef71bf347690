//! How datagrams travel: to a multicast group, or to each peer by unicast ([`super::unicast`]).
//!
//! The [`Transport`] receives datagrams for the driver and sends what the core's
//! [`Endpoint::poll_transmit`] writes. Fault injection (`monkey_tantrum`) lives here, wrapped
//! around the sockets, so neither the core nor the driver loop knows about it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::ThreadRng;

use super::express::Express;
use super::socket::{DatagramSocket, RecvBatch};
use super::unicast::{self, AddressBook};
use crate::proto::endpoint::Destination;
use crate::proto::version::NodeId;

/// Where the fault injector drops datagrams (`monkey_tantrum`).
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct Tantrum {
    /// Percent of datagrams dropped (0–100).
    pub percent: f64,
    /// Drop on send.
    pub send: bool,
    /// Drop on receive.
    pub recv: bool,
}

/// Most multicast datagrams sent by one pass of `sendmmsg` calls before the next are packed.
const MULTICAST_BATCH: usize = 64;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 before Linux 6.9).
const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes in one GSO send (an IPv4 UDP payload holds at most 65,507).
const GSO_MAX_BYTES: usize = 65_000;

/// Datagrams travel over a link (multicast or unicast sockets), through a fault injector.
pub(crate) struct Transport {
    link: Link,
    faults: Faults,
    /// Received datagrams not handed to the driver yet (one `recvmmsg` takes up to 32).
    batch: RecvBatch,
    /// Multicast: the send socket's address, the source of our own looped-back datagrams.
    own_src: Option<SocketAddr>,
    /// Own looped-back datagrams dropped before the core saw them.
    own_echoes: u64,
    /// Reused datagram buffers: one for multicast, one per datagram of a unicast pass.
    bufs: Vec<Vec<u8>>,
    dests: Vec<Option<NodeId>>,
    /// Multicast: runs of equal-sized datagrams go out as one GSO send until the kernel
    /// refuses one; `scratch` holds a run.
    gso: bool,
    scratch: Vec<u8>,
    /// Multicast: where each peer's datagrams come from (its send socket), learned from
    /// authentic datagrams ([`Transport::heard`]), and whether a datagram sent there reaches
    /// it. A message meant for one peer (a retransmission, a NAK, bucket lists, a pull, a
    /// snapshot chunk, a reply) goes there alone instead of to the whole group once a probe
    /// has come back from it: with nine members, retransmissions to the group reached eight
    /// receivers for the one that asked, and the duplicates cost the others more than their
    /// own traffic (9 processes flat out on 2 cores never agreed again). A host firewall that
    /// lets only the group's port through stops the probes, and the group is used as before.
    peer_addrs: HashMap<NodeId, PeerPath>,
    /// Multicast: probe answers sent in the current second (from `probe_second`), bounded.
    probe_answers: u32,
    probe_second: Option<Instant>,
    /// Multicast: the datagrams of a pass meant for one known peer, with its address.
    direct: Vec<(usize, SocketAddr)>,
    /// Multicast: a pass's datagrams for the group when some went direct.
    scratch_group: Vec<Vec<u8>>,
    /// Multicast: the next receive tries the send socket (where direct datagrams arrive) first.
    direct_first: bool,
    /// Multicast: the datagrams in `batch` came to the send socket (sent to this node alone).
    batch_direct: bool,
}

/// Most peer addresses a multicast transport remembers (past it, it forgets them all and
/// learns them again: a flood of authentic new ids cannot grow it).
const PEER_ADDRS_MAX: usize = 1024;

/// A peer's direct path (multicast transport).
#[derive(Debug)]
struct PeerPath {
    addr: SocketAddr,
    /// A recent probe sent to `addr` came back: messages meant for this peer alone go there.
    direct: bool,
    /// What the answer to our probes must carry.
    nonce: u64,
    /// Probes sent since the last answer.
    unanswered: u32,
    next_probe: Option<Instant>,
}

/// A direct-path probe or its answer: this prefix (never the start of a wire datagram, which
/// begins `MC` and a version byte), a kind byte and the prober's nonce.
const PROBE_MAGIC: &[u8; 8] = b"MCcPROBE";
const PROBE_LEN: usize = 17;
const PROBE_ASK: u8 = 1;
const PROBE_ANSWER: u8 = 2;
/// A path is probed every [`PROBE_EVERY`], confirmed or not (a path that worked can stop:
/// a firewall rule added, an address taken over), and dropped back to the group after this
/// many probes in a row go unanswered; a path never confirmed is probed every
/// [`PROBE_IDLE`] once this many have.
const PROBES_MAX: u32 = 3;
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_IDLE: Duration = Duration::from_secs(30);
/// Most probe answers a second (a member answers each of its peers' probes twice a second): a
/// flood of forged probes (from forged sources) gets few answers, each the size of the probe.
const PROBE_ANSWERS_MAX: u32 = 512;

fn probe(kind: u8, nonce: u64) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[..8].copy_from_slice(PROBE_MAGIC);
    p[8] = kind;
    p[9..].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// The sockets.
enum Link {
    /// To a multicast group: one socket joined to it, one to send from.
    Multicast {
        recv: DatagramSocket,
        send: DatagramSocket,
        group: SocketAddrV4,
    },
    /// To each peer: one socket bound to `interface:bind_port`.
    Unicast(Unicast),
}

/// The unicast transport's settings.
pub(crate) struct Unicast {
    sock: DatagramSocket,
    /// The `peers` entries with ports, re-resolved every `interval`.
    pub entries: Vec<String>,
    /// How often `entries` are resolved again.
    pub interval: Duration,
    /// Heard addresses expire after this long without news.
    pub expiry: Duration,
    /// How often this node announces the addresses it hears its members from.
    pub announce: Duration,
}

/// What one [`Transport::send`] pass did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Datagrams (unicast: copies) the socket refused.
    pub failed: u64,
}

impl Transport {
    /// Wraps multicast sockets opened by [`super::socket`] (must be called inside the runtime).
    pub(crate) fn new(
        recv: std::net::UdpSocket,
        send: std::net::UdpSocket,
        group: SocketAddrV4,
        tantrum: Tantrum,
    ) -> io::Result<Transport> {
        let link = Link::Multicast {
            recv: DatagramSocket::new(recv)?,
            send: DatagramSocket::new(send)?,
            group,
        };
        Ok(Transport::with(link, tantrum))
    }

    /// Wraps a unicast socket ([`super::socket::unicast_socket`]; inside the runtime).
    /// `entries` are the `peers` with their ports, resolved every `interval`; addresses heard
    /// from are forgotten after `expiry` without news; members' addresses are announced every
    /// `announce`.
    pub(crate) fn unicast(
        sock: std::net::UdpSocket,
        entries: Vec<String>,
        interval: Duration,
        expiry: Duration,
        announce: Duration,
        tantrum: Tantrum,
    ) -> io::Result<Transport> {
        let link = Link::Unicast(Unicast {
            sock: DatagramSocket::new(sock)?,
            entries,
            interval,
            expiry,
            announce,
        });
        Ok(Transport::with(link, tantrum))
    }

    fn with(link: Link, tantrum: Tantrum) -> Transport {
        // Multicast loops our own datagrams back (for the other nodes on this host): they are
        // recognised by their source, when the send socket has a specific address, and dropped
        // here rather than opened by the core.
        let own_src = match &link {
            Link::Multicast { send, .. } => {
                (send.local_addr().ok()).filter(|a| !a.ip().is_unspecified() && a.port() != 0)
            }
            Link::Unicast(_) => None,
        };
        // Better still, the kernel drops them before they are queued: no copy, and no wake-up
        // of this thread for every datagram it sends.
        if let (Link::Multicast { recv, .. }, Some(SocketAddr::V4(src))) = (&link, own_src) {
            if let Err(e) = super::socket::drop_own_echoes(recv, src) {
                tracing::debug!(error = %e, "own-echo filter refused: echoes are dropped after receipt");
            }
        }
        Transport {
            batch: RecvBatch::new(),
            own_src,
            own_echoes: 0,
            link,
            faults: Faults {
                tantrum,
                rng: rand::rng(),
                dropped: 0,
            },
            bufs: Vec::new(),
            dests: Vec::new(),
            gso: true,
            scratch: Vec::new(),
            peer_addrs: HashMap::new(),
            probe_answers: 0,
            probe_second: None,
            direct: Vec::new(),
            scratch_group: Vec::new(),
            direct_first: false,
            batch_direct: false,
        }
    }

    /// Multicast: `id`'s datagrams come from `src` (the driver calls it for every authentic
    /// datagram of a peer); messages meant for `id` alone go there.
    pub(crate) fn heard(&mut self, id: NodeId, src: SocketAddr) {
        if !matches!(self.link, Link::Multicast { .. }) {
            return;
        }
        if let Some(path) = self.peer_addrs.get_mut(&id)
            && path.addr == src
        {
            // Its datagrams for this node alone arrive: the path between the two is open (a
            // firewall that closes it closes both ways), whether or not the probes, which
            // queue behind them at an overloaded node, come back in time.
            if self.batch_direct && path.direct {
                path.unanswered = 0;
            }
            return;
        }
        if self.peer_addrs.len() >= PEER_ADDRS_MAX && !self.peer_addrs.contains_key(&id) {
            self.peer_addrs.clear();
        }
        let nonce = self.faults.rng.random();
        self.peer_addrs.insert(
            id,
            PeerPath {
                addr: src,
                direct: false,
                nonce,
                unanswered: 0,
                next_probe: None,
            },
        );
    }

    /// Multicast: peers whose direct path a probe has confirmed.
    #[cfg(test)]
    fn direct_peers(&self) -> usize {
        self.peer_addrs.values().filter(|p| p.direct).count()
    }

    /// A probe or probe answer that arrived: answers a probe (at most [`PROBE_ANSWERS_MAX`] a
    /// second), marks the path of the peer whose nonce an answer carries. Anything else
    /// of the probe's length and prefix is ignored.
    fn on_probe(&mut self, p: &[u8], src: SocketAddr) {
        let Link::Multicast { send, .. } = &self.link else {
            return;
        };
        let nonce = u64::from_be_bytes(p[9..PROBE_LEN].try_into().unwrap_or_default());
        match p[8] {
            PROBE_ASK if self.probe_answers < PROBE_ANSWERS_MAX => {
                self.probe_answers += 1;
                let _ = send.try_send_to(&probe(PROBE_ANSWER, nonce), src);
            }
            PROBE_ANSWER => {
                if let Some(path) = self
                    .peer_addrs
                    .values_mut()
                    .find(|p| p.addr == src && p.nonce == nonce)
                {
                    path.direct = true;
                    path.unanswered = 0;
                }
            }
            _ => {}
        }
    }

    /// Multicast: probes each peer's path every [`PROBE_EVERY`] (every [`PROBE_IDLE`] once
    /// [`PROBES_MAX`] went unanswered), and drops a path back to the group when that many
    /// went unanswered.
    fn send_probes(&mut self, now: Instant) {
        if self
            .probe_second
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.probe_second = Some(now);
            self.probe_answers = 0;
        }
        let Link::Multicast { send, .. } = &self.link else {
            return;
        };
        for path in self.peer_addrs.values_mut() {
            if path.next_probe.is_some_and(|t| now < t) {
                continue;
            }
            if path.unanswered >= PROBES_MAX {
                path.direct = false;
            }
            path.unanswered = path.unanswered.saturating_add(1);
            let every = if path.unanswered > PROBES_MAX {
                PROBE_IDLE
            } else {
                PROBE_EVERY
            };
            path.next_probe = Some(now + every);
            let _ = send.try_send_to(&probe(PROBE_ASK, path.nonce), path.addr);
        }
    }

    /// The unicast settings (`None` for multicast).
    pub(crate) fn unicast_settings(&self) -> Option<&Unicast> {
        match &self.link {
            Link::Unicast(u) => Some(u),
            Link::Multicast { .. } => None,
        }
    }

    /// Datagrams dropped on purpose so far (`monkey_tantrum`).
    pub(crate) fn tantrum_drops(&self) -> u64 {
        self.faults.dropped
    }

    /// Own looped-back multicast datagrams dropped so far (counted as `own_echo`).
    pub(crate) fn own_echoes(&self) -> u64 {
        self.own_echoes
    }

    /// Waits for the next datagram (cancel-safe: the only wait is for readiness). Datagrams
    /// the fault injector drops, and our own looped-back multicast, are skipped.
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            match self.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match &self.link {
                    // Group traffic on one socket, datagrams meant for this node alone on the
                    // send socket they were sent back to.
                    Link::Multicast { recv, send, .. } => {
                        tokio::select! {
                            r = recv.readable() => r?,
                            r = send.readable() => r?,
                        }
                    }
                    Link::Unicast(u) => u.sock.readable().await?,
                },
                got => return got,
            }
        }
    }

    /// The next datagram if one is waiting (`WouldBlock` otherwise). Datagrams are taken from
    /// the socket in `recvmmsg` batches and handed out one by one.
    pub(crate) fn try_recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let Some((len, from)) = self.batch.pop_into(buf) else {
                match &self.link {
                    // Both sockets, the one tried first alternating, so that neither starves
                    // the other under a flood.
                    Link::Multicast { recv, send, .. } => {
                        self.direct_first = !self.direct_first;
                        let (a, b) = if self.direct_first {
                            (send, recv)
                        } else {
                            (recv, send)
                        };
                        match self.batch.fill(a) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.batch.fill(b)?;
                                self.batch_direct = !self.direct_first;
                            }
                            r => {
                                r?;
                                self.batch_direct = self.direct_first;
                            }
                        }
                    }
                    Link::Unicast(u) => {
                        self.batch.fill(&u.sock)?;
                    }
                }
                continue;
            };
            let Some(src) = from else {
                continue; // a datagram socket always names the source; skip if it did not
            };
            if self.own_src == Some(src) {
                self.own_echoes += 1;
            } else if len == PROBE_LEN && buf.starts_with(PROBE_MAGIC) {
                let p: [u8; PROBE_LEN] = buf[..PROBE_LEN].try_into().unwrap_or([0; PROBE_LEN]);
                self.on_probe(&p, src);
            } else if !self.faults.loses_received() {
                return Ok((len, src));
            }
        }
    }

    /// Sends every datagram the core has for now (taking the core's lock only while it writes
    /// them, never across a wait). Unicast: a datagram for one peer goes to that peer's address
    /// in `book` when known, everything else to every target.
    pub(crate) async fn send(
        &mut self,
        express: &Express,
        now: Instant,
        book: Option<&mut AddressBook>,
    ) -> Sent {
        self.send_probes(now);
        let mut sent = Sent::default();
        match &self.link {
            Link::Multicast { send, group, .. } => {
                // Every datagram waiting, sent to the group in `sendmmsg` batches of up to
                // `MULTICAST_BATCH` (so the reused buffers stay few); those meant for one
                // peer whose address is known go to it alone, after the group's.
                let mut done = false;
                while !done {
                    let mut n = 0;
                    self.direct.clear();
                    {
                        let mut core = express.lock();
                        let ep = &mut core.ep;
                        while n < MULTICAST_BATCH {
                            if self.bufs.len() <= n {
                                self.bufs.push(Vec::new());
                            }
                            let Some(t) = ep.poll_transmit(now, &mut self.bufs[n]) else {
                                done = true;
                                break;
                            };
                            if self.faults.loses_sent() {
                                continue;
                            }
                            if let Destination::Node(id) = t.destination
                                && let Some(path) = self.peer_addrs.get(&id)
                                && path.direct
                            {
                                self.direct.push((n, path.addr));
                            }
                            n += 1;
                        }
                    }
                    if n == 0 {
                        continue;
                    }
                    let to = SocketAddr::V4(*group);
                    if self.direct.is_empty() {
                        sent.failed +=
                            send_runs(send, &self.bufs[..n], to, &mut self.gso, &mut self.scratch)
                                .await;
                        continue;
                    }
                    // The group's datagrams first, in order, then the direct ones.
                    let mut group_bufs = std::mem::take(&mut self.scratch_group);
                    group_bufs.clear();
                    let mut d = 0;
                    for (i, b) in self.bufs[..n].iter_mut().enumerate() {
                        if d < self.direct.len() && self.direct[d].0 == i {
                            d += 1;
                        } else {
                            group_bufs.push(std::mem::take(b));
                        }
                    }
                    if !group_bufs.is_empty() {
                        sent.failed +=
                            send_runs(send, &group_bufs, to, &mut self.gso, &mut self.scratch)
                                .await;
                    }
                    let (_, failed) = unicast::fan_out(send, &self.bufs[..n], &self.direct).await;
                    sent.failed += failed;
                    // The group's buffers back in their places, for reuse.
                    let mut g = group_bufs.drain(..);
                    let mut d = 0;
                    for (i, b) in self.bufs[..n].iter_mut().enumerate() {
                        if d < self.direct.len() && self.direct[d].0 == i {
                            d += 1;
                        } else if let Some(back) = g.next() {
                            *b = back;
                        }
                    }
                    drop(g);
                    self.scratch_group = group_bufs;
                }
            }
            Link::Unicast(u) => {
                self.dests.clear();
                let mut n = 0;
                {
                    let mut core = express.lock();
                    let ep = &mut core.ep;
                    loop {
                        if self.bufs.len() <= n {
                            self.bufs.push(Vec::new());
                        }
                        let Some(t) = ep.poll_transmit(now, &mut self.bufs[n]) else {
                            break;
                        };
                        self.dests.push(match t.destination {
                            Destination::Group => None,
                            Destination::Node(id) => Some(id),
                        });
                        n += 1;
                    }
                }
                let Some(book) = book else {
                    return sent;
                };
                if n == 0 {
                    return sent;
                }
                let mut copies = unicast::route(&self.dests, book);
                // Fault injection per copy: each link loses on its own.
                copies.retain(|_| !self.faults.loses_sent());
                let (_, failed) = unicast::fan_out(&u.sock, &self.bufs[..n], &copies).await;
                sent.failed += failed;
            }
        }
        sent
    }
}

/// Sends `bufs` to `to` in order: each run of equal-sized datagrams (the last may be shorter;
/// [`gso_run`]) as one GSO send while `gso` holds, the others by `sendmmsg`. If the kernel
/// refuses a GSO send, that run goes out one by one and `gso` is cleared for good (a debug
/// message says why). Returns the datagrams that failed.
async fn send_runs(
    sock: &DatagramSocket,
    bufs: &[Vec<u8>],
    to: SocketAddr,
    gso: &mut bool,
    scratch: &mut Vec<u8>,
) -> u64 {
    let mut failed = 0;
    let mut singles: Vec<(usize, SocketAddr)> = Vec::new();
    let mut i = 0;
    while i < bufs.len() {
        let run = if *gso { gso_run(bufs, i) } else { 1 };
        if run < 2 {
            singles.push((i, to));
            i += 1;
            continue;
        }
        if !singles.is_empty() {
            failed += unicast::fan_out(sock, bufs, &singles).await.1;
            singles.clear();
        }
        scratch.clear();
        for b in &bufs[i..i + run] {
            scratch.extend_from_slice(b);
        }
        // `gso_run` keeps segments within u16.
        let segment = u16::try_from(bufs[i].len()).unwrap_or(u16::MAX);
        if let Err(e) = super::socket::send_segments(sock, scratch, segment, to).await {
            tracing::debug!(error = %e, "GSO send refused: datagrams go out one by one from now on");
            *gso = false;
            let copies: Vec<(usize, SocketAddr)> = (i..i + run).map(|j| (j, to)).collect();
            failed += unicast::fan_out(sock, bufs, &copies).await.1;
        }
        i += run;
    }
    if !singles.is_empty() {
        failed += unicast::fan_out(sock, bufs, &singles).await.1;
    }
    failed
}

/// How many datagrams from `bufs[i]` on can go out as one GSO send: all the size of the first
/// except the last, which may be shorter; at most [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`].
/// A receiver splits the super-packet at that size (or the kernel does for it), so datagram
/// boundaries are kept exactly.
fn gso_run(bufs: &[Vec<u8>], i: usize) -> usize {
    let segment = bufs[i].len();
    if segment == 0 || segment > usize::from(u16::MAX) {
        return 1;
    }
    let (mut n, mut bytes) = (1, segment);
    while let Some(next) = bufs.get(i + n) {
        let len = next.len();
        if n >= GSO_MAX_SEGMENTS || len == 0 || len > segment || bytes + len > GSO_MAX_BYTES {
            break;
        }
        n += 1;
        bytes += len;
        if len < segment {
            break; // a shorter datagram ends the run
        }
    }
    n
}

/// The fault injector: drops a share of datagrams on purpose, and counts them.
struct Faults {
    tantrum: Tantrum,
    rng: ThreadRng,
    dropped: u64,
}

impl Faults {
    fn loses_received(&mut self) -> bool {
        self.tantrum.recv && self.loses()
    }

    fn loses_sent(&mut self) -> bool {
        self.tantrum.send && self.loses()
    }

    fn loses(&mut self) -> bool {
        let lost =
            self.tantrum.percent > 0.0 && self.rng.random::<f64>() * 100.0 < self.tantrum.percent;
        self.dropped += u64::from(lost);
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(lens: &[usize]) -> Vec<Vec<u8>> {
        lens.iter().map(|&n| vec![0u8; n]).collect()
    }

    #[test]
    fn a_gso_run_is_equal_sizes_ended_by_at_most_one_shorter() {
        let b = sizes(&[100, 100, 100, 60, 100, 100]);
        assert_eq!(gso_run(&b, 0), 4);
        assert_eq!(gso_run(&b, 4), 2);
        assert_eq!(
            gso_run(&sizes(&[100, 120, 100]), 0),
            1,
            "a longer one ends it"
        );
        assert_eq!(
            gso_run(&sizes(&[100, 0, 100]), 0),
            1,
            "an empty one is never a segment"
        );
        assert_eq!(gso_run(&sizes(&[0, 0]), 0), 1);
        assert_eq!(
            gso_run(&sizes(&[70_000, 70_000]), 0),
            1,
            "segments fit a u16"
        );
    }

    /// Two multicast transports on loopback: once one has heard the other, its probe comes
    /// back, and the path is confirmed; a probe with a nonce it did not send confirms nothing.
    #[tokio::test]
    async fn a_peers_direct_path_is_used_once_a_probe_has_come_back() {
        let group = SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, 93, 7), 47_931);
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let open = || {
            let recv = crate::net::socket::recv_socket(group, lo).unwrap();
            let send = crate::net::socket::send_socket(lo, 1).unwrap();
            let none = Tantrum {
                percent: 0.0,
                send: false,
                recv: false,
            };
            Transport::new(recv, send, group, none).unwrap()
        };
        let (mut a, mut b) = (open(), open());
        let b_addr = match &b.link {
            Link::Multicast { send, .. } => send.local_addr().unwrap(),
            Link::Unicast(_) => unreachable!(),
        };
        let mut buf = vec![0u8; 65_536];
        // A forged answer (a nonce `a` never sent) from `b`'s address: nothing changes.
        a.heard(NodeId(2), b_addr);
        let forged = probe(PROBE_ANSWER, a.peer_addrs[&NodeId(2)].nonce ^ 1);
        match &b.link {
            Link::Multicast { send, .. } => {
                let a_addr = match &a.link {
                    Link::Multicast { send, .. } => send.local_addr().unwrap(),
                    Link::Unicast(_) => unreachable!(),
                };
                send.try_send_to(&forged, a_addr).unwrap();
            }
            Link::Unicast(_) => unreachable!(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        while a.try_recv(&mut buf).is_ok() {}
        assert_eq!(a.direct_peers(), 0, "a forged answer confirms nothing");
        let now = Instant::now();
        a.send_probes(now);
        // `b` answers the probe; `a` reads the answer (and the forged one).
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.direct_peers() == 0 {
            assert!(Instant::now() < deadline, "the probe never came back");
            for t in [&mut b, &mut a] {
                while t.try_recv(&mut buf).is_ok() {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(a.peer_addrs[&NodeId(2)].direct);
        assert_eq!(a.peer_addrs[&NodeId(2)].unanswered, 0);
        // Probed every half second at most, confirmed or not.
        a.send_probes(now + Duration::from_millis(250));
        assert_eq!(a.peer_addrs[&NodeId(2)].unanswered, 0);
        // A path that stops answering (here: `b` reads nothing any more) falls back to the
        // group after three probes in a row go unanswered.
        for (s, direct) in [(2, true), (3, true), (4, true), (5, false)] {
            a.send_probes(now + Duration::from_secs(s));
            assert_eq!(a.peer_addrs[&NodeId(2)].direct, direct, "at {s} s");
        }
        // A peer heard from a new address is probed again before it is used.
        a.heard(NodeId(2), SocketAddr::from(([127, 0, 0, 1], 9)));
        assert!(!a.peer_addrs[&NodeId(2)].direct);
    }

    #[test]
    fn a_gso_run_stays_within_the_kernels_bounds() {
        assert_eq!(gso_run(&sizes(&[10; 100]), 0), GSO_MAX_SEGMENTS);
        let n = gso_run(&sizes(&[1400; 100]), 0);
        assert_eq!(n, GSO_MAX_BYTES / 1400);
        assert!(n * 1400 <= GSO_MAX_BYTES);
    }
}
