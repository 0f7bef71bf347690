//! The node's side of the memcached tier (feature `memcached`): its metrics and events.

use std::sync::Arc;

use super::Node;
use crate::backing::{BackingMetrics, ServerEvent};

impl Node {
    /// Counters of every memcached tier the node's caches use (one per distinct `backing`
    /// server list, created when the first cache naming it opens), with per-server latency,
    /// errors, timeouts, hits and misses.
    ///
    /// ```no_run
    /// let node = mccache::Node::start_local(mccache::Config::from_toml_str(
    ///     r#"backing = "memcached://127.0.0.1:11211""#,
    /// )?)?;
    /// let users = node.cache::<u64, String>("users")?;
    /// let _ = users.get(&1); // a local miss reads memcached
    /// for tier in node.backing_metrics() {
    ///     for s in &tier.servers {
    ///         println!("{} up={} hits={} p99={}us", s.server, s.up, s.hits, s.latency_p99_us);
    ///     }
    /// }
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn backing_metrics(&self) -> Vec<BackingMetrics> {
        self.inner.tiers.metrics()
    }

    /// Registers a listener for memcached servers going down and coming back (as this process
    /// sees them). It runs on the thread whose request noticed the change: keep it short.
    pub fn on_backing_event(&self, listener: impl Fn(&ServerEvent) + Send + Sync + 'static) {
        self.inner.tiers.on_event(Arc::new(listener));
    }
}
