//! Stale-while-revalidate, fail-safe and eager refresh through `Cache::get_or_load`, with a
//! test clock so that "stale" is exact, and real threads racing for the refresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mccache::unstable::FakeClock;
use mccache::{Cache, Config, Error, Node};

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn setup(eager: Option<f64>) -> (Node, Arc<FakeClock>, Cache<u32, String>) {
    let clock = Arc::new(FakeClock::new());
    let node = mccache::unstable::start_with_clock(Config::default(), clock.clone()).unwrap();
    let mut b = node
        .cache_builder::<u32, String>("swr")
        .fresh_for(Duration::from_millis(1000))
        .ttl(Duration::from_secs(10));
    if let Some(x) = eager {
        b = b.eager_refresh(x);
    }
    let cache = b.build().unwrap();
    (node, clock, cache)
}

/// A loader that counts its calls, answers `v{n}` (n = call number) after `delay`, and fails
/// while `fail` is set.
#[derive(Clone, Default)]
struct Source {
    calls: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Source {
    fn loader(
        &self,
        delay: Duration,
    ) -> impl FnOnce(&u32) -> Result<String, Error> + Send + 'static {
        let s = self.clone();
        move |_k| {
            let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(delay);
            if s.fail.load(Ordering::SeqCst) {
                Err(Error::Diagnostic(format!("source down (call {n})")))
            } else {
                Ok(format!("v{n}"))
            }
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[test]
fn stale_value_is_served_at_once_and_refreshed_once() {
    let (_node, clock, cache) = setup(None);
    let src = Source::default();
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    // Fresh: no loader call.
    clock.advance(Duration::from_millis(500));
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    assert_eq!(src.calls(), 1);
    // Stale: 16 readers at once all get v1 without waiting for the slow loader; one refresh.
    clock.advance(Duration::from_millis(600));
    let slow = Duration::from_millis(300);
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (c, s) = (cache.clone(), src.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                let v = c.get_or_load(1, s.loader(slow)).unwrap();
                (v, t.elapsed())
            })
        })
        .collect();
    for r in readers {
        let (v, took) = r.join().unwrap();
        assert_eq!(v, "v1");
        assert!(took < slow, "a stale read waited for the loader ({took:?})");
    }
    assert!(wait_until(Duration::from_secs(10), || cache
        .get(&1)
        .as_deref()
        == Some("v2")));
    assert_eq!(src.calls(), 2, "exactly one refresh");
    let m = cache.metrics();
    assert_eq!((m.refreshes, m.loads, m.load_failures), (1, 2, 0));
    assert_eq!(m.stale_served, 16);
    // The refreshed value is fresh again.
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v2"
    );
    assert_eq!(src.calls(), 2);
}

#[test]
fn failing_loader_leaves_the_stale_value_until_the_ttl_ends() {
    let (_node, clock, cache) = setup(None);
    let src = Source::default();
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    src.fail.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_millis(1500));
    // Stale: served; the refresh fails in the background and is counted.
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    assert!(wait_until(Duration::from_secs(10), || cache
        .metrics()
        .load_failures
        == 1));
    assert_eq!(src.calls(), 2);
    // Still served; within the retry pause the failing source is not called again.
    for _ in 0..10 {
        assert_eq!(
            cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
            "v1"
        );
    }
    assert_eq!(src.calls(), 2);
    // After the pause, one more try (fails again), value still there.
    clock.advance(Duration::from_millis(1100));
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    assert!(wait_until(Duration::from_secs(10), || cache
        .metrics()
        .load_failures
        == 2));
    assert_eq!(cache.get(&1).as_deref(), Some("v1"));
    // Past the usable period (ttl 10 s): gone; a miss runs the loader inline and its error
    // reaches the caller.
    clock.advance(Duration::from_secs(8));
    let err = cache
        .get_or_load(1, src.loader(Duration::ZERO))
        .unwrap_err();
    assert!(err.to_string().contains("source down"), "{err}");
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.metrics().load_failures, 3);
    // The source recovers: the next read loads.
    src.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v5"
    );
}

#[test]
fn eager_refresh_renews_hot_entries_before_they_go_stale() {
    let (_node, clock, cache) = setup(Some(0.5));
    let src = Source::default();
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    clock.advance(Duration::from_millis(400));
    cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap();
    assert_eq!(src.calls(), 1, "below the eager threshold");
    clock.advance(Duration::from_millis(200)); // 600 ms: past 0.5 × fresh, still fresh
    assert_eq!(
        cache.get_or_load(1, src.loader(Duration::ZERO)).unwrap(),
        "v1"
    );
    assert!(wait_until(Duration::from_secs(10), || cache
        .get(&1)
        .as_deref()
        == Some("v2")));
    let m = cache.metrics();
    assert_eq!((m.refreshes, m.stale_served), (1, 0));
}

#[test]
fn miss_runs_one_loader_for_concurrent_callers_and_a_cache_without_fresh_for_never_refreshes() {
    let node = Node::start_local(Config::default()).unwrap();
    let cache = node.cache::<u32, String>("plain").unwrap();
    let src = Source::default();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (c, s) = (cache.clone(), src.clone());
            std::thread::spawn(move || {
                c.get_or_load(9, s.loader(Duration::from_millis(100)))
                    .unwrap()
            })
        })
        .collect();
    for c in callers {
        assert_eq!(c.join().unwrap(), "v1");
    }
    assert_eq!(src.calls(), 1);
    // The plain get_or_insert_with shares the flight table and sees the value.
    assert_eq!(
        cache.get_or_insert_with(9, || unreachable!()).unwrap(),
        "v1"
    );
    assert_eq!(cache.metrics().refreshes, 0);
}
