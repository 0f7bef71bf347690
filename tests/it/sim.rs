//! Seeded simulation of whole clusters: protocol cores over the real node application state
//! (`NodeApp` → `Registry` → typed stores and parked caches, see `tests/support/sim.rs`).
//!
//! Each seed builds a scenario — 2 to 5 nodes, loss 0–30 %, duplication, reordering jitter, a
//! random MTU, a cache mode (0, 1 or 2) per cache, caches some nodes open only mid-run (their
//! records park until then), partitions that heal, crashes and restarts, clean leaves, late
//! joiners, and a random workload of puts (some multi-fragment), deletes and clears through
//! typed caches (`Cache<String, Vec<u8>>`, `Cache<u32, u64>`) — runs it, heals the network,
//! lets it quiesce, and checks the invariants:
//! - opening a cache hands over every record parked for it (checked at each open);
//! - no node ever applies a put at or below a delete it applied (an oracle that never
//!   forgets deletes);
//! - mode 1: every live node holds identical entries (same keys, values and versions), and
//!   the newest write made by a surviving node is what every node ends with (a delete means
//!   absent everywhere);
//! - modes 0 and 2: a node holds a key only at the newest version of it (a miss is allowed:
//!   mode 0 updates only keys held, mode 2 drops peers' copies);
//! - membership: every live node counts every other live node as a member, saw each crashed
//!   node fail and each leaver leave, and became ready;
//! - buffers are back to baseline (nothing queued, in flight, missing or half-reassembled).
//!
//! `MCCACHE_SIM_SEEDS=N` runs N seeds (default 1000; the README's figure is for 10,000);
//! `MCCACHE_SIM_SEED=S` replays one seed.

use crate::support::sim as sim_support;

use std::collections::BTreeMap;
use std::time::Duration;

use mccache::CacheMode;
use mccache_proto::endpoint::MemberEvent;
use mccache_proto::record::Op;
use rand::Rng;
use sim_support::{BYTES, CACHES, NUMS, NetParams, Sim, Write};

/// Runs one seed; returns its trace (datagrams delivered and dropped, virtual time taken, and
/// node 0's final entries), which the same seed must reproduce exactly.
fn scenario(seed: u64) -> Result<String, String> {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5eed);
    let n = rng.random_range(2..=5);
    let net = NetParams {
        loss: [0.0, 0.01, 0.05, 0.1, 0.2, 0.3][rng.random_range(0..6)],
        dup: if rng.random_bool(0.3) { 0.05 } else { 0.0 },
        delay: Duration::from_micros(rng.random_range(20..500)),
        jitter: Duration::from_micros(if rng.random_bool(0.5) {
            rng.random_range(0..3000)
        } else {
            0
        }),
        mtu: [576, 1200, 1472, 9000][rng.random_range(0..4)],
    };
    let mode = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..10) {
        0..=1 => CacheMode::UpdateIfPresent,
        2..=3 => CacheMode::Invalidate,
        _ => CacheMode::Replicate,
    };
    let modes = [(BYTES, mode(&mut rng)), (NUMS, mode(&mut rng))];
    let desc = format!("seed {seed}: {n} nodes, {net:?}, modes {modes:?}");
    let mut sim = Sim::with_modes(seed, n, net.clone(), &modes);
    let late_joiner = rng.random_bool(0.3);
    let crash = rng.random_bool(0.3);
    // A clean leave: the node announces it, and comes back later as a new incarnation.
    let leave = rng.random_bool(0.15);
    let partition = rng.random_bool(0.3);
    // Some partitions last long (log-uniform, 1 s to 1 h of virtual time), far past the
    // tombstone lifetime (6 s here), with deletes and writes on both sides meanwhile.
    let long_partition = (partition && rng.random_bool(0.2))
        .then(|| Duration::from_secs_f64(3600f64.powf(rng.random::<f64>())));
    let ops = rng.random_range(50..300);
    let keys = rng.random_range(4..40u32);
    // When each node's application opens each cache (an op index; 0 = at once). A write to a
    // cache not open yet opens it first, as an application must.
    let mut opens: Vec<(usize, usize, &str)> = Vec::new();
    for i in 0..n {
        for cache in CACHES {
            let at = if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(0..ops)
            };
            opens.push((at, i, cache));
        }
    }
    let mut t = Duration::from_millis(50);
    let mut stopped: Option<usize> = None;
    let mut joined = false;
    let write = |sim: &mut Sim, rng: &mut rand::rngs::StdRng, i: usize, big: bool| {
        let cache = CACHES[rng.random_range(0..CACHES.len())];
        let key = rng.random_range(0..keys);
        match rng.random_range(0..100) {
            0..=69 => {
                let len = if big && rng.random_bool(0.05) {
                    rng.random_range(2_000..40_000)
                } else {
                    rng.random_range(0..200)
                };
                let value: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                sim.write(i, cache, key, Write::Put(value));
            }
            70..=97 => sim.write(i, cache, key, Write::Del),
            _ => sim.clear(i, cache),
        }
    };
    for op in 0..ops {
        t += Duration::from_micros(rng.random_range(0..20_000));
        sim.run_until(t);
        for &(_, i, cache) in opens.iter().filter(|(at, _, _)| *at == op) {
            if sim.alive(i) {
                sim.open(i, cache).map_err(|e| format!("{desc}: {e}"))?;
            }
        }
        if partition && op == ops / 4 {
            let groups: Vec<u8> = (0..sim.len()).map(|i| (i % 2) as u8).collect();
            sim.partition = Some(groups);
        }
        if partition && op == ops / 2 {
            if let Some(cut) = long_partition {
                // Writes and deletes spread over the cut, on both sides.
                let end = t + cut;
                let steps = 24u32;
                for s in 1..=steps {
                    sim.run_until(t + cut * s / steps);
                    let i = rng.random_range(0..sim.len());
                    let cache = CACHES[rng.random_range(0..CACHES.len())];
                    let key = rng.random_range(0..keys);
                    let w = if rng.random_bool(0.5) {
                        Write::Del
                    } else {
                        Write::Put(vec![s as u8; 16])
                    };
                    sim.write(i, cache, key, w);
                }
                t = end;
            }
            sim.partition = None;
        }
        if (crash || leave) && op == ops / 3 {
            let i = rng.random_range(0..sim.len());
            if crash {
                sim.crash(i);
            } else {
                sim.leave(i);
            }
            stopped = Some(i);
        }
        if let Some(i) = stopped {
            if op == 2 * ops / 3 {
                sim.restart(i);
                stopped = None;
            }
        }
        if late_joiner && !joined && op == ops / 2 {
            sim.add_node();
            joined = true;
        }
        let i = rng.random_range(0..sim.len());
        write(&mut sim, &mut rng, i, true);
    }
    if let Some(i) = stopped {
        sim.restart(i);
    }
    // Every application has opened its caches by now (whatever is still parked is handed
    // over here).
    for i in 0..sim.len() {
        for cache in CACHES {
            sim.open(i, cache).map_err(|e| format!("{desc}: {e}"))?;
        }
    }
    // Heal and quiesce: the network stays lossy, but no more partitions or crashes.
    sim.partition = None;
    let quiesce = t + Duration::from_secs(30);
    let mut check_at = t;
    // Phase 1: entries and membership converge while the network is still lossy.
    let result = loop {
        check_at += Duration::from_millis(500);
        sim.run_until(check_at);
        match check_entries(&sim).and_then(|()| sim.check_members()) {
            Ok(()) => break Ok(()),
            Err(e) if check_at >= quiesce => break Err(e),
            Err(_) => {}
        }
    };
    result.map_err(|e| format!("{desc}: {e}"))?;
    // Phase 2: the loss stops; every buffer drains back to its baseline. (While loss goes on,
    // periodic multi-fragment heartbeats always leave a few young partial reassemblies.)
    // This holds in mode 0 too: anti-entropy neither pulls nor pushes a key to a node that
    // lacks it there (it would skip it at every pulse).
    sim.net.loss = 0.0;
    sim.net.dup = 0.0;
    let drained = check_at + Duration::from_secs(5);
    loop {
        check_at += Duration::from_millis(500);
        sim.run_until(check_at);
        match check_entries(&sim)
            .and_then(|()| sim.check_members())
            .and_then(|()| check_quiet(&sim))
        {
            Ok(()) => {
                let entries: Vec<Live> = CACHES.iter().map(|c| sim.live(0, c)).collect();
                return Ok(format!(
                    "{} {} {:?} {entries:?}",
                    sim.delivered, sim.dropped, sim.now
                ));
            }
            Err(e) if check_at >= drained => return Err(format!("{desc}: {e}")),
            Err(_) => {}
        }
    }
}

type Live = BTreeMap<Vec<u8>, (mccache::Version, Vec<u8>)>;

fn check_entries(sim: &Sim) -> Result<(), String> {
    let live: Vec<usize> = (0..sim.len()).filter(|&i| sim.alive(i)).collect();
    // 0. no node ever took back a key it had deleted (at or below that delete's version)
    let violations = sim.violations();
    if !violations.is_empty() {
        return Err(format!("resurrection: {violations:?}"));
    }
    let held: Vec<(usize, String, Live)> = live
        .iter()
        .flat_map(|&i| CACHES.map(|c| (i, c.to_string(), sim.live(i, c))))
        .collect();
    // 1. mode 1: identical entries
    for cache in CACHES
        .into_iter()
        .filter(|c| sim.mode(c) == CacheMode::Replicate)
    {
        let first = sim.live(live[0], cache);
        for &i in &live[1..] {
            let other = sim.live(i, cache);
            if other != first {
                let differing: Vec<String> = first
                    .keys()
                    .chain(other.keys())
                    .filter(|k| first.get(*k) != other.get(*k))
                    .map(|k| {
                        let v = |m: &Live| m.get(k).map(|(v, val)| (*v, val.len()));
                        let rec = |n: usize| {
                            sim.record(n, cache, k)
                                .map(|r| (r.version, matches!(r.op, Op::Del)))
                        };
                        format!(
                            "{}: {:?} vs {:?} (records {:?} / {:?})",
                            String::from_utf8_lossy(k),
                            v(&first),
                            v(&other),
                            rec(live[0]),
                            rec(i)
                        )
                    })
                    .collect();
                return Err(format!(
                    "cache {cache}: node {} and node {i} differ on {} keys: {differing:?}",
                    live[0],
                    differing.len()
                ));
            }
        }
    }
    // 2. every mode: the nodes that hold a key hold the same version of it.
    let mut versions: BTreeMap<(&str, &[u8]), (usize, mccache::Version)> = BTreeMap::new();
    for (i, cache, entries) in &held {
        for (k, (v, _)) in entries {
            let (j, w) = *versions.entry((cache, k)).or_insert((*i, *v));
            if w != *v {
                return Err(format!(
                    "cache {cache}: key {:?} at {w:?} on node {j}, at {v:?} on node {i}",
                    String::from_utf8_lossy(k)
                ));
            }
        }
    }
    // 3. no resurrection: the newest surviving write per key decides the final state.
    let mut newest: BTreeMap<(String, Vec<u8>), (mccache::Version, bool)> = BTreeMap::new();
    for (cache, rec) in sim.surviving_writes() {
        let e = newest
            .entry((cache, rec.key.to_vec()))
            .or_insert((rec.version, false));
        if rec.version >= e.0 {
            *e = (rec.version, matches!(rec.op, Op::Del));
        }
    }
    for (i, cache, entries) in &held {
        for ((c, key), (version, deleted)) in newest.range((cache.clone(), Vec::new())..) {
            if c != cache {
                break;
            }
            match entries.get(key).map(|(v, _)| *v) {
                Some(v) if v < *version && *deleted => {
                    return Err(format!(
                        "deleted key {:?} reappeared in {cache} on node {i} at {v:?} (deleted at {version:?})",
                        String::from_utf8_lossy(key)
                    ));
                }
                Some(v) if v < *version => {
                    return Err(format!(
                        "key {:?} in {cache} on node {i} holds {v:?}, older than surviving write {version:?}",
                        String::from_utf8_lossy(key)
                    ));
                }
                None if !*deleted && sim.mode(cache) == CacheMode::Replicate => {
                    // Absent although a surviving node wrote it: only a newer delete or clear
                    // (perhaps by a node that crashed later) may explain that.
                    let newer_delete = sim.all_writes.iter().any(|(c, r)| {
                        c == cache
                            && r.key[..] == key[..]
                            && r.version > *version
                            && matches!(r.op, Op::Del)
                    });
                    let newer_clear = sim
                        .all_clears
                        .iter()
                        .any(|(c, v)| c == cache && v > version);
                    // Or doubt: at or below a tombstone horizon, a live entry a peer lacks is
                    // dropped rather than re-sent (a miss is safe, a resurrection is not).
                    let doubtful = *version <= sim.max_horizon(cache);
                    if !newer_delete && !newer_clear && !doubtful {
                        return Err(format!(
                            "key {:?} missing in {cache} on node {i} (written at {version:?})",
                            String::from_utf8_lossy(key)
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_quiet(sim: &Sim) -> Result<(), String> {
    let live: Vec<usize> = (0..sim.len()).filter(|&i| sim.alive(i)).collect();
    // 4. buffers back to baseline
    for &i in &live {
        let ep = sim.endpoint_of(i);
        let m = ep.metrics();
        if !ep.is_quiet() || m.reassemblies_in_progress != 0 || m.retransmit_buffer_msgs != 0 {
            return Err(format!(
                "node {i} not quiet: queued {} in flight {} reassembling {} retransmit buffer {}",
                ep.queued(),
                ep.in_flight(),
                m.reassemblies_in_progress,
                m.retransmit_buffer_msgs
            ));
        }
    }
    Ok(())
}

#[test]
fn simulated_clusters_converge() {
    if let Ok(seed) = std::env::var("MCCACHE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("MCCACHE_SIM_SEED is a number");
        scenario(seed).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let seeds: u64 = std::env::var("MCCACHE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = scenario(seed) {
            eprintln!(
                "FAILED {e}\n  replay: MCCACHE_SIM_SEED={seed} cargo test --release --test sim"
            );
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed: {:?}",
        failures.len(),
        failures
    );
}

#[test]
fn a_seed_replays_exactly() {
    // The stores hash with a fresh random seed each run; what the core sees must not depend
    // on it. Seeds with state transfer (late joiners, restarts) and big values among these.
    for seed in 0..12 {
        let first = scenario(seed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scenario(seed), Ok(first), "seed {seed} ran differently");
    }
}

#[test]
fn a_lost_message_is_repaired_by_nak_not_by_anti_entropy() {
    // Heavy loss, short run: completion must come from the reliable stream (retransmits).
    let net = NetParams {
        loss: 0.2,
        dup: 0.0,
        delay: Duration::from_micros(50),
        jitter: Duration::ZERO,
        mtu: 1472,
    };
    let mut sim = Sim::new(42, 3, net);
    sim.run_until(Duration::from_millis(400));
    for k in 0..50u32 {
        sim.write(0, BYTES, k, Write::Put(vec![k as u8; 10]));
    }
    sim.run_until(Duration::from_millis(450));
    for i in 1..3 {
        assert_eq!(
            sim.live(i, BYTES).len(),
            50,
            "node {i} within 50 ms (before any pulse)"
        );
    }
    assert!(sim.endpoint_of(0).metrics().retransmits_served > 0);
}

/// Runs until all live nodes hold identical entries and are quiet; returns the virtual time it
/// took from `from`, or `None` if not within `limit`.
fn time_to_converge(sim: &mut Sim, from: Duration, limit: Duration) -> Option<Duration> {
    let mut t = from;
    while t < from + limit {
        t += Duration::from_millis(50);
        sim.run_until(t);
        if check_entries(sim).is_ok() {
            return Some(t - from);
        }
    }
    None
}

fn bulk_writes(sim: &mut Sim, start: Duration, per_node: u32, rng: &mut impl Rng) -> Duration {
    let mut t = start;
    for j in 0..per_node {
        for i in 0..sim.len() {
            t += Duration::from_micros(30);
            sim.run_until(t);
            let key = rng.random_range(0..per_node * 2);
            let w = if j % 10 == 9 {
                Write::Del
            } else {
                Write::Put(vec![i as u8; 40])
            };
            sim.write(i, BYTES, key, w);
        }
    }
    t
}

#[test]
fn many_writes_under_5_and_20_percent_loss_converge_within_a_few_pulses() {
    for (seed, loss) in [(1u64, 0.05), (2, 0.20)] {
        let net = NetParams {
            loss,
            dup: 0.0,
            delay: Duration::from_micros(100),
            jitter: Duration::from_micros(200),
            mtu: 1472,
        };
        let mut sim = Sim::new(seed, 3, net);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        sim.run_until(Duration::from_millis(500));
        let end = bulk_writes(&mut sim, Duration::from_millis(500), 1000, &mut rng);
        let took = time_to_converge(&mut sim, end, Duration::from_secs(30));
        eprintln!("loss {loss}: converged {took:?} after the last write (pulse 500 ms)");
        // Within 4 pulses of quiesce (the pulse is 500 ms in the simulator).
        assert!(
            took.is_some_and(|d| d <= Duration::from_secs(2)),
            "loss {loss}: {took:?}"
        );
    }
}

#[test]
fn a_healed_partition_converges_within_two_pulses() {
    let net = NetParams {
        loss: 0.0,
        dup: 0.0,
        delay: Duration::from_micros(100),
        jitter: Duration::ZERO,
        mtu: 1472,
    };
    // Sealed (even seed): members draw on the answer pool. In plaintext, repair is paced by
    // what each requester sends (docs/PROTOCOL.md, "Bounded answers") and takes a few pulses.
    let mut sim = Sim::new(10, 3, net);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
    sim.run_until(Duration::from_millis(500));
    // Node 2 is cut off for 2 s (past suspicion and removal) while everyone writes.
    sim.partition = Some(vec![0, 0, 1]);
    let end = bulk_writes(&mut sim, Duration::from_millis(500), 300, &mut rng);
    sim.run_until(end.max(Duration::from_millis(2500)));
    let healed = sim.now;
    sim.partition = None;
    let took = time_to_converge(&mut sim, healed, Duration::from_secs(30));
    eprintln!("partition healed: converged {took:?} after the heal (pulse 500 ms)");
    assert!(
        took.is_some_and(|d| d <= Duration::from_secs(1)),
        "{took:?}"
    );
}

fn calm() -> NetParams {
    NetParams {
        loss: 0.0,
        dup: 0.0,
        delay: Duration::from_micros(100),
        jitter: Duration::ZERO,
        mtu: 1472,
    }
}

#[test]
fn a_cache_opened_mid_run_takes_over_what_was_parked() {
    let mut sim = Sim::new(3, 3, calm());
    sim.run_until(Duration::from_millis(300));
    for k in 0..40u32 {
        sim.write(0, NUMS, k, Write::Put(u64::from(k).to_le_bytes().to_vec()));
    }
    sim.run_until(Duration::from_millis(450));
    sim.write(1, NUMS, 7, Write::Del);
    sim.run_until(Duration::from_millis(600));
    // Node 2's application has not opened the cache: its records are parked, as peers see them.
    assert!(!sim.is_open(2, NUMS));
    assert_eq!(sim.live(2, NUMS).len(), 39);
    assert_eq!(sim.live(2, NUMS), sim.live(0, NUMS));
    // Opening it hands them over (Sim::open checks every parked record, tombstone included).
    sim.open(2, NUMS).unwrap();
    assert!(sim.is_open(2, NUMS));
    let nums = sim.nums(2);
    assert_eq!(nums.len(), 39);
    assert_eq!(nums.get(&5), Some(5));
    assert_eq!(nums.get(&7), None);
    assert_eq!(sim.live(2, NUMS), sim.live(0, NUMS));
    // And it replicates from then on like any open cache.
    sim.write(2, NUMS, 100, Write::Put(vec![9]));
    sim.run_until(Duration::from_millis(800));
    assert_eq!(sim.nums(0).get(&100), Some(9));
}

#[test]
fn membership_events_report_joins_leaves_and_failures() {
    let mut sim = Sim::new(5, 4, calm());
    sim.run_until(Duration::from_millis(500));
    sim.check_members().unwrap();
    let (leaver, crashed) = (sim.endpoint_of(3).id(), sim.endpoint_of(2).id());
    sim.leave(3);
    sim.crash(2);
    sim.run_until(Duration::from_secs(2));
    sim.check_members().unwrap();
    for i in 0..2 {
        let evs = sim.member_events(i);
        assert!(
            evs.contains(&MemberEvent::Left {
                id: leaver,
                failed: false
            }),
            "node {i}: {evs:?}"
        );
        assert!(
            evs.contains(&MemberEvent::Left {
                id: crashed,
                failed: true
            }),
            "node {i}: {evs:?}"
        );
    }
    // A restart is a new member; the old incarnation stays gone.
    sim.restart(2);
    sim.run_until(Duration::from_secs(3));
    sim.check_members().unwrap();
    let fresh = sim.endpoint_of(2).id();
    assert!(
        sim.member_events(0)
            .iter()
            .any(|e| matches!(e, MemberEvent::Joined { id, .. } if *id == fresh))
    );
}
