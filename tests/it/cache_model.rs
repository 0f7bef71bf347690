//! Model test: random operation sequences on a fake clock, checked against a HashMap with
//! expiry times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mccache::unstable::FakeClock;
use mccache::{Cache, Config, Error};
use proptest::prelude::*;

type K = u8;
type V = Vec<u8>;

#[derive(Clone, Debug)]
enum Op {
    Insert(K, V),
    InsertTtl(K, V, u64),
    Get(K),
    Remove(K),
    Add(K, V),
    Replace(K, V),
    Touch(K, u64),
    Clear,
    Advance(u64),
    Cas(K, bool, V),
}

fn op(keys: u8, max_val: usize) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    let v = prop::collection::vec(any::<u8>(), 0..max_val);
    prop_oneof![
        4 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (k.clone(), v.clone(), 0..3000u64).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        4 => k.clone().prop_map(Op::Get),
        2 => k.clone().prop_map(Op::Remove),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Add(k, v)),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Replace(k, v)),
        1 => (k.clone(), 0..3000u64).prop_map(|(k, t)| Op::Touch(k, t)),
        1 => Just(Op::Clear),
        2 => (0..2500u64).prop_map(Op::Advance),
        1 => (k, any::<bool>(), v).prop_map(|(k, cur, v)| Op::Cas(k, cur, v)),
    ]
}

/// The reference: key -> (value, expiry in fake ms or None).
#[derive(Default)]
struct Model {
    now: u64,
    map: HashMap<K, (V, Option<u64>)>,
}

impl Model {
    fn live(&self, k: &K) -> Option<&V> {
        match self.map.get(k) {
            Some((v, exp)) if exp.is_none_or(|e| e > self.now) => Some(v),
            _ => None,
        }
    }

    fn put(&mut self, k: K, v: V, ttl_ms: Option<u64>) {
        let exp = ttl_ms.filter(|t| *t > 0).map(|t| self.now + t);
        self.map.insert(k, (v, exp));
    }

    fn live_entries(&self) -> Vec<(K, V)> {
        let mut out: Vec<(K, V)> = self
            .map
            .keys()
            .filter_map(|k| self.live(k).map(|v| (*k, v.clone())))
            .collect();
        out.sort();
        out
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const CACHE_TTL_MS: u64 = 5000;

/// Runs `ops`; with `exact`, the cache must equal the model (no eviction possible).
fn run(ops: Vec<Op>, config: Config, exact: bool) -> Result<(), TestCaseError> {
    let clock = Arc::new(FakeClock::new());
    let node = mccache::unstable::start_with_clock(config.clone(), clock.clone()).unwrap();
    let c: Cache<K, V> = node.cache("m").unwrap();
    let mut m = Model::default();
    let max_entries = config.cache_max as u64;
    let max_bytes = config.cache_size;
    let mut grown_by_update = false;

    for op in ops {
        // `metrics()` sweeps expired entries, so read it only when the op is about to update a
        // live key; other ops must meet expired entries unswept.
        let op_key = match &op {
            Op::Insert(k, _) | Op::InsertTtl(k, _, _) | Op::Replace(k, _) | Op::Touch(k, _) => {
                Some(*k)
            }
            Op::Cas(k, _, _) => Some(*k),
            _ => None,
        };
        let evictions_before = match op_key {
            Some(k) if c.metadata(&k).is_some() => {
                let m = c.metrics();
                m.evictions_capacity + m.evictions_bytes
            }
            _ => 0,
        };
        let present_before = |k: &K| c.metadata(k).is_some();
        let mut update = false;
        let mut new_key = false;
        match op.clone() {
            Op::Insert(k, v) => {
                update = present_before(&k);
                new_key = !update;
                let old = c.insert(k, v.clone()).unwrap();
                if exact {
                    prop_assert_eq!(old.as_ref(), m.live(&k));
                }
                m.put(k, v, Some(CACHE_TTL_MS));
            }
            Op::InsertTtl(k, v, t) => {
                update = present_before(&k);
                new_key = !update;
                c.insert_with_ttl(k, v.clone(), Duration::from_millis(t))
                    .unwrap();
                m.put(k, v, Some(t));
            }
            Op::Get(k) => {
                let contains = c.contains_key(&k);
                if exact {
                    prop_assert_eq!(contains, m.live(&k).is_some());
                } else if contains {
                    prop_assert!(m.live(&k).is_some());
                }
                let got = c.get(&k);
                if exact {
                    prop_assert_eq!(got.as_ref(), m.live(&k));
                } else if let Some(v) = &got {
                    prop_assert_eq!(
                        Some(v),
                        m.live(&k),
                        "returned value is not the last written"
                    );
                }
            }
            Op::Remove(k) => {
                let old = c.remove(&k).unwrap();
                if exact {
                    prop_assert_eq!(old.as_ref(), m.live(&k));
                } else if let Some(v) = &old {
                    prop_assert_eq!(Some(v), m.live(&k));
                }
                m.map.remove(&k);
            }
            Op::Add(k, v) => {
                let stored = c.add(k, v.clone()).unwrap();
                new_key = stored;
                if exact {
                    prop_assert_eq!(stored, m.live(&k).is_none());
                }
                if stored {
                    m.put(k, v, Some(CACHE_TTL_MS));
                }
            }
            Op::Replace(k, v) => {
                update = present_before(&k);
                let old = c.replace(k, v.clone()).unwrap();
                if exact {
                    prop_assert_eq!(old.as_ref(), m.live(&k));
                }
                if old.is_some() {
                    m.put(k, v, Some(CACHE_TTL_MS));
                }
            }
            Op::Touch(k, t) => {
                update = present_before(&k);
                let touched = c.touch(&k, Duration::from_millis(t)).unwrap();
                if exact {
                    prop_assert_eq!(touched, m.live(&k).is_some());
                }
                if touched {
                    let v = m.live(&k).cloned().unwrap_or_default();
                    m.put(k, v, Some(t));
                }
            }
            Op::Clear => {
                c.clear();
                m.map.clear();
                grown_by_update = false;
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(ms));
                m.now += ms;
                // No checks now: `len`/`metrics` sweep expired entries, and the next op must
                // meet them unswept to test that reads and writes never see them.
                continue;
            }
            Op::Cas(k, use_current, v) => {
                let current = c.metadata(&k).map(|md| md.version);
                update = current.is_some();
                let expected = if use_current { current } else { None };
                match c.compare_and_swap(k, expected, v.clone()) {
                    Ok(_) => {
                        prop_assert_eq!(expected, current);
                        new_key = current.is_none();
                        m.put(k, v, Some(CACHE_TTL_MS));
                    }
                    Err(Error::VersionMismatch { found, .. }) => {
                        prop_assert_ne!(expected, current);
                        prop_assert_eq!(found, current);
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
        }
        let metrics = c.metrics();
        let evictions = metrics.evictions_capacity + metrics.evictions_bytes;
        if update {
            prop_assert_eq!(evictions, evictions_before, "an update evicted ({:?})", op);
            grown_by_update = true;
        }
        if new_key {
            grown_by_update = false;
        }
        // Caps after every op.
        let len = c.len() as u64;
        prop_assert!(len <= max_entries, "len {} > cap {}", len, max_entries);
        prop_assert_eq!(len, c.keys().len() as u64);
        let bytes = c.metrics().bytes;
        if !grown_by_update {
            prop_assert!(
                bytes <= max_bytes,
                "bytes {} > cap {} after {:?}",
                bytes,
                max_bytes,
                op
            );
        }
        // Every live cache entry is the model's live value.
        for (k, v) in c.entries() {
            prop_assert_eq!(Some(&v), m.live(&k), "cache holds a stale or expired value");
        }
        if exact {
            prop_assert_eq!(evictions, 0);
            let mut entries = c.entries();
            entries.sort();
            prop_assert_eq!(entries, m.live_entries());
        }
    }

    // Checksum: the documented formula, and another store fed the same entries in reverse order.
    let mut recomputed = 0u64;
    let mut records = Vec::new();
    let erased = mccache::unstable::erased_cache(&node, "m").unwrap();
    for k in c.keys() {
        let crc = c.key_checksum(&k).unwrap();
        recomputed = recomputed.wrapping_add(splitmix64(crc as u64));
        records.push(erased.record(&rmp_serde::to_vec(&k).unwrap()).unwrap());
    }
    prop_assert_eq!(c.checksum(), recomputed);
    // Roomier caps: the source may sit above cache_size after a growing update.
    let mut roomy = config;
    roomy.cache_max = 1000;
    roomy.cache_size = 1 << 20;
    let other = mccache::unstable::start_with_clock(roomy, clock.clone()).unwrap();
    let c2: Cache<K, V> = other.cache("m").unwrap();
    let e2 = mccache::unstable::erased_cache(&other, "m").unwrap();
    for r in records.iter().rev() {
        e2.apply_remote(r.view(), node.id());
    }
    prop_assert_eq!(c2.len(), c.len());
    prop_assert_eq!(c2.checksum(), c.checksum());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Fewer distinct keys than `cache_max` and bytes far under `cache_size`: the cache must
    /// equal the model exactly, nothing is ever evicted.
    #[test]
    fn matches_model_exactly_without_pressure(ops in prop::collection::vec(op(16, 24), 1..120)) {
        let mut config = Config::default();
        config.cache_ttl = CACHE_TTL_MS as f64 / 1000.0;
        config.cache_max = 32;
        config.cache_size = 1 << 20;
        run(ops, config, true)?;
    }

    /// Tight caps: values returned are still the last written and never expired, and the caps
    /// hold after every op (bytes may overshoot only through updates).
    #[test]
    fn respects_caps_under_pressure(ops in prop::collection::vec(op(40, 30), 1..150)) {
        let mut config = Config::default();
        config.cache_ttl = CACHE_TTL_MS as f64 / 1000.0;
        config.cache_max = 8;
        config.cache_size = 160;
        run(ops, config, false)?;
    }
}
