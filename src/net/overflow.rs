//! Overload bookkeeping shared by the publisher (application threads) and the driver.
//!
//! - **Credits**: `queue_max` slots of the outbound queue. A local change takes one before it is
//!   queued; the driver gives them back as it takes changes off the queue. The queue is also
//!   bounded in bytes (`queue_max_bytes`, counted with [`charge`]): while it holds that much,
//!   no credit is given out, so large values wait behind a bounded amount of sending, not
//!   behind `queue_max` of their kind. The overload policy
//!   (`overload = "repair" | "block" | "error"`) decides what a write does when none is left.
//! - **Dirty keys**: the keys (and clears) whose changes could not be queued. The driver
//!   re-sends their newest records as soon as the queue has drained (a targeted repair), and
//!   up to 256 of them every 100 ms while it stays full (sustained overload), so
//!   peers converge right after a burst instead of at the next anti-entropy pulse. The set is
//!   bounded ([`DIRTY_MAX`] keys, or `queue_max` if larger); past the bound it spills, and the
//!   driver falls back to anti-entropy pulses (one at once, one after the settle time).
//! - **The change queue** ([`ChangeQueue`]): where the publisher puts the changes it holds
//!   credits for. Writers append under a short lock; the driver takes everything queued in one
//!   swap, and a writer wakes the driver only when it finds it parked (on an empty queue, or
//!   while the core lingers on changes that would not fill its data message yet), so a busy
//!   driver costs writers no system call. Records are queued in *runs* of one cache: a
//!   record that follows one of the same cache joins its run, so a writer touches the cache
//!   name's `Arc` once per run, not once per change (its count and the name share a cache
//!   line that the driver reads for every change it encodes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::proto::endpoint::Endpoint;
use crate::proto::message::Item;
use crate::proto::record::Record;
use crate::proto::state::AppState;
use crate::proto::version::Version;

/// Credits and dirty keys of one node (see the module docs).
#[derive(Debug)]
pub(crate) struct Backlog {
    credits: AtomicIsize,
    /// Bytes ([`charge`]) of the changes in the queue and in the driver's hands. Next to the
    /// credits (in practice on their cache line: a writer that took one adds its change's bytes
    /// without fetching another line).
    queued_bytes: AtomicUsize,
    capacity: usize,
    bytes_max: usize,
    dirty_max: usize,
    dirty: Mutex<Dirty>,
    has_dirty: AtomicBool,
    /// A fallback pulse still to run (after a spill), kept here because the core's pulse
    /// timer holds only the next one.
    pulse_due: Mutex<Option<Instant>>,
}

/// Most keys remembered for the targeted repair (unless `queue_max` is larger).
pub(crate) const DIRTY_MAX: usize = 1 << 18;

impl Default for Backlog {
    fn default() -> Backlog {
        Backlog::new(16_384, 4 << 20)
    }
}

/// What a queued change counts against `queue_max_bytes`: its key and value bytes plus a
/// fixed 32 for its framing (version, op, lengths). The writer that queues a change and the
/// driver that takes it off count the same item, so the sum returns to zero.
pub(crate) fn charge(item: &Item) -> usize {
    match item {
        Item::Rec { rec, .. } => record_charge(rec),
        Item::Clear { .. } => CHARGE_OVERHEAD,
        Item::Loading { key, .. } => key.len() + CHARGE_OVERHEAD,
    }
}

/// [`charge`] of a record.
#[inline]
pub(crate) fn record_charge(rec: &Record) -> usize {
    let value = match &rec.op {
        crate::proto::record::Op::Put { value, .. } => value.len(),
        _ => 0,
    };
    rec.key.len() + value + CHARGE_OVERHEAD
}

/// [`record_charge`] of the record `rec` would be copied into (the writer counts a change
/// before it builds its record in the queue).
#[inline]
pub(crate) fn record_charge_of(rec: &crate::proto::record::RecordRef<'_>) -> usize {
    let value = match rec.op {
        crate::proto::record::OpRef::Put { value, .. } => value.len(),
        _ => 0,
    };
    rec.key.len() + value + CHARGE_OVERHEAD
}

const CHARGE_OVERHEAD: usize = 32;

/// Dirty keys hold local keys only (never network input), so a fast unkeyed hash will do.
type Fast = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Dirty {
    /// Per cache, each dirty key with the newest of its versions that could not be queued.
    keys: HashMap<Arc<str>, HashMap<Vec<u8>, Version, Fast>, Fast>,
    clears: HashMap<Arc<str>, Version, Fast>,
    len: usize,
    spilled: bool,
}

impl Backlog {
    /// `capacity` credits (`queue_max`), given out while fewer than `bytes_max` bytes
    /// (`queue_max_bytes`) are queued; at most max(`capacity`, [`DIRTY_MAX`]) dirty keys are
    /// remembered.
    pub(crate) fn new(capacity: usize, bytes_max: usize) -> Backlog {
        Backlog::with_dirty_max(capacity, bytes_max, capacity.max(DIRTY_MAX))
    }

    fn with_dirty_max(capacity: usize, bytes_max: usize, dirty_max: usize) -> Backlog {
        Backlog {
            credits: AtomicIsize::new(capacity.min(isize::MAX as usize) as isize),
            queued_bytes: AtomicUsize::new(0),
            capacity,
            bytes_max: bytes_max.max(1),
            dirty_max,
            dirty: Mutex::new(Dirty::default()),
            has_dirty: AtomicBool::new(false),
            pulse_due: Mutex::new(None),
        }
    }

    /// The number of credits when none is taken (`queue_max`).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// `queue_max_bytes`.
    pub(crate) fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Takes one credit if one is left and the queue holds fewer than `queue_max_bytes`. A
    /// queue seen full costs loads, not a locked read-modify-write (writers that keep
    /// overflowing do not bounce the credits' line). The byte bound is checked, not reserved:
    /// writers racing past it overshoot it by at most one change each.
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        if self.credits.load(Ordering::Relaxed) <= 0
            || self.queued_bytes.load(Ordering::Relaxed) >= self.bytes_max
        {
            return false;
        }
        if self.credits.fetch_sub(1, Ordering::AcqRel) > 0 {
            return true;
        }
        self.credits.fetch_add(1, Ordering::AcqRel);
        false
    }

    /// Takes one credit, waiting at most `timeout` for the driver to free one.
    pub(crate) fn take_wait(&self, timeout: Duration) -> bool {
        if self.try_take() {
            return true;
        }
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if self.try_take() {
                return true;
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return false;
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Gives `n` credits back (the driver took `n` changes off the queue, or a reserved write
    /// published nothing, or went out through the express lane).
    pub(crate) fn give(&self, n: usize) {
        if n > 0 {
            self.credits
                .fetch_add(n.min(isize::MAX as usize) as isize, Ordering::AcqRel);
        }
    }

    /// Whether no change waits in the queue or in the driver's hands (every one is charged
    /// at least 32 bytes). A load, not the queue's lock: the driver asks every pass.
    pub(crate) fn nothing_queued(&self) -> bool {
        self.queued_bytes.load(Ordering::Relaxed) == 0
    }

    /// Counts `bytes` ([`charge`]) of a change entering the queue (its credit already taken).
    #[inline]
    pub(crate) fn add_bytes(&self, bytes: usize) {
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `n` credits and the `bytes` of the changes the driver took off the queue.
    pub(crate) fn give_queued(&self, n: usize, bytes: usize) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.give(n);
    }

    /// Remembers a change that could not be queued, for the targeted repair.
    pub(crate) fn mark(&self, item: &Item) {
        match item {
            Item::Rec { cache, rec } => self.mark_key(cache, &rec.key, rec.version),
            Item::Clear { cache, version } => {
                let mut d = self.dirty.lock();
                match d.clears.get_mut(&**cache) {
                    Some(v) => *v = (*v).max(*version),
                    None => {
                        d.clears.insert(cache.clone(), *version);
                    }
                }
                drop(d);
                self.set_dirty();
            }
            // A loading announcement carries no state: nothing to repair if it is lost
            // (peers that would have waited for it simply load themselves).
            Item::Loading { .. } => {}
        }
    }

    /// Remembers one key whose change (at `version`) could not be queued, with the newest
    /// such version. Allocates only for a key not remembered yet (a writer that keeps
    /// overflowing on hot keys copies nothing).
    pub(crate) fn mark_key(&self, cache: &Arc<str>, key: &[u8], version: Version) {
        {
            let mut guard = self.dirty.lock();
            let d = &mut *guard;
            if let Some(v) = d.keys.get_mut(&**cache).and_then(|set| set.get_mut(key)) {
                *v = (*v).max(version);
                drop(guard);
                return self.set_dirty();
            }
            if d.len >= self.dirty_max {
                d.spilled = true;
            } else {
                d.keys
                    .entry(cache.clone())
                    .or_default()
                    .insert(key.to_vec(), version);
                d.len += 1;
            }
        }
        self.set_dirty();
    }

    fn set_dirty(&self) {
        if !self.has_dirty.load(Ordering::Relaxed) {
            self.has_dirty.store(true, Ordering::Release);
        }
    }

    /// Whether changes wait for the targeted repair.
    pub(crate) fn has_dirty(&self) -> bool {
        self.has_dirty.load(Ordering::Acquire)
    }
}

/// The queue of changes the publisher holds credits for (see the module docs). Bounded by
/// the credits: at most `queue_max` changes wait here and in the driver's hands together.
#[derive(Debug, Default)]
pub(crate) struct ChangeQueue {
    inner: Mutex<Queued>,
    /// How a writer wakes a parked driver.
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queued {
    /// The changes, in order; a run of records holds the records' place in `recs`.
    runs: Vec<Run>,
    /// The records of the runs, in order.
    recs: Vec<Record>,
    /// The driver found nothing to take and waits for [`ChangeQueue::wake`].
    parked: bool,
    /// While parked: the room left in the core's lingering data message (see
    /// [`ChangeQueue::take_or_park`]); a writer wakes the driver once the changes queued, and
    /// one more like the newest, would not fit in it. 0 wakes it for any change.
    defer_room: usize,
    /// The bytes ([`charge`]) of the changes queued (saturating; a change that is not a record
    /// counts as `usize::MAX`: it goes at once).
    bytes: usize,
    /// The bytes of the newest change queued.
    newest: usize,
}

/// Changes in queue order.
#[derive(Debug)]
enum Run {
    /// Records of one cache: those of `recs` from the previous run's `end` to `end`.
    Recs { cache: Arc<str>, end: usize },
    /// A change that is not a record (a clear, a loading announcement).
    Item(Item),
}

/// The driver's emptied buffers, swapped with the writers' at each take (so neither side
/// allocates in the steady state).
#[derive(Debug, Default)]
pub(crate) struct Spare {
    runs: Vec<Run>,
    recs: Vec<Record>,
}

impl Queued {
    #[inline]
    fn push_record(&mut self, cache: &Arc<str>, rec: Record) {
        self.recs.push(rec);
        let n = self.recs.len();
        match self.runs.last_mut() {
            Some(Run::Recs { cache: c, end }) if Arc::ptr_eq(c, cache) => *end = n,
            _ => self.runs.push(Run::Recs {
                cache: cache.clone(),
                end: n,
            }),
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Whether the core would still hold every queued change back for more to join them, with
    /// `room` bytes left in its lingering data message: as the core decides, while another
    /// change like the newest would still fit. Never with no room (not lingering).
    fn lingers(&self, room: usize) -> bool {
        room > 0 && self.bytes.saturating_add(self.newest) <= room
    }
}

impl ChangeQueue {
    /// Appends a change (its credit already taken); wakes the driver if it is parked.
    pub(crate) fn push(&self, item: Item) {
        self.append(usize::MAX, |q| match item {
            Item::Rec { cache, rec } => q.push_record(&cache, rec),
            other => q.runs.push(Run::Item(other)),
        });
    }

    /// Appends a record of `cache` (its credit already taken); wakes the driver if it is
    /// parked. Touches `cache`'s count only if the record starts a run.
    #[inline]
    pub(crate) fn push_record(&self, cache: &Arc<str>, rec: Record) {
        let charge = record_charge(&rec);
        self.append(charge, |q| q.push_record(cache, rec));
    }

    /// [`ChangeQueue::push_record`] of the record `make` builds (under the lock, in its place
    /// in the queue: the record is not moved there), whose [`record_charge`] is `charge`.
    #[inline]
    pub(crate) fn push_record_with(
        &self,
        cache: &Arc<str>,
        charge: usize,
        make: impl FnOnce() -> Record,
    ) {
        self.append(charge, |q| q.push_record(cache, make()));
    }

    /// Appends with `f` a change of `charge` bytes; wakes a parked driver unless the changes
    /// queued would still linger (see [`Queued::lingers`]).
    #[inline]
    fn append(&self, charge: usize, f: impl FnOnce(&mut Queued)) {
        let wake = {
            let mut q = self.inner.lock();
            f(&mut q);
            q.bytes = q.bytes.saturating_add(charge);
            q.newest = charge;
            q.parked && !q.lingers(q.defer_room) && std::mem::take(&mut q.parked)
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Whether no change is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.inner.lock().is_empty()
    }

    /// The driver's side: if `staged` is empty, moves every queued change into it, in order
    /// (swapping the queue's buffers with `spare`'s emptied ones). Returns `false` when there
    /// was nothing to take: the driver is then marked parked and a push wakes it.
    ///
    /// The driver only *tries* the lock: if a writer holds it, it returns `true` with nothing
    /// staged (come back, do not park), instead of spinning on the lock's cache line while the
    /// writer is inside. (Measured alone, on a flat-out networked writer, this changed little:
    /// what cut the handoff's cost was taking less often, see `TAKE_INTERVAL` in the driver.)
    ///
    /// `defer_room` is the room left in the core's lingering data message
    /// (`Endpoint::lingering`; 0: none). Changes that would join it wait for its deadline
    /// anyway, so they are left in the queue (`false`, parked) and writers do not wake the
    /// parked driver for them (it sleeps until the deadline on its timer); only for changes
    /// that would fill it, or for one that is not a record. A driver woken or taking per write
    /// cost a context switch or two per change: 15,400 a second per node at 8,300 writes/s, a
    /// fifth of a core.
    pub(crate) fn take_or_park(
        &self,
        staged: &mut VecDeque<Item>,
        spare: &mut Spare,
        defer_room: usize,
    ) -> bool {
        if !staged.is_empty() {
            return true;
        }
        match self.inner.try_lock() {
            Some(q) => self.take_locked(q, staged, spare, defer_room),
            None => true,
        }
    }

    /// [`ChangeQueue::take_or_park`], waiting for the lock (the stop, which must not miss a
    /// change).
    pub(crate) fn take_all(&self, staged: &mut VecDeque<Item>, spare: &mut Spare) -> bool {
        if !staged.is_empty() {
            return true;
        }
        let q = self.inner.lock();
        self.take_locked(q, staged, spare, 0)
    }

    fn take_locked(
        &self,
        mut q: parking_lot::MutexGuard<'_, Queued>,
        staged: &mut VecDeque<Item>,
        spare: &mut Spare,
        defer_room: usize,
    ) -> bool {
        {
            if q.is_empty() || q.lingers(defer_room) {
                q.parked = true;
                q.defer_room = defer_room;
                return false;
            }
            q.parked = false;
            q.bytes = 0;
            q.newest = 0;
            std::mem::swap(&mut q.runs, &mut spare.runs);
            std::mem::swap(&mut q.recs, &mut spare.recs);
            drop(q);
        }
        let mut recs = spare.recs.drain(..);
        let mut start = 0;
        for run in spare.runs.drain(..) {
            match run {
                Run::Recs { cache, end } => {
                    for rec in recs.by_ref().take(end - start) {
                        staged.push_back(Item::Rec {
                            cache: cache.clone(),
                            rec,
                        });
                    }
                    start = end;
                }
                Run::Item(item) => staged.push_back(item),
            }
        }
        true
    }

    /// Resolves when a writer has queued a change after the driver parked (or at once if one
    /// did so since the last wait).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }
}

/// Most dirty keys re-sent per driver pass once the queue has drained.
const REPAIR_BATCH: usize = 4096;

/// While the queue stays full (sustained overload), a repair pass still runs this often...
pub(crate) const REPAIR_INTERLEAVE: Duration = Duration::from_millis(100);

/// ...re-sending at most this many dirty keys, past the queue (into the core's outbox): a key whose
/// change found no room reaches the peers within about [`REPAIR_INTERLEAVE`] even if the writers
/// never pause, at a cost of at most ~2,560 extra changes/s (1,024 measured a higher lag p99 with 1
/// KiB values flat out, 1.4–2.1 s against 0.8–0.9 s; 256 none).
const INTERLEAVED_BATCH: usize = 256;

/// The driver's part of the targeted repair: re-sends the newest record of dirty keys (and
/// any overflowed clears) on the reliable stream. Once the queue has drained (`interleaved`
/// false), up to 4,096 keys whenever the core's outbox holds fewer than that; while it is
/// still full (`interleaved`, every [`REPAIR_INTERLEAVE`]), up to 256 whatever the outbox
/// holds. If the dirty set spilled, schedules an anti-entropy pulse now and one after the
/// settle time (anti-entropy leaves younger keys to the stream).
pub(crate) fn repair_step(
    ep: &mut Endpoint,
    app: &dyn AppState,
    backlog: &Backlog,
    now: Instant,
    interleaved: bool,
) {
    {
        let mut due = backlog.pulse_due.lock();
        if let Some(at) = *due {
            if now >= at {
                *due = None;
            } else {
                ep.schedule_pulse_at(at);
            }
        }
    }
    let batch = if interleaved {
        INTERLEAVED_BATCH
    } else {
        REPAIR_BATCH
    };
    if !backlog.has_dirty() || (!interleaved && ep.outbox_len() >= REPAIR_BATCH) {
        return;
    }
    let (keys, clears, spilled) = {
        let mut d = backlog.dirty.lock();
        let mut keys = Vec::new();
        let caches: Vec<Arc<str>> = d.keys.keys().cloned().collect();
        for cache in caches {
            let Some(set) = d.keys.get_mut(&cache) else {
                continue;
            };
            let take: Vec<Vec<u8>> = set.keys().take(batch - keys.len()).cloned().collect();
            for k in take {
                if let Some(v) = set.remove(&k) {
                    keys.push((cache.clone(), k, v));
                }
            }
            if set.is_empty() {
                d.keys.remove(&cache);
            }
            if keys.len() >= batch {
                break;
            }
        }
        d.len = d.len.saturating_sub(keys.len());
        let clears: Vec<(Arc<str>, Version)> = d.clears.drain().collect();
        let spilled = std::mem::take(&mut d.spilled);
        if d.keys.is_empty() {
            backlog.has_dirty.store(false, Ordering::Release);
        }
        (keys, clears, spilled)
    };
    let mut items: Vec<Item> = clears
        .into_iter()
        .map(|(cache, version)| Item::Clear { cache, version })
        .collect();
    let me = ep.id();
    for (cache, key, overflowed) in keys {
        match app.record(&cache, &key) {
            // Re-sent only if the key still holds this node's change that overflowed (or an
            // older one). A newer change overtook it: another node's, which its writer sends
            // (or repairs, if it overflowed there too), or a later one of this node that was
            // queued and sent (one that overflowed too would have raised `overflowed`).
            // Re-sending either would only duplicate it: flat out over 100,000 keys, a
            // third of the records re-sent were such duplicates (docs/BENCHMARKS.md).
            Some(rec) if rec.version.node == me && rec.version <= overflowed => {
                items.push(Item::Rec { cache, rec })
            }
            Some(_) | None => {}
        }
    }
    ep.repair(now, items);
    if spilled {
        ep.schedule_pulse(now);
        let at = now + ep.settle() + Duration::from_millis(50);
        *backlog.pulse_due.lock() = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_record_is_charged_as_the_record_built_from_it() {
        use crate::proto::record::{OpRef, RecordRef};
        let key = [3u8; 20];
        let value = [9u8; 70];
        for op in [
            OpRef::Put {
                value: &value[..],
                ttl_ms: Some(5),
            },
            OpRef::Put {
                value: &value[..3],
                ttl_ms: None,
            },
            OpRef::Del,
            OpRef::Inval,
        ] {
            for k in [&key[..], &key[..2]] {
                let r = RecordRef {
                    key: k,
                    version: Version::ZERO,
                    op,
                };
                assert_eq!(record_charge_of(&r), record_charge(&r.to_record()));
            }
        }
    }

    #[test]
    fn a_record_pushed_with_a_builder_joins_its_run_and_counts_its_bytes() {
        let q = ChangeQueue::default();
        let cache: Arc<str> = "c".into();
        let rec = |k: u8| crate::proto::record::Record {
            key: vec![k].into(),
            version: Version::ZERO,
            op: crate::proto::record::Op::Del,
        };
        q.push_record(&cache, rec(1));
        q.push_record_with(&cache, record_charge(&rec(2)), || rec(2));
        let mut staged = VecDeque::new();
        let mut spare = Spare::default();
        assert!(q.take_all(&mut staged, &mut spare));
        let keys: Vec<u8> = staged
            .iter()
            .map(|i| match i {
                Item::Rec { rec, .. } => rec.key[0],
                _ => panic!("a record"),
            })
            .collect();
        assert_eq!(keys, [1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn credits_are_taken_and_given_back() {
        let b = Backlog::new(2, 1 << 20);
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take(), "no third credit");
        assert!(
            !b.take_wait(Duration::from_millis(5)),
            "the wait is bounded"
        );
        b.give(1);
        assert!(b.take_wait(Duration::from_millis(5)));
    }

    #[test]
    fn queued_bytes_withhold_credits_until_the_driver_takes_them() {
        let b = Backlog::new(100, 1_000);
        let big = Item::Rec {
            cache: "c".into(),
            rec: crate::proto::record::Record {
                key: vec![1; 8].into(),
                version: Version::ZERO,
                op: crate::proto::record::Op::Put {
                    value: vec![7; 600].into(),
                    ttl_ms: None,
                },
            },
        };
        assert_eq!(charge(&big), 8 + 600 + CHARGE_OVERHEAD);
        assert!(b.try_take());
        b.add_bytes(charge(&big));
        assert!(b.try_take(), "640 of 1,000 bytes queued: room left");
        b.add_bytes(charge(&big));
        assert!(
            !b.try_take(),
            "1,280 bytes queued: no credit, though 98 are left"
        );
        assert!(!b.take_wait(Duration::from_millis(5)));
        b.give_queued(1, charge(&big));
        assert_eq!(b.queued_bytes.load(Ordering::Relaxed), 640);
        assert!(b.try_take());
    }

    #[test]
    fn dirty_keys_are_bounded_and_deduplicated() {
        let b = Backlog::with_dirty_max(1, 1 << 20, 2);
        let rec = |k: u8| Item::Rec {
            cache: "c".into(),
            rec: crate::proto::record::Record {
                key: vec![k].into(),
                version: Version::ZERO,
                op: crate::proto::record::Op::Del,
            },
        };
        b.mark(&rec(1));
        b.mark(&rec(1));
        b.mark(&rec(2));
        assert!(b.has_dirty());
        assert_eq!(b.dirty.lock().len, 2);
        assert!(!b.dirty.lock().spilled);
        b.mark(&rec(3));
        assert!(b.dirty.lock().spilled, "past the bound the set spills");
        let cache: Arc<str> = "c".into();
        b.mark_key(&cache, &[1], Version::ZERO);
        assert_eq!(
            b.dirty.lock().len,
            2,
            "a remembered key is not counted twice"
        );
    }

    /// An application whose key `k` holds a record at version `self.0[k]`.
    struct Owners(Vec<Version>);
    impl AppState for Owners {
        fn apply(
            &mut self,
            _: &str,
            _: crate::proto::record::RecordRef<'_>,
            _: crate::proto::version::NodeId,
        ) -> crate::proto::sync::Applied {
            unreachable!("nothing arrives")
        }
        fn apply_clear(&mut self, _: &str, _: Version, _: crate::proto::version::NodeId) {}
        fn clear_floor(&self, _: &str) -> Version {
            Version::ZERO
        }
        fn caches(&self) -> Vec<String> {
            vec!["c".into()]
        }
        fn digest(&self, _: &str) -> Option<crate::proto::sync::SyncDigest> {
            None
        }
        fn bucket_versions(&self, _: &str, _: usize) -> Vec<crate::proto::sync::KeyVersion> {
            Vec::new()
        }
        fn record(&self, _: &str, key: &[u8]) -> Option<Record> {
            Some(Record {
                key: key.to_vec().into(),
                version: *self.0.get(usize::from(key[0]))?,
                op: crate::proto::record::Op::Del,
            })
        }
        fn snapshot_chunk(&self, _: &str, _: u64, _: usize, _: u64) -> (Vec<Record>, Option<u64>) {
            (Vec::new(), None)
        }
        fn wall_ms(&self) -> u64 {
            0
        }
        fn answer(&self, _: &crate::proto::message::Query) -> Vec<u8> {
            Vec::new()
        }
    }

    #[test]
    fn the_repair_resends_only_keys_that_still_hold_the_change_that_overflowed() {
        use crate::proto::endpoint::EndpointConfig;
        use crate::proto::version::NodeId;
        use crate::proto::wire::WireConfig;
        let (me, peer) = (NodeId(7), NodeId(9));
        let cfg = EndpointConfig::new(
            "n".into(),
            WireConfig::default(),
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let now = Instant::now();
        let mut ep = Endpoint::new(cfg, me, now);
        let v = |hlc: u64, node| Version { hlc, node };
        let cache: Arc<str> = "c".into();
        let b = Backlog::new(16, 1 << 20);
        // Every key overflowed at hlc 10 (key 0 at 5 first: the newer one is kept).
        b.mark_key(&cache, &[0], v(5, me));
        for k in 0..6u8 {
            b.mark_key(&cache, &[k], v(10, me));
        }
        let app = Owners(vec![
            v(10, me),   // 0: still the change that overflowed: re-sent
            v(11, peer), // 1: a peer's newer write overtook it: that peer sends it
            v(12, me),   // 2: a newer write of this node was queued and sent
            v(10, me),   // 3: as 0
            v(9, peer),  // 4: evicted here, then an older peer's write came: not ours to send
                         // 5: gone (evicted): nothing to send
        ]);
        repair_step(&mut ep, &app, &b, now, false);
        assert_eq!(ep.metrics().ae_repairs, 2, "keys 0 and 3 only");
        assert!(!b.has_dirty(), "every dirty key was dealt with");
    }

    fn put(k: u8) -> Item {
        Item::Rec {
            cache: "c".into(),
            rec: crate::proto::record::Record {
                key: vec![k].into(),
                version: Version::ZERO,
                op: crate::proto::record::Op::Del,
            },
        }
    }

    #[test]
    fn records_join_runs_of_their_cache_and_keep_their_order() {
        let q = ChangeQueue::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let rec = |k: u8| crate::proto::record::Record {
            key: vec![k].into(),
            version: Version::ZERO,
            op: crate::proto::record::Op::Del,
        };
        q.push_record(&a, rec(1));
        q.push_record(&a, rec(2));
        q.push_record(&b, rec(3));
        q.push(Item::Clear {
            cache: b.clone(),
            version: Version::ZERO,
        });
        q.push_record(&b, rec(4));
        q.push(Item::Rec {
            cache: b.clone(),
            rec: rec(5),
        });
        q.push_record(&a, rec(6));
        {
            let inner = q.inner.lock();
            assert_eq!(inner.runs.len(), 5, "a, b, the clear, b, a");
            assert_eq!(inner.recs.len(), 6);
        }
        assert_eq!(
            Arc::strong_count(&a),
            3,
            "one count per run of a, not per record"
        );
        let (mut staged, mut spare) = (VecDeque::new(), Spare::default());
        assert!(q.take_or_park(&mut staged, &mut spare, 0));
        let got: Vec<(String, Option<u8>)> = staged
            .iter()
            .map(|i| match i {
                Item::Rec { cache, rec } => (cache.to_string(), Some(rec.key[0])),
                Item::Clear { cache, .. } => (cache.to_string(), None),
                Item::Loading { cache, .. } => (cache.to_string(), None),
            })
            .collect();
        let want: Vec<(String, Option<u8>)> = [
            ("a", Some(1)),
            ("a", Some(2)),
            ("b", Some(3)),
            ("b", None),
            ("b", Some(4)),
            ("b", Some(5)),
            ("a", Some(6)),
        ]
        .iter()
        .map(|(c, k)| (c.to_string(), *k))
        .collect();
        assert_eq!(got, want);
        assert!(q.is_empty());
        // The swapped buffers come back empty and keep their room for the writers.
        assert!(spare.runs.is_empty() && spare.recs.is_empty());
        assert!(spare.recs.capacity() >= 6);
    }

    #[test]
    fn the_queue_is_taken_whole_and_wakes_only_a_parked_driver() {
        let q = ChangeQueue::default();
        let (mut staged, mut spare) = (VecDeque::new(), Spare::default());
        q.push(put(1));
        assert!(!q.inner.lock().parked);
        assert!(q.take_or_park(&mut staged, &mut spare, 0));
        assert_eq!(staged.len(), 1);
        assert!(q.is_empty());
        staged.clear();
        assert!(!q.take_or_park(&mut staged, &mut spare, 0), "empty: parks");
        assert!(q.inner.lock().parked);
        q.push(put(2));
        assert!(!q.inner.lock().parked, "the first push after parking wakes");
        q.push(put(3));
        // The wake left a permit: the driver's next wait returns at once.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), q.woken())
                .await
                .expect("woken by the push");
        });
        assert!(q.take_or_park(&mut staged, &mut spare, 0));
        let keys: Vec<u8> = staged
            .iter()
            .map(|i| match i {
                Item::Rec { rec, .. } => rec.key[0],
                _ => 0,
            })
            .collect();
        assert_eq!(keys, [2, 3], "in order");
    }

    #[test]
    fn a_driver_parked_on_a_lingering_message_wakes_only_when_the_changes_would_fill_it() {
        let q = ChangeQueue::default();
        let (mut staged, mut spare) = (VecDeque::new(), Spare::default());
        let c: Arc<str> = "c".into();
        let small = |k: u8| crate::proto::record::Record {
            key: vec![k].into(),
            version: Version::ZERO,
            op: crate::proto::record::Op::Del,
        };
        // A small record is charged 33 bytes: with 150 bytes of room, three fit with room
        // for a fourth, the fourth leaves none for a fifth.
        assert!(!q.take_or_park(&mut staged, &mut spare, 150));
        for k in 1..=3 {
            q.push_record(&c, small(k));
            assert!(
                q.inner.lock().parked,
                "record {k} joins the lingering message"
            );
        }
        // A driver that comes back before the deadline leaves them queued.
        assert!(!q.take_or_park(&mut staged, &mut spare, 150));
        assert!(staged.is_empty() && !q.is_empty());
        q.push_record(&c, small(4));
        assert!(
            !q.inner.lock().parked,
            "the fourth would fill it: the driver is woken"
        );
        assert!(q.take_or_park(&mut staged, &mut spare, 150));
        assert_eq!(staged.len(), 4);
        staged.clear();
        // At the deadline (no room: not lingering) it takes whatever is queued.
        q.push_record(&c, small(5));
        assert!(q.take_or_park(&mut staged, &mut spare, 0));
        staged.clear();
        // A record that leaves no room for another like it goes at once (as the core sends it).
        assert!(!q.take_or_park(&mut staged, &mut spare, 150));
        let big = crate::proto::record::Record {
            key: vec![9].into(),
            version: Version::ZERO,
            op: crate::proto::record::Op::Put {
                value: vec![0u8; 60].into(),
                ttl_ms: None,
            },
        };
        q.push_record(&c, big);
        assert!(!q.inner.lock().parked, "a large record wakes the driver");
        assert!(q.take_or_park(&mut staged, &mut spare, 150));
        staged.clear();
        // A change that is not a record wakes it at once too.
        assert!(!q.take_or_park(&mut staged, &mut spare, 150));
        q.push(Item::Clear {
            cache: c.clone(),
            version: Version::ZERO,
        });
        assert!(!q.inner.lock().parked, "a clear wakes the driver");
    }
}
