//! The memcached tier (feature `memcached`) against real memcached servers that each test
//! starts on its own loopback port (47650-47699) and stops. Clusters use groups 239.255.106.x
//! and UDP ports 47600-47649.
//!
//! Without a memcached binary the tests skip with a message; under `CI=true` they fail.

#![cfg(feature = "memcached")]
#![forbid(unsafe_code)]

#[path = "it/support/cluster.rs"]
mod cluster_support;
#[path = "it/support/memcached.rs"]
mod memcached_support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use cluster_support::wait_until;
use mccache::{Config, Node, ServerEvent, WritePolicy};
use memcached_support::{Memcached, binary_or_skip};

/// The shared loopback config on `group`/`port`, backed by `servers`.
fn config(group: u8, port: u16, cluster: &str, servers: &[String]) -> Config {
    let mut c = cluster_support::config(group, port);
    c.cache_size = 64 << 20;
    c.cluster_name = cluster.to_string();
    c.backing = Some(format!("memcached://{}", servers.join(",")));
    // Generous: on a loaded CI machine a 0.5 s timeout once failed a write-through (the value
    // then never reached memcached); the tests about silent servers set their own.
    c.backing_timeout = 2.0;
    c.backing_retry_after = 0.2;
    c
}

/// A local-only node (no replication) on the same memcached: "another process" of any
/// cluster with the same `cluster_name`.
fn local(cluster: &str, servers: &[String]) -> Node {
    Node::start_local(config(0, 47649, cluster, servers)).unwrap()
}

fn requests(node: &Node) -> u64 {
    node.backing_metrics()
        .iter()
        .flat_map(|t| &t.servers)
        .map(|s| s.requests)
        .sum()
}

#[test]
fn a_local_hit_never_touches_memcached_and_a_miss_reads_it() {
    let Some(bin) = binary_or_skip("a_local_hit_never_touches_memcached") else {
        return;
    };
    let mc = Memcached::start(&bin, 47650);
    let servers = [mc.addr()];
    let a = local("t15-hit", &servers);
    let b = local("t15-hit", &servers);
    let ca = a.cache::<String, String>("users").unwrap();
    let cb = b.cache::<String, String>("users").unwrap();
    ca.insert("ada".into(), "lovelace".into()).unwrap(); // write-through
    let before = requests(&a);
    for _ in 0..100 {
        assert_eq!(ca.get(&"ada".into()).as_deref(), Some("lovelace"));
    }
    assert_eq!(requests(&a), before, "a local hit went to memcached");
    // b has never seen the key: its miss reads memcached and fills its local tier.
    assert!(!cb.contains_key(&"ada".into()));
    assert_eq!(
        cb.get(&"ada".into()).as_deref(),
        Some("lovelace"),
        "writer {:?}, reader {:?}",
        a.backing_metrics(),
        b.backing_metrics()
    );
    let after_fill = requests(&b);
    assert_eq!(cb.get(&"ada".into()).as_deref(), Some("lovelace"));
    assert_eq!(
        requests(&b),
        after_fill,
        "the filled value was not kept locally"
    );
    let m = &b.backing_metrics()[0];
    assert_eq!(m.servers[0].hits, 1);
    assert!(cb.get(&"nobody".into()).is_none());
    assert_eq!(b.backing_metrics()[0].servers[0].misses, 1);
    // A cluster with another name shares nothing.
    let other = local("t15-hit-other", &servers);
    let co = other.cache::<String, String>("users").unwrap();
    assert!(co.get(&"ada".into()).is_none());
    // Values are sealed with the cluster key: another key, or none, reads nothing.
    for crypto_key in [Some(mccache::generate_key()), None] {
        let mut cfg = config(0, 47649, "t15-hit", &servers);
        cfg.crypto_key = crypto_key;
        let n = Node::start_local(cfg).unwrap();
        let c = n.cache::<String, String>("users").unwrap();
        assert!(c.get(&"ada".into()).is_none());
        assert_eq!(n.backing_metrics()[0].servers[0].misses, 1);
    }
}

#[test]
fn two_clusters_sharing_memcached_see_each_others_values_on_miss() {
    let Some(bin) = binary_or_skip("two_clusters_sharing_memcached") else {
        return;
    };
    let mc = Memcached::start(&bin, 47651);
    let servers = [mc.addr()];
    // Same cluster name (the shared namespace), different groups: two separate clusters.
    let a1 = Node::start(config(1, 47600, "t15-shared", &servers)).unwrap();
    let b1 = Node::start(config(2, 47601, "t15-shared", &servers)).unwrap();
    let b2 = Node::start(config(2, 47601, "t15-shared", &servers)).unwrap();
    for n in [&a1, &b1, &b2] {
        let _ = n.wait_ready(Duration::from_secs(5));
    }
    assert!(wait_until(Duration::from_secs(10), || b1.members().len() == 1));
    let a = a1.cache::<u32, String>("orders").unwrap();
    let b = b1.cache::<u32, String>("orders").unwrap();
    let b_peer = b2.cache::<u32, String>("orders").unwrap();
    for i in 0..50 {
        a.insert(i, format!("order {i}")).unwrap();
    }
    // Cluster B never received A's writes (another group); its misses read memcached.
    assert!(!b.contains_key(&7));
    assert_eq!(b.get(&7).as_deref(), Some("order 7"));
    // ... and the value found there is replicated inside cluster B (replicate mode).
    assert!(wait_until(Duration::from_secs(10), || b_peer.contains_key(&7)));
    // The other way round.
    b.insert(1000, "from b".into()).unwrap();
    assert_eq!(a.get(&1000).as_deref(), Some("from b"));
    // A remove in one cluster reaches memcached: the other cluster's next miss misses.
    a.remove(&8).unwrap();
    assert!(b.get(&8).is_none());
}

#[test]
fn fifty_concurrent_misses_across_three_nodes_run_the_loader_once() {
    let Some(bin) = binary_or_skip("fifty_concurrent_misses") else {
        return;
    };
    let mc = Memcached::start(&bin, 47652);
    let servers = [mc.addr()];
    let nodes: Vec<Node> = (0..3)
        .map(|_| Node::start(config(3, 47602, "t15-lease", &servers)).unwrap())
        .collect();
    for n in &nodes {
        let _ = n.wait_ready(Duration::from_secs(5));
    }
    let loads = Arc::new(AtomicUsize::new(0));
    for round in 0..3u32 {
        let barrier = Arc::new(Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let cache = nodes[i % 3].cache::<String, u64>("reports").unwrap();
                let barrier = barrier.clone();
                let loads = loads.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    cache
                        .get_or_insert_with(format!("report-{round}"), || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // An expensive loader: long enough that all 50 callers miss.
                            std::thread::sleep(Duration::from_millis(300));
                            u64::from(round) * 1000 + 42
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), u64::from(round) * 1000 + 42);
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            round as usize + 1,
            "round {round}: the loader ran more than once in the fleet"
        );
    }
    let won: u64 = nodes.iter().map(|n| n.backing_metrics()[0].lease_won).sum();
    assert_eq!(won, 3);
}

#[test]
fn a_killed_server_falls_back_rehashes_and_comes_back() {
    let Some(bin) = binary_or_skip("a_killed_server") else {
        return;
    };
    let mc0 = Memcached::start(&bin, 47653);
    let mut mc1 = Memcached::start(&bin, 47654);
    let servers = [mc0.addr(), mc1.addr()];
    let a = local("t15-kill", &servers);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    a.on_backing_event(move |e| ev.lock().unwrap().push(e.clone()));
    let ca = a.cache::<u32, u32>("kv").unwrap();
    for i in 0..200 {
        ca.insert(i, i).unwrap();
    }
    // Both servers hold some keys.
    let m = &a.backing_metrics()[0];
    assert!(m.servers.iter().all(|s| s.requests > 20), "{m:?}");

    mc1.kill();
    // Every call succeeds from the local tier; writes go on.
    for i in 0..200 {
        assert_eq!(ca.get(&i), Some(i));
        ca.insert(i, i + 1).unwrap();
    }
    let m = &a.backing_metrics()[0];
    assert!(!m.servers[1].up, "{m:?}");
    assert!(m.fallbacks >= 1 && m.fallbacks <= 3, "{m:?}");
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ServerEvent::Down { server, .. } if *server == servers[1]))
    );
    // Keys rehashed to the remaining server: a fresh node finds every one of the new values.
    let b = local("t15-kill", &servers);
    let cb = b.cache::<u32, u32>("kv").unwrap();
    // A fresh process learns that the server is down from its own failed requests (those
    // calls miss: they fall back to the local tier).
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = cb.get_many(&(200..230).collect::<Vec<u32>>());
        b.backing_metrics()[0].servers.iter().any(|s| !s.up)
    }));
    // The writes that failed before the server was marked down (at most `backing_down_after`
    // of them) are missing; every other key is found with its new value, none with an old one.
    let fallbacks = a.backing_metrics()[0].fallbacks;
    let mut missing = 0;
    for i in 0..200 {
        match cb.get(&i) {
            Some(v) => assert_eq!(v, i + 1, "key {i}"),
            None => missing += 1,
        }
    }
    assert!(
        missing <= fallbacks,
        "{missing} missing, {fallbacks} fallbacks"
    );

    mc1.restart();
    // A request after `backing_retry_after` probes the server; it is up again.
    // (Only a request for one of its keys probes it.)
    let mut probe = 10_000;
    assert!(wait_until(Duration::from_secs(10), || {
        probe += 1;
        let _ = ca.remove(&probe);
        a.backing_metrics()[0].servers[1].up
    }));
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ServerEvent::Up { server } if *server == servers[1]))
    );
    for i in 0..200 {
        ca.insert(i, i + 2).unwrap();
    }
    let c = local("t15-kill", &servers);
    let cc = c.cache::<u32, u32>("kv").unwrap();
    for i in 0..200 {
        assert_eq!(cc.get(&i), Some(i + 2), "key {i}");
    }
    let m = &c.backing_metrics()[0];
    assert!(m.servers.iter().all(|s| s.hits > 20), "{m:?}");
}

#[test]
fn expiry_carries_over() {
    let Some(bin) = binary_or_skip("expiry_carries_over") else {
        return;
    };
    let mc = Memcached::start(&bin, 47655);
    let servers = [mc.addr()];
    let a = local("t15-ttl", &servers);
    let b = local("t15-ttl", &servers);
    let ca = a.cache::<String, String>("s").unwrap();
    let cb = b.cache::<String, String>("s").unwrap();
    ca.insert_with_ttl("short".into(), "v".into(), Duration::from_secs(2))
        .unwrap();
    ca.insert("forever".into(), "v".into()).unwrap();
    assert_eq!(cb.get(&"short".into()).as_deref(), Some("v"));
    // The filled copy expires when memcached's does, not after the cache's TTL (none here).
    let expires = cb.metadata(&"short".into()).unwrap().expires.unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    // Entries keep their write time rounded up to the millisecond: at most 1 ms late.
    assert!(left <= Duration::from_millis(2_001), "{left:?}");
    assert_eq!(cb.get(&"forever".into()).as_deref(), Some("v"));
    assert!(cb.metadata(&"forever".into()).unwrap().expires.is_none());
    // memcached dropped it too: a third process misses.
    let c = local("t15-ttl", &servers);
    let cc = c.cache::<String, String>("s").unwrap();
    assert!(wait_until(Duration::from_secs(10), || cc
        .get(&"short".into())
        .is_none()));
    assert!(cb.get(&"short".into()).is_none());
    assert_eq!(cc.get(&"forever".into()).as_deref(), Some("v"));
}

#[test]
fn keys_that_need_escaping_round_trip() {
    let Some(bin) = binary_or_skip("keys_that_need_escaping") else {
        return;
    };
    let mc = Memcached::start(&bin, 47656);
    let servers = [mc.addr()];
    let a = local("t15 cluster with spaces\n", &servers);
    let b = local("t15 cluster with spaces\n", &servers);
    let keys: Vec<String> = vec![
        "plain".into(),
        "with space".into(),
        "new\nline\r\n".into(),
        "\0nul\x7f".into(),
        "ünïcødé 🍺".into(),
        "x".repeat(240),
        "y".repeat(5000),
        String::new(),
    ];
    let ca = a.cache::<String, usize>("weird cache/name\t").unwrap();
    let cb = b.cache::<String, usize>("weird cache/name\t").unwrap();
    for (i, k) in keys.iter().enumerate() {
        ca.insert(k.clone(), i).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cb.get(k), Some(i), "key {k:?}");
    }
    // Structured keys too.
    let sa = a.cache::<(u64, Vec<u8>), String>("tuples").unwrap();
    let sb = b.cache::<(u64, Vec<u8>), String>("tuples").unwrap();
    sa.insert((7, vec![0, 255, 32, 10]), "t".into()).unwrap();
    assert_eq!(sb.get(&(7, vec![0, 255, 32, 10])).as_deref(), Some("t"));
    assert!(sb.get(&(7, vec![0, 255, 32])).is_none());
    let m = &b.backing_metrics()[0];
    assert_eq!(m.servers[0].errors, 0, "{m:?}");
}

#[test]
fn clear_and_invalidate_reach_memcached() {
    let Some(bin) = binary_or_skip("clear_and_invalidate") else {
        return;
    };
    let mc = Memcached::start(&bin, 47657);
    let servers = [mc.addr()];
    let a = local("t15-clear", &servers);
    let ca = a.cache::<u32, u32>("c").unwrap();
    for i in 0..20 {
        ca.insert(i, i).unwrap();
    }
    ca.clear();
    let b = local("t15-clear", &servers);
    let cb = b.cache::<u32, u32>("c").unwrap();
    for i in 0..20 {
        assert_eq!(cb.get(&i), None, "key {i} survived the clear");
    }
    assert!(b.backing_metrics()[0].old_generation >= 20);
    // Writes after the clear are seen.
    ca.insert(1, 100).unwrap();
    assert_eq!(cb.get(&1), Some(100));

    // Invalidate-through: a write deletes the memcached copy; loads still fill it.
    let mut cfg = config(0, 47649, "t15-clear", &servers);
    cfg.backing_write = WritePolicy::Invalidate;
    let p = Node::start_local(cfg.clone()).unwrap();
    let q = Node::start_local(cfg).unwrap();
    let cp = p.cache::<u32, String>("inv").unwrap();
    let cq = q.cache::<u32, String>("inv").unwrap();
    assert_eq!(
        cp.get_or_insert_with(1, || "loaded".into()).unwrap(),
        "loaded"
    );
    assert_eq!(cq.get(&1).as_deref(), Some("loaded"));
    cp.insert(1, "changed".into()).unwrap();
    let r = Node::start_local(config(0, 47649, "t15-clear", &servers)).unwrap();
    assert_eq!(r.cache::<u32, String>("inv").unwrap().get(&1), None);
}

#[test]
fn memcached_down_or_silent_never_breaks_the_cache() {
    // Nothing listens on 47658; 47659 accepts (in the kernel's backlog) and never answers.
    let _silent = TcpListener::bind("127.0.0.1:47659").unwrap();
    for (port, label) in [(47658u16, "refused"), (47659, "silent")] {
        let mut cfg = config(0, 47649, "t15-down", &[format!("127.0.0.1:{port}")]);
        cfg.backing_timeout = 0.05;
        cfg.backing_retry_after = 60.0;
        let node = Node::start_local(cfg).unwrap();
        let c = node.cache::<u32, u32>("x").unwrap();
        let started = Instant::now();
        for i in 0..100 {
            c.insert(i, i).unwrap();
            assert_eq!(c.get(&i), Some(i));
            assert_eq!(c.get_or_insert_with(1000 + i, || i).unwrap(), i);
            assert_eq!(c.remove(&i).unwrap(), Some(i));
            assert_eq!(c.get(&i), None);
        }
        let m = &node.backing_metrics()[0];
        let s = &m.servers[0];
        assert!(!s.up, "{label}: {m:?}");
        // Marked down after 3 failures: later calls do not wait for it.
        assert_eq!(s.requests, 3, "{label}: {m:?}");
        assert!(m.fallbacks >= 3 && m.no_server > 0, "{label}: {m:?}");
        if label == "silent" {
            assert_eq!(s.timeouts, 3, "{m:?}");
        } else {
            assert_eq!(s.errors, 3, "{m:?}");
        }
        eprintln!("{label}: 500 calls in {:?}", started.elapsed());
    }
}

#[test]
fn a_whole_cluster_restarted_cold_fills_from_memcached() {
    let Some(bin) = binary_or_skip("a_whole_cluster_restarted_cold") else {
        return;
    };
    let mc = Memcached::start(&bin, 47661);
    let servers = [mc.addr()];
    let start = || -> Vec<Node> {
        let nodes: Vec<Node> = (0..2)
            .map(|_| Node::start(config(4, 47603, "t15-restart", &servers)).unwrap())
            .collect();
        for n in &nodes {
            let _ = n.wait_ready(Duration::from_secs(5));
        }
        assert!(wait_until(Duration::from_secs(10), || nodes
            .iter()
            .all(|n| n.members().len() == 1)));
        nodes
    };
    let first = start();
    let c = first[0].cache::<u32, String>("profiles").unwrap();
    for i in 0..100 {
        c.insert(i, format!("profile {i}")).unwrap();
    }
    for n in &first {
        n.shutdown();
    }
    drop(first);
    // The whole cluster is gone; a new one starts cold.
    let second = start();
    let a = second[0].cache::<u32, String>("profiles").unwrap();
    let b = second[1].cache::<u32, String>("profiles").unwrap();
    assert!(a.is_empty() && b.is_empty());
    for i in 0..100 {
        assert_eq!(a.get(&i), Some(format!("profile {i}")), "key {i}");
    }
    // What one node filled from memcached reached its peer by replication.
    assert!(wait_until(Duration::from_secs(10), || b.len() == 100));
    let m = &second[1].backing_metrics();
    assert!(m.is_empty() || m[0].servers[0].hits == 0, "{m:?}");
}

/// The role a re-executed copy of this test binary plays (see
/// `separate_processes_share_values_through_memcached`).
const ROLE_ENV: &str = "T15_MEMCACHED_ROLE";

#[test]
fn separate_processes_share_values_through_memcached() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        return child_role(&role);
    }
    let Some(bin) = binary_or_skip("separate_processes_share_values") else {
        return;
    };
    let mc = Memcached::start(&bin, 47660);
    // Two processes in different groups (no replication between them), configured only by
    // MCCACHE_* variables, using only `mccache::get_cache`.
    let run = |role: &str, port: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--exact")
            .arg("separate_processes_share_values_through_memcached")
            .args(["--nocapture", "--test-threads", "1"])
            .env(ROLE_ENV, role)
            .env("MCCACHE_CONFIG", "")
            .env("MCCACHE_INTERFACE", "127.0.0.1")
            .env("MCCACHE_MULTICAST_IP", "239.255.106.9")
            .env("MCCACHE_MULTICAST_PORT", port)
            .env("MCCACHE_CLUSTER_NAME", "t15-procs")
            .env("MCCACHE_CACHE_TTL", "0")
            .env("MCCACHE_BACKING", format!("memcached://{}", mc.addr()))
            .env("MCCACHE_CACHES__LOADED__BACKING_WRITE", "invalidate")
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{role} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let w = run("writer", "47609");
    assert!(w.contains("T15 wrote 100"), "{w}");
    let r = run("reader", "47610");
    assert!(r.contains("T15 found 100 loaded 7 cleared"), "{r}");
}

/// A child process: `writer` stores 100 keys and loads one; `reader` finds them all in
/// memcached, gets the loaded value without running its loader, then clears.
fn child_role(role: &str) {
    let cache = mccache::get_cache::<String, u64>("procs");
    let loaded = mccache::get_cache::<String, u64>("loaded");
    match role {
        "writer" => {
            for i in 0..100 {
                cache.insert(format!("k{i}"), i).unwrap();
            }
            assert_eq!(loaded.get_or_insert_with("x".into(), || 7).unwrap(), 7);
            println!("T15 wrote 100");
        }
        "reader" => {
            let found = (0..100)
                .filter(|i| cache.get(&format!("k{i}")) == Some(*i))
                .count();
            let v = loaded
                .get_or_insert_with("x".into(), || panic!("the loader ran again"))
                .unwrap();
            mccache::clear_cache("procs").unwrap();
            // After the clear, memcached's copies are gone for everyone.
            let node = Node::start_local(Config::load().unwrap()).unwrap();
            let fresh = node.cache::<String, u64>("procs").unwrap();
            let cleared = (0..100).all(|i| fresh.get(&format!("k{i}")).is_none());
            println!(
                "T15 found {found} loaded {v} {}",
                if cleared { "cleared" } else { "not cleared" }
            );
        }
        other => panic!("unknown role {other}"),
    }
}
