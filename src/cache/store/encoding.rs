//! The serialized form of a write: key ‖ value in one buffer, with the crcs the store derives
//! from it (entry checksum, sync bucket).
//!
//! The buffer is inline (on the writer's stack) up to [`INLINE`] bytes, which covers small keys
//! and values with no allocation and no thread-local access; a longer key ‖ value moves to a
//! heap buffer borrowed from a thread-local (returned on drop, so a thread's long writes do
//! not allocate once it has grown).

use std::any::Any;
use std::cell::Cell;

use serde::Serialize;

use super::crc;
use super::fastser::{self, Fast, Sink};
use crate::cache::hooks::SYNC_BUCKETS;
use crate::error::{Error, Result};
use crate::proto::version::Version;

/// The sync bucket of a serialized key.
pub(super) fn bucket_of(key_bytes: &[u8]) -> u8 {
    crate::cache::hooks::key_bucket(key_bytes) as u8
}

/// `v` as MessagePack, written as the write path writes it ([`Buf`]: the commonest scalars
/// without serde's generic path), in a vector of its exact size: one allocation. Anti-entropy
/// lists every key of the buckets it compares this way; `rmp_serde::to_vec` grew a vector from
/// empty (two allocations for a short string key) and was four fifths of the time spent reading
/// a bucket's keys out of the cache.
pub(super) fn to_vec<T: Serialize + 'static>(v: &T) -> Result<Vec<u8>> {
    let mut b = Buf::new();
    b.serialize(v)?;
    Ok(b.bytes().to_vec())
}

pub(super) fn ser_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Serialization(Box::new(e))
}

thread_local! {
    static ENCODE_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Bytes of key ‖ value kept inline.
const INLINE: usize = 64;

/// Key ‖ value bytes: inline while they fit in [`INLINE`] bytes, else all in `heap`.
struct Buf {
    len: usize,
    inline: [u8; INLINE],
    /// Every byte once `len > INLINE` (borrowed from [`ENCODE_BUF`]); empty before.
    heap: Vec<u8>,
}

impl Buf {
    #[inline]
    fn new() -> Buf {
        Buf {
            len: 0,
            inline: [0; INLINE],
            heap: Vec::new(),
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        if self.len <= INLINE {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }

    #[inline]
    fn push(&mut self, b: &[u8]) {
        let end = self.len + b.len();
        if end <= INLINE {
            self.inline[self.len..end].copy_from_slice(b);
        } else {
            self.push_heap(b);
        }
        self.len = end;
    }

    /// Appends past [`INLINE`] bytes: moves the inline bytes to the thread's heap buffer first.
    #[cold]
    #[inline(never)]
    fn push_heap(&mut self, b: &[u8]) {
        if self.len <= INLINE {
            let mut heap = ENCODE_BUF.with(|c| c.take());
            heap.clear();
            heap.extend_from_slice(&self.inline[..self.len]);
            self.heap = heap;
        }
        self.heap.extend_from_slice(b);
    }
}

impl Buf {
    /// Appends `v` as MessagePack: scalars with [`Fast`] (inlined), anything else with
    /// `rmp_serde` (the same bytes either way).
    ///
    /// The commonest key and value types are written without going through `Serialize`
    /// (whose `u64` impl was a call of ~28 instructions per key or value): the type test is
    /// resolved at compile time.
    #[inline(always)]
    fn serialize<T: Serialize + 'static>(&mut self, v: &T) -> Result<()> {
        let any = v as &dyn Any;
        if let Some(&n) = any.downcast_ref::<u64>() {
            fastser::put_uint(self, n);
            return Ok(());
        }
        if let Some(&n) = any.downcast_ref::<u32>() {
            fastser::put_uint(self, u64::from(n));
            return Ok(());
        }
        if let Some(&n) = any.downcast_ref::<i64>() {
            fastser::put_sint(self, n);
            return Ok(());
        }
        if let Some(&n) = any.downcast_ref::<i32>() {
            fastser::put_sint(self, i64::from(n));
            return Ok(());
        }
        if v.serialize(Fast(self)).is_ok() {
            return Ok(());
        }
        // `Fast` fails before writing anything.
        rmp_serde::encode::write(self, v).map_err(ser_err)
    }
}

impl Sink for Buf {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.push(bytes);
    }
}

impl std::io::Write for Buf {
    #[inline]
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.push(b);
        Ok(b.len())
    }

    #[inline]
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.push(b);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Buf {
    #[inline]
    fn drop(&mut self) {
        if self.heap.capacity() != 0 {
            give_back(std::mem::take(&mut self.heap));
        }
    }
}

/// Keeps a heap buffer for the thread's next long write (the larger of it and the one kept,
/// up to 64 KiB).
#[cold]
#[inline(never)]
fn give_back(buf: Vec<u8>) {
    if buf.capacity() <= 64 * 1024 {
        ENCODE_BUF.with(|c| {
            let old = c.take();
            c.set(if old.capacity() >= buf.capacity() {
                old
            } else {
                buf
            });
        });
    }
}

/// Serialized key ‖ value, plus the crcs the store needs, computed in one pass over
/// key ‖ value.
pub(super) struct Encoded {
    buf: Buf,
    klen: usize,
    key_crc: u32,
    /// crc register after key ‖ value (the entry crc continues it with the version).
    kv_crc: u32,
}

impl Encoded {
    /// Nothing encoded yet: [`Encoded::encode`] fills it.
    #[inline(always)]
    pub(super) fn empty() -> Encoded {
        Encoded {
            buf: Buf::new(),
            klen: 0,
            key_crc: 0,
            kv_crc: 0,
        }
    }

    /// `key` and `value` serialized, with their crcs.
    #[inline(always)]
    pub(super) fn new<K: Serialize + 'static, V: Serialize + 'static>(
        key: &K,
        value: &V,
    ) -> Result<Encoded> {
        let mut enc = Encoded::empty();
        enc.encode(key, value)?;
        Ok(enc)
    }

    /// Serializes `key` and `value` into this empty encoding, in place: the write path keeps
    /// its `Encoded` where it is built (returned in a `Result`, the ~100 bytes were copied).
    #[inline(always)]
    pub(super) fn encode<K: Serialize + 'static, V: Serialize + 'static>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<()> {
        self.buf.serialize(key)?;
        self.klen = self.buf.len;
        self.buf.serialize(value)?;
        self.crcs();
        Ok(())
    }

    /// Key and value bytes already serialized (a peer's record), copied like [`Encoded::new`]
    /// writes them (no allocation for short ones, none once the thread's buffer has grown).
    pub(super) fn from_parts(key: &[u8], value: &[u8]) -> Encoded {
        let mut enc = Encoded {
            buf: Buf::new(),
            klen: key.len(),
            key_crc: 0,
            kv_crc: 0,
        };
        enc.buf.push(key);
        enc.buf.push(value);
        enc.crcs();
        enc
    }

    /// Computes the key crc and the key ‖ value register from the bytes.
    #[inline(always)]
    fn crcs(&mut self) {
        let bytes = self.buf.bytes();
        let k = crc::update(crc::INIT, &bytes[..self.klen]);
        self.kv_crc = crc::update(k, &bytes[self.klen..]);
        self.key_crc = crc::finish(k);
    }

    #[inline]
    pub(super) fn size(&self) -> u64 {
        self.buf.len as u64
    }

    #[inline]
    pub(super) fn key(&self) -> &[u8] {
        &self.buf.bytes()[..self.klen]
    }

    #[inline]
    pub(super) fn value(&self) -> &[u8] {
        &self.buf.bytes()[self.klen..]
    }

    #[inline]
    pub(super) fn bucket(&self) -> u8 {
        (self.key_crc as usize % SYNC_BUCKETS) as u8
    }

    /// crc32(key ‖ value ‖ version bytes), continuing the pass over key ‖ value.
    #[inline]
    pub(super) fn entry_crc(&self, version: &Version) -> u32 {
        crc::finish(crc::update(self.kv_crc, &version.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::version::NodeId;

    #[test]
    fn to_vec_writes_what_rmp_serde_writes_in_a_vector_of_its_size() {
        fn check<T: Serialize + 'static>(v: T) {
            let b = to_vec(&v).unwrap();
            assert_eq!(b, rmp_serde::to_vec(&v).unwrap());
            assert_eq!(b.capacity(), b.len());
        }
        check("K000-12345".to_string());
        check(7u64);
        check(-3i32);
        check("x".repeat(300));
        check((1u8, "a".to_string(), vec![1u16, 2, 3]));
    }

    fn same_bytes_as_rmp_serde<T: Serialize + Copy + 'static>(values: &[T]) {
        for v in values {
            let enc = Encoded::new(v, v).unwrap();
            let b = rmp_serde::to_vec(v).unwrap();
            assert_eq!((enc.key(), enc.value()), (&b[..], &b[..]));
        }
    }

    #[test]
    fn the_typed_integer_paths_write_the_bytes_of_rmp_serde() {
        let u = [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        same_bytes_as_rmp_serde(&u);
        same_bytes_as_rmp_serde(&u.map(|v| v as u32));
        let i = [
            0i64,
            1,
            127,
            128,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            i32::MIN as i64,
            i32::MIN as i64 - 1,
            i64::MIN,
            i64::MAX,
        ];
        same_bytes_as_rmp_serde(&i);
        same_bytes_as_rmp_serde(&i.map(|v| v as i32));
    }

    #[test]
    fn short_and_long_writes_give_the_protocol_crcs() {
        let v = Version::new(123_456_789, NodeId(42));
        for len in [0usize, 1, 10, 50, 63, 64, 65, 200, 5_000] {
            let value = "x".repeat(len);
            let enc = Encoded::new(&7u64, &value).unwrap();
            let kb = rmp_serde::to_vec(&7u64).unwrap();
            let vb = rmp_serde::to_vec(&value).unwrap();
            assert_eq!((enc.key(), enc.value()), (&kb[..], &vb[..]));
            assert_eq!(enc.size() as usize, kb.len() + vb.len());
            assert_eq!(enc.bucket(), bucket_of(&kb));
            let mut all = [kb.clone(), vb.clone()].concat();
            all.extend_from_slice(&v.to_bytes());
            assert_eq!(enc.entry_crc(&v), crc32fast::hash(&all), "len {len}");
            let parts = Encoded::from_parts(&kb, &vb);
            assert_eq!((parts.key(), parts.value()), (&kb[..], &vb[..]));
            assert_eq!(parts.entry_crc(&v), enc.entry_crc(&v));
        }
        // A long write leaves its buffer to the thread's next one.
        assert!(
            ENCODE_BUF.with(|c| {
                let b = c.take();
                let cap = b.capacity();
                c.set(b);
                cap
            }) >= 5_000
        );
    }
}
