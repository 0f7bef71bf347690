//! Local throughput of mccache against moka, quick_cache and a `Mutex<lru>` baseline, on 1 and
//! 2 threads in the same run: get-hit, get-miss, insert, and a Zipf-like 80/20 mix. The insert
//! case also runs `mccache_net`: a node started with networking on loopback (its own multicast
//! group and port, publisher active), so every insert builds and queues a replicated record.
//!
//! Run: `cargo bench --bench local -- --warm-up-time 1 --measurement-time 2`
//! (one case: append its name, e.g. `get_hit`). Compare ratios within one run: the machine's
//! load moves absolute figures.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Keys in the populated range.
const POP: u64 = 10_000;
/// Precomputed key sequence length (a power of two).
const SEQ: usize = 1 << 16;

trait Bench: Send + Sync {
    fn get(&self, k: u64) -> Option<u64>;
    fn insert(&self, k: u64, v: u64);
}

struct Mc(mccache::Cache<u64, u64>, #[allow(dead_code)] mccache::Node);
impl Bench for Mc {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.get(&k)
    }
    fn insert(&self, k: u64, v: u64) {
        // u64 pairs are far below every limit.
        let _ = self.0.insert(k, v);
    }
}

struct Moka(moka::sync::Cache<u64, u64>);
impl Bench for Moka {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.get(&k)
    }
    fn insert(&self, k: u64, v: u64) {
        self.0.insert(k, v)
    }
}

struct Quick(quick_cache::sync::Cache<u64, u64>);
impl Bench for Quick {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.get(&k)
    }
    fn insert(&self, k: u64, v: u64) {
        self.0.insert(k, v)
    }
}

struct Lru(Mutex<lru::LruCache<u64, u64>>);
impl Bench for Lru {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.lock().unwrap().get(&k).copied()
    }
    fn insert(&self, k: u64, v: u64) {
        self.0.lock().unwrap().put(k, v);
    }
}

const CACHES: [&str; 5] = ["mccache", "mccache_ttl", "moka", "quick_cache", "mutex_lru"];
/// The caches of the insert case: also a node with networking.
const INSERT_CACHES: [&str; 5] = ["mccache", "mccache_net", "moka", "quick_cache", "mutex_lru"];

/// Loopback ports for the networked nodes (one per node, so runs of one bench do not mix).
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(47_600);

fn make(name: &str, cap: usize) -> Arc<dyn Bench> {
    match name {
        "mccache" => {
            let mut config = mccache::Config::default();
            config.cache_ttl = 0.0;
            config.cache_max = cap;
            config.cache_size = 1 << 40;
            let node = mccache::Node::start_local(config).expect("default config is valid");
            let cache = node.cache("bench").expect("fresh node");
            Arc::new(Mc(cache, node))
        }
        // The default configuration's TTL (an hour): every hit checks the entry's expiry.
        "mccache_ttl" => {
            let mut config = mccache::Config::default();
            config.cache_max = cap;
            config.cache_size = 1 << 40;
            let node = mccache::Node::start_local(config).expect("default config is valid");
            let cache = node.cache("bench").expect("fresh node");
            Arc::new(Mc(cache, node))
        }
        "mccache_net" => {
            let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut config = mccache::Config::default();
            config.cache_ttl = 0.0;
            config.cache_max = cap;
            config.cache_size = 1 << 40;
            config.interface = std::net::Ipv4Addr::LOCALHOST;
            config.multicast_ip = std::net::Ipv4Addr::new(239, 255, 94, (port % 250) as u8 + 1);
            config.multicast_port = port;
            config.cluster_name = format!("bench-local-{port}");
            let node = mccache::Node::start(config).expect("loopback node starts");
            let cache = node.cache("bench").expect("fresh node");
            Arc::new(Mc(cache, node))
        }
        "moka" => Arc::new(Moka(moka::sync::Cache::new(cap as u64))),
        "quick_cache" => Arc::new(Quick(quick_cache::sync::Cache::new(cap))),
        _ => Arc::new(Lru(Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(cap).unwrap(),
        )))),
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Uniform keys in `lo..hi`.
fn uniform(lo: u64, hi: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..SEQ)
        .map(|_| lo + xorshift(&mut x) % (hi - lo))
        .collect()
}

/// 80% of the keys from the hottest 20% of the population.
fn hot_cold(seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    let hot = POP / 5;
    (0..SEQ)
        .map(|_| {
            let r = xorshift(&mut x);
            if r % 100 < 80 {
                (r >> 8) % hot
            } else {
                hot + (r >> 8) % (POP - hot)
            }
        })
        .collect()
}

/// Runs `iters` operations split over `threads` threads; returns the wall time.
fn run(threads: usize, iters: u64, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let per = iters / threads as u64 + 1;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..per {
                    op(t, i);
                }
            });
        }
    });
    start.elapsed()
}

fn bench_case(
    c: &mut Criterion,
    case: &str,
    caches: &[&str],
    cap: usize,
    prefill: u64,
    keys: &dyn Fn(u64) -> Vec<u64>,
    op: fn(&dyn Bench, u64),
) {
    let mut g = c.benchmark_group(case);
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        let seqs: Vec<Vec<u64>> = (0..threads as u64).map(|t| keys(0x1234_5678 + t)).collect();
        for &name in caches {
            let cache = make(name, cap);
            for k in 0..prefill {
                cache.insert(k, k);
            }
            g.bench_function(format!("{name}/{threads}t"), |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &|t, i| {
                        let k = seqs[t][i as usize & (SEQ - 1)];
                        op(&*cache, black_box(k));
                    })
                })
            });
        }
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let big = 2 * POP as usize;
    bench_case(
        c,
        "get_hit",
        &CACHES,
        big,
        POP,
        &|s| uniform(0, POP, s),
        |c, k| {
            black_box(c.get(k));
        },
    );
    bench_case(
        c,
        "get_miss",
        &CACHES,
        big,
        POP,
        &|s| uniform(POP, 2 * POP, s),
        |c, k| {
            black_box(c.get(k));
        },
    );
    // Keys over 4x the capacity: mostly new keys, each evicting one.
    bench_case(
        c,
        "insert",
        &INSERT_CACHES,
        POP as usize,
        POP,
        &|s| uniform(0, 4 * POP, s),
        |c, k| c.insert(k, k),
    );
    // Read, insert on miss; the cache holds a quarter of the population.
    bench_case(
        c,
        "zipf_80_20",
        &CACHES,
        POP as usize / 4,
        0,
        &hot_cold,
        |c, k| {
            if c.get(k).is_none() {
                c.insert(k, k);
            }
        },
    );
}

criterion_group!(local, benches);
criterion_main!(local);
