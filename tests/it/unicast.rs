//! The unicast transport on loopback: one port per node (127.0.0.1:P), configured the way an
//! application would (`Config`, `mccache.toml`-style keys, `MCCACHE_*` in separate processes).
//! Ports 47200-47299, cluster names `t11-*`.

use crate::support::cluster as cluster_support;
use crate::support::stress_nodes;

use std::net::SocketAddr;
use std::time::Duration;

use cluster_support::{KEY, wait_until};
use mccache::TransportKind;
use mccache::{Config, Node};

const T: Duration = Duration::from_secs(15);

/// A unicast node on 127.0.0.1:`port` knowing `peers`.
fn config(cluster: &str, port: u16, peers: &[String]) -> Config {
    let mut c = cluster_support::config(1, 47299);
    c.transport = TransportKind::Unicast;
    c.bind_port = Some(port);
    c.peers = peers.to_vec();
    c.cluster_name = format!("t11-{cluster}");
    c.discovery_interval = 0.5;
    c
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn one_seed_is_enough_members_learn_each_others_addresses() {
    // A chain: b knows a, c knows b only. c must learn a's address from the membership.
    let a = Node::start(config("chain", 47200, &[])).unwrap();
    let b = Node::start(config("chain", 47201, &[addr(47200)])).unwrap();
    let c = Node::start(config("chain", 47202, &[addr(47201)])).unwrap();
    for n in [&a, &b, &c] {
        assert!(
            wait_until(T, || n.members().len() == 2),
            "every node sees the two others: {:?}",
            n.members()
        );
    }
    // Every member shows the address it is heard from.
    let seen: Vec<Option<SocketAddr>> = a.members().iter().map(|m| m.addr).collect();
    assert!(
        wait_until(T, || {
            let mut v: Vec<_> = a.members().iter().filter_map(|m| m.addr).collect();
            v.sort();
            v == vec![addr(47201).parse().unwrap(), addr(47202).parse().unwrap()]
        }),
        "a knows where b and c are: {seen:?}"
    );

    let caches: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|n| n.cache::<String, String>("users").unwrap())
        .collect();
    caches[2].insert("k".into(), "1".into()).unwrap();
    assert!(wait_until(T, || caches
        .iter()
        .all(|x| x.get(&"k".to_string()).as_deref() == Some("1"))));
    caches[0].insert("k".into(), "2".into()).unwrap();
    assert!(wait_until(T, || caches
        .iter()
        .all(|x| x.get(&"k".to_string()).as_deref() == Some("2"))));
    caches[1].remove(&"k".to_string()).unwrap();
    assert!(wait_until(T, || caches
        .iter()
        .all(|x| !x.contains_key(&"k".to_string()))));
    for i in 0..300 {
        caches[i % 3]
            .insert(format!("k{i}"), format!("v{i}"))
            .unwrap();
    }
    assert!(wait_until(T, || caches.iter().all(|x| x.len() == 300)));
    caches[1].clear();
    assert!(wait_until(T, || caches.iter().all(|x| x.is_empty())));

    // Cluster queries travel the same way.
    let m = c
        .get_cluster_metrics(Some("users"), Duration::from_secs(3))
        .unwrap();
    assert_eq!(m.len(), 3, "every node answers over unicast");

    // A node that leaves is dropped at once; a node that dies leaves by failure detection.
    drop(b);
    assert!(wait_until(T, || a.members().len() == 1 && c.members().len() == 1));
    assert_eq!(a.members()[0].addr, Some(addr(47202).parse().unwrap()));
}

#[test]
fn names_resolve_and_state_transfers_to_a_late_joiner() {
    // `localhost` comes from /etc/hosts; the late node knows only the name.
    let a = Node::start(config("names", 47210, &[])).unwrap();
    let ca = a.cache::<u32, u32>("hot").unwrap();
    for i in 0..2000 {
        ca.insert(i, i * 2).unwrap();
    }
    let late = Node::start(config("names", 47211, &["localhost:47210".to_string()])).unwrap();
    assert!(
        late.wait_ready(T).found_peers(),
        "the late node gets a full copy"
    );
    let cl = late.cache::<u32, u32>("hot").unwrap();
    assert!(wait_until(T, || cl.len() == 2000 && cl.checksum() == ca.checksum()));
    assert_eq!(a.members().len(), 1);
    assert_eq!(a.members()[0].addr, Some(addr(47211).parse().unwrap()));
}

#[test]
fn a_node_with_another_key_is_neither_member_nor_learned() {
    let a = Node::start(config("keys", 47220, &[])).unwrap();
    let mut other = config("keys", 47221, &[addr(47220)]);
    other.crypto_key = Some(mccache::generate_key());
    let intruder = Node::start(other).unwrap();
    let b = Node::start(config("keys", 47222, &[addr(47220)])).unwrap();
    assert!(wait_until(T, || a.members().len() == 1 && b.members().len() == 1));
    // The intruder's datagrams reach a, never open, and teach it nothing.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        a.members()
            .iter()
            .all(|m| m.addr != Some(addr(47221).parse().unwrap()))
    );
    assert!(intruder.members().is_empty());
    let dropped = a.network_metrics().dropped;
    let refused: u64 = ["auth_failure", "unknown_key_id"]
        .iter()
        .filter_map(|k| dropped.get(*k))
        .sum();
    assert!(
        refused > 0,
        "the intruder's datagrams were counted: {dropped:?}"
    );
    // And the user can see it: the health report names the sender's address.
    let health = a.health();
    assert!(!health.unopened.is_empty(), "{health:?}");
    let last = health.last_unopened.expect("a datagram that did not open");
    assert_eq!(last.from, addr(47221).parse().unwrap());
}

#[test]
fn unicast_config_comes_from_toml_and_its_errors_name_the_key() {
    let c = Config::from_toml_str(
        r#"
        transport = "unicast"
        peers = ["127.0.0.1:47230", "cache.my-ns.svc.cluster.local"]
        bind_port = 47231
        discovery_interval = 2.5
        "#,
    )
    .unwrap();
    assert_eq!(c.transport, TransportKind::Unicast);
    assert_eq!(c.unicast_port(), 47231);
    assert_eq!(c.discovery_interval(), Duration::from_millis(2500));
    assert_eq!(c.peers.len(), 2);
    for (toml, err) in [
        (
            r#"transport = "carrier-pigeon""#,
            r#"transport: "carrier-pigeon" must be multicast or unicast"#,
        ),
        (
            r#"peers = ["a:1", "b:x"]"#,
            r#"peers[1]: "b:x" is not host:port"#,
        ),
        (
            "bind_port = 70000",
            r#"bind_port: "70000" is not a port number (1 to 65535)"#,
        ),
        (
            "discovery_interval = 0",
            r#"discovery_interval: "0" must be greater than 0"#,
        ),
    ] {
        let got = Config::from_toml_str(toml).unwrap_err().to_string();
        assert!(got.starts_with(err), "{toml}: {got}");
    }
    // Two nodes may not share a port on one host: the error names the key and the address.
    let _a = Node::start(config("port", 47232, &[])).unwrap();
    let e = Node::start(config("port", 47232, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(r#"bind_port: "127.0.0.1:47232" cannot be bound"#),
        "{e}"
    );
}

/// Separate OS processes configured only by `MCCACHE_*`: three `mccache node` processes on
/// loopback ports, each knowing only the first, run the stress workload and end identical.
#[test]
fn three_node_processes_over_unicast_end_with_identical_caches() {
    let dir = stress_nodes::out_dir("unicast");
    let results = stress_nodes::run(&dir, 3, |i| {
        [
            ("MCCACHE_INTERFACE", "127.0.0.1".to_string()),
            ("MCCACHE_TRANSPORT", "unicast".to_string()),
            ("MCCACHE_BIND_PORT", (47240 + i).to_string()),
            (
                "MCCACHE_PEERS",
                "127.0.0.1:47240,localhost:47241".to_string(),
            ),
            ("MCCACHE_DISCOVERY_INTERVAL", "0.5".to_string()),
            ("MCCACHE_DAEMON_SLEEP", "0.2".to_string()),
            ("MCCACHE_CACHE_PULSE", "1".to_string()),
            ("MCCACHE_CLUSTER_NAME", "t11-processes".to_string()),
            ("MCCACHE_CRYPTO_KEY", KEY.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    });
    let checksums: Vec<_> = results
        .iter()
        .map(|v| v["caches"]["stress"]["checksum"].clone())
        .collect();
    assert!(
        checksums.iter().all(|c| *c == checksums[0] && !c.is_null()),
        "{checksums:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_peers_reports_who_answers_and_the_round_trip() {
    let node = Node::start(config("check", 47250, &[])).unwrap();
    let mut probe = config(
        "check",
        47251,
        &[addr(47250), addr(47252), "localhost:47250".into()],
    );
    probe.bind_port = Some(47251);
    let checks = mccache::check_peers(&probe, Duration::from_secs(2)).unwrap();
    assert_eq!(checks.len(), 3);
    let by_entry = |e: &str| checks.iter().find(|c| c.entry == e).unwrap();
    let live = &by_entry("127.0.0.1:47250").addresses[0];
    assert_eq!(live.node, Some(node.id()));
    assert!(live.rtt.is_some());
    let dead = &by_entry("127.0.0.1:47252").addresses[0];
    assert!(!dead.answered() && dead.rtt.is_none());
    let named = by_entry("localhost:47250");
    assert!(named.addresses.iter().any(|a| a.answered()), "{named:?}");
    // The checker left: the node does not keep it as a member.
    assert!(wait_until(T, || node.members().is_empty()));

    // The CLI, configured from the environment only.
    let run = |peers: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mccache"))
            .args(["check-peers", "--timeout", "1"])
            .env("MCCACHE_INTERFACE", "127.0.0.1")
            .env("MCCACHE_TRANSPORT", "unicast")
            .env("MCCACHE_PEERS", peers)
            .env("MCCACHE_CLUSTER_NAME", "t11-check")
            .env("MCCACHE_CRYPTO_KEY", KEY)
            .env("MCCACHE_CONFIG", "")
            .output()
            .unwrap()
    };
    let ok = run("127.0.0.1:47250");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("127.0.0.1:47250") && text.contains("yes") && text.contains(" ms"),
        "{text}"
    );
    let bad = run("127.0.0.1:47250,127.0.0.1:47253");
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    // A bad value in the environment names the key and the value.
    let wrong = run("127.0.0.1:47250,no port:x");
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(
        err.contains(r#"peers[1]: "no port:x" is not host:port"#),
        "{err}"
    );
}
