//! Helpers for the hostile-network tests (`hostile_input`, `flood`, `keyring`): node configs on
//! a test-unique group 239.255.92.x leaving through 127.0.0.1, a tap that captures what nodes
//! send, an injector that sends raw datagrams to the group, and bounded polling.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use mccache::{Config, Node};

/// The shared test key (32 bytes, base64) and its raw bytes.
pub const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// [`KEY_B64`] decoded.
pub const KEY: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];

/// Generous bound for every wait.
pub const T: Duration = Duration::from_secs(15);

/// The group of a test: 239.255.92.`group`:`port`.
pub fn group(group: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(239, 255, 92, group), port)
}

/// A loopback node config: fast heartbeats and pulses, roomy caps, sealed with `keys` (first
/// sends, all receive; empty = plaintext).
pub fn config(group: u8, port: u16, cluster: &str, keys: &[&str]) -> Config {
    let mut c = cluster_support::config(group, port);
    c.multicast_ip = Ipv4Addr::new(239, 255, 92, group);
    c.cache_size = 256 << 20;
    c.crypto_key = None;
    c.crypto_keys = keys.iter().map(|k| k.to_string()).collect();
    c.cluster_name = cluster.to_string();
    c
}

use crate::support::cluster as cluster_support;
pub use cluster_support::wait_until;

/// The node's drop counter for `reason` (0 when absent).
pub fn dropped(node: &Node, reason: &str) -> u64 {
    node.network_metrics()
        .dropped
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Waits until every node sees the other `nodes.len() - 1` as members.
pub fn wait_members(nodes: &[&Node]) {
    for n in nodes {
        assert!(
            wait_until(T, || n.members().len() == nodes.len() - 1),
            "membership forms: {:?} sees {:?}",
            n.id(),
            n.members()
        );
    }
}

/// A socket joined to the group on 127.0.0.1 that sees everything sent to it.
pub struct Tap {
    sock: UdpSocket,
}

impl Tap {
    /// Joins `group` on loopback (shares the port with the nodes).
    pub fn new(group: SocketAddrV4) -> Tap {
        let sock = mccache::unstable::recv_socket_uncoalesced(group, Ipv4Addr::LOCALHOST)
            .expect("tap socket");
        sock.set_nonblocking(false).expect("blocking");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        Tap { sock }
    }

    /// Everything that arrives within `dur` (at most `max` datagrams).
    pub fn collect(&self, dur: Duration, max: usize) -> Vec<Vec<u8>> {
        let end = Instant::now() + dur;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < end && out.len() < max {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                out.push(buf[..n].to_vec());
            }
        }
        out
    }

    /// Reads until `pick` returns `Some` or `timeout` passes.
    pub fn find<R>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&[u8]) -> Option<R>,
    ) -> Option<R> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < end {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if let Some(r) = pick(&buf[..n]) {
                    return Some(r);
                }
            }
        }
        None
    }
}

/// Sends raw datagrams to the group, leaving through 127.0.0.1.
pub struct Injector {
    sock: UdpSocket,
    group: SocketAddrV4,
}

impl Injector {
    /// A sender for `group`.
    pub fn new(group: SocketAddrV4) -> Injector {
        let sock = mccache::unstable::send_socket(Ipv4Addr::LOCALHOST, 1).expect("send socket");
        sock.set_nonblocking(false).expect("blocking");
        Injector { sock, group }
    }

    /// Sends one datagram (errors such as a full buffer are ignored: this is a flood).
    pub fn send(&self, d: &[u8]) {
        let _ = self.sock.send_to(d, self.group);
    }
}

/// This process's resident set size in KiB (`VmRSS` of /proc/self/status).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line")
}
