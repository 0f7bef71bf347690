//! Byte buffers passed back from the network thread to the writing threads.
//!
//! Every replicated local write copies its key and value into the record that travels to the
//! driver in its [`Item`](crate::proto::message::Item): inside the record when they fit
//! ([`INLINE_BYTES`]), else into heap buffers. Allocated on the writer and freed
//! on the network thread, they cost the writer more than the rest of its share of the
//! replication put together (`perf`: glibc's `_int_malloc` was 29 % of a flat-out writer's
//! time, its per-thread cache never getting the memory back). So the core keeps the buffers of
//! encoded changes ([`Endpoint::take_spent_buffers`](crate::proto::endpoint::Endpoint)), the
//! driver returns them here after each pass, and writers take them back in batches into a
//! small per-thread stash: a write copies its bytes into a used buffer and takes no lock for
//! it, one lock in [`REFILL`] writes.

use std::cell::RefCell;

use parking_lot::Mutex;

use crate::proto::record::{INLINE_BYTES, InlineBytes};

/// Buffers a writer takes from the pool at a time.
const REFILL: usize = 64;
/// The most buffers the pool keeps (more are freed).
const MAX_POOLED: usize = 32_768;
/// The most bytes of buffer capacity the pool keeps (more are freed). With the core's bound of
/// 16 KiB per buffer, a writer's stash holds at most 1 MiB.
const MAX_POOLED_BYTES: usize = 8 << 20;

/// Emptied buffers waiting for writers.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    bufs: Vec<Vec<u8>>,
    /// The summed capacity of `bufs`.
    bytes: usize,
}

thread_local! {
    /// This thread's buffers, taken from a pool (any node's: a buffer is just memory).
    static STASH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl BufferPool {
    /// Takes the buffers in `bufs` (left empty), as many as the pool keeps.
    pub(crate) fn give(&self, bufs: &mut Vec<Vec<u8>>) {
        if bufs.is_empty() {
            return;
        }
        let mut free = self.free.lock();
        for buf in bufs.drain(..) {
            let cap = buf.capacity();
            if free.bufs.len() >= MAX_POOLED || free.bytes + cap > MAX_POOLED_BYTES {
                break;
            }
            free.bytes += cap;
            free.bufs.push(buf);
        }
    }

    /// A copy of `bytes` as a record's key or value: inline if it fits
    /// ([`INLINE_BYTES`]: no buffer at all), else in a used buffer from this thread's stash
    /// (refilled from the pool when empty), or a new allocation if the pool has none.
    #[inline]
    pub(crate) fn copy_of(&self, bytes: &[u8]) -> InlineBytes {
        if bytes.len() <= INLINE_BYTES {
            InlineBytes::from_slice(bytes)
        } else {
            self.copy_to_buffer(bytes)
        }
    }

    #[cold]
    fn copy_to_buffer(&self, bytes: &[u8]) -> InlineBytes {
        let reused = STASH.with_borrow_mut(|stash| {
            if stash.is_empty() {
                let mut free = self.free.lock();
                let at = free.bufs.len().saturating_sub(REFILL);
                let taken: usize = free.bufs[at..].iter().map(Vec::capacity).sum();
                free.bytes -= taken;
                stash.extend(free.bufs.drain(at..));
            }
            stash.pop()
        });
        match reused {
            Some(mut buf) => {
                buf.clear();
                buf.extend_from_slice(bytes);
                // Longer than the inline room: stays in `buf`'s allocation.
                InlineBytes::from_vec(buf)
            }
            None => InlineBytes::from_slice(bytes),
        }
    }

    /// Buffers waiting in the pool.
    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.free.lock().bufs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_exactly_the_bytes_at_every_length() {
        let pool = BufferPool::default();
        let data: Vec<u8> = (1..=40u8).collect();
        for n in 0..=data.len() {
            let c = pool.copy_of(&data[..n]);
            assert_eq!(&c[..], &data[..n], "length {n}");
            assert_eq!(c.spilled(), n > INLINE_BYTES);
        }
    }

    #[test]
    fn a_given_buffer_is_reused_with_the_new_bytes() {
        let pool = BufferPool::default();
        // Runs on its own thread: the stash is per thread and other tests share this one.
        std::thread::scope(|s| {
            s.spawn(|| {
                let long = b"a value longer than the inline room";
                let mut spent = vec![Vec::with_capacity(100)];
                let ptr = spent[0].as_ptr();
                pool.give(&mut spent);
                assert!(spent.is_empty());
                let buf = pool.copy_of(long);
                assert_eq!(&buf[..], long);
                assert!(buf.spilled());
                assert_eq!(buf.as_ptr(), ptr, "the pooled allocation is reused");
                assert_eq!(pool.pooled(), 0);
                // Nothing pooled or stashed: a fresh copy.
                assert_eq!(&pool.copy_of(&long[1..])[..], &long[1..]);
                // Short bytes take no buffer: they live in the record.
                let mut spent = vec![Vec::with_capacity(100)];
                pool.give(&mut spent);
                let short = pool.copy_of(b"hello");
                assert_eq!(&short[..], b"hello");
                assert!(!short.spilled());
                assert_eq!(
                    pool.pooled(),
                    1,
                    "the pooled buffer is left for a long value"
                );
            });
        });
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = BufferPool::default();
        let mut many: Vec<Vec<u8>> = (0..MAX_POOLED + 10)
            .map(|_| Vec::with_capacity(1))
            .collect();
        pool.give(&mut many);
        assert_eq!(pool.pooled(), MAX_POOLED);
        let mut more = vec![Vec::with_capacity(1)];
        pool.give(&mut more);
        assert_eq!(pool.pooled(), MAX_POOLED);
        assert!(more.is_empty(), "what does not fit is freed");

        let pool = BufferPool::default();
        let mut big: Vec<Vec<u8>> = (0..1000).map(|_| Vec::with_capacity(16 << 10)).collect();
        pool.give(&mut big);
        assert_eq!(
            pool.pooled(),
            MAX_POOLED_BYTES / (16 << 10),
            "the byte bound holds"
        );
    }
}
