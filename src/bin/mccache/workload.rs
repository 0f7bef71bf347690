//! The stress workload shared by `mccache node` and `mccache demo`: McCache's op mix over shared
//! and node-private keys, replication-lag measurement, per-second samples and the end state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mccache::{Cache, ChangeKind, Node, Origin};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::result::{CacheResult, KeyState, LagSummary, OpCounts, Sample};

/// The cache the workload writes.
pub const CACHE: &str = "stress";

/// A stress value: who wrote it, when it was sent (µs since the epoch, for lag), a counter and
/// a payload of the chosen size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Val {
    /// The writer's tag.
    pub tag: u32,
    /// Wall clock at the write, µs since the epoch.
    pub sent_us: u64,
    /// The writer's op counter.
    pub counter: u64,
    /// Filler.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Data size mix (the ancestor's `TEST_DATA_SIZE_MIX` 1, 2, 3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// A few dozen bytes.
    Small,
    /// About 9 KB (several datagrams per value).
    Large,
    /// Either, at random.
    Mixed,
}

impl Mix {
    /// The name used in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Mix::Small => "small",
            Mix::Large => "large",
            Mix::Mixed => "mixed",
        }
    }

    fn payload_len(self, rng: &mut StdRng) -> usize {
        let large = match self {
            Mix::Small => false,
            Mix::Large => true,
            Mix::Mixed => rng.random_bool(0.5),
        };
        if large {
            rng.random_range(8_000..10_000)
        } else {
            rng.random_range(8..64)
        }
    }
}

/// Wall clock in µs since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Wall clock in ms since the epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// The knobs of one workload.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Keys `0..=keys` exist in the shared and in the private key space.
    pub keys: u32,
    /// Seconds between operations (skewed ±35 % in 5 % steps), kept on a schedule so that
    /// small apertures mean what they say; 0 = flat out.
    pub aperture: f64,
    /// The ancestor's breathers: one operation in 21 is a pause of 0.15 s (0.3 s below an
    /// aperture of 0.01 s). Off by default: with them every node does at most ≈ 70 ops/s,
    /// whatever the aperture. For side-by-side runs with McCache.
    pub breather: bool,
    /// Value sizes.
    pub mix: Mix,
    /// How long to run.
    pub duration: Duration,
    /// Random seed.
    pub seed: u64,
    /// Names the private keys `P<tag>-n` and marks the values.
    pub tag: u32,
}

/// Operation counters, shared with the progress display and the sampler.
#[derive(Debug, Default)]
pub struct Counters {
    inserts: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    gets: AtomicU64,
    hits: AtomicU64,
    noops: AtomicU64,
    breathers: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// A snapshot.
    pub fn snapshot(&self) -> OpCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpCounts {
            inserts: l(&self.inserts),
            updates: l(&self.updates),
            deletes: l(&self.deletes),
            gets: l(&self.gets),
            hits: l(&self.hits),
            noops: l(&self.noops),
            breathers: l(&self.breathers),
            errors: l(&self.errors),
        }
    }
}

/// Most lag samples kept for the exact percentiles (the histogram counts every sample).
const MAX_LAG_SAMPLES: usize = 2_000_000;
/// Power-of-two histogram buckets: up to 2^40 µs.
const LAG_BUCKETS: usize = 41;

/// Replication lag samples: all of them (bounded), the current second's, and a histogram.
#[derive(Debug)]
pub struct Lag {
    inner: Mutex<LagInner>,
    /// Reads the listener made.
    pub reads: AtomicU64,
}

#[derive(Debug)]
struct LagInner {
    all: Vec<u64>,
    window: Vec<u64>,
    histogram: [u64; LAG_BUCKETS],
    count: u64,
    max: u64,
}

impl Default for Lag {
    fn default() -> Lag {
        Lag {
            inner: Mutex::new(LagInner {
                all: Vec::new(),
                window: Vec::new(),
                histogram: [0; LAG_BUCKETS],
                count: 0,
                max: 0,
            }),
            reads: AtomicU64::new(0),
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl Lag {
    /// Records one sample.
    pub fn record(&self, us: u64) {
        let mut g = self.inner.lock();
        g.count += 1;
        g.max = g.max.max(us);
        let bucket = (64 - us.leading_zeros() as usize).min(LAG_BUCKETS - 1);
        g.histogram[bucket] += 1;
        if g.all.len() < MAX_LAG_SAMPLES {
            g.all.push(us);
        }
        if g.window.len() < MAX_LAG_SAMPLES {
            g.window.push(us);
        }
    }

    /// Takes the current window: (samples, p50, p99).
    pub fn take_window(&self) -> (u64, u64, u64) {
        let mut w = std::mem::take(&mut self.inner.lock().window);
        w.sort_unstable();
        (w.len() as u64, percentile(&w, 0.50), percentile(&w, 0.99))
    }

    /// Every sample kept (bounded), in arrival order.
    pub fn samples(&self) -> Vec<u64> {
        self.inner.lock().all.clone()
    }

    /// The summary over the whole run.
    pub fn summary(&self) -> LagSummary {
        let g = self.inner.lock();
        let mut all = g.all.clone();
        all.sort_unstable();
        LagSummary {
            count: g.count,
            p50_us: percentile(&all, 0.50),
            p99_us: percentile(&all, 0.99),
            max_us: g.max,
            histogram: g
                .histogram
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (if i == 0 { 0 } else { 1u64 << i }, *n))
                .collect(),
        }
    }

    /// Registers the listener on `cache` that measures lag: for every remote insert or update
    /// it reads the value (if the event's version is still current) and records now − sent.
    pub fn listen(self: &Arc<Self>, cache: &Cache<String, Val>) {
        let lag = self.clone();
        let reader = cache.clone();
        cache.on_change(move |e| {
            if !matches!(e.origin, Origin::Remote(_))
                || !matches!(e.kind, ChangeKind::Insert | ChangeKind::Update)
            {
                return;
            }
            lag.reads.fetch_add(1, Ordering::Relaxed);
            if let Some((v, version)) = reader.get_with_version(&e.key)
                && version == e.version
            {
                lag.record(now_us().saturating_sub(v.sent_us));
            }
        });
    }
}

/// Per-second samples of a running workload.
#[derive(Debug, Default)]
pub struct Sampler {
    samples: Mutex<Vec<Sample>>,
    last: Mutex<OpCounts>,
}

impl Sampler {
    /// Takes one sample (call once a second).
    pub fn tick(&self, counters: &Counters, lag: &Lag) {
        let now = counters.snapshot();
        let mut last = self.last.lock();
        let (lag_n, lag_p50_us, lag_p99_us) = lag.take_window();
        self.samples.lock().push(Sample {
            at_ms: now_ms(),
            ops: now.total() - last.total(),
            writes: now.writes() - last.writes(),
            lag_n,
            lag_p50_us,
            lag_p99_us,
        });
        *last = now;
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().clone()
    }
}

/// Runs the workload on `cache` until `spec.duration` passes or `stop` is set.
pub fn run(cache: &Cache<String, Val>, spec: &Spec, counters: &Counters, stop: &AtomicBool) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let end = Instant::now() + spec.duration;
    let mut counter = 0u64;
    let bump = |a: &AtomicU64| {
        a.fetch_add(1, Ordering::Relaxed);
    };
    let mut due = Instant::now();
    let mut ops = 0u32;
    while !stop.load(Ordering::Relaxed) {
        // The clock is read once per 64 operations when flat out.
        if (spec.aperture > 0.0 || ops % 64 == 0) && Instant::now() >= end {
            break;
        }
        ops = ops.wrapping_add(1);
        if spec.aperture > 0.0 {
            // The ancestor's snooze: the aperture skewed in 5 % steps, 65 % to 135 %, kept on
            // a schedule (sleep only when ahead of it) so that the sleep's own overhead does
            // not stretch small apertures; a writer that fell far behind does not burst.
            let skew = 0.65 + 0.05 * f64::from(rng.random_range(0..=14u32));
            due += Duration::from_secs_f64(spec.aperture * skew);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else if now - due > Duration::from_millis(100) {
                due = now;
            }
        }
        let n = rng.random_range(0..=spec.keys);
        let key = if rng.random_range(0..21) == 0 {
            format!("P{}-{n}", spec.tag)
        } else {
            format!("K000-{n}")
        };
        counter += 1;
        let value = |rng: &mut StdRng| Val {
            tag: spec.tag,
            sent_us: now_us(),
            counter,
            payload: {
                let len = spec.mix.payload_len(rng);
                let mut p = vec![0u8; len];
                rng.fill(&mut p[..]);
                p
            },
        };
        let first = if spec.breather { 0 } else { 1 };
        match rng.random_range(first..=20u32) {
            0 => {
                bump(&counters.breathers);
                let pause = if spec.aperture >= 0.01 { 0.15 } else { 0.3 };
                std::thread::sleep(
                    Duration::from_secs_f64(pause).min(end - Instant::now().min(end)),
                );
            }
            1 | 3 | 5 | 7 => match cache.add(key, value(&mut rng)) {
                Ok(true) => bump(&counters.inserts),
                Ok(false) => bump(&counters.noops),
                Err(e) => {
                    tracing::warn!(error = %e, "insert failed");
                    bump(&counters.errors)
                }
            },
            2 | 4 | 6 | 8 => match cache.replace(key, value(&mut rng)) {
                Ok(Some(_)) => bump(&counters.updates),
                Ok(None) => bump(&counters.noops),
                Err(e) => {
                    tracing::warn!(error = %e, "update failed");
                    bump(&counters.errors)
                }
            },
            9 => match cache.remove(&key) {
                Ok(Some(_)) => bump(&counters.deletes),
                Ok(None) => bump(&counters.noops),
                Err(e) => {
                    tracing::warn!(error = %e, "delete failed");
                    bump(&counters.errors)
                }
            },
            _ => {
                bump(&counters.gets);
                if cache.get(&key).is_some() {
                    bump(&counters.hits);
                }
            }
        }
    }
}

/// The end state of one cache: checksum, entries, per-key version and crc, metrics.
pub fn cache_state(cache: &Cache<String, Val>) -> CacheResult {
    let mut keys = BTreeMap::new();
    for k in cache.keys() {
        if let (Some(md), Some(crc)) = (cache.metadata(&k), cache.key_checksum(&k)) {
            keys.insert(
                k,
                KeyState {
                    hlc: md.version.hlc,
                    node: md.version.node.to_string(),
                    written_ms: md.version.millis(),
                    crc,
                },
            );
        }
    }
    CacheResult {
        checksum: cache.checksum(),
        entries: keys.len() as u64,
        keys,
        metrics: cache.metrics(),
    }
}

/// Whether nothing is in flight on `node`: no outbound queue, no reassembly, no peer lag.
pub fn idle(node: &Node) -> bool {
    let m = node.network_metrics();
    m.outbound_queue == 0 && m.reassemblies_in_progress == 0 && m.peer_lag.values().all(|l| *l == 0)
}
