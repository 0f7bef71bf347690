//! How datagrams travel: to a multicast group, or to each peer by unicast ([`super::unicast`]).
//!
//! The [`Transport`] receives datagrams for the driver and sends what the core's
//! [`Endpoint::poll_transmit`] writes. Fault injection (`monkey_tantrum`) lives here, wrapped
//! around the sockets, so neither the core nor the driver loop knows about it.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::ThreadRng;
use tokio::net::UdpSocket;

use super::unicast::{self, AddressBook};
use crate::proto::endpoint::{Destination, Endpoint};
use crate::proto::version::NodeId;

/// Where the fault injector drops datagrams (`monkey_tantrum`).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Tantrum {
    /// Percent of datagrams dropped (0–100).
    pub percent: f64,
    /// Drop on send.
    pub send: bool,
    /// Drop on receive.
    pub recv: bool,
}

/// Datagrams travel over a [`Link`], through a fault injector.
pub struct Transport {
    link: Link,
    faults: Faults,
    /// Reused datagram buffers: one for multicast, one per datagram of a unicast pass.
    bufs: Vec<Vec<u8>>,
    dests: Vec<Option<NodeId>>,
}

/// The sockets.
enum Link {
    /// To a multicast group: one socket joined to it, one to send from.
    Multicast {
        recv: UdpSocket,
        send: UdpSocket,
        group: SocketAddrV4,
    },
    /// To each peer: one socket bound to `interface:bind_port`.
    Unicast(Unicast),
}

/// The unicast transport's settings.
pub struct Unicast {
    sock: UdpSocket,
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
pub struct Sent {
    /// Datagrams (unicast: copies) the socket refused.
    pub failed: u64,
}

impl Transport {
    /// Wraps multicast sockets opened by [`super::socket`] (must be called inside the runtime).
    pub fn new(
        recv: std::net::UdpSocket,
        send: std::net::UdpSocket,
        group: SocketAddrV4,
        tantrum: Tantrum,
    ) -> io::Result<Transport> {
        let link = Link::Multicast {
            recv: UdpSocket::from_std(recv)?,
            send: UdpSocket::from_std(send)?,
            group,
        };
        Ok(Transport::with(link, tantrum))
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
        tantrum: Tantrum,
    ) -> io::Result<Transport> {
        let link = Link::Unicast(Unicast {
            sock: UdpSocket::from_std(sock)?,
            entries,
            interval,
            expiry,
            announce,
        });
        Ok(Transport::with(link, tantrum))
    }

    fn with(link: Link, tantrum: Tantrum) -> Transport {
        Transport {
            link,
            faults: Faults {
                tantrum,
                rng: rand::rng(),
                dropped: 0,
            },
            bufs: Vec::new(),
            dests: Vec::new(),
        }
    }

    /// The unicast settings (`None` for multicast).
    pub fn unicast_settings(&self) -> Option<&Unicast> {
        match &self.link {
            Link::Unicast(u) => Some(u),
            Link::Multicast { .. } => None,
        }
    }

    /// Datagrams dropped on purpose so far (`monkey_tantrum`).
    pub fn tantrum_drops(&self) -> u64 {
        self.faults.dropped
    }

    /// Waits for the next datagram (cancel-safe). Datagrams the fault injector drops are
    /// skipped.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let got = self.recv_socket().recv_from(buf).await?;
            if !self.faults.loses_received() {
                return Ok(got);
            }
        }
    }

    /// The next datagram if one is waiting (`WouldBlock` otherwise).
    pub fn try_recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let got = self.recv_socket().try_recv_from(buf)?;
            if !self.faults.loses_received() {
                return Ok(got);
            }
        }
    }

    /// Sends every datagram the core has for now. Unicast: a datagram for one peer goes to
    /// that peer's address in `book` when known, everything else to every target.
    pub async fn send(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        book: Option<&mut AddressBook>,
    ) -> Sent {
        let mut sent = Sent::default();
        match &self.link {
            Link::Multicast { send, group, .. } => {
                if self.bufs.is_empty() {
                    self.bufs.push(Vec::new());
                }
                let buf = &mut self.bufs[0];
                while ep.poll_transmit(now, buf).is_some() {
                    if self.faults.loses_sent() {
                        continue;
                    }
                    if let Err(e) = send.send_to(buf, *group).await {
                        tracing::debug!(error = %e, "send failed");
                        sent.failed += 1;
                    }
                }
            }
            Link::Unicast(u) => {
                self.dests.clear();
                let mut n = 0;
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

    fn recv_socket(&self) -> &UdpSocket {
        match &self.link {
            Link::Multicast { recv, .. } => recv,
            Link::Unicast(u) => &u.sock,
        }
    }
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
