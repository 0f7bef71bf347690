//! Seeded simulation of the unicast transport: every node sends one copy per address in its
//! own address book (the real `net::unicast::AddressBook`), starting from one seed each, with
//! loss drawn per directed link, and with a peer that some nodes can reach and others cannot.
//!
//! `MCCACHE_SIM_SEEDS=N` runs N seeds of the fan-out scenario (default 200).

use crate::support::sim as sim_support;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sim_support::{BYTES, NetParams, Sim, Write};

fn net(loss: f64) -> NetParams {
    NetParams {
        loss,
        dup: 0.0,
        delay: Duration::from_micros(100),
        jitter: Duration::from_micros(300),
        mtu: 1472,
    }
}

/// Every live node holds the same entries of `cache`, and it is not empty.
fn identical(sim: &Sim, nodes: &[usize], cache: &str) -> Result<(), String> {
    let first = sim.live(nodes[0], cache);
    if first.is_empty() {
        return Err("no entries".into());
    }
    for &i in &nodes[1..] {
        let other = sim.live(i, cache);
        if other != first {
            let differ = first
                .keys()
                .chain(other.keys())
                .filter(|k| first.get(*k) != other.get(*k))
                .count();
            return Err(format!(
                "node {} and node {i} differ on {differ} keys",
                nodes[0]
            ));
        }
    }
    Ok(())
}

fn writes(sim: &mut Sim, rng: &mut impl Rng, t: &mut Duration, n: usize, writers: &[usize]) {
    for j in 0..n {
        *t += Duration::from_micros(rng.random_range(0..3000));
        sim.run_until(*t);
        let i = writers[j % writers.len()];
        let key = rng.random_range(0..60);
        let write = if rng.random_bool(0.1) {
            Write::Del
        } else {
            Write::Put(vec![i as u8; rng.random_range(1..200)])
        };
        sim.write(i, BYTES, key, write);
    }
}

/// One seed: 3 to 7 nodes, node `i` knows only node `i - 1` (node 0 knows nobody), loss
/// 0–25 % drawn per directed link. Everybody must learn everybody and end identical.
fn fan_out_scenario(seed: u64) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x11);
    let n = rng.random_range(3..=7);
    let seeds: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            if i == 0 {
                vec![]
            } else {
                vec![rng.random_range(0..i)]
            }
        })
        .collect();
    let mut sim = Sim::new_unicast(seed, net(0.0), &seeds);
    for a in 0..n {
        for b in 0..n {
            let loss = [0.0, 0.02, 0.05, 0.1, 0.25][rng.random_range(0..5)];
            sim.unicast.as_mut().unwrap().link_loss.insert((a, b), loss);
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let mut t = Duration::from_millis(100);
    writes(&mut sim, &mut rng, &mut t, 300, &all);
    let deadline = t + Duration::from_secs(20);
    while t < deadline {
        t += Duration::from_millis(100);
        sim.run_until(t);
        let learned = all
            .iter()
            .all(|&i| sim.endpoint_of(i).peers().len() == n - 1);
        if learned && identical(&sim, &all, BYTES).is_ok() {
            let targets = sim.unicast_targets_of(0).len();
            if targets != n - 1 {
                return Err(format!(
                    "seed {seed}: node 0 sends to {targets} of {}",
                    n - 1
                ));
            }
            return Ok(());
        }
    }
    let members: Vec<usize> = all
        .iter()
        .map(|&i| sim.endpoint_of(i).peers().len())
        .collect();
    Err(format!(
        "seed {seed}: {n} nodes, seeds {seeds:?}: members {members:?}: {:?}",
        identical(&sim, &all, BYTES)
    ))
}

#[test]
fn unicast_fan_out_from_one_seed_converges_under_per_link_loss() {
    if let Ok(s) = std::env::var("MCCACHE_SIM_SEED") {
        fan_out_scenario(s.parse().unwrap()).unwrap();
        return;
    }
    let seeds: u64 = std::env::var("MCCACHE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let failed: Vec<String> = (0..seeds)
        .filter_map(|s| fan_out_scenario(s).err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {seeds} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn a_peer_reachable_by_some_nodes_only_still_converges() {
    // Node 3 and node 0 cannot reach each other (both directions); 1 and 2 reach everyone.
    let seeds = vec![vec![1], vec![0, 2, 3], vec![0, 1, 3], vec![1, 2, 0]];
    let mut sim = Sim::new_unicast(7, net(0.02), &seeds);
    {
        let u = sim.unicast.as_mut().unwrap();
        u.blocked.insert((0, 3));
        u.blocked.insert((3, 0));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut t = Duration::from_millis(300);
    writes(&mut sim, &mut rng, &mut t, 400, &[0, 3, 1]);
    let limit = t + Duration::from_secs(10);
    let all = [0, 1, 2, 3];
    while t < limit && identical(&sim, &all, BYTES).is_err() {
        t += Duration::from_millis(50);
        sim.run_until(t);
    }
    identical(&sim, &all, BYTES).unwrap();
    // 0 and 3 never became members of each other, so neither holds the other's window open;
    // 0's writes reached 3 (and back) through anti-entropy with 1 and 2.
    let ids: BTreeMap<usize, _> = all.iter().map(|&i| (i, sim.endpoint_of(i).id())).collect();
    assert!(sim.endpoint_of(0).peers().iter().all(|p| p.id != ids[&3]));
    assert!(sim.endpoint_of(3).peers().iter().all(|p| p.id != ids[&0]));
    assert_eq!(sim.endpoint_of(1).peers().len(), 3);
    let repairs: u64 = all
        .iter()
        .map(|&i| sim.endpoint_of(i).metrics().ae_repairs)
        .sum();
    assert!(
        repairs > 0,
        "the unreachable pair was repaired through the others"
    );
    sim.run_until(t + Duration::from_secs(2));
    assert!(sim.endpoint_of(0).is_quiet() && sim.endpoint_of(3).is_quiet());
}

#[test]
fn a_restarted_unicast_node_rejoins_through_its_seed() {
    let seeds = vec![vec![], vec![0], vec![1]];
    let mut sim = Sim::new_unicast(11, net(0.05), &seeds);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut t = Duration::from_millis(300);
    writes(&mut sim, &mut rng, &mut t, 200, &[0, 1, 2]);
    sim.crash(0);
    writes(&mut sim, &mut rng, &mut t, 200, &[1, 2]);
    t += Duration::from_secs(2); // node 0 is declared dead meanwhile
    sim.run_until(t);
    assert_eq!(sim.endpoint_of(2).peers().len(), 1);
    sim.restart(0); // it knows nobody: the others find it again from their books and seeds
    let limit = t + Duration::from_secs(10);
    while t < limit
        && !(identical(&sim, &[0, 1, 2], BYTES).is_ok()
            && (0..3).all(|i| sim.endpoint_of(i).peers().len() == 2))
    {
        t += Duration::from_millis(50);
        sim.run_until(t);
    }
    identical(&sim, &[0, 1, 2], BYTES).unwrap();
    assert!((0..3).all(|i| sim.endpoint_of(i).peers().len() == 2));
    // The others saw the crashed incarnation fail and the new one join.
    sim.check_members().unwrap();
}
