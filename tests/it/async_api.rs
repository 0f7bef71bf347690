//! The async API under tokio: async loaders sharing one flight with sync callers, async
//! stale-while-revalidate, and async readiness and cluster queries on a loopback cluster.

use crate::support::cluster as cluster_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster_support::config;
use mccache::unstable::FakeClock;
use mccache::{Config, Error, Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_sync_callers_share_one_loader() {
    let node = Node::start_local(Config::default()).unwrap();
    let cache = node.cache::<u32, String>("shared").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());

    // The leader: an async loader that waits until released.
    let leader = {
        let (cache, calls, release) = (cache.clone(), calls.clone(), release.clone());
        tokio::spawn(async move {
            cache
                .get_or_insert_with_async(1, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = started_tx.send(());
                    release.notified().await;
                    "loaded".to_string()
                })
                .await
        })
    };
    started_rx.await.unwrap();
    // While it loads: 40 async callers and 4 blocking sync callers of the same key.
    let mut waiters = Vec::new();
    for _ in 0..40 {
        let (cache, calls) = (cache.clone(), calls.clone());
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load_async(1, move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>("second".to_string())
                })
                .await
        }));
    }
    let mut blocking = Vec::new();
    for _ in 0..4 {
        let (cache, calls) = (cache.clone(), calls.clone());
        blocking.push(tokio::task::spawn_blocking(move || {
            cache.get_or_insert_with(1, || {
                calls.fetch_add(1, Ordering::SeqCst);
                "third".to_string()
            })
        }));
    }
    // Let every waiter reach the flight, then release the loader.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.notify_one();
    assert_eq!(leader.await.unwrap().unwrap(), "loaded");
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), "loaded");
    }
    for b in blocking {
        assert_eq!(b.await.unwrap().unwrap(), "loaded");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader for 45 callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_loader_errors_and_stale_refresh_on_the_runtime() {
    let clock = Arc::new(FakeClock::new());
    let node = mccache::unstable::start_with_clock(Config::default(), clock.clone()).unwrap();
    let cache = node
        .cache_builder::<u32, u64>("prices")
        .fresh_for(Duration::from_secs(1))
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    // A failing loader on a miss: the error reaches the caller, nothing stored.
    let err = cache
        .try_get_or_insert_with_async(5, async {
            Err::<u64, Error>(Error::Diagnostic("down".into()))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("down"));
    assert_eq!(cache.get(&5), None);

    let loads = Arc::new(AtomicUsize::new(0));
    let loader = |loads: Arc<AtomicUsize>| {
        move |k: u32| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<u64, Error>(u64::from(k) * 100 + loads.fetch_add(1, Ordering::SeqCst) as u64)
        }
    };
    assert_eq!(
        cache
            .get_or_load_async(5, loader(loads.clone()))
            .await
            .unwrap(),
        500
    );
    clock.advance(Duration::from_secs(2));
    // Stale: served at once, refreshed by a task on this runtime.
    assert_eq!(
        cache
            .get_or_load_async(5, loader(loads.clone()))
            .await
            .unwrap(),
        500
    );
    let mut refreshed = false;
    for _ in 0..500 {
        if cache.get(&5) == Some(501) {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refreshed, "the background refresh never stored its value");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(cache.metrics().refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_readiness_and_cluster_queries() {
    let a = Node::start(config(1, 47501)).unwrap();
    assert!(a.wait_ready_async(Duration::from_secs(5)).await.is_ready());
    let b = Node::start(config(1, 47501)).unwrap();
    assert!(b.wait_ready_async(Duration::from_secs(10)).await.is_ready());
    let ca = a.cache::<u32, u32>("q").unwrap();
    let cb = b.cache::<u32, u32>("q").unwrap();
    for i in 0..100 {
        ca.insert(i, i * 2).unwrap();
    }
    let mut converged = false;
    for _ in 0..1000 {
        if cb.len() == 100 && cb.checksum() == ca.checksum() {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(converged, "b never received a's writes");
    let sums = a
        .get_cluster_checksum_async("q", None::<u32>, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(sums.len(), 2, "{sums:?}");
    assert!(sums.values().all(|s| *s == Some(ca.checksum())));
    let key_sums = b
        .get_cluster_checksum_async("q", Some(7u32), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(key_sums.len(), 2);
    assert!(
        key_sums
            .values()
            .all(|s| *s == ca.key_checksum(&7).map(u64::from))
    );
    let metrics = b
        .get_cluster_metrics_async(Some("q"), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(metrics.len(), 2);
    assert!(metrics.values().all(|m| m["q"].entries == 100));
    let net = a.network_metrics_async().await;
    assert!(net.changes_sent >= 100, "{net:?}");
    a.shutdown();
    b.shutdown();
}
