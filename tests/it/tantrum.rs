//! Fault injection on loopback: `monkey_tantrum` drops datagrams on purpose and the cluster
//! must still converge, repairing the losses with NAK retransmits (and anti-entropy).

use crate::support::cluster as cluster_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_support::{config, wait_until};
use mccache::{Cache, NetworkMetrics, Node, TantrumSide};

/// Shared keys written by every node (conflicting versions), per-node unique keys.
const SHARED: usize = 500;
const UNIQUE: usize = 500;
/// Every tenth unique key is deleted again by its writer.
const EXPECTED_LEN: usize = SHARED + 3 * (UNIQUE - UNIQUE / 10);

fn start(group: u8, port: u16, percent: f64, side: TantrumSide) -> Vec<Node> {
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut cfg = config(group, port);
            cfg.monkey_tantrum = percent;
            cfg.monkey_tantrum_side = side;
            cfg.node_name = Some(format!("t{i}"));
            Node::start(cfg).expect("node starts")
        })
        .collect();
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(20), || node.members().len() == 2),
            "membership forms despite the tantrum"
        );
    }
    nodes
}

/// Writes from all three nodes at once; then waits (bounded) for identical contents.
fn write_and_converge(nodes: &[Node]) -> (Duration, Vec<NetworkMetrics>) {
    let caches: Vec<Cache<String, String>> =
        nodes.iter().map(|n| n.cache("tantrum").unwrap()).collect();
    std::thread::scope(|s| {
        for (i, c) in caches.iter().enumerate() {
            s.spawn(move || {
                for j in 0..SHARED.max(UNIQUE) {
                    if j < SHARED {
                        c.insert(format!("k{j}"), format!("n{i}-{j}")).unwrap();
                    }
                    if j < UNIQUE {
                        c.insert(format!("u{i}-{j}"), format!("v{j}")).unwrap();
                    }
                    if j % 10 == 0 && j < UNIQUE {
                        c.remove(&format!("u{i}-{j}")).unwrap();
                    }
                }
            });
        }
    });
    let stopped = Instant::now();
    let converged = wait_until(Duration::from_secs(60), || {
        caches.iter().all(|c| c.len() == EXPECTED_LEN)
            && caches
                .windows(2)
                .all(|w| w[0].checksum() == w[1].checksum())
    });
    let took = stopped.elapsed();
    let contents: Vec<BTreeMap<String, String>> = caches
        .iter()
        .map(|c| c.entries().into_iter().collect())
        .collect();
    assert!(
        converged,
        "no convergence: lens {:?}, checksums {:?}",
        caches.iter().map(|c| c.len()).collect::<Vec<_>>(),
        caches.iter().map(|c| c.checksum()).collect::<Vec<_>>()
    );
    assert_eq!(contents[0], contents[1]);
    assert_eq!(contents[1], contents[2]);
    // Every shared key holds one node's last write.
    for j in 0..SHARED {
        let v = &contents[0][&format!("k{j}")];
        assert!(v.ends_with(&format!("-{j}")), "k{j} = {v}");
    }
    (took, nodes.iter().map(Node::network_metrics).collect())
}

fn sum(ms: &[NetworkMetrics], f: impl Fn(&NetworkMetrics) -> u64) -> u64 {
    ms.iter().map(f).sum()
}

#[test]
fn twenty_percent_loss_both_ways_is_repaired_by_naks() {
    let nodes = start(70, 46170, 20.0, TantrumSide::Both);
    let (took, ms) = write_and_converge(&nodes);
    let (drops, naks, served) = (
        sum(&ms, |m| m.tantrum_drops),
        sum(&ms, |m| m.retransmits_requested),
        sum(&ms, |m| m.retransmits_served),
    );
    eprintln!(
        "tantrum 20% both: converged {took:?} after writers stopped; tantrum_drops {drops}, \
         retransmits_requested {naks}, served {served}, ae_repairs {}",
        sum(&ms, |m| m.ae_repairs)
    );
    assert!(drops > 0, "the tantrum dropped datagrams");
    assert!(naks > 0, "losses were noticed and NAKed");
    assert!(served > 0, "NAKs were answered with retransmits");
    for (n, m) in nodes.iter().zip(&ms) {
        assert!(m.tantrum_drops > 0, "{} dropped nothing", n.id());
    }
}

#[test]
fn twenty_percent_loss_on_send_only_is_repaired_by_naks() {
    let nodes = start(71, 46171, 20.0, TantrumSide::Send);
    let (took, ms) = write_and_converge(&nodes);
    let (drops, naks) = (
        sum(&ms, |m| m.tantrum_drops),
        sum(&ms, |m| m.retransmits_requested),
    );
    eprintln!(
        "tantrum 20% send: converged {took:?} after writers stopped; tantrum_drops {drops}, \
         retransmits_requested {naks}, served {}",
        sum(&ms, |m| m.retransmits_served)
    );
    assert!(drops > 0, "the tantrum dropped datagrams");
    assert!(naks > 0, "losses were noticed and NAKed");
}
