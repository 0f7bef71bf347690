//! [`CacheBuilder`]: per-cache settings in code, merged with the configuration.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::time::Duration;

use crate::cache::handle::Cache;
use crate::cache::store::{CacheKey, CacheValue};
use crate::config::{CacheConfig, CacheMode};
use crate::error::{ConfigError, Error, Result};
use crate::node::Node;

/// Opens a cache with settings given in code, in the manner of moka's builders.
///
/// Made by [`Node::cache_builder`]. Merge rule: every setting starts from the configuration
/// (the node-wide value, then the `[caches.NAME]` table of `mccache.toml` / `MCCACHE_*`), and a
/// setting the builder sets replaces it. Settings the builder leaves alone keep the
/// configuration's value, so operators can still tune them in the file.
///
/// If the cache is already open, [`CacheBuilder::build`] returns it when every setting the
/// builder sets equals the one the cache runs with, and [`Error::CacheConflict`] naming the
/// first setting that differs otherwise (settings of an open cache never change under it).
/// [`Node::cache`] opens a cache with the configuration's settings, or returns it as it is.
///
/// ```
/// use std::time::Duration;
/// use mccache::{CacheMode, Config, Node};
///
/// let config = Config::from_toml_str("[caches.users]\ncache_max = 500")?;
/// let node = Node::start_local(config)?;
/// let users = node
///     .cache_builder::<u64, String>("users")
///     .ttl(Duration::from_secs(600))
///     .max_bytes(1 << 20)
///     .mode(CacheMode::Replicate)
///     .callback_window(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(users.config().ttl, Some(Duration::from_secs(600))); // from the builder
/// assert_eq!(users.config().max_entries, 500); // from the config file
///
/// // Opening it again with another TTL is refused, naming the setting.
/// let err = node.cache_builder::<u64, String>("users").ttl(Duration::from_secs(5)).build();
/// assert!(err.unwrap_err().to_string().contains("ttl"));
/// # Ok::<(), mccache::Error>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct CacheBuilder<'a, K, V> {
    node: &'a Node,
    name: String,
    set: Requested,
    _types: PhantomData<fn() -> (K, V)>,
}

/// The settings a builder sets (`None`: take the configuration's).
#[derive(Clone, Debug, Default)]
pub(crate) struct Requested {
    ttl: Option<Option<Duration>>,
    max_entries: Option<usize>,
    max_bytes: Option<u64>,
    mode: Option<CacheMode>,
    callback_win: Option<Duration>,
    fresh_for: Option<Duration>,
    eager_refresh: Option<f64>,
    peer_load_wait: Option<Duration>,
}

impl<'a, K: CacheKey, V: CacheValue> CacheBuilder<'a, K, V> {
    pub(crate) fn new(node: &'a Node, name: &str) -> Self {
        CacheBuilder {
            node,
            name: name.to_string(),
            set: Requested::default(),
            _types: PhantomData,
        }
    }

    /// Time to live of entries, counted from their last write (`Duration::ZERO`: no expiry).
    /// With [`CacheBuilder::fresh_for`], this is how long a value stays usable.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.set.ttl = Some((!ttl.is_zero()).then_some(ttl));
        self
    }

    /// Maximum number of entries (`cache_max`), at least 1.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.set.max_entries = Some(n);
        self
    }

    /// Maximum bytes of serialized keys and values (`cache_size`), at least 1.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.set.max_bytes = Some(n);
        self
    }

    /// How writes reach the peers (`cache_mode`).
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.set.mode = Some(mode);
        self
    }

    /// The callback window (`callback_win`).
    pub fn callback_window(mut self, window: Duration) -> Self {
        self.set.callback_win = Some(window);
        self
    }

    /// Stale-while-revalidate: values are fresh for `fresh` after their write (by the writer's
    /// clock, so every node agrees). Between `fresh` and the TTL, a value is stale but usable:
    /// [`Cache::get_or_load`] returns it at once and refreshes it in the background, and if
    /// the loader fails the stale value stays until the TTL ends (fail-safe). Must be shorter
    /// than the TTL.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let prices = node
    ///     .cache_builder::<String, f64>("prices")
    ///     .fresh_for(Duration::from_secs(30)) // refresh after 30 s
    ///     .ttl(Duration::from_secs(600)) // serve stale for up to 10 min if the source is down
    ///     .build()?;
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn fresh_for(mut self, fresh: Duration) -> Self {
        self.set.fresh_for = Some(fresh);
        self
    }

    /// Eager refresh: a read of a value older than `fraction` × `fresh_for` (0 < fraction < 1)
    /// starts a background refresh while the value is still fresh, so hot keys never go
    /// stale. Needs [`CacheBuilder::fresh_for`].
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.set.eager_refresh = Some(fraction);
        self
    }

    /// Cluster-wide single flight: when this node misses a key in a loading read
    /// ([`Cache::get_or_load`]) while a peer has announced that it is loading that key, wait
    /// up to `wait` (from the announcement) for the peer's replicated value before running the
    /// loader here. Best effort: if the value does not arrive in time, this node loads it.
    /// Default 1 s; `Duration::ZERO` never waits. Only replicating caches
    /// ([`CacheMode::Replicate`]) wait, since the others do not receive values.
    pub fn peer_load_wait(mut self, wait: Duration) -> Self {
        self.set.peer_load_wait = Some(wait);
        self
    }

    /// Opens the cache (creating it on first use) with the merged settings.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad setting (naming it); [`Error::CacheConflict`] if the cache
    /// is already open with a different value of a setting given here;
    /// [`Error::TypeMismatch`] if it is open with other types; [`Error::Shutdown`] after
    /// [`Node::shutdown`].
    pub fn build(self) -> Result<Cache<K, V>> {
        let base = self.node.config().cache_config(&self.name);
        self.set.apply(base).map(drop)?;
        self.node.open_cache(&self.name, Some(&self.set))
    }
}

fn bad(key: &str, value: impl Debug, reason: &str) -> Error {
    ConfigError::invalid(key, format!("{value:?}"), reason).into()
}

impl Requested {
    /// `base` (the configuration's settings) with the builder's settings applied, validated.
    pub(crate) fn apply(&self, mut cfg: CacheConfig) -> Result<CacheConfig> {
        if let Some(t) = self.ttl {
            cfg.ttl = t;
        }
        if let Some(n) = self.max_entries {
            if n == 0 {
                return Err(bad("max_entries", n, "must be at least 1"));
            }
            cfg.max_entries = n;
        }
        if let Some(n) = self.max_bytes {
            if n == 0 {
                return Err(bad("max_bytes", n, "must be at least 1"));
            }
            cfg.max_bytes = n;
        }
        if let Some(m) = self.mode {
            cfg.mode = m;
        }
        if let Some(w) = self.callback_win {
            cfg.callback_win = w;
        }
        if let Some(f) = self.fresh_for {
            if f.is_zero() {
                return Err(bad("fresh_for", f, "must be greater than 0"));
            }
            if let Some(ttl) = cfg.ttl
                && f >= ttl
            {
                return Err(bad(
                    "fresh_for",
                    f,
                    &format!("must be shorter than the ttl ({ttl:?})"),
                ));
            }
            cfg.fresh_for = Some(f);
        }
        if let Some(w) = self.peer_load_wait {
            cfg.peer_load_wait = w;
        }
        if let Some(x) = self.eager_refresh {
            if !(x > 0.0 && x < 1.0) {
                return Err(bad("eager_refresh", x, "must be between 0 and 1"));
            }
            if cfg.fresh_for.is_none() {
                return Err(bad("eager_refresh", x, "needs fresh_for"));
            }
            cfg.eager_refresh = Some(x);
        }
        Ok(cfg)
    }

    /// The first setting given here that differs from `open` (an open cache's settings).
    pub(crate) fn conflict(&self, open: &CacheConfig) -> Option<(&'static str, String, String)> {
        fn cmp<T: PartialEq + Debug>(
            name: &'static str,
            asked: Option<T>,
            has: T,
        ) -> Option<(&'static str, String, String)> {
            match asked {
                Some(a) if a != has => Some((name, format!("{has:?}"), format!("{a:?}"))),
                _ => None,
            }
        }
        cmp("ttl", self.ttl, open.ttl)
            .or_else(|| cmp("max_entries", self.max_entries, open.max_entries))
            .or_else(|| cmp("max_bytes", self.max_bytes, open.max_bytes))
            .or_else(|| cmp("mode", self.mode, open.mode))
            .or_else(|| cmp("callback_window", self.callback_win, open.callback_win))
            .or_else(|| cmp("fresh_for", self.fresh_for.map(Some), open.fresh_for))
            .or_else(|| {
                cmp(
                    "eager_refresh",
                    self.eager_refresh.map(Some),
                    open.eager_refresh,
                )
            })
            .or_else(|| cmp("peer_load_wait", self.peer_load_wait, open.peer_load_wait))
    }
}
