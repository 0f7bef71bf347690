//! Protocol messages: what travels inside the (sealed, fragmented) datagrams. Decoding is
//! total: anything that does not decode is dropped as malformed.
//!
//! The first byte says how the rest is encoded. The replicated changes (`Data` and `Repair`,
//! nearly all the traffic under load) have a compact binary form ([`crate::codec`]): a cache
//! name is written once for a run of items of the same cache, a version is two fixed words,
//! key and value are length-prefixed bytes. It costs a fraction of per-record MessagePack to
//! write and to read (see the README's per-change budget). Every other message is rmp-serde.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec::{Reader, put_bytes, put_u64, put_varint};
use super::record::{Record, RecordRef, varint_len};
use super::version::{NodeId, Version};
use crate::sync::{KeyVersion, SyncDigest};

/// One replicated change inside a [`Msg::Data`] or [`Msg::Repair`] message.
///
/// The cache name is shared (`Arc<str>`): a node's writes to one cache, and the items decoded
/// from one run of a data message, all point at one name instead of each carrying a copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// A change to one key of cache `cache`.
    Rec {
        /// Cache name.
        cache: Arc<str>,
        /// The change.
        rec: Record,
    },
    /// Cache `cache` was cleared at `version`.
    Clear {
        /// Cache name.
        cache: Arc<str>,
        /// Version of the clear.
        version: Version,
    },
    /// The sender has started loading `key` of cache `cache` from its source (a miss in a
    /// loading read): peers that miss the same key may wait briefly for the replicated value
    /// instead of loading it too. Advisory; carries no data.
    Loading {
        /// Cache name.
        cache: Arc<str>,
        /// Key bytes.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Item {
    /// Encoded size, used to pack items into datagrams: an upper bound (it counts the cache
    /// name, which a run of items of one cache carries only once).
    pub fn weight(&self) -> usize {
        let (cache, body) = match self {
            Item::Rec { cache, rec } => (cache, rec.compact_len()),
            Item::Clear { cache, .. } => (cache, 16),
            Item::Loading { cache, key } => (cache, varint_len(key.len() as u64) + key.len()),
        };
        1 + varint_len(cache.len() as u64) + cache.len() + body
    }

    /// This item as a borrowed view.
    pub fn view(&self) -> ItemRef<'_> {
        match self {
            Item::Rec { cache, rec } => ItemRef::Rec {
                cache,
                rec: rec.view(),
            },
            Item::Clear { cache, version } => ItemRef::Clear {
                cache,
                version: *version,
            },
            Item::Loading { cache, key } => ItemRef::Loading { cache, key },
        }
    }

    fn cache(&self) -> &str {
        match self {
            Item::Rec { cache, .. } | Item::Clear { cache, .. } | Item::Loading { cache, .. } => {
                cache
            }
        }
    }
}

/// First byte of an encoded message: how the rest is encoded.
const TAG_RMP: u8 = 0;
const TAG_DATA: u8 = 1;
const TAG_REPAIR: u8 = 2;

/// Item codes of the compact form (after the record op codes 0–3); [`NEW_CACHE`] is or-ed in
/// when the item names its cache (the first item, and each one whose cache differs from the
/// previous item's).
const ITEM_CLEAR: u8 = 4;
const ITEM_LOADING: u8 = 5;
const NEW_CACHE: u8 = 0x80;

/// Writes an item list in the compact form: count, then each item as its code, its cache name
/// when it changes, and its body.
fn encode_items(items: &[Item], out: &mut Vec<u8>) {
    put_varint(out, items.len() as u64);
    let mut last: Option<&str> = None;
    for item in items {
        let code = match item {
            Item::Rec { rec, .. } => rec.op_code(),
            Item::Clear { .. } => ITEM_CLEAR,
            Item::Loading { .. } => ITEM_LOADING,
        };
        let cache = item.cache();
        if last == Some(cache) {
            out.push(code);
        } else {
            out.push(code | NEW_CACHE);
            put_bytes(out, cache.as_bytes());
            last = Some(cache);
        }
        match item {
            Item::Rec { rec, .. } => rec.encode_compact(out),
            Item::Clear { version, .. } => {
                put_u64(out, version.hlc);
                put_u64(out, version.node.0);
            }
            Item::Loading { key, .. } => put_bytes(out, key),
        }
    }
}

/// An [`Item`] borrowed from a received message: cache name, key and value are slices of the
/// opened datagram (decoding allocates nothing per item).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ItemRef<'a> {
    /// A change to one key of cache `cache`.
    Rec {
        /// Cache name.
        cache: &'a str,
        /// The change.
        rec: RecordRef<'a>,
    },
    /// Cache `cache` was cleared at `version`.
    Clear {
        /// Cache name.
        cache: &'a str,
        /// Version of the clear.
        version: Version,
    },
    /// The sender has started loading `key` of cache `cache`.
    Loading {
        /// Cache name.
        cache: &'a str,
        /// Key bytes.
        key: &'a [u8],
    },
}

impl ItemRef<'_> {
    /// An owned copy.
    pub fn to_item(&self) -> Item {
        match *self {
            ItemRef::Rec { cache, rec } => Item::Rec {
                cache: cache.into(),
                rec: rec.to_record(),
            },
            ItemRef::Clear { cache, version } => Item::Clear {
                cache: cache.into(),
                version,
            },
            ItemRef::Loading { cache, key } => Item::Loading {
                cache: cache.into(),
                key: key.to_vec(),
            },
        }
    }
}

/// A `Data` or `Repair` message decoded without copying (see [`Changes::decode`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Changes<'a> {
    /// The sequence number of a `Data` message; `None` for a `Repair`.
    pub seq: Option<u64>,
    /// The changes, borrowing the message bytes.
    pub items: Vec<ItemRef<'a>>,
}

impl<'a> Changes<'a> {
    /// Whether `bytes` is a `Data` or `Repair` message (by its first byte), which
    /// [`Changes::decode`] reads and [`Msg::decode`] copies.
    pub fn is_changes(bytes: &[u8]) -> bool {
        matches!(bytes.first(), Some(&(TAG_DATA | TAG_REPAIR)))
    }

    /// Decodes a `Data` or `Repair` message in place: one allocation (the item list) per
    /// message, none per item. `None` if the bytes are not such a message or are malformed
    /// (as for [`Msg::decode`]: trailing bytes are refused).
    pub fn decode(bytes: &'a [u8]) -> Option<Changes<'a>> {
        let (&tag, rest) = bytes.split_first()?;
        let mut r = Reader::new(rest);
        let seq = match tag {
            TAG_DATA => Some(r.varint()?),
            TAG_REPAIR => None,
            _ => return None,
        };
        let items = decode_items(&mut r)?;
        (r.remaining() == 0).then_some(Changes { seq, items })
    }

    /// The owned message ([`Msg::Data`] or [`Msg::Repair`]).
    pub fn to_msg(&self) -> Msg {
        let items = self.items.iter().map(ItemRef::to_item).collect();
        match self.seq {
            Some(seq) => Msg::Data { seq, items },
            None => Msg::Repair { items },
        }
    }
}

/// Reads what [`encode_items`] wrote, borrowing from the input. Allocates no more than the
/// input justifies: every item takes at least two bytes, so a count beyond half the remaining
/// bytes is refused up front.
fn decode_items<'a>(r: &mut Reader<'a>) -> Option<Vec<ItemRef<'a>>> {
    let count = usize::try_from(r.varint()?).ok()?;
    if count > r.remaining() / 2 {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    let mut cache: Option<&'a str> = None;
    for _ in 0..count {
        let code = r.u8()?;
        if code & NEW_CACHE != 0 {
            cache = Some(std::str::from_utf8(r.bytes()?).ok()?);
        }
        let cache = cache?;
        let item = match code & !NEW_CACHE {
            ITEM_CLEAR => ItemRef::Clear {
                cache,
                version: Version::new(r.u64()?, NodeId(r.u64()?)),
            },
            ITEM_LOADING => ItemRef::Loading {
                cache,
                key: r.bytes()?,
            },
            op => ItemRef::Rec {
                cache,
                rec: Record::decode_compact(op, r)?,
            },
        };
        items.push(item);
    }
    Some(items)
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
    /// Anti-entropy: sums of the parts of some buckets of one cache, sent to `to` whose digest
    /// differed, for buckets too long to list whole (more than [`crate::sync::PART_KEYS`]
    /// keys). `to` compares them with its own and answers with [`Msg::Buckets`] lists of the
    /// parts whose sums differ.
    Sums {
        /// The node whose digest differed.
        to: NodeId,
        /// Cache name.
        cache: String,
        /// `(bucket, parts, sums)`: `bucket` cut in `parts` parts by
        /// [`crate::sync::key_part`], and for each part the wrapping sum of its live keys'
        /// [`crate::sync::key_version_digest`]s (`parts` of them, at most
        /// [`crate::sync::MAX_PARTS`]).
        buckets: Vec<(u16, u16, Vec<u64>)>,
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
        /// Only records at or below this HLC ([`u64::MAX`]: all): the `as_of` of the
        /// transfer's first chunk. What the donor holds newer was written, or reached it,
        /// after the joiner was listening, and reaches the joiner on the stream; so the copy
        /// does not chase writers that outpace it. Last, and all when absent: a request of
        /// the build before it still decodes.
        #[serde(default = "unbounded")]
        until: u64,
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
        /// The donor's clock (newest HLC it issued or saw) when it served this chunk
        /// ([`u64::MAX`] if it cannot say, or absent: a chunk of the build before it): the
        /// joiner asks for the rest `until` the first chunk's.
        #[serde(default = "unbounded")]
        as_of: u64,
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
    /// Encodes: `Data` and `Repair` in the compact form, everything else with rmp-serde, after
    /// a one-byte tag that says which.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Data { seq, items } => {
                let mut out =
                    Vec::with_capacity(16 + items.iter().map(Item::weight).sum::<usize>());
                out.push(TAG_DATA);
                put_varint(&mut out, *seq);
                encode_items(items, &mut out);
                out
            }
            Msg::Repair { items } => {
                let mut out = Vec::with_capacity(8 + items.iter().map(Item::weight).sum::<usize>());
                out.push(TAG_REPAIR);
                encode_items(items, &mut out);
                out
            }
            _ => {
                let mut out = vec![TAG_RMP];
                // Serializing these plain data types into a Vec cannot fail: no maps with
                // non-string keys, no custom serializers that error.
                if rmp_serde::encode::write(&mut out, self).is_err() {
                    out.truncate(1);
                }
                out
            }
        }
    }

    /// Decodes; `None` if the bytes are not a valid message (trailing bytes after a compact
    /// message, or a `Data`/`Repair` in MessagePack, are not: each message has one form).
    pub fn decode(bytes: &[u8]) -> Option<Msg> {
        if Changes::is_changes(bytes) {
            return Changes::decode(bytes).map(|c| c.to_msg());
        }
        let (&tag, rest) = bytes.split_first()?;
        if tag != TAG_RMP {
            return None;
        }
        match rmp_serde::from_slice(rest).ok()? {
            Msg::Data { .. } | Msg::Repair { .. } => None,
            m => Some(m),
        }
    }

    /// The node a targeted message in its MessagePack form is meant for, read from its first
    /// bytes without decoding the rest: `None` unless `bytes` start like one of the targeted
    /// messages (then [`Msg::decode`] decides). On a group transport every member receives
    /// the messages meant for one (bucket lists, pulls, NAKs, retransmit answers); decoding
    /// each whole to learn it was meant for another, with nine members, cost a receiver more
    /// than the messages meant for it.
    pub fn peek_target(bytes: &[u8]) -> Option<NodeId> {
        const TARGETED: [&[u8]; 8] = [
            b"Nak",
            b"Gone",
            b"Buckets",
            b"Sums",
            b"Pull",
            b"SnapshotReq",
            b"SnapshotChunk",
            b"Reply",
        ];
        let (&TAG_RMP, rest) = bytes.split_first()? else {
            return None;
        };
        // `{ variant: [to, ...] }`: a map of one entry, the variant's name, its fields in order.
        let (&0x81, rest) = rest.split_first()? else {
            return None;
        };
        let (&head, rest) = rest.split_first()?;
        let (len, rest) = match head {
            0xa0..=0xbf => (usize::from(head & 0x1f), rest),
            0xd9 => (usize::from(*rest.first()?), rest.get(1..)?),
            _ => return None,
        };
        let name = rest.get(..len)?;
        if !TARGETED.contains(&name) {
            return None;
        }
        let rest = &rest[len..];
        let (&head, rest) = rest.split_first()?;
        let rest = match head {
            0x91..=0x9f => rest,
            0xdc => rest.get(2..)?,
            0xdd => rest.get(4..)?,
            _ => return None,
        };
        let (&head, rest) = rest.split_first()?;
        let to = match head {
            0x00..=0x7f => u64::from(head),
            0xcc => u64::from(*rest.first()?),
            0xcd => u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            0xce => u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
            0xcf => u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            _ => return None,
        };
        Some(NodeId(to))
    }

    /// The node a targeted message is meant for (`None`: everybody).
    pub fn target(&self) -> Option<NodeId> {
        match self {
            Msg::Nak { to, .. }
            | Msg::Gone { to, .. }
            | Msg::Buckets { to, .. }
            | Msg::Sums { to, .. }
            | Msg::Pull { to, .. }
            | Msg::SnapshotReq { to, .. }
            | Msg::SnapshotChunk { to, .. }
            | Msg::Reply { to, .. } => Some(*to),
            _ => None,
        }
    }
}

/// The default of the state transfer's HLC bounds: no bound.
fn unbounded() -> u64 {
    u64::MAX
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
    fn changes_decode_in_place_to_what_msg_decode_returns() {
        let rec = Record {
            key: b"key".to_vec().into(),
            version: Version::new(42, NodeId(3)),
            op: crate::record::Op::Put {
                value: b"value".to_vec().into(),
                ttl_ms: Some(9),
            },
        };
        let items = vec![
            Item::Rec {
                cache: "a".into(),
                rec: rec.clone(),
            },
            Item::Loading {
                cache: "a".into(),
                key: b"k".to_vec(),
            },
            Item::Clear {
                cache: "b".into(),
                version: Version::new(7, NodeId(1)),
            },
        ];
        for m in [
            Msg::Data {
                seq: 5,
                items: items.clone(),
            },
            Msg::Repair { items },
        ] {
            let bytes = m.encode();
            assert!(Changes::is_changes(&bytes));
            let c = Changes::decode(&bytes).expect("decodes");
            assert_eq!(c.seq, matches!(m, Msg::Data { .. }).then_some(5));
            let ItemRef::Rec { cache, rec: view } = c.items[0] else {
                panic!("a record first: {:?}", c.items[0]);
            };
            assert_eq!((cache, view), ("a", rec.view()));
            // Borrowed from the message, not copied.
            assert!(bytes.as_ptr_range().contains(&view.key.as_ptr()));
            assert_eq!(c.to_msg(), m);
            assert_eq!(Msg::decode(&bytes), Some(m));
        }
        let other = Msg::Tail { seq_hi: 1 }.encode();
        assert!(!Changes::is_changes(&other));
        assert_eq!(Changes::decode(&other), None);
    }

    #[test]
    fn messages_round_trip() {
        let rec = Record {
            key: vec![1, 2, 3].into(),
            version: Version::new(42, NodeId(7)),
            op: Op::Put {
                value: vec![9; 100].into(),
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
                as_of: 77 << 16,
                floor: Version::ZERO,
                horizon: Version::new(3, NodeId(4)),
            },
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
    }

    #[test]
    fn state_transfer_messages_of_the_build_before_the_hlc_bounds_still_decode() {
        // The same variants without the trailing `until` / `as_of`: they decode unbounded.
        #[derive(serde::Serialize)]
        enum Before {
            SnapshotReq {
                to: NodeId,
                cache: String,
                cursor: u64,
                pad: serde_bytes::ByteBuf,
            },
            SnapshotChunk {
                to: NodeId,
                cache: String,
                cursor: u64,
                records: Vec<Record>,
                next: Option<u64>,
                floor: Version,
                horizon: Version,
            },
        }
        let old = |m: &Before| {
            let mut out = vec![TAG_RMP];
            rmp_serde::encode::write(&mut out, m).unwrap();
            out
        };
        let req = old(&Before::SnapshotReq {
            to: NodeId(2),
            cache: "c".into(),
            cursor: 5,
            pad: serde_bytes::ByteBuf::from(vec![0; 8]),
        });
        assert_eq!(
            Msg::decode(&req),
            Some(Msg::SnapshotReq {
                to: NodeId(2),
                cache: "c".into(),
                cursor: 5,
                pad: serde_bytes::ByteBuf::from(vec![0; 8]),
                until: u64::MAX,
            })
        );
        let chunk = old(&Before::SnapshotChunk {
            to: NodeId(2),
            cache: "c".into(),
            cursor: 5,
            records: Vec::new(),
            next: Some(9),
            floor: Version::ZERO,
            horizon: Version::new(3, NodeId(4)),
        });
        assert!(matches!(
            Msg::decode(&chunk),
            Some(Msg::SnapshotChunk {
                next: Some(9),
                as_of: u64::MAX,
                ..
            })
        ));
    }

    #[test]
    fn the_target_read_from_a_messages_first_bytes_is_the_one_it_names() {
        for id in [
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let to = NodeId(id);
            let targeted = [
                Msg::Nak {
                    to,
                    ranges: vec![(1, 4)],
                },
                Msg::Gone {
                    to,
                    ranges: vec![(1, 4)],
                },
                Msg::Buckets {
                    to,
                    cache: "c".into(),
                    parts: vec![(1, 0, 1)],
                    keys: Vec::new(),
                    horizon: Version::ZERO,
                },
                Msg::Sums {
                    to,
                    cache: "c".into(),
                    buckets: vec![(1, 2, vec![3, u64::MAX])],
                },
                Msg::Pull {
                    to,
                    cache: "c".into(),
                    keys: vec![serde_bytes::ByteBuf::from(vec![1])],
                },
                Msg::SnapshotReq {
                    to,
                    cache: "c".into(),
                    cursor: 0,
                    until: u64::MAX,
                    pad: serde_bytes::ByteBuf::from(vec![0; 40]),
                },
                Msg::SnapshotChunk {
                    to,
                    cache: "c".into(),
                    cursor: 0,
                    records: Vec::new(),
                    next: None,
                    as_of: u64::MAX,
                    floor: Version::ZERO,
                    horizon: Version::ZERO,
                },
                Msg::Reply {
                    to,
                    id: 9,
                    body: vec![1, 2],
                },
            ];
            for m in targeted {
                let bytes = m.encode();
                assert_eq!(m.target(), Some(to));
                assert_eq!(Msg::peek_target(&bytes), Some(to), "{m:?}");
                // Cut anywhere inside its head, it is left to the full decode.
                for cut in 0..4 {
                    assert_eq!(Msg::peek_target(&bytes[..cut]), None);
                }
            }
        }
        for m in [
            Msg::Tail { seq_hi: 1 },
            Msg::Leave,
            Msg::Query {
                id: 9,
                query: Query::Checksum {
                    cache: "c".into(),
                    key: None,
                },
            },
            Msg::Data {
                seq: 1,
                items: Vec::new(),
            },
        ] {
            assert_eq!(m.target(), None);
            assert_eq!(Msg::peek_target(&m.encode()), None, "{m:?}");
        }
    }

    fn data_of_every_item_kind() -> Msg {
        let rec = |key: u8, op: Op| Record {
            key: vec![key; 3].into(),
            version: Version::new(u64::MAX - u64::from(key), NodeId(u64::from(key) << 40)),
            op,
        };
        let items = vec![
            Item::Rec {
                cache: "a".into(),
                rec: rec(
                    1,
                    Op::Put {
                        value: vec![9; 200].into(),
                        ttl_ms: None,
                    },
                ),
            },
            Item::Rec {
                cache: "a".into(),
                rec: rec(
                    2,
                    Op::Put {
                        value: Vec::new().into(),
                        ttl_ms: Some(u64::MAX),
                    },
                ),
            },
            Item::Rec {
                cache: "bé".into(),
                rec: rec(3, Op::Del),
            },
            Item::Rec {
                cache: "bé".into(),
                rec: rec(4, Op::Inval),
            },
            Item::Clear {
                cache: "a".into(),
                version: Version::new(7, NodeId(8)),
            },
            Item::Loading {
                cache: "".into(),
                key: vec![5; 300],
            },
        ];
        Msg::Data {
            seq: 1 << 50,
            items,
        }
    }

    #[test]
    fn compact_messages_round_trip_and_weights_bound_their_size() {
        let Msg::Data { items, .. } = data_of_every_item_kind() else {
            unreachable!()
        };
        for m in [
            data_of_every_item_kind(),
            Msg::Repair {
                items: items.clone(),
            },
            Msg::Repair { items: Vec::new() },
        ] {
            let bytes = m.encode();
            assert_eq!(Msg::decode(&bytes), Some(m));
        }
        // Each item alone (so it names its cache) takes at most its weight.
        for item in items {
            let alone = Msg::Repair {
                items: vec![item.clone()],
            }
            .encode();
            assert!(alone.len() - 2 <= item.weight(), "{item:?}");
        }
    }

    #[test]
    fn every_truncation_and_trailing_byte_of_a_compact_message_is_refused() {
        let bytes = data_of_every_item_kind().encode();
        for end in 0..bytes.len() {
            assert_eq!(Msg::decode(&bytes[..end]), None, "prefix of {end} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Msg::decode(&longer), None);
    }

    #[test]
    fn hostile_compact_headers_are_refused_without_allocating() {
        // A count of 2^62 items in a 12-byte message.
        let mut huge = vec![TAG_REPAIR];
        put_varint(&mut huge, 1 << 62);
        huge.extend_from_slice(&[0x80, 1, b'c']);
        assert_eq!(Msg::decode(&huge), None);
        // First item without a cache name; unknown item code; invalid UTF-8 cache name.
        assert_eq!(Msg::decode(&[TAG_REPAIR, 1, ITEM_LOADING, 0]), None);
        assert_eq!(Msg::decode(&[TAG_REPAIR, 1, 0x80 | 0x7f, 1, b'c', 0]), None);
        assert_eq!(
            Msg::decode(&[TAG_REPAIR, 1, 0x80 | ITEM_LOADING, 1, 0xff, 0]),
            None
        );
        // The MessagePack form of a data message is not accepted (one form per message).
        let mut rmp = vec![TAG_RMP];
        rmp.extend(rmp_serde::to_vec(&data_of_every_item_kind()).unwrap());
        assert_eq!(Msg::decode(&rmp), None);
        assert_eq!(Msg::decode(&[9, 0]), None);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert_eq!(Msg::decode(&[]), None);
        assert_eq!(Msg::decode(&[0xc1, 0xff, 0x00]), None);
        assert_eq!(Msg::decode(&[0x92, 0x01]), None);
    }
}
