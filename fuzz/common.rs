//! The code paths the fuzz targets drive, shared by `fuzz/fuzz_targets/*.rs` and by the regular
//! test `tests/it/fuzz_corpus.rs` (which replays every corpus file through them, so CI without
//! cargo-fuzz still runs the seeds). Each function must never panic, whatever `data` holds.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mccache::Config;
use mccache::unstable::{DetachedNode, FakeClock};
use mccache_proto::endpoint::{Endpoint, EndpointConfig};
use mccache_proto::message::{Msg, Query};
use mccache_proto::metrics::NetworkMetrics;
use mccache_proto::record::{Op, Record};
use mccache_proto::sync::{KeyVersion, SYNC_BUCKETS, SyncDigest};
use mccache_proto::version::{NodeId, Version};
use mccache_proto::wire::{Wire, WireConfig};

/// The key the sealed targets use.
pub const KEY: [u8; 32] = [0x5a; 32];
/// The cluster label of every target.
pub const CLUSTER: &str = "fuzz";
/// The node under test.
pub const ME: NodeId = NodeId(0xfeed);

fn wire_config(keys: Vec<[u8; 32]>) -> WireConfig {
    WireConfig {
        cluster_name: CLUSTER.into(),
        keys,
        mtu: 1472,
        max_message_size: 256 * 1024,
        reassembly_timeout: Duration::from_secs(2),
        max_reassembly_bytes: 1024 * 1024,
        ..WireConfig::default()
    }
}

/// Splits fuzz input into length-prefixed records: `[tag u8][len u16 be][len bytes]`; a short
/// tail becomes one last record with what is left.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        if rest.len() < 2 {
            out.push((tag, rest));
            break;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let take = len.min(body.len());
        out.push((tag, &body[..take]));
        data = &body[take..];
    }
    out
}

/// Feeds records to one wire as datagrams, all at the same moment, then expires.
fn datagrams(keys: Vec<[u8; 32]>, data: &[u8]) {
    let mut wire = Wire::new(wire_config(keys), ME);
    let start = Instant::now();
    let mut now = start;
    for (tag, d) in records(data) {
        if tag & 0x80 != 0 {
            now += Duration::from_millis(u64::from(tag & 0x7f) * 50);
        }
        let _ = wire.decode(now, d);
        let s = wire.stats();
        assert!(
            s.bytes_held <= 1024 * 1024,
            "reassembly over its byte cap: {s:?}"
        );
    }
    wire.expire(now + Duration::from_secs(10));
    assert_eq!(wire.stats().in_progress, 0);
}

/// `datagram_plain`: [`Wire::decode`] in plaintext mode on a sequence of arbitrary datagrams.
pub fn datagram_plain(data: &[u8]) {
    datagrams(Vec::new(), data);
}

/// `datagram_sealed`: [`Wire::decode`] with a keyring on a sequence of arbitrary datagrams.
pub fn datagram_sealed(data: &[u8]) {
    datagrams(vec![KEY, [0x33; 32]], data);
}

/// `message`: [`Msg::decode`] on arbitrary bytes; what decodes must re-encode to a message that
/// decodes to the same value.
pub fn message(data: &[u8]) {
    if let Some(m) = Msg::decode(data) {
        let again = Msg::decode(&m.encode());
        assert_eq!(again.as_ref(), Some(&m), "re-encoding changed the message");
        let _ = m.target();
    }
}

/// The cache the `endpoint` target opens as `Cache<String, Vec<u8>>`: records for it go through
/// the typed store (decoding, modes, caps); records for any other cache park in the record
/// model (`ParkedCache`), as they do on a node whose application has not opened them.
pub const TYPED: &str = "t";

/// The node under test's application state: the real `NodeApp` (registry, typed store,
/// parked caches) on a fake clock, bounded by small caps so the harness cannot be made to
/// allocate without end.
pub fn node_state() -> (DetachedNode, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    let mut config = Config::default();
    config.cache_max = 4096;
    config.cache_size = 4 * 1024 * 1024;
    config.max_message_size = 256 * 1024;
    let node = DetachedNode::new(config, ME, clock.clone()).expect("a valid configuration");
    node.cache::<String, Vec<u8>>(TYPED)
        .expect("a fresh node opens its first cache");
    (node, clock)
}

/// Peers whose node ids the `endpoint` target uses when it wraps payloads itself.
pub const PEERS: [NodeId; 3] = [NodeId(0xa1), NodeId(0xb2), NodeId(0xc3)];

/// `endpoint`: [`Endpoint::handle_datagram`] on a plaintext node over the real application
/// state ([`node_state`]).
///
/// Each record's tag chooses what its bytes are:
/// - bit 0 clear: a raw datagram, fed as is;
/// - bit 0 set: a message payload, sealed (crc'd) by peer `PEERS[(tag >> 1) % 3]`'s own
///   [`Wire`], so that the fuzzer reaches message handling without forging checksums;
/// - bit 7 set: time advances by `(tag >> 3 & 0xf) * 40` ms and timers run first.
///
/// Sent datagrams and events are drained after every step; their number is bounded.
pub fn endpoint(data: &[u8]) -> NetworkMetrics {
    let start = Instant::now();
    let mut now = start;
    let cfg = EndpointConfig::new(
        "fuzz".into(),
        wire_config(Vec::new()),
        Duration::from_millis(100),
        Duration::from_millis(500),
    );
    let mut ep = Endpoint::new(cfg, ME, now);
    let (mut node, clock) = node_state();
    let app = node.app();
    let mut peers: Vec<Wire> = PEERS
        .iter()
        .map(|&p| Wire::new(wire_config(Vec::new()), p))
        .collect();
    let mut steps = 0usize;
    for (tag, body) in records(data) {
        if tag & 0x80 != 0 {
            let step = Duration::from_millis(u64::from((tag >> 3) & 0xf) * 40);
            now += step;
            clock.advance(step);
            ep.handle_timeout(now, app);
        }
        if tag & 1 == 0 {
            ep.handle_datagram(now, body, app);
        } else {
            let peer = &mut peers[usize::from(tag >> 1) % PEERS.len()];
            if let Ok(ds) = peer.encode(body) {
                for d in ds {
                    ep.handle_datagram(now, &d, app);
                }
            }
        }
        let mut sent = 0usize;
        let mut out = Vec::new();
        while ep.poll_transmit(now, &mut out).is_some() {
            sent += 1;
        }
        // One input datagram may cause a NAK's worth of retransmissions, never more.
        assert!(sent <= 8192, "one datagram caused {sent} transmissions");
        while ep.poll_event().is_some() {}
        steps += 1;
    }
    let _ = (ep.peers(), steps);
    ep.metrics()
}

/// Seeds that reach deep paths: valid messages of every kind (as payloads for `endpoint`
/// records with bit 0 set, or raw for `message`).
pub fn seed_messages() -> Vec<(&'static str, Msg)> {
    let v = |hlc| Version::new(hlc, PEERS[0]);
    let rec = |k: &[u8], hlc| Record {
        key: k.to_vec().into(),
        version: v(hlc),
        op: Op::Put {
            value: b"value".to_vec().into(),
            ttl_ms: Some(1000),
        },
    };
    use mccache_proto::message::{CacheDigest, Item};
    vec![
        (
            "hello_join",
            Msg::Hello {
                name: "peer".into(),
                join: true,
                seq_hi: 0,
                acks: vec![(ME, 0)],
                caches: vec!["c".into()],
                wall_ms: 1_700_000_000_000,
            },
        ),
        (
            "data",
            Msg::Data {
                seq: 1,
                items: vec![
                    Item::Rec {
                        cache: "c".into(),
                        rec: rec(b"k", 10),
                    },
                    Item::Clear {
                        cache: "c".into(),
                        version: v(5),
                    },
                    Item::Loading {
                        cache: "c".into(),
                        key: b"k".to_vec(),
                    },
                ],
            },
        ),
        (
            "data_gap",
            Msg::Data {
                seq: 7,
                items: vec![],
            },
        ),
        (
            "ack",
            Msg::Ack {
                acks: vec![(ME, 3)],
            },
        ),
        ("tail", Msg::Tail { seq_hi: 40 }),
        ("leave", Msg::Leave),
        (
            "nak",
            Msg::Nak {
                to: ME,
                ranges: vec![(1, 3), (0, u64::MAX)],
            },
        ),
        (
            "gone",
            Msg::Gone {
                to: ME,
                ranges: vec![(1, 2)],
            },
        ),
        (
            "digest",
            Msg::Digest {
                caches: vec![CacheDigest {
                    cache: "c".into(),
                    digest: SyncDigest {
                        count: 1,
                        checksum: 9,
                        buckets: vec![1; SYNC_BUCKETS],
                    },
                    floor: v(3),
                }],
            },
        ),
        (
            "buckets",
            Msg::Buckets {
                to: ME,
                cache: "c".into(),
                parts: vec![(0, 0, 1), (1, 2, 3), (65535, 0, 0)],
                keys: vec![KeyVersion {
                    key: b"k".to_vec(),
                    version: v(99),
                    deleted: false,
                }],
                horizon: v(50),
            },
        ),
        (
            "sums",
            Msg::Sums {
                to: ME,
                cache: "c".into(),
                buckets: vec![(0, 2, vec![1, 2]), (1, 3, vec![7]), (65535, 0, Vec::new())],
            },
        ),
        (
            "pull",
            Msg::Pull {
                to: ME,
                cache: "c".into(),
                keys: vec![serde_bytes::ByteBuf::from(b"k".to_vec())],
            },
        ),
        (
            "repair",
            Msg::Repair {
                items: vec![Item::Rec {
                    cache: "c".into(),
                    rec: rec(b"r", 11),
                }],
            },
        ),
        (
            "snapshot_req",
            Msg::SnapshotReq {
                to: ME,
                cache: "c".into(),
                cursor: 0,
                until: u64::MAX,
                pad: serde_bytes::ByteBuf::from(vec![0; 16]),
            },
        ),
        (
            "snapshot_chunk",
            Msg::SnapshotChunk {
                to: ME,
                cache: "c".into(),
                cursor: 0,
                records: vec![rec(b"s", 12)],
                next: None,
                as_of: 40 << 16,
                floor: v(2),
                horizon: v(1),
            },
        ),
        (
            "query",
            Msg::Query {
                id: 1,
                query: Query::Checksum {
                    cache: "c".into(),
                    key: Some(b"k".to_vec()),
                },
            },
        ),
        (
            "reply",
            Msg::Reply {
                to: ME,
                id: 1,
                body: vec![0xc0],
            },
        ),
    ]
}

/// One `endpoint` record: `[tag][len][body]`.
pub fn record(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body[..usize::from(len)]);
    out
}
