//! The byte form of one cache change, as the protocol carries and applies it.

use serde::{Deserialize, Serialize};

use super::version::Version;

/// What a replicated change does to a key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Store this value (msgpack bytes of `V`), with an optional per-entry TTL in milliseconds
    /// (`None`: the receiving cache's own `cache_ttl`).
    Put {
        /// The value, as serialized by rmp-serde.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Per-entry TTL in milliseconds.
        ttl_ms: Option<u64>,
    },
    /// Delete the key, leaving a tombstone at this version.
    Del,
    /// The writer has a newer value than this version (invalidate mode, `cache_mode = 2`):
    /// receivers drop older copies so their next read misses.
    Inval,
}

/// One change to one key of one cache.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The key, as serialized by rmp-serde.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The version of the write.
    pub version: Version,
    /// What the write does.
    pub op: Op,
}

impl Record {
    /// Bytes this record occupies in memory and roughly on the wire.
    pub fn weight(&self) -> usize {
        self.key.len()
            + 24
            + match &self.op {
                Op::Put { value, .. } => value.len() + 9,
                Op::Del | Op::Inval => 1,
            }
    }
}
