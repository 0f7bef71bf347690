//! The serialized form of a write: key ‖ value in one thread-local buffer, with the crcs the
//! store derives from it (entry checksum, sync bucket).

use std::cell::Cell;
use std::sync::OnceLock;

use serde::Serialize;

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

/// A fresh crc32 hasher, cloned from one made once: `Hasher::new` detects the CPU's features
/// every time, which costs more than hashing a small key.
fn crc_hasher() -> crc32fast::Hasher {
    static PROTO: OnceLock<crc32fast::Hasher> = OnceLock::new();
    PROTO.get_or_init(crc32fast::Hasher::new).clone()
}

/// Serialized key ‖ value in one buffer borrowed from a thread-local (returned on drop), plus
/// the crcs the store needs, computed in one pass over key ‖ value.
pub(super) struct Encoded {
    buf: Vec<u8>,
    klen: usize,
    key_crc: u32,
    /// crc32 state after key ‖ value (the entry crc continues it with the version).
    kv_crc: crc32fast::Hasher,
}

impl Encoded {
    pub(super) fn new<K: Serialize, V: Serialize>(key: &K, value: &V) -> Result<Encoded> {
        let mut buf = ENCODE_BUF.with(|c| c.take());
        buf.clear();
        rmp_serde::encode::write(&mut buf, key).map_err(ser_err)?;
        let klen = buf.len();
        rmp_serde::encode::write(&mut buf, value).map_err(ser_err)?;
        Ok(Encoded::from_buf(buf, klen))
    }

    /// Key and value bytes already serialized (a peer's record), copied into the thread's
    /// buffer like [`Encoded::new`] writes into it (no allocation once the buffer has grown).
    pub(super) fn from_parts(key: &[u8], value: &[u8]) -> Encoded {
        let mut buf = ENCODE_BUF.with(|c| c.take());
        buf.clear();
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Encoded::from_buf(buf, key.len())
    }

    fn from_buf(buf: Vec<u8>, klen: usize) -> Encoded {
        let mut kv_crc = crc_hasher();
        kv_crc.update(&buf[..klen]);
        let key_crc = kv_crc.clone().finalize();
        kv_crc.update(&buf[klen..]);
        Encoded {
            buf,
            klen,
            key_crc,
            kv_crc,
        }
    }

    pub(super) fn size(&self) -> u64 {
        self.buf.len() as u64
    }

    pub(super) fn key(&self) -> &[u8] {
        &self.buf[..self.klen]
    }

    pub(super) fn value(&self) -> &[u8] {
        &self.buf[self.klen..]
    }

    pub(super) fn bucket(&self) -> u8 {
        (self.key_crc as usize % SYNC_BUCKETS) as u8
    }

    /// crc32(key ‖ value ‖ version bytes), continuing the pass over key ‖ value.
    pub(super) fn entry_crc(&self, version: &Version) -> u32 {
        let mut h = self.kv_crc.clone();
        h.update(&version.to_bytes());
        h.finalize()
    }
}

impl Drop for Encoded {
    fn drop(&mut self) {
        // Keep small buffers for the next write on this thread.
        if self.buf.capacity() <= 64 * 1024 {
            let buf = std::mem::take(&mut self.buf);
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
}
