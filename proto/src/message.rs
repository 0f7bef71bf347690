//! Protocol messages: what travels inside the (sealed, fragmented) datagrams, encoded with
//! rmp-serde. Decoding is total: anything that does not decode is dropped as malformed.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::record::Record;
use super::version::{NodeId, Version};
use crate::sync::{KeyVersion, SyncDigest};

/// One replicated change inside a [`Msg::Data`] or [`Msg::Repair`] message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// A change to one key of cache `cache`.
    Rec {
        /// Cache name.
        cache: String,
        /// The change.
        rec: Record,
    },
    /// Cache `cache` was cleared at `version`.
    Clear {
        /// Cache name.
        cache: String,
        /// Version of the clear.
        version: Version,
    },
    /// The sender has started loading `key` of cache `cache` from its source (a miss in a
    /// loading read): peers that miss the same key may wait briefly for the replicated value
    /// instead of loading it too. Advisory; carries no data.
    Loading {
        /// Cache name.
        cache: String,
        /// Key bytes.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Item {
    /// Approximate encoded size, used to pack items into datagrams.
    pub fn weight(&self) -> usize {
        match self {
            Item::Rec { cache, rec } => cache.len() + rec.weight() + 8,
            Item::Clear { cache, .. } => cache.len() + 32,
            Item::Loading { cache, key } => cache.len() + key.len() + 8,
        }
    }
}

/// A question one node asks the whole cluster (answers come back as [`Msg::Reply`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Local metrics of one cache (`None`: all caches).
    Metrics {
        /// Cache name.
        cache: Option<String>,
    },
    /// Checksum of one cache, or of one key in it.
    Checksum {
        /// Cache name.
        cache: String,
        /// Key bytes (`None`: the whole cache).
        #[serde(with = "serde_bytes_opt")]
        key: Option<Vec<u8>>,
    },
}

/// Per-cache line of an anti-entropy pulse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDigest {
    /// Cache name.
    pub cache: String,
    /// Count, checksum and bucket sums.
    pub digest: SyncDigest,
    /// The newest clear the sender applied: a peer that missed it applies it.
    pub floor: Version,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Replicated changes on the sender's reliable stream, sequence number `seq` (from 1).
    Data {
        /// Per-sender sequence number of this message.
        seq: u64,
        /// The changes.
        items: Vec<Item>,
    },
    /// Membership announcement: sent on join (`join = true`, peers answer with their own Hello)
    /// and as the heartbeat every `daemon_sleep`.
    Hello {
        /// Human name of the node.
        name: String,
        /// True on the first announcement after start.
        join: bool,
        /// Highest data sequence number sent so far (tail-loss detection).
        seq_hi: u64,
        /// Cumulative acks: for each sender, the highest sequence number received with no gap.
        acks: Vec<(NodeId, u64)>,
        /// Caches this node holds (joiners fetch them).
        caches: Vec<String>,
        /// The sender's wall clock (ms since the Unix epoch) when it sent this: receivers
        /// compare it with their own to warn about clocks that drift apart.
        wall_ms: u64,
    },
    /// Cumulative acknowledgement between heartbeats (sent after many messages, never per message).
    Ack {
        /// For each sender, the highest sequence number received with no gap.
        acks: Vec<(NodeId, u64)>,
    },
    /// Announces a tail: "my highest sequence number is `seq_hi`", sent shortly after a burst.
    Tail {
        /// Highest data sequence number sent so far.
        seq_hi: u64,
    },
    /// The node is leaving the cluster (shutdown or drop).
    Leave,
    /// Negative acknowledgement: `to` should resend these sequence ranges (inclusive).
    Nak {
        /// The sender whose stream has gaps.
        to: NodeId,
        /// Missing ranges, inclusive.
        ranges: Vec<(u64, u64)>,
    },
    /// Answer to a NAK that can no longer be served: these sequence numbers are gone from the
    /// retransmit buffer; the receiver must repair through anti-entropy.
    Gone {
        /// The node that asked.
        to: NodeId,
        /// Ranges no longer available, inclusive.
        ranges: Vec<(u64, u64)>,
    },
    /// Anti-entropy pulse: digests of every cache the sender holds.
    Digest {
        /// One line per cache.
        caches: Vec<CacheDigest>,
    },
    /// Anti-entropy: the key versions of some buckets of one cache, sent to `to` whose digest
    /// differed.
    Buckets {
        /// The node whose digest differed.
        to: NodeId,
        /// Cache name.
        cache: String,
        /// Which parts are listed, each complete: `(bucket, part, parts)` covers the keys of
        /// `bucket` whose [`crate::sync::key_part`]`(key, parts)` is `part`.
        parts: Vec<(u16, u16, u16)>,
        /// Every key in those parts with its version (tombstones included).
        keys: Vec<KeyVersion>,
        /// The sender's tombstone horizon for this cache: it may have forgotten deletes at or
        /// below it, so a live key it does not list at or below it is dropped, not pushed
        /// (see "No resurrection" in docs/PROTOCOL.md).
        horizon: Version,
    },
    /// Anti-entropy: `to` should send its records for these keys.
    Pull {
        /// The node that holds newer versions.
        to: NodeId,
        /// Cache name.
        cache: String,
        /// Keys wanted.
        keys: Vec<serde_bytes::ByteBuf>,
    },
    /// Records pushed for repair (anti-entropy or pull answers). Applied by version, idempotent.
    Repair {
        /// The records.
        items: Vec<Item>,
    },
    /// State transfer: `to` should stream cache `cache` from `cursor`.
    SnapshotReq {
        /// The peer asked.
        to: NodeId,
        /// Cache name.
        cache: String,
        /// Where to continue (0 = start).
        cursor: u64,
        /// Padding (about one datagram): the donor answers at most a few times what a
        /// requester sends (see [`crate::budget`]), so the joiner pays for its chunks.
        pad: serde_bytes::ByteBuf,
    },
    /// State transfer: one chunk of a cache, for `to`.
    SnapshotChunk {
        /// The node that asked.
        to: NodeId,
        /// Cache name.
        cache: String,
        /// The cursor this chunk starts at.
        cursor: u64,
        /// Records (live values and tombstones).
        records: Vec<Record>,
        /// Cursor of the next chunk, `None` when this is the last one.
        next: Option<u64>,
        /// The donor's newest clear of this cache.
        floor: Version,
        /// The donor's tombstone horizon: the joiner adopts it when its copy is complete.
        horizon: Version,
    },
    /// A cluster-wide question (metrics, checksums).
    Query {
        /// Request id chosen by the asker.
        id: u64,
        /// The question.
        query: Query,
    },
    /// An answer to [`Msg::Query`] `id`, for `to`.
    Reply {
        /// The asker.
        to: NodeId,
        /// Request id.
        id: u64,
        /// The answer, msgpack-encoded.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Unicast transports only: the address each of the sender's members was heard from, so
    /// that a node that knows one seed learns every member's address. The core relays it to
    /// the driver ([`crate::endpoint::Event::Addresses`]) and never interprets it.
    /// Added after [`Msg::Reply`], so the encoding of every older message is unchanged; a
    /// node that predates it counts it as malformed and otherwise interoperates.
    Addresses {
        /// `(member, address)` pairs, at most [`MAX_ADDRESSES`].
        addrs: Vec<(NodeId, SocketAddr)>,
    },
}

/// Most `(member, address)` pairs in one [`Msg::Addresses`] (the membership table's bound).
pub const MAX_ADDRESSES: usize = 256;

impl Msg {
    /// Encodes with rmp-serde.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain data types into a Vec cannot fail: no maps with non-string
        // keys, no custom serializers that error.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes; `None` if the bytes are not a valid message.
    pub fn decode(bytes: &[u8]) -> Option<Msg> {
        rmp_serde::from_slice(bytes).ok()
    }

    /// The node a targeted message is meant for (`None`: everybody).
    pub fn target(&self) -> Option<NodeId> {
        match self {
            Msg::Nak { to, .. }
            | Msg::Gone { to, .. }
            | Msg::Buckets { to, .. }
            | Msg::Pull { to, .. }
            | Msg::SnapshotReq { to, .. }
            | Msg::SnapshotChunk { to, .. }
            | Msg::Reply { to, .. } => Some(*to),
            _ => None,
        }
    }
}

mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|b| serde_bytes::Bytes::new(b)).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Op;

    #[test]
    fn messages_round_trip() {
        let rec = Record {
            key: vec![1, 2, 3],
            version: Version::new(42, NodeId(7)),
            op: Op::Put {
                value: vec![9; 100],
                ttl_ms: Some(5),
            },
        };
        let msgs = vec![
            Msg::Data {
                seq: 1,
                items: vec![Item::Rec {
                    cache: "c".into(),
                    rec: rec.clone(),
                }],
            },
            Msg::Hello {
                name: "n".into(),
                join: true,
                seq_hi: 3,
                acks: vec![(NodeId(1), 2)],
                caches: vec!["c".into()],
                wall_ms: 1,
            },
            Msg::Nak {
                to: NodeId(3),
                ranges: vec![(1, 4)],
            },
            Msg::Query {
                id: 9,
                query: Query::Checksum {
                    cache: "c".into(),
                    key: Some(vec![1]),
                },
            },
            Msg::Reply {
                to: NodeId(2),
                id: 9,
                body: vec![1, 2],
            },
            Msg::Addresses {
                addrs: vec![(NodeId(4), "10.1.2.3:4000".parse().unwrap())],
            },
            Msg::SnapshotChunk {
                to: NodeId(2),
                cache: "c".into(),
                cursor: 0,
                records: vec![rec],
                next: None,
                floor: Version::ZERO,
                horizon: Version::new(3, NodeId(4)),
            },
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert_eq!(Msg::decode(&[]), None);
        assert_eq!(Msg::decode(&[0xc1, 0xff, 0x00]), None);
        assert_eq!(Msg::decode(&[0x92, 0x01]), None);
    }
}
