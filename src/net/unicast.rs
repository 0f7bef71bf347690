//! The unicast transport: one UDP socket bound to `interface:bind_port`, every datagram sent to
//! each known address (members, seeds not yet members, addresses peers reported), in batches
//! of `sendmmsg` calls.
//!
//! Where nodes are comes from three sources, kept in an [`AddressBook`]:
//! * **seeds**: the `peers` setting, resolved at start and every `discovery_interval`
//!   ([`super::discovery`]);
//! * **heard**: the source address of every *authentic* datagram (one the protocol core opened;
//!   [`crate::proto::endpoint::Endpoint::handle_datagram`] names its sender). Datagrams that do
//!   not open teach nothing, so a forged source cannot redirect a member's traffic in sealed
//!   mode;
//! * **told**: first-hand addresses other members announce (`Msg::Addresses`), so that a node
//!   that reaches one seed learns every member.
//!
//! Addresses found to be this node's own (its own authentic echo came back from them) are
//! never sent to again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

use super::socket::DatagramSocket;
use crate::proto::version::NodeId;

/// Most addresses remembered per source (heard, told): a flood of authentic-looking plaintext
/// datagrams from many ports cannot grow the book without bound.
pub(crate) const MAX_BOOK_ENTRIES: usize = 1024;

/// Most datagrams handed to one `sendmmsg` call.
const BATCH: usize = 256;

/// Where the nodes of the cluster are, as far as this node knows.
#[derive(Debug)]
pub struct AddressBook {
    /// Configured entry (`host:port`) → its addresses at the last successful resolution.
    seeds: BTreeMap<String, Vec<SocketAddr>>,
    /// Node → the address its last authentic datagram came from, and when.
    heard: HashMap<NodeId, (SocketAddr, Instant)>,
    /// Node → the address a member reported for it, and when.
    told: HashMap<NodeId, (SocketAddr, Instant)>,
    /// This node's own addresses (its echo came back from them).
    own: HashSet<SocketAddr>,
    /// Entries not refreshed for this long are forgotten.
    expiry: Duration,
    targets: Vec<SocketAddr>,
    dirty: bool,
}

impl AddressBook {
    /// An empty book; heard and told addresses expire after `expiry` without news.
    pub fn new(expiry: Duration) -> AddressBook {
        AddressBook {
            seeds: BTreeMap::new(),
            heard: HashMap::new(),
            told: HashMap::new(),
            own: HashSet::new(),
            expiry,
            targets: Vec::new(),
            dirty: false,
        }
    }

    /// Records the addresses `entry` resolved to. An empty answer keeps the previous ones: a
    /// DNS hiccup or a rollout's partial answer must not cut a node off its seeds.
    pub fn set_seed(&mut self, entry: &str, mut addrs: Vec<SocketAddr>) {
        if addrs.is_empty() && self.seeds.contains_key(entry) {
            return;
        }
        addrs.sort();
        addrs.dedup();
        if self.seeds.get(entry) != Some(&addrs) {
            self.seeds.insert(entry.to_string(), addrs);
            self.dirty = true;
        }
    }

    /// The seeds and their current addresses.
    #[cfg(any(test, feature = "unstable"))]
    pub fn seeds(&self) -> &BTreeMap<String, Vec<SocketAddr>> {
        &self.seeds
    }

    /// An authentic datagram from `id` arrived from `addr`.
    pub fn heard(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        if self.own.contains(&addr) && self.own.remove(&addr) {
            // Another node answers from an address we thought was ours (a restart reused it).
            self.dirty = true;
        }
        match self.heard.get_mut(&id) {
            Some((a, at)) if *a == addr => *at = now,
            _ => {
                bounded_insert(&mut self.heard, id, (addr, now));
                self.dirty = true;
            }
        }
    }

    /// This node's own authentic datagram came back from `addr`.
    pub fn own(&mut self, addr: SocketAddr) {
        if self.own.len() < 64 && self.own.insert(addr) {
            self.dirty = true;
        }
    }

    /// Member `from` reported these first-hand addresses. `me` is this node (skipped).
    pub fn told(&mut self, me: NodeId, addrs: &[(NodeId, SocketAddr)], now: Instant) {
        for (id, addr) in addrs {
            if *id == me || self.heard.contains_key(id) {
                continue; // what we hear ourselves wins over what we are told
            }
            match self.told.get_mut(id) {
                Some((a, at)) if a == addr => *at = now,
                _ => {
                    bounded_insert(&mut self.told, *id, (*addr, now));
                    self.dirty = true;
                }
            }
        }
    }

    /// A member left or was declared dead: stop sending to it (unless it is a seed).
    pub fn forget(&mut self, id: NodeId) {
        if self.heard.remove(&id).is_some() | self.told.remove(&id).is_some() {
            self.dirty = true;
        }
    }

    /// Drops heard and told entries older than the expiry.
    pub fn expire(&mut self, now: Instant) {
        let expiry = self.expiry;
        let before = self.heard.len() + self.told.len();
        self.heard
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < expiry);
        self.told
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < expiry);
        if self.heard.len() + self.told.len() != before {
            self.dirty = true;
        }
    }

    /// Where each node was heard from (first-hand), for announcements and `Member::addr`.
    pub fn first_hand(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut v: Vec<(NodeId, SocketAddr)> =
            self.heard.iter().map(|(id, (a, _))| (*id, *a)).collect();
        v.sort();
        v
    }

    /// The address of node `id`, heard or told.
    pub fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.heard
            .get(&id)
            .or_else(|| self.told.get(&id))
            .map(|(a, _)| *a)
    }

    /// Every address a datagram goes to: heard, told and seed addresses, each once, never
    /// this node's own.
    pub fn targets(&mut self) -> &[SocketAddr] {
        if self.dirty {
            let mut seen = HashSet::new();
            let heard = self.heard.values().map(|(a, _)| *a);
            let told = self.told.values().map(|(a, _)| *a);
            let seeds = self.seeds.values().flatten().copied();
            self.targets = heard
                .chain(told)
                .chain(seeds)
                .filter(|a| !self.own.contains(a) && seen.insert(*a))
                .collect();
            self.targets.sort();
            self.dirty = false;
        }
        &self.targets
    }

    /// True when the target list changed since the last call to [`AddressBook::targets`].
    #[cfg(any(test, feature = "unstable"))]
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

/// Inserts, evicting the oldest entry when the map is full.
fn bounded_insert(
    map: &mut HashMap<NodeId, (SocketAddr, Instant)>,
    id: NodeId,
    v: (SocketAddr, Instant),
) {
    if map.len() >= MAX_BOOK_ENTRIES && !map.contains_key(&id) {
        if let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
            map.remove(&oldest);
        }
    }
    map.insert(id, v);
}

/// Sends each copy `(datagram index, address)`, `BATCH` copies per `sendmmsg` call, waiting
/// for the socket when its buffer is full. Returns (copies sent, copies that failed); a failed
/// copy (an unreachable address, say) is skipped and the rest still go out.
pub(crate) async fn fan_out(
    sock: &DatagramSocket,
    datagrams: &[Vec<u8>],
    copies: &[(usize, SocketAddr)],
) -> (u64, u64) {
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut next = 0;
    while next < copies.len() {
        let batch = &copies[next..copies.len().min(next + BATCH)];
        let res = send_batch(sock, datagrams, batch);
        match res {
            Ok(n) => {
                sent += n as u64;
                next += n.max(1);
                if n == 0 {
                    failed += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sock.writable().await.is_err() {
                    failed += (copies.len() - next) as u64;
                    break;
                }
            }
            Err(e) => {
                // The first copy of the batch failed (sendmmsg reports errors only for it).
                tracing::debug!(error = %e, to = %batch[0].1, "unicast send failed");
                failed += 1;
                next += 1;
            }
        }
    }
    (sent, failed)
}

/// Where each datagram goes: a datagram for one peer to that peer's address when it is known,
/// everything else to every target.
pub fn route(dests: &[Option<NodeId>], book: &mut AddressBook) -> Vec<(usize, SocketAddr)> {
    let mut copies = Vec::new();
    for (i, to) in dests.iter().enumerate() {
        match to.and_then(|id| book.address_of(id)) {
            Some(addr) => copies.push((i, addr)),
            None => copies.extend(book.targets().iter().map(|a| (i, *a))),
        }
    }
    copies
}

/// One `sendmmsg` call for `batch`.
fn send_batch(
    sock: &DatagramSocket,
    datagrams: &[Vec<u8>],
    batch: &[(usize, SocketAddr)],
) -> io::Result<usize> {
    let slices: Vec<[IoSlice<'_>; 1]> = batch
        .iter()
        .map(|(d, _)| [IoSlice::new(&datagrams[*d])])
        .collect();
    let to: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|(_, a)| Some(SockaddrStorage::from(*a)))
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    let cmsgs: [ControlMessage<'_>; 0] = [];
    let res = sendmmsg(
        sock.as_raw_fd(),
        &mut headers,
        &slices,
        &to,
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(res.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn targets_merge_sources_once_and_skip_own() {
        let now = Instant::now();
        let mut b = AddressBook::new(Duration::from_secs(60));
        b.set_seed("s:1", vec![a("10.0.0.1:1"), a("10.0.0.2:1")]);
        b.heard(NodeId(1), a("10.0.0.1:1"), now);
        b.told(
            NodeId(9),
            &[(NodeId(2), a("10.0.0.3:1")), (NodeId(9), a("10.0.0.9:1"))],
            now,
        );
        b.own(a("10.0.0.2:1"));
        assert_eq!(b.targets(), &[a("10.0.0.1:1"), a("10.0.0.3:1")]);
        // What is heard wins over what is told.
        b.heard(NodeId(2), a("10.0.0.4:1"), now);
        b.forget(NodeId(2));
        b.heard(NodeId(2), a("10.0.0.4:1"), now);
        b.told(NodeId(1), &[(NodeId(2), a("10.0.0.5:1"))], now);
        assert_eq!(b.address_of(NodeId(2)), Some(a("10.0.0.4:1")));
        // An empty resolution keeps the last good one.
        b.set_seed("s:1", Vec::new());
        assert_eq!(b.seeds()["s:1"].len(), 2);
        // Expiry forgets silent nodes, never seeds.
        b.expire(now + Duration::from_secs(61));
        assert_eq!(b.targets(), &[a("10.0.0.1:1")]);
    }

    #[test]
    fn the_book_is_bounded() {
        let now = Instant::now();
        let mut b = AddressBook::new(Duration::from_secs(60));
        for i in 0..(MAX_BOOK_ENTRIES as u64 + 50) {
            b.heard(
                NodeId(i),
                SocketAddr::from(([10, 0, 0, 1], (i % 60000) as u16 + 1)),
                now,
            );
        }
        assert_eq!(b.first_hand().len(), MAX_BOOK_ENTRIES);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fan_out_reaches_every_target_and_skips_failures() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let tx = DatagramSocket::new(tx).unwrap();
        let rx1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let targets = [rx1.local_addr().unwrap(), rx2.local_addr().unwrap()];
        let datagrams: Vec<Vec<u8>> = (0..200u16).map(|i| i.to_be_bytes().to_vec()).collect();
        let copies: Vec<(usize, SocketAddr)> = (0..200)
            .filter(|d| *d != 7)
            .flat_map(|d| targets.iter().map(move |t| (d, *t)))
            .collect();
        let (sent, failed) = fan_out(&tx, &datagrams, &copies).await;
        assert_eq!((sent, failed), (398, 0));
        let mut buf = [0u8; 8];
        for rx in [&rx1, &rx2] {
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            for _ in 0..199 {
                let n = rx.recv(&mut buf).unwrap();
                got.push(u16::from_be_bytes([buf[0], buf[1]]));
                assert_eq!(n, 2);
            }
            assert!(!got.contains(&7));
            assert_eq!(got.len(), 199);
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn targeted_datagrams_go_to_their_peer_alone_when_its_address_is_known() {
        let now = Instant::now();
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let mut b = AddressBook::new(Duration::from_secs(60));
        b.heard(NodeId(1), a("10.0.0.1:1"), now);
        b.heard(NodeId(2), a("10.0.0.2:1"), now);
        let copies = route(&[None, Some(NodeId(2)), Some(NodeId(3))], &mut b);
        assert_eq!(
            copies,
            vec![
                (0, a("10.0.0.1:1")),
                (0, a("10.0.0.2:1")),
                (1, a("10.0.0.2:1")),
                // Unknown address: everyone, as before.
                (2, a("10.0.0.1:1")),
                (2, a("10.0.0.2:1")),
            ]
        );
    }
}
