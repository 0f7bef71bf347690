//! Cluster-wide single flight: while one node loads a key through `get_or_load`, a peer that
//! misses the same key waits (bounded) for the replicated value instead of loading it too.

use crate::support::cluster as cluster_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use cluster_support::{config, wait_until};
use mccache::{Cache, Error, Node};

fn pair(
    group: u8,
    port: u16,
    wait: Duration,
) -> (Node, Node, Cache<String, String>, Cache<String, String>) {
    let a = Node::start(config(group, port)).unwrap();
    assert!(a.wait_ready(Duration::from_secs(5)).is_ready());
    let b = Node::start(config(group, port)).unwrap();
    assert!(b.wait_ready(Duration::from_secs(10)).is_ready());
    assert!(wait_until(Duration::from_secs(10), || a.members().len()
        == 1
        && b.members().len() == 1));
    let ca = a
        .cache_builder("users")
        .peer_load_wait(wait)
        .build()
        .unwrap();
    let cb = b
        .cache_builder("users")
        .peer_load_wait(wait)
        .build()
        .unwrap();
    (a, b, ca, cb)
}

#[test]
fn a_peer_waits_for_the_loading_node_instead_of_loading_too() {
    let (a, b, ca, cb) = pair(4, 47504, Duration::from_secs(20));
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let loader_a = {
        let (ca, calls) = (ca.clone(), calls.clone());
        std::thread::spawn(move || {
            ca.get_or_load("k".to_string(), move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, Error>("from a".to_string())
            })
        })
    };
    started_rx.recv().unwrap();
    // b hears that a is loading k.
    assert!(wait_until(Duration::from_secs(10), || cb
        .metrics()
        .peer_loads_seen
        == 1));
    let reader_b = {
        let (cb, calls) = (cb.clone(), calls.clone());
        std::thread::spawn(move || {
            cb.get_or_load("k".to_string(), move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>("from b".to_string())
            })
        })
    };
    // b has missed (and is now waiting for a's value); let a finish.
    assert!(wait_until(Duration::from_secs(10), || cb.metrics().misses == 1));
    release_tx.send(()).unwrap();
    assert_eq!(loader_a.join().unwrap().unwrap(), "from a");
    assert_eq!(reader_b.join().unwrap().unwrap(), "from a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one loader call in the whole cluster"
    );
    let m = cb.metrics();
    assert_eq!((m.peer_load_waits, m.loads), (1, 0));
    assert_eq!(ca.metrics().loads, 1);
    a.shutdown();
    b.shutdown();
}

#[test]
fn the_wait_is_bounded_when_the_loading_node_fails() {
    let (a, b, ca, cb) = pair(5, 47505, Duration::from_millis(300));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let failed = ca.get_or_load("k".to_string(), move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        Err::<String, _>(Error::Diagnostic("source down".into()))
    });
    assert!(failed.is_err());
    assert!(wait_until(Duration::from_secs(10), || cb
        .metrics()
        .peer_loads_seen
        == 1));
    let c = calls.clone();
    let v = cb
        .get_or_load("k".to_string(), move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("from b".to_string())
        })
        .unwrap();
    assert_eq!(v, "from b", "b loaded itself once the bounded wait ended");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cb.metrics().peer_load_waits, 0);
    // b's value replicates to a like any write.
    assert!(wait_until(Duration::from_secs(10), || ca
        .get(&"k".to_string())
        .as_deref()
        == Some("from b")));
    a.shutdown();
    b.shutdown();
}
