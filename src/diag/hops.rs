//! Hop counting towards one unicast address with TTL-limited UDP probes (traceroute style).

use std::net::{IpAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::{ErrQueueEvent, PROBE_PORT, read_error_queue};
use crate::net::sockopt;
use crate::{Error, Result};

/// The largest TTL tried.
pub(super) const MAX_HOPS: u8 = 30;
/// How long a probe waits for an answer before it is sent once more.
const FIRST_WAIT: Duration = Duration::from_millis(300);
/// How long the second probe of a TTL waits. Routers rate-limit ICMP per destination (Linux:
/// a burst of 6, then one per second), so a silent hop gets a second chance a bit later.
const RETRY_WAIT: Duration = Duration::from_millis(700);
/// Upper bound on the whole count.
const TOTAL: Duration = Duration::from_secs(6);

/// Counts the IP hops to the unicast IPv4 address `ip`: the smallest TTL that reaches it.
/// A directly connected host (or this host) is 1 hop, a host behind one router is 2.
///
/// How: UDP datagrams to `ip`, port 33434, with `IP_TTL` = 1, 2, … up to 30 and
/// `IP_RECVERR`, one socket per TTL, one TTL at a time (so each router spends one ICMP of its
/// rate limit on us). An ICMP time-exceeded on the error queue means "not there yet"; a
/// port-unreachable from `ip` (or any reply) means that TTL reached it. A silent TTL is probed
/// once more after 300 ms, then skipped after another 700 ms. No root, no raw sockets, no
/// external commands; one round trip per hop when every hop answers, six seconds at most.
///
/// Caveat: routers and hosts rate-limit ICMP (Linux: a burst of 6 per peer, then one per
/// second). Many calls per second towards the same host can exhaust that budget; a
/// destination that stays silent at the right TTL but answers the next one makes the count
/// one too high.
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
    let deadline = Instant::now() + TOTAL;
    for ttl in 1..=MAX_HOPS {
        // One socket per TTL: whatever arrives on it, even late, is about this TTL.
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sockopt::set_recverr_v4(&sock, true)?;
        sock.set_ttl_v4(u32::from(ttl))?;
        sock.connect(&dest.into())?;
        let mut answer = None;
        for wait in [FIRST_WAIT, RETRY_WAIT] {
            let until = (Instant::now() + wait).min(deadline);
            if let Err(e) = sock.send(b"mccache hop probe") {
                // A pending error from the first probe's answer surfaces on the second send;
                // the answer itself is on the error queue.
                tracing::debug!(%ip, ttl, error = %e, "hop probe send");
            }
            answer = await_answer(&sock, ip, ttl, until)?;
            if answer.is_some() || Instant::now() >= deadline {
                break;
            }
        }
        match answer {
            Some(Answer::Reached) => return Ok(ttl),
            Some(Answer::Unreachable(why)) => {
                return Err(Error::Diagnostic(format!(
                    "get_hops({ip}): unreachable at TTL {ttl}: {why}"
                )));
            }
            Some(Answer::Router) | None => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::Diagnostic(format!(
                "get_hops({ip}): not reached within {TOTAL:?} (gave up at TTL {ttl})"
            )));
        }
    }
    Err(Error::Diagnostic(format!(
        "get_hops({ip}): not reached within {MAX_HOPS} hops (no port-unreachable or reply came back)"
    )))
}

/// Waits until `until` for the first answer to the probes sent on `sock`.
fn await_answer(sock: &Socket, ip: IpAddr, ttl: u8, until: Instant) -> Result<Option<Answer>> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let ready = sockopt::wait_events(&[sock.as_fd()], left)?;
        if ready[0].readable {
            // The destination replied at the application level.
            return Ok(Some(Answer::Reached));
        }
        let mut answer = None;
        while let Some(ev) = read_error_queue(sock)? {
            tracing::debug!(%ip, ttl, ?ev, "hop probe answer");
            answer = answer.or(classify(ip, ev));
        }
        if answer.is_some() {
            return Ok(answer);
        }
    }
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
