//! Loss repair for each sender's reliable stream, NAKACK-style (as JGroups NAKACK2 does it):
//! the sender numbers its data messages and keeps them in a bounded retransmit buffer until every
//! live peer has acknowledged them cumulatively; receivers detect gaps (from later messages or
//! from the sender's announced highest number) and ask for them with a NAK, backing off.
//!
//! Receivers apply data messages as soon as they arrive, in any order: every change carries a
//! version and is applied only if newer, so delivery order does not matter for the outcome, only
//! completeness does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A sequence-number range, inclusive on both ends.
pub type Range = (u64, u64);

/// The sending side: sequence numbers and the retransmit buffer.
#[derive(Debug)]
pub struct SendBuffer {
    next_seq: u64,
    held: VecDeque<(u64, u64, Arc<[u8]>)>,
    bytes: usize,
    max_bytes: usize,
    /// Messages dropped from the buffer before every peer acknowledged them (only when the byte
    /// cap is hit); NAKs for them are answered with `Gone`.
    pub evicted_unacked: u64,
}

impl SendBuffer {
    /// An empty buffer holding at most `max_bytes` of message payloads.
    pub fn new(max_bytes: usize) -> SendBuffer {
        SendBuffer {
            next_seq: 1,
            held: VecDeque::new(),
            bytes: 0,
            max_bytes,
            evicted_unacked: 0,
        }
    }

    /// The highest sequence number assigned so far (0 if none).
    pub fn seq_hi(&self) -> u64 {
        self.next_seq - 1
    }

    /// Assigns the next sequence number to a message. Returns it.
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Keeps message `seq` (sent as wire message `message_id`) for retransmission. The payload
    /// is shared with the send queue, not copied.
    pub fn keep(&mut self, seq: u64, message_id: u64, payload: Arc<[u8]>) {
        {
            self.bytes += payload.len();
            self.held.push_back((seq, message_id, payload));
            while self.bytes > self.max_bytes {
                match self.held.pop_front() {
                    Some((_, _, p)) => {
                        self.bytes -= p.len();
                        self.evicted_unacked += 1;
                    }
                    None => break,
                }
            }
        }
    }

    /// Frees every message with sequence number `<= upto` (acknowledged by all live peers).
    pub fn release(&mut self, upto: u64) {
        while let Some((seq, _, _)) = self.held.front() {
            if *seq > upto {
                break;
            }
            if let Some((_, _, p)) = self.held.pop_front() {
                self.bytes -= p.len();
            }
        }
    }

    /// Frees everything (no peer can ask for anything).
    pub fn release_all(&mut self) {
        self.held.clear();
        self.bytes = 0;
    }

    /// The wire message id and payload of message `seq`, if still held.
    pub fn get(&self, seq: u64) -> Option<(u64, &Arc<[u8]>)> {
        let first = self.held.front()?.0;
        let idx = seq.checked_sub(first)? as usize;
        self.held
            .get(idx)
            .filter(|(s, _, _)| *s == seq)
            .map(|(_, id, p)| (*id, p))
    }

    /// Messages currently held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sequence number of the oldest held message.
    pub fn oldest(&self) -> Option<u64> {
        self.held.front().map(|(s, _, _)| *s)
    }
}

/// Timing of NAKs.
#[derive(Copy, Clone, Debug)]
pub struct NakPolicy {
    /// Delay before the first NAK for a new gap (lets reordered messages arrive).
    pub first: Duration,
    /// Upper bound of the doubling backoff.
    pub max: Duration,
    /// NAKs per gap before giving up and leaving it to anti-entropy.
    pub max_tries: u32,
}

impl Default for NakPolicy {
    fn default() -> NakPolicy {
        NakPolicy {
            first: Duration::from_millis(1),
            max: Duration::from_millis(200),
            max_tries: 10,
        }
    }
}

#[derive(Copy, Clone, Debug)]
struct Gap {
    next_at: Instant,
    tries: u32,
}

/// What the receiver should do with an arriving data message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// New: apply it.
    New,
    /// Already received: drop it.
    Duplicate,
}

/// Furthest a sender may run ahead of the contiguous point before we stop tracking single
/// gaps (the missing span is then left to anti-entropy). Bounds receiver memory.
pub const MAX_AHEAD: u64 = 1 << 16;

/// The receiving side of one sender's stream.
#[derive(Debug)]
pub struct RecvStream {
    /// Every sequence number `<= base` has been received (or given up on).
    base: u64,
    /// Received numbers above `base`.
    above: BTreeMap<u64, ()>,
    /// Missing numbers above `base` with their NAK timers.
    gaps: BTreeMap<u64, Gap>,
    /// The same gaps in the order their NAKs fall due, `(next_at, seq)`: the next NAK and the
    /// NAKs due are found without a walk over every gap. (With a walk, a CPU-starved receiver
    /// holding tens of thousands of gaps from each of eight peers spent most of its time in
    /// it, on every pass of its driver: 9 processes flat out on 2 cores never agreed again.)
    schedule: BTreeSet<(Instant, u64)>,
    /// Highest number known to exist.
    seq_hi: u64,
    /// Gaps abandoned (too old, too many tries, or `Gone`); repaired by anti-entropy.
    pub abandoned: u64,
    /// Gaps ever detected.
    pub gaps_detected: u64,
}

impl RecvStream {
    /// A stream whose history up to `base` is not wanted (the receiver has, or will fetch, that
    /// state by state transfer).
    pub fn new(base: u64) -> RecvStream {
        RecvStream {
            base,
            above: BTreeMap::new(),
            gaps: BTreeMap::new(),
            schedule: BTreeSet::new(),
            seq_hi: base,
            abandoned: 0,
            gaps_detected: 0,
        }
    }

    /// The cumulative ack: highest number received with no gap below it.
    pub fn contiguous(&self) -> u64 {
        self.base
    }

    /// Highest number known to exist.
    pub fn seq_hi(&self) -> u64 {
        self.seq_hi
    }

    /// Messages known to be missing.
    pub fn missing(&self) -> u64 {
        self.gaps.len() as u64
    }

    /// Records the arrival of message `seq`.
    pub fn receive(&mut self, now: Instant, seq: u64, policy: &NakPolicy) -> Arrival {
        if seq <= self.base || self.above.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        self.remove_gap(seq);
        self.above.insert(seq, ());
        self.learn_hi(now, seq, policy);
        self.advance();
        Arrival::New
    }

    /// Learns that the sender has sent up to `seq_hi` (from a heartbeat or tail announcement).
    pub fn learn_hi(&mut self, now: Instant, seq_hi: u64, policy: &NakPolicy) {
        if seq_hi <= self.seq_hi {
            return;
        }
        if seq_hi - self.base > MAX_AHEAD {
            // Too far behind to repair message by message: give the span up to anti-entropy.
            let new_base = seq_hi.saturating_sub(MAX_AHEAD / 2);
            self.abandon_below(new_base);
        }
        let from = self.seq_hi.max(self.base) + 1;
        for s in from..seq_hi {
            if !self.above.contains_key(&s) && s > self.base {
                self.add_gap(s, now + policy.first);
                self.gaps_detected += 1;
            }
        }
        // `seq_hi` itself: if announced (not received) it is missing too.
        if !self.above.contains_key(&seq_hi) {
            self.add_gap(seq_hi, now + policy.first);
            self.gaps_detected += 1;
        }
        self.seq_hi = seq_hi;
    }

    fn abandon_below(&mut self, new_base: u64) {
        if new_base <= self.base {
            return;
        }
        // Counted from what is held, not by walking the span: a forged far-ahead announcement
        // (seq_hi near u64::MAX) must not loop for 2^64 steps.
        let held = self.above.range(..=new_base).count() as u64;
        self.abandoned = self
            .abandoned
            .saturating_add((new_base - self.base).saturating_sub(held));
        self.above = self.above.split_off(&(new_base + 1));
        let kept = self.gaps.split_off(&(new_base + 1));
        for (s, g) in std::mem::replace(&mut self.gaps, kept) {
            self.schedule.remove(&(g.next_at, s));
        }
        self.base = new_base;
        self.advance();
    }

    fn advance(&mut self) {
        while let Some((&s, _)) = self.above.first_key_value() {
            if s != self.base + 1 {
                break;
            }
            self.above.remove(&s);
            self.base = s;
        }
    }

    /// Gives up on these ranges (the sender said they are gone): they count as received.
    pub fn give_up(&mut self, ranges: &[Range]) {
        for &(a, b) in ranges {
            let b = b.min(self.seq_hi);
            if a > b {
                continue;
            }
            // Bounded: only numbers we track as gaps are touched.
            let gone: Vec<u64> = self.gaps.range(a..=b).map(|(s, _)| *s).collect();
            for s in gone {
                self.remove_gap(s);
                self.above.insert(s, ());
                self.abandoned += 1;
            }
        }
        self.advance();
    }

    /// The ranges to NAK now (and reschedules them with backoff); gaps past `max_tries` are
    /// abandoned and reported through `abandoned`.
    pub fn due_naks(&mut self, now: Instant, policy: &NakPolicy) -> Vec<Range> {
        let mut due = Vec::new();
        let mut dead = Vec::new();
        while let Some(&(at, s)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            let Some(g) = self.gaps.get_mut(&s) else {
                continue;
            };
            if g.tries >= policy.max_tries {
                dead.push(s);
                continue;
            }
            g.tries += 1;
            let backoff = policy
                .first
                .saturating_mul(1 << g.tries.min(16))
                .min(policy.max);
            g.next_at = now + backoff;
            due.push(s);
        }
        // Rescheduled after the loop: a zero backoff must not make it pop them again.
        for &s in &due {
            if let Some(g) = self.gaps.get(&s) {
                self.schedule.insert((g.next_at, s));
            }
        }
        due.sort_unstable();
        if !dead.is_empty() {
            dead.sort_unstable();
            let ranges = to_ranges(&dead);
            self.give_up(&ranges);
        }
        to_ranges(&due)
    }

    /// When the next NAK is due.
    pub fn next_nak(&self) -> Option<Instant> {
        self.schedule.first().map(|&(at, _)| at)
    }

    /// Tracks `seq` as missing, its first NAK due at `next_at`.
    fn add_gap(&mut self, seq: u64, next_at: Instant) {
        if let Some(old) = self.gaps.insert(seq, Gap { next_at, tries: 0 }) {
            self.schedule.remove(&(old.next_at, seq));
        }
        self.schedule.insert((next_at, seq));
    }

    /// Stops tracking `seq` as missing.
    fn remove_gap(&mut self, seq: u64) {
        if let Some(g) = self.gaps.remove(&seq) {
            self.schedule.remove(&(g.next_at, seq));
        }
    }
}

/// Compresses sorted sequence numbers into inclusive ranges.
pub fn to_ranges(seqs: &[u64]) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, b)) if *b + 1 == s => *b = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn p() -> NakPolicy {
        NakPolicy::default()
    }

    #[test]
    fn in_order_advances_and_duplicates_are_detected() {
        let now = Instant::now();
        let mut r = RecvStream::new(0);
        assert_eq!(r.receive(now, 1, &p()), Arrival::New);
        assert_eq!(r.receive(now, 2, &p()), Arrival::New);
        assert_eq!(r.receive(now, 2, &p()), Arrival::Duplicate);
        assert_eq!(r.contiguous(), 2);
        assert!(r.due_naks(now + Duration::from_secs(1), &p()).is_empty());
    }

    #[test]
    fn a_gap_is_nakked_after_the_delay_and_closed_by_the_retransmission() {
        let now = Instant::now();
        let mut r = RecvStream::new(0);
        r.receive(now, 1, &p());
        r.receive(now, 4, &p());
        assert!(
            r.due_naks(now, &p()).is_empty(),
            "first NAK waits for reordering"
        );
        let later = now + Duration::from_millis(2);
        assert_eq!(r.due_naks(later, &p()), vec![(2, 3)]);
        assert!(r.due_naks(later, &p()).is_empty(), "backoff");
        r.receive(later, 3, &p());
        r.receive(later, 2, &p());
        assert_eq!(r.contiguous(), 4);
        assert_eq!(r.missing(), 0);
    }

    #[test]
    fn tail_loss_is_found_from_the_announced_high_mark() {
        let now = Instant::now();
        let mut r = RecvStream::new(0);
        r.receive(now, 1, &p());
        r.learn_hi(now, 3, &p());
        assert_eq!(
            r.due_naks(now + Duration::from_millis(5), &p()),
            vec![(2, 3)]
        );
    }

    #[test]
    fn gaps_are_abandoned_after_max_tries_and_never_block_the_ack() {
        let mut now = Instant::now();
        let mut r = RecvStream::new(0);
        r.receive(now, 2, &p());
        for _ in 0..20 {
            now += Duration::from_secs(1);
            r.due_naks(now, &p());
        }
        assert_eq!(r.contiguous(), 2);
        assert_eq!(r.abandoned, 1);
    }

    #[test]
    fn gone_ranges_are_skipped() {
        let now = Instant::now();
        let mut r = RecvStream::new(0);
        r.receive(now, 5, &p());
        r.give_up(&[(1, 4)]);
        assert_eq!(r.contiguous(), 5);
    }

    #[test]
    fn a_sender_far_ahead_does_not_grow_receiver_memory_without_bound() {
        let now = Instant::now();
        let mut r = RecvStream::new(0);
        r.learn_hi(now, 10 * MAX_AHEAD, &p());
        assert!(r.missing() <= MAX_AHEAD + 1);
    }

    #[test]
    fn send_buffer_releases_on_ack_and_evicts_at_its_cap() {
        let mut b = SendBuffer::new(250);
        for id in 0..3 {
            let seq = b.next_seq();
            b.keep(seq, id, vec![0; 100].into());
        }
        assert_eq!(b.len(), 2, "byte cap evicts the oldest");
        assert_eq!(b.evicted_unacked, 1);
        assert!(b.get(1).is_none());
        assert!(b.get(3).is_some());
        b.release(2);
        assert_eq!(b.oldest(), Some(3));
        b.release(3);
        assert!(b.is_empty() && b.bytes() == 0);
    }

    /// The old receiver, which walked every gap for the next NAK and the NAKs due: the
    /// scheduled one must answer the same at every step.
    #[derive(Default)]
    struct Walked {
        gaps: BTreeMap<u64, Gap>,
    }

    impl Walked {
        fn due_naks(&mut self, now: Instant, policy: &NakPolicy) -> (Vec<Range>, Vec<u64>) {
            let (mut due, mut dead) = (Vec::new(), Vec::new());
            for (&s, g) in self.gaps.iter_mut() {
                if g.next_at > now {
                    continue;
                }
                if g.tries >= policy.max_tries {
                    dead.push(s);
                    continue;
                }
                g.tries += 1;
                let backoff = policy
                    .first
                    .saturating_mul(1 << g.tries.min(16))
                    .min(policy.max);
                g.next_at = now + backoff;
                due.push(s);
            }
            for s in &dead {
                self.gaps.remove(s);
            }
            (to_ranges(&due), dead)
        }
    }

    #[test]
    fn scheduled_naks_match_a_walk_over_every_gap() {
        let policy = p();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let start = Instant::now();
        let mut now = start;
        let mut r = RecvStream::new(0);
        let mut w = Walked::default();
        for _ in 0..4_000 {
            now += Duration::from_micros(rnd(3_000));
            match rnd(10) {
                // A message arrives, often out of order, sometimes far ahead.
                0..=4 => {
                    let span = if rnd(50) == 0 { 1_000 } else { 40 };
                    let seq = r.contiguous() + 1 + rnd(span);
                    r.receive(now, seq, &policy);
                }
                // A heartbeat or tail names a newer highest number.
                5 => r.learn_hi(now, r.seq_hi() + rnd(20), &policy),
                // The sender says some are gone.
                6 => {
                    let a = r.contiguous() + rnd(30);
                    r.give_up(&[(a, a + rnd(10))]);
                }
                _ => {
                    let (due, dead) = w.due_naks(now, &policy);
                    assert_eq!(r.due_naks(now, &policy), due);
                    for s in dead {
                        assert!(!r.gaps.contains_key(&s), "gap {s} given up on by both");
                    }
                }
            }
            // The model follows the stream's gaps (their timers are what is compared).
            w.gaps.retain(|s, _| r.gaps.contains_key(s));
            for (&s, g) in &r.gaps {
                w.gaps.entry(s).or_insert(*g);
            }
            assert_eq!(r.schedule.len(), r.gaps.len());
            assert_eq!(
                r.next_nak(),
                w.gaps.values().map(|g| g.next_at).min(),
                "next NAK"
            );
        }
        assert!(
            r.gaps_detected > 500,
            "the run made gaps: {}",
            r.gaps_detected
        );
    }

    #[test]
    fn ranges_compress() {
        assert_eq!(
            to_ranges(&[1, 2, 3, 7, 9, 10]),
            vec![(1, 3), (7, 7), (9, 10)]
        );
    }
}
