//! Unicast against multicast (a bench binary that prints its figures), 3 and 9 nodes in one
//! process on 127.0.0.1, sealed:
//!
//! 1. **Lag at low load**: insert on the first node, spin until the last node returns it; 500
//!    samples, one write in flight. p50/p99 in microseconds.
//! 2. **Paced throughput**: every node has one writer; together they offer
//!    `MCCACHE_BENCH_RATE` writes/s (default 30,000) over 10,000 shared keys for
//!    `MCCACHE_BENCH_SECONDS` (default 5). Reports the achieved aggregate rate, the changes
//!    received per second over all nodes, outbound overflow, retransmits, and how long after
//!    the writers stop the caches are identical.
//!
//! `cargo bench --bench transport`. Multicast groups 239.255.102.x, unicast ports 47270-47289.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mccache::TransportKind;
use mccache::{Config, Node};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn configs(unicast: bool, n: usize, round: u8) -> Vec<Config> {
    let mut base = Config::default();
    base.interface = Ipv4Addr::LOCALHOST;
    base.multicast_ip = Ipv4Addr::new(239, 255, 102, round);
    base.multicast_port = 47290;
    base.crypto_key = Some(KEY.to_string());
    base.cluster_name = format!("t11-bench-{round}");
    base.daemon_sleep = 0.2;
    base.cache_pulse = 2.0;
    base.cache_ttl = 0.0;
    base.cache_max = 1_000_000;
    base.cache_size = 1 << 30;
    (0..n)
        .map(|i| {
            let mut c = base.clone();
            if unicast {
                c.transport = TransportKind::Unicast;
                c.bind_port = Some(47270 + i as u16);
                c.peers = vec![format!("127.0.0.1:{}", 47270)];
            }
            c
        })
        .collect()
}

fn start(cfgs: Vec<Config>) -> Vec<Node> {
    let n = cfgs.len();
    let nodes: Vec<Node> = cfgs
        .into_iter()
        .map(|c| Node::start(c).expect("node starts"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.iter().any(|x| x.members().len() + 1 < n) {
        assert!(Instant::now() < deadline, "membership did not form");
        std::thread::sleep(Duration::from_millis(10));
    }
    nodes
}

fn pct(v: &[u64], q: f64) -> u64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn lag(nodes: &[Node]) -> (u64, u64) {
    let a = nodes[0].cache::<u32, u64>("lag").unwrap();
    let b = nodes[nodes.len() - 1].cache::<u32, u64>("lag").unwrap();
    let mut samples = Vec::new();
    for i in 0..600u64 {
        let key = (i % 100) as u32;
        let t0 = Instant::now();
        a.insert(key, i).unwrap();
        while b.get(&key) != Some(i) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::yield_now();
        }
        if i >= 100 {
            samples.push(t0.elapsed().as_micros() as u64);
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    samples.sort_unstable();
    (pct(&samples, 0.5), pct(&samples, 0.99))
}

fn run(unicast: bool, n: usize, round: u8) {
    let secs: f64 = std::env::var("MCCACHE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rate: f64 = std::env::var("MCCACHE_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000.0);
    let nodes = start(configs(unicast, n, round));
    let (p50, p99) = lag(&nodes);
    let caches: Vec<_> = nodes
        .iter()
        .map(|x| x.cache::<u32, u64>("tput").unwrap())
        .collect();
    let rx = |x: &Node| {
        let m = x.network_metrics();
        m.changes_applied + m.changes_stale
    };
    let received0: u64 = nodes.iter().map(rx).sum();
    let writes = AtomicU64::new(0);
    let per_node = rate / n as f64;
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        for (i, c) in caches.iter().enumerate() {
            let writes = &writes;
            s.spawn(move || {
                let mut done = 0u64;
                let mut x = i as u64 + 1;
                while Instant::now() < stop {
                    let due = t0 + Duration::from_secs_f64(done as f64 / per_node);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    for _ in 0..16 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        c.insert((x % 10_000) as u32, x).unwrap();
                        done += 1;
                    }
                }
                writes.fetch_add(done, Ordering::Relaxed);
            });
        }
    });
    let wrote = t0.elapsed().as_secs_f64();
    let received: u64 = nodes.iter().map(rx).sum::<u64>() - received0;
    let q0 = Instant::now();
    let mut identical = false;
    while q0.elapsed() < Duration::from_secs(30) {
        let sums: Vec<u64> = caches.iter().map(|c| c.checksum()).collect();
        if sums.windows(2).all(|w| w[0] == w[1]) {
            identical = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let quiesce = q0.elapsed();
    let m: Vec<_> = nodes.iter().map(|x| x.network_metrics()).collect();
    println!(
        "{:<9} {n} nodes: lag p50 {p50} µs p99 {p99} µs | offered {rate:.0}/s: wrote {:.0}/s, received {:.0} changes/s over all nodes, \
         overflow {}, retransmits {}, identical {identical} {} ms after the writers stop",
        if unicast { "unicast" } else { "multicast" },
        writes.load(Ordering::Relaxed) as f64 / wrote,
        received as f64 / wrote,
        m.iter().map(|x| x.outbound_overflow).sum::<u64>(),
        m.iter().map(|x| x.retransmits_served).sum::<u64>(),
        quiesce.as_millis(),
    );
    for x in nodes {
        x.shutdown();
    }
}

fn main() {
    // `cargo test --benches` runs this in test mode: keep it short.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let mut round = 1;
    for n in [3, 9] {
        for unicast in [false, true] {
            run(unicast, n, round);
            round += 1;
        }
    }
}
