//! Time sources for the store: a monotonic clock for TTLs and windows, a wall clock for versions.
//!
//! The store never calls `Instant::now` or `SystemTime::now` itself; it asks a [`Clock`], so tests
//! can drive time by hand with a [`FakeClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time: monotonic nanoseconds (TTL, callback window, spikes) and wall-clock
/// milliseconds since the Unix epoch (write versions and metadata).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic nanoseconds since an arbitrary origin; never goes backwards.
    fn now_nanos(&self) -> u64;
    /// Wall-clock milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;
}

/// The real clock: [`Instant`] for monotonic time, [`SystemTime`] for wall time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        // u64 nanoseconds cover 584 years of process uptime.
        self.origin.elapsed().as_nanos() as u64
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, for deterministic tests.
///
/// Wall time starts at 2023-11-14T22:13:20Z and advances together with monotonic time.
///
/// ```
/// use mccache::cache::clock::{Clock, FakeClock};
/// use std::time::Duration;
///
/// let clock = FakeClock::new();
/// let t0 = clock.now_nanos();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_nanos() - t0, 5_000_000);
/// ```
#[derive(Debug)]
pub struct FakeClock {
    nanos: AtomicU64,
    wall_base_ms: u64,
}

impl FakeClock {
    /// A fake clock at monotonic time 1 s.
    pub fn new() -> FakeClock {
        FakeClock {
            nanos: AtomicU64::new(1_000_000_000),
            wall_base_ms: 1_700_000_000_000,
        }
    }

    /// Moves both clocks forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

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

    #[test]
    fn system_clock_is_monotonic_and_near_wall_time() {
        let c = SystemClock::new();
        let a = c.now_nanos();
        let b = c.now_nanos();
        assert!(b >= a);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(c.wall_ms().abs_diff(wall) < 5_000);
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
