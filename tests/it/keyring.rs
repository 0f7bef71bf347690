//! Rolling key rotation across three nodes with no lost update: start with `[old]`, restart
//! each node in turn with `[old, new]`, then `[new, old]`, then `[new]`, while a writer keeps
//! writing. At the end every cache is identical and holds every key with its last value, and a
//! node still on `[old]` can no longer read or write the cluster.

#![forbid(unsafe_code)]

use crate::hostile_util;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hostile_util::{KEY_B64, T, config, dropped, wait_until};
use mccache::{Cache, Node};
use parking_lot::Mutex;

const G: u8 = 30;
const PORT: u16 = 47130;
const CLUSTER: &str = "rotation";

struct Member {
    node: Node,
    cache: Cache<u32, u64>,
}

fn start(keys: &[&str]) -> Member {
    let node = Node::start(config(G, PORT, CLUSTER, keys)).expect("node starts");
    let cache = node.cache::<u32, u64>("rot").unwrap();
    Member { node, cache }
}

#[test]
fn rolling_rotation_loses_no_update() {
    let old = KEY_B64.to_string();
    let new = mccache::generate_key();
    let members: Arc<Mutex<Vec<Member>>> =
        Arc::new(Mutex::new((0..3).map(|_| start(&[&old])).collect()));
    for m in members.lock().iter() {
        assert!(
            wait_until(T, || m.node.members().len() == 2),
            "membership forms"
        );
    }
    // The node being restarted (usize::MAX: none); the writer leaves it alone.
    let restarting = Arc::new(AtomicUsize::new(usize::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let expected: Arc<Mutex<BTreeMap<u32, u64>>> = Arc::default();
    let writer = {
        let (members, restarting, stop, expected) = (
            members.clone(),
            restarting.clone(),
            stop.clone(),
            expected.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let target = (n % 3) as usize;
                let busy = restarting.load(Ordering::SeqCst);
                if target != busy {
                    let ms = members.lock();
                    let key = (n % 257) as u32;
                    ms[target].cache.insert(key, n).unwrap();
                    expected.lock().insert(key, n);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };

    let phases: [Vec<&str>; 3] = [vec![&old, &new], vec![&new, &old], vec![&new]];
    for keys in &phases {
        for i in 0..3 {
            restarting.store(i, Ordering::SeqCst);
            // Let what the writer already gave node i leave it before it stops.
            std::thread::sleep(Duration::from_millis(300));
            members.lock()[i].node.shutdown();
            let fresh = start(keys);
            assert!(
                fresh.node.wait_ready(T).is_ready(),
                "restarted node {i} becomes ready"
            );
            assert!(
                wait_until(T, || fresh.node.members().len() == 2),
                "restarted node {i} rejoins ({keys:?})"
            );
            members.lock()[i] = fresh;
            restarting.store(usize::MAX, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 500, "the writer kept writing: {writes}");

    let expected = expected.lock().clone();
    let ms = members.lock();
    let converged = wait_until(Duration::from_secs(30), || {
        ms.iter().all(|m| {
            m.cache.len() == expected.len()
                && expected.iter().all(|(k, v)| m.cache.get(k) == Some(*v))
        })
    });
    let sums: Vec<u64> = ms.iter().map(|m| m.cache.checksum()).collect();
    assert!(
        converged,
        "lost updates: expected {} keys, caches hold {:?}",
        expected.len(),
        ms.iter().map(|m| m.cache.len()).collect::<Vec<_>>()
    );
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "{sums:?}");
    // Every node now speaks only the new key, and nothing between them failed authentication.
    for m in ms.iter() {
        assert_eq!(m.node.config().crypto_keys, vec![new.clone()]);
        assert_eq!(dropped(&m.node, "auth_failure"), 0);
        assert_eq!(dropped(&m.node, "unknown_key_id"), 0);
    }

    // A node left behind on the old key is shut out both ways.
    let stale = start(&[&old]);
    let stale_before: Vec<u64> = ms
        .iter()
        .map(|m| dropped(&m.node, "unknown_key_id"))
        .collect();
    assert!(wait_until(T, || ms
        .iter()
        .zip(&stale_before)
        .all(|(m, b)| dropped(&m.node, "unknown_key_id") > *b)));
    assert!(wait_until(T, || dropped(&stale.node, "unknown_key_id") > 0));
    stale.cache.insert(1, u64::MAX).unwrap();
    ms[0].cache.insert(9999, 1).unwrap();
    assert!(wait_until(T, || ms
        .iter()
        .all(|m| m.cache.get(&9999) == Some(1))));
    assert!(stale.node.members().is_empty());
    assert_eq!(stale.cache.get(&9999), None);
    assert!(ms.iter().all(|m| m.cache.get(&1) != Some(u64::MAX)));
}
