//! The byte form of one cache change, as the protocol carries and applies it.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::codec::{Reader, put_bytes, put_u64, put_varint};
use super::version::{NodeId, Version};

/// Bytes kept inline in an [`InlineBytes`].
pub const INLINE_BYTES: usize = 16;

/// The bytes of a record's key or value: up to [`INLINE_BYTES`] inside the record itself, on
/// the heap beyond. Most cache keys and many values are that small (a serialized `u64` is at
/// most 9 bytes), so a change usually travels from the writing thread through the queue and
/// the core with no allocation, and no buffer goes back and forth between two threads'
/// caches. Derefs to `[u8]`; build one with `InlineBytes::from_slice` or `.into()` from a
/// `Vec<u8>` (which keeps the vector's buffer if it is larger than the inline room).
pub type InlineBytes = SmallVec<[u8; INLINE_BYTES]>;

/// What a replicated change does to a key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Store this value (msgpack bytes of `V`), with an optional per-entry TTL in milliseconds
    /// (`None`: the receiving cache's own `cache_ttl`).
    Put {
        /// The value, as serialized by rmp-serde.
        #[serde(with = "inline_bytes")]
        value: InlineBytes,
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
    #[serde(with = "inline_bytes")]
    pub key: InlineBytes,
    /// The version of the write.
    pub version: Version,
    /// What the write does.
    pub op: Op,
}

/// A [`Record`] borrowed from a received message: key and value are slices of the opened
/// datagram, so decoding a change allocates nothing (see [`crate::message::ItemRef`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordRef<'a> {
    /// The key, as serialized by rmp-serde.
    pub key: &'a [u8],
    /// The version of the write.
    pub version: Version,
    /// What the write does.
    pub op: OpRef<'a>,
}

/// [`Op`] borrowed from a received message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpRef<'a> {
    /// Store this value (msgpack bytes of `V`), with an optional per-entry TTL in milliseconds.
    Put {
        /// The value, as serialized by rmp-serde.
        value: &'a [u8],
        /// Per-entry TTL in milliseconds (`None`: the receiving cache's own `cache_ttl`).
        ttl_ms: Option<u64>,
    },
    /// Delete the key, leaving a tombstone at this version.
    Del,
    /// Drop older copies (invalidate mode).
    Inval,
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record {
            key: InlineBytes::from_slice(self.key),
            version: self.version,
            op: match self.op {
                OpRef::Put { value, ttl_ms } => Op::Put {
                    value: InlineBytes::from_slice(value),
                    ttl_ms,
                },
                OpRef::Del => Op::Del,
                OpRef::Inval => Op::Inval,
            },
        }
    }
}

impl Record {
    /// This record as a borrowed view (what [`crate::state::AppState::apply`] takes).
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef {
            key: &self.key,
            version: self.version,
            op: match &self.op {
                Op::Put { value, ttl_ms } => OpRef::Put {
                    value,
                    ttl_ms: *ttl_ms,
                },
                Op::Del => OpRef::Del,
                Op::Inval => OpRef::Inval,
            },
        }
    }

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

/// Op codes of the compact form (see [`Record::encode_compact`]); the message codec keeps the
/// codes above these for its other items.
pub(crate) const OP_PUT: u8 = 0;
pub(crate) const OP_PUT_TTL: u8 = 1;
pub(crate) const OP_DEL: u8 = 2;
pub(crate) const OP_INVAL: u8 = 3;

/// Bytes of a varint holding `v`.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

impl Record {
    /// The op code of this record in the compact form.
    pub(crate) fn op_code(&self) -> u8 {
        match &self.op {
            Op::Put { ttl_ms: None, .. } => OP_PUT,
            Op::Put {
                ttl_ms: Some(_), ..
            } => OP_PUT_TTL,
            Op::Del => OP_DEL,
            Op::Inval => OP_INVAL,
        }
    }

    /// Appends the compact form after the op code: key (length-prefixed), version (two
    /// little-endian words), then for a put the value (length-prefixed) and the TTL (varint).
    pub(crate) fn encode_compact(&self, out: &mut Vec<u8>) {
        put_bytes(out, &self.key);
        put_u64(out, self.version.hlc);
        put_u64(out, self.version.node.0);
        if let Op::Put { value, ttl_ms } = &self.op {
            put_bytes(out, value);
            if let Some(ttl) = ttl_ms {
                put_varint(out, *ttl);
            }
        }
    }

    /// Bytes [`Record::encode_compact`] appends.
    pub(crate) fn compact_len(&self) -> usize {
        let key = varint_len(self.key.len() as u64) + self.key.len();
        key + 16
            + match &self.op {
                Op::Put { value, ttl_ms } => {
                    varint_len(value.len() as u64) + value.len() + ttl_ms.map_or(0, varint_len)
                }
                Op::Del | Op::Inval => 0,
            }
    }

    /// Reads what [`Record::encode_compact`] wrote for op code `code`, borrowing key and value
    /// from the input; `None` if malformed.
    pub(crate) fn decode_compact<'a>(code: u8, r: &mut Reader<'a>) -> Option<RecordRef<'a>> {
        let key = r.bytes()?;
        let version = Version::new(r.u64()?, NodeId(r.u64()?));
        let op = match code {
            OP_PUT | OP_PUT_TTL => OpRef::Put {
                value: r.bytes()?,
                ttl_ms: if code == OP_PUT_TTL {
                    Some(r.varint()?)
                } else {
                    None
                },
            },
            OP_DEL => OpRef::Del,
            OP_INVAL => OpRef::Inval,
            _ => return None,
        };
        Some(RecordRef { key, version, op })
    }
}

/// Serde for [`InlineBytes`]: a byte string, as `serde_bytes` writes a `Vec<u8>` (the same
/// encoding as before the inline form).
mod inline_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::InlineBytes;

    pub fn serialize<S: Serializer>(v: &InlineBytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<InlineBytes, D::Error> {
        Ok(InlineBytes::from_vec(
            serde_bytes::ByteBuf::deserialize(d)?.into_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape a record had when its bytes were `Vec<u8>`s (`serde_bytes`).
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct VecRecord {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        version: Version,
        op: VecOp,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum VecOp {
        Put {
            #[serde(with = "serde_bytes")]
            value: Vec<u8>,
            ttl_ms: Option<u64>,
        },
        Del,
        Inval,
    }

    #[test]
    fn inline_bytes_keep_the_wire_form_of_byte_vectors() {
        for (klen, vlen) in [(0, 0), (3, 16), (16, 17), (40, 1000)] {
            let (key, value) = (vec![7u8; klen], vec![9u8; vlen]);
            let rec = Record {
                key: InlineBytes::from_slice(&key),
                version: Version::new(123, NodeId(4)),
                op: Op::Put {
                    value: InlineBytes::from_slice(&value),
                    ttl_ms: Some(5),
                },
            };
            assert_eq!(rec.key.spilled(), klen > INLINE_BYTES);
            let old = VecRecord {
                key,
                version: rec.version,
                op: VecOp::Put {
                    value,
                    ttl_ms: Some(5),
                },
            };
            let bytes = rmp_serde::to_vec(&rec).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec(&old).unwrap());
            assert_eq!(rmp_serde::from_slice::<Record>(&bytes).unwrap(), rec);
            assert_eq!(rmp_serde::from_slice::<VecRecord>(&bytes).unwrap(), old);
        }
    }
}
