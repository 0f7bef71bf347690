//! Clocks that cannot poison the cluster, and replays refused for good (issue 13), on the
//! simulator's virtual time: a peer whose clock is an hour ahead, a forged version at
//! `u64::MAX`, and a departed node's recorded traffic replayed 70 s and 10 minutes after it
//! left (or was declared dead, or restarted).

use crate::support::sim as sim_support;

use std::time::Duration;

use mccache_proto::message::{Item, Msg};
use mccache_proto::record::{Op, Record};
use mccache_proto::version::{HLC_LOGICAL_BITS, NodeId, Version};
use mccache_proto::wire::Wire;
use sim_support::{BYTES, NetParams, Sim, Write, key_bytes, wire_config};

const HOUR_MS: i64 = 3_600_000;
/// The default `max_clock_skew`.
const SKEW_MS: u64 = 60_000;

fn net() -> NetParams {
    NetParams {
        loss: 0.0,
        dup: 0.0,
        delay: Duration::from_micros(100),
        jitter: Duration::ZERO,
        mtu: 1472,
    }
}

fn put(v: u8) -> Write {
    Write::Put(vec![v; 8])
}

/// Workload keys by name: "a" is key 0, "x" 1, "b" 2, "k" 3, "j" 4; `r<n>` is 100 + n.
const A: u32 = 0;
const X: u32 = 1;
const B: u32 = 2;
const K: u32 = 3;
const J: u32 = 4;

fn key(n: u32) -> Vec<u8> {
    key_bytes(BYTES, n)
}

fn dropped(sim: &Sim, i: usize, reason: &str) -> u64 {
    sim.endpoint_of(i)
        .metrics()
        .dropped
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Seeds: odd = plaintext, even = sealed (see `Sim::new`).
#[test]
fn a_peer_whose_clock_is_an_hour_ahead_cannot_win_writes_or_move_clocks() {
    for seed in [1u64, 2] {
        let mut sim = Sim::new(seed, 3, net());
        sim.set_clock_offset(2, HOUR_MS);
        sim.run_until(Duration::from_secs(2));
        sim.write(0, BYTES, A, put(1));
        sim.write(2, BYTES, X, put(2));
        sim.write(2, BYTES, A, put(3));
        sim.run_until(Duration::from_secs(4));
        for i in [0, 1] {
            let live = sim.live(i, BYTES);
            assert!(!live.contains_key(&key(X)), "seed {seed} node {i}");
            // The write from an hour ahead did not win over the honest one.
            assert_eq!(
                live[&key(A)].1,
                rmp_serde::to_vec(&vec![1u8; 8]).unwrap(),
                "seed {seed} node {i}"
            );
            // Nothing from the future reached the clock.
            let wall = sim.wall_of(i);
            assert!(
                sim.clock_seen(i) >> HLC_LOGICAL_BITS <= wall + SKEW_MS,
                "seed {seed} node {i}: clock moved to {}",
                sim.clock_seen(i) >> HLC_LOGICAL_BITS
            );
            let refused = dropped(&sim, i, "clock_skew") + dropped(&sim, i, "stale");
            assert!(refused > 0, "seed {seed} node {i}: refusals counted");
        }
        // Honest writes still converge between the honest nodes.
        sim.write(1, BYTES, B, put(4));
        sim.run_until(Duration::from_secs(5));
        assert_eq!(sim.live(0, BYTES), sim.live(1, BYTES), "seed {seed}");
        if seed % 2 == 1 {
            // Plaintext: heartbeats get through, so the node an hour ahead knows it is.
            let off = sim.endpoint_of(2).metrics().clock_offset_ms;
            assert!(off > HOUR_MS - 10_000, "seed {seed}: node 2 offset {off}");
            let off0 = sim.endpoint_of(0).metrics().clock_offset_ms;
            assert!(off0.abs() < HOUR_MS, "seed {seed}: node 0 offset {off0}");
        }
    }
}

#[test]
fn a_forged_version_at_u64_max_is_refused_and_time_goes_on() {
    let mut sim = Sim::new(1, 2, net()); // plaintext: anyone can forge
    sim.run_until(Duration::from_secs(1));
    sim.write(0, BYTES, K, put(1));
    sim.run_until(Duration::from_millis(1500));
    let mut forger = Wire::new(wire_config(1472, false), NodeId(0xbad));
    forger.set_wall_ms(sim.wall_of(0));
    for (seq, hlc) in [
        (1u64, u64::MAX),
        (2, u64::MAX - 1),
        (3, (sim.wall_of(0) + 2 * SKEW_MS) << HLC_LOGICAL_BITS),
    ] {
        let msg = Msg::Data {
            seq,
            items: vec![
                Item::Rec {
                    cache: BYTES.into(),
                    rec: Record {
                        key: key(K).into(),
                        version: Version::new(hlc, NodeId(0xbad)),
                        op: Op::Del,
                    },
                },
                Item::Clear {
                    cache: BYTES.into(),
                    version: Version::new(hlc, NodeId(0xbad)),
                },
            ],
        };
        for d in forger.encode(&msg.encode()).unwrap() {
            sim.inject(0, &d);
        }
    }
    assert_eq!(dropped(&sim, 0, "clock_skew"), 6);
    assert!(sim.live(0, BYTES).contains_key(&key(K)));
    assert!(sim.clock_seen(0) >> HLC_LOGICAL_BITS <= sim.wall_of(0) + SKEW_MS);
    // Later writes and deletes win and replicate as usual.
    sim.write(0, BYTES, K, put(2));
    sim.write(1, BYTES, J, put(3));
    sim.run_until(Duration::from_secs(2));
    for i in 0..2 {
        assert_eq!(
            sim.live(i, BYTES)[&key(K)].1,
            rmp_serde::to_vec(&vec![2u8; 8]).unwrap()
        );
        assert!(sim.live(i, BYTES).contains_key(&key(J)));
    }
}

/// How the recorded node stops.
#[derive(Clone, Copy, Debug)]
enum Exit {
    Leave,
    Crash,
    CrashAndRestart,
}

/// Records node 2's traffic while it writes, stops it, and replays everything into node 0
/// after `after`: every datagram is refused, nothing is applied, nobody rejoins.
fn replay_after(exit: Exit, after: Duration) {
    let mut sim = Sim::new(2, 3, net()); // sealed
    sim.run_until(Duration::from_secs(1));
    sim.record_from(2);
    for k in 0..20u8 {
        sim.write(2, BYTES, 100 + u32::from(k), put(k));
        sim.run_until(Duration::from_millis(1000 + 20 * u64::from(k)));
    }
    sim.run_until(Duration::from_secs(2));
    // Node 0 deletes some of them meanwhile: a replay must not bring them back.
    for k in 0..10u8 {
        sim.write(0, BYTES, 100 + u32::from(k), Write::Del);
    }
    sim.run_until(Duration::from_millis(2500));
    let recorded = sim.recorded();
    assert!(recorded.len() > 20, "{}", recorded.len());
    match exit {
        Exit::Leave => sim.leave(2),
        Exit::Crash => sim.crash(2),
        Exit::CrashAndRestart => {
            sim.crash(2);
            sim.run_until(Duration::from_secs(4));
            sim.restart(2);
        }
    }
    let left_at = sim.now;
    sim.run_until(left_at + Duration::from_secs(3));
    let members_before = sim.endpoint_of(0).peers().len();
    let applied_before = sim.endpoint_of(0).metrics().changes_applied;
    let live_before = sim.live(0, BYTES);
    sim.run_until(left_at + after);
    let refused_before = dropped(&sim, 0, "replay") + dropped(&sim, 0, "stale");
    for d in &recorded {
        sim.inject(0, d);
    }
    let m = sim.endpoint_of(0).metrics();
    let refused = dropped(&sim, 0, "replay") + dropped(&sim, 0, "stale") - refused_before;
    assert!(
        refused >= recorded.len() as u64,
        "{exit:?} after {after:?}: {refused} of {} refused ({:?})",
        recorded.len(),
        m.dropped
    );
    assert_eq!(
        m.changes_applied, applied_before,
        "{exit:?} after {after:?}"
    );
    assert_eq!(
        sim.endpoint_of(0).peers().len(),
        members_before,
        "{exit:?} after {after:?}: the departed node reappeared"
    );
    for k in 0..10u8 {
        assert!(!sim.live(0, BYTES).contains_key(&key(100 + u32::from(k))));
    }
    assert_eq!(sim.live(0, BYTES).len(), live_before.len());
}

#[test]
fn a_departed_nodes_recorded_traffic_is_refused_70_s_after_it_left() {
    for exit in [Exit::Leave, Exit::Crash, Exit::CrashAndRestart] {
        replay_after(exit, Duration::from_secs(70));
    }
}

#[test]
fn a_departed_nodes_recorded_traffic_is_refused_10_minutes_after_it_left() {
    for exit in [Exit::Leave, Exit::Crash, Exit::CrashAndRestart] {
        replay_after(exit, Duration::from_secs(600));
    }
}
