//! Failures a user can see, and cluster queries that hold up under loss: nodes on one group
//! that cannot open each other's datagrams say why (`Node::health`, `wait_ready`), a wrong
//! interface is an error naming the key and value, and `get_cluster_metrics` gets every
//! member's answer despite 10 % injected loss.
//!
//! Groups 239.255.101.x, ports 47100-47199, cluster names `t9-…`: this file's own range.

use std::net::Ipv4Addr;
use std::time::Duration;

use mccache::{Config, Error, Node, OpenFailure, Readiness, TantrumSide};

use crate::support::cluster as cluster_support;
use cluster_support::wait_until;

const T: Duration = Duration::from_secs(20);
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn config(group: u8, port: u16, name: &str) -> Config {
    let mut c = Config::default();
    c.interface = Ipv4Addr::LOCALHOST;
    c.multicast_ip = Ipv4Addr::new(239, 255, 101, group);
    c.multicast_port = port;
    c.daemon_sleep = 0.1;
    c.cache_pulse = 0.5;
    c.crypto_key = Some(KEY.to_string());
    c.cluster_name = format!("t9-{name}");
    c
}

/// Starts `a` and `b` on one group and checks that each reports `cause_a` (what `a` sees from
/// `b`) and `cause_b`, with the other's address, and that neither counts the other as a peer.
fn mismatch(a: Config, b: Config, cause_a: OpenFailure, cause_b: OpenFailure) {
    let na = Node::start(a).unwrap();
    let nb = Node::start(b).unwrap();
    for (node, cause) in [(&na, cause_a), (&nb, cause_b)] {
        assert!(
            wait_until(T, || node
                .health()
                .unopened
                .get(&cause)
                .copied()
                .unwrap_or(0)
                > 0),
            "{cause:?} counted: {:?}",
            node.health()
        );
        let h = node.health();
        assert_eq!(h.peers, 0);
        let last = h.last_unopened.expect("the last sender is kept");
        assert_eq!(last.cause, cause);
        assert_eq!(last.from.ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(node.wait_ready(T), Readiness::Alone);
    }
}

#[test]
fn other_key_is_named() {
    let a = config(20, 47120, "key");
    let mut b = a.clone();
    b.crypto_key = Some(mccache::generate_key());
    mismatch(a, b, OpenFailure::OtherKey, OpenFailure::OtherKey);
}

#[test]
fn other_cluster_name_is_named() {
    let a = config(21, 47121, "name-a");
    let mut b = a.clone();
    b.cluster_name = "t9-name-b".into();
    mismatch(a, b, OpenFailure::OtherCluster, OpenFailure::OtherCluster);
}

#[test]
fn sealed_and_plaintext_are_named() {
    let sealed = config(22, 47122, "plain");
    let mut plain = sealed.clone();
    plain.crypto_key = None;
    mismatch(
        sealed,
        plain,
        OpenFailure::PlaintextSender,
        OpenFailure::SealedSender,
    );
}

#[test]
fn health_of_a_good_pair() {
    let a = Node::start(config(23, 47123, "good")).unwrap();
    let b = Node::start(config(23, 47123, "good")).unwrap();
    assert!(wait_until(T, || a.members().len() == 1 && b.members().len() == 1));
    assert!(b.wait_ready(T).found_peers());
    let h = a.health();
    assert_eq!(h.peers, 1);
    assert!(!h.plaintext);
    assert!(h.unopened.is_empty(), "{h:?}");
    assert!(h.networked);
}

#[test]
fn wrong_interface_names_key_and_value() {
    // 192.0.2.1 (TEST-NET-1) is never an address of this host.
    let mut cfg = config(24, 47124, "iface");
    cfg.interface = Ipv4Addr::new(192, 0, 2, 1);
    let err = Node::start(cfg).unwrap_err();
    assert!(
        matches!(&err, Error::Config(e) if e.key() == Some("interface")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(r#"interface: "192.0.2.1" is not an address of this host"#),
        "{err}"
    );
}

/// With 10 % of the datagrams dropped on send and 10 % on receive (a request and its answer
/// each cross the network twice), 3 nodes: `get_cluster_metrics` answers for all 3 in at least
/// 99 of 100 calls, and says which member is missing when one is.
#[test]
fn cluster_metrics_complete_under_ten_percent_loss() {
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start({
                let mut c = config(25, 47125, "query");
                c.monkey_tantrum = 10.0;
                c.monkey_tantrum_side = TantrumSide::Both;
                c.node_name = Some(format!("q{i}"));
                c
            })
            .unwrap()
        })
        .collect();
    assert!(wait_until(T, || nodes
        .iter()
        .all(|n| n.members().len() == 2)));
    let c = nodes[0].cache::<u32, u32>("q").unwrap();
    for i in 0..100 {
        c.insert(i, i).unwrap();
    }
    let mut complete = 0;
    let mut incomplete = Vec::new();
    for call in 0..100 {
        let m = nodes[call % 3]
            .get_cluster_metrics(None, Duration::from_secs(2))
            .unwrap();
        if m.len() == 3 && m.is_complete() {
            complete += 1;
        } else {
            // What is missing is named: answers plus missing cover the live members.
            assert_eq!(m.len() + m.missing.len(), 3, "call {call}: {m:?}");
            incomplete.push(call);
        }
    }
    eprintln!("get_cluster_metrics under 10 % loss: {complete} of 100 calls complete");
    assert!(
        complete >= 99,
        "{complete} of 100 calls complete; incomplete: {incomplete:?}"
    );
    // Checksums too.
    let sums = nodes[1]
        .get_cluster_checksum("q", None::<&u32>, Duration::from_secs(2))
        .unwrap();
    assert_eq!(sums.len() + sums.missing.len(), 3);
}

/// A live member that does not answer (it hears nothing: 100 % loss on its receive side, while
/// its heartbeats still arrive) is listed as missing, by id and name, not silently left out.
#[test]
fn a_silent_member_is_listed_as_missing() {
    let a = Node::start(config(26, 47126, "silent")).unwrap();
    let deaf = Node::start({
        let mut c = config(26, 47126, "silent");
        c.node_name = Some("deaf".into());
        c.monkey_tantrum = 100.0;
        c.monkey_tantrum_side = TantrumSide::Recv;
        c
    })
    .unwrap();
    assert!(wait_until(T, || a.members().len() == 1));
    let m = a
        .get_cluster_metrics(None, Duration::from_millis(500))
        .unwrap();
    assert_eq!(m.len(), 1, "only the caller answered: {m:?}");
    assert!(!m.is_complete());
    assert_eq!(m.missing.len(), 1);
    assert_eq!(m.missing[0].id, deaf.id());
    assert_eq!(m.missing[0].name, "deaf");
}
