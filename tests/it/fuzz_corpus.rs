//! Replays every file of the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! code the fuzz targets run (`fuzz/common.rs`), so CI without cargo-fuzz still checks the seeds
//! and every crash input that was ever minimized into the corpus.

#![forbid(unsafe_code)]

#[path = "../../fuzz/common.rs"]
mod common;

use std::path::Path;

fn replay<T>(target: &str, run: fn(&[u8]) -> T) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    for f in &files {
        let bytes = std::fs::read(f).expect("read corpus file");
        let r = std::panic::catch_unwind(|| {
            run(&bytes);
        });
        assert!(r.is_ok(), "{target}: {} panicked", f.display());
    }
    assert!(!files.is_empty(), "{target}: empty corpus");
    files.len()
}

#[test]
fn datagram_plain_corpus() {
    replay("datagram_plain", common::datagram_plain);
}

#[test]
fn datagram_sealed_corpus() {
    replay("datagram_sealed", common::datagram_sealed);
}

#[test]
fn message_corpus() {
    replay("message", common::message);
}

#[test]
fn endpoint_corpus() {
    replay("endpoint", common::endpoint);
}

/// The harness itself is not vacuous: a seeded endpoint run really applies the peer's data.
#[test]
fn endpoint_harness_reaches_message_handling() {
    let msgs = common::seed_messages();
    let mut input = common::record(1, &msgs[0].1.encode());
    input.extend(common::record(1, &msgs[1].1.encode()));
    let m = common::endpoint(&input);
    assert_eq!(m.changes_applied, 1, "{m:?}");
    assert_eq!(m.dropped.values().sum::<u64>(), 0, "{m:?}");
    // And the message target's round-trip check accepts every kind of message.
    for (name, m) in &msgs {
        assert_eq!(
            mccache_proto::message::Msg::decode(&m.encode()).as_ref(),
            Some(m),
            "{name}"
        );
        common::message(&m.encode());
    }
}
