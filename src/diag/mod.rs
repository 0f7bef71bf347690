//! Network diagnostics: path MTU and hop count, without raw sockets or external commands.
//!
//! * [`get_mtu`] finds the path MTU to a unicast IPv4 address with DF-flagged UDP probes and the
//!   ICMP "fragmentation needed" errors the socket's error queue collects (`IP_RECVERR`).
//! * [`get_hops`] counts IP hops with TTL-limited UDP probes, traceroute style.
//! * [`check_multicast`] checks that a multicast group can be joined and reached on an
//!   interface.
//! * [`check_peers`] resolves the unicast `peers` and probes each address with a sealed
//!   cluster query: which answer, and the round-trip time.
//!
//! None of them needs root. ICMP is never sent for multicast datagrams (RFC 1122 §3.2.2), so MTU
//! and hops are measured towards the unicast address of a peer.
//!
//! The error-queue decoder, [`parse_recverr`], is a pure function over control-message bytes
//! and is unit-tested without a network.

mod hops;
mod mtu;
mod multicast;
mod peers;

pub use hops::get_hops;
pub use mtu::get_mtu;
pub use multicast::{MulticastCheck, check_multicast};
pub use peers::{AddressCheck, PeerCheck, check_peers};

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use crate::net::sockopt;

/// The UDP port probes are sent to: the first traceroute port, which nothing listens on, so the
/// destination answers with ICMP port-unreachable.
pub(crate) const PROBE_PORT: u16 = 33434;

/// One entry of a socket's error queue (an ICMP error, or a local error), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrQueueEvent {
    /// The datagram was too big for a link: ICMPv4 type 3 code 4 ("fragmentation needed"),
    /// ICMPv6 "packet too big", or a local `EMSGSIZE` (then `from` is `None` and `mtu` is the
    /// outgoing interface's MTU).
    FragNeeded {
        /// The next-hop MTU the error reports (IP-level bytes).
        mtu: u32,
        /// The router that reported it.
        from: Option<IpAddr>,
    },
    /// The TTL ran out on the way: ICMPv4 type 11 / ICMPv6 type 3. `from` is the router.
    TimeExceeded {
        /// The router where the TTL reached zero.
        from: Option<IpAddr>,
    },
    /// The destination host received the datagram and has no socket on the port:
    /// ICMPv4 type 3 code 3 / ICMPv6 type 1 code 4.
    PortUnreachable {
        /// The host that answered (the destination).
        from: Option<IpAddr>,
    },
    /// Anything else (host or network unreachable, administratively prohibited, ...).
    Other {
        /// `ee_origin`: 1 local, 2 ICMP, 3 ICMPv6.
        origin: u8,
        /// ICMP type.
        kind: u8,
        /// ICMP code.
        code: u8,
        /// The errno the kernel attached (e.g. `EHOSTUNREACH`).
        errno: u32,
        /// Who sent it, if known.
        from: Option<IpAddr>,
    },
}

const SO_EE_ORIGIN_LOCAL: u8 = 1;
const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;
/// `sizeof(struct sock_extended_err)`.
const EE_LEN: usize = 16;

/// Decodes the control-message bytes of one `recvmsg(MSG_ERRQUEUE)` call: finds the
/// `IP_RECVERR` / `IPV6_RECVERR` message, its `sock_extended_err` and the offender address
/// (`SO_EE_OFFENDER`) that follows it. Returns `None` if there is no such message or it is
/// malformed. Never panics, whatever the bytes.
///
/// The layout is Linux's: `cmsghdr { size_t len; int level; int type; }`, data aligned to
/// `size_t`.
pub(crate) fn parse_recverr(control: &[u8]) -> Option<ErrQueueEvent> {
    const W: usize = size_of::<usize>();
    let align = |n: usize| n.checked_add(W - 1).map(|n| n & !(W - 1));
    let hdr = align(W + 8)?;
    let mut at = 0usize;
    while at.checked_add(hdr)? <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + W].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + W..at + W + 4].try_into().ok()?);
        let ty = i32::from_ne_bytes(control[at + W + 4..at + W + 8].try_into().ok()?);
        if len < hdr || at.checked_add(len)? > control.len() {
            return None;
        }
        let data = &control[at + hdr..at + len];
        let is_v4 = level == libc::SOL_IP && ty == libc::IP_RECVERR;
        let is_v6 = level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR;
        if is_v4 || is_v6 {
            return decode_extended_err(data);
        }
        at = at.checked_add(align(len)?)?;
    }
    None
}

fn decode_extended_err(data: &[u8]) -> Option<ErrQueueEvent> {
    let ee = data.get(..EE_LEN)?;
    let errno = u32::from_ne_bytes(ee[0..4].try_into().ok()?);
    let (origin, kind, code) = (ee[4], ee[5], ee[6]);
    let info = u32::from_ne_bytes(ee[8..12].try_into().ok()?);
    let from = decode_offender(&data[EE_LEN..]);
    let event = match (origin, kind, code) {
        (SO_EE_ORIGIN_ICMP, 3, 4) | (SO_EE_ORIGIN_ICMP6, 2, _) => {
            ErrQueueEvent::FragNeeded { mtu: info, from }
        }
        (SO_EE_ORIGIN_LOCAL, _, _) if errno == libc::EMSGSIZE as u32 => ErrQueueEvent::FragNeeded {
            mtu: info,
            from: None,
        },
        (SO_EE_ORIGIN_ICMP, 11, _) | (SO_EE_ORIGIN_ICMP6, 3, _) => {
            ErrQueueEvent::TimeExceeded { from }
        }
        (SO_EE_ORIGIN_ICMP, 3, 3) | (SO_EE_ORIGIN_ICMP6, 1, 4) => {
            ErrQueueEvent::PortUnreachable { from }
        }
        _ => ErrQueueEvent::Other {
            origin,
            kind,
            code,
            errno,
            from,
        },
    };
    Some(event)
}

/// Decodes a `sockaddr_in` / `sockaddr_in6` (the offender); `AF_UNSPEC` or short input: `None`.
fn decode_offender(b: &[u8]) -> Option<IpAddr> {
    let family = i32::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
    if family == libc::AF_INET {
        let o: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(o)))
    } else if family == libc::AF_INET6 {
        let o: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        None
    }
}

/// Reads one entry from the socket's error queue without blocking
/// (`recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT)`). `Ok(None)`: the queue is empty. Entries that do
/// not decode are skipped (and traced). Reading an entry also clears the socket's pending
/// error, so the next `send` does not fail with a stale one.
pub(crate) fn read_error_queue(sock: &impl AsFd) -> io::Result<Option<ErrQueueEvent>> {
    // Bounded: a queue holds few entries; the cap keeps a flood from spinning us forever.
    for _ in 0..64 {
        let mut control = [0u8; 512];
        let Some(len) = sockopt::recv_errqueue(sock, &mut control)? else {
            return Ok(None);
        };
        match parse_recverr(&control[..len]) {
            Some(ev) => return Ok(Some(ev)),
            None => tracing::debug!(len, "error queue entry without a decodable IP_RECVERR"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::sockopt::fake_recverr_cmsg;
    use std::net::{SocketAddr, UdpSocket};

    fn ee(origin: u8, kind: u8, code: u8, errno: i32, info: u32) -> libc::sock_extended_err {
        libc::sock_extended_err {
            ee_errno: errno as u32,
            ee_origin: origin,
            ee_type: kind,
            ee_code: code,
            ee_pad: 0,
            ee_info: info,
            ee_data: 0,
        }
    }

    fn router() -> SocketAddr {
        "10.9.0.1:0".parse().unwrap()
    }

    #[test]
    fn frag_needed_carries_the_next_hop_mtu() {
        let c = fake_recverr_cmsg(ee(2, 3, 4, libc::EMSGSIZE, 1280), Some(router()));
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::FragNeeded {
                mtu: 1280,
                from: Some(router().ip())
            })
        );
    }

    #[test]
    fn local_emsgsize_is_frag_needed_without_sender() {
        let c = fake_recverr_cmsg(ee(1, 0, 0, libc::EMSGSIZE, 1500), None);
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::FragNeeded {
                mtu: 1500,
                from: None
            })
        );
    }

    #[test]
    fn time_exceeded_and_port_unreachable_name_the_sender() {
        let c = fake_recverr_cmsg(ee(2, 11, 0, libc::EHOSTUNREACH, 0), Some(router()));
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::TimeExceeded {
                from: Some(router().ip())
            })
        );
        let dest: SocketAddr = "10.9.1.2:0".parse().unwrap();
        let c = fake_recverr_cmsg(ee(2, 3, 3, libc::ECONNREFUSED, 0), Some(dest));
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::PortUnreachable {
                from: Some(dest.ip())
            })
        );
    }

    #[test]
    fn icmpv6_errors_decode_too() {
        let r6: SocketAddr = "[fd00::1]:0".parse().unwrap();
        let c = fake_recverr_cmsg(ee(3, 2, 0, libc::EMSGSIZE, 1280), Some(r6));
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::FragNeeded {
                mtu: 1280,
                from: Some(r6.ip())
            })
        );
        let c = fake_recverr_cmsg(ee(3, 3, 0, libc::EHOSTUNREACH, 0), Some(r6));
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::TimeExceeded {
                from: Some(r6.ip())
            })
        );
    }

    #[test]
    fn host_unreachable_is_other() {
        let c = fake_recverr_cmsg(ee(2, 3, 1, libc::EHOSTUNREACH, 0), Some(router()));
        assert_eq!(
            parse_recverr(&c),
            Some(ErrQueueEvent::Other {
                origin: 2,
                kind: 3,
                code: 1,
                errno: libc::EHOSTUNREACH as u32,
                from: Some(router().ip())
            })
        );
    }

    #[test]
    fn garbage_never_panics_and_truncation_is_refused() {
        let c = fake_recverr_cmsg(ee(2, 3, 4, libc::EMSGSIZE, 1280), Some(router()));
        for n in 0..c.len() {
            // Any prefix shorter than the declared cmsg_len is malformed.
            let _ = parse_recverr(&c[..n]);
        }
        assert_eq!(parse_recverr(&c[..20]), None);
        assert_eq!(parse_recverr(&[]), None);
        assert_eq!(parse_recverr(&[0xff; 64]), None);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut buf = c.clone();
            for b in buf.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng % 5 == 0 {
                    *b = rng as u8;
                }
            }
            let _ = parse_recverr(&buf);
        }
    }

    #[test]
    fn other_control_messages_are_skipped() {
        // An IP_TTL message first, then the error.
        let err = fake_recverr_cmsg(ee(2, 11, 0, libc::EHOSTUNREACH, 0), Some(router()));
        let w = size_of::<usize>();
        let hdr = (w + 8).next_multiple_of(w);
        let mut ttl = vec![0u8; (hdr + 4).next_multiple_of(w)];
        ttl[..w].copy_from_slice(&(hdr + 4).to_ne_bytes());
        ttl[w..w + 4].copy_from_slice(&libc::SOL_IP.to_ne_bytes());
        ttl[w + 4..w + 8].copy_from_slice(&libc::IP_TTL.to_ne_bytes());
        ttl.extend_from_slice(&err);
        assert!(matches!(
            parse_recverr(&ttl),
            Some(ErrQueueEvent::TimeExceeded { .. })
        ));
    }

    #[test]
    fn a_closed_loopback_port_queues_port_unreachable() {
        // The quinn-udp trick: no network needed beyond loopback.
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        sockopt::set_recverr_v4(&sock, true).unwrap();
        sock.connect(&addr.into()).unwrap();
        sock.send(b"hello").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let ev = loop {
            if let Some(ev) = read_error_queue(&sock).unwrap() {
                break ev;
            }
            assert!(std::time::Instant::now() < deadline, "no ICMP came back");
            sockopt::wait_events(&[sock.as_fd()], std::time::Duration::from_millis(50)).unwrap();
        };
        assert_eq!(
            ev,
            ErrQueueEvent::PortUnreachable {
                from: Some(addr.ip())
            }
        );
        assert_eq!(read_error_queue(&sock).unwrap(), None);
    }
}
