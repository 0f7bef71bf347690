//! Writes the seed corpus of every fuzz target to `fuzz/corpus/<target>/` (run from `fuzz/`).
//! Seeds are real datagrams and messages, so the fuzzers start past the checksum and header
//! checks instead of having to discover them.

#[path = "common.rs"]
mod common;

use std::path::Path;

use mccache_proto::version::NodeId;
use mccache_proto::wire::{Wire, WireConfig};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn wire(keys: Vec<[u8; 32]>, me: NodeId) -> Wire {
    Wire::new(
        WireConfig {
            cluster_name: common::CLUSTER.into(),
            keys,
            mtu: 1472,
            ..WireConfig::default()
        },
        me,
    )
}

fn main() {
    let msgs = common::seed_messages();
    for (name, m) in &msgs {
        write("message", name, &m.encode());
        // Endpoint: a hello from the peer first (so it is a member), then the message.
        let hello = &msgs[0].1;
        let mut seq = common::record(1, &hello.encode());
        seq.extend(common::record(0x81 | (1 << 3), &m.encode()));
        write("endpoint", name, &seq);
    }
    // Endpoint: raw datagrams as a peer's wire makes them, out of order and replayed.
    let mut w = wire(Vec::new(), common::PEERS[1]);
    let big = msgs[1].1.encode().repeat(400);
    let ds = w.encode(&big).expect("encodes");
    let mut seq = Vec::new();
    for d in ds.iter().rev().chain(ds.first()) {
        seq.extend(common::record(0, d));
    }
    write("endpoint", "raw_fragments_reversed_and_replayed", &seq);

    for (target, keys) in [("datagram_plain", Vec::new()), ("datagram_sealed", vec![common::KEY])] {
        let mut w = wire(keys, NodeId(0x77));
        let one = w.encode(b"hello").expect("encodes");
        write(target, "single", &common::record(0, &one[0]));
        let many = w.encode(&vec![7u8; 4000]).expect("encodes");
        let mut seq = Vec::new();
        for d in many.iter().rev() {
            seq.extend(common::record(0, d));
        }
        seq.extend(common::record(0x85, &many[0]));
        write(target, "fragments_then_replay", &seq);
        let partial = w.encode(&vec![9u8; 3000]).expect("encodes");
        write(target, "partial_then_expire", &[common::record(0, &partial[0]), common::record(0xff, &partial[1])].concat());
    }
}
