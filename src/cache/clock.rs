//! Time sources for the store: a monotonic clock for TTLs and windows, a wall clock for versions.
//!
//! The store never calls `Instant::now` or `SystemTime::now` itself; it asks a [`Clock`], so tests
//! can drive time by hand with a [`FakeClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of time: monotonic nanoseconds (TTL, callback window, spikes) and wall-clock
/// milliseconds since the Unix epoch (write versions and metadata).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic nanoseconds since an arbitrary origin; never goes backwards.
    fn now_nanos(&self) -> u64;
    /// Wall-clock milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;
    /// Wall-clock microseconds since the Unix epoch (replication lag). The default is
    /// [`Clock::wall_ms`] scaled.
    fn wall_us(&self) -> u64 {
        self.wall_ms().saturating_mul(1000)
    }
    /// Both readings at once (`(now_nanos, wall_ms)`); clocks may answer with one time read.
    fn now_both(&self) -> (u64, u64) {
        (self.now_nanos(), self.wall_ms())
    }
    /// A cheap, possibly slightly stale (never ahead) monotonic reading, used on the read hit
    /// path for last-lookup times. The default is exact.
    fn coarse_nanos(&self) -> u64 {
        self.now_nanos()
    }
    /// Both readings at the granularity of [`Clock::coarse_nanos`] (`(coarse_nanos, wall_ms)`),
    /// for writes that need no exact time. The default is [`Clock::now_both`].
    #[doc(hidden)]
    fn coarse_both(&self) -> (u64, u64) {
        self.now_both()
    }
    /// Called by the node's housekeeper every few milliseconds to bring
    /// [`Clock::coarse_nanos`] up to date. The default does nothing.
    fn refresh(&self) {}
    /// Brings [`Clock::coarse_nanos`] up to date from a source cheaper than an exact reading,
    /// if the clock has one (never ahead of [`Clock::now_nanos`]). A read hit calls it now and
    /// then, so that a stale coarse reading (a process resumed after a stop, before its
    /// housekeeper runs) is soon caught up. The default does nothing.
    #[doc(hidden)]
    fn catch_up(&self) {}
    /// The cell behind [`Clock::coarse_nanos`], if the clock keeps its coarse reading in one:
    /// a cache's read hit path then loads it directly instead of calling through the trait
    /// object. The default is `None`.
    #[doc(hidden)]
    fn coarse_cell(&self) -> Option<Arc<CoarseCell>> {
        None
    }
}

/// A clock's coarse monotonic reading kept in memory (see [`Clock::coarse_cell`]), in three
/// forms: nanoseconds, whole milliseconds (what a read hit compares expiries with), and
/// milliseconds modulo 2³¹ (never 0), the form in which a cache keeps the time of an entry's
/// last read hit. The millisecond forms are derived when the reading is stored, so the read
/// hit path loads them instead of dividing. They are stored one after the other (relaxed): a
/// reader may briefly see a new form next to an old one, never one ahead of the clock. The
/// cell has its cache line to itself (it is read by every hit).
///
/// A fourth form, [`CoarseCell::trusted_shl16`], bounds the clock from above: the reading plus
/// [`CoarseCell::TRUST`] while a housekeeper refreshes the cell, no bound (`u64::MAX`) while
/// none does; shifted left 16 bits with the low 16 set, so that a read hit compares it with
/// an expiry kept in the top 48 bits of a word in one test.
#[doc(hidden)]
#[derive(Debug)]
#[repr(align(64))]
pub struct CoarseCell {
    nanos: AtomicU64,
    /// `nanos` in whole milliseconds (rounded down).
    ms: AtomicU64,
    /// `(ms + TRUST) << 16 | 0xffff` while [`CoarseCell::ticking`], else `u64::MAX`.
    trusted: AtomicU64,
    /// [`ms31`] of `nanos`, with the top bit ([`CoarseCell::MARK`]) set.
    ms31: AtomicU32,
    /// How many housekeepers refresh the cell (every [`CoarseCell::TICK`] or sooner). While
    /// none does, nothing bounds how far behind the clock the reading may fall.
    tickers: AtomicU32,
}

impl Default for CoarseCell {
    fn default() -> Self {
        CoarseCell {
            nanos: AtomicU64::new(0),
            ms: AtomicU64::new(0),
            trusted: AtomicU64::new(u64::MAX),
            ms31: AtomicU32::new(ms31(0) | Self::MARK),
            tickers: AtomicU32::new(0),
        }
    }
}

impl CoarseCell {
    /// The coarse reading in monotonic nanoseconds.
    #[inline]
    pub fn nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }

    /// The coarse reading in whole monotonic milliseconds (rounded down).
    #[inline]
    pub fn ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }

    /// The coarse reading in monotonic milliseconds modulo 2³¹, never 0 (0 is taken to 1). The
    /// read path uses [`CoarseCell::marked_ms31`]; this form is for tests.
    #[cfg(test)]
    pub fn ms31(&self) -> u32 {
        self.marked_ms31() & !Self::MARK
    }

    /// [`CoarseCell::ms31`] with the top bit ([`CoarseCell::MARK`]) set, as kept: the word a
    /// cache stores as a read entry's referenced bit and last-lookup time, with no further
    /// instruction on the read hit path.
    #[inline]
    pub fn marked_ms31(&self) -> u32 {
        self.ms31.load(Ordering::Relaxed)
    }

    /// The top bit of [`CoarseCell::marked_ms31`].
    pub(crate) const MARK: u32 = 1 << 31;

    /// An upper bound of the clock in monotonic milliseconds, shifted left [`CoarseCell::SHL`]
    /// bits with the bits below set: while a housekeeper refreshes the cell, the reading plus
    /// [`CoarseCell::TRUST`]; while none does, `u64::MAX` (no bound). A word that keeps a time
    /// in ms in its top 48 bits is greater than it if and only if that time is after the
    /// bound.
    #[inline]
    pub fn trusted_shl16(&self) -> u64 {
        self.trusted.load(Ordering::Relaxed)
    }

    /// The shift of [`CoarseCell::trusted_shl16`].
    pub(crate) const SHL: u32 = 16;

    /// The longest a ticking housekeeper waits between two refreshes (its scheduling aside).
    pub(crate) const TICK: std::time::Duration = std::time::Duration::from_millis(10);

    /// How far (ms) a reading that a housekeeper refreshes may be taken to lag the clock: a
    /// hundred times [`CoarseCell::TICK`]. (A stopped process resumes with a reading that lags
    /// more: the read hits that trust it also catch it up now and then, see `store::reads`.)
    pub(crate) const TRUST: u64 = 1_000;

    /// Whether a housekeeper refreshes the cell (see [`CoarseCell::ticker`]).
    #[inline]
    pub(crate) fn ticking(&self) -> bool {
        self.tickers.load(Ordering::Relaxed) != 0
    }

    /// Registers a refresher of the cell every [`CoarseCell::TICK`] for as long as the
    /// returned guard lives.
    pub(crate) fn ticker(self: &Arc<Self>) -> Ticker {
        self.tickers.fetch_add(1, Ordering::SeqCst);
        self.publish_trusted(self.ms());
        Ticker(self.clone())
    }

    /// Sets [`CoarseCell::trusted_shl16`] from the reading `ms`, or to `u64::MAX` if no
    /// housekeeper ticks. Sequentially consistent with [`Ticker`]'s drop: a store made while
    /// the last ticker leaves is either followed by the ticker's `u64::MAX` or sees no ticker
    /// left and stores `u64::MAX` itself, so the bound never outlives the last ticker (but for
    /// the moment between the two stores).
    fn publish_trusted(&self, ms: u64) {
        let bound = ms.saturating_add(Self::TRUST);
        let shifted = match bound.checked_shl(Self::SHL) {
            Some(b) if b >> Self::SHL == bound => b | ((1 << Self::SHL) - 1),
            _ => u64::MAX,
        };
        self.trusted.store(shifted, Ordering::SeqCst);
        if self.tickers.load(Ordering::SeqCst) == 0 {
            self.trusted.store(u64::MAX, Ordering::SeqCst);
        }
    }

    /// Stores `nanos` (all three forms) if it starts a later millisecond than the reading held.
    /// Readings within the same millisecond are not stored: every thread that reads the clock
    /// may advance the cell, and a store on every reading would move the cell's cache line to
    /// that thread's core each time, away from every read hit, which loads it.
    fn advance(&self, nanos: u64) {
        let ms = nanos / 1_000_000;
        if self.ms.load(Ordering::Relaxed) < ms {
            self.nanos.store(nanos, Ordering::Relaxed);
            self.ms.store(ms, Ordering::Relaxed);
            self.ms31.store(ms31(nanos) | Self::MARK, Ordering::Relaxed);
            self.publish_trusted(ms);
        }
    }
}

/// A housekeeper's registration as the refresher of a [`CoarseCell`]; dropping it (the
/// housekeeper stopped) withdraws it.
#[derive(Debug)]
pub(crate) struct Ticker(Arc<CoarseCell>);

impl Drop for Ticker {
    fn drop(&mut self) {
        if self.0.tickers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.trusted.store(u64::MAX, Ordering::SeqCst);
        }
    }
}

/// Monotonic `nanos` as milliseconds modulo 2³¹, never 0 (0 is taken to 1): the form of
/// [`CoarseCell::ms31`].
#[inline]
pub(crate) fn ms31(nanos: u64) -> u32 {
    ((nanos / 1_000_000) as u32 & 0x7fff_ffff).max(1)
}

/// The real clock: `CLOCK_MONOTONIC` (the clock [`Instant`](std::time::Instant) reads) for
/// monotonic time, [`SystemTime`] for wall time.
///
/// Reading the OS clock costs tens of nanoseconds (about 30 ns on our VMs), so the clock
/// caches its latest reading for [`Clock::coarse_nanos`] (refreshed by every exact read in a
/// later millisecond, by the housekeeper every 10 ms and by read hits' [`Clock::catch_up`]
/// from `CLOCK_MONOTONIC_COARSE`), and derives wall time from the
/// monotonic reading plus an offset re-anchored to `SystemTime` at every refresh (a stepped
/// wall clock is picked up within one refresh).
#[derive(Debug)]
pub struct SystemClock {
    /// `CLOCK_MONOTONIC` in nanoseconds when the clock was made: its readings count from there.
    origin: u64,
    coarse: Arc<CoarseCell>,
    /// `wall ms - monotonic ms`.
    wall_offset_ms: AtomicU64,
}

fn system_wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        let c = SystemClock {
            origin: monotonic_nanos().unwrap_or(0),
            coarse: Arc::new(CoarseCell::default()),
            wall_offset_ms: AtomicU64::new(0),
        };
        c.refresh();
        c
    }

    fn read(&self) -> u64 {
        match monotonic_nanos() {
            Some(t) => {
                let now = t.saturating_sub(self.origin);
                self.coarse.advance(now);
                now
            }
            // Never on Linux; the last reading keeps time monotonic.
            None => self.coarse.nanos(),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (u64: 584 years), read as `Instant::now` reads it but
/// without its conversions (`Instant::elapsed` cost ~50 instructions around the system call
/// on every write with a TTL).
fn monotonic_nanos() -> Option<u64> {
    nanos_of(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: `CLOCK_MONOTONIC` as of the kernel's last timer
/// tick (a few ms behind at most, never ahead). The kernel keeps it up to date whether or not
/// this process runs, and reading it involves no time-stamp counter: an exact reading's
/// serializing `rdtsc` stalls the read hit path it interrupts (measured ~200 ns per reading
/// there, against ~25 ns in a loop of readings).
fn monotonic_coarse_nanos() -> Option<u64> {
    nanos_of(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
}

fn nanos_of(clock: nix::time::ClockId) -> Option<u64> {
    let t = nix::time::clock_gettime(clock).ok()?;
    Some((t.tv_sec() as u64).wrapping_mul(1_000_000_000) + t.tv_nsec() as u64)
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        self.read()
    }

    fn wall_ms(&self) -> u64 {
        self.now_both().1
    }

    fn wall_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    fn now_both(&self) -> (u64, u64) {
        let now = self.read();
        (
            now,
            self.wall_offset_ms
                .load(Ordering::Relaxed)
                .wrapping_add(now / 1_000_000),
        )
    }

    fn coarse_nanos(&self) -> u64 {
        self.coarse.nanos()
    }

    fn coarse_cell(&self) -> Option<Arc<CoarseCell>> {
        Some(self.coarse.clone())
    }

    fn catch_up(&self) {
        if let Some(t) = monotonic_coarse_nanos() {
            // The kernel's coarse clock counts from the same origin as `CLOCK_MONOTONIC` and
            // trails it, so this is never ahead of an exact reading.
            self.coarse.advance(t.saturating_sub(self.origin));
        }
    }

    fn coarse_both(&self) -> (u64, u64) {
        let now = self.coarse.nanos();
        (
            now,
            self.wall_offset_ms
                .load(Ordering::Relaxed)
                .wrapping_add(now / 1_000_000),
        )
    }

    fn refresh(&self) {
        let now = self.read();
        let wall = system_wall_ms();
        self.wall_offset_ms
            .store(wall.wrapping_sub(now / 1_000_000), Ordering::Relaxed);
    }
}

/// A clock that only moves when told to, for deterministic tests.
///
/// Wall time starts at 2023-11-14T22:13:20Z and advances together with monotonic time.
///
/// ```
/// use mccache::unstable::{Clock, FakeClock};
/// use std::time::Duration;
///
/// let clock = FakeClock::new();
/// let t0 = clock.now_nanos();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_nanos() - t0, 5_000_000);
/// ```
#[cfg(any(test, feature = "unstable"))]
#[derive(Debug)]
pub struct FakeClock {
    nanos: AtomicU64,
    wall_base_ms: u64,
}

#[cfg(any(test, feature = "unstable"))]
impl FakeClock {
    /// A fake clock at monotonic time 1 s.
    pub fn new() -> FakeClock {
        FakeClock {
            nanos: AtomicU64::new(1_000_000_000),
            wall_base_ms: 1_700_000_000_000,
        }
    }

    /// Moves both clocks forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "unstable"))]
impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

#[cfg(any(test, feature = "unstable"))]
impl Clock for FakeClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    fn wall_ms(&self) -> u64 {
        self.wall_base_ms + self.nanos.load(Ordering::SeqCst) / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn system_clock_is_monotonic_and_near_wall_time() {
        let c = SystemClock::new();
        let a = c.now_nanos();
        // A reading in a later millisecond than the last one stored refreshes the coarse
        // reading; one within the same millisecond does not.
        let b = loop {
            let b = c.now_nanos();
            if b / 1_000_000 > a / 1_000_000 {
                break b;
            }
        };
        assert_eq!(
            c.coarse_nanos(),
            b,
            "exact reads refresh the coarse reading"
        );
        let same_ms = c.now_nanos();
        assert!(same_ms >= b);
        if same_ms / 1_000_000 == b / 1_000_000 {
            assert_eq!(c.coarse_nanos(), b, "stored once per millisecond");
        }
        let b = c.coarse_nanos();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            c.coarse_nanos(),
            b,
            "coarse reading moves only when refreshed"
        );
        assert_eq!(c.coarse_both().0, b);
        c.refresh();
        assert!(c.coarse_nanos() >= b + 2_000_000);
        let cell = c.coarse_cell().unwrap();
        assert_eq!(cell.ms31(), ms31(cell.nanos()));
        assert_eq!(cell.ms(), cell.nanos() / 1_000_000);
        assert!(c.coarse_both().1.abs_diff(c.wall_ms()) < 5);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(c.wall_ms().abs_diff(wall) < 5_000);
    }

    #[test]
    fn ms31_wraps_at_2_31_ms_and_is_never_0() {
        let ms = 1_000_000u64;
        assert_eq!(ms31(0), 1);
        assert_eq!(ms31(999_999), 1);
        assert_eq!(ms31(5 * ms + 7), 5);
        assert_eq!(ms31(((1 << 31) + 9) * ms), 9);
        assert_eq!(ms31((1 << 32) * ms), 1);
        let cell = CoarseCell::default();
        cell.advance(42 * ms);
        cell.advance(41 * ms);
        assert_eq!((cell.nanos(), cell.ms31()), (42 * ms, 42));
        assert_eq!(cell.marked_ms31(), 42 | 1 << 31);
    }

    #[test]
    fn the_trusted_bound_stands_only_while_a_ticker_lives() {
        let ms = 1_000_000u64;
        let bound = |t: u64| (t + CoarseCell::TRUST) << CoarseCell::SHL | 0xffff;
        let cell = Arc::new(CoarseCell::default());
        cell.advance(5 * ms);
        assert_eq!(cell.trusted_shl16(), u64::MAX, "no ticker: no bound");
        let a = cell.ticker();
        assert_eq!(cell.trusted_shl16(), bound(5));
        cell.advance(7 * ms + 3);
        assert_eq!(cell.trusted_shl16(), bound(7));
        let b = cell.ticker();
        drop(a);
        cell.advance(8 * ms);
        assert_eq!(cell.trusted_shl16(), bound(8), "one ticker left");
        drop(b);
        assert_eq!(cell.trusted_shl16(), u64::MAX);
        cell.advance(9 * ms);
        assert_eq!(
            cell.trusted_shl16(),
            u64::MAX,
            "a later reading sets no bound"
        );
        assert_eq!(cell.ms(), 9);
    }

    #[test]
    fn fake_clock_moves_only_when_advanced() {
        let c = FakeClock::new();
        let (n, w) = (c.now_nanos(), c.wall_ms());
        assert_eq!(c.now_nanos(), n);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now_nanos(), n + 2_000_000_000);
        assert_eq!(c.wall_ms(), w + 2_000);
    }
}
