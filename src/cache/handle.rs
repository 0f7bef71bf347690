//! The typed, cloneable handle applications use: [`Cache<K, V>`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::event::{ChangeEvent, ListenerId, Metadata};
use crate::cache::metrics::CacheMetrics;
use crate::cache::store::{CacheKey, CacheValue, Cond, Flight, Store, Ttl};
use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::proto::version::Version;

/// A named, typed cache: an LRU-approximating map with TTL and entry/byte caps whose writes
/// are replicated to the other nodes of the cluster.
///
/// A `Cache` is a cheap handle (`Clone` copies an `Arc`); every clone sees the same entries.
/// `get` returns a clone of the value: wrap large values in `Arc` on your side if cloning is
/// expensive (the value is still serialized once per write for sizing and replication).
///
/// Keys and values are serde types, serialized with rmp-serde (MessagePack). The size that
/// counts against `cache_size` and `max_message_size` is the serialized key plus value.
///
/// ```
/// use mccache::{Config, Node};
///
/// let node = Node::start_local(Config::default())?;
/// let cache = node.cache::<String, u64>("visits")?;
/// cache.insert("home".to_string(), 1)?;
/// assert_eq!(cache.get(&"home".to_string()), Some(1));
/// assert_eq!(cache.remove(&"home".to_string())?, Some(1));
/// assert!(cache.is_empty());
/// # node.shutdown();
/// # Ok::<(), mccache::Error>(())
/// ```
pub struct Cache<K, V> {
    pub(crate) store: Arc<Store<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            store: self.store.clone(),
        }
    }
}

impl<K: CacheKey, V: CacheValue> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.store.name())
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: CacheValue> Cache<K, V> {
    /// The cache name.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("n")?;
    /// assert_eq!(c.name(), "n");
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        self.store.name()
    }

    /// The effective settings of this cache (TTL, caps, mode, callback window).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache_builder::<u32, u32>("cfg").max_entries(3).build()?;
    /// assert_eq!(c.config().max_entries, 3);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn config(&self) -> &CacheConfig {
        self.store.config()
    }

    /// A clone of the value under `key`, if it is present and not expired. Counts a lookup (hit
    /// or miss); a hit marks the entry recently used and arms the callback window.
    ///
    /// With a shared tier behind the cache (`backing`, the `memcached` feature), a local miss
    /// reads the tier, and a value found there is stored here (and replicated per the cache's
    /// mode). A local hit never touches the tier.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, String>("g")?;
    /// c.insert(1, "a".into())?;
    /// assert_eq!(c.get(&1).as_deref(), Some("a"));
    /// assert_eq!(c.get(&2), None);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        match self.store.get(key) {
            Some(v) => Some(v),
            None if self.store.has_backing() => self.store.read_through(key),
            None => None,
        }
    }

    /// The value and the version of its last write: the token for [`Cache::compare_and_swap`].
    /// Counts as a lookup like [`Cache::get`].
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("gv")?;
    /// let old = c.insert(1, 10)?;
    /// let (v, version) = c.get_with_version(&1).unwrap();
    /// assert_eq!((old, v, version.node), (None, 10, node.id()));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn get_with_version(&self, key: &K) -> Option<(V, Version)> {
        match self.store.get_with_version(key) {
            Some(v) => Some(v),
            None if self.store.has_backing() => {
                self.store.read_through(key)?;
                self.store.peek_value(key)
            }
            None => None,
        }
    }

    /// Whether a live entry exists for `key`. Counts as a lookup like [`Cache::get`]. Local
    /// only: it never reads a shared tier (`backing`).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("ck")?;
    /// c.insert(1, 1)?;
    /// assert!(c.contains_key(&1) && !c.contains_key(&2));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn contains_key(&self, key: &K) -> bool {
        self.store.contains_key(key)
    }

    /// Looks up several keys; the result is aligned with the input (`None` for misses).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("gm")?;
    /// c.insert(1, 10)?;
    /// assert_eq!(c.get_many(&[1, 2]), vec![Some(10), None]);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn get_many<'a, I>(&self, keys: I) -> Vec<Option<V>>
    where
        I: IntoIterator<Item = &'a K>,
    {
        keys.into_iter().map(|k| self.get(k)).collect()
    }

    /// Stores `value` under `key` with the cache's TTL; returns the value it replaced.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("i")?;
    /// assert_eq!(c.insert(1, 10)?, None);
    /// assert_eq!(c.insert(1, 11)?, Some(10));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::TooLarge`] if the serialized key + value exceed `max_message_size`,
    /// [`Error::ExceedsCacheSize`] if they exceed `cache_size`, [`Error::Serialization`] if
    /// rmp-serde refuses them. On error nothing is stored.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        Ok(self.store.write(key, value, Cond::Always, Ttl::Cache)?.old)
    }

    /// Stores `value` with its own TTL instead of the cache's (`Duration::ZERO`: never
    /// expires). The TTL is replicated with the value. Errors as [`Cache::insert`].
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("ttl")?;
    /// c.insert_with_ttl(1, 10, std::time::Duration::from_secs(30))?;
    /// assert!(c.metadata(&1).unwrap().expires.is_some());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<Option<V>> {
        Ok(self
            .store
            .write(key, value, Cond::Always, Ttl::Entry(ttl))?
            .old)
    }

    /// Stores several pairs. Every pair is serialized and size-checked before the first is
    /// stored, so an oversized pair refuses the whole batch. Errors as [`Cache::insert`].
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("im")?;
    /// c.insert_many([(1, 10), (2, 20)])?;
    /// assert_eq!(c.len(), 2);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn insert_many<I>(&self, items: I) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
    {
        self.store.write_many(items.into_iter().collect())
    }

    /// Stores `value` only if `key` is absent (or expired). Returns `true` if it was stored.
    /// Errors as [`Cache::insert`].
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("add")?;
    /// assert!(c.add(1, 10)?);
    /// assert!(!c.add(1, 11)?);
    /// assert_eq!(c.get(&1), Some(10));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn add(&self, key: K, value: V) -> Result<bool> {
        Ok(self
            .store
            .write(key, value, Cond::IfAbsent, Ttl::Cache)?
            .version
            .is_some())
    }

    /// Stores `value` only if `key` is present; returns the value it replaced, or `None` (and
    /// stores nothing) if the key was absent. Errors as [`Cache::insert`].
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("rep")?;
    /// assert_eq!(c.replace(1, 10)?, None);
    /// assert!(c.is_empty());
    /// c.insert(1, 10)?;
    /// assert_eq!(c.replace(1, 11)?, Some(10));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn replace(&self, key: K, value: V) -> Result<Option<V>> {
        Ok(self
            .store
            .write(key, value, Cond::IfPresent, Ttl::Cache)?
            .old)
    }

    /// Stores `value` only if the key's current version is `expected` (`None`: the key must be
    /// absent). Atomic on this node. Returns the new version.
    ///
    /// ```
    /// # use mccache::{Config, Node, Error};
    /// # let node = Node::start_local(Config::default())?;
    /// let c = node.cache::<u32, String>("cas")?;
    /// let v1 = c.compare_and_swap(1, None, "a".into())?;
    /// let v2 = c.compare_and_swap(1, Some(v1), "b".into())?;
    /// assert!(matches!(c.compare_and_swap(1, Some(v1), "c".into()), Err(Error::VersionMismatch { .. })));
    /// assert_eq!(c.get_with_version(&1), Some(("b".to_string(), v2)));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::VersionMismatch`] if another version (or no entry) is held; otherwise as
    /// [`Cache::insert`].
    pub fn compare_and_swap(&self, key: K, expected: Option<Version>, value: V) -> Result<Version> {
        let w = self
            .store
            .write(key, value, Cond::IfVersion(expected), Ttl::Cache)?;
        // IfVersion either stores (Some) or returns VersionMismatch.
        w.version.ok_or(Error::VersionMismatch {
            expected,
            found: None,
        })
    }

    /// Gives a live entry a new TTL counted from now (`Duration::ZERO`: never expires). This is
    /// a write: the entry is rewritten with its current value and a new version, replicated,
    /// counted as an update and reported as [`ChangeKind::Update`](crate::ChangeKind::Update).
    /// Returns `false` if the key is absent.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("touch")?;
    /// c.insert(1, 10)?;
    /// assert!(c.touch(&1, std::time::Duration::from_secs(60))?);
    /// assert!(!c.touch(&2, std::time::Duration::from_secs(60))?);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn touch(&self, key: &K, ttl: Duration) -> Result<bool> {
        loop {
            let Some((value, version)) = self.store.peek_value(key) else {
                return Ok(false);
            };
            match self.store.write(
                key.clone(),
                value,
                Cond::IfVersion(Some(version)),
                Ttl::Entry(ttl),
            ) {
                Ok(_) => return Ok(true),
                // A concurrent write got in between: retry against the new version.
                Err(Error::VersionMismatch { found: Some(_), .. }) => continue,
                Err(Error::VersionMismatch { found: None, .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes `key`; returns the value it held. Replicated as a delete.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("rm")?;
    /// c.insert(1, 10)?;
    /// assert_eq!(c.remove(&1)?, Some(10));
    /// assert_eq!(c.remove(&1)?, None);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Serialization`] if the key cannot be serialized.
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        self.store.remove(key)
    }

    /// Removes every entry, and replicates the clear: peers drop every entry older than it.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("clr")?;
    /// c.insert(1, 10)?;
    /// c.clear();
    /// assert!(c.is_empty());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn clear(&self) {
        self.store.clear()
    }

    /// Live entries. O(1) unless entries with a TTL are due, which are swept first.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("len")?;
    /// c.insert(1, 10)?;
    /// assert_eq!(c.len(), 1);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the cache holds no live entry.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("empty")?;
    /// assert!(c.is_empty());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the live keys (in no particular order).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("keys")?;
    /// c.insert_many([(1, 10), (2, 20)])?;
    /// let mut keys = c.keys();
    /// keys.sort();
    /// assert_eq!(keys, vec![1, 2]);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn keys(&self) -> Vec<K> {
        self.store.keys()
    }

    /// A snapshot of the live entries (in no particular order).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("entries")?;
    /// c.insert(1, 10)?;
    /// assert_eq!(c.entries(), vec![(1, 10)]);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn entries(&self) -> Vec<(K, V)> {
        self.store.entries()
    }

    /// The value under `key`, or the value `load` returns, which is then stored.
    ///
    /// Single flight: when several threads miss the same key at once, one runs `load` and the
    /// others wait for its value. If the loader panics (or its value cannot be stored), the
    /// waiters get [`Error::LoaderFailed`] and the panic continues in the loading thread.
    ///
    /// ```
    /// # use mccache::{Config, Node};
    /// # let node = Node::start_local(Config::default())?;
    /// let c = node.cache::<u32, u32>("squares")?;
    /// assert_eq!(c.get_or_insert_with(7, || 49)?, 49);
    /// assert_eq!(c.get_or_insert_with(7, || unreachable!())?, 49);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn get_or_insert_with<F>(&self, key: K, load: F) -> Result<V>
    where
        F: FnOnce() -> V,
    {
        self.try_get_or_insert_with(key, || Ok::<V, Error>(load()))
    }

    /// Like [`Cache::get_or_insert_with`] with a fallible loader. The loader's error goes to
    /// the caller that ran it (nothing is stored); concurrent waiters get
    /// [`Error::LoaderFailed`] converted into `E`.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("try")?;
    /// let r: Result<u32, mccache::Error> = c.try_get_or_insert_with(1, || Err(mccache::Error::LoaderFailed));
    /// assert!(r.is_err() && c.is_empty());
    /// assert_eq!(c.try_get_or_insert_with(1, || Ok::<_, mccache::Error>(5))?, 5);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn try_get_or_insert_with<F, E>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Result<V, E>,
        E: From<Error>,
    {
        if let Some(v) = self.store.get(&key) {
            return Ok(v);
        }
        let (flight, leader) = {
            let mut flights = self.store.flights.lock();
            match flights.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::new());
                    flights.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let mut state = flight.state.lock();
            while state.is_none() {
                flight.done.wait(&mut state);
            }
            return match state.as_ref() {
                Some(Some(v)) => Ok(v.clone()),
                _ => Err(Error::LoaderFailed.into()),
            };
        }
        let mut guard = FlightGuard {
            store: &self.store,
            key: Some(key.clone()),
            flight,
            value: None,
        };
        // Another caller may have stored the key between our miss and taking the flight.
        if let Some((v, _)) = self.store.peek_value(&key) {
            guard.value = Some(v.clone());
            return Ok(v);
        }
        // With a shared tier: its value, or its fleet-wide lease around the loader.
        let value = self.store.load_through(key, load)?;
        guard.value = Some(value.clone());
        Ok(value)
    }

    /// Registers a listener called for every change to this cache (local and replicated,
    /// evictions and expiries included). Returns an id for [`Cache::remove_listener`].
    ///
    /// Listeners run synchronously on the thread that made the change (an application thread,
    /// the housekeeper for expiries, the network thread for replicated changes), after every
    /// lock of the cache is released: keep them fast. They may call the cache.
    ///
    /// A listener sees the changes made after it is registered, not the ones before: the
    /// cache's contents are the state so far. An application that reacts to a peer's write
    /// registers its listener before it tells the peer to write, or checks the cache after
    /// registering (a replicated change can arrive between opening the cache and registering).
    ///
    /// ```
    /// # use mccache::{Config, Node, ChangeKind};
    /// # use std::sync::{Arc, Mutex};
    /// # let node = Node::start_local(Config::default())?;
    /// let c = node.cache::<u32, u32>("watched")?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let id = c.on_change(move |e| s.lock().unwrap().push((e.key, e.kind)));
    /// c.insert(1, 10)?;
    /// c.remove(&1)?;
    /// assert!(c.remove_listener(id));
    /// assert_eq!(*seen.lock().unwrap(), vec![(1, ChangeKind::Insert), (1, ChangeKind::Remove)]);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn on_change<F>(&self, listener: F) -> ListenerId
    where
        F: Fn(&ChangeEvent<K>) + Send + Sync + 'static,
    {
        self.store.on_change(Arc::new(listener))
    }

    /// Unregisters a listener; returns `false` if it was not registered.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("rl")?;
    /// let id = c.on_change(|_| {});
    /// assert!(c.remove_listener(id));
    /// assert!(!c.remove_listener(id));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        self.store.remove_listener(id)
    }

    /// What the cache knows about a live entry (version, write time, last read, expiry, size,
    /// value crc). Does not count as a lookup.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("meta")?;
    /// c.insert(1, 10)?;
    /// let m = c.metadata(&1).unwrap();
    /// assert_eq!(m.version, c.get_with_version(&1).unwrap().1);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn metadata(&self, key: &K) -> Option<Metadata> {
        self.store.metadata(key)
    }

    /// This cache's local counters.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("m")?;
    /// c.insert(1, 10)?;
    /// c.get(&1);
    /// c.get(&2);
    /// let m = c.metrics();
    /// assert_eq!((m.inserts, m.hits, m.misses, m.entries), (1, 1, 1, 1));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn metrics(&self) -> CacheMetrics {
        self.store.metrics()
    }

    /// An order-independent checksum of the live entries: the wrapping sum over entries of
    /// splitmix64(crc32(key bytes ‖ value bytes ‖ version bytes)). Two nodes holding the same
    /// entries at the same versions have the same checksum. O(1) (maintained on every change).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let a = node.cache::<u32, u32>("sum-a")?;
    /// let b = node.cache::<u32, u32>("sum-b")?;
    /// a.insert(1, 10)?;
    /// assert_ne!(a.checksum(), b.checksum());
    /// a.remove(&1)?;
    /// assert_eq!(a.checksum(), b.checksum());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn checksum(&self) -> u64 {
        self.store.checksum()
    }

    /// The per-entry crc that [`Cache::checksum`] sums (`crc32(key ‖ value ‖ version)`), if
    /// `key` is live.
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let c = node.cache::<u32, u32>("kc")?;
    /// c.insert(1, 10)?;
    /// assert!(c.key_checksum(&1).is_some() && c.key_checksum(&2).is_none());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn key_checksum(&self, key: &K) -> Option<u32> {
        self.store.key_checksum(key)
    }
}

/// Completes a flight when the leader returns, fails or panics.
struct FlightGuard<'a, K: CacheKey, V: CacheValue> {
    store: &'a Store<K, V>,
    key: Option<K>,
    flight: Arc<Flight<V>>,
    value: Option<V>,
}

impl<K: CacheKey, V: CacheValue> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.store.flights.lock().remove(&k);
        }
        self.flight.complete(self.value.take());
    }
}
