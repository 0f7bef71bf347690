//! The serialized form of a write: key ‖ value in one buffer, with the crcs the store derives
//! from it (entry checksum, sync bucket).
//!
//! The buffer is inline (on the writer's stack) up to [`INLINE`] bytes, which covers small keys
//! and values with no allocation and no thread-local access; a longer key ‖ value moves to a
//! heap buffer borrowed from a thread-local (returned on drop, so a thread's long writes do
//! not allocate once it has grown).

use std::cell::Cell;

use serde::Serialize;

use super::crc;
use super::fastser::{Fast, Sink};
use crate::cache::hooks::SYNC_BUCKETS;
use crate::error::{Error, Result};
use crate::proto::version::Version;

/// The sync bucket of a serialized key.
pub(super) fn bucket_of(key_bytes: &[u8]) -> u8 {
    crate::cache::hooks::key_bucket(key_bytes) as u8
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
    #[inline(always)]
    fn serialize<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
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
    // Inlined into the write path: returned by value, the ~100-byte `Encoded` was copied
    // into the caller's frame.
    #[inline(always)]
    pub(super) fn new<K: Serialize, V: Serialize>(key: &K, value: &V) -> Result<Encoded> {
        // Built in place (the buffer is not moved between serializing and returning).
        let mut enc = Encoded {
            buf: Buf::new(),
            klen: 0,
            key_crc: 0,
            kv_crc: 0,
        };
        enc.buf.serialize(key)?;
        enc.klen = enc.buf.len;
        enc.buf.serialize(value)?;
        enc.crcs();
        Ok(enc)
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
    #[inline]
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
