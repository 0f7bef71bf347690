//! The byte buffers of changes already packed into data messages, kept for the application
//! to reuse.
//!
//! A local change carries its key and value in two [`InlineBytes`](crate::record::InlineBytes);
//! those longer than the inline room are on the heap, allocated by the writing thread and,
//! without this, freed by the network thread once the change is encoded: allocator traffic
//! between two threads that costs the writer about a third of an insert under load (glibc's
//! per-thread caches never see the memory come back). The core keeps the emptied heap buffers
//! here instead, bounded in count and bytes, and [`Endpoint::take_spent_buffers`] hands them
//! to whoever builds the next changes. Inline bytes have no buffer to keep.

use super::Endpoint;
use crate::message::Item;
use crate::record::{InlineBytes, Op};

/// At most this many buffers are kept.
const MAX_BUFFERS: usize = 16_384;
/// At most this many bytes of buffer capacity are kept.
const MAX_BYTES: usize = 8 << 20;
/// A buffer larger than this is freed, not kept (a rare large value should not pin memory, and
/// allocating it costs little beside copying it).
const MAX_BUFFER: usize = 16 << 10;

#[derive(Debug, Default)]
pub(super) struct Spent {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spent {
    /// Keeps the key and value buffers of `items`, which have been encoded, while the bounds
    /// allow; the rest is dropped.
    pub(super) fn keep(&mut self, items: Vec<Item>) {
        for item in items {
            if let Item::Rec { rec, .. } = item {
                self.keep_one(rec.key);
                if let Op::Put { value, .. } = rec.op {
                    self.keep_one(value);
                }
            }
        }
    }

    fn keep_one(&mut self, bytes: InlineBytes) {
        if !bytes.spilled() {
            return;
        }
        let mut buf = bytes.into_vec();
        let cap = buf.capacity();
        if cap == 0
            || cap > MAX_BUFFER
            || self.bufs.len() >= MAX_BUFFERS
            || self.bytes + cap > MAX_BYTES
        {
            return;
        }
        buf.clear();
        self.bytes += cap;
        self.bufs.push(buf);
    }
}

impl Endpoint {
    /// Moves the emptied key and value buffers of changes sent so far into `out` (appended),
    /// for building the next changes without allocating. At most 16,384 buffers and 8 MiB are
    /// kept between calls, none above 16 KiB; a core whose buffers nobody takes simply stops
    /// keeping more.
    pub fn take_spent_buffers(&mut self, out: &mut Vec<Vec<u8>>) {
        out.append(&mut self.spent.bufs);
        self.spent.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use crate::version::{NodeId, Version};
    use std::sync::Arc;

    fn put(key: &[u8], value: Vec<u8>) -> Item {
        Item::Rec {
            cache: Arc::from("c"),
            rec: Record {
                key: key.to_vec().into(),
                version: Version::new(1, NodeId(1)),
                op: Op::Put {
                    value: value.into(),
                    ttl_ms: None,
                },
            },
        }
    }

    #[test]
    fn keeps_emptied_heap_buffers_within_bounds() {
        let long = [7u8; 40];
        let mut s = Spent::default();
        s.keep(vec![
            put(&long, long.to_vec()),
            put(b"k", b"value".to_vec()),
            put(b"", Vec::new()),
        ]);
        // The two heap buffers of the first change; the others' bytes were inline.
        assert_eq!(s.bufs.len(), 2);
        assert!(s.bufs.iter().all(|b| b.is_empty() && b.capacity() >= 40));
        s.keep(vec![put(&long, vec![0; MAX_BUFFER + 1])]);
        assert_eq!(s.bufs.len(), 3, "the oversized value buffer is dropped");
        let many: Vec<Item> = (0..MAX_BUFFERS).map(|_| put(&long, Vec::new())).collect();
        s.keep(many);
        assert_eq!(s.bufs.len(), MAX_BUFFERS, "the count bound holds");
        assert!(s.bytes <= MAX_BYTES);
        let mut s = Spent::default();
        let big: Vec<Item> = (0..MAX_BUFFERS)
            .map(|_| put(b"k", vec![0; MAX_BUFFER]))
            .collect();
        s.keep(big);
        assert_eq!(s.bufs.len(), MAX_BYTES / MAX_BUFFER, "the byte bound holds");
    }
}
