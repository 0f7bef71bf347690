//! Async forms of the [`Node`] calls that wait: readiness, network metrics and the cluster
//! queries. Each runs the blocking call on a short-lived thread of its own and hands the result
//! back through a oneshot channel, so the future works under any executor (tokio,
//! async-std, smol, a plain `block_on`) and never blocks the executor's threads.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{ClusterAnswers, Node, Readiness};
use crate::cache::load::off_thread;
use crate::cache::metrics::CacheMetrics;
use crate::error::{Error, Result};
use crate::proto::metrics::NetworkMetrics;

impl Node {
    /// The async form of [`Node::wait_ready`]: resolves to the node's [`Readiness`] within
    /// `timeout` ([`Readiness::Alone`] at once for a local-only node).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let readiness = pollster::block_on(node.wait_ready_async(std::time::Duration::from_secs(1)));
    /// assert_eq!(readiness, mccache::Readiness::Alone);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub async fn wait_ready_async(&self, timeout: Duration) -> Readiness {
        let node = self.clone();
        off_thread(move || node.wait_ready(timeout))
            .await
            .unwrap_or(Readiness::NotReady)
    }

    /// The async form of [`Node::network_metrics`] (which waits up to 2 s for the network
    /// thread).
    ///
    /// ```
    /// # let node = mccache::Node::start_local(mccache::Config::default())?;
    /// let m = pollster::block_on(node.network_metrics_async());
    /// assert_eq!(m.datagrams_sent, 0); // local-only node
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub async fn network_metrics_async(&self) -> NetworkMetrics {
        let node = self.clone();
        off_thread(move || node.network_metrics())
            .await
            .unwrap_or_default()
    }

    /// The async form of [`Node::get_cluster_metrics`]: resolves when every member has
    /// answered or `timeout` has passed; the result names the members that did not answer.
    ///
    /// ```no_run
    /// # async fn f(node: mccache::Node) -> mccache::Result<()> {
    /// let per_node = node.get_cluster_metrics_async(Some("users"), std::time::Duration::from_secs(1)).await?;
    /// for (id, caches) in per_node {
    ///     println!("{id}: {:?}", caches.get("users").map(|m| m.entries));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Node::get_cluster_metrics`].
    pub async fn get_cluster_metrics_async(
        &self,
        name: Option<&str>,
        timeout: Duration,
    ) -> Result<ClusterAnswers<BTreeMap<String, CacheMetrics>>> {
        let node = self.clone();
        let name = name.map(str::to_string);
        off_thread(move || node.get_cluster_metrics(name.as_deref(), timeout))
            .await
            .unwrap_or(Err(Error::Shutdown))
    }

    /// The async form of [`Node::get_cluster_checksum`].
    ///
    /// ```no_run
    /// # async fn f(node: mccache::Node) -> mccache::Result<()> {
    /// let sums = node.get_cluster_checksum_async("users", None::<u64>, std::time::Duration::from_secs(1)).await?;
    /// let agree = sums.values().all(|s| Some(s) == sums.values().next());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Node::get_cluster_checksum`].
    pub async fn get_cluster_checksum_async<K: Serialize + Send + 'static>(
        &self,
        name: &str,
        key: Option<K>,
        timeout: Duration,
    ) -> Result<ClusterAnswers<Option<u64>>> {
        let node = self.clone();
        let name = name.to_string();
        off_thread(move || node.get_cluster_checksum(&name, key.as_ref(), timeout))
            .await
            .unwrap_or(Err(Error::Shutdown))
    }
}
