//! Replication benchmark (a bench binary that prints its figures):
//!
//! 1. **Lag at low load**: insert on node A, spin until node B returns the new value; repeated
//!    2,000 times, one write in flight at a time. Reports p50/p99/max in microseconds.
//! 2. **Sustained throughput**: 3 nodes, one writer thread each, small values over 10,000 shared
//!    keys, flat out for `MCCACHE_BENCH_SECONDS` (default 5). Reports replicated mutations/s in
//!    aggregate, the time to quiesce, and whether the caches ended identical.
//!
//! `cargo bench --bench replication`. All traffic stays on 127.0.0.1.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mccache::{Config, Node};

fn config(group: u8, port: u16) -> Config {
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = Ipv4Addr::new(239, 255, 97, group);
    c.multicast_port = port;
    c.crypto_key = Some(mccache::generate_key());
    c.cluster_name = format!("bench-{group}");
    c.daemon_sleep = 0.2;
    c.cache_pulse = 2.0;
    c.cache_ttl = 0.0;
    c.cache_max = 1_000_000;
    c.cache_size = 1 << 30;
    c
}

fn start(n: usize, cfg: &Config) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|_| Node::start(cfg.clone()).expect("node starts"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|x| x.members().len() + 1 < n) {
        assert!(Instant::now() < deadline, "membership did not form");
        std::thread::sleep(Duration::from_millis(10));
    }
    nodes
}

fn pct(v: &[u64], q: f64) -> u64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn lag() {
    let nodes = start(2, &config(1, 47801));
    let a = nodes[0].cache::<u32, u64>("lag").unwrap();
    let b = nodes[1].cache::<u32, u64>("lag").unwrap();
    let mut samples = Vec::with_capacity(2000);
    for i in 0..2200u64 {
        let key = (i % 100) as u32;
        let t0 = Instant::now();
        a.insert(key, i).unwrap();
        loop {
            if b.get(&key) == Some(i) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(2) {
                break;
            }
            // Yield rather than spin: on a 2-core machine a spinning reader would take the core
            // the network threads need.
            std::thread::yield_now();
        }
        if i >= 200 {
            samples.push(t0.elapsed().as_micros() as u64);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    samples.sort_unstable();
    println!(
        "replication lag (insert on A until visible on B, 2 nodes, one write in flight): p50 {} µs, p99 {} µs, max {} µs ({} samples)",
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        samples[samples.len() - 1],
        samples.len()
    );
    for n in nodes {
        n.shutdown();
    }
}

/// 3 nodes, one writer each: flat out (`rate_per_node = None`) or paced.
fn throughput(rate_per_node: Option<f64>, group: u8, port: u16) {
    let secs: f64 = std::env::var("MCCACHE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let nodes = start(3, &config(group, port));
    let caches: Vec<_> = nodes
        .iter()
        .map(|n| n.cache::<u32, u64>("tput").unwrap())
        .collect();
    let writes = AtomicU64::new(0);
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        for (i, c) in caches.iter().enumerate() {
            let writes = &writes;
            s.spawn(move || {
                let mut n = 0u64;
                let mut x = i as u64 + 1;
                let started = Instant::now();
                while Instant::now() < stop {
                    if let Some(r) = rate_per_node {
                        let due = started + Duration::from_secs_f64(n as f64 / r);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    for _ in 0..64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = (x % 10_000) as u32;
                        if x % 20 == 0 {
                            c.remove(&key).unwrap();
                        } else {
                            c.insert(key, x).unwrap();
                        }
                        n += 1;
                    }
                }
                writes.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let total = writes.load(Ordering::Relaxed);
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
    let m: Vec<_> = nodes.iter().map(|n| n.network_metrics()).collect();
    println!(
        "sustained replication (3 nodes, {}, 10k keys, {secs} s): {:.0} replicated mutations/s in aggregate; \
         caches identical after quiesce: {identical} (quiesce took {} ms); retransmits served {}, anti-entropy repairs {}, overflow {}",
        match rate_per_node {
            Some(r) => format!("writers paced at {r:.0} writes/s each"),
            None => "writers flat out".to_string(),
        },
        total as f64 / secs,
        quiesce.as_millis(),
        m.iter().map(|x| x.retransmits_served).sum::<u64>(),
        m.iter().map(|x| x.ae_repairs).sum::<u64>(),
        m.iter().map(|x| x.outbound_overflow).sum::<u64>(),
    );
    for n in nodes {
        n.shutdown();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this in test mode: keep it short.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    lag();
    throughput(Some(40_000.0), 2, 47802);
    throughput(None, 3, 47803);
}
