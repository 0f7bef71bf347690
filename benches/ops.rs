//! A driver for instruction-count profiles (`valgrind --tool=callgrind`), which do not depend
//! on the machine's load: runs one operation a fixed number of times on one cache, after a
//! prefill, so two runs differ only in the cache.
//!
//! Run: `cargo bench --bench ops --no-run`, then
//! `valgrind --tool=callgrind <bench binary> <get_hit|get_hit_ttl|get_miss|insert|insert_ttl|insert_net> <mccache|quick_cache> [ops] [drain]`
//! and divide the instruction counts (`callgrind_annotate`) by `ops`.
//!
//! `get_hit_ttl` and `insert_ttl` are `get_hit` and `insert` on a cache with the default TTL (an
//! hour; quick_cache has none). `get_miss` reads keys that are not in the cache.
//!
//! `insert_net` runs one node on loopback with no peers and a queue that holds every change
//! (nothing overflows, whatever the scheduling), and prints how many changes were sent. With
//! `drain` it waits (at most 10 minutes) until the network thread has sent every change before
//! it exits, so that thread's count (`--separate-threads=yes`) covers all of them; without, the
//! wall time is the writer's alone (the process exits with changes still queued).

use std::hint::black_box;

const POP: u64 = 10_000;

type Get = Box<dyn Fn(u64) -> Option<u64>>;
type Insert = Box<dyn Fn(u64, u64)>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, cache, ..] = &args[..] else {
        eprintln!(
            "usage: ops <get_hit|get_hit_ttl|get_miss|insert|insert_ttl|insert_net> <mccache|quick_cache> [ops]"
        );
        return;
    };
    let ops: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let drain = args.get(3).is_some_and(|a| a == "drain");
    let reads = op.starts_with("get_");
    let misses = op == "get_miss";
    let cap = if reads { 2 * POP } else { POP } as usize;
    let (get, insert): (Get, Insert) = match cache.as_str() {
        "quick_cache" => {
            let c = std::sync::Arc::new(quick_cache::sync::Cache::<u64, u64>::new(cap));
            let c2 = c.clone();
            (
                Box::new(move |k| c.get(&k)),
                Box::new(move |k, v| c2.insert(k, v)),
            )
        }
        _ => {
            let mut config = mccache::Config::default();
            config.cache_ttl = if op.ends_with("_ttl") { 3600.0 } else { 0.0 };
            config.cache_max = cap;
            config.cache_size = 1 << 40;
            config.interface = std::net::Ipv4Addr::LOCALHOST;
            config.multicast_port = 47_911;
            // Room for every change of a run: under valgrind the network thread runs only when
            // the writer yields, and changes that overflow the default 65,536 skip most of the
            // replication work, so counts per write would depend on the scheduling.
            config.queue_max = 1 << 22;
            config.queue_max_bytes = 1 << 40;
            let node = if op == "insert_net" {
                mccache::Node::start(config)
            } else {
                mccache::Node::start_local(config)
            }
            .expect("valid config");
            // Lets the housekeeper thread start and register as the clock's ticker: until it
            // has, a hit on an entry with a TTL reads the exact clock (under valgrind, which
            // runs one thread at a time, that could last the whole run).
            std::thread::sleep(std::time::Duration::from_millis(20));
            let c: mccache::Cache<u64, u64> = node.cache("ops").expect("fresh node");
            let c2 = c.clone();
            if op == "insert_net" {
                // Printed at exit: a change that overflowed the queue skipped most of the
                // replication work, so a run is comparable only with the same overflow.
                NODE.with(|n| *n.borrow_mut() = Some(node));
            } else {
                std::mem::forget(node);
            }
            (
                Box::new(move |k| c.get(&k)),
                Box::new(move |k, v| {
                    let _ = c2.insert(k, v);
                }),
            )
        }
    };
    // `get_miss` reads the same keys as `get_hit` (the same loop), from a cache that holds
    // others.
    let held = if misses { POP..2 * POP } else { 0..POP };
    for k in held {
        insert(k, k);
    }
    let mut x = 0x1234_5678u64;
    let range = if reads { POP } else { 4 * POP };
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % range;
        if reads {
            black_box(get(black_box(k)));
        } else {
            insert(black_box(k), k);
        }
    }
    NODE.with(|n| {
        if let Some(node) = n.borrow_mut().take() {
            let writes = ops + POP;
            let start = std::time::Instant::now();
            let mut m = node.network_metrics();
            while drain
                && m.changes_sent + m.changes_superseded + m.outbound_overflow < writes
                && start.elapsed() < std::time::Duration::from_secs(600)
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
                m = node.network_metrics();
            }
            eprintln!(
                "changes sent {}, superseded {}, overflowed {} of {} writes",
                m.changes_sent, m.changes_superseded, m.outbound_overflow, writes
            );
            std::mem::forget(node);
        }
    });
}

thread_local! {
    /// The networked node of an `insert_net` run, kept for its metrics.
    static NODE: std::cell::RefCell<Option<mccache::Node>> = const { std::cell::RefCell::new(None) };
}
