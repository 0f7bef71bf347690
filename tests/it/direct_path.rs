//! Over multicast, a message meant for one member goes to that member alone once a probe has
//! confirmed the path: a retransmission for the node that lost a datagram does not reach the
//! others as a duplicate. Three nodes on loopback, public API only; one node drops a tenth of
//! what it receives (`monkey_tantrum` on the receive side) and NAKs its peers for it.

use crate::support::cluster as cluster_support;

use std::time::Duration;

use cluster_support::{config, wait_until};
use mccache::{Cache, Node, TantrumSide};

fn start(lossy: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut cfg = config(77, 46177);
            if i == lossy {
                cfg.monkey_tantrum = 10.0;
                cfg.monkey_tantrum_side = TantrumSide::Recv;
            }
            cfg.node_name = Some(format!("d{i}"));
            Node::start(cfg).expect("node starts")
        })
        .collect();
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(20), || node.members().len() == 2),
            "membership forms"
        );
    }
    nodes
}

fn write(caches: &[Cache<u32, String>], round: u32, n: u32) {
    for (i, c) in caches.iter().enumerate().take(2) {
        for k in 0..n {
            c.insert(k * 2 + i as u32, format!("r{round}-{k}")).unwrap();
        }
    }
}

fn agree(caches: &[Cache<u32, String>]) -> bool {
    let first = caches[0].checksum();
    caches
        .iter()
        .all(|c| c.checksum() == first && c.len() == caches[0].len())
}

#[test]
fn retransmissions_for_a_lossy_member_reach_it_alone() {
    let nodes = start(2);
    let caches: Vec<Cache<u32, String>> =
        nodes.iter().map(|n| n.cache("direct").unwrap()).collect();
    // A first round: the lossy node NAKs, and every node learns and probes the others'
    // addresses meanwhile (one probe each, answered at once on loopback).
    write(&caches, 0, 2_000);
    assert!(
        wait_until(Duration::from_secs(30), || agree(&caches)),
        "the first round converges"
    );
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<_> = nodes.iter().map(|n| n.network_metrics()).collect();
    write(&caches, 1, 5_000);
    assert!(
        wait_until(Duration::from_secs(30), || agree(&caches)),
        "the second round converges"
    );
    let after: Vec<_> = nodes.iter().map(|n| n.network_metrics()).collect();
    let served: u64 = (0..2)
        .map(|i| after[i].retransmits_served - before[i].retransmits_served)
        .sum();
    assert!(
        after[2].retransmits_requested > before[2].retransmits_requested && served > 0,
        "the lossy node asked for retransmissions and got some ({served})"
    );
    for i in 0..2 {
        assert_eq!(
            after[i].duplicates - before[i].duplicates,
            0,
            "node {i} received none of the retransmissions meant for the lossy node"
        );
    }
}
