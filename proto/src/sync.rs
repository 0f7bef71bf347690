//! What every node computes the same way about a cache's contents, for anti-entropy and
//! repair: bucket and part of a key, per-entry digests, a cache's digest, and the result of
//! applying a remote record. These shapes travel on the wire, so they live in the core.

/// Number of anti-entropy buckets per cache. A key's bucket is `crc32(key bytes) % SYNC_BUCKETS`.
pub const SYNC_BUCKETS: usize = 64;

/// The anti-entropy bucket of a key.
pub fn key_bucket(key: &[u8]) -> usize {
    crc32fast::hash(key) as usize % SYNC_BUCKETS
}

/// Which of `parts` sub-lists of its bucket a key falls in (a second, independent slice of the
/// same crc32), so a bucket too long for one message can be compared part by part exactly.
pub fn key_part(key: &[u8], parts: u16) -> u16 {
    key_part_of_hash(crc32fast::hash(key), parts)
}

/// [`key_part`] from the key's crc32, for callers that keep it.
pub fn key_part_of_hash(crc: u32, parts: u16) -> u16 {
    ((crc / SYNC_BUCKETS as u32) % u32::from(parts.max(1))) as u16
}

/// Keys a part of a bucket holds, on average, when a bucket is compared part by part
/// ([`crate::message::Msg::Sums`]): a bucket with more keys than this is answered with one sum
/// per part of about this many keys instead of its list, and only the parts whose sums differ
/// are listed. 16 keys of ~28 listed bytes cost 9 bytes of sum, so a bucket of 2,000 keys costs
/// ~1.1 KB of sums instead of ~56 KB of list, and each differing key ~450 bytes of list.
pub const PART_KEYS: usize = 16;

/// Most parts a bucket is cut into (by [`key_part`]); more in a message is refused.
pub const MAX_PARTS: u16 = 4096;

/// A key version's digest for the sums of parts ([`crate::message::Msg::Sums`]): splitmix64
/// of crc32(key bytes ‖ version bytes). It covers what bucket lists compare (key and version,
/// not the value), so two parts whose sums agree have nothing a list would find.
pub fn key_version_digest(key: &[u8], version: crate::version::Version) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(&version.to_bytes());
    splitmix64(u64::from(h.finalize()))
}

/// The per-entry digest every node computes the same way: a 64-bit mix (splitmix64) of
/// crc32(key bytes ‖ value bytes ‖ version bytes). A cache checksum is the wrapping sum of its
/// entries' digests, so it does not depend on insertion order.
pub fn entry_digest(key: &[u8], value: &[u8], version: crate::version::Version) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    h.update(&version.to_bytes());
    splitmix64(u64::from(h.finalize()))
}

/// splitmix64 finalizer: spreads a 32-bit crc over 64 bits so sums of digests rarely collide.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Digest of a cache's live entries for anti-entropy: count, order-independent checksum, and
/// one checksum per bucket. Tombstones are not included (see docs/PROTOCOL.md).
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SyncDigest {
    /// Live entries.
    pub count: u64,
    /// Sum of per-entry digests (what a cache reports as its checksum).
    pub checksum: u64,
    /// Per-bucket sums, `SYNC_BUCKETS` long.
    pub buckets: Vec<u64>,
}

/// One key's version as listed in a bucket exchange.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyVersion {
    /// Key bytes.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The version held.
    pub version: crate::version::Version,
    /// True if the key is held as a tombstone (deleted at `version`).
    pub deleted: bool,
}

/// Result of applying a remote record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record was newer and changed the cache.
    Changed,
    /// The record was not newer than what the cache holds (or a tombstone/clear floor).
    Stale,
    /// Mode 0 (update-if-present) and the key is absent: ignored.
    Skipped,
    /// The key or value bytes do not decode as this cache's types; counted and dropped.
    Undecodable,
    /// The key is not held and the record is at or below the cache's tombstone horizon: its
    /// delete may have been forgotten here, so it is refused (a miss is safe, a resurrected
    /// value is not).
    BelowHorizon,
}
