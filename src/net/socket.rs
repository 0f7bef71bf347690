//! UDP socket setup with socket2. Multicast: one socket joined to the group for receiving, one
//! bound to the interface for sending. Unicast: one socket bound to `interface:bind_port`.
//! Receiving in batches ([`RecvBatch`], one `recvmmsg` call for up to 32 buffers, each holding
//! one datagram or, with `UDP_GRO`, up to 64 of one sender coalesced by the kernel); sending a
//! run of equal-sized datagrams as one `UDP_SEGMENT` (GSO) call ([`send_segments`]).
//!
//! Why GSO/GRO: a datagram costs the kernel far more than its bytes (the sender's system call
//! pays for the delivery to every receiver on the host or bridge). A GSO super-packet crosses
//! veth and bridge whole, multicast included; a receiver with `UDP_GRO` gets it whole, one
//! without gets it split into its datagrams by the kernel. Figures: `docs/BENCHMARKS.md`, "Coherent
//! capacity across processes".

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmsg, setsockopt, sockopt::UdpGroSegment,
};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// Receive and send buffer sizes asked of the kernel (it may grant less: `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 8 << 20;

/// The receive buffer asked for: room for a burst of about 10,000 MTU-sized datagrams, or about
/// 100 ms of a busy node's traffic while its network thread waits for a core.
const RECV_BUFFER: usize = 16 << 20;

/// Sizes the receive buffer for bursts: asks for [`RECV_BUFFER`]; if `net.core.rmem_max` caps
/// it, forces it (`SO_RCVBUFFORCE`, allowed with `CAP_NET_ADMIN`), else warns once with the
/// size granted and the sysctl to raise.
fn size_recv_buffer(s: &Socket) {
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    // Linux reports twice the size asked for (it counts its bookkeeping).
    let granted = s.recv_buffer_size().unwrap_or(0);
    if granted >= RECV_BUFFER || super::sockopt::force_recv_buffer(s, RECV_BUFFER).is_ok() {
        return;
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "mccache: the kernel capped the receive buffer at {} KiB (asked {} KiB): bursts may be dropped and retransmitted; raise it with `sysctl -w net.core.rmem_max={}`",
            granted / 2048,
            RECV_BUFFER / 1024,
            RECV_BUFFER
        );
    });
}

/// Asks the kernel to hand over datagrams that arrive coalesced (a sender's GSO super-packet)
/// as one buffer with their segment size (`UDP_GRO`, Linux 5.0), rather than splitting them
/// first; [`RecvBatch`] splits them. Kernels without it split them themselves: nothing lost.
fn accept_coalesced(s: &Socket) {
    if let Err(e) = setsockopt(s, UdpGroSegment, &true) {
        tracing::debug!(error = %e, "UDP_GRO not available: coalesced datagrams arrive split");
    }
}

/// Opens the receiving socket: bound to `group:port` (so only this group's traffic arrives),
/// shared with other local nodes (`SO_REUSEADDR`/`SO_REUSEPORT`), joined on `interface`.
pub fn recv_socket(group: SocketAddrV4, interface: Ipv4Addr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    size_recv_buffer(&s);
    accept_coalesced(&s);
    s.bind(&SocketAddr::V4(group).into())?;
    s.join_multicast_v4(group.ip(), &interface)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// [`recv_socket`] without `UDP_GRO`: every datagram arrives on its own, as a plain
/// `recv_from` expects (for tools and tests that watch the group's traffic datagram by
/// datagram; nodes use [`recv_socket`] and split coalesced buffers themselves).
#[cfg(feature = "unstable")]
pub fn recv_socket_uncoalesced(
    group: SocketAddrV4,
    interface: Ipv4Addr,
) -> io::Result<std::net::UdpSocket> {
    let s = recv_socket(group, interface)?;
    setsockopt(&s, UdpGroSegment, &false).map_err(io::Error::from)?;
    Ok(s)
}

/// Opens the sending socket: bound to `interface` (an ephemeral port), multicast leaving through
/// `interface` with TTL `hops`, looped back so other nodes on this host hear it. Messages meant
/// for this node alone arrive on it (bucket lists come in bursts), so its receive buffer is
/// sized like the group socket's: with the kernel's default (~208 KiB) an anti-entropy
/// exchange over 100,000 keys lost lists, and the caches agreed a few pulses later.
pub fn send_socket(interface: Ipv4Addr, hops: u8) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    size_recv_buffer(&s);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())?;
    if !interface.is_unspecified() {
        s.set_multicast_if_v4(&interface)?;
    }
    s.set_multicast_ttl_v4(u32::from(hops))?;
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Attaches a classic BPF filter to a multicast receive socket that drops the datagrams sent
/// from `own` (this node's send socket), which multicast loops back to the host: the kernel
/// then neither queues nor copies them, and the network thread is not woken for its own sends.
/// Datagrams of other nodes on this host (other ports) and of other hosts pass.
pub(crate) fn drop_own_echoes(sock: &impl std::os::fd::AsFd, own: SocketAddrV4) -> io::Result<()> {
    use libc::{BPF_ABS, BPF_H, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SKF_NET_OFF};
    let code = |c: u32| c as u16;
    // Offsets from the IPv4 header: source address at 12; our own datagrams carry no IP
    // options, so their UDP source port is at 20.
    let net = |off: i32| (SKF_NET_OFF + off) as u32;
    let prog = [
        SockFilter::new(code(BPF_LD | BPF_W | BPF_ABS), 0, 0, net(12)),
        SockFilter::new(code(BPF_JMP | BPF_JEQ | BPF_K), 0, 3, u32::from(*own.ip())),
        SockFilter::new(code(BPF_LD | BPF_H | BPF_ABS), 0, 0, net(20)),
        SockFilter::new(code(BPF_JMP | BPF_JEQ | BPF_K), 0, 1, u32::from(own.port())),
        SockFilter::new(code(BPF_RET | BPF_K), 0, 0, 0),
        SockFilter::new(code(BPF_RET | BPF_K), 0, 0, u32::MAX),
    ];
    socket2::SockRef::from(sock).attach_filter(&prog)
}

/// Opens the unicast socket: bound to `interface:port`, used both to receive and to send (so
/// peers see the address they can answer to). No `SO_REUSEPORT`: two nodes on one host need
/// two ports, and a port already taken is an error rather than a silent split of the traffic.
/// Its receive buffer is sized for bursts like the multicast one (`size_recv_buffer`): every
/// peer's traffic arrives on this one socket.
pub(crate) fn unicast_socket(interface: Ipv4Addr, port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    size_recv_buffer(&s);
    accept_coalesced(&s);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(interface, port)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A non-blocking UDP socket that the runtime watches for incoming datagrams only.
///
/// tokio's `UdpSocket` asks the kernel for readability and writability for good. A UDP socket
/// turns writable again each time the kernel frees a datagram it sent, and epoll woke the
/// network thread for each such edge: after every datagram the node sent, its writers' express
/// sends included, the thread woke to find nothing to do, and took a core at the moment that
/// datagram's receivers on the same host needed one. This socket asks for writability only
/// while a send waits for buffer space ([`DatagramSocket::writable`]).
pub(crate) struct DatagramSocket {
    io: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
}

impl DatagramSocket {
    /// Registers `sock` (made non-blocking) with the current runtime, for readability.
    pub(crate) fn new(sock: std::net::UdpSocket) -> io::Result<DatagramSocket> {
        sock.set_nonblocking(true)?;
        let io = super::sockopt::watch_socket(sock, tokio::io::Interest::READABLE)?;
        Ok(DatagramSocket { io })
    }

    /// The address the socket is bound to.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Sends one datagram now, or `WouldBlock` if the socket's buffer is full.
    pub(crate) fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.io.get_ref().send_to(buf, to)
    }

    /// Waits until the runtime has seen datagrams arrive since a receive last found none
    /// ([`DatagramSocket::try_recv_with`]).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        let _ready = self.io.readable().await?;
        Ok(())
    }

    /// Runs the receive `f` if the runtime has seen datagrams arrive since it last returned
    /// `WouldBlock` (else returns `WouldBlock` without a system call): the driver tries to
    /// receive after every wake, timers included.
    pub(crate) fn try_recv_with<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.io.try_io(tokio::io::Interest::READABLE, |_| f())
    }

    /// Waits until the socket has buffer space for a send that found none (`WouldBlock`): only
    /// for that long is writability watched, through a registration of a duplicate descriptor.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        let dup = self.io.get_ref().try_clone()?;
        let watch = super::sockopt::watch_socket(dup, tokio::io::Interest::WRITABLE)?;
        let _ready = watch.writable().await?;
        Ok(())
    }
}

impl AsRawFd for DatagramSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

impl std::os::fd::AsFd for DatagramSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

/// Datagrams received together by one `recvmmsg` call: up to [`RecvBatch::CAPACITY`] buffers,
/// each of 64 KiB (the largest UDP payload, so nothing is truncated; pages never written are
/// never resident) holding one datagram or several of one sender coalesced by the kernel
/// (`UDP_GRO`: equal segments, the last may be shorter), handed out one datagram at a time.
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Per buffer filled: bytes, source, and the size of the datagrams in it (its length when
    /// it holds one).
    got: Vec<(usize, Option<SocketAddr>, usize)>,
    next: usize,
    /// Where the next datagram starts in `bufs[next]`.
    offset: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// Most buffers filled by one call.
    pub(crate) const CAPACITY: usize = 32;

    /// Empty buffers.
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..Self::CAPACITY).map(|_| vec![0u8; 65_536]).collect(),
            got: Vec::with_capacity(Self::CAPACITY),
            next: 0,
            offset: 0,
        }
    }

    /// Takes the datagrams waiting on `sock` (at most [`RecvBatch::CAPACITY`] buffers) in one
    /// system call, replacing any not handed out yet; returns how many buffers were filled.
    /// `WouldBlock` when there were none (then wait with [`DatagramSocket::readable`]).
    pub(crate) fn fill(&mut self, sock: &DatagramSocket) -> io::Result<usize> {
        let RecvBatch {
            bufs,
            got,
            next,
            offset,
        } = self;
        got.clear();
        *next = 0;
        *offset = 0;
        sock.try_recv_with(|| {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                bufs.len(),
                Some(nix::cmsg_space!(libc::c_int)),
            );
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let res = recvmmsg(
                sock.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            got.extend(res.map(|m| {
                let segment = (m.cmsgs().ok().into_iter().flatten())
                    .find_map(|c| match c {
                        ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                        _ => None,
                    })
                    .filter(|s| *s > 0)
                    .unwrap_or(m.bytes);
                (m.bytes, m.address.and_then(socket_addr), segment)
            }));
            if got.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        })?;
        Ok(got.len())
    }

    /// The next datagram of the last [`RecvBatch::fill`], copied into `buf` (truncated to its
    /// length), with its length and the address it came from; `None` when all were handed out.
    pub(crate) fn pop_into(&mut self, buf: &mut [u8]) -> Option<(usize, Option<SocketAddr>)> {
        let (len, from, segment) = *self.got.get(self.next)?;
        let data = &self.bufs[self.next][..len.min(self.bufs[self.next].len())];
        let start = self.offset.min(data.len());
        let end = start.saturating_add(segment.max(1)).min(data.len());
        let datagram = &data[start..end];
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        if end >= data.len() {
            self.next += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        Some((n, from))
    }
}

/// Sends `data`, datagrams of `segment` bytes back to back (the last may be shorter), to `to`
/// in one `UDP_SEGMENT` (GSO) call, waiting for the socket when its buffer is full. The kernel
/// refuses (`EIO`, `EINVAL`) when the route's device cannot segment or a segment exceeds the
/// path MTU: the caller then sends them one by one.
pub(crate) async fn send_segments(
    sock: &DatagramSocket,
    data: &[u8],
    segment: u16,
    to: SocketAddr,
) -> io::Result<()> {
    let addr = SockaddrStorage::from(to);
    loop {
        let res = sendmsg(
            sock.as_raw_fd(),
            &[IoSlice::new(data)],
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            Some(&addr),
        )
        .map_err(io::Error::from);
        match res {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

fn socket_addr(s: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A GSO send of equal datagrams and a shorter last one reaches a socket that accepts
    /// coalesced datagrams as exactly those datagrams, in order.
    #[test]
    fn a_gso_send_arrives_as_its_datagrams() {
        runtime().block_on(async {
            let rx = unicast_socket(Ipv4Addr::LOCALHOST, 0).unwrap();
            let to = rx.local_addr().unwrap();
            let rx = DatagramSocket::new(rx).unwrap();
            let tx =
                DatagramSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
            let datagrams: Vec<Vec<u8>> = (0..5u8)
                .map(|i| vec![i; if i == 4 { 300 } else { 1100 }])
                .collect();
            let all: Vec<u8> = datagrams.concat();
            send_segments(&tx, &all, 1100, to).await.unwrap();
            let mut batch = RecvBatch::new();
            let mut buf = vec![0u8; 65_536];
            let (mut got, mut filled) = (Vec::new(), 0);
            while got.len() < datagrams.len() {
                match batch.pop_into(&mut buf) {
                    Some((n, from)) => {
                        assert_eq!(from, tx.local_addr().ok());
                        got.push(buf[..n].to_vec());
                    }
                    None => {
                        rx.readable().await.unwrap();
                        filled += batch.fill(&rx).unwrap_or(0);
                    }
                }
            }
            assert_eq!(got, datagrams);
            // Coalesced (UDP_GRO, Linux ≥ 5.0): one buffer held all five, split here.
            assert_eq!(filled, 1);
            assert!(batch.pop_into(&mut buf).is_none());
        });
    }

    /// The socket watches writability only while asked: a wait on a socket with room returns
    /// at once (through its own registration), and receiving still works afterwards.
    #[test]
    fn a_wait_for_room_returns_when_there_is_room() {
        runtime().block_on(async {
            let sock =
                DatagramSocket::new(unicast_socket(Ipv4Addr::LOCALHOST, 0).unwrap()).unwrap();
            let wait = tokio::time::timeout(std::time::Duration::from_secs(10), sock.writable());
            wait.await.expect("an empty send buffer has room").unwrap();
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(b"x", sock.local_addr().unwrap()).unwrap();
            let mut batch = RecvBatch::new();
            let mut buf = [0u8; 4];
            loop {
                if let Some((n, _)) = batch.pop_into(&mut buf) {
                    assert_eq!(&buf[..n], b"x");
                    break;
                }
                if let Err(e) = batch.fill(&sock) {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    sock.readable().await.unwrap();
                }
            }
        });
    }

    /// Runs a command line (words split at spaces); whether it succeeded.
    fn run(line: &str) -> bool {
        let mut words = line.split_whitespace();
        let cmd = words.next().expect("a command");
        std::process::Command::new(cmd)
            .args(words)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A namespace deleted on drop.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            run(&format!("ip netns del {}", self.0));
        }
    }

    /// A send that finds the send buffer full waits for room (the one time the socket's
    /// writability is watched) and then goes out. The buffer fills behind a qdisc that holds
    /// datagrams (`tbf` at 8 kbit/s on a veth in a namespace of its own; the peer's address is
    /// a static neighbour, so nothing waits for ARP); without root, `ip` or `tc` the test says
    /// so and passes.
    #[test]
    fn a_send_that_finds_the_buffer_full_waits_for_room() {
        let name = format!("mcd-sock-{}", std::process::id());
        let ns = Netns(name.clone());
        let made = run(&format!("ip netns add {name}"))
            && [
                "link add qa type veth peer name qb",
                "link set qa up",
                "link set qb up",
                "addr add 10.250.0.1/24 dev qa",
                "neigh add 10.250.0.2 lladdr 02:00:00:00:00:02 dev qa",
            ]
            .iter()
            .all(|args| run(&format!("ip -n {name} {args}")))
            && run(&format!(
                "tc -n {name} qdisc add dev qa root tbf rate 8kbit burst 1600 latency 30s"
            ));
        if !made {
            eprintln!("skipped: needs root, iproute2 and tc");
            return;
        }
        let path = format!("/var/run/netns/{name}");
        let outcome = std::thread::spawn(move || {
            let handle = std::fs::File::open(&path).expect("the namespace");
            crate::net::sockopt::enter_netns(&handle).expect("setns");
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_send_buffer_size(1).unwrap(); // the kernel's minimum
            s.bind(&SocketAddr::from(([10, 250, 0, 1], 0)).into())
                .unwrap();
            let sock = std::net::UdpSocket::from(s);
            let to = SocketAddr::from(([10, 250, 0, 2], 9));
            runtime().block_on(async move {
                let sock = DatagramSocket::new(sock).unwrap();
                let send = || sock.io.get_ref().send_to(&[7u8; 100], to);
                let mut sent = 0;
                let full = loop {
                    match send() {
                        Ok(_) => sent += 1,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                        Err(e) => panic!("send: {e}"),
                    }
                    if sent > 10_000 {
                        break false;
                    }
                };
                assert!(full, "the buffer never filled ({sent} datagrams went out)");
                let wait = std::time::Duration::from_secs(60);
                tokio::time::timeout(wait, sock.writable())
                    .await
                    .expect("room within a minute at 8 kbit/s")
                    .unwrap();
                send().expect("a send after the wait goes out");
                sent
            })
        })
        .join();
        drop(ns);
        let sent = outcome.expect("the namespace thread");
        eprintln!("the buffer was full after {sent} datagrams");
    }

    /// A zero-length datagram is handed out once, as zero bytes, and the next one follows.
    #[test]
    fn an_empty_datagram_is_handed_out_once() {
        runtime().block_on(async {
            let rx = unicast_socket(Ipv4Addr::LOCALHOST, 0).unwrap();
            let to = rx.local_addr().unwrap();
            let rx = DatagramSocket::new(rx).unwrap();
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(&[], to).unwrap();
            tx.send_to(b"abc", to).unwrap();
            let mut batch = RecvBatch::new();
            let mut buf = [0u8; 16];
            let mut lens = Vec::new();
            while lens.len() < 2 {
                match batch.pop_into(&mut buf) {
                    Some((n, _)) => lens.push(n),
                    None => {
                        rx.readable().await.unwrap();
                        let _ = batch.fill(&rx);
                    }
                }
            }
            assert_eq!(lens, [0, 3]);
            assert_eq!(&buf[..3], b"abc");
        });
    }
}
