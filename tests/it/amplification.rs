//! Bounded answers (issue 13): forged plaintext requests that make nodes send bulk data
//! (snapshot requests, digests with every bucket different, pulls, cluster queries, joins) are
//! sent to a running 3-node cluster, and the bytes the whole cluster sends meanwhile are
//! compared with the bytes the forger sent. Each kind must stay within a few times what was
//! sent (target ≤ 4×). The ratios are printed (`--nocapture`).
//!
//! Plaintext mode is open to anyone on the network by design (see docs/SECURITY.md); these
//! bounds are what keeps it from being an amplifier. Group 239.255.104.2, loopback only.

#![forbid(unsafe_code)]

use crate::support::cluster;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster::wait_until;
use mccache::{Config, Node, NodeId};
use mccache_proto::header::Header;
use mccache_proto::message::{CacheDigest, Msg, Query};
use mccache_proto::sync::{SYNC_BUCKETS, SyncDigest};
use mccache_proto::version::Version;
use mccache_proto::wire::{Wire, WireConfig};

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 104, 2);
const PORT: u16 = 47411;
const CLUSTER: &str = "t13-amplification";
/// Requests per kind.
const REQUESTS: usize = 400;

fn config() -> Config {
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = GROUP;
    c.multicast_port = PORT;
    c.daemon_sleep = 1.0;
    c.cache_pulse = 5.0;
    c.cache_max = 100_000;
    c.cache_size = 256 << 20;
    c.cache_ttl = 0.0;
    c.crypto_key = None;
    c.cluster_name = CLUSTER.to_string();
    c
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counts every byte the nodes multicast to the group (as a listener on the group sees it;
/// the forger's own datagrams, sender ids 0xA000_0000..0xC000_0000, are not counted).
struct Tap {
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn new() -> Tap {
        let sock = mccache::unstable::recv_socket_uncoalesced(
            SocketAddrV4::new(GROUP, PORT),
            Ipv4Addr::LOCALHOST,
        )
        .expect("tap socket");
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bytes, stop) = (bytes.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        let forged = Header::decode(&buf[..n])
                            .is_ok_and(|h| (0xA000_0000..0xC000_0000).contains(&h.sender.0));
                        if !forged {
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Tap {
            bytes,
            stop,
            thread: Some(thread),
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `msgs` as forged sender `sender` (a fresh plaintext wire) and returns the bytes sent.
fn flood(sock: &UdpSocket, sender: u64, msgs: &[Msg]) -> u64 {
    let mut w = Wire::new(
        WireConfig {
            cluster_name: CLUSTER.into(),
            ..WireConfig::default()
        },
        NodeId(sender),
    );
    w.set_wall_ms(wall_ms());
    let to = SocketAddrV4::new(GROUP, PORT);
    let mut sent = 0u64;
    for (i, m) in msgs.iter().enumerate() {
        for d in w.encode(&m.encode()).expect("encode") {
            sent += d.len() as u64;
            let _ = sock.send_to(&d, to);
        }
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    sent
}

#[test]
fn forged_requests_cannot_make_the_cluster_send_much_more_than_it_receives() {
    let nodes: Vec<Node> = (0..3)
        .map(|_| Node::start(config()).expect("node starts"))
        .collect();
    for n in &nodes {
        assert!(wait_until(Duration::from_secs(15), || n.members().len() == 2));
    }
    // A cache worth asking for: 3,000 entries of ~200 bytes.
    let c = nodes[0].cache::<String, String>("amp").unwrap();
    for i in 0..3000 {
        c.insert(format!("key-{i:05}"), "v".repeat(200)).unwrap();
    }
    for n in &nodes[1..] {
        let c = n.cache::<String, String>("amp").unwrap();
        assert!(wait_until(Duration::from_secs(20), || c.len() == 3000));
    }
    for n in &nodes {
        assert!(
            n.wait_ready(Duration::from_secs(60)).is_ready(),
            "{} not ready",
            n.id()
        );
    }
    let victim = nodes[0].id();
    let tap = Tap::new();
    let sock = mccache::unstable::send_socket(Ipv4Addr::LOCALHOST, 1).expect("socket");
    sock.set_nonblocking(false).unwrap();

    let all_different = SyncDigest {
        count: 1,
        checksum: 1,
        buckets: (0..SYNC_BUCKETS as u64).map(|b| b + 1).collect(),
    };
    let kinds: Vec<(&str, Vec<Msg>)> = vec![
        (
            "snapshot request",
            (0..REQUESTS)
                .map(|i| Msg::SnapshotReq {
                    to: victim,
                    cache: "amp".into(),
                    cursor: (i as u64 % 8) << 32,
                    until: u64::MAX,
                    pad: serde_bytes::ByteBuf::new(),
                })
                .collect(),
        ),
        (
            "digest, every bucket different",
            (0..REQUESTS)
                .map(|_| Msg::Digest {
                    caches: vec![CacheDigest {
                        cache: "amp".into(),
                        digest: all_different.clone(),
                        floor: Version::ZERO,
                    }],
                })
                .collect(),
        ),
        (
            "pull",
            (0..REQUESTS)
                .map(|i| Msg::Pull {
                    to: victim,
                    cache: "amp".into(),
                    keys: (0..20)
                        .map(|k| {
                            serde_bytes::ByteBuf::from(
                                rmp_serde::to_vec(&format!("key-{:05}", (i * 20 + k) % 3000))
                                    .unwrap(),
                            )
                        })
                        .collect(),
                })
                .collect(),
        ),
        (
            "metrics query",
            (0..REQUESTS)
                .map(|i| Msg::Query {
                    id: i as u64,
                    query: Query::Metrics { cache: None },
                })
                .collect(),
        ),
        (
            "join",
            (0..REQUESTS)
                .map(|_| Msg::Hello {
                    name: "x".into(),
                    join: true,
                    seq_hi: 0,
                    acks: Vec::new(),
                    caches: Vec::new(),
                    wall_ms: wall_ms(),
                })
                .collect(),
        ),
    ];
    let mut report = Vec::new();
    for (k, (name, msgs)) in kinds.iter().enumerate() {
        // Quiet first: replication, state transfers and the previous kind's answers have
        // drained (only heartbeats remain: less than 4 KB in a second).
        assert!(
            wait_until(Duration::from_secs(30), || {
                let a = tap.bytes();
                std::thread::sleep(Duration::from_millis(1000));
                tap.bytes() - a < 4096
            }),
            "the cluster does not quiesce"
        );
        let before = tap.bytes();
        let start = Instant::now();
        // One forged identity per kind, and for joins a new one every request.
        let sent = if *name == "join" {
            msgs.iter()
                .enumerate()
                .map(|(i, m)| flood(&sock, 0xA000_0000 + i as u64, std::slice::from_ref(m)))
                .sum()
        } else {
            flood(&sock, 0xB000_0000 + k as u64, msgs)
        };
        std::thread::sleep(Duration::from_millis(700));
        let out = tap.bytes() - before;
        let ratio = out as f64 / sent as f64;
        eprintln!(
            "{name:32} in {sent:>8} B  cluster out {out:>9} B  ratio {ratio:5.2}x  ({:?})",
            start.elapsed()
        );
        report.push((*name, ratio));
    }
    for (name, ratio) in &report {
        assert!(
            *ratio <= 4.0,
            "{name}: the cluster sent {ratio:.2}x what it received"
        );
    }
    for n in nodes {
        n.shutdown();
    }
}
