//! UDP socket setup with socket2. Multicast: one socket joined to the group for receiving, one
//! bound to the interface for sending. Unicast: one socket bound to `interface:bind_port`.
//! Receiving in batches ([`RecvBatch`], one `recvmmsg` call for up to 32 datagrams).

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::{Domain, Protocol, Socket, Type};

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

/// Opens the receiving socket: bound to `group:port` (so only this group's traffic arrives),
/// shared with other local nodes (`SO_REUSEADDR`/`SO_REUSEPORT`), joined on `interface`.
pub fn recv_socket(group: SocketAddrV4, interface: Ipv4Addr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    size_recv_buffer(&s);
    s.bind(&SocketAddr::V4(group).into())?;
    s.join_multicast_v4(group.ip(), &interface)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Opens the sending socket: bound to `interface` (an ephemeral port), multicast leaving through
/// `interface` with TTL `hops`, looped back so other nodes on this host hear it.
pub fn send_socket(interface: Ipv4Addr, hops: u8) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())?;
    if !interface.is_unspecified() {
        s.set_multicast_if_v4(&interface)?;
    }
    s.set_multicast_ttl_v4(u32::from(hops))?;
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Opens the unicast socket: bound to `interface:port`, used both to receive and to send (so
/// peers see the address they can answer to). No `SO_REUSEPORT`: two nodes on one host need
/// two ports, and a port already taken is an error rather than a silent split of the traffic.
/// Its receive buffer is sized for bursts like the multicast one (`size_recv_buffer`): every
/// peer's traffic arrives on this one socket.
pub(crate) fn unicast_socket(interface: Ipv4Addr, port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    size_recv_buffer(&s);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(interface, port)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Datagrams received together by one `recvmmsg` call: up to [`RecvBatch::CAPACITY`], each in
/// its own 64 KiB buffer (the largest UDP payload, so nothing is truncated; pages never
/// written are never resident), handed out one at a time.
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    got: Vec<(usize, Option<SocketAddr>)>,
    next: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// Most datagrams taken by one call.
    pub(crate) const CAPACITY: usize = 32;

    /// Empty buffers.
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..Self::CAPACITY).map(|_| vec![0u8; 65_536]).collect(),
            got: Vec::with_capacity(Self::CAPACITY),
            next: 0,
        }
    }

    /// Takes the datagrams waiting on `sock` (at most [`RecvBatch::CAPACITY`]) in one system
    /// call, replacing any not handed out yet; returns how many. `WouldBlock` when there were
    /// none (tokio then waits for the socket to become readable again).
    pub(crate) fn fill(&mut self, sock: &tokio::net::UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let RecvBatch { bufs, got, next } = self;
        got.clear();
        *next = 0;
        sock.try_io(tokio::io::Interest::READABLE, || {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
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
            got.extend(res.map(|m| (m.bytes, m.address.and_then(socket_addr))));
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
        let (len, from) = *self.got.get(self.next)?;
        let data = &self.bufs[self.next][..len.min(self.bufs[self.next].len())];
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        self.next += 1;
        Some((n, from))
    }
}

fn socket_addr(s: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}
