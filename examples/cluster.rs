//! N mccache nodes in one process on loopback, a mixed workload, and a convergence report.
//!
//! ```text
//! cargo run --release --example cluster -- --nodes 3 --seconds 5
//! cargo run --release --example cluster -- --nodes 3 --seconds 5 --json
//! ```
//!
//! Every node runs a writer thread (inserts, updates, deletes and reads over shared keys),
//! paced at 10,000 writes/s by default (`--rate N`; `--rate 0` writes flat out).
//! Values carry the writer's send time; each node's change listener measures, for every remote
//! change it applies, how long after the write it arrived (replication lag). After the workload
//! the demo waits for the caches to quiesce and prints per-node checksums, whether they
//! converged, and the lag percentiles.
//!
//! Multicast leaves through 127.0.0.1 only, on a random admin-scoped group and port.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mccache::{ChangeKind, Config, Node, Origin};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Value {
    writer: u16,
    sent_us: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

struct Args {
    nodes: usize,
    seconds: f64,
    keys: u32,
    json: bool,
    rate: Option<f64>,
    tantrum: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 3,
        seconds: 5.0,
        keys: 10_000,
        json: false,
        // Paced below what this 2-core machine's receivers apply, so the lag shown means
        // something; `--rate 0` writes flat out.
        rate: Some(10_000.0),
        tantrum: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--nodes" => {
                a.nodes = val("--nodes")?
                    .parse()
                    .map_err(|e| format!("--nodes: {e}"))?
            }
            "--seconds" => {
                a.seconds = val("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--keys" => a.keys = val("--keys")?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--rate" => {
                let r: f64 = val("--rate")?.parse().map_err(|e| format!("--rate: {e}"))?;
                a.rate = (r > 0.0).then_some(r);
            }
            "--tantrum" => {
                a.tantrum = val("--tantrum")?
                    .parse()
                    .map_err(|e| format!("--tantrum: {e}"))?
            }
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "usage: cluster [--nodes N] [--seconds S] [--keys K] [--rate WRITES_PER_SEC_PER_NODE (default 10000, 0 = flat out)] [--tantrum PERCENT_DROPPED] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if a.nodes < 1 || a.nodes > 20 {
        return Err("--nodes must be 1..=20".into());
    }
    Ok(a)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cluster: {e}");
            std::process::exit(2);
        }
    };
    let mut rng = rand::rng();
    let mut config = Config::default();
    config.interface = Ipv4Addr::LOCALHOST;
    config.multicast_ip = Ipv4Addr::new(
        239,
        255,
        rng.random_range(100..200),
        rng.random_range(1..250),
    );
    config.multicast_port = rng.random_range(20_000..60_000);
    config.crypto_key = Some(mccache::generate_key());
    config.cluster_name = format!("demo-{}", std::process::id());
    config.daemon_sleep = 0.2;
    config.cache_pulse = 1.0;
    config.cache_ttl = 0.0;
    config.cache_max = 1_000_000;
    config.cache_size = 1 << 30;
    config.monkey_tantrum = args.tantrum;
    let base = Instant::now();
    let now_us = move || base.elapsed().as_micros() as u64;
    let nodes: Vec<Node> = (0..args.nodes)
        .map(|i| {
            Node::start({
                let mut c = config.clone();
                c.node_name = Some(format!("node{i}"));
                c
            })
            .expect("node starts")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes.iter().any(|n| n.members().len() + 1 < args.nodes) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lags: Arc<Mutex<Vec<u64>>> = Arc::default();
    let caches: Vec<_> = nodes
        .iter()
        .map(|n| {
            let c = n.cache::<u32, Value>("demo").expect("cache opens");
            let lags = lags.clone();
            let reader = c.clone();
            // Listeners run after the store's locks are released, so they may read the cache.
            c.on_change(move |e| {
                if matches!(e.origin, Origin::Remote(_))
                    && matches!(e.kind, ChangeKind::Insert | ChangeKind::Update)
                {
                    if let Some(v) = reader.get(&e.key) {
                        lags.lock().push(now_us().saturating_sub(v.sent_us));
                    }
                }
            });
            c
        })
        .collect();

    let ops = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs_f64(args.seconds);
    if !args.json {
        println!(
            "{} nodes on loopback, {}s of mixed workload over {} keys ...",
            args.nodes, args.seconds, args.keys
        );
    }
    std::thread::scope(|s| {
        for (i, c) in caches.iter().enumerate() {
            let (ops, writes) = (ops.clone(), writes.clone());
            let rate = args.rate;
            let keys = args.keys;
            s.spawn(move || {
                let mut rng = rand::rng();
                let mut n = 0u64;
                let started = Instant::now();
                while Instant::now() < stop_at {
                    if let Some(r) = rate {
                        let due = started + Duration::from_secs_f64(n as f64 / r);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let key = rng.random_range(0..keys);
                    match rng.random_range(0..100) {
                        0..=54 => {
                            let _ = c.get(&key);
                        }
                        55..=94 => {
                            let len = if rng.random_bool(0.01) { 4_000 } else { 32 };
                            let v = Value {
                                writer: i as u16,
                                sent_us: now_us(),
                                payload: vec![i as u8; len],
                            };
                            c.insert(key, v).expect("insert");
                            n += 1;
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            c.remove(&key).expect("remove");
                            n += 1;
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if !args.json {
            let mut last = 0;
            while Instant::now() < stop_at {
                std::thread::sleep(
                    Duration::from_millis(1000)
                        .min(stop_at.saturating_duration_since(Instant::now())),
                );
                let w = writes.load(Ordering::Relaxed);
                println!("  {:>9} replicated writes/s", w - last);
                last = w;
            }
        }
    });
    let elapsed = args.seconds;

    // Quiesce: wait (bounded) until every node holds the same checksum.
    let q_start = Instant::now();
    let mut converged = false;
    while q_start.elapsed() < Duration::from_secs(15) {
        let sums: Vec<u64> = caches.iter().map(|c| c.checksum()).collect();
        if sums.windows(2).all(|w| w[0] == w[1]) {
            converged = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let quiesce_ms = q_start.elapsed().as_millis() as u64;
    let mut l = lags.lock().clone();
    l.sort_unstable();
    let (p50, p99) = (percentile(&l, 0.50), percentile(&l, 0.99));
    let total_ops = ops.load(Ordering::Relaxed);
    let total_writes = writes.load(Ordering::Relaxed);
    let rows: Vec<serde_json::Value> = nodes
        .iter()
        .zip(&caches)
        .map(|(n, c)| {
            let m = n.network_metrics();
            serde_json::json!({
                "node": n.config().node_name.clone().unwrap_or_default(),
                "id": n.id().to_string(),
                "entries": c.len(),
                "checksum": format!("{:016x}", c.checksum()),
                "datagrams_sent": m.datagrams_sent,
                "retransmits_served": m.retransmits_served,
                "ae_repairs": m.ae_repairs,
                "overflow": m.outbound_overflow,
            })
        })
        .collect();
    if args.json {
        let out = serde_json::json!({
            "nodes": args.nodes,
            "seconds": elapsed,
            "ops": total_ops,
            "writes": total_writes,
            "writes_per_sec": (total_writes as f64 / elapsed).round(),
            "converged": converged,
            "quiesce_ms": quiesce_ms,
            "lag_p50_us": p50,
            "lag_p99_us": p99,
            "lag_samples": l.len(),
            "per_node": rows,
        });
        println!("{out}");
    } else {
        println!();
        println!(
            "{:<8} {:>9} {:>18} {:>10} {:>11} {:>10}",
            "node", "entries", "checksum", "datagrams", "retransmits", "repairs"
        );
        for r in &rows {
            println!(
                "{:<8} {:>9} {:>18} {:>10} {:>11} {:>10}",
                r["node"].as_str().unwrap_or(""),
                r["entries"].to_string(),
                r["checksum"].as_str().unwrap_or(""),
                r["datagrams_sent"].to_string(),
                r["retransmits_served"].to_string(),
                r["ae_repairs"].to_string()
            );
        }
        println!();
        println!(
            "ops {total_ops}, replicated writes {total_writes} ({:.0}/s), converged: {} (after {quiesce_ms} ms), lag p50 {p50} µs, p99 {p99} µs",
            total_writes as f64 / elapsed,
            if converged { "yes" } else { "NO" }
        );
    }
    for n in &nodes {
        n.shutdown();
    }
    if !converged {
        std::process::exit(1);
    }
}
