//! What a node can tell about its own state, for people: whether it found peers, whether it
//! runs in plaintext, datagrams it could not open (other key, other cluster name, sealed versus
//! plaintext) and configuration mistakes. See [`Node::health`] and [`Node::wait_ready`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Node;
pub use crate::net::diagnose::{OpenFailure, Unopened};

/// What [`Node::wait_ready`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[must_use = "a node that found no peer may be misconfigured: check Readiness::found_peers"]
#[non_exhaustive]
pub enum Readiness {
    /// Ready: the node found `peers` live peers and copied the caches' state from one of them.
    Joined {
        /// Live peers when it became ready.
        peers: usize,
    },
    /// Ready, but no peer answered: this node is alone in its cluster. Expected for the first
    /// node; otherwise see [`Node::health`] for datagrams it could not open (another
    /// `crypto_key` or `cluster_name`) and check `interface`, `multicast_ip`/`multicast_port`
    /// (over unicast: `peers`, `bind_port`, and `mccache check-peers`).
    /// Also what a local-only node ([`Node::start_local`]) returns.
    Alone,
    /// Not ready within the timeout, or the node has stopped.
    NotReady,
}

impl Readiness {
    /// True if the node is ready to serve (joined or alone).
    pub fn is_ready(self) -> bool {
        !matches!(self, Readiness::NotReady)
    }

    /// True if at least one peer was found.
    pub fn found_peers(self) -> bool {
        matches!(self, Readiness::Joined { .. })
    }
}

/// A node's state as a person would check it: see [`Node::health`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Whether the node replicates (false for a local-only or stopped node).
    pub networked: bool,
    /// Whether the node holds a full copy of the caches (see [`Node::wait_ready`]).
    pub ready: bool,
    /// Live peers (not this node).
    pub peers: usize,
    /// True if the node has no `crypto_key`: its traffic is in the clear and anyone on the
    /// network segment can write to its caches.
    pub plaintext: bool,
    /// Datagrams from other senders that could not be opened, by likely cause. Not empty
    /// usually means a misconfigured node on the same group and port.
    pub unopened: BTreeMap<OpenFailure, u64>,
    /// The last datagram that could not be opened: sender's address, cause, time.
    pub last_unopened: Option<Unopened>,
    /// Configuration mistakes found at start, for example `MCCACHE_*` variables that name no
    /// configuration key (with the nearest known one).
    pub config_warnings: Vec<String>,
    /// How long the node has been running.
    pub uptime: Duration,
}

impl Health {
    /// True if nothing needs a person's attention: no plaintext, no datagram that could not be
    /// opened, no configuration warning.
    pub fn is_clean(&self) -> bool {
        !self.plaintext && self.unopened.is_empty() && self.config_warnings.is_empty()
    }
}

impl Node {
    /// This node's health: peers found, plaintext or sealed, datagrams it could not open
    /// (counted by likely cause, with the last sender's address) and configuration warnings.
    ///
    /// Warnings about these also go to `tracing` (and to stderr when the application has
    /// installed no `tracing` subscriber); this call returns them as data.
    ///
    /// ```
    /// use mccache::{Config, Node};
    ///
    /// let node = Node::start_local(Config::default())?;
    /// let health = node.health();
    /// assert_eq!(health.peers, 0);
    /// assert!(health.unopened.is_empty());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn health(&self) -> Health {
        let config = self.config();
        let plaintext = config.crypto_key.as_deref().is_none_or(str::is_empty)
            && config.crypto_keys.iter().all(|k| k.is_empty());
        let (unopened, last_unopened) = self
            .open_failures(|f| (f.counts(), f.last()))
            .unwrap_or_default();
        Health {
            networked: self.is_networked(),
            ready: self.is_ready(),
            peers: self.members().len(),
            plaintext: plaintext && self.inner.net.is_some(),
            unopened,
            last_unopened,
            config_warnings: crate::config::unknown_env_vars(),
            uptime: self.uptime().0,
        }
    }

    /// Waits up to `timeout` for the node to hold a full copy of the caches its first peer
    /// offered (state transfer done), or to find that no peer answers; says which.
    ///
    /// ```no_run
    /// use mccache::{Config, Node, Readiness};
    ///
    /// let node = Node::start(Config::load()?)?;
    /// match node.wait_ready(std::time::Duration::from_secs(2)) {
    ///     Readiness::Joined { peers } => println!("joined {peers} peers"),
    ///     Readiness::Alone => eprintln!("no peer found: {:?}", node.health()),
    ///     _ => eprintln!("not ready yet"), // NotReady (the enum is non-exhaustive)
    /// }
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn wait_ready(&self, timeout: Duration) -> Readiness {
        let ready = self.wait_ready_until(Instant::now() + timeout);
        if !ready {
            return Readiness::NotReady;
        }
        match self.members().len() {
            0 => Readiness::Alone,
            peers => Readiness::Joined { peers },
        }
    }
}
