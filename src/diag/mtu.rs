//! Path-MTU discovery towards one unicast address, with DF-flagged UDP probes.

use std::net::{IpAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::{ErrQueueEvent, PROBE_PORT, read_error_queue};
use crate::net::sockopt;
use crate::{Error, Result};

/// IPv4 + UDP header bytes: a datagram payload of `mtu - 28` fills an IPv4 MTU of `mtu`.
pub(super) const UDP_IPV4_OVERHEAD: u32 = 28;
/// The smallest MTU every IPv4 link must carry (RFC 791).
const MIN_MTU: u32 = 68;
/// The largest IPv4 datagram.
const MAX_MTU: u32 = 65535;
/// How long a probe waits for an ICMP error before it counts as having passed.
const PROBE_WAIT: Duration = Duration::from_millis(200);
/// Upper bound on the whole search.
const TOTAL: Duration = Duration::from_secs(5);

/// Finds the path MTU to the unicast IPv4 address `ip`: the largest IP datagram (header
/// included, in bytes) that reaches `ip` without fragmentation, e.g. `1400` behind a link with
/// MTU 1400, `1500` on plain Ethernet, `65535` to a loopback address.
///
/// Set `packet_mtu` to the result minus 28 (20 bytes of IPv4 header, 8 of UDP): the default
/// `packet_mtu` of 1472 is 1500 − 28.
///
/// How: a connected UDP socket to `ip`, port 33434, with `IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`
/// (DF set) and `IP_RECVERR`. The probe size is binary-searched; a probe is too big when `send`
/// fails with `EMSGSIZE` or an ICMP "fragmentation needed" comes back on the error queue (whose
/// next-hop MTU then bounds the search); it has passed when nothing comes back within 200 ms or
/// the destination answers with port-unreachable. The kernel's own estimate (`IP_MTU`) is
/// read afterwards as a cross-check and wins if smaller. No root, no raw sockets, no external
/// commands; at most about five seconds.
///
/// Caveat: a path that drops ICMP (a "black hole") makes oversized probes look as if they
/// passed, so the answer is an upper bound there.
///
/// # Errors
/// [`Error::Diagnostic`] for an IPv6, multicast or unspecified address, or when no probe size
/// passes; [`Error::Network`] when the socket cannot be set up (e.g. no route to `ip`).
///
/// # Example
/// ```no_run
/// let mtu = mccache::get_mtu("10.0.0.7".parse().unwrap())?;
/// let packet_mtu = mtu - 28; // the value for the `packet_mtu` configuration key
/// # Ok::<(), mccache::Error>(())
/// ```
pub fn get_mtu(ip: IpAddr) -> Result<u16> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => {
            return Err(Error::Diagnostic(format!(
                "get_mtu({ip}): IPv6 is not supported; give the peer's IPv4 address"
            )));
        }
    };
    if v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified() {
        return Err(Error::Diagnostic(format!(
            "get_mtu({ip}): needs a unicast address (routers send no ICMP errors for multicast)"
        )));
    }
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sockopt::set_pmtudisc_probe_v4(&sock)?;
    sockopt::set_recverr_v4(&sock, true)?;
    sock.connect(&SocketAddrV4::new(v4, PROBE_PORT).into())?;

    let deadline = Instant::now() + TOTAL;
    let mut search = Search::new();
    while let Some(size) = search.next_size() {
        if Instant::now() >= deadline {
            return Err(Error::Diagnostic(format!(
                "get_mtu({ip}): no answer within {TOTAL:?} (last bounds {}..{})",
                search.passed, search.failed
            )));
        }
        let outcome = probe(&sock, ip, size)?;
        tracing::debug!(%ip, size, ?outcome, "mtu probe");
        search.record(size, outcome);
    }
    let Some(found) = search.result() else {
        return Err(Error::Diagnostic(format!(
            "get_mtu({ip}): even a {MIN_MTU}-byte probe did not pass"
        )));
    };
    let found = match sockopt::ip_mtu_v4(&sock) {
        Ok(kernel) if kernel >= MIN_MTU && kernel < found => {
            tracing::debug!(%ip, found, kernel, "kernel knows a smaller path MTU; using it");
            kernel
        }
        Ok(_) => found,
        Err(e) => {
            tracing::debug!(%ip, error = %e, "IP_MTU cross-check unavailable");
            found
        }
    };
    // `found` ≤ MAX_MTU = u16::MAX by construction of the search.
    Ok(u16::try_from(found).unwrap_or(u16::MAX))
}

/// What one probe of a given size showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No "too big" came back.
    Passed,
    /// Too big; `hint` is the MTU the router (or the local interface) reported, if any.
    TooBig { hint: Option<u32> },
}

/// The binary search over IP-level probe sizes, separate from the sockets so it can be tested.
#[derive(Debug)]
struct Search {
    /// Largest size known to pass (`MIN_MTU - 1` = none yet).
    passed: u32,
    /// Smallest size known to fail (`MAX_MTU + 1` = none yet).
    failed: u32,
    /// A size worth trying before bisecting: first the largest datagram (a local EMSGSIZE then
    /// reports the interface MTU in one step), then each MTU a "too big" reported.
    try_next: Option<u32>,
}

impl Search {
    fn new() -> Self {
        Search {
            passed: MIN_MTU - 1,
            failed: MAX_MTU + 1,
            try_next: Some(MAX_MTU),
        }
    }

    /// The next size to probe, or `None` when the bounds have met.
    fn next_size(&self) -> Option<u32> {
        if self.failed - self.passed <= 1 {
            return None;
        }
        match self.try_next {
            Some(t) if self.passed < t && t < self.failed => return Some(t),
            _ => {}
        }
        Some(self.passed + (self.failed - self.passed) / 2)
    }

    fn record(&mut self, size: u32, outcome: Outcome) {
        match outcome {
            Outcome::Passed => {
                self.passed = self.passed.max(size);
                self.try_next = None;
            }
            Outcome::TooBig { hint } => {
                // A router's next-hop MTU h means nothing above h crosses that hop.
                let hint = hint.filter(|h| (MIN_MTU..size).contains(h));
                self.failed = self.failed.min(hint.map_or(size, |h| h + 1));
                self.try_next = hint;
            }
        }
        if self.failed <= self.passed {
            // Contradictory answers (a lost or late ICMP): trust the failure.
            self.passed = self.failed - 1;
        }
    }

    fn result(&self) -> Option<u32> {
        (self.passed >= MIN_MTU).then_some(self.passed)
    }
}

/// Sends one DF probe of `size` IP-level bytes and waits for its fate.
fn probe(sock: &Socket, ip: IpAddr, size: u32) -> Result<Outcome> {
    // Drop anything stale, which also clears a pending socket error.
    while read_error_queue(sock)?.is_some() {}
    let payload = vec![0u8; (size - UDP_IPV4_OVERHEAD) as usize];
    if let Err(e) = sock.send(&payload) {
        if e.raw_os_error() == Some(libc::EMSGSIZE) {
            // With IP_RECVERR the kernel queues the interface MTU as a local error.
            let mut hint = None;
            while let Some(ev) = read_error_queue(sock)? {
                if let ErrQueueEvent::FragNeeded { mtu, .. } = ev {
                    hint = Some(mtu);
                }
            }
            return Ok(Outcome::TooBig { hint });
        }
        return Err(e.into());
    }
    let until = Instant::now() + PROBE_WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::Passed);
        }
        let ready = sockopt::wait_events(&[std::os::fd::AsFd::as_fd(sock)], left)?;
        if ready[0].readable {
            // Something answered the probe: it arrived whole.
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
            let _ = sock.recv(&mut buf);
            return Ok(Outcome::Passed);
        }
        while let Some(ev) = read_error_queue(sock)? {
            match ev {
                // A hint at or above this size cannot be about this probe: a late answer
                // to an earlier, larger one.
                ErrQueueEvent::FragNeeded { mtu, .. } if mtu >= size => {}
                ErrQueueEvent::FragNeeded { mtu, .. } => {
                    return Ok(Outcome::TooBig { hint: Some(mtu) });
                }
                ErrQueueEvent::PortUnreachable { .. } => return Ok(Outcome::Passed),
                ErrQueueEvent::TimeExceeded { .. } => {}
                ErrQueueEvent::Other {
                    origin,
                    kind,
                    code,
                    errno,
                    from,
                } => {
                    return Err(Error::Diagnostic(format!(
                        "get_mtu({ip}): unreachable ({}; origin {origin} ICMP type {kind} code {code}, from {})",
                        std::io::Error::from_raw_os_error(errno as i32),
                        from.map_or_else(|| "?".to_string(), |a| a.to_string()),
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a fake path: the local interface MTU `dev` (EMSGSIZE with
    /// hint) and routers with smaller MTUs that may or may not report them.
    fn run(dev: u32, hops: &[(u32, bool)]) -> (Option<u32>, usize) {
        let mut s = Search::new();
        let mut probes = 0;
        while let Some(size) = s.next_size() {
            probes += 1;
            assert!(probes < 40, "search does not converge");
            let outcome = if size > dev {
                Outcome::TooBig { hint: Some(dev) }
            } else if let Some(&(mtu, reports)) = hops.iter().find(|(m, _)| size > *m) {
                Outcome::TooBig {
                    hint: reports.then_some(mtu),
                }
            } else {
                Outcome::Passed
            };
            s.record(size, outcome);
        }
        (s.result(), probes)
    }

    #[test]
    fn local_interface_mtu_is_found_in_two_probes() {
        assert_eq!(run(1500, &[]), (Some(1500), 2));
        assert_eq!(run(65535, &[]), (Some(65535), 1));
    }

    #[test]
    fn router_hint_is_used_directly() {
        assert_eq!(run(1500, &[(1280, true)]), (Some(1280), 3));
    }

    #[test]
    fn silent_router_is_found_by_bisection() {
        let (mtu, probes) = run(1500, &[(1400, false)]);
        assert_eq!(mtu, Some(1400));
        assert!(probes <= 14, "{probes} probes");
    }

    #[test]
    fn nothing_passes_gives_none() {
        assert_eq!(run(60, &[]).0, None);
    }

    #[test]
    fn bogus_hints_are_ignored() {
        let mut s = Search::new();
        s.record(1500, Outcome::TooBig { hint: Some(0) });
        assert_eq!(s.failed, 1500);
        s.record(1400, Outcome::TooBig { hint: Some(9000) });
        assert_eq!(s.failed, 1400);
    }

    #[test]
    fn loopback_path_mtu_is_the_largest_datagram() {
        // Loopback's MTU is 65536, more than any IPv4 datagram.
        assert_eq!(get_mtu("127.0.0.1".parse().unwrap()).unwrap(), 65535);
    }

    #[test]
    fn ipv6_and_multicast_are_refused_clearly() {
        for ip in ["::1", "239.1.2.3", "0.0.0.0"] {
            let err = get_mtu(ip.parse().unwrap()).unwrap_err();
            assert!(matches!(err, Error::Diagnostic(_)), "{ip}: {err}");
        }
    }
}
