//! `mccache node`: one cluster node running the ancestor's stress workload, then a bounded
//! wait for the cluster to quiesce and a JSON result.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mccache::{Config, Node};

use crate::result::{CHECKSUM_SAMPLE_MS, ChecksumChange, NodeResult, Settings};
use crate::workload::{self, CACHE, Counters, Lag, Mix, Sampler, Spec, Val};

/// The cache where each node marks the end of its workload (node id → done ms).
const DONE_CACHE: &str = "_done";

/// Arguments of `mccache node`. Every knob also reads the ancestor's `TEST_*` variable; the
/// node's own configuration comes from `MCCACHE_*` variables (and `mccache.toml`).
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Keys per key space: shared `K000-0..=N`, private `P<tag>-0..=N`.
    #[arg(long, env = "TEST_KEY_ENTRIES", default_value_t = 200)]
    pub keys: u32,
    /// Seconds between operations (skewed ±35 %, on a schedule); 0 = flat out.
    #[arg(long, env = "TEST_APERTURE", default_value_t = 0.01)]
    pub aperture: f64,
    /// Add the ancestor's breathers (one op in 21 pauses 0.15–0.3 s), for side-by-side runs
    /// with McCache; without it the aperture alone sets the pace.
    #[arg(long, env = "TEST_BREATHER")]
    pub breather: bool,
    /// Value sizes.
    #[arg(long, env = "TEST_DATA_SIZE_MIX", value_enum, default_value_t = Mix::Small)]
    pub mix: Mix,
    /// Seconds of workload.
    #[arg(long, env = "TEST_RUN_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Random seed (default: random). Also the default tag.
    #[arg(long, env = "TEST_RANDOM_SEED")]
    pub seed: Option<u64>,
    /// Names this node's private keys (default: the seed, else the interface's last octet).
    #[arg(long, env = "TEST_NODE_TAG")]
    pub tag: Option<u32>,
    /// Percent of datagrams dropped on purpose (sets `monkey_tantrum`).
    #[arg(long, env = "TEST_MONKEY_TANTRUM")]
    pub tantrum: Option<f64>,
    /// Crypto key, base64 of 32 bytes (sets `crypto_key`; see `mccache keygen`).
    #[arg(long, env = "TEST_CRYPTO_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Nodes in the cluster: the workload waits for this many to join (unless `--start-with`
    /// says fewer), and the end waits for this many to finish.
    #[arg(long, env = "TEST_CLUSTER_SIZE", default_value_t = 1)]
    pub peers: usize,
    /// Nodes (this one included) the workload waits for before it starts; 0 (the default):
    /// all of `--peers`. Fewer lets later nodes join a cluster that is already writing.
    #[arg(long, env = "TEST_START_WITH", default_value_t = 0)]
    pub start_with: usize,
    /// Seconds to wait for the peers to join before starting anyway.
    #[arg(long, env = "TEST_JOIN_TIMEOUT", default_value_t = 30.0)]
    pub join_timeout: f64,
    /// Seconds to wait for the cluster to quiesce at the end.
    #[arg(long, env = "TEST_QUIESCE_TIMEOUT", default_value_t = 60.0)]
    pub quiesce_timeout: f64,
    /// Use the address of the interface holding the default route as `interface`.
    #[arg(long)]
    pub interface_from_route: bool,
    /// Where to write the JSON result (default: stdout).
    #[arg(long, env = "TEST_OUT")]
    pub out: Option<PathBuf>,
    /// Serve the node's metrics in Prometheus text format over HTTP at this address, for
    /// example `127.0.0.1:9464` (path `/metrics`, or any path).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Installs the Prometheus exporter as the `metrics` recorder, listening on `addr`.
pub fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    eprintln!("mccache node: metrics at http://{addr}/metrics");
    Ok(())
}

/// Settings the stress run needs that differ from the library defaults, applied unless the
/// environment sets them: no capacity or byte evictions and no expiry during a run, because
/// those are local decisions that would make the nodes' contents differ.
const RUN_DEFAULTS: &[&str] = &[
    "MCCACHE_CACHE_MAX",
    "MCCACHE_CACHE_SIZE",
    "MCCACHE_CACHE_TTL",
];

fn env_sets(name: &str) -> bool {
    std::env::vars_os().any(|(k, _)| k.to_string_lossy().eq_ignore_ascii_case(name))
}

/// The node configuration: `Config::load()`, run defaults, then the flags.
pub fn config(args: &NodeArgs) -> Result<Config, String> {
    let mut config = Config::load().map_err(|e| crate::chain(&e))?;
    if !env_sets(RUN_DEFAULTS[0]) {
        config.cache_max = 1_000_000;
    }
    if !env_sets(RUN_DEFAULTS[1]) {
        config.cache_size = 1 << 30;
    }
    if !env_sets(RUN_DEFAULTS[2]) {
        config.cache_ttl = 0.0;
    }
    if let Some(k) = &args.key {
        config.crypto_key = Some(k.clone());
    }
    if let Some(t) = args.tantrum {
        config.monkey_tantrum = t;
    }
    if args.interface_from_route {
        config.interface = crate::route::interface_from_route(config.multicast_ip)?;
    }
    config.validate().map_err(|e| crate::chain(&e))?;
    Ok(config)
}

/// Runs `mccache node`.
pub fn main(args: NodeArgs) -> Result<(), String> {
    if !(args.duration.is_finite() && args.duration >= 0.0) {
        return Err(format!(
            "--duration must be >= 0 seconds, got {}",
            args.duration
        ));
    }
    if !(args.aperture.is_finite() && args.aperture >= 0.0) {
        return Err(format!(
            "--aperture must be >= 0 seconds, got {}",
            args.aperture
        ));
    }
    let config = config(&args)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let tag = args.tag.unwrap_or_else(|| match args.seed {
        Some(s) => (s % 1_000_000) as u32,
        None => u32::from(config.interface.octets()[3]),
    });
    let interactive = std::io::stderr().is_terminal();
    eprintln!(
        "mccache node: interface {} group {} tag {tag} seed {seed}, {}",
        config.interface,
        config.group(),
        if config.crypto_key.is_some() || !config.crypto_keys.is_empty() {
            "sealed"
        } else {
            "PLAINTEXT (no crypto_key: see the warning)"
        }
    );
    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr)?;
    }
    let node_started = Instant::now();
    let node =
        Node::start(config.clone()).map_err(|e| format!("node start: {}", crate::chain(&e)))?;
    let cache = node
        .cache::<String, Val>(CACHE)
        .map_err(|e| e.to_string())?;
    let done = node
        .cache::<String, u64>(DONE_CACHE)
        .map_err(|e| e.to_string())?;
    let lag = Arc::new(Lag::default());
    lag.listen(&cache);

    let join_deadline = Instant::now() + Duration::from_secs_f64(args.join_timeout);
    let start_with = match args.start_with {
        0 => args.peers,
        n => n.min(args.peers),
    };
    while node.members().len() + 1 < start_with && Instant::now() < join_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    match node.wait_ready(join_deadline.saturating_duration_since(Instant::now())) {
        mccache::Readiness::NotReady => {
            eprintln!("mccache node: not ready after the join timeout; starting anyway")
        }
        mccache::Readiness::Alone if start_with > 1 => {
            let h = node.health();
            eprintln!(
                "mccache node: no peer found (expected {}); datagrams that could not be opened: {:?}",
                start_with - 1,
                h.unopened
            );
        }
        _ => {}
    }
    let ready_ms = node_started.elapsed().as_millis() as u64;
    eprintln!(
        "mccache node: {} peer(s); running (ready {ready_ms} ms after start)",
        node.members().len()
    );

    let spec = Spec {
        keys: args.keys,
        aperture: args.aperture,
        mix: args.mix,
        breather: args.breather,
        duration: Duration::from_secs_f64(args.duration),
        seed,
        tag,
    };
    let counters = Counters::default();
    let sampler = Sampler::default();
    let running = AtomicBool::new(true);
    let stop = AtomicBool::new(false);
    let started_ms = workload::now_ms();
    std::thread::scope(|s| {
        s.spawn(|| {
            let bar = crate::progress::bar(interactive, args.duration);
            let start = Instant::now();
            let mut next = start + Duration::from_secs(1);
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(
                    Duration::from_millis(50).min(next.saturating_duration_since(Instant::now())),
                );
                if Instant::now() >= next {
                    next += Duration::from_secs(1);
                    sampler.tick(&counters, &lag);
                    let o = counters.snapshot();
                    bar.set_position(start.elapsed().as_secs());
                    bar.set_message(format!(
                        "{} ops, {} writes, {} peers",
                        o.total(),
                        o.writes(),
                        node.members().len()
                    ));
                }
            }
            bar.finish_and_clear();
        });
        workload::run(&cache, &spec, &counters, &stop);
        running.store(false, Ordering::Relaxed);
    });
    // The last partial second.
    sampler.tick(&counters, &lag);
    let done_ms = workload::now_ms();
    let peers_at_done = node.members().len();
    let ops = counters.snapshot();
    eprintln!(
        "mccache node: done: {} ops ({} writes); waiting for quiesce",
        ops.total(),
        ops.writes()
    );
    done.insert(node.id().to_string(), done_ms)
        .map_err(|e| e.to_string())?;

    // While the quiesce's checks ask the peers, a thread reads this node's own checksum.
    let quiescing = AtomicBool::new(true);
    let (identical_ms, checksums) = std::thread::scope(|s| {
        let sampler = s.spawn(|| checksum_changes(&cache, &quiescing));
        let identical_ms = quiesce(
            &node,
            &done,
            args.peers,
            Duration::from_secs_f64(args.quiesce_timeout),
        );
        quiescing.store(false, Ordering::Relaxed);
        (identical_ms, sampler.join().unwrap_or_default())
    });
    let quiesced = identical_ms.is_some();
    if !quiesced {
        eprintln!(
            "mccache node: the cluster did not quiesce within {} s",
            args.quiesce_timeout
        );
    }
    let mut caches = BTreeMap::new();
    caches.insert(CACHE.to_string(), workload::cache_state(&cache));
    let result = NodeResult {
        node_id: node.id().to_string(),
        node_name: config.node_name_or_default(),
        tag,
        settings: Settings {
            keys: args.keys,
            aperture: args.aperture,
            mix: args.mix.as_str().to_string(),
            duration: args.duration,
            seed,
            tantrum: config.monkey_tantrum,
            breather: args.breather,
        },
        ready_ms,
        started_ms,
        done_ms,
        finished_ms: workload::now_ms(),
        quiesced,
        identical_ms,
        checksums,
        peers_at_done,
        ops,
        caches,
        network: node.network_metrics(),
        lag: lag.summary(),
        listener_reads: lag.reads.load(Ordering::Relaxed),
        samples: sampler.samples(),
    };
    node.shutdown();
    let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
    match &args.out {
        Some(path) => std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => println!("{json}"),
    }
    eprintln!(
        "mccache node: {} entries, checksum {:016x}, lag p50 {} µs p99 {} µs, quiesced {quiesced}",
        result.caches[CACHE].entries,
        result.caches[CACHE].checksum,
        result.lag.p50_us,
        result.lag.p99_us
    );
    Ok(())
}

/// This node's checksum of `cache`, read every [`CHECKSUM_SAMPLE_MS`] while `running`: each
/// new value with the wall clock of its first reading.
fn checksum_changes(
    cache: &mccache::Cache<String, Val>,
    running: &AtomicBool,
) -> Vec<ChecksumChange> {
    let mut out: Vec<ChecksumChange> = Vec::new();
    loop {
        // The last reading is taken after the quiesce ended, so the final value is recorded.
        let last = !running.load(Ordering::Relaxed);
        let checksum = cache.checksum();
        if out.last().is_none_or(|c| c.checksum != checksum) {
            out.push(ChecksumChange {
                at_ms: workload::now_ms(),
                checksum,
            });
        }
        if last {
            return out;
        }
        std::thread::sleep(Duration::from_millis(CHECKSUM_SAMPLE_MS));
    }
}

/// Waits (bounded) until every node has finished its workload (at least `peers` done marks,
/// one from every current member), nothing is in flight here, and every member answers the
/// same checksums for both caches, twice in a row. Returns the wall clock at the end of the
/// first of those two checks (the caches were identical by then), `None` on timeout.
fn quiesce(
    node: &Node,
    done: &mccache::Cache<String, u64>,
    peers: usize,
    timeout: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    // When the current run of agreeing checks began.
    let mut agreed_since: Option<u64> = None;
    let mut agreed = 0;
    let start = Instant::now();
    let mut waiting_on = String::new();
    while Instant::now() < deadline {
        let members = node.members();
        let all_done = done.len() >= peers
            && members
                .iter()
                .all(|m| done.get(&m.id.to_string()).is_some());
        let idle = all_done && workload::idle(node);
        let ok = idle
            && [CACHE, DONE_CACHE].iter().all(|name| {
                node.get_cluster_checksum(name, None::<&String>, Duration::from_secs(1))
                    .is_ok_and(|sums| {
                        sums.len() == members.len() + 1
                            && sums.values().all(|s| s.is_some() && *s == sums[&node.id()])
                    })
            });
        // What the quiesce waits on, in the node's log each time it changes.
        let waiting = match (all_done, idle, ok) {
            (false, _, _) => "done marks".to_string(),
            (true, false, _) => {
                let m = node.network_metrics();
                format!(
                    "traffic in flight ({} queued, {} reassemblies, peer lag {:?})",
                    m.outbound_queue, m.reassemblies_in_progress, m.peer_lag
                )
            }
            (true, true, false) => "checksums".to_string(),
            (true, true, true) => String::new(),
        };
        if waiting != waiting_on {
            eprintln!(
                "mccache node: quiesce at +{} ms: {}",
                start.elapsed().as_millis(),
                if waiting.is_empty() {
                    "agreed"
                } else {
                    &waiting
                }
            );
            waiting_on = waiting;
        }
        if ok {
            // When this check ended: every answer had come, each computed before then.
            agreed_since.get_or_insert(workload::now_ms());
            agreed += 1;
        } else {
            agreed_since = None;
            agreed = 0;
        }
        if agreed >= 2 {
            return agreed_since;
        }
        std::thread::sleep(QUIESCE_POLL);
    }
    None
}

/// How often [`quiesce`] checks: the resolution of `identical_ms`.
const QUIESCE_POLL: Duration = Duration::from_millis(50);
