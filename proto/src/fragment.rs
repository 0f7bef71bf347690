//! Splitting messages into MTU-sized fragments and reassembling them, with hard memory bounds.
//!
//! A message of `len` bytes travels as `max(1, ceil(len / chunk))` fragments: every fragment but
//! the last carries exactly `chunk` bytes, the last carries the rest (1..=chunk bytes). An empty
//! message is one empty fragment. There is never an empty trailing fragment (McCache's bug B5).
//!
//! The receiver learns a sender's chunk size from its non-last fragments, so peers with
//! different MTUs interoperate. Hostile or broken input (inconsistent counts, sizes, duplicate
//! fragments, absurd claimed sizes, floods of partial messages from spoofed senders) is refused
//! or evicted without panics and without unbounded memory: see [`Reassembler`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::crypto::{CRC_LEN, TAG_LEN};
use super::drop::DropReason;
use super::header::HEADER_LEN;
use super::version::NodeId;

/// Default bound on messages from one sender being reassembled at once.
pub const DEFAULT_MAX_PER_SENDER: usize = 32;

/// Payload bytes one datagram of at most `mtu` bytes can carry: `mtu - 48 - (16 | 4)`
/// (tag when encrypted, crc otherwise). Zero if the MTU cannot hold a header.
///
/// ```
/// use mccache_proto::fragment::max_payload_per_datagram;
/// assert_eq!(max_payload_per_datagram(1472, true), 1408);
/// assert_eq!(max_payload_per_datagram(1472, false), 1420);
/// assert_eq!(max_payload_per_datagram(50, true), 0);
/// ```
pub fn max_payload_per_datagram(mtu: usize, encrypted: bool) -> usize {
    let trailer = if encrypted { TAG_LEN } else { CRC_LEN };
    mtu.saturating_sub(HEADER_LEN + trailer)
}

/// Fragments needed for a message of `len` bytes in chunks of `chunk` bytes:
/// `max(1, ceil(len / chunk))`. `None` if it does not fit the 16-bit fragment count, or if
/// `chunk` is 0 and the message is not empty.
///
/// ```
/// use mccache_proto::fragment::fragment_count;
/// assert_eq!(fragment_count(0, 100), Some(1));
/// assert_eq!(fragment_count(100, 100), Some(1)); // no empty trailing fragment
/// assert_eq!(fragment_count(101, 100), Some(2));
/// assert_eq!(fragment_count(65_536, 1), None);
/// ```
pub fn fragment_count(len: usize, chunk: usize) -> Option<u16> {
    if len == 0 {
        return Some(1);
    }
    if chunk == 0 {
        return None;
    }
    u16::try_from(len.div_ceil(chunk)).ok()
}

/// The fragments of `payload`, in order: exactly [`fragment_count`] slices (one empty slice for
/// an empty payload). `chunk` must be non-zero unless the payload is empty.
pub fn split(payload: &[u8], chunk: usize) -> impl Iterator<Item = &[u8]> {
    // `chunks` yields nothing for an empty slice; an empty message is still one fragment.
    let lone_empty = payload.is_empty().then_some(payload);
    lone_empty.into_iter().chain(payload.chunks(chunk.max(1)))
}

/// Bounds of a [`Reassembler`].
#[derive(Clone, Debug)]
pub struct ReassemblyLimits {
    /// Largest message accepted, in payload bytes.
    pub max_message_size: usize,
    /// Most bytes held in partial messages at once (fragment bodies plus bookkeeping). Raised to
    /// at least `max_message_size` plus bookkeeping, so one largest message always fits.
    pub max_bytes: usize,
    /// A partial message that receives no fragment for this long is dropped.
    pub timeout: Duration,
    /// Most partial messages per sender; the sender's oldest is evicted beyond it.
    pub max_per_sender: usize,
}

/// One sender's live assembly count and its `(message id, creation number)` queue.
type SenderQueue = (usize, VecDeque<(u64, u64)>);

/// Collects the fragments of multi-fragment messages until they are complete.
///
/// Bounds: [`ReassemblyLimits`]. When a bound is hit, the oldest assembly is evicted (counted in
/// [`Reassembler::evicted`]) so new traffic keeps flowing. Memory is accounted as the bytes the
/// fragments actually occupy plus per-assembly and per-fragment bookkeeping.
///
/// ```
/// use std::time::{Duration, Instant};
/// use mccache_proto::fragment::{Reassembler, ReassemblyLimits};
/// use mccache_proto::version::NodeId;
///
/// let mut r = Reassembler::new(ReassemblyLimits { max_message_size: 1000, max_bytes: 10_000,
///     timeout: Duration::from_secs(2), max_per_sender: 32 });
/// let now = Instant::now();
/// assert_eq!(r.insert(now, NodeId(1), 9, 1, 2, b"lo".to_vec()), Ok(None));
/// assert_eq!(r.in_progress(), 1);
/// assert_eq!(r.insert(now, NodeId(1), 9, 0, 2, b"hel".to_vec()), Ok(Some(b"hello".to_vec())));
/// assert_eq!((r.in_progress(), r.bytes_held()), (0, 0));
/// ```
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    table: HashMap<(NodeId, u64), Assembly, foldhash::fast::RandomState>,
    /// Assemblies in creation order (oldest first) with their creation number; entries whose
    /// assembly is gone (or was re-created) are skipped lazily, and the queue is compacted when
    /// they pile up, so every operation is amortized O(1).
    order: VecDeque<((NodeId, u64), u64)>,
    /// Per sender: its assemblies, oldest first, same lazy scheme.
    per_sender: HashMap<NodeId, SenderQueue, foldhash::fast::RandomState>,
    /// Creation counter.
    born: u64,
    bytes_held: usize,
    next_sweep: Option<Instant>,
    expired: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Assembly {
    count: u16,
    received: u16,
    /// Size of the non-last fragments, once one has arrived.
    chunk: Option<usize>,
    /// Size of the last fragment, once it has arrived.
    last_len: Option<usize>,
    /// Bit per fragment index: received.
    seen: Vec<u64>,
    frags: Vec<(u16, Vec<u8>)>,
    payload_bytes: usize,
    frag_bytes: usize,
    last_activity: Instant,
    /// Creation number (matches its entries in the order queues).
    born: u64,
}

/// Bookkeeping charged per assembly on top of its vectors.
const ASSEMBLY_OVERHEAD: usize = std::mem::size_of::<Assembly>() + 64;

impl Assembly {
    fn held(&self) -> usize {
        ASSEMBLY_OVERHEAD
            + self.seen.capacity() * 8
            + self.frags.capacity() * std::mem::size_of::<(u16, Vec<u8>)>()
            + self.frag_bytes
    }

    fn has(&self, index: u16) -> bool {
        self.seen[usize::from(index / 64)] & (1u64 << (index % 64)) != 0
    }

    fn mark(&mut self, index: u16) {
        self.seen[usize::from(index / 64)] |= 1u64 << (index % 64);
    }

    fn into_payload(mut self) -> Vec<u8> {
        self.frags.sort_unstable_by_key(|(i, _)| *i);
        let mut out = Vec::with_capacity(self.payload_bytes);
        for (_, f) in &self.frags {
            out.extend_from_slice(f);
        }
        out
    }
}

impl Reassembler {
    /// An empty reassembler with these bounds.
    pub fn new(mut limits: ReassemblyLimits) -> Reassembler {
        // One largest message (at the smallest sane chunk of 64 bytes) must fit.
        let largest = limits.max_message_size
            + ASSEMBLY_OVERHEAD
            + 8 * 1024
            + (limits.max_message_size / 64 + 1) * std::mem::size_of::<(u16, Vec<u8>)>() * 2;
        limits.max_bytes = limits.max_bytes.max(largest);
        limits.max_per_sender = limits.max_per_sender.max(1);
        Reassembler {
            limits,
            table: HashMap::default(),
            order: VecDeque::new(),
            per_sender: HashMap::default(),
            born: 0,
            bytes_held: 0,
            next_sweep: None,
            expired: 0,
            evicted: 0,
        }
    }

    /// The effective limits (after the adjustments described on [`ReassemblyLimits`]).
    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// Adds fragment `index` of `count` of message `message_id` from `sender`.
    ///
    /// Returns `Ok(Some(payload))` when this completes the message, `Ok(None)` when the
    /// fragment is stored, `Err(reason)` when it is dropped. Single-fragment messages are
    /// returned at once without touching the table. `now` drives the timeout; stale assemblies
    /// are also swept from here every half timeout.
    pub fn insert(
        &mut self,
        now: Instant,
        sender: NodeId,
        message_id: u64,
        index: u16,
        count: u16,
        body: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, DropReason> {
        let len = body.len();
        if count == 0 || index >= count {
            return Err(DropReason::Malformed);
        }
        if len > self.limits.max_message_size {
            return Err(DropReason::Oversize);
        }
        if count == 1 {
            return Ok(Some(body));
        }
        if len == 0 {
            // Only a single-fragment message may be empty.
            return Err(DropReason::Malformed);
        }
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.expire(now);
        }
        let max = self.limits.max_message_size;
        let is_last = index == count - 1;
        let key = (sender, message_id);
        match self.table.get_mut(&key) {
            Some(a) => {
                if a.count != count {
                    return Err(DropReason::Malformed);
                }
                if a.has(index) {
                    // Still a sign the message is being sent (a sender resending it a few
                    // fragments at a time): the assembly stays.
                    a.last_activity = now;
                    return Err(DropReason::Duplicate);
                }
                if is_last {
                    if a.chunk.is_some_and(|c| len > c) {
                        return Err(DropReason::Malformed);
                    }
                } else {
                    match a.chunk {
                        Some(c) if c != len => return Err(DropReason::Malformed),
                        Some(_) => {}
                        None => {
                            if a.last_len.is_some_and(|l| l > len) {
                                return Err(DropReason::Malformed);
                            }
                            let claimed = (usize::from(count) - 1)
                                .saturating_mul(len)
                                .saturating_add(a.last_len.unwrap_or(1));
                            if claimed > max {
                                self.remove(&key);
                                return Err(DropReason::Oversize);
                            }
                        }
                    }
                }
                if a.payload_bytes + len > max {
                    self.remove(&key);
                    return Err(DropReason::Oversize);
                }
            }
            None => {
                // The smallest message consistent with this fragment must fit.
                let claimed = if is_last {
                    usize::from(count).saturating_mul(len)
                } else {
                    (usize::from(count) - 1)
                        .saturating_mul(len)
                        .saturating_add(1)
                };
                if claimed > max {
                    return Err(DropReason::Oversize);
                }
                if self.per_sender.get(&sender).map_or(0, |(n, _)| *n) >= self.limits.max_per_sender
                    && let Some(oldest) = self.oldest_of(sender)
                {
                    self.remove(&oldest);
                    self.evicted += 1;
                }
                let a = Assembly {
                    count,
                    received: 0,
                    chunk: None,
                    last_len: None,
                    seen: vec![0; usize::from(count).div_ceil(64)],
                    frags: Vec::new(),
                    payload_bytes: 0,
                    frag_bytes: 0,
                    last_activity: now,
                    born: self.born,
                };
                self.bytes_held += a.held();
                let mine = self.per_sender.entry(sender).or_default();
                mine.0 += 1;
                mine.1.push_back((message_id, self.born));
                self.order.push_back((key, self.born));
                self.born += 1;
                self.table.insert(key, a);
                self.compact();
            }
        }

        let Some(a) = self.table.get_mut(&key) else {
            return Err(DropReason::ReassemblyLimit);
        };
        let before = a.held();
        if is_last {
            a.last_len = Some(len);
        } else {
            a.chunk = Some(len);
        }
        a.mark(index);
        a.received += 1;
        a.payload_bytes += len;
        a.frag_bytes += body.capacity();
        a.frags.push((index, body));
        a.last_activity = now;
        let grown = a.held() - before;
        self.bytes_held += grown;

        if a.received == a.count {
            let a = self.remove(&key).expect("present");
            return Ok(Some(a.into_payload()));
        }

        // Over the byte budget: evict the oldest other assemblies, then this one if need be.
        while self.bytes_held > self.limits.max_bytes {
            match self.oldest_other_than(key) {
                Some(victim) => {
                    self.remove(&victim);
                    self.evicted += 1;
                }
                None => {
                    self.remove(&key);
                    self.evicted += 1;
                    return Err(DropReason::ReassemblyLimit);
                }
            }
        }
        Ok(None)
    }

    /// The oldest live assembly other than `keep` (skipping and discarding stale queue entries
    /// at the front; `keep` itself stays queued).
    fn oldest_other_than(&mut self, keep: (NodeId, u64)) -> Option<(NodeId, u64)> {
        let mut kept = None;
        let found = loop {
            let (key, born) = self.order.pop_front()?;
            if self.table.get(&key).is_none_or(|a| a.born != born) {
                continue; // gone or re-created: stale entry
            }
            if key == keep {
                kept = Some((key, born));
                continue;
            }
            self.order.push_front((key, born));
            break Some(key);
        };
        if let Some(k) = kept {
            self.order.push_front(k);
        }
        found
    }

    /// The oldest live assembly of `sender`.
    fn oldest_of(&mut self, sender: NodeId) -> Option<(NodeId, u64)> {
        let (_, queue) = self.per_sender.get_mut(&sender)?;
        while let Some(&(mid, born)) = queue.front() {
            if self
                .table
                .get(&(sender, mid))
                .is_some_and(|a| a.born == born)
            {
                return Some((sender, mid));
            }
            queue.pop_front();
        }
        None
    }

    /// Drops stale queue entries once they outnumber live ones (amortized O(1)).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.table.len() + 64 {
            let table = &self.table;
            self.order
                .retain(|(k, born)| table.get(k).is_some_and(|a| a.born == *born));
        }
    }

    /// Drops assemblies that received nothing for the timeout. Returns how many. One pass over
    /// the table (run every half timeout), so amortized O(1) per assembly.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.timeout;
        let idle: Vec<(NodeId, u64)> = self
            .table
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.last_activity) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in &idle {
            self.remove(k);
        }
        self.expired += idle.len() as u64;
        self.next_sweep = Some(now + timeout / 2);
        self.compact();
        idle.len()
    }

    /// Drops every assembly of `sender`.
    pub fn forget_sender(&mut self, sender: NodeId) {
        let Some((_, queue)) = self.per_sender.remove(&sender) else {
            return;
        };
        for (mid, born) in queue {
            if self
                .table
                .get(&(sender, mid))
                .is_some_and(|a| a.born == born)
                && let Some(a) = self.table.remove(&(sender, mid))
            {
                self.bytes_held -= a.held();
            }
        }
        self.compact();
    }

    /// Messages being reassembled.
    pub fn in_progress(&self) -> usize {
        self.table.len()
    }

    /// Bytes held by partial messages, bookkeeping included.
    pub fn bytes_held(&self) -> usize {
        self.bytes_held
    }

    /// Assemblies dropped by [`Reassembler::expire`] so far ([`DropReason::Expired`]).
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Assemblies evicted to respect a bound so far ([`DropReason::ReassemblyLimit`]).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn remove(&mut self, key: &(NodeId, u64)) -> Option<Assembly> {
        let a = self.table.remove(key)?;
        self.bytes_held -= a.held();
        if let Some((n, queue)) = self.per_sender.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_sender.remove(&key.0);
            } else if queue.len() > 2 * *n + 64 {
                let table = &self.table;
                let sender = key.0;
                queue.retain(|(mid, born)| {
                    table.get(&(sender, *mid)).is_some_and(|a| a.born == *born)
                });
            }
        }
        Some(a)
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits {
            max_message_size: 10_000,
            max_bytes: 0, // raised to the minimum
            timeout: Duration::from_secs(2),
            max_per_sender: 4,
        }
    }

    #[test]
    fn split_never_makes_an_empty_trailing_fragment() {
        for len in 0..=50 {
            let payload: Vec<u8> = (0..len as u8).collect();
            for chunk in 1..=12 {
                let parts: Vec<&[u8]> = split(&payload, chunk).collect();
                assert_eq!(
                    parts.len(),
                    usize::from(fragment_count(len, chunk).unwrap())
                );
                assert_eq!(parts.concat(), payload);
                if len > 0 {
                    assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= chunk));
                }
            }
        }
    }

    #[test]
    fn inconsistent_fragments_are_refused() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        let s = NodeId(1);
        assert_eq!(r.insert(now, s, 1, 0, 3, vec![1; 10]), Ok(None));
        assert_eq!(
            r.insert(now, s, 1, 0, 3, vec![1; 10]),
            Err(DropReason::Duplicate)
        );
        assert_eq!(
            r.insert(now, s, 1, 1, 4, vec![1; 10]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            r.insert(now, s, 1, 1, 3, vec![1; 9]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            r.insert(now, s, 1, 2, 3, vec![1; 11]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            r.insert(now, s, 1, 2, 3, vec![]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            r.insert(now, s, 1, 3, 3, vec![1]),
            Err(DropReason::Malformed)
        );
        assert_eq!(r.insert(now, s, 1, 2, 3, vec![2; 5]), Ok(None));
        let done = r.insert(now, s, 1, 1, 3, vec![3; 10]).unwrap().unwrap();
        assert_eq!(done.len(), 25);
        assert_eq!(&done[10..20], &[3; 10]);
        assert_eq!((r.in_progress(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn claimed_sizes_beyond_the_limit_are_oversize() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        // 1001 × 10 > 10_000 + chunk.
        assert_eq!(
            r.insert(now, NodeId(1), 1, 0, 1002, vec![0; 10]),
            Err(DropReason::Oversize)
        );
        assert_eq!(
            r.insert(now, NodeId(1), 1, 1001, 1002, vec![0; 10]),
            Err(DropReason::Oversize)
        );
        // The largest legal message: 1000 full fragments of 10 bytes.
        assert_eq!(
            r.insert(now, NodeId(1), 2, 999, 1000, vec![0; 10]),
            Ok(None)
        );
        // Many tiny fragments: legal as long as the smallest consistent message fits.
        assert_eq!(r.insert(now, NodeId(1), 3, 0, 5000, vec![0; 1]), Ok(None));
        assert_eq!(r.insert(now, NodeId(1), 3, 1, 5000, vec![0; 1]), Ok(None));
        assert_eq!(
            r.insert(now, NodeId(1), 4, 0, u16::MAX, vec![0; 1]),
            Err(DropReason::Oversize)
        );
        assert_eq!(r.in_progress(), 2);
        assert!(r.bytes_held() <= r.limits().max_bytes);
    }

    #[test]
    fn per_sender_limit_evicts_that_senders_oldest() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        r.insert(now, NodeId(9), 100, 0, 2, vec![1]).unwrap();
        for m in 0..6 {
            r.insert(now, NodeId(1), m, 0, 2, vec![1]).unwrap();
        }
        assert_eq!(r.in_progress(), 5);
        assert_eq!(r.evicted(), 2);
        // Messages 0 and 1 of sender 1 are gone; sender 9 is untouched.
        assert_eq!(r.insert(now, NodeId(1), 0, 1, 2, vec![2]), Ok(None));
        assert_eq!(
            r.insert(now, NodeId(9), 100, 1, 2, vec![2]),
            Ok(Some(vec![1, 2]))
        );
    }

    #[test]
    fn expire_drops_only_stale_assemblies() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(limits());
        r.insert(t0, NodeId(1), 1, 0, 2, vec![1]).unwrap();
        r.insert(
            t0 + Duration::from_millis(1500),
            NodeId(2),
            1,
            0,
            2,
            vec![1],
        )
        .unwrap();
        assert_eq!(r.expire(t0 + Duration::from_millis(2100)), 1);
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.expired(), 1);
        assert_eq!(r.expire(t0 + Duration::from_millis(3600)), 1);
        assert_eq!((r.in_progress(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn a_duplicate_fragment_keeps_its_assembly_alive() {
        // A sender going round a message a few fragments at a time: mostly duplicates.
        let t0 = Instant::now();
        let mut r = Reassembler::new(limits());
        r.insert(t0, NodeId(1), 1, 0, 3, vec![1]).unwrap();
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(
            r.insert(t1, NodeId(1), 1, 0, 3, vec![1]),
            Err(DropReason::Duplicate)
        );
        assert_eq!(r.expire(t0 + Duration::from_millis(2500)), 0);
        r.insert(
            t1 + Duration::from_millis(1900),
            NodeId(1),
            1,
            1,
            3,
            vec![2],
        )
        .unwrap();
        let done = r.insert(
            t1 + Duration::from_millis(1950),
            NodeId(1),
            1,
            2,
            3,
            vec![3],
        );
        assert_eq!(done, Ok(Some(vec![1, 2, 3])));
    }

    #[test]
    fn byte_budget_evicts_oldest_first() {
        let now = Instant::now();
        let mut r = Reassembler::new(limits());
        let cap = r.limits().max_bytes;
        let mut sender = 1u64;
        while r.evicted() == 0 {
            r.insert(now, NodeId(sender), 1, 0, 2, vec![0; 4000])
                .unwrap();
            assert!(r.bytes_held() <= cap);
            sender += 1;
        }
        let newest = NodeId(sender - 1);
        // The first sender's assembly was evicted: its second fragment starts a new one.
        assert_eq!(r.insert(now, NodeId(1), 1, 1, 2, vec![0; 4000]), Ok(None));
        assert!(r.bytes_held() <= cap);
        // The newest one survived and completes.
        assert_eq!(
            r.insert(now, newest, 1, 1, 2, vec![7; 10])
                .unwrap()
                .unwrap()
                .len(),
            4010
        );
        r.forget_sender(NodeId(1));
        assert!(r.table.keys().all(|(s, _)| *s != NodeId(1)));
    }
}
