//! Real-socket cluster tests on loopback: several nodes in one process, each test on its own
//! multicast group and port.

use crate::support::cluster as cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_support::{config, wait_until};
use mccache::{CacheMode, ChangeKind, Node, Origin};

const T: Duration = Duration::from_secs(10);

fn start(n: usize, group: u8, port: u16) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|_| Node::start(config(group, port)).expect("node starts"))
        .collect();
    for node in &nodes {
        assert!(
            wait_until(T, || node.members().len() == n - 1),
            "membership forms"
        );
    }
    nodes
}

#[test]
fn inserts_updates_deletes_and_clear_propagate() {
    let nodes = start(3, 1, 46101);
    let caches: Vec<_> = nodes
        .iter()
        .map(|n| n.cache::<String, String>("users").unwrap())
        .collect();
    caches[0].insert("a".into(), "1".into()).unwrap();
    assert!(wait_until(T, || caches
        .iter()
        .all(|c| c.get(&"a".to_string()).as_deref() == Some("1"))));
    caches[1].insert("a".into(), "2".into()).unwrap();
    assert!(wait_until(T, || caches
        .iter()
        .all(|c| c.get(&"a".to_string()).as_deref() == Some("2"))));
    caches[2].remove(&"a".to_string()).unwrap();
    assert!(wait_until(T, || caches
        .iter()
        .all(|c| !c.contains_key(&"a".to_string()))));
    for i in 0..20 {
        caches[i % 3]
            .insert(format!("k{i}"), format!("v{i}"))
            .unwrap();
    }
    assert!(wait_until(T, || caches.iter().all(|c| c.len() == 20)));
    caches[1].clear();
    assert!(
        wait_until(T, || caches.iter().all(|c| c.is_empty())),
        "clear reaches every node, the caller included"
    );
    // A write after the clear survives it everywhere.
    caches[0].insert("after".into(), "x".into()).unwrap();
    assert!(wait_until(T, || caches.iter().all(|c| c.len() == 1)));
}

#[test]
fn concurrent_writers_on_three_nodes_end_with_identical_checksums() {
    let nodes = start(3, 2, 46102);
    let caches: Vec<_> = nodes
        .iter()
        .map(|n| n.cache::<u32, u64>("hot").unwrap())
        .collect();
    std::thread::scope(|s| {
        for (i, c) in caches.iter().enumerate() {
            s.spawn(move || {
                for j in 0..3000u64 {
                    let key = (j * 7 + i as u64) as u32 % 64;
                    if j % 11 == 0 {
                        c.remove(&key).unwrap();
                    } else {
                        c.insert(key, j * 10 + i as u64).unwrap();
                    }
                }
            });
        }
    });
    let converged = wait_until(T, || {
        let sums: Vec<u64> = caches.iter().map(|c| c.checksum()).collect();
        sums.windows(2).all(|w| w[0] == w[1])
    });
    let contents: Vec<BTreeMap<u32, u64>> = caches
        .iter()
        .map(|c| c.entries().into_iter().collect())
        .collect();
    assert!(
        converged,
        "checksums differ: {:?}",
        caches.iter().map(|c| c.checksum()).collect::<Vec<_>>()
    );
    assert_eq!(contents[0], contents[1]);
    assert_eq!(contents[1], contents[2]);
}

#[test]
fn values_from_zero_bytes_to_the_max_message_size_replicate() {
    let nodes = start(2, 3, 46103);
    let a = nodes[0]
        .cache::<u32, serde_bytes::ByteBuf>("blobs")
        .unwrap();
    let b = nodes[1]
        .cache::<u32, serde_bytes::ByteBuf>("blobs")
        .unwrap();
    let max = nodes[0].config().max_message_size;
    // Around one datagram, exact fragment multiples, and the largest value that fits.
    let sizes = [
        0usize,
        1,
        100,
        1_300,
        1_394,
        1_395,
        1_396,
        2_790,
        10_000,
        100_000,
        max - 64,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let value = serde_bytes::ByteBuf::from(vec![(i % 251) as u8; size]);
        a.insert(i as u32, value).unwrap();
    }
    assert!(wait_until(T, || b.len() == sizes.len()));
    for (i, &size) in sizes.iter().enumerate() {
        assert_eq!(
            b.get(&(i as u32)).map(|v| v.len()),
            Some(size),
            "size {size}"
        );
    }
    assert_eq!(a.checksum(), b.checksum());
    // One byte too many is refused locally, and nothing is half-stored anywhere.
    let too_big = serde_bytes::ByteBuf::from(vec![0u8; max]);
    assert!(matches!(
        a.insert(999, too_big),
        Err(mccache::Error::TooLarge { .. })
    ));
    assert!(!a.contains_key(&999));
}

#[test]
fn a_node_with_the_wrong_key_applies_nothing_and_counts_it() {
    let good = Node::start(config(4, 46104)).unwrap();
    let mut bad_cfg = config(4, 46104);
    bad_cfg.crypto_key = Some(mccache::generate_key());
    let bad = Node::start(bad_cfg).unwrap();
    let g = good.cache::<String, u32>("c").unwrap();
    let b = bad.cache::<String, u32>("c").unwrap();
    b.insert("x".into(), 1).unwrap();
    // A key the node does not have: its fingerprint is unknown (or, on a fingerprint
    // collision, authentication fails). Either way it is counted and dropped.
    let dropped = || {
        let m = good.network_metrics();
        m.dropped.get("auth_failure").copied().unwrap_or(0)
            + m.dropped.get("unknown_key_id").copied().unwrap_or(0)
    };
    assert!(wait_until(T, || dropped() > 0), "auth failures are counted");
    assert!(!g.contains_key(&"x".to_string()));
    assert!(
        good.members().is_empty(),
        "a node without the key is not a member"
    );
}

#[test]
fn cache_modes_replicate_update_if_present_and_invalidate() {
    let mut cfg = config(5, 46105);
    cfg.caches.entry("present".into()).or_default().cache_mode = Some(CacheMode::UpdateIfPresent);
    cfg.caches.entry("inval".into()).or_default().cache_mode = Some(CacheMode::Invalidate);
    let a = Node::start(cfg.clone()).unwrap();
    let b = Node::start(cfg).unwrap();
    assert!(wait_until(T, || a.members().len() == 1 && b.members().len() == 1));

    // Mode 1: full replication.
    let (fa, fb) = (
        a.cache::<u8, u8>("full").unwrap(),
        b.cache::<u8, u8>("full").unwrap(),
    );
    fa.insert(1, 1).unwrap();
    assert!(wait_until(T, || fb.get(&1) == Some(1)));

    // Mode 0: b only updates keys it already holds. (Each step waits until the previous write
    // has reached the other node, so versions order as written.)
    let seen = |n: &Node| {
        let m = n.network_metrics();
        m.changes_applied + m.changes_stale
    };
    let (pa, pb) = (
        a.cache::<u8, u8>("present").unwrap(),
        b.cache::<u8, u8>("present").unwrap(),
    );
    let a_seen = seen(&a);
    pb.insert(2, 0).unwrap();
    assert!(
        wait_until(T, || seen(&a) > a_seen),
        "a hears b's write (and skips it: a lacks key 2)"
    );
    assert_eq!(pa.get(&2), None);
    let b_seen = seen(&b);
    pa.insert(2, 20).unwrap();
    pa.insert(3, 30).unwrap();
    assert!(
        wait_until(T, || seen(&b) >= b_seen + 2),
        "b hears both writes"
    );
    assert_eq!(pb.get(&2), Some(20), "a held key is updated");
    assert_eq!(pb.get(&3), None, "an absent key is not created");

    // Mode 2: b drops its copy, so its next read misses.
    let (ia, ib) = (
        a.cache::<u8, u8>("inval").unwrap(),
        b.cache::<u8, u8>("inval").unwrap(),
    );
    let a_seen = seen(&a);
    ib.insert(5, 1).unwrap();
    assert!(wait_until(T, || seen(&a) > a_seen));
    ia.insert(5, 2).unwrap();
    assert!(
        wait_until(T, || !ib.contains_key(&5)),
        "the stale copy is dropped"
    );
    assert_eq!(ia.get(&5), Some(2), "the writer keeps its value");
}

#[test]
fn a_node_that_joins_mid_stream_gets_the_state_and_the_live_changes() {
    let nodes = start(2, 6, 46106);
    let c0 = nodes[0].cache::<u32, String>("s").unwrap();
    for i in 0..2000u32 {
        c0.insert(i, format!("v{i}")).unwrap();
    }
    c0.remove(&7).unwrap();
    let late = Node::start(config(6, 46106)).unwrap();
    let writer = std::thread::spawn({
        let c0 = c0.clone();
        move || {
            for i in 2000..2500u32 {
                c0.insert(i, format!("v{i}")).unwrap();
            }
        }
    });
    assert!(late.wait_ready(T).is_ready(), "the joiner reports ready");
    writer.join().unwrap();
    let cl = late.cache::<u32, String>("s").unwrap();
    assert!(wait_until(T, || cl.len() == c0.len() && cl.checksum() == c0.checksum()));
    assert_eq!(cl.get(&7), None, "a deleted key does not come back");
    assert_eq!(cl.get(&2499).as_deref(), Some("v2499"));
}

#[test]
fn remote_changes_reach_listeners_with_a_remote_origin_and_cluster_functions_answer() {
    let nodes = start(2, 7, 46107);
    let a = nodes[0].cache::<String, u32>("l").unwrap();
    let b = nodes[1].cache::<String, u32>("l").unwrap();
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    b.on_change(move |e| {
        s2.lock()
            .push((e.key.clone(), e.kind, e.origin, e.in_callback_window))
    });
    b.insert("k".into(), 1).unwrap();
    // a writes only once it holds b's value, so its version orders after b's.
    assert!(wait_until(T, || a.get(&"k".to_string()) == Some(1)));
    assert_eq!(b.get(&"k".to_string()), Some(1)); // a read arms the callback window
    a.insert("k".into(), 2).unwrap();
    assert!(wait_until(T, || seen.lock().iter().any(|(_, k, o, _)| *k
        == ChangeKind::Update
        && matches!(o, Origin::Remote(_)))));
    let ev = seen
        .lock()
        .iter()
        .find(|(_, k, _, _)| *k == ChangeKind::Update)
        .cloned()
        .unwrap();
    assert_eq!(ev.2, Origin::Remote(nodes[0].id()));
    assert!(
        ev.3,
        "a remote update of a key read within callback_win is flagged"
    );

    let metrics = nodes[0]
        .get_cluster_metrics(Some("l"), Duration::from_secs(2))
        .unwrap();
    assert_eq!(metrics.len(), 2, "both nodes answer");
    assert!(
        metrics.is_complete(),
        "no member missing: {:?}",
        metrics.missing
    );
    let sums = nodes[1]
        .get_cluster_checksum("l", None::<&String>, Duration::from_secs(2))
        .unwrap();
    assert_eq!(sums.len(), 2);
    let distinct: std::collections::BTreeSet<_> = sums.values().collect();
    assert_eq!(
        distinct.len(),
        1,
        "converged checksums agree: {:?}",
        sums.answers
    );
    nodes[0].clear_cache("l").unwrap();
    assert!(wait_until(T, || a.is_empty() && b.is_empty()));
}

#[test]
fn shutdown_is_seen_as_a_leave() {
    let nodes = start(2, 8, 46108);
    let id = nodes[1].id();
    nodes[1].shutdown();
    assert!(wait_until(T, || nodes[0]
        .members()
        .iter()
        .all(|m| m.id != id)));
}

#[test]
fn writes_to_an_idle_node_leave_from_the_writing_thread() {
    // One write at a time, each awaited on the peer: the network thread is idle when the next
    // write comes, so the writer sends it itself (the express lane).
    let nodes = start(2, 9, 46109);
    let (a, b) = (
        nodes[0].cache::<u32, u64>("express").unwrap(),
        nodes[1].cache::<u32, u64>("express").unwrap(),
    );
    for i in 0..40u32 {
        a.insert(i, u64::from(i) * 3).unwrap();
        assert!(
            wait_until(T, || b.get(&i) == Some(u64::from(i) * 3)),
            "write {i} replicated"
        );
    }
    let m = nodes[0].network_metrics();
    assert!(
        m.express_changes >= 20 && m.express_changes <= m.changes_sent,
        "most writes to an idle node go out from the writer: {} of {} changes",
        m.express_changes,
        m.changes_sent
    );
    assert_eq!(a.checksum(), b.checksum());

    // Under fault injection on sends every change goes through the network thread, where the
    // injector is: the express lane stays shut.
    let mut cfg = config(9, 46110);
    cfg.monkey_tantrum = 1.0;
    let lossy = Node::start(cfg).unwrap();
    let c = lossy.cache::<u32, u64>("express").unwrap();
    for i in 0..10u32 {
        c.insert(i, 1).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(wait_until(T, || lossy.network_metrics().changes_sent == 10));
    assert_eq!(lossy.network_metrics().express_changes, 0);
}

#[test]
fn the_kernel_drops_a_nodes_own_looped_back_datagrams() {
    // Multicast loops every datagram back to the sending host (other nodes here need it); the
    // node's receive socket filters out its own, so they are neither copied nor counted.
    let nodes = start(2, 10, 46111);
    let (a, b) = (
        nodes[0].cache::<u32, u64>("echo").unwrap(),
        nodes[1].cache::<u32, u64>("echo").unwrap(),
    );
    for i in 0..20u32 {
        a.insert(i, 1).unwrap();
    }
    assert!(
        wait_until(T, || b.len() == 20),
        "the peer on this host hears them"
    );
    let own_echoes = |n: &Node| {
        let m = n.network_metrics();
        m.dropped.get("own_echo").copied().unwrap_or(0)
    };
    // The echoes, if any reached the socket, arrived with B's copies: a few passes of A's
    // network thread later they would be counted.
    for _ in 0..10 {
        assert_eq!(own_echoes(&nodes[0]), 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(nodes[0].network_metrics().datagrams_sent >= 1);
}

#[test]
fn reused_record_buffers_carry_exactly_each_new_value() {
    // The network thread hands the key and value buffers of sent changes back to the writers,
    // which copy later changes into them: a long value followed by a short one in the same
    // buffer must arrive as the short one, byte for byte, over many rounds of reuse. Keys and
    // values of up to 16 bytes travel inside the record instead: the lengths here (keys of 6
    // to 17 bytes serialized, values of 0 to 299) cross that bound both ways.
    let nodes = start(2, 11, 46112);
    let (a, b) = (
        nodes[0].cache::<String, Vec<u8>>("reuse").unwrap(),
        nodes[1].cache::<String, Vec<u8>>("reuse").unwrap(),
    );
    let value = |round: usize, k: usize| -> Vec<u8> {
        let len = (round * 37 + k * 11) % 300;
        (0..len).map(|i| (i + round + k) as u8).collect()
    };
    for round in 0..30 {
        for k in 0..50 {
            a.insert(
                format!("key-{}", "x".repeat((round + k) % 9) + &k.to_string()),
                value(round, k),
            )
            .unwrap();
        }
    }
    assert!(
        wait_until(T, || b.checksum() == a.checksum()),
        "the peer converges"
    );
    let sorted = |mut v: Vec<(String, Vec<u8>)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(b.entries()), sorted(a.entries()));
}
