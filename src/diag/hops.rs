//! Hop counting towards one unicast address with TTL-limited UDP probes (traceroute style).

use std::net::{IpAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::{ErrQueueEvent, PROBE_PORT, read_error_queue};
use crate::net::sockopt;
use crate::{Error, Result};

/// The largest TTL tried.
pub const MAX_HOPS: u8 = 30;
/// Probes in flight at once (one socket each), like traceroute's simultaneous queries but
/// fewer, so the destination's ICMP rate limit is not spent on TTLs beyond it.
const WINDOW: u8 = 5;
/// How long a window of probes waits for answers.
const WINDOW_WAIT: Duration = Duration::from_millis(500);

/// Counts the IP hops to the unicast IPv4 address `ip`: the smallest TTL that reaches it.
/// A directly connected host (or this host) is 1 hop, a host behind one router is 2.
///
/// How: UDP datagrams to `ip`, port 33434, with `IP_TTL` = 1, 2, … up to 30 and
/// `IP_RECVERR`, five TTLs in flight at a time, one socket per TTL. An ICMP time-exceeded on a
/// socket's error queue means "not there yet"; a port-unreachable from `ip` (or any reply)
/// means that TTL reached it. No root, no raw sockets, no external commands; at most about
/// three seconds (six windows of 500 ms), much less when every hop answers.
///
/// # Errors
/// [`Error::Diagnostic`] for an IPv6, multicast or unspecified address, when a router reports
/// `ip` unreachable, or when nothing reaches `ip` within 30 hops (for example a firewall that
/// drops UDP silently); [`Error::Network`] when the sockets cannot be set up.
///
/// # Example
/// ```no_run
/// let hops = mccache::get_hops("10.0.0.7".parse().unwrap())?;
/// // The `multicast_hops` configuration key must be at least this for `10.0.0.7` to hear us.
/// assert!(hops >= 1);
/// # Ok::<(), mccache::Error>(())
/// ```
pub fn get_hops(ip: IpAddr) -> Result<u8> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => {
            return Err(Error::Diagnostic(format!(
                "get_hops({ip}): IPv6 is not supported; give the peer's IPv4 address"
            )));
        }
    };
    if v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified() {
        return Err(Error::Diagnostic(format!(
            "get_hops({ip}): needs a unicast address (routers send no ICMP errors for multicast)"
        )));
    }
    let dest = SocketAddrV4::new(v4, PROBE_PORT);
    let mut first = 1u8;
    while first <= MAX_HOPS {
        let last = first.saturating_add(WINDOW - 1).min(MAX_HOPS);
        let mut probes = Vec::with_capacity(usize::from(WINDOW));
        for ttl in first..=last {
            let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            sockopt::set_recverr_v4(&sock, true)?;
            sock.set_ttl_v4(u32::from(ttl))?;
            sock.connect(&dest.into())?;
            sock.send(b"mccache hop probe")?;
            probes.push((ttl, sock, None::<Answer>));
        }
        let until = Instant::now() + WINDOW_WAIT;
        loop {
            if let Some(hops) = decided(&probes, false) {
                return Ok(hops);
            }
            if probes.iter().all(|p| p.2.is_some()) {
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let fds: Vec<_> = probes.iter().map(|p| p.1.as_fd()).collect();
            let ready = sockopt::wait_events(&fds, left)?;
            drop(fds);
            for ((ttl, sock, answer), r) in probes.iter_mut().zip(ready) {
                if answer.is_some() {
                    continue;
                }
                if r.readable {
                    *answer = Some(Answer::Reached);
                    continue;
                }
                if r.error {
                    while let Some(ev) = read_error_queue(sock)? {
                        *answer = classify(ip, ev).or(*answer);
                    }
                    if let Some(Answer::Unreachable(why)) = answer {
                        return Err(Error::Diagnostic(format!(
                            "get_hops({ip}): unreachable at TTL {ttl}: {why}"
                        )));
                    }
                }
            }
        }
        if let Some(hops) = decided(&probes, true) {
            return Ok(hops);
        }
        first = last.saturating_add(1);
        if last == MAX_HOPS {
            break;
        }
    }
    Err(Error::Diagnostic(format!(
        "get_hops({ip}): not reached within {MAX_HOPS} hops (no port-unreachable or reply came back)"
    )))
}

/// What came back for one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A router on the way said time-exceeded.
    Router,
    /// The destination answered.
    Reached,
    /// Someone said the destination cannot be reached.
    Unreachable(UnreachableWhy),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UnreachableWhy {
    kind: u8,
    code: u8,
    from: Option<IpAddr>,
}

impl std::fmt::Display for UnreachableWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ICMP type {} code {}", self.kind, self.code)?;
        match self.from {
            Some(a) => write!(f, " from {a}"),
            None => Ok(()),
        }
    }
}

fn classify(ip: IpAddr, ev: ErrQueueEvent) -> Option<Answer> {
    match ev {
        ErrQueueEvent::TimeExceeded { .. } => Some(Answer::Router),
        // The destination itself, or (unknown sender) most likely it.
        ErrQueueEvent::PortUnreachable { from } if from.is_none_or(|f| f == ip) => {
            Some(Answer::Reached)
        }
        // Port-unreachable from a middlebox: it filters the port; the destination was not
        // shown to be reached.
        ErrQueueEvent::PortUnreachable { from } => Some(Answer::Unreachable(UnreachableWhy {
            kind: 3,
            code: 3,
            from,
        })),
        ErrQueueEvent::Other {
            origin: 2 | 3,
            kind,
            code,
            from,
            ..
        } => Some(Answer::Unreachable(UnreachableWhy { kind, code, from })),
        ErrQueueEvent::Other { .. } | ErrQueueEvent::FragNeeded { .. } => None,
    }
}

/// The hop count, if the answers so far decide it: the lowest TTL that reached the
/// destination, once every lower TTL of the window has answered (or, with `final_`, at the
/// end of the window's wait, when silent routers are given up on).
fn decided(probes: &[(u8, Socket, Option<Answer>)], final_: bool) -> Option<u8> {
    for (ttl, _, answer) in probes {
        match answer {
            Some(Answer::Reached) => return Some(*ttl),
            Some(_) => {}
            None if final_ => {}
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_is_one_hop_away() {
        assert_eq!(get_hops("127.0.0.1".parse().unwrap()).unwrap(), 1);
    }

    #[test]
    fn ipv6_and_multicast_are_refused_clearly() {
        for ip in ["::1", "224.0.0.1", "255.255.255.255"] {
            let err = get_hops(ip.parse().unwrap()).unwrap_err();
            assert!(matches!(err, Error::Diagnostic(_)), "{ip}: {err}");
        }
    }

    #[test]
    fn port_unreachable_counts_only_from_the_destination() {
        let dest: IpAddr = "10.1.1.2".parse().unwrap();
        let ours = ErrQueueEvent::PortUnreachable { from: Some(dest) };
        assert_eq!(classify(dest, ours), Some(Answer::Reached));
        let other = ErrQueueEvent::PortUnreachable {
            from: Some("10.1.1.1".parse().unwrap()),
        };
        assert!(matches!(
            classify(dest, other),
            Some(Answer::Unreachable(_))
        ));
        let ttl = ErrQueueEvent::TimeExceeded {
            from: Some("10.1.1.1".parse().unwrap()),
        };
        assert_eq!(classify(dest, ttl), Some(Answer::Router));
    }
}
