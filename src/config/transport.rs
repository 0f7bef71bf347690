//! The unicast transport keys: `transport`, `peers`, `bind_port`, `discovery_interval`.
//!
//! Kept apart from the other keys so the unicast parsing rules live in one place.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::rules::{Choice, List, lower};
use super::values::Parsed;

/// How datagrams reach the other nodes (`transport`).
///
/// ```
/// let config = mccache::Config::from_toml_str(r#"
///     transport = "unicast"
///     peers = ["10.1.2.3:4000", "cache.my-ns.svc.cluster.local:4000"]
/// "#)?;
/// assert_eq!(config.transport, mccache::TransportKind::Unicast);
/// # Ok::<(), mccache::Error>(())
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportKind {
    /// `"multicast"`: every datagram goes once to the group `multicast_ip:multicast_port`
    /// (the default).
    #[default]
    Multicast,
    /// `"unicast"`: every datagram goes to each live member and each `peers` address not yet
    /// a member, from one socket bound to `interface:bind_port`.
    Unicast,
}

impl TransportKind {
    /// The configuration spelling: `"multicast"` or `"unicast"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Multicast => "multicast",
            TransportKind::Unicast => "unicast",
        }
    }
}

const REASON_TRANSPORT: &str = "must be multicast or unicast";
const REASON_PEERS: &str = "is not a list of host:port peers";
const REASON_PEER: &str = "is not host:port (an IPv4 address or a DNS name, and a port 1 to 65535)";

/// `transport`.
pub(super) const TRANSPORT: Choice<TransportKind> =
    Choice(|v| match lower(v).ok_or(REASON_TRANSPORT)?.as_str() {
        "multicast" => Ok(TransportKind::Multicast),
        "unicast" => Ok(TransportKind::Unicast),
        _ => Err(REASON_TRANSPORT),
    });

/// `peers`: a TOML array of strings, or one string of comma-separated entries (the
/// environment's `MCCACHE_PEERS=a:4000,b:4000`). Errors name the entry (`peers[1]`).
pub(super) const PEERS: List = List {
    not_a_list: REASON_PEERS,
    not_an_entry: REASON_PEER,
    entry: peer,
    secret: false,
};

/// One peer entry: `host:port` or `host` (the port is then the node's own bind port), where
/// host is an IPv4 address or a DNS name.
fn peer(s: &str) -> Parsed<()> {
    split_peer(s).map(drop)
}

/// Splits a peer entry into host and optional port.
fn split_peer(s: &str) -> Parsed<(&str, Option<u16>)> {
    let s = s.trim();
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let n = p.trim().parse::<u64>().map_err(|_| REASON_PEER)?;
            let p = u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(REASON_PEER)?;
            (h.trim(), Some(p))
        }
        None => (s, None),
    };
    if host.is_empty() || host.len() > 253 {
        return Err(REASON_PEER);
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok((host, port));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
    };
    if host.trim_end_matches('.').split('.').all(label_ok) {
        Ok((host, port))
    } else {
        Err(REASON_PEER)
    }
}

/// A peer entry with its port filled in (`default_port` when it has none): `"10.0.0.7"` with
/// 4000 is `"10.0.0.7:4000"`; an entry with a port keeps it.
pub(crate) fn peer_with_port(entry: &str, default_port: u16) -> String {
    match split_peer(entry) {
        Ok((host, Some(port))) => format!("{host}:{port}"),
        Ok((host, None)) => format!("{host}:{default_port}"),
        Err(_) => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_with_port_fills_in_only_a_missing_port() {
        assert_eq!(
            peer_with_port("cache.ns.svc:4100", 4000),
            "cache.ns.svc:4100"
        );
        assert_eq!(peer_with_port("10.0.0.7", 4000), "10.0.0.7:4000");
    }

    #[test]
    fn peers_accept_addresses_and_names_with_or_without_port() {
        for ok in [
            "10.0.0.1:4000",
            "10.0.0.1",
            "cache",
            "cache.my-ns.svc.cluster.local:4000",
            "mcu_node-1:47200",
            "host.",
        ] {
            assert!(peer(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":4000",
            "a:0",
            "a:70000",
            "a:x",
            "a b:1",
            "-a:1",
            "[::1]:4000",
            "a..b:1",
        ] {
            assert!(peer(bad).is_err(), "{bad}");
        }
    }
}
