//! A driver for instruction-count profiles (`valgrind --tool=callgrind`), which do not depend
//! on the machine's load: runs one operation a fixed number of times on one cache, after a
//! prefill, so two runs differ only in the cache.
//!
//! Run: `cargo bench --bench ops --no-run`, then
//! `valgrind --tool=callgrind <bench binary> <get_hit|insert|insert_net> <mccache|quick_cache> [ops]`
//! and divide the instruction counts (`callgrind_annotate`) by `ops`.

use std::hint::black_box;

const POP: u64 = 10_000;

type Get = Box<dyn Fn(u64) -> Option<u64>>;
type Insert = Box<dyn Fn(u64, u64)>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, cache, ..] = &args[..] else {
        eprintln!("usage: ops <get_hit|insert|insert_net> <mccache|quick_cache> [ops]");
        return;
    };
    let ops: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let cap = if op == "get_hit" { 2 * POP } else { POP } as usize;
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
            config.cache_ttl = 0.0;
            config.cache_max = cap;
            config.cache_size = 1 << 40;
            config.interface = std::net::Ipv4Addr::LOCALHOST;
            config.multicast_port = 47_911;
            let node = if op == "insert_net" {
                mccache::Node::start(config)
            } else {
                mccache::Node::start_local(config)
            }
            .expect("valid config");
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
    for k in 0..POP {
        insert(k, k);
    }
    let mut x = 0x1234_5678u64;
    let reads = op == "get_hit";
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
            let m = node.network_metrics();
            eprintln!(
                "changes sent {}, overflowed {} of {} writes",
                m.changes_sent,
                m.outbound_overflow,
                ops + POP
            );
            std::mem::forget(node);
        }
    });
}

thread_local! {
    /// The networked node of an `insert_net` run, kept for its metrics.
    static NODE: std::cell::RefCell<Option<mccache::Node>> = const { std::cell::RefCell::new(None) };
}
