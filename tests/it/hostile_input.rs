//! Hostile input against running nodes (sealed and plaintext): garbage, truncated headers,
//! wrong magic or version, bad lengths, wrong keys, tampering, replays, inconsistent fragments,
//! malformed messages inside authentic envelopes, oversize messages, foreign clusters.
//!
//! For each, the victim node must not panic, its cache must not change (length and checksum),
//! and the datagram must be counted under its reason in `network_metrics().dropped`.

#![forbid(unsafe_code)]

use crate::hostile_util;
use crate::support::forger;

use std::time::Duration;

use forger::{Forger, wall_ms_now};
use hostile_util::{
    Injector, KEY, KEY_B64, T, Tap, config, dropped, group, wait_members, wait_until,
};
use mccache::{Node, NodeId};
use mccache_proto::crypto::key_id;
use mccache_proto::header::{Header, cluster_id};
use mccache_proto::message::{Item, Msg};
use mccache_proto::record::{Op, Record};
use mccache_proto::version::Version;
use mccache_proto::wire::{Wire, WireConfig};

fn wire(keys: Vec<[u8; 32]>, cluster: &str, me: u64, max: usize) -> Wire {
    let mut w = Wire::new(
        WireConfig {
            cluster_name: cluster.into(),
            keys,
            max_message_size: max,
            ..WireConfig::default()
        },
        NodeId(me),
    );
    w.set_wall_ms(wall_ms_now());
    w
}

/// Length and checksum of a cache: the state hostile input must not change.
fn state(c: &mccache::Cache<String, String>) -> (usize, u64) {
    (c.len(), c.checksum())
}

/// A key that is not `KEY` but has the same one-byte key id (so it reaches authentication).
fn colliding_key() -> [u8; 32] {
    let want = key_id(&KEY);
    (1u8..=255)
        .flat_map(|a| (0u8..=255).map(move |b| [a, b]))
        .map(|[a, b]| {
            let mut k = [a; 32];
            k[1] = b;
            k
        })
        .find(|k| *k != KEY && key_id(k) == want)
        .expect("a 1-byte key id collides within 65k keys")
}

fn run_suite(sealed: bool, g: u8, port: u16) {
    let cluster = format!("hostile-{g}");
    let keys: Vec<&str> = if sealed { vec![KEY_B64] } else { vec![] };
    let raw_keys: Vec<[u8; 32]> = if sealed { vec![KEY] } else { vec![] };
    let grp = group(g, port);
    let tap = Tap::new(grp);
    let victim = Node::start(config(g, port, &cluster, &keys)).expect("victim starts");
    let writer = Node::start(config(g, port, &cluster, &keys)).expect("writer starts");
    wait_members(&[&victim, &writer]);
    let vc = victim.cache::<String, String>("h").unwrap();
    let wc = writer.cache::<String, String>("h").unwrap();

    // Capture a datagram carrying the writer's change r=old, then overwrite it with r=new.
    let mut reader = wire(raw_keys.clone(), &cluster, 0xdead_beef, 4 << 20);
    wc.insert("r".into(), "old".into()).unwrap();
    let wid = writer.id();
    let captured = tap
        .find(T, |d| {
            let h = Header::decode(d).ok()?;
            if h.sender != wid || h.frag_count != 1 {
                return None;
            }
            let (_, payload) = reader.decode(std::time::Instant::now(), d).ok()??;
            match Msg::decode(&payload)? {
                Msg::Data { items, .. } if !items.is_empty() => Some(d.to_vec()),
                _ => None,
            }
        })
        .expect("captured the writer's data datagram");
    for i in 0..10 {
        wc.insert(format!("k{i}"), format!("v{i}")).unwrap();
    }
    wc.insert("r".into(), "new".into()).unwrap();
    assert!(wait_until(T, || vc.len() == 11
        && vc.get(&"r".to_string()).as_deref() == Some("new")));
    let before = state(&vc);
    assert_eq!(before, state(&wc));

    let inject = Injector::new(grp);
    let mut forger = Forger::stamping(raw_keys.clone(), &cluster);
    let mut cases: Vec<(&str, Vec<Vec<u8>>, &str)> = Vec::new();
    let with = |i: usize, v: u8| {
        let mut d = captured.clone();
        d[i] = v;
        d
    };
    cases.push((
        "garbage",
        vec![b"\x00\x07 definitely not mccache".to_vec()],
        "bad_magic",
    ));
    cases.push((
        "truncated header",
        vec![captured[..20].to_vec()],
        "too_short",
    ));
    cases.push(("wrong magic", vec![with(0, b'X')], "bad_magic"));
    cases.push(("wrong version", vec![with(2, 9)], "bad_version"));
    cases.push((
        "reserved flag bits",
        vec![with(3, captured[3] | 0x40)],
        "malformed",
    ));
    let mut bad_index = captured.clone();
    bad_index[6..8].copy_from_slice(&7u16.to_be_bytes()); // index 7 of 1
    cases.push(("fragment index beyond count", vec![bad_index], "malformed"));
    // A header and less body than a tag (or crc) holds.
    cases.push((
        "body shorter than tag",
        vec![captured[..42].to_vec()],
        "too_short",
    ));
    let mut flipped = captured.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x01;
    cases.push((
        "tampered body",
        vec![flipped],
        if sealed {
            "auth_failure"
        } else {
            "bad_checksum"
        },
    ));
    cases.push(("replayed datagram", vec![captured.clone()], "replay"));
    let mut foreign = Forger::stamping(raw_keys.clone(), "some-other-cluster");
    cases.push((
        "foreign cluster",
        vec![foreign.datagram(NodeId(0x51), 1, 1, 0, 1, b"\x90")],
        "foreign_cluster",
    ));
    if sealed {
        let mut stranger = wire(vec![[0xee; 32]], &cluster, 0x52, 1 << 20);
        let d = stranger.encode(&Msg::Leave.encode()).unwrap();
        let unknown = if key_id(&[0xee; 32]) == key_id(&KEY) {
            "auth_failure"
        } else {
            "unknown_key_id"
        };
        cases.push(("wrong key", d, unknown));
        let mut twin = wire(vec![colliding_key()], &cluster, 0x53, 1 << 20);
        cases.push((
            "wrong key, same key id",
            twin.encode(&Msg::Leave.encode()).unwrap(),
            "auth_failure",
        ));
        let mut plain = Forger::stamping(vec![], &cluster);
        cases.push((
            "plaintext to a sealed node",
            vec![plain.datagram(NodeId(0x54), 1, 1, 0, 1, b"\x90")],
            "auth_failure",
        ));
    } else {
        let mut sealer = wire(vec![KEY], &cluster, 0x52, 1 << 20);
        cases.push((
            "sealed to a plaintext node",
            sealer.encode(&Msg::Leave.encode()).unwrap(),
            "unknown_key_id",
        ));
    }
    cases.push((
        "inconsistent fragment counts",
        vec![
            forger.datagram(NodeId(0x61), 1, 5, 0, 3, &[1; 100]),
            forger.datagram(NodeId(0x61), 2, 5, 1, 5, &[2; 100]),
        ],
        "malformed",
    ));
    cases.push((
        "inconsistent fragment sizes",
        vec![
            forger.datagram(NodeId(0x62), 1, 5, 0, 3, &[1; 100]),
            forger.datagram(NodeId(0x62), 2, 5, 1, 3, &[2; 90]),
        ],
        "malformed",
    ));
    cases.push((
        "duplicate fragment",
        vec![
            forger.datagram(NodeId(0x63), 1, 5, 0, 3, &[1; 100]),
            forger.datagram(NodeId(0x63), 2, 5, 0, 3, &[1; 100]),
        ],
        "duplicate",
    ));
    cases.push((
        "empty middle fragment",
        vec![forger.datagram(NodeId(0x64), 1, 5, 1, 3, &[])],
        "malformed",
    ));
    cases.push((
        "huge claimed fragment count",
        vec![forger.datagram(NodeId(0x65), 1, 5, 0, u16::MAX, &[0; 1000])],
        "oversize",
    ));
    cases.push((
        "malformed msgpack in an authentic envelope",
        vec![forger.datagram(NodeId(0x66), 1, 1, 0, 1, b"\xc1\xc1 not msgpack")],
        "malformed",
    ));
    cases.push((
        "wrong shape msgpack in an authentic envelope",
        vec![forger.datagram(
            NodeId(0x67),
            1,
            1,
            0,
            1,
            &rmp_serde::to_vec(&("Data", 1, 2, 3)).unwrap(),
        )],
        "malformed",
    ));
    // A member-built Data message whose value is larger than the node accepts.
    let huge = Msg::Data {
        seq: 1,
        items: vec![Item::Rec {
            cache: "h".into(),
            rec: Record {
                key: rmp_serde::to_vec("huge").unwrap().into(),
                version: Version::new(u64::MAX >> 1, NodeId(0x68)),
                op: Op::Put {
                    value: vec![7; 2 << 20].into(),
                    ttl_ms: None,
                },
            },
        }],
    };
    let mut big = wire(raw_keys.clone(), &cluster, 0x68, 4 << 20);
    cases.push((
        "oversize value",
        big.encode(&huge.encode()).unwrap(),
        "oversize",
    ));

    for (name, datagrams, reason) in cases {
        let was = dropped(&victim, reason);
        let malformed_msgs = victim.network_metrics().malformed_messages;
        for d in &datagrams {
            inject.send(d);
        }
        assert!(
            wait_until(T, || dropped(&victim, reason) > was),
            "{name}: not counted as {reason}; dropped = {:?}",
            victim.network_metrics().dropped
        );
        if name.contains("msgpack") {
            assert!(
                victim.network_metrics().malformed_messages > malformed_msgs,
                "{name}"
            );
        }
        assert_eq!(state(&vc), before, "{name} changed the cache");
        assert_eq!(vc.get(&"r".to_string()).as_deref(), Some("new"), "{name}");
    }
    // No forged sender became a member, and the node still works.
    assert_eq!(victim.members().len(), 1, "{:?}", victim.members());
    wc.insert("after".into(), "ok".into()).unwrap();
    assert!(wait_until(T, || vc.get(&"after".to_string()).as_deref() == Some("ok")));
    assert!(wait_until(T, || state(&vc) == state(&wc)));
}

#[test]
fn sealed_node_drops_and_counts_hostile_input() {
    run_suite(true, 1, 47101);
}

#[test]
fn plaintext_node_drops_and_counts_hostile_input() {
    run_suite(false, 2, 47102);
}

/// Two clusters on one group and port, sharing the key, never mix.
fn clusters_never_mix(g: u8, port: u16, keys: &[&str], a: &str, b: &str, reason: &str) {
    let a1 = Node::start(config(g, port, a, keys)).unwrap();
    let a2 = Node::start(config(g, port, a, keys)).unwrap();
    let b1 = Node::start(config(g, port, b, keys)).unwrap();
    wait_members(&[&a1, &a2]);
    let ca1 = a1.cache::<String, String>("c").unwrap();
    let ca2 = a2.cache::<String, String>("c").unwrap();
    let cb1 = b1.cache::<String, String>("c").unwrap();
    cb1.insert("from-b".into(), "b".into()).unwrap();
    for i in 0..20 {
        ca1.insert(format!("a{i}"), "a".into()).unwrap();
    }
    assert!(wait_until(T, || ca2.len() == 20));
    // Heartbeats, pulses and data of the other cluster are all counted and dropped.
    assert!(wait_until(T, || dropped(&b1, reason) >= 20
        && dropped(&a1, reason) >= 5));
    assert!(b1.members().is_empty(), "{:?}", b1.members());
    assert_eq!(a1.members().len(), 1);
    assert_eq!(cb1.len(), 1);
    assert!(!ca1.contains_key(&"from-b".to_string()) && !ca2.contains_key(&"from-b".to_string()));
}

#[test]
fn cluster_label_separates_sealed_clusters() {
    clusters_never_mix(3, 47103, &[KEY_B64], "alpha", "beta", "foreign_cluster");
}

#[test]
fn cluster_label_separates_plaintext_clusters() {
    clusters_never_mix(4, 47104, &[], "alpha", "beta", "foreign_cluster");
}

/// Two different names whose crc32 (the header's cluster id) collide.
fn crc_colliding_names() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0u64.. {
        let name = format!("cluster-{i:x}");
        if let Some(other) = seen.insert(cluster_id(&name), name.clone()) {
            return (other, name);
        }
    }
    unreachable!()
}

/// The cluster id is only a filter: the name itself is authenticated, so a cluster whose name
/// has the same crc32 still cannot write (sealed: auth_failure; plaintext: bad_checksum).
#[test]
fn cluster_name_is_authenticated_not_just_its_crc() {
    let (a, b) = crc_colliding_names();
    assert_eq!(cluster_id(&a), cluster_id(&b));
    assert_ne!(a, b);
    clusters_never_mix(5, 47105, &[KEY_B64], &a, &b, "auth_failure");
    clusters_never_mix(6, 47106, &[], &a, &b, "bad_checksum");
}

/// The replay check guards data at the node level too: a datagram a node sent, re-sent later
/// by someone else, is dropped and changes nothing. (Also covered in the suites above; this
/// one re-sends a whole burst of captured data datagrams.)
///
/// Only datagrams carrying `Data` are replayed. Every authentic datagram passes the replay
/// window, so a replay is dropped unless `b` never received the original, and a lost data
/// datagram is either re-sent (its replay is then a duplicate message) or leaves a gap. A lost
/// heartbeat leaves no trace: under the full suite's load the whole burst once lost one
/// (16 of 17 dropped as replays, no gap, no other drop), and its replay was `b`'s first copy.
#[test]
fn replayed_burst_is_dropped() {
    let (g, port) = (7, 47107);
    let cluster = "replay";
    let grp = group(g, port);
    let tap = Tap::new(grp);
    let a = Node::start(config(g, port, cluster, &[KEY_B64])).unwrap();
    let b = Node::start(config(g, port, cluster, &[KEY_B64])).unwrap();
    wait_members(&[&a, &b]);
    let ca = a.cache::<String, String>("c").unwrap();
    let cb = b.cache::<String, String>("c").unwrap();
    for i in 0..50 {
        ca.insert(format!("k{i}"), "first".into()).unwrap();
    }
    let aid = a.id();
    let mut reader = wire(vec![KEY], cluster, 0xdead_beef, 4 << 20);
    let mut carries_data = |d: &[u8]| {
        let Ok(Some((_, payload))) = reader.decode(std::time::Instant::now(), d) else {
            return false;
        };
        matches!(Msg::decode(&payload), Some(Msg::Data { .. }))
    };
    let burst: Vec<Vec<u8>> = tap
        .collect(Duration::from_millis(500), 10_000)
        .into_iter()
        .filter(|d| Header::decode(d).is_ok_and(|h| h.sender == aid && h.frag_count == 1))
        .filter(|d| carries_data(d))
        .collect();
    assert!(!burst.is_empty());
    for i in 0..50 {
        ca.insert(format!("k{i}"), "second".into()).unwrap();
    }
    assert!(wait_until(T, || ca.checksum() == cb.checksum() && cb.len() == 50));
    let was = dropped(&b, "replay") + dropped(&b, "duplicate");
    let sum = cb.checksum();
    let inject = Injector::new(grp);
    for d in &burst {
        inject.send(d);
    }
    let caught = || dropped(&b, "replay") + dropped(&b, "duplicate");
    assert!(
        wait_until(T, || caught() >= was + burst.len() as u64),
        "{} of {} replayed datagrams dropped as replays or duplicates; b's drops {:?}, gaps {}",
        caught() - was,
        burst.len(),
        b.network_metrics().dropped,
        b.network_metrics().gaps,
    );
    assert_eq!(cb.checksum(), sum);
    assert!((0..50).all(|i| cb.get(&format!("k{i}")).as_deref() == Some("second")));
}
