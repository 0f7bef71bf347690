//! `mccache demo`: N nodes in this process on loopback, the stress workload on each, live
//! progress, and a convergence table at the end.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mccache::{Cache, Config, Node};

use crate::workload::{self, CACHE, Counters, Lag, Mix, Spec, Val};

/// Arguments of `mccache demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Nodes to start (1..=64).
    #[arg(short = 'n', long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Seconds of workload.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// Keys per key space.
    #[arg(long, default_value_t = 200)]
    pub keys: u32,
    /// Seconds between operations on each node (on a schedule); 0 = flat out.
    #[arg(long, default_value_t = 0.002)]
    pub aperture: f64,
    /// Add the ancestor's breathers (one op in 21 pauses 0.15–0.3 s).
    #[arg(long)]
    pub breather: bool,
    /// Value sizes.
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    pub mix: Mix,
    /// Multicast group (default: a random 239.255.x.y).
    #[arg(long)]
    pub group: Option<Ipv4Addr>,
    /// UDP port (default: random in 40000..60000).
    #[arg(long)]
    pub port: Option<u16>,
    /// Percent of datagrams dropped on purpose.
    #[arg(long, default_value_t = 0.0)]
    pub tantrum: f64,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object with the results instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A loopback node configuration for the demo (and for tests of it).
pub fn loopback_config(group: Ipv4Addr, port: u16, key: &str, name: String) -> Config {
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = group;
    c.multicast_port = port;
    c.daemon_sleep = 0.2;
    c.cache_pulse = 1.0;
    c.cache_max = 1_000_000;
    c.cache_size = 1 << 30;
    c.cache_ttl = 0.0;
    c.crypto_key = Some(key.to_string());
    c.cluster_name = format!("demo-{group}-{port}");
    c.node_name = Some(name);
    c
}

struct Member {
    node: Node,
    cache: Cache<String, Val>,
    lag: Arc<Lag>,
    counters: Counters,
}

/// Runs `mccache demo`.
pub fn main(args: DemoArgs) -> Result<(), String> {
    if !(args.duration.is_finite() && args.duration >= 0.0) {
        return Err(format!(
            "--duration must be >= 0 seconds, got {}",
            args.duration
        ));
    }
    let group = args.group.unwrap_or_else(|| {
        Ipv4Addr::new(
            239,
            255,
            rand::random_range(0..=255),
            rand::random_range(1..=254),
        )
    });
    if !group.is_multicast() {
        return Err(format!("--group {group} is not a multicast address"));
    }
    let port = args
        .port
        .unwrap_or_else(|| rand::random_range(40_000..60_000));
    let key = mccache::generate_key();
    let seed = args.seed.unwrap_or_else(rand::random);
    let json = args.json;
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    say(format!(
        "mccache demo: {} nodes in this process on 127.0.0.1, group {group}:{port}, sealed with a fresh key, {} s of McCache's workload, one op every {} ms per node{}, {} values",
        args.nodes,
        args.duration,
        args.aperture * 1e3,
        if args.breather { " with breathers" } else { "" },
        args.mix.as_str()
    ));
    let mut members = Vec::new();
    for i in 0..args.nodes {
        let config = loopback_config(group, port, &key, format!("demo-{}", i + 1));
        let node =
            Node::start(config).map_err(|e| format!("node {}: {}", i + 1, crate::chain(&e)))?;
        let cache = node
            .cache::<String, Val>(CACHE)
            .map_err(|e| e.to_string())?;
        let lag = Arc::new(Lag::default());
        lag.listen(&cache);
        members.push(Member {
            node,
            cache,
            lag,
            counters: Counters::default(),
        });
    }
    let n = members.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while members.iter().any(|m| m.node.members().len() + 1 < n) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ready = true;
    for m in &members {
        ready &= m
            .node
            .wait_ready(deadline.saturating_duration_since(Instant::now()))
            .is_ready();
    }
    let formed = members.iter().all(|m| m.node.members().len() + 1 == n);
    say(format!(
        "membership {}{}",
        if formed {
            "formed"
        } else {
            "INCOMPLETE after 10 s"
        },
        if ready {
            ""
        } else {
            " (state transfer not done)"
        }
    ));

    let interactive = !json && std::io::stdout().is_terminal();
    let stop = AtomicBool::new(false);
    let running = AtomicBool::new(true);
    let started = Instant::now();
    // The workload's own duration: measured when the workers end, not when the progress
    // display (which may wait for a busy network thread) notices.
    let ran = std::thread::scope(|s| {
        let workers: Vec<_> = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let spec = Spec {
                    keys: args.keys,
                    aperture: args.aperture,
                    mix: args.mix,
                    breather: args.breather,
                    duration: Duration::from_secs_f64(args.duration),
                    seed: seed.wrapping_add(i as u64),
                    tag: i as u32 + 1,
                };
                let stop = &stop;
                s.spawn(move || workload::run(&m.cache, &spec, &m.counters, stop))
            })
            .collect();
        let members = &members;
        let running = &running;
        s.spawn(move || {
            if !interactive {
                return;
            }
            let bar = crate::progress::bar(interactive, args.duration);
            let mut last_ops = 0;
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let ops: u64 = members.iter().map(|m| m.counters.snapshot().total()).sum();
                let p99 = members
                    .iter()
                    .map(|m| m.node.network_metrics().apply_lag_p99_us)
                    .max()
                    .unwrap_or(0);
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!(
                    "{ops} ops ({}/s), apply lag p99 {:.2} ms",
                    (ops - last_ops) * 4,
                    p99 as f64 / 1e3
                ));
                last_ops = ops;
            }
            bar.finish_and_clear();
        });
        for w in workers {
            // A panicking worker is a bug worth seeing: re-raise it.
            if let Err(p) = w.join() {
                std::panic::resume_unwind(p);
            }
        }
        running.store(false, Ordering::Relaxed);
        started.elapsed()
    });

    let converge_start = Instant::now();
    let converged = wait_until(Duration::from_secs(30), || {
        members.iter().all(|m| workload::idle(&m.node))
            && members
                .windows(2)
                .all(|w| w[0].cache.checksum() == w[1].cache.checksum())
    });
    let converge_time = converge_start.elapsed();

    let sums: Vec<u64> = members.iter().map(|m| m.cache.checksum()).collect();
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &sums {
        *votes.entry(*s).or_default() += 1;
    }
    let majority = votes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| *s)
        .unwrap_or(0);
    let ms = |us: u64| us as f64 / 1e3;
    let mut rows = Vec::new();
    let mut total_ops = 0;
    let mut total_writes = 0;
    for (i, m) in members.iter().enumerate() {
        let o = m.counters.snapshot();
        total_ops += o.total();
        total_writes += o.writes();
        let lag = m.lag.summary();
        let net = m.node.network_metrics();
        rows.push(serde_json::json!({
            "node": format!("demo-{}", i + 1),
            "ops": o.total(),
            "writes": o.writes(),
            "entries": m.cache.len(),
            "checksum": format!("{:016x}", sums[i]),
            "agrees": sums[i] == majority,
            "lag_p50_ms": ms(lag.p50_us),
            "lag_p99_ms": ms(lag.p99_us),
            "retransmits": net.retransmits_served,
            "repairs": net.ae_repairs,
        }));
    }
    let secs = ran.as_secs_f64().max(1e-9);
    let mut all_lag: Vec<u64> = Vec::new();
    for m in &members {
        all_lag.extend(m.lag.samples());
    }
    all_lag.sort_unstable();
    let pct = |q: f64| {
        all_lag
            .get(((all_lag.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    if json {
        let out = serde_json::json!({
            "nodes": n,
            "seconds": ran.as_secs_f64(),
            "ops": total_ops,
            "writes": total_writes,
            "ops_per_sec": (total_ops as f64 / secs).round(),
            "converged": converged,
            "converged_after_ms": converge_time.as_millis() as u64,
            "lag_p50_ms": ms(pct(0.50)),
            "lag_p99_ms": ms(pct(0.99)),
            "lag_samples": all_lag.len(),
            "per_node": rows,
        });
        println!("{out}");
    } else {
        println!(
            "\n{:<8} {:>8} {:>8} {:>8} {:>17} {:>6} {:>12} {:>12} {:>12} {:>8}",
            "node",
            "ops",
            "writes",
            "entries",
            "checksum",
            "agrees",
            "lag p50",
            "lag p99",
            "retransmits",
            "repairs"
        );
        for r in &rows {
            println!(
                "{:<8} {:>8} {:>8} {:>8} {:>17} {:>6} {:>9.2} ms {:>9.2} ms {:>12} {:>8}",
                r["node"].as_str().unwrap_or(""),
                r["ops"].as_u64().unwrap_or(0),
                r["writes"].as_u64().unwrap_or(0),
                r["entries"].as_u64().unwrap_or(0),
                r["checksum"].as_str().unwrap_or(""),
                if r["agrees"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "NO"
                },
                r["lag_p50_ms"].as_f64().unwrap_or(0.0),
                r["lag_p99_ms"].as_f64().unwrap_or(0.0),
                r["retransmits"].as_u64().unwrap_or(0),
                r["repairs"].as_u64().unwrap_or(0)
            );
        }
        println!(
            "\nlag: from a write on one node until another node applied it. retransmits: datagrams a node\nsent again because a peer reported a gap (lost datagram); repairs: entries a node sent to fix a\npeer found different by the periodic checksum comparison (anti-entropy), e.g. after an overflow."
        );
        println!(
            "\n{total_ops} ops in {:.1} s ({:.0} ops/s, {total_writes} replicated writes); lag p50 {:.2} ms, p99 {:.2} ms; {} {:.2} s after the workload",
            ran.as_secs_f64(),
            total_ops as f64 / secs,
            ms(pct(0.50)),
            ms(pct(0.99)),
            if converged {
                "all caches identical"
            } else {
                "caches NOT identical"
            },
            converge_time.as_secs_f64()
        );
    }
    for m in &members {
        m.node.shutdown();
    }
    if converged {
        Ok(())
    } else {
        Err("the nodes did not converge within 30 s".into())
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
