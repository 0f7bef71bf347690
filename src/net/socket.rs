//! UDP socket setup with socket2. Multicast: one socket joined to the group for receiving, one
//! bound to the interface for sending. Unicast: one socket bound to `interface:bind_port`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer sizes asked of the kernel (it may grant less: `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 8 << 20;

/// Opens the receiving socket: bound to `group:port` (so only this group's traffic arrives),
/// shared with other local nodes (`SO_REUSEADDR`/`SO_REUSEPORT`), joined on `interface`.
pub fn recv_socket(group: SocketAddrV4, interface: Ipv4Addr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
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
pub fn unicast_socket(interface: Ipv4Addr, port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(interface, port)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}
