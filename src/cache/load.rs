//! Loading through the cache: [`Cache::get_or_load`] with stale-while-revalidate, fail-safe and
//! eager refresh, and the async forms of the single-flight loaders.
//!
//! Every loader of one cache shares the store's flight table with
//! [`Cache::get_or_insert_with`], so sync callers, async callers and background refreshes of a
//! key run at most one loader at a time on this node.
//!
//! Freshness is measured from the write's version (the writer's hybrid clock), so every node
//! of the cluster agrees on when a value goes stale, and a refreshed value, being an ordinary
//! write, replicates to the peers, which then serve it fresh without running their loaders.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::cache::handle::Cache;
use crate::cache::hooks::{Change, ChangeKindWire};
use crate::cache::metrics::CacheMetrics;
use crate::cache::store::{CacheKey, CacheValue, Cond, Flight, Store, Ttl};
use crate::config::CacheMode;
use crate::error::Error;
use crate::proto::version::Version;

/// Background refreshes one cache runs at once; reads past this serve the stale value and
/// leave the refresh to a later read.
const MAX_REFRESHES: usize = 16;

/// After a failed refresh, the same key is not refreshed again for this long (or `fresh_for`
/// if shorter), so a failing source is not called on every read.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a peer's loading announcement is remembered at most (pruning bound).
const PEER_MARK_NANOS: u64 = 60_000_000_000;

/// How often a read waiting for a peer's load looks for the value.
const PEER_POLL: Duration = Duration::from_millis(2);

/// Loader counters and refresh state of one cache.
pub(crate) struct LoadState<K> {
    loads: AtomicU64,
    failures: AtomicU64,
    refreshes: AtomicU64,
    stale: AtomicU64,
    running: Arc<AtomicUsize>,
    /// Wall ms of each key's last failed refresh (throttle); pruned as it grows.
    failed_at: Mutex<HashMap<K, u64, foldhash::fast::RandomState>>,
    /// Keys (serialized) peers announced they are loading, with the monotonic nanos of the
    /// announcement; pruned as it grows.
    peer_loading: Mutex<HashMap<Vec<u8>, u64, foldhash::fast::RandomState>>,
    peer_seen: AtomicU64,
    peer_waits: AtomicU64,
}

impl<K: CacheKey> LoadState<K> {
    pub(crate) fn new() -> LoadState<K> {
        LoadState {
            loads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            failed_at: Mutex::new(HashMap::default()),
            peer_loading: Mutex::new(HashMap::default()),
            peer_seen: AtomicU64::new(0),
            peer_waits: AtomicU64::new(0),
        }
    }

    pub(crate) fn add_to(&self, m: &mut CacheMetrics) {
        m.loads = self.loads.load(Ordering::Relaxed);
        m.load_failures = self.failures.load(Ordering::Relaxed);
        m.refreshes = self.refreshes.load(Ordering::Relaxed);
        m.stale_served = self.stale.load(Ordering::Relaxed);
        m.peer_loads_seen = self.peer_seen.load(Ordering::Relaxed);
        m.peer_load_waits = self.peer_waits.load(Ordering::Relaxed);
    }

    /// A peer announced it is loading `key` (at monotonic `now`).
    pub(crate) fn peer_loading(&self, key: &[u8], now: u64) {
        self.peer_seen.fetch_add(1, Ordering::Relaxed);
        let mut p = self.peer_loading.lock();
        if p.len() >= 4096 {
            p.retain(|_, at| now.saturating_sub(*at) < PEER_MARK_NANOS);
        }
        p.insert(key.to_vec(), now);
    }

    /// Until when (monotonic nanos) to wait for a peer's load of `key`, if one was announced
    /// less than `wait` ago.
    fn peer_deadline(&self, key: &[u8], now: u64, wait: Duration) -> Option<u64> {
        let p = self.peer_loading.lock();
        let at = *p.get(key)?;
        let end = at.saturating_add(wait.as_nanos().min(u128::from(u64::MAX)) as u64);
        (end > now).then_some(end)
    }

    fn failed(&self, key: &K, now_ms: u64, retry_ms: u64) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failed_at.lock();
        if f.len() >= 4096 {
            f.retain(|_, at| now_ms.saturating_sub(*at) < retry_ms);
        }
        f.insert(key.clone(), now_ms);
    }

    fn throttled(&self, key: &K, now_ms: u64, retry_ms: u64) -> bool {
        let f = self.failed_at.lock();
        f.get(key)
            .is_some_and(|at| now_ms.saturating_sub(*at) < retry_ms)
    }

    fn succeeded(&self, key: &K) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failed_at.lock();
        if !f.is_empty() {
            f.remove(key);
        }
    }
}

/// What a read found, judged against `fresh_for` and `eager_refresh`.
enum Read<V> {
    Fresh(V),
    /// Usable now, but refresh it (stale, or fresh past the eager threshold).
    Refresh(V, Version),
    Miss,
}

/// The leader of a flight: completes it when dropped (with `value`, or as failed).
struct Lead<K: CacheKey, V: CacheValue> {
    store: Arc<Store<K, V>>,
    key: Option<K>,
    flight: Arc<Flight<V>>,
    value: Option<V>,
}

impl<K: CacheKey, V: CacheValue> Drop for Lead<K, V> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.store.flights.lock().remove(&k);
        }
        self.flight.complete(self.value.take());
    }
}

enum Join<K: CacheKey, V: CacheValue> {
    Lead(Lead<K, V>),
    Wait(Arc<Flight<V>>),
}

fn join<K: CacheKey, V: CacheValue>(
    store: &Arc<Store<K, V>>,
    key: &K,
    only_lead: bool,
) -> Option<Join<K, V>> {
    let mut flights = store.flights.lock();
    if let Some(f) = flights.get(key) {
        return (!only_lead).then(|| Join::Wait(f.clone()));
    }
    let flight = Arc::new(Flight::new());
    flights.insert(key.clone(), flight.clone());
    Some(Join::Lead(Lead {
        store: store.clone(),
        key: Some(key.clone()),
        flight,
        value: None,
    }))
}

fn wait_blocking<V: Clone>(flight: &Flight<V>) -> Option<V> {
    let mut state = flight.state.lock();
    while state.is_none() {
        flight.done.wait(&mut state);
    }
    state.as_ref().and_then(|v| v.clone())
}

async fn wait_async<V: Clone>(flight: &Flight<V>) -> Option<V> {
    loop {
        if let Some(done) = flight.state.lock().as_ref() {
            return done.clone();
        }
        let listener = flight.event.listen();
        if let Some(done) = flight.state.lock().as_ref() {
            return done.clone();
        }
        listener.await;
    }
}

/// Runs `f` on a thread of its own; the future resolves to its result (`None` if the thread
/// could not start or `f` panicked). Works under any executor.
pub(crate) async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mccache-wait".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
}

/// Runs `fut` to completion off the caller: on the current tokio runtime if there is one,
/// else on a thread of its own.
fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        drop(handle.spawn(fut));
    } else if let Err(e) = std::thread::Builder::new()
        .name("mccache-refresh".into())
        .spawn(move || pollster::block_on(fut))
    {
        tracing::warn!(error = %e, "mccache: cannot start a refresh thread");
    }
}

impl<K: CacheKey, V: CacheValue> Cache<K, V> {
    fn read_fresh(&self, key: &K) -> Read<V> {
        let Some((value, version)) = self.store.get_with_version(key) else {
            return Read::Miss;
        };
        let cfg = self.store.config();
        let Some(fresh) = cfg.fresh_for else {
            return Read::Fresh(value);
        };
        let age = self
            .store
            .core
            .clock
            .wall_ms()
            .saturating_sub(version.millis());
        let fresh_ms = fresh.as_millis() as u64;
        if age >= fresh_ms {
            self.store.loads.stale.fetch_add(1, Ordering::Relaxed);
            return Read::Refresh(value, version);
        }
        match cfg.eager_refresh {
            Some(x) if age as f64 >= x * fresh_ms as f64 => Read::Refresh(value, version),
            _ => Read::Fresh(value),
        }
    }

    /// The serialized key and the deadline of a peer's announced load of it, when this cache
    /// replicates values and a peer is loading the key now.
    fn peer_load(&self, key: &K) -> Option<u64> {
        let cfg = self.store.config();
        if cfg.mode != CacheMode::Replicate || cfg.peer_load_wait.is_zero() {
            return None;
        }
        let bytes = rmp_serde::to_vec(key).ok()?;
        let now = self.store.core.clock.now_nanos();
        self.store
            .loads
            .peer_deadline(&bytes, now, cfg.peer_load_wait)
    }

    /// Waits until `deadline` for the key to arrive (a peer's replicated load).
    fn poll_peer(&self, key: &K, deadline: u64) -> Option<V> {
        loop {
            if let Some((v, _)) = self.store.peek_value(key) {
                self.store.loads.peer_waits.fetch_add(1, Ordering::Relaxed);
                return Some(v);
            }
            if self.store.core.clock.now_nanos() >= deadline {
                return None;
            }
            std::thread::sleep(PEER_POLL);
        }
    }

    /// Tells the peers this node is loading `key` (replicating caches on a networked node).
    fn announce(&self, key: &K) {
        let core = &self.store.core;
        if self.store.config().mode != CacheMode::Replicate || !core.publisher.enabled() {
            return;
        }
        if let Ok(bytes) = rmp_serde::to_vec(key) {
            core.publisher.publish(Change {
                cache: Arc::from(self.name()),
                kind: ChangeKindWire::Loading(bytes),
            });
        }
    }

    fn retry_ms(&self) -> u64 {
        let fresh = self.store.config().fresh_for.unwrap_or(RETRY_AFTER);
        fresh.min(RETRY_AFTER).as_millis() as u64
    }

    /// Takes the lead of a background refresh of `key`, unless one is running, the key failed
    /// just now, or too many refreshes run already.
    fn refresh_lead(&self, key: &K) -> Option<(Lead<K, V>, RunningGuard)> {
        let loads = &self.store.loads;
        if loads.throttled(key, self.store.core.clock.wall_ms(), self.retry_ms()) {
            return None;
        }
        if loads.running.fetch_add(1, Ordering::AcqRel) >= MAX_REFRESHES {
            loads.running.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let running = RunningGuard(loads.running.clone());
        // A peer is refreshing it: its value will replicate here.
        if self.peer_load(key).is_some() {
            return None;
        }
        match join(&self.store, key, true)? {
            Join::Lead(lead) => {
                loads.refreshes.fetch_add(1, Ordering::Relaxed);
                self.announce(key);
                Some((lead, running))
            }
            Join::Wait(_) => None,
        }
    }

    /// Stores a loader's result under `lead`, or counts its failure.
    fn finish<E: Display + From<Error>>(
        &self,
        mut lead: Lead<K, V>,
        key: K,
        seen: Option<Version>,
        loaded: Result<V, E>,
    ) -> Result<V, E> {
        let loads = &self.store.loads;
        let value = match loaded {
            Ok(v) => v,
            Err(e) => {
                loads.failed(&key, self.store.core.clock.wall_ms(), self.retry_ms());
                return Err(e);
            }
        };
        // A refresh only replaces the version it read: a newer write (a peer's refresh, an
        // application write) that arrived meanwhile wins.
        let cond = match seen {
            Some(v) => Cond::IfVersion(Some(v)),
            None => Cond::Always,
        };
        match self
            .store
            .write(key.clone(), value.clone(), cond, Ttl::Cache)
        {
            Ok(_) => {
                loads.succeeded(&key);
                lead.value = Some(value.clone());
                Ok(value)
            }
            Err(Error::VersionMismatch { .. }) => {
                loads.succeeded(&key);
                lead.value = self.store.peek_value(&key).map(|(v, _)| v);
                Ok(lead.value.clone().unwrap_or(value))
            }
            Err(e) => {
                loads.failed(&key, self.store.core.clock.wall_ms(), self.retry_ms());
                Err(e.into())
            }
        }
    }

    /// The value under `key`, loading it with `load` on a miss, with stale-while-revalidate,
    /// fail-safe and eager refresh when the cache has [`fresh_for`](crate::CacheBuilder::fresh_for).
    ///
    /// - Fresh value: returned.
    /// - Stale value (older than `fresh_for`, younger than the TTL): returned at once, and one
    ///   background refresh runs `load` (single flight: never two loaders for a key on this
    ///   node). The refreshed value is stored and replicated like any write.
    /// - Fresh past `eager_refresh` × `fresh_for`: returned, and refreshed in the background.
    /// - Miss: `load` runs on the calling thread (concurrent callers of this key wait for it,
    ///   sync and async alike) and its value is stored.
    ///
    /// Fail-safe: a failed background refresh is counted
    /// ([`CacheMetrics::load_failures`]) and traced; the stale value stays usable until its
    /// TTL ends, and the key is not refreshed again for a second (or `fresh_for` if shorter).
    /// On a miss, the loader's error is returned to the caller that ran it (concurrent waiters
    /// get [`Error::LoaderFailed`]).
    ///
    /// Blocks the calling thread for the loader's run on a miss, or while another caller's
    /// loader of the same key runs. Background refreshes run on a thread of their own.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let users = node
    ///     .cache_builder::<u64, String>("users")
    ///     .fresh_for(Duration::from_secs(60))
    ///     .ttl(Duration::from_secs(3600))
    ///     .build()?;
    /// let name = users.get_or_load(7, |id| Ok::<_, mccache::Error>(format!("user {id}")))?;
    /// assert_eq!(name, "user 7");
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// The loader's error on a miss; [`Error::LoaderFailed`] (as `E`) if another caller's
    /// loader of the same key failed; a storage error (e.g. [`Error::TooLarge`]) as `E`.
    pub fn get_or_load<F, E>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce(&K) -> Result<V, E> + Send + 'static,
        E: From<Error> + Display + Send + 'static,
    {
        match self.read_fresh(&key) {
            Read::Fresh(v) => Ok(v),
            Read::Refresh(v, seen) => {
                if let Some((lead, running)) = self.refresh_lead(&key) {
                    let me = self.clone();
                    spawn_detached(async move {
                        let _running = running;
                        let loaded = load(&key);
                        me.report(me.finish(lead, key, Some(seen), loaded));
                    });
                }
                Ok(v)
            }
            Read::Miss => match join(&self.store, &key, false) {
                Some(Join::Lead(lead)) => {
                    if let Some((v, _)) = self.store.peek_value(&key) {
                        let mut lead = lead;
                        lead.value = Some(v.clone());
                        return Ok(v);
                    }
                    if let Some(v) = self.peer_load(&key).and_then(|d| self.poll_peer(&key, d)) {
                        let mut lead = lead;
                        lead.value = Some(v.clone());
                        return Ok(v);
                    }
                    self.announce(&key);
                    let loaded = load(&key);
                    self.finish(lead, key, None, loaded)
                }
                Some(Join::Wait(f)) => wait_blocking(&f).ok_or_else(|| Error::LoaderFailed.into()),
                None => Err(Error::LoaderFailed.into()),
            },
        }
    }

    /// The async form of [`Cache::get_or_load`]: `load` returns a future. On a miss the
    /// caller awaits it (concurrent callers of the key, sync or async, wait for it without
    /// blocking a thread when async); a background refresh runs on the current tokio runtime,
    /// or on a thread of its own outside one. Works under any executor.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let users = node.cache_builder::<u64, String>("users")
    ///     .fresh_for(Duration::from_secs(60)).build()?;
    /// let name = pollster::block_on(users.get_or_load_async(7, |id| async move {
    ///     Ok::<_, mccache::Error>(format!("user {id}"))
    /// }))?;
    /// assert_eq!(name, "user 7");
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Cache::get_or_load`].
    pub async fn get_or_load_async<F, Fut, E>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: From<Error> + Display + Send + 'static,
    {
        match self.read_fresh(&key) {
            Read::Fresh(v) => Ok(v),
            Read::Refresh(v, seen) => {
                if let Some((lead, running)) = self.refresh_lead(&key) {
                    let me = self.clone();
                    spawn_detached(async move {
                        let _running = running;
                        let loaded = load(key.clone()).await;
                        me.report(me.finish(lead, key, Some(seen), loaded));
                    });
                }
                Ok(v)
            }
            Read::Miss => self.load_async(key, load, true).await,
        }
    }

    /// The async form of [`Cache::get_or_insert_with`]: the value under `key`, or the value
    /// `load` resolves to, which is then stored. Single flight with every other loader of the
    /// key; waiting callers do not block their thread. `load` is dropped unpolled if the key
    /// is present or another caller is loading it.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("squares")?;
    /// let v = pollster::block_on(c.get_or_insert_with_async(7, async { 49 }))?;
    /// assert_eq!(v, 49);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Cache::get_or_insert_with`]; if the leading caller's future is dropped before it
    /// completes, the callers waiting for it get [`Error::LoaderFailed`].
    pub async fn get_or_insert_with_async<Fut>(&self, key: K, load: Fut) -> Result<V, Error>
    where
        Fut: Future<Output = V>,
    {
        self.try_get_or_insert_with_async(key, async { Ok::<V, Error>(load.await) })
            .await
    }

    /// [`Cache::get_or_insert_with_async`] with a fallible loader; the error goes to the
    /// caller whose future ran, nothing is stored, and waiters get [`Error::LoaderFailed`].
    ///
    /// # Errors
    /// As [`Cache::try_get_or_insert_with`].
    pub async fn try_get_or_insert_with_async<Fut, E>(&self, key: K, load: Fut) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
        E: From<Error> + Display,
    {
        if let Some(v) = self.store.get(&key) {
            return Ok(v);
        }
        self.load_async(key, |_| load, false).await
    }

    /// The async miss path; `peers`: take part in the cluster-wide single flight.
    async fn load_async<F, Fut, E>(&self, key: K, load: F, peers: bool) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: From<Error> + Display,
    {
        match join(&self.store, &key, false) {
            Some(Join::Lead(mut lead)) => {
                if let Some((v, _)) = self.store.peek_value(&key) {
                    lead.value = Some(v.clone());
                    return Ok(v);
                }
                if peers {
                    if let Some(deadline) = self.peer_load(&key) {
                        let (me, k) = (self.clone(), key.clone());
                        if let Some(Some(v)) = off_thread(move || me.poll_peer(&k, deadline)).await
                        {
                            lead.value = Some(v.clone());
                            return Ok(v);
                        }
                    }
                    self.announce(&key);
                }
                let loaded = load(key.clone()).await;
                self.finish(lead, key, None, loaded)
            }
            Some(Join::Wait(f)) => wait_async(&f)
                .await
                .ok_or_else(|| Error::LoaderFailed.into()),
            None => Err(Error::LoaderFailed.into()),
        }
    }

    fn report<E: Display>(&self, r: Result<V, E>) {
        if let Err(e) = r {
            tracing::warn!(
                cache = %self.name(),
                error = %e,
                "mccache: refresh failed; the stale value is served until its TTL ends"
            );
        }
    }
}

/// Counts a running background refresh; released when the refresh ends (or is dropped).
struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
