//! Many threads, mixed operations: invariants hold at the end, and single-flight loads run once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use mccache::unstable::FakeClock;
use mccache::{Cache, Config, Error, Node};

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks the end-of-run invariants of a quiescent cache.
fn check_invariants(c: &Cache<u64, Vec<u8>>) {
    let keys = c.keys();
    let len = c.len();
    assert_eq!(len, keys.len(), "len() vs keys()");
    let m = c.metrics();
    assert_eq!(m.entries as usize, len);
    let mut bytes = 0u64;
    let mut sum = 0u64;
    for k in &keys {
        let md = c.metadata(k).expect("listed key has metadata");
        bytes += md.size;
        sum = sum.wrapping_add(splitmix64(c.key_checksum(k).unwrap() as u64));
        let v = c
            .entries()
            .into_iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v);
        assert_eq!(
            md.crc,
            crc32fast::hash(&rmp_serde::to_vec(&v.unwrap()).unwrap())
        );
    }
    assert_eq!(bytes, m.bytes, "bytes == sum of metadata sizes");
    assert_eq!(sum, c.checksum(), "checksum == recomputed");
    assert!(len <= c.config().max_entries);
}

#[test]
fn mixed_ops_from_many_threads_keep_invariants() {
    // A fake clock that the workers move forward, so expiry happens during the run but the
    // cache is quiescent (nothing expiring) while the invariants are checked.
    let clock = Arc::new(FakeClock::new());
    let mut config = Config::default();
    config.cache_ttl = 0.05;
    config.cache_max = 300;
    config.cache_size = 64 * 1024;
    config.daemon_sleep = 0.01;
    let node = mccache::unstable::start_with_clock(config, clock.clone()).unwrap();
    let c: Cache<u64, Vec<u8>> = node.cache("mixed").unwrap();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads as u64)
        .map(|t| {
            let c = c.clone();
            let barrier = barrier.clone();
            let clock = clock.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for i in 0..20_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % 1000;
                    let v = vec![(i % 251) as u8; (x % 200) as usize];
                    match x % 16 {
                        0..=5 => {
                            c.get(&k);
                        }
                        6..=8 => {
                            c.insert(k, v).unwrap();
                        }
                        9 => {
                            c.remove(&k).unwrap();
                        }
                        10 => {
                            c.insert_with_ttl(k, v, Duration::from_millis(x % 20))
                                .unwrap();
                        }
                        11 => {
                            c.get_or_insert_with(k, || v).unwrap();
                        }
                        12 => {
                            if let Some((_, ver)) = c.get_with_version(&k) {
                                match c.compare_and_swap(k, Some(ver), v) {
                                    Ok(_) | Err(Error::VersionMismatch { .. }) => {}
                                    Err(e) => panic!("{e}"),
                                }
                            }
                        }
                        13 => {
                            c.add(k, v).unwrap();
                        }
                        14 => {
                            c.touch(&k, Duration::from_millis(50)).unwrap();
                        }
                        _ => {
                            if i % 5000 == 0 {
                                c.clear();
                            } else if i % 3 == 0 {
                                clock.advance(Duration::from_millis(1));
                            } else {
                                c.contains_key(&k);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    check_invariants(&c);
    let m = c.metrics();
    assert!(
        m.evictions_capacity + m.evictions_bytes > 0,
        "the run never hit a cap: {m:?}"
    );
    assert!(
        m.bytes <= 64 * 1024 + 200 * 300,
        "bytes far above the cap: {m:?}"
    );
    assert!(m.evictions_ttl > 0, "nothing expired during the run: {m:?}");
    // Past every TTL, expired entries leave the counters; only entries stored with a zero
    // (infinite) per-entry TTL remain.
    let forever = c
        .keys()
        .iter()
        .filter(|k| c.metadata(k).unwrap().expires.is_none())
        .count();
    clock.advance(Duration::from_secs(3600));
    let erased = mccache::unstable::erased_cache(&node, "mixed").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while erased.sync_digest().count != forever as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "entries never expired"
        );
        thread::sleep(Duration::from_millis(10));
    }
    check_invariants(&c);
}

#[test]
fn get_or_insert_with_runs_the_loader_once_for_concurrent_callers() {
    let node = Node::start_local(Config::default()).unwrap();
    let c: Cache<u64, Vec<u8>> = node.cache("single-flight").unwrap();
    for round in 0..20u64 {
        let n = 8;
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (c, calls, barrier) = (c.clone(), calls.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    c.get_or_insert_with(round, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Keep the flight open long enough for every caller to join it.
                        thread::sleep(Duration::from_millis(20));
                        vec![round as u8; 4]
                    })
                    .unwrap()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), vec![round as u8; 4]);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "round {round}: loader ran more than once"
        );
    }
    assert_eq!(c.metrics().inserts, 20);
}

#[test]
fn waiters_get_loader_failed_when_the_loader_panics() {
    let node = Node::start_local(Config::default()).unwrap();
    let c: Cache<u64, Vec<u8>> = node.cache("panicky").unwrap();
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (c, started) = (c.clone(), started.clone());
        thread::spawn(move || {
            c.get_or_insert_with(1, || {
                started.wait();
                thread::sleep(Duration::from_millis(100));
                panic!("loader failed");
            })
        })
    };
    started.wait();
    // The leader is inside its loader: this caller joins the flight and must not hang.
    let r = c.get_or_insert_with(1, || vec![9]);
    assert!(
        leader.join().is_err(),
        "the panic continues in the loading thread"
    );
    match r {
        Err(Error::LoaderFailed) => {}
        // Scheduling may let this caller miss the flight entirely; then it loads itself.
        Ok(v) => assert_eq!(v, vec![9]),
        Err(e) => panic!("{e}"),
    }
    // The flight is gone: a new call loads again.
    assert_eq!(c.get_or_insert_with(1, || vec![7]).unwrap().len(), 1);
}

/// `len()` never exceeds `cache_max`, at any instant, as another thread sees it while three
/// threads insert new keys (the entry slot is taken before a new key is stored).
#[test]
fn len_never_exceeds_cache_max_under_concurrent_inserts() {
    let node = Node::start_local({
        let mut c = Config::default();
        c.cache_max = 16;
        c
    })
    .unwrap();
    let c: Cache<u64, u64> = node.cache("cap").unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worst = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (c, done, worst) = (c.clone(), done.clone(), worst.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                worst.fetch_max(c.len(), Ordering::Relaxed);
            }
        })
    };
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let c = c.clone();
            thread::spawn(move || {
                for i in 0..50_000u64 {
                    c.insert(t << 32 | i, i).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        worst.load(Ordering::Relaxed) <= 16,
        "len() reached {}",
        worst.load(Ordering::Relaxed)
    );
    assert_eq!(c.len(), 16);
    assert_eq!(c.keys().len(), 16);
}
