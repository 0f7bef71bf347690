//! A loop-back check of one multicast group on one interface.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Error, Result};

/// How often the token is re-sent while waiting, in case a datagram is lost.
const RESEND: Duration = Duration::from_millis(100);
const TOKEN_PREFIX: &[u8] = b"mccache-check-multicast:";

/// The result of [`check_multicast`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MulticastCheck {
    /// The group and port that were checked.
    pub group: SocketAddrV4,
    /// The interface the group was joined on and sent from.
    pub interface: Ipv4Addr,
    /// Whether the token sent to the group came back to the joined socket.
    pub received: bool,
    /// Time from the first send until the token came back (or until giving up).
    pub elapsed: Duration,
    /// How many times the token was sent.
    pub sent: u32,
}

/// Checks that multicast works on `interface` for `group`: joins the group on `interface`
/// with a receiving socket, sends a random token to the group from a second socket with
/// `IP_MULTICAST_IF = interface` and multicast loopback on (TTL 1), and waits up to `timeout`
/// for the token to come back (re-sending every 100 ms). `received == false` means the
/// interface cannot carry this group (no multicast route, a filter, a down interface).
///
/// # Errors
/// [`Error::Diagnostic`] if `group` is not a multicast address; [`Error::Network`] if the
/// sockets cannot be set up (e.g. `interface` is not an address of this host).
///
/// # Example
/// ```
/// use std::time::Duration;
/// let group = "239.255.91.201:49201".parse().unwrap();
/// let check = mccache::check_multicast(group, "127.0.0.1".parse().unwrap(), Duration::from_secs(2))?;
/// println!("multicast on lo: {} after {:?}", check.received, check.elapsed);
/// # Ok::<(), mccache::Error>(())
/// ```
pub fn check_multicast(
    group: SocketAddrV4,
    interface: Ipv4Addr,
    timeout: Duration,
) -> Result<MulticastCheck> {
    if !group.ip().is_multicast() {
        return Err(Error::Diagnostic(format!(
            "check_multicast: {} is not a multicast address (224.0.0.0/4)",
            group.ip()
        )));
    }
    let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    rx.set_reuse_address(true)?;
    rx.set_reuse_port(true)?;
    // Bound to the group address, the socket receives only this group's datagrams.
    rx.bind(&group.into())?;
    rx.join_multicast_v4(group.ip(), &interface)?;
    let rx: UdpSocket = rx.into();

    let tx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    tx.set_multicast_if_v4(&interface)?;
    tx.set_multicast_loop_v4(true)?;
    tx.set_multicast_ttl_v4(1)?;

    let mut token = TOKEN_PREFIX.to_vec();
    token.extend_from_slice(&rand::random::<[u8; 16]>());
    let start = Instant::now();
    let deadline = start + timeout;
    let mut sent = 0u32;
    let mut buf = [0u8; 128];
    let received = 'outer: loop {
        tx.send_to(&token, &group.into())?;
        sent += 1;
        let resend_at = (Instant::now() + RESEND).min(deadline);
        loop {
            let left = resend_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            rx.set_read_timeout(Some(left))?;
            match rx.recv(&mut buf) {
                Ok(n) if buf[..n] == token[..] => break 'outer true,
                Ok(_) => {} // someone else's datagram on the group
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    let _ = rx.leave_multicast_v4(group.ip(), &interface);
    Ok(MulticastCheck {
        group,
        interface,
        received,
        elapsed: start.elapsed(),
        sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_multicast_group_is_refused() {
        let err = check_multicast(
            "10.0.0.1:4000".parse().unwrap(),
            Ipv4Addr::LOCALHOST,
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Diagnostic(_)));
    }

    #[test]
    fn loopback_multicast_round_trips() {
        let group = "239.255.91.11:49111".parse().unwrap();
        let c = check_multicast(group, Ipv4Addr::LOCALHOST, Duration::from_secs(5)).unwrap();
        assert!(c.received, "{c:?}");
        assert!(c.sent >= 1);
    }
}
