//! What a shard holds (entries, tombstones, its CLOCK hand, counters and its share of the sync
//! bucket digests) and the cache-wide accounting of entries, bytes and checksums that every
//! insert and removal keeps exact.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use indexmap::IndexMap;
use parking_lot::RwLock;

use super::encoding::Encoded;
use super::events::Events;
use super::table::Table;
use super::{CacheKey, CacheValue, Hasher, Store, Ttl, mix64};
use crate::cache::hooks::SYNC_BUCKETS;
use crate::config::CacheMode;
use crate::error::{Error, Result};
use crate::proto::version::Version;

/// One stored value and its bookkeeping: 40 bytes besides the value (48 for a `u64` value).
///
/// Times are kept in milliseconds of the store's monotonic clock, narrowed (see the module
/// docs of `store` for the limits): the expiry (48 bits: the write time, rounded up, plus the
/// TTL; a read hit compares it with the clock as it is), the TTL (`u32`, see [`encode_ttl`]),
/// from which the write time is derived back, and the last read hit (31 bits, modulo
/// 2³¹ ms ≈ 24.8 days) next to the CLOCK referenced bit in one atomic word.
///
/// `repr(C)`, in this order: what a read hit touches (value, TTL, touch word, and the expiry
/// when there is a TTL) first, so that, with the key just before it in the shard's slab
/// (`table::Slot`), a hit on a `u64 → u64` entry (56 bytes) reads 24 contiguous bytes (32 with
/// a TTL), which straddle two cache lines for 2 (3) of the 8 positions an entry takes modulo
/// 64 bytes (the default layout spread them over all 56 bytes: 6 of 8).
#[repr(C)]
pub(super) struct Entry<V> {
    pub(super) value: V,
    /// The TTL ([`encode_ttl`]); 0 = never expires.
    ttl: u32,
    /// [`REFERENCED`] | monotonic ms of the last read hit modulo 2³¹ (0 = never read). Written
    /// by readers under the shard's read lock (plain loads and stores: the bits they write are
    /// the same for every reader at a given time).
    touch: AtomicU32,
    /// In the top 48 bits, the monotonic ms at which the entry expires: that of the last write
    /// on this node (rounded up) plus the TTL (so the write's own when there is none). The sync
    /// bucket in the next 8 bits, flags ([`PER_ENTRY_TTL`]) in the low 8. The expiry on top,
    /// a read hit compares the whole word with a bound in the same form
    /// ([`Entry::due_after`]).
    stamp: u64,
    pub(super) version: Version,
    /// Serialized key + value bytes (saturating; accounted as stored, so always in balance).
    pub(super) size: u32,
    /// crc32(key ‖ value ‖ version).
    pub(super) crc: u32,
}

/// The expiry's place in `stamp`: its top 48 bits.
const DUE_SHIFT: u32 = 16;
const DUE_MASK: u64 = (1 << (64 - DUE_SHIFT)) - 1;
/// The sync bucket's place in `stamp`: the 8 bits below the expiry.
const BUCKET_SHIFT: u32 = 8;
/// Flag in `stamp`: the TTL was given for this entry (replicated as such), not the cache's.
const PER_ENTRY_TTL: u64 = 1;

/// An entry's `stamp` (see [`Entry`]): the expiry in ms (kept modulo 2⁴⁸), the sync bucket and
/// the flags.
fn stamp(due_ms: u64, bucket: u8, flags: u64) -> u64 {
    (due_ms & DUE_MASK) << DUE_SHIFT | (bucket as u64) << BUCKET_SHIFT | flags
}
/// The CLOCK referenced bit in `touch`.
const REFERENCED: u32 = 1 << 31;
/// The last-lookup bits of `touch`.
const LOOKUP_MASK: u32 = REFERENCED - 1;
/// A last lookup at most this far (ms) *ahead* of the time it is compared with counts as now
/// (a reader's coarse time may be newer than the exact time a writer read just before it).
const AHEAD_SLACK: u32 = 1 << 16;
/// TTLs of 2³¹ ms (≈ 24.8 days) and more are kept in whole seconds (flagged by this bit).
const TTL_SECONDS: u32 = 1 << 31;

/// A TTL in ms as an entry keeps it: exact below 2³¹ ms (≈ 24.8 days); above, rounded up to
/// whole seconds and capped at 2³¹ − 1 s (≈ 68 years). 0 = never expires.
pub(super) fn encode_ttl(ms: u64) -> u32 {
    if ms < TTL_SECONDS as u64 {
        ms as u32
    } else {
        TTL_SECONDS | ms.div_ceil(1000).min((TTL_SECONDS - 1) as u64) as u32
    }
}

/// The TTL in ms that [`encode_ttl`] kept.
pub(super) fn decode_ttl(t: u32) -> u64 {
    if t & TTL_SECONDS == 0 {
        t as u64
    } else {
        (t & !TTL_SECONDS) as u64 * 1000
    }
}

/// Monotonic nanos → ms, rounded up (write times: an expiry derived from them is never early).
#[inline]
fn ms_up(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000)
}

/// The `touch` value of a read hit at monotonic `nanos` (referenced, lookup ms modulo 2³¹,
/// never 0).
#[inline]
pub(super) fn touch_at(nanos: u64) -> u32 {
    touch_ms31(crate::cache::clock::ms31(nanos))
}

/// The `touch` value of a read hit at a [`CoarseCell::ms31`](crate::cache::clock::CoarseCell)
/// reading (milliseconds modulo 2³¹, never 0).
#[inline]
pub(super) fn touch_ms31(ms31: u32) -> u32 {
    REFERENCED | ms31
}

/// The `touch` value of a read hit at a
/// [`CoarseCell::marked_ms31`](crate::cache::clock::CoarseCell::marked_ms31) reading: that
/// reading, whose mark is the referenced bit.
#[inline]
pub(super) fn touch_marked(marked_ms31: u32) -> u32 {
    const { assert!(REFERENCED == crate::cache::clock::CoarseCell::MARK) };
    marked_ms31
}

impl<V> Entry<V> {
    /// The bytes at the start of an entry that a read hit on an entry with a TTL reads: up to
    /// the end of its expiry.
    #[cfg(test)]
    pub(super) const HIT_BYTES: usize = std::mem::offset_of!(Entry<V>, stamp) + 8;

    /// The per-entry TTL in ms as replicated (`None`: the cache's TTL).
    pub(super) fn ttl_ms(&self) -> Option<u64> {
        (self.stamp & PER_ENTRY_TTL != 0).then(|| decode_ttl(self.ttl))
    }

    pub(super) fn digest(&self) -> u64 {
        mix64(self.crc as u64)
    }

    pub(super) fn bucket(&self) -> u8 {
        (self.stamp >> BUCKET_SHIFT) as u8
    }

    /// Monotonic ms of the last write on this node (rounded up).
    pub(super) fn written_ms(&self) -> u64 {
        self.due_ms().saturating_sub(decode_ttl(self.ttl))
    }

    /// Monotonic ms at which the entry expires, if it has a TTL ([`Entry::expires_at`] in ms).
    #[inline]
    pub(super) fn due_ms(&self) -> u64 {
        self.stamp >> DUE_SHIFT
    }

    /// Whether the entry's expiry (with or without a TTL) is after `bound`, a time in ms shifted
    /// left 16 bits with the low 16 bits set ([`CoarseCell::trusted_shl16`]): one comparison of
    /// the stamp, whose top 48 bits are the expiry.
    ///
    /// [`CoarseCell::trusted_shl16`]: crate::cache::clock::CoarseCell::trusted_shl16
    #[inline]
    pub(super) fn due_after(&self, bound: u64) -> bool {
        const { assert!(DUE_SHIFT == crate::cache::clock::CoarseCell::SHL) };
        self.stamp > bound
    }

    /// Whether the entry has a TTL at all (a cheap test before reading the clock).
    #[inline]
    pub(super) fn has_ttl(&self) -> bool {
        self.ttl != 0
    }

    /// Monotonic nanos at which the entry expires; 0 = never.
    pub(super) fn expires_at(&self) -> u64 {
        if self.ttl == 0 {
            return 0;
        }
        self.due_ms().saturating_mul(1_000_000).max(1)
    }

    #[inline]
    pub(super) fn expired(&self, now: u64) -> bool {
        self.ttl != 0 && self.expires_at() <= now
    }

    /// Marks a read hit at the `touch_at` value `t` (stores only if the word changes).
    #[inline]
    pub(super) fn touch(&self, t: u32) {
        if self.touch.load(Ordering::Relaxed) != t {
            self.touch.store(t, Ordering::Relaxed);
        }
    }

    /// CLOCK under the shard's write lock: clears the referenced bit; returns whether it was set.
    pub(super) fn take_referenced(&mut self) -> bool {
        let t = self.touch.get_mut();
        let was = *t & REFERENCED != 0;
        *t &= !REFERENCED;
        was
    }

    /// Monotonic ms of the last read hit, if any, as seen at monotonic ms `now_ms`: the latest
    /// time not after `now_ms` that agrees with the 31 bits kept (exact for reads less than
    /// 2³¹ ms ≈ 24.8 days ago; an older read may be reported as a multiple of that later).
    pub(super) fn last_lookup_ms(&self, now_ms: u64) -> Option<u64> {
        let ll = self.touch.load(Ordering::Relaxed) & LOOKUP_MASK;
        if ll == 0 {
            return None;
        }
        let mut ago = (now_ms as u32).wrapping_sub(ll) & LOOKUP_MASK;
        if ago > LOOKUP_MASK - AHEAD_SLACK {
            ago = 0;
        }
        Some(now_ms.saturating_sub(ago as u64))
    }

    /// Whether the entry was read at most `win_ms` before monotonic `now` (nanos).
    pub(super) fn read_within(&self, now: u64, win_ms: u64) -> bool {
        let now_ms = now / 1_000_000;
        self.last_lookup_ms(now_ms)
            .is_some_and(|t| now_ms - t <= win_ms)
    }
}

/// A deleted key: remembered so that an older put arriving late cannot bring it back.
pub(super) struct Tomb {
    pub(super) version: Version,
    pub(super) at_nanos: u64,
    pub(super) key_bytes: Box<[u8]>,
    pub(super) bucket: u8,
}

pub(super) struct ShardMap<K, V> {
    pub(super) map: Table<K, Entry<V>>,
    /// This shard's share of the sync bucket digests.
    pub(super) digests: Digests,
    pub(super) tombs: IndexMap<K, Tomb, Hasher>,
    /// The CLOCK hand: an index into `map`'s dense order.
    pub(super) hand: usize,
}

/// A shard's share of the sync bucket digests: by bucket, the wrapping sum of its entries'
/// digests. Changed only under the shard's write lock (plain additions, no atomics); the
/// cache's digest adds the shards' up (`sync_digest`). 512 bytes per shard.
pub(super) struct Digests(pub(super) [u64; SYNC_BUCKETS]);

impl Digests {
    fn add(&mut self, e_bucket: u8, digest: u64) {
        let b = &mut self.0[e_bucket as usize];
        *b = b.wrapping_add(digest);
    }

    fn sub(&mut self, e_bucket: u8, digest: u64) {
        let b = &mut self.0[e_bucket as usize];
        *b = b.wrapping_sub(digest);
    }
}

/// A shard's write counters (striped: threads on different shards never share a counter line).
/// Hits and misses are counted per reader thread instead (`counts`).
#[derive(Default)]
pub(super) struct Stats {
    pub(super) inserts: AtomicU64,
    pub(super) updates: AtomicU64,
    pub(super) deletes: AtomicU64,
    pub(super) ev_capacity: AtomicU64,
    pub(super) ev_bytes: AtomicU64,
    pub(super) ev_ttl: AtomicU64,
    /// Mutations within the callback window of the cache's previous one (`note_mutation`).
    pub(super) spikes: AtomicU64,
    /// Sum of those mutations' gaps (ns).
    pub(super) spike_gap_sum: AtomicU64,
}

/// Adds `n` to a shard counter ([`Stats`]: only writers holding the shard's write lock change
/// them): a plain load and store, no locked read-modify-write; readers still
/// load it atomically.
#[inline]
pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// `repr(C)`, the lock first: a read finds the lock and the map at fixed offsets from the
/// shard's address (one register for both on the hit path).
#[repr(C, align(128))]
pub(super) struct Shard<K, V> {
    pub(super) lock: RwLock<ShardMap<K, V>>,
    /// Lower bound of the earliest `expires_at` in the shard; `u64::MAX` if none.
    pub(super) next_expiry: AtomicU64,
    pub(super) stats: Stats,
}

impl<K, V> Shard<K, V> {
    pub(super) fn new(hasher: Hasher) -> Shard<K, V> {
        Shard {
            lock: RwLock::new(ShardMap {
                map: Table::with_hasher(hasher),
                digests: Digests([0; SYNC_BUCKETS]),
                tombs: IndexMap::with_hasher(hasher),
                hand: 0,
            }),
            next_expiry: AtomicU64::new(u64::MAX),
            stats: Stats::default(),
        }
    }
}

impl<K: CacheKey, V: CacheValue> Store<K, V> {
    /// Accounts a new entry of the shard whose digests are `d` (under its write lock).
    pub(super) fn account(&self, d: &mut Digests, e: &Entry<V>) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.account_bytes(d, e);
    }

    /// Accounts an entry's bytes and digests, not its entry slot.
    pub(super) fn account_bytes(&self, d: &mut Digests, e: &Entry<V>) {
        self.bytes.fetch_add(e.size as u64, Ordering::Relaxed);
        d.add(e.bucket(), e.digest());
    }

    /// Accounts a new entry; with `reserved`, its entry slot was already taken by
    /// [`Self::reserve_slot_for`]. Returns whether the reservation was used.
    pub(super) fn account_new(&self, d: &mut Digests, e: &Entry<V>, reserved: bool) -> bool {
        if !reserved {
            self.account(d, e);
            return false;
        }
        self.account_bytes(d, e);
        true
    }

    /// Unaccounts an entry removed from the shard whose digests are `d` (under its write lock).
    pub(super) fn unaccount(&self, d: &mut Digests, e: &Entry<V>) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.unaccount_bytes(d, e);
    }

    /// Unaccounts a removed entry but its entry slot, which the caller keeps (an eviction
    /// that makes room for a new key hands the victim's slot over to it).
    pub(super) fn unaccount_bytes(&self, d: &mut Digests, e: &Entry<V>) {
        self.bytes.fetch_sub(e.size as u64, Ordering::Relaxed);
        d.sub(e.bucket(), e.digest());
    }

    /// Takes an entry slot if the cache holds fewer than `cache_max` entries (a CAS on the
    /// entry count); `false` when it is full.
    pub(super) fn take_free_slot(&self) -> bool {
        let max = self.cfg.max_entries.max(1) as u64;
        let mut n = self.entries.load(Ordering::Relaxed);
        while n < max {
            match self
                .entries
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(cur) => n = cur,
            }
        }
        false
    }

    /// If `key` is not held (a hint, read before the write lock), takes one entry slot below
    /// `cache_max`, sweeping expired entries and evicting (CLOCK) first when the cache is full.
    /// Returns whether a slot is held; the caller releases it if it ends up not inserting.
    /// (If the key disappears between this check and the write lock, the insert accounts
    /// normally and the caps are enforced right after, as before.) `ready` is asked, once the
    /// key is known to need a slot and before any is taken, whether the write can go ahead (a
    /// peer's value is decoded there, so one that does not decode evicts nothing).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reserve_slot_for(
        &self,
        shard: &Shard<K, V>,
        key: &K,
        hash: u64,
        remote: Option<Version>,
        now: u64,
        ev: &mut Events<K>,
        ready: &mut dyn FnMut() -> bool,
    ) -> bool {
        {
            let g = shard.lock.read();
            if g.map.find_hashed(hash, key).is_some() {
                return false;
            }
            // A remote record that will be refused needs no slot (and must not evict).
            if let Some(v) = remote
                && (g.tombs.get(key).is_some_and(|t| v <= t.version)
                    || (!g.tombs.contains_key(key) && v <= *self.horizon.read())
                    || self.cfg.mode == CacheMode::UpdateIfPresent)
            {
                return false;
            }
        }
        if !ready() {
            return false;
        }
        let mut swept = false;
        loop {
            if self.take_free_slot() {
                return true;
            }
            if !swept {
                swept = true;
                self.expire_due(now, ev);
                continue;
            }
            // The victim's slot is handed over to the new key: the entry count does not move
            // (no decrement and re-increment another thread could slip between).
            return self.evict_one(true, true, Version::ZERO, now, ev);
        }
    }

    /// Gives back a slot taken by [`Self::reserve_slot_for`] that no insert used.
    pub(super) fn release_slot(&self) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn check_size(&self, size: u64) -> Result<()> {
        let max_msg = self.core.max_message_size;
        if size > max_msg as u64 {
            return Err(Error::TooLarge {
                size: size as usize,
                max: max_msg,
            });
        }
        if size > self.cfg.max_bytes {
            return Err(Error::ExceedsCacheSize {
                size,
                max: self.cfg.max_bytes,
            });
        }
        Ok(())
    }

    /// A new entry written at monotonic `now` (nanos); `_wall` is kept for the callers'
    /// convenience (the wall time of a write is derived from `now` when it is asked for).
    // Forced: left out of line, its call saved and restored six registers (~35 instructions).
    #[inline(always)]
    pub(super) fn new_entry(
        &self,
        value: V,
        enc: &Encoded,
        version: Version,
        (now, _wall): (u64, u64),
        ttl: Ttl,
    ) -> Entry<V> {
        let (ttl, flag) = match ttl {
            Ttl::Cache => (self.ttl_code, 0),
            Ttl::Entry(d) => (encode_ttl(nanos(d).div_ceil(1_000_000)), PER_ENTRY_TTL),
        };
        Entry {
            value,
            version,
            size: enc.size().min(u32::MAX as u64) as u32,
            crc: enc.entry_crc(&version),
            stamp: stamp(ms_up(now) + decode_ttl(ttl), enc.bucket(), flag),
            ttl,
            touch: AtomicU32::new(REFERENCED),
        }
    }

    /// Removes the entry at `idx` (expired, evicted, deleted or cleared), keeping the hand valid.
    pub(super) fn take_index(&self, g: &mut ShardMap<K, V>, idx: usize) -> Option<(K, Entry<V>)> {
        self.take_index_keeping_slot(g, idx, false)
    }

    /// [`Self::take_index`]; with `keep_slot`, the entry's slot stays counted in `entries`
    /// (handed over to a new key, see [`Self::reserve_slot_for`]).
    pub(super) fn take_index_keeping_slot(
        &self,
        g: &mut ShardMap<K, V>,
        idx: usize,
        keep_slot: bool,
    ) -> Option<(K, Entry<V>)> {
        let (k, e) = g.map.swap_remove_index(idx)?;
        if keep_slot {
            self.unaccount_bytes(&mut g.digests, &e);
        } else {
            self.unaccount(&mut g.digests, &e);
        }
        if g.hand > g.map.len() {
            g.hand = 0;
        }
        Some((k, e))
    }
}

/// A duration in nanoseconds, saturating.
pub(super) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_40_bytes_besides_its_value() {
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 48);
        assert_eq!(std::mem::size_of::<Entry<()>>(), 40);
    }

    #[test]
    fn ttls_are_exact_below_2_31_ms_and_rounded_up_to_seconds_above() {
        for ms in [0, 1, 999, 3_000, (1 << 31) - 1] {
            assert_eq!(decode_ttl(encode_ttl(ms)), ms);
        }
        assert_eq!(decode_ttl(encode_ttl(1 << 31)), 2_147_484_000);
        // The largest configurable cache TTL (10⁹ s) is kept exactly.
        assert_eq!(decode_ttl(encode_ttl(1_000_000_000_000)), 1_000_000_000_000);
        // Beyond 2³¹ − 1 s: capped.
        assert_eq!(decode_ttl(encode_ttl(u64::MAX)), ((1u64 << 31) - 1) * 1000);
        assert_ne!(encode_ttl(u64::MAX), 0, "a huge TTL never means no TTL");
    }

    fn entry(now: u64, ttl_ms: u64, per_entry: bool) -> Entry<u32> {
        Entry {
            value: 0,
            version: Version::ZERO,
            size: 0,
            crc: 0,
            stamp: stamp(
                ms_up(now) + ttl_ms,
                7,
                if per_entry { PER_ENTRY_TTL } else { 0 },
            ),
            ttl: encode_ttl(ttl_ms),
            touch: AtomicU32::new(REFERENCED),
        }
    }

    #[test]
    fn expiry_is_never_early_and_at_most_a_millisecond_late() {
        let ms = 1_000_000;
        // Written on a whole millisecond: exact.
        let e = entry(5_000 * ms, 2_000, true);
        assert!(!e.expired(7_000 * ms - 1) && e.expired(7_000 * ms));
        assert_eq!(
            (e.ttl_ms(), e.bucket(), e.written_ms()),
            (Some(2_000), 7, 5_000)
        );
        // Written mid-millisecond: rounded up.
        let e = entry(5_000 * ms + 1, 2_000, false);
        assert!(!e.expired(7_000 * ms + 1) && e.expired(7_001 * ms));
        assert_eq!(e.ttl_ms(), None);
        let e = entry(5_000 * ms, 0, true);
        assert!(!e.has_ttl() && !e.expired(u64::MAX) && e.expires_at() == 0);
    }

    #[test]
    fn due_after_compares_the_expiry_with_a_shifted_bound_whatever_the_bucket_and_flags() {
        let ms = 1_000_000;
        let bound = |t: u64| t << crate::cache::clock::CoarseCell::SHL | 0xffff;
        for per_entry in [false, true] {
            let e = entry(5_000 * ms, 2_000, per_entry);
            assert_eq!(e.due_ms(), 7_000);
            assert!(e.due_after(bound(6_999)));
            assert!(!e.due_after(bound(7_000)) && !e.due_after(bound(7_001)));
            assert!(!e.due_after(u64::MAX), "no bound: never after");
            assert_eq!((e.bucket(), e.ttl_ms().is_some()), (7, per_entry));
        }
    }

    #[test]
    fn last_lookup_survives_wrapping_and_the_clock_bit() {
        let ms = 1_000_000u64;
        let mut e = entry(0, 0, false);
        assert_eq!(e.last_lookup_ms(10), None);
        assert!(e.take_referenced() && !e.take_referenced());
        // A read just past a multiple of 2³¹ ms, seen a little later.
        let t = 3 * (1u64 << 31) + 5;
        e.touch(touch_at(t * ms));
        assert_eq!(e.last_lookup_ms(t + 1_000), Some(t));
        assert!(e.read_within((t + 1_000) * ms, 1_000) && !e.read_within((t + 1_001) * ms, 1_000));
        // A reader's coarse time slightly ahead of the caller's: now.
        assert_eq!(e.last_lookup_ms(t - 3), Some(t - 3));
        assert!(e.take_referenced());
        assert_eq!(
            e.last_lookup_ms(t + 2),
            Some(t),
            "clearing the bit keeps the time"
        );
        // A read at ms ≡ 0 (mod 2³¹) is not "never" (it is kept 1 ms late).
        e.touch(touch_at((1u64 << 32) * ms));
        assert_eq!(e.last_lookup_ms(1 << 32), Some(1 << 32));
        assert_eq!(e.last_lookup_ms((1 << 32) + 5), Some((1 << 32) + 1));
    }
}
