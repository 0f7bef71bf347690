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
    /// Seconds between operations on each node.
    #[arg(long, default_value_t = 0.002)]
    pub aperture: f64,
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
}

/// A loopback node configuration for the demo (and for tests of it).
pub fn loopback_config(group: Ipv4Addr, port: u16, key: &str, name: String) -> Config {
    Config {
        interface: Ipv4Addr::LOCALHOST,
        multicast_ip: group,
        multicast_port: port,
        daemon_sleep: 0.2,
        cache_pulse: 1.0,
        cache_max: 1_000_000,
        cache_size: 1 << 30,
        cache_ttl: 0.0,
        crypto_key: Some(key.to_string()),
        cluster_name: format!("demo-{group}-{port}"),
        node_name: Some(name),
        ..Config::default()
    }
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
    println!(
        "mccache demo: {} nodes on 127.0.0.1, group {group}:{port}, {} s, aperture {} s, {} values",
        args.nodes,
        args.duration,
        args.aperture,
        args.mix.as_str()
    );
    let mut members = Vec::new();
    for i in 0..args.nodes {
        let config = loopback_config(group, port, &key, format!("demo-{}", i + 1));
        let node = Node::start(config).map_err(|e| format!("node {}: {e}", i + 1))?;
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
    for m in &members {
        m.node
            .wait_ready(deadline.saturating_duration_since(Instant::now()));
    }
    let formed = members.iter().all(|m| m.node.members().len() + 1 == n);
    println!(
        "membership {}",
        if formed {
            "formed"
        } else {
            "INCOMPLETE after 10 s"
        }
    );

    let interactive = std::io::stdout().is_terminal();
    let stop = AtomicBool::new(false);
    let running = AtomicBool::new(true);
    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let spec = Spec {
                    keys: args.keys,
                    aperture: args.aperture,
                    mix: args.mix,
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
                    "{ops} ops ({}/s), apply lag p99 {p99} µs",
                    (ops - last_ops) * 4
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
    });
    let ran = started.elapsed();

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
    println!(
        "\n{:<8} {:>9} {:>9} {:>8} {:>18} {:>10} {:>12} {:>12}",
        "node", "ops", "writes", "entries", "checksum", "converged", "lag p50 µs", "lag p99 µs"
    );
    let mut total_ops = 0;
    for (i, m) in members.iter().enumerate() {
        let o = m.counters.snapshot();
        total_ops += o.total();
        let lag = m.lag.summary();
        println!(
            "{:<8} {:>9} {:>9} {:>8} {:>18} {:>10} {:>12} {:>12}",
            format!("demo-{}", i + 1),
            o.total(),
            o.writes(),
            m.cache.len(),
            format!("{:016x}", sums[i]),
            if sums[i] == majority { "yes" } else { "no" },
            lag.p50_us,
            lag.p99_us
        );
    }
    println!(
        "\n{total_ops} ops in {:.1} s ({:.0} ops/s); {} in {:.2} s after the workload",
        ran.as_secs_f64(),
        total_ops as f64 / ran.as_secs_f64().max(1e-9),
        if converged {
            "converged"
        } else {
            "NOT converged"
        },
        converge_time.as_secs_f64()
    );
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
