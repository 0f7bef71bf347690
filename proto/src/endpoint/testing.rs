//! What the unit tests of the core share: a small in-memory [`AppState`] and helpers that run
//! endpoints on explicit time and move datagrams between them by hand.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Endpoint, EndpointConfig};
use crate::message::Query;
use crate::record::{Op, OpRef, Record, RecordRef};
use crate::state::AppState;
use crate::sync::{Applied, KeyVersion, SYNC_BUCKETS, SyncDigest, entry_digest, key_bucket};
use crate::version::{HLC_LOGICAL_BITS, NodeId, Version};
use crate::wire::WireConfig;

/// Caches as plain maps of records (tombstones included), with a fixed wall clock.
#[derive(Clone, Debug)]
pub(super) struct MapApp {
    pub(super) caches: BTreeMap<String, BTreeMap<Vec<u8>, Record>>,
    pub(super) wall: u64,
    /// False: like an update-if-present cache, a `Put` for a key not held live is skipped.
    pub(super) adopts_absent: bool,
    /// Each [`AppState::apply_run`] call: the cache and the number of records.
    pub(super) runs: Vec<(String, usize)>,
    /// What [`AppState::clock`] says (`u64::MAX`, cannot say, unless a test sets it).
    pub(super) clock: u64,
    /// What [`AppState::snapshot_starts`] says (one stream unless a test sets it).
    pub(super) starts: Vec<u64>,
    /// How many records [`AppState::record`] has read.
    pub(super) reads: std::cell::Cell<u64>,
}

impl Default for MapApp {
    fn default() -> MapApp {
        MapApp {
            clock: u64::MAX,
            starts: vec![0],
            caches: BTreeMap::new(),
            wall: 1_700_000_000_000,
            adopts_absent: true,
            runs: Vec::new(),
            reads: std::cell::Cell::new(0),
        }
    }
}

impl MapApp {
    /// Holds `rec` in `cache` (a local write, not replicated).
    pub(super) fn put(&mut self, cache: &str, rec: Record) {
        self.caches
            .entry(cache.to_string())
            .or_default()
            .insert(rec.key.to_vec(), rec);
    }
}

impl AppState for MapApp {
    fn apply(&mut self, cache: &str, record: RecordRef<'_>, _origin: NodeId) -> Applied {
        let map = self.caches.entry(cache.to_string()).or_default();
        let held_live = |r: Option<&Record>| r.is_some_and(|r| matches!(r.op, Op::Put { .. }));
        match map.get(record.key) {
            Some(old) if old.version >= record.version => Applied::Stale,
            old if !self.adopts_absent
                && matches!(record.op, OpRef::Put { .. })
                && !held_live(old) =>
            {
                Applied::Skipped
            }
            _ => {
                map.insert(record.key.to_vec(), record.to_record());
                Applied::Changed
            }
        }
    }

    fn apply_run(
        &mut self,
        cache: &str,
        records: &[RecordRef<'_>],
        origin: NodeId,
        each: &mut dyn FnMut(Applied),
    ) {
        self.runs.push((cache.to_string(), records.len()));
        for record in records {
            each(self.apply(cache, *record, origin));
        }
    }

    fn apply_clear(&mut self, cache: &str, version: Version, _origin: NodeId) {
        if let Some(map) = self.caches.get_mut(cache) {
            map.retain(|_, r| r.version > version);
        }
    }

    fn adopts_absent_keys(&self, _cache: &str) -> bool {
        self.adopts_absent
    }

    fn clear_floor(&self, _cache: &str) -> Version {
        Version::ZERO
    }

    fn caches(&self) -> Vec<String> {
        self.caches.keys().cloned().collect()
    }

    fn digest(&self, cache: &str) -> Option<SyncDigest> {
        let map = self.caches.get(cache)?;
        let mut d = SyncDigest {
            count: 0,
            checksum: 0,
            buckets: vec![0; SYNC_BUCKETS],
        };
        for r in map.values() {
            if let Op::Put { value, .. } = &r.op {
                let h = entry_digest(&r.key, value, r.version);
                d.count += 1;
                d.checksum = d.checksum.wrapping_add(h);
                let b = &mut d.buckets[key_bucket(&r.key)];
                *b = b.wrapping_add(h);
            }
        }
        Some(d)
    }

    fn bucket_versions(&self, cache: &str, bucket: usize) -> Vec<KeyVersion> {
        self.caches
            .get(cache)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| key_bucket(&r.key) == bucket)
            .map(|r| KeyVersion {
                key: r.key.to_vec(),
                version: r.version,
                deleted: !matches!(r.op, Op::Put { .. }),
            })
            .collect()
    }

    fn record(&self, cache: &str, key: &[u8]) -> Option<Record> {
        self.reads.set(self.reads.get() + 1);
        self.caches.get(cache)?.get(key).cloned()
    }

    fn snapshot_chunk(
        &self,
        cache: &str,
        cursor: u64,
        max_bytes: usize,
        until: u64,
    ) -> (Vec<Record>, Option<u64>) {
        let all: Vec<&Record> = self
            .caches
            .get(cache)
            .into_iter()
            .flatten()
            .map(|(_, r)| r)
            .collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = cursor as usize;
        while i < all.len() && (out.is_empty() || bytes + all[i].weight() <= max_bytes) {
            if all[i].version.hlc <= until {
                bytes += all[i].weight();
                out.push(all[i].clone());
            }
            i += 1;
        }
        (out, (i < all.len()).then_some(i as u64))
    }

    fn clock(&self) -> u64 {
        self.clock
    }

    fn snapshot_starts(&self, _cache: &str) -> Vec<u64> {
        self.starts.clone()
    }

    fn wall_ms(&self) -> u64 {
        self.wall
    }

    fn answer(&self, query: &Query) -> Vec<u8> {
        format!("{query:?}").into_bytes()
    }
}

/// A version written at wall time `ms` by `node`.
pub(super) fn version_at(ms: u64, node: NodeId) -> Version {
    Version::new(ms << HLC_LOGICAL_BITS, node)
}

/// A plaintext put of `key` at wall time `ms` by `node`.
pub(super) fn put_at(key: &[u8], value: &[u8], ms: u64, node: NodeId) -> Record {
    Record {
        key: key.to_vec().into(),
        version: version_at(ms, node),
        op: Op::Put {
            value: value.to_vec().into(),
            ttl_ms: None,
        },
    }
}

/// Small timings: heartbeat 100 ms, pulse 1 s, plaintext.
pub(super) fn config() -> EndpointConfig {
    EndpointConfig::new(
        "test".into(),
        WireConfig::default(),
        Duration::from_millis(100),
        Duration::from_secs(1),
    )
}

/// Node `id`, started at `now`.
pub(super) fn endpoint(id: u64, now: Instant) -> Endpoint {
    Endpoint::new(config(), NodeId(id), now)
}

/// Every datagram `ep` has to send at `now`.
pub(super) fn drain(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while ep.poll_transmit(now, &mut buf).is_some() {
        out.push(buf.clone());
    }
    out
}

/// Moves every datagram `from` has to send at `now` into `to`; returns how many.
pub(super) fn deliver(
    from: &mut Endpoint,
    to: &mut Endpoint,
    app: &mut dyn AppState,
    now: Instant,
) -> usize {
    let sent = drain(from, now);
    for d in &sent {
        to.handle_datagram(now, d, app);
    }
    sent.len()
}

/// A peer entry as a test puts it in a table by hand: heard at `now`, its stream known from 0.
pub(super) fn peer_heard_at(now: Instant) -> super::membership::Peer {
    super::membership::Peer {
        name: String::new(),
        last_seen: now,
        suspect: false,
        acked: 0,
        recv: crate::reliability::RecvStream::new(0),
        stream_known: true,
        digest_answered_at: None,
        received_since_ack: 0,
        ack_sent: 0,
        tails: (0, 0),
        clock_offset_ms: None,
    }
}

/// Nodes 1 and 2 with empty caches, each a member of the other's table, nothing in flight.
pub(super) fn joined_pair(now: Instant) -> (Endpoint, Endpoint, MapApp, MapApp) {
    let (mut a, mut b) = (endpoint(1, now), endpoint(2, now));
    let (mut app_a, mut app_b) = (MapApp::default(), MapApp::default());
    a.handle_timeout(now, &mut app_a);
    b.handle_timeout(now, &mut app_b);
    for _ in 0..3 {
        deliver(&mut a, &mut b, &mut app_b, now);
        deliver(&mut b, &mut a, &mut app_a, now);
    }
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    (a, b, app_a, app_b)
}
