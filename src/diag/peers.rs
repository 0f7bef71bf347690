//! `check_peers`: for each configured unicast peer, its resolved addresses, whether a node
//! answers there, and the round-trip time.
//!
//! The probe is the protocol's own cluster query ([`Msg::Query`]), sealed with the
//! configuration's keys and cluster name, so an answer also proves that the key and the
//! cluster name match. The checker is a short-lived member: peers see it join under its own
//! node id, and it announces its leave when done.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::net::discovery;
use crate::proto::message::{Msg, Query};
use crate::proto::version::NodeId;
use crate::proto::wire::{Wire, WireConfig};
use crate::{Error, Result};

/// How often an unanswered address is probed again while waiting.
const RESEND: Duration = Duration::from_millis(200);

/// One `peers` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCheck {
    /// The entry with its port (`host:port`).
    pub entry: String,
    /// Its addresses and what each answered; empty when it did not resolve.
    pub addresses: Vec<AddressCheck>,
    /// Why it did not resolve.
    pub error: Option<String>,
}

/// One resolved address of a peer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressCheck {
    /// The address probed.
    pub addr: SocketAddr,
    /// The node that answered there (`None`: no answer within the timeout: nothing listens,
    /// a firewall drops it, or the node has another key or cluster name).
    pub node: Option<NodeId>,
    /// Round-trip time of the answered probe.
    pub rtt: Option<Duration>,
}

impl AddressCheck {
    /// Whether a node of this cluster answered at this address.
    pub fn answered(&self) -> bool {
        self.node.is_some()
    }
}

/// Resolves every entry of `config.peers` (ports default to the node's `bind_port`) and
/// probes each address with a sealed cluster query, waiting up to `timeout` for the answers.
/// Sends from `config.interface` on an ephemeral port, so it can run beside a node on the
/// same host.
///
/// # Errors
/// [`Error::Diagnostic`] when `peers` is empty; [`Error::Network`] when the probe socket cannot
/// be opened; configuration errors from the keys.
///
/// # Example
/// ```no_run
/// let config = mccache::Config::load()?;
/// for peer in mccache::check_peers(&config, std::time::Duration::from_secs(2))? {
///     for a in &peer.addresses {
///         println!("{} {} answered={} rtt={:?}", peer.entry, a.addr, a.answered(), a.rtt);
///     }
/// }
/// # Ok::<(), mccache::Error>(())
/// ```
pub fn check_peers(config: &Config, timeout: Duration) -> Result<Vec<PeerCheck>> {
    if config.peers.is_empty() {
        return Err(Error::Diagnostic(
            "check_peers: `peers` is empty: nothing to check (set peers or MCCACHE_PEERS)".into(),
        ));
    }
    let entries = discovery::entries(&config.peers, config.unicast_port());
    let resolved = discovery::resolve_blocking(&entries);
    let mut checks: Vec<PeerCheck> = resolved
        .into_iter()
        .map(|r| match r.addrs {
            Ok(addrs) => PeerCheck {
                entry: r.entry,
                addresses: addrs
                    .into_iter()
                    .map(|addr| AddressCheck {
                        addr,
                        node: None,
                        rtt: None,
                    })
                    .collect(),
                error: None,
            },
            Err(e) => PeerCheck {
                entry: r.entry,
                addresses: Vec::new(),
                error: Some(e.to_string()),
            },
        })
        .collect();
    let targets: Vec<(usize, usize, SocketAddr)> = checks
        .iter()
        .enumerate()
        .flat_map(|(p, c)| {
            c.addresses
                .iter()
                .enumerate()
                .map(move |(a, x)| (p, a, x.addr))
        })
        .collect();
    if targets.is_empty() {
        return Ok(checks);
    }

    let sock = UdpSocket::bind(SocketAddrV4::new(config.interface, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let me = NodeId::from_random(rand::random());
    let mut wire = Wire::new(
        WireConfig {
            cluster_name: config.cluster_name.clone(),
            keys: config.crypto_keyring()?,
            mtu: usize::from(config.packet_mtu),
            ..WireConfig::default()
        },
        me,
    );
    // Sealed peers refuse datagrams without a current send time (replay horizon).
    wire.set_wall_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    // Query ids: target index × 10_000 + attempt, so each answer is timed from its own send.
    let mut sent: Vec<Vec<Instant>> = vec![Vec::new(); targets.len()];
    let mut last_round = None::<Instant>;
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let query_id = |t: usize, attempt: usize| (t * 10_000 + attempt + 1) as u64;
    while start.elapsed() < timeout {
        let done = targets
            .iter()
            .all(|(p, a, _)| checks[*p].addresses[*a].answered());
        if done {
            break;
        }
        if last_round.is_none_or(|t| t.elapsed() >= RESEND) {
            for (t, (p, a, addr)) in targets.iter().enumerate() {
                if checks[*p].addresses[*a].answered() || sent[t].len() >= 9_999 {
                    continue;
                }
                let msg = Msg::Query {
                    id: query_id(t, sent[t].len()),
                    query: Query::Metrics {
                        cache: Some(String::new()),
                    },
                };
                if let Ok(datagrams) = wire.encode(&msg.encode()) {
                    for d in datagrams {
                        let _ = sock.send_to(&d, addr);
                    }
                    sent[t].push(Instant::now());
                }
            }
            last_round = Some(Instant::now());
        }
        let Ok((n, _src)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(Some((from, payload))) = wire.decode(Instant::now(), &buf[..n]) else {
            continue;
        };
        if let Some(Msg::Reply { to, id, .. }) = Msg::decode(&payload) {
            let (t, attempt) = ((id - 1) as usize / 10_000, (id - 1) as usize % 10_000);
            if to != me || t >= targets.len() {
                continue;
            }
            let (p, a, _) = targets[t];
            let check = &mut checks[p].addresses[a];
            if let (None, Some(at)) = (check.node, sent[t].get(attempt)) {
                check.node = Some(from);
                check.rtt = Some(at.elapsed());
            }
        }
    }
    // Leave at once rather than wait to be declared dead.
    if let Ok(datagrams) = wire.encode(&Msg::Leave.encode()) {
        for (_, _, addr) in &targets {
            for d in &datagrams {
                let _ = sock.send_to(d, addr);
            }
        }
    }
    Ok(checks)
}
