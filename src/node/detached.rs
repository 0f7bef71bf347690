//! A node's application state with no sockets, no threads and a caller's clock: the same
//! [`NodeApp`] → [`Registry`] → [`Store`] path a networked node drives, for mccache's simulator
//! and fuzz harness (reached through `mccache::unstable`).
//!
//! The caller owns the protocol core and moves time: it hands datagrams to its `Endpoint` with
//! [`DetachedNode::app`] as the application state, moves the changes the caches published
//! ([`DetachedNode::take_published`]) into `Endpoint::publish`, and runs
//! [`DetachedNode::housekeep`] where a node's housekeeper would.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::Node;
use super::replica::{LagSamples, NodeApp, Registered, Registry, change_item};
use crate::cache::clock::Clock;
use crate::cache::context::StoreContext;
use crate::cache::handle::Cache;
use crate::cache::hooks::{Change, Publisher};
use crate::cache::store::{CacheKey, CacheValue, Store};
use crate::config::Config;
use crate::error::Result;
use crate::proto::message::Item;
use crate::proto::record::Record;
use crate::proto::version::{Hlc, NodeId};

/// Collects the caches' local changes for the caller to publish.
#[derive(Default)]
struct QueuePublisher(Mutex<Vec<Item>>);

impl Publisher for QueuePublisher {
    fn publish(&self, change: Change) {
        self.0.lock().push(change_item(change));
    }
}

/// One node's caches (opened and parked) without the network; see the module docs.
pub struct DetachedNode {
    app: NodeApp,
    ctx: Arc<StoreContext>,
    config: Config,
    published: Arc<QueuePublisher>,
}

impl DetachedNode {
    /// A node with id `id` on `clock`, its caches configured by `config` (validated first).
    ///
    /// # Errors
    /// The configuration error, if `config` is invalid.
    pub fn new(config: Config, id: NodeId, clock: Arc<dyn Clock>) -> Result<DetachedNode> {
        config.validate()?;
        let published = Arc::new(QueuePublisher::default());
        let hlc = Arc::new(Hlc::new());
        let ctx = Arc::new(StoreContext {
            id,
            hlc: hlc.clone(),
            clock: clock.clone(),
            publisher: published.clone(),
            max_message_size: config.max_message_size,
        });
        let app = NodeApp {
            registry: Arc::new(Registry::new(&config)),
            hlc,
            lag: Arc::new(LagSamples::default()),
            clock,
        };
        Ok(DetachedNode {
            app,
            ctx,
            config,
            published,
        })
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.ctx.id
    }

    /// Opens (creating on first use) cache `name` as `Node::cache` does: settings from the
    /// configuration, records parked under the name handed over.
    ///
    /// # Errors
    /// [`crate::Error::TypeMismatch`] if `name` is already open with other types.
    pub fn cache<K: CacheKey, V: CacheValue>(&self, name: &str) -> Result<Cache<K, V>> {
        let registry = &self.app.registry;
        let open = registry.open.write();
        if let Some(r) = open.get(name) {
            return Node::typed(name, r);
        }
        let cfg = self.config.cache_config(name);
        let store = Arc::new(Store::<K, V>::new(name, cfg, self.ctx.clone()));
        registry.register(
            open,
            name,
            Registered {
                erased: store.clone(),
                typed: store.clone(),
            },
        );
        Ok(Cache { store })
    }

    /// True if the application opened cache `name`.
    pub fn is_open(&self, name: &str) -> bool {
        self.app.registry.open.read().contains_key(name)
    }

    /// The records (values and tombstones) parked for cache `name`, in key order; `None` if
    /// nothing is parked under that name.
    pub fn parked(&self, name: &str) -> Option<Vec<Record>> {
        let parked = self.app.registry.parked.lock();
        parked.get(name).map(|p| p.records().cloned().collect())
    }

    /// The changes the caches published since the last call, oldest first.
    pub fn take_published(&self) -> Vec<Item> {
        std::mem::take(&mut *self.published.0.lock())
    }

    /// The node's housekeeping pass: expired entries swept, tombstones older than
    /// `tombstone_ttl` collected (opened and parked caches).
    pub fn housekeep(&self, tombstone_ttl: Duration) {
        self.app
            .registry
            .housekeep(self.ctx.clock.now_nanos(), tombstone_ttl);
    }

    /// The application state the protocol core works on.
    pub fn app(&mut self) -> &mut NodeApp {
        &mut self.app
    }

    /// The application state, read-only (digests, records, snapshots as peers see them).
    pub fn app_ref(&self) -> &NodeApp {
        &self.app
    }
}
