//! Socket options that socket2 does not expose, and the other thin libc calls the crate needs.
//!
//! This is the only module of the crate allowed to use `unsafe`. Every function here is a
//! small, safe wrapper around one libc call on a file descriptor the caller borrows; each
//! `unsafe` block states why the call is sound.
//!
//! Linux only (the options are Linux socket options).
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

/// Sets `IP_MTU_DISCOVER = IP_PMTUDISC_PROBE` on an IPv4 socket: datagrams carry the DF bit
/// and may be larger than the kernel's cached path MTU, which is what a path-MTU probe needs.
pub(crate) fn set_pmtudisc_probe_v4(sock: &impl AsFd) -> io::Result<()> {
    set_int(
        sock.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
}

/// Sets `SO_RCVBUFFORCE`: a receive buffer of `bytes` past `net.core.rmem_max`. Needs
/// `CAP_NET_ADMIN`; fails with `EPERM` otherwise.
pub(crate) fn force_recv_buffer(sock: &impl AsFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
}

/// Turns `IP_RECVERR` on or off on an IPv4 socket. When on, ICMP errors caused by the socket's
/// datagrams are queued on the socket's error queue, to be read with
/// `recvmsg(MSG_ERRQUEUE)` (see [`crate::diag::read_error_queue`]).
pub(crate) fn set_recverr_v4(sock: &impl AsFd, on: bool) -> io::Result<()> {
    set_int(
        sock.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_RECVERR,
        libc::c_int::from(on),
    )
}

/// Reads `IP_MTU`: the kernel's current path-MTU estimate (IP-level bytes) for the peer of a
/// *connected* IPv4 socket. Fails with `ENOTCONN` on an unconnected socket.
pub(crate) fn ip_mtu_v4(sock: &impl AsFd) -> io::Result<u32> {
    let v = get_int(sock.as_fd(), libc::IPPROTO_IP, libc::IP_MTU)?;
    u32::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative IP_MTU"))
}

/// What [`wait_events`] saw on one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// Data can be read.
    pub readable: bool,
    /// The error queue (or the pending socket error) is not empty.
    pub error: bool,
}

/// Waits up to `timeout` until at least one of `socks` is readable or has a pending error
/// (`poll(2)` with `POLLIN`; `POLLERR` is always reported). Returns one [`Readiness`] per
/// socket, all default when the time ran out. `EINTR` counts as "nothing yet".
pub(crate) fn wait_events(
    socks: &[BorrowedFd<'_>],
    timeout: Duration,
) -> io::Result<Vec<Readiness>> {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    let nfds = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many sockets"))?;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `nfds` pollfd structs that lives
    // across the call; the descriptors are borrowed from live sockets.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![Readiness::default(); socks.len()]);
        }
        return Err(err);
    }
    Ok(fds
        .iter()
        .map(|p| Readiness {
            readable: p.revents & libc::POLLIN != 0,
            error: p.revents & libc::POLLERR != 0,
        })
        .collect())
}

/// Reads one entry of the socket's error queue without blocking
/// (`recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT)`, with a 1-byte data buffer as Linux requires) and
/// copies its control messages into `control`. Returns the number of control bytes, or
/// `Ok(None)` when the queue is empty. The decoder is [`crate::diag::parse_recverr`].
pub(crate) fn recv_errqueue(sock: &impl AsFd, control: &mut [u8]) -> io::Result<Option<usize>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: a zeroed msghdr is a valid "no name, no buffers" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: every pointer in `msg` refers to live, writable buffers (`byte`, `control`) of
    // the stated lengths, which outlive the call; the kernel writes within those lengths.
    let rc = unsafe {
        libc::recvmsg(
            sock.as_fd().as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(err),
        };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        tracing::debug!("error-queue control message truncated");
    }
    Ok(Some((msg.msg_controllen as usize).min(control.len())))
}

/// Moves the *calling thread* into the network namespace opened as `ns` (for example
/// `/var/run/netns/NAME`, as created by `ip netns add NAME`). Sockets the thread creates
/// afterwards live in that namespace. Needs `CAP_SYS_ADMIN`. Use a dedicated thread: there
/// is no way back except another call with a handle to the original namespace
/// (`/proc/self/ns/net` opened beforehand).
#[cfg(any(test, feature = "unstable"))]
pub fn enter_netns(ns: &std::fs::File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open across the call; it
    // changes the namespace of this thread only and touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live c_int and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live, writable and `len` holds the size of `v`; the kernel
    // writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Builds a control-message buffer holding one `IP_RECVERR` (or `IPV6_RECVERR`) message the way
/// the kernel lays it out, using libc's `CMSG_*` macros, so the pure decoder in
/// [`crate::diag`] can be tested against libc's definitions rather than our own.
/// Registers `hook` to run when the process exits normally (return from `main` or
/// `std::process::exit`), as C's `atexit` does. Rust runs no destructors for statics, so this is
/// how the process-wide default node announces its leave at exit.
///
/// `hook` must not unwind: wrap its body in `std::panic::catch_unwind`.
pub(crate) fn at_exit(hook: extern "C" fn()) -> io::Result<()> {
    // SAFETY: atexit only stores the function pointer; `hook` is a plain `extern "C" fn()`
    // taking no arguments, which is the signature atexit requires, and it lives for the whole
    // program (function pointers are 'static).
    let rc = unsafe { libc::atexit(hook) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit refused the exit hook"))
    }
}

#[cfg(test)]
pub(crate) fn fake_recverr_cmsg(
    ee: libc::sock_extended_err,
    offender: Option<std::net::SocketAddr>,
) -> Vec<u8> {
    use std::net::SocketAddr;
    let off_len = match offender {
        Some(SocketAddr::V4(_)) | None => size_of::<libc::sockaddr_in>(),
        Some(SocketAddr::V6(_)) => size_of::<libc::sockaddr_in6>(),
    };
    let (level, ty) = match offender {
        Some(SocketAddr::V6(_)) => (libc::SOL_IPV6, libc::IPV6_RECVERR),
        _ => (libc::SOL_IP, libc::IP_RECVERR),
    };
    let data_len = (size_of::<libc::sock_extended_err>() + off_len) as u32;
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    // u64 storage keeps the buffer aligned for cmsghdr.
    let mut storage = vec![0u64; space.div_ceil(8)];
    let buf = storage.as_mut_ptr().cast::<u8>();
    // SAFETY: a zeroed msghdr is valid; control points at our aligned buffer of `space`
    // bytes, so CMSG_FIRSTHDR returns a pointer inside it with room for one header and
    // `data_len` bytes of data; all writes below stay inside that space.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_control = buf.cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = ty;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        let data = libc::CMSG_DATA(cmsg);
        std::ptr::write_unaligned(data.cast::<libc::sock_extended_err>(), ee);
        let off = data.add(size_of::<libc::sock_extended_err>());
        match offender {
            Some(SocketAddr::V4(a)) => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                std::ptr::write_unaligned(off.cast::<libc::sockaddr_in>(), sin);
            }
            Some(SocketAddr::V6(a)) => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                std::ptr::write_unaligned(off.cast::<libc::sockaddr_in6>(), sin6);
            }
            None => {} // AF_UNSPEC (zeroed): no offender
        }
        std::slice::from_raw_parts(buf, space).to_vec()
    }
}

/// Registers a descriptor the caller borrows (the network timer, which writers on other
/// threads move) with the current tokio runtime, for readiness: tokio 1.54 made the
/// registration `unsafe` because an owned `T` could close its descriptor while registered.
pub(crate) fn watch(fd: BorrowedFd<'_>) -> io::Result<tokio::io::unix::AsyncFd<BorrowedFd<'_>>> {
    // SAFETY: the registration holds the `BorrowedFd`, whose lifetime keeps the descriptor
    // open for as long as the registration lives, and a `BorrowedFd` never closes it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Registers a UDP socket with the current tokio runtime for the readiness in `interest` only
/// (tokio's own `UdpSocket` always asks for both readability and writability).
pub(crate) fn watch_socket(
    sock: std::net::UdpSocket,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the registration owns the socket, which closes its descriptor only when dropped,
    // after the registration has been removed, and always reports that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(sock, interest) }
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn options_round_trip_on_a_connected_socket() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect("127.0.0.1:9").unwrap();
        set_pmtudisc_probe_v4(&sock).unwrap();
        set_recverr_v4(&sock, true).unwrap();
        assert_eq!(
            get_int(sock.as_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap(),
            libc::IP_PMTUDISC_PROBE
        );
        assert_eq!(
            get_int(sock.as_fd(), libc::IPPROTO_IP, libc::IP_RECVERR).unwrap(),
            1
        );
        // Loopback's MTU is 65536 on Linux.
        assert!(ip_mtu_v4(&sock).unwrap() >= 1500);
    }

    #[test]
    fn ip_mtu_needs_a_connected_socket() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(ip_mtu_v4(&sock).is_err());
    }

    #[test]
    fn wait_events_times_out_then_sees_data() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = wait_events(&[a.as_fd()], Duration::from_millis(10)).unwrap();
        assert_eq!(r, vec![Readiness::default()]);
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        let r = wait_events(&[a.as_fd()], Duration::from_secs(5)).unwrap();
        assert!(r[0].readable);
    }
}
