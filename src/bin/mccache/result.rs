//! The JSON a `mccache node` run writes, and that `mccache report` reads back.

use std::collections::BTreeMap;

use mccache::{CacheMetrics, NetworkMetrics};
use serde::{Deserialize, Serialize};

/// Everything one node reports at the end of a stress run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeResult {
    /// The node id (hex).
    pub node_id: String,
    /// The node name (`node_name`, default `host:pid`).
    pub node_name: String,
    /// The tag that names this node's private keys (`P<tag>-n`).
    pub tag: u32,
    /// The workload settings.
    pub settings: Settings,
    /// Milliseconds from `Node::start` until the node was ready (its state transfer done, or
    /// no peer found) and the workload started.
    pub ready_ms: u64,
    /// Wall clock (ms since the epoch) when the workload started.
    pub started_ms: u64,
    /// Wall clock when the workload stopped (the ancestor's "Done testing at").
    pub done_ms: u64,
    /// Wall clock when the result was taken (after quiesce or its timeout).
    pub finished_ms: u64,
    /// Whether the cluster quiesced (nothing in flight, checksums agree) before the timeout.
    pub quiesced: bool,
    /// Wall clock at the end of the first of the agreeing checks that confirmed the quiesce:
    /// by then every node had answered this node's checksum (`None` if it did not quiesce, or a result
    /// written before this field existed).
    pub identical_ms: Option<u64>,
    /// This node's own checksum of the workload's cache, read every
    /// [`CHECKSUM_SAMPLE_MS`] from the moment its writer stopped until its quiesce ended: one
    /// entry per change (the first reading of each new value). Read locally, it shows when
    /// the cache reached its final state without the round trips of the quiesce's checks
    /// (empty in results written before this field existed).
    pub checksums: Vec<ChecksumChange>,
    /// Peers seen as members when the workload stopped.
    pub peers_at_done: usize,
    /// Operations by kind.
    pub ops: OpCounts,
    /// Per cache: checksum, entries, per-key state, metrics.
    pub caches: BTreeMap<String, CacheResult>,
    /// Network counters at the end.
    pub network: NetworkMetrics,
    /// Replication lag of remote inserts/updates seen here.
    pub lag: LagSummary,
    /// Reads the lag listener made to see the values' send times (they count as lookups in
    /// the cache metrics).
    pub listener_reads: u64,
    /// One sample per second of the workload.
    pub samples: Vec<Sample>,
}

/// The workload knobs of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Shared keys are `K000-0 ..= K000-keys`.
    pub keys: u32,
    /// Seconds between operations (skewed ±35 %).
    pub aperture: f64,
    /// `small`, `large` or `mixed`.
    pub mix: String,
    /// Seconds of workload.
    pub duration: f64,
    /// Random seed.
    pub seed: u64,
    /// Percent of datagrams dropped on purpose.
    pub tantrum: f64,
    /// Whether the ancestor's breathers were on (`--breather`).
    #[serde(default)]
    pub breather: bool,
}

/// Operations by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpCounts {
    /// Inserts of absent keys.
    pub inserts: u64,
    /// Updates of present keys.
    pub updates: u64,
    /// Deletes of present keys.
    pub deletes: u64,
    /// Reads.
    pub gets: u64,
    /// Reads that found the key.
    pub hits: u64,
    /// Inserts, updates or deletes that found the key in the wrong state and did nothing.
    pub noops: u64,
    /// Breathers (pauses of 150 or 300 ms).
    pub breathers: u64,
    /// Operations that returned an error.
    pub errors: u64,
}

impl OpCounts {
    /// Writes that changed the cache.
    pub fn writes(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }

    /// All operations but breathers.
    pub fn total(&self) -> u64 {
        self.writes() + self.gets + self.noops + self.errors
    }
}

/// One cache's end state on one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheResult {
    /// `Cache::checksum`.
    pub checksum: u64,
    /// Live entries.
    pub entries: u64,
    /// Per live key: version and crc.
    pub keys: BTreeMap<String, KeyState>,
    /// The cache's counters.
    pub metrics: CacheMetrics,
}

/// One key's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyState {
    /// HLC timestamp of the version.
    pub hlc: u64,
    /// Writer node id (hex).
    pub node: String,
    /// Wall-clock ms of the write (from the version).
    pub written_ms: u64,
    /// crc32(key ‖ value ‖ version), `Cache::key_checksum`.
    pub crc: u32,
}

/// Replication lag (µs) of remote inserts and updates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LagSummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
    /// `[upper bound µs (a power of two), count]`, non-empty buckets only.
    pub histogram: Vec<(u64, u64)>,
}

/// How often a node reads its own checksum after its writer stopped (the resolution of the
/// report's `converged:` line).
pub const CHECKSUM_SAMPLE_MS: u64 = 10;

/// A node's checksum of the workload's cache, first read with this value at `at_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChecksumChange {
    /// Wall clock (ms since the epoch) of the reading.
    pub at_ms: u64,
    /// The checksum read.
    pub checksum: u64,
}

/// One second of the workload.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Sample {
    /// Wall clock (ms since the epoch) at the end of the second.
    pub at_ms: u64,
    /// Operations in the second (breathers excluded).
    pub ops: u64,
    /// Writes in the second.
    pub writes: u64,
    /// Lag samples in the second.
    pub lag_n: u64,
    /// Lag p50 in the second (µs).
    pub lag_p50_us: u64,
    /// Lag p99 in the second (µs).
    pub lag_p99_us: u64,
}
