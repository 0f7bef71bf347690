//! Per-cache settings: [`CacheConfig`], the effective settings of one cache (the node-wide
//! keys with the cache's `[caches.NAME]` overrides applied).

use std::time::Duration;

use super::backing::{self, BackingSpec};
use super::{CacheMode, Config, secs_to_duration};

/// Settings of one cache. Every cache starts from the node-wide values in [`Config`];
/// `[caches.NAME]` tables override them per cache.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Time to live of entries, counted from the last write on this node. `None`: no expiry.
    pub ttl: Option<Duration>,
    /// Maximum number of entries.
    pub max_entries: usize,
    /// Maximum bytes: the sum of serialized key + value sizes.
    pub max_bytes: u64,
    /// Replication mode.
    pub mode: CacheMode,
    /// The callback window (`callback_win`): see [`crate::ChangeEvent::in_callback_window`].
    pub callback_win: Duration,
    /// The memcached tier behind the cache (`backing`, `backing_write`), if any.
    pub backing: Option<BackingSpec>,
    /// Stale-while-revalidate: how long after its write a value is fresh. Past that, and until
    /// `ttl` ends, [`Cache::get_or_load`](crate::Cache::get_or_load) serves it at once and
    /// refreshes it in the background. `None`: fresh for its whole `ttl`. Set with
    /// [`CacheBuilder::fresh_for`](crate::CacheBuilder::fresh_for).
    pub fresh_for: Option<Duration>,
    /// Eager refresh: the fraction of `fresh_for` after which a read of a still-fresh value
    /// starts a background refresh (for example 0.8). `None`: off. Set with
    /// [`CacheBuilder::eager_refresh`](crate::CacheBuilder::eager_refresh).
    pub eager_refresh: Option<f64>,
    /// How long a loading read that misses waits for a peer's value when a peer announced it
    /// is loading the same key (replicating caches only); zero: never wait. Default 1 s. Set
    /// with [`CacheBuilder::peer_load_wait`](crate::CacheBuilder::peer_load_wait).
    pub peer_load_wait: Duration,
}

impl Config {
    /// The effective settings of cache `name` (node-wide values plus its overrides).
    ///
    /// Never panics, even on a configuration that did not pass [`Config::validate`]: bad
    /// durations saturate (negative or NaN → zero, huge → `Duration::MAX`).
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str("[caches.users]\ncache_max = 10")?;
    /// assert_eq!(config.cache_config("users").max_entries, 10);
    /// assert_eq!(config.cache_config("orders").max_entries, 256);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn cache_config(&self, name: &str) -> CacheConfig {
        let o = self.caches.get(name).cloned().unwrap_or_default();
        let ttl = o.cache_ttl.unwrap_or(self.cache_ttl);
        CacheConfig {
            ttl: (ttl > 0.0).then(|| secs_to_duration(ttl)),
            max_entries: o.cache_max.unwrap_or(self.cache_max),
            max_bytes: o.cache_size.unwrap_or(self.cache_size),
            mode: o.cache_mode.unwrap_or(self.cache_mode),
            callback_win: secs_to_duration(o.callback_win.unwrap_or(self.callback_win)),
            backing: o
                .backing
                .as_deref()
                .or(self.backing.as_deref())
                .and_then(|url| backing::parse_url(url).ok().flatten())
                .map(|servers| BackingSpec {
                    servers,
                    write: o.backing_write.unwrap_or(self.backing_write),
                }),
            fresh_for: None,
            eager_refresh: None,
            peer_load_wait: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate_instead_of_panicking() {
        let c = Config {
            cache_ttl: f64::NAN,
            callback_win: -3.0,
            ..Config::default()
        };
        let cc = c.cache_config("x");
        assert_eq!((cc.ttl, cc.callback_win), (None, Duration::ZERO));
    }

    #[test]
    fn overrides_win_and_none_turns_the_tier_off() {
        let c = Config::from_toml_str(
            "backing = \"none\"\ncache_max = 7\n[caches.a]\ncache_max = 3\nbacking = \"none\"",
        )
        .unwrap();
        assert_eq!(c.cache_config("a").max_entries, 3);
        assert_eq!(c.cache_config("b").max_entries, 7);
        assert_eq!(c.cache_config("a").backing, None);
        assert_eq!(c.caches["a"].backing.as_deref(), Some("none"));
    }
}
