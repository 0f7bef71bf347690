//! Per-change cost budget (a bench binary that prints its figures, meant to run under
//! `valgrind --tool=callgrind` or `perf stat`, whose counts do not depend on machine load):
//!
//! Two nodes in this one process, on 127.0.0.1 multicast; node A writes `MCCACHE_BUDGET_CHANGES`
//! changes (default 20,000) to its own keys, in bursts of 1,000 that node B must have applied
//! before the next burst starts (so nothing overflows and nothing is repaired); it prints the
//! number of changes, so that instruction counts divide by it. Case: `MCCACHE_BUDGET_CASE` =
//! `small-plain`, `small-sealed` (default), `kib-plain` or `kib-sealed`.
//!
//! ```text
//! cargo bench --bench budget --no-run
//! valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/deps/budget-* --bench
//! callgrind_annotate --inclusive=yes cg.out | head -60
//! ```

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mccache::{Cache, Config, Node};

const BURST: u64 = 1_000;

fn config(sealed: bool, kib: bool) -> Config {
    let slot = u8::from(sealed) + 2 * u8::from(kib);
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = Ipv4Addr::new(239, 255, 98, slot);
    c.multicast_port = 47850 + u16::from(slot);
    c.crypto_key = sealed.then(mccache::generate_key);
    c.cluster_name = format!("budget-{slot}");
    c.daemon_sleep = 0.2;
    // No anti-entropy pulse within a run: under callgrind a run lasts a minute or more, and a
    // pulse would be counted as part of the changes.
    c.cache_pulse = 3600.0;
    c.cache_ttl = 0.0;
    c.cache_max = 1_000_000;
    c.cache_size = 1 << 30;
    c
}

fn start(cfg: &Config) -> (Node, Node) {
    let a = Node::start(cfg.clone()).expect("node A starts");
    let b = Node::start(cfg.clone()).expect("node B starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.members().is_empty() || b.members().is_empty() {
        assert!(Instant::now() < deadline, "membership did not form");
        std::thread::sleep(Duration::from_millis(10));
    }
    (a, b)
}

/// Writes `n` changes on `a` in bursts, each applied on `b` before the next; returns the time.
fn push<V: Clone + mccache::CacheValue + PartialEq>(
    a: &Cache<u64, V>,
    b: &Cache<u64, V>,
    n: u64,
    value: impl Fn(u64) -> V,
) -> Duration {
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + BURST).min(n);
        for k in i..end {
            a.insert(k, value(k)).expect("insert");
        }
        let last = end - 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while b.get(&last) != Some(value(last)) {
            assert!(Instant::now() < deadline, "change {last} never arrived");
            std::thread::sleep(Duration::from_micros(200));
        }
        i = end;
    }
    t0.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` (criterion's protocol): nothing to list
    }
    let n: u64 = std::env::var("MCCACHE_BUDGET_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let case = std::env::var("MCCACHE_BUDGET_CASE").unwrap_or_else(|_| "small-sealed".into());
    let (sealed, kib) = match case.as_str() {
        "small-plain" => (false, false),
        "small-sealed" => (true, false),
        "kib-plain" => (false, true),
        "kib-sealed" => (true, true),
        other => panic!("unknown MCCACHE_BUDGET_CASE {other:?}"),
    };
    let (na, nb) = start(&config(sealed, kib));
    let took = if kib {
        let (a, b) = (na.cache("b").unwrap(), nb.cache("b").unwrap());
        let make = |k: u64| {
            let mut v = vec![0x5a; 1024];
            v[..8].copy_from_slice(&k.to_le_bytes());
            serde_bytes::ByteBuf::from(v)
        };
        push(&a, &b, n, make)
    } else {
        let (a, b) = (na.cache("b").unwrap(), nb.cache("b").unwrap());
        push::<u64>(&a, &b, n, |k| k.wrapping_mul(0x9e37_79b9))
    };
    let m = nb.network_metrics();
    println!(
        "budget {case}: {n} changes A → B in {:.3} s; B applied {}, received {} datagrams",
        took.as_secs_f64(),
        m.changes_applied,
        m.datagrams_received
    );
    na.shutdown();
    nb.shutdown();
}
