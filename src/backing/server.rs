//! One memcached server as the tier sees it: a bounded pool of connections, its health (marked
//! down after repeated failures, probed again after a period), and its counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conn::{Conn, Failure, Response};
use super::{ServerEvent, ServerMetrics};

/// Pool and health settings shared by the servers of one tier.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Deadline of one exchange (connect included).
    pub(crate) timeout: Duration,
    /// Connections per server, idle and busy together.
    pub(crate) pool_max: usize,
    /// Failures in a row that mark a server down.
    pub(crate) down_after: u32,
    /// How long a down server is skipped before one request probes it.
    pub(crate) retry_after: Duration,
    /// The longest value accepted from a server.
    pub(crate) max_value: usize,
}

/// Latency histogram: bucket `i` counts exchanges of `[2^i, 2^(i+1))` microseconds.
const BUCKETS: usize = 32;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    marked_down: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_max_us: AtomicU64,
    histogram: [AtomicU64; BUCKETS],
}

struct Health {
    failures: u32,
    /// When the server was marked down; `None` while up.
    down_since: Option<Instant>,
    /// When the current probe of a down server was handed out (a probe that never reports
    /// back, because its caller gave up before sending, expires after `retry_after`).
    probe_since: Option<Instant>,
    last_error: String,
}

/// One server.
pub(crate) struct Server {
    pub(crate) addr: String,
    /// Stable routing identity (hash of the address as configured).
    pub(crate) id_hash: u64,
    limits: Limits,
    idle: Mutex<Vec<Conn>>,
    returned: Condvar,
    /// Connections in existence (idle + in use).
    open: AtomicUsize,
    health: Mutex<Health>,
    stats: Stats,
}

/// What a failed exchange means for the caller.
pub(crate) enum Outcome {
    Ok(Vec<Response>),
    Failed,
}

impl Server {
    pub(crate) fn new(addr: &str, limits: Limits) -> Server {
        Server {
            addr: addr.to_string(),
            id_hash: super::codec::stable_hash(0x5e_7e_12, addr.as_bytes()),
            limits,
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            open: AtomicUsize::new(0),
            health: Mutex::new(Health {
                failures: 0,
                down_since: None,
                probe_since: None,
                last_error: String::new(),
            }),
            stats: Stats::default(),
        }
    }

    /// Whether requests may go to this server now: it is up, or it has been down for
    /// `retry_after` and no other request is probing it (this caller becomes the probe).
    pub(crate) fn usable(&self, now: Instant) -> bool {
        let mut h = self.health.lock();
        let Some(since) = h.down_since else {
            return true;
        };
        let retry = self.limits.retry_after;
        let due = now.saturating_duration_since(since) >= retry
            && h.probe_since
                .is_none_or(|p| now.saturating_duration_since(p) >= retry);
        if due {
            h.probe_since = Some(now);
        }
        due
    }

    /// Whether the server is marked down.
    pub(crate) fn is_down(&self) -> bool {
        self.health.lock().down_since.is_some()
    }

    /// Runs one exchange (`responses` answers expected); updates health and counters, and
    /// reports a down/up transition through `events`.
    pub(crate) fn exchange(
        &self,
        request: &[u8],
        responses: usize,
        events: &dyn Fn(ServerEvent),
    ) -> Outcome {
        let started = Instant::now();
        let deadline = started + self.limits.timeout;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self
            .checkout(deadline)
            .and_then(|mut c| {
                match c.exchange(request, responses, deadline, self.limits.max_value) {
                    Ok(r) => Ok((c, r)),
                    Err(e) => {
                        // `c` is dropped: it may be out of step.
                        self.open.fetch_sub(1, Ordering::AcqRel);
                        Err(e)
                    }
                }
            })
            .map(|(c, r)| {
                self.checkin(c);
                r
            });
        let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.stats.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.stats.latency_max_us.fetch_max(us, Ordering::Relaxed);
        let bucket = (64 - us.max(1).leading_zeros() as usize - 1).min(BUCKETS - 1);
        self.stats.histogram[bucket].fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(r) => {
                self.succeeded(events);
                Outcome::Ok(r)
            }
            Err(e) => {
                self.failed(&e, events);
                Outcome::Failed
            }
        }
    }

    /// Counts a hit or a miss answered by this server.
    pub(crate) fn count_read(&self, hit: bool) {
        let c = if hit {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn checkout(&self, deadline: Instant) -> Result<Conn, Failure> {
        let mut idle = self.idle.lock();
        loop {
            if let Some(c) = idle.pop() {
                return Ok(c);
            }
            if self.open.load(Ordering::Acquire) < self.limits.pool_max {
                self.open.fetch_add(1, Ordering::AcqRel);
                drop(idle);
                return Conn::connect(&self.addr, deadline).inspect_err(|_| {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    self.returned.notify_one();
                });
            }
            // The pool is at its cap: wait for a connection to come back (bounded).
            if self.returned.wait_until(&mut idle, deadline).timed_out() {
                return Err(Failure::Timeout);
            }
        }
    }

    fn checkin(&self, c: Conn) {
        self.idle.lock().push(c);
        self.returned.notify_one();
    }

    fn succeeded(&self, events: &dyn Fn(ServerEvent)) {
        let was_down = {
            let mut h = self.health.lock();
            h.failures = 0;
            h.probe_since = None;
            h.down_since.take().is_some()
        };
        if was_down {
            tracing::info!(server = %self.addr, "memcached server is up again");
            events(ServerEvent::Up {
                server: self.addr.clone(),
            });
        }
    }

    fn failed(&self, e: &Failure, events: &dyn Fn(ServerEvent)) {
        match e {
            Failure::Timeout => self.stats.timeouts.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.errors.fetch_add(1, Ordering::Relaxed),
        };
        // An I/O failure drops the connection; the others in the pool may be dead too (a
        // restarted server): close the idle ones so the next request dials afresh.
        let stale = std::mem::take(&mut *self.idle.lock());
        self.open.fetch_sub(stale.len(), Ordering::AcqRel);
        self.returned.notify_all();
        drop(stale);
        let went_down = {
            let mut h = self.health.lock();
            h.failures = h.failures.saturating_add(1);
            h.last_error = e.to_string();
            let probing = h.probe_since.take().is_some();
            if h.down_since.is_some() {
                if probing {
                    h.down_since = Some(Instant::now()); // the probe failed: wait again
                }
                false
            } else if h.failures >= self.limits.down_after {
                h.down_since = Some(Instant::now());
                true
            } else {
                false
            }
        };
        if went_down {
            self.stats.marked_down.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(server = %self.addr, error = %e, "memcached server marked down");
            events(ServerEvent::Down {
                server: self.addr.clone(),
                error: e.to_string(),
            });
        } else {
            tracing::debug!(server = %self.addr, error = %e, "memcached request failed");
        }
    }

    /// This server's counters.
    pub(crate) fn metrics(&self) -> ServerMetrics {
        let s = &self.stats;
        let h = self.health.lock();
        let counts: Vec<u64> = s
            .histogram
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let target = ((total as f64) * q).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= target {
                    return 1u64 << (i + 1); // the bucket's upper bound
                }
            }
            0
        };
        ServerMetrics {
            server: self.addr.clone(),
            up: h.down_since.is_none(),
            requests: s.requests.load(Ordering::Relaxed),
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            timeouts: s.timeouts.load(Ordering::Relaxed),
            marked_down: s.marked_down.load(Ordering::Relaxed),
            latency_avg_us: if total == 0 {
                0.0
            } else {
                s.latency_sum_us.load(Ordering::Relaxed) as f64 / total as f64
            },
            latency_p99_us: quantile(0.99),
            latency_max_us: s.latency_max_us.load(Ordering::Relaxed),
            connections: self.open.load(Ordering::Relaxed),
            last_error: (!h.last_error.is_empty()).then(|| h.last_error.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[test]
    fn marked_down_after_n_failures_then_one_probe_per_period() {
        // Nothing listens on this port: every exchange is refused.
        let s = Server::new(
            "127.0.0.1:47699",
            Limits {
                timeout: Duration::from_millis(200),
                pool_max: 2,
                down_after: 3,
                retry_after: Duration::from_millis(50),
                max_value: 1024,
            },
        );
        let events = StdMutex::new(Vec::new());
        let record = |e: ServerEvent| events.lock().unwrap().push(e);
        for i in 0..3 {
            assert!(s.usable(Instant::now()), "attempt {i}");
            assert!(matches!(s.exchange(b"mn\r\n", 1, &record), Outcome::Failed));
        }
        assert!(s.is_down());
        assert!(matches!(
            events.lock().unwrap().as_slice(),
            [ServerEvent::Down { .. }]
        ));
        let now = Instant::now();
        assert!(!s.usable(now), "retried before retry_after");
        let later = now + Duration::from_millis(60);
        assert!(s.usable(later), "no probe after retry_after");
        assert!(!s.usable(later), "two probes at once");
        // A probe whose caller never reported back expires.
        assert!(s.usable(later + Duration::from_millis(60)));
        let m = s.metrics();
        assert_eq!(
            (m.up, m.requests, m.errors, m.marked_down),
            (false, 3, 3, 1)
        );
        assert_eq!(m.connections, 0);
    }
}
