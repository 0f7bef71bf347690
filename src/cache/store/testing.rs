//! What the store's unit tests share: a node on a fake clock whose publisher records changes,
//! and builders of peer records.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::Config;
use crate::cache::clock::FakeClock;
use crate::cache::hooks::{Change, ErasedCache, Publisher};
use crate::node::Node;
use crate::proto::record::{Op, Record};
use crate::proto::version::{NodeId, Version};

/// A publisher that keeps every change.
#[derive(Default)]
pub(super) struct Recorder(Mutex<Vec<Change>>);

impl Publisher for Recorder {
    fn publish(&self, change: Change) {
        self.0.lock().unwrap().push(change);
    }
}

impl Recorder {
    pub(super) fn take(&self) -> Vec<Change> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

pub(super) fn setup(config: Config) -> (Node, Arc<Recorder>, Arc<FakeClock>) {
    let rec = Arc::new(Recorder::default());
    let clock = Arc::new(FakeClock::new());
    let node = Node::start_with(config, rec.clone(), clock.clone(), None).unwrap();
    (node, rec, clock)
}

pub(super) fn bytes<T: Serialize>(t: &T) -> Vec<u8> {
    rmp_serde::to_vec(t).unwrap()
}

/// A peer's put of `key` → `value`.
pub(super) fn put(key: u32, value: u32, version: Version) -> Record {
    put_bytes(key, bytes(&value), version)
}

/// A peer's put of `key` with `value` already serialized (any type, or none).
pub(super) fn put_bytes(key: u32, value: Vec<u8>, version: Version) -> Record {
    Record {
        key: bytes(&key).into(),
        version,
        op: Op::Put {
            value: value.into(),
            ttl_ms: None,
        },
    }
}

/// A peer's version `ms` milliseconds after the fake clock's wall origin.
pub(super) fn remote(ms: u64) -> Version {
    Version::new((1_700_000_000_000 + ms) << 16, NodeId(7))
}

pub(super) fn erased(node: &Node, name: &str) -> Arc<dyn ErasedCache> {
    node.erased(name).unwrap()
}
