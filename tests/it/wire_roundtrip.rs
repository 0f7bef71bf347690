//! Property tests: any message, any MTU, either mode, delivered in any order with duplicates,
//! comes out exactly once and intact; every datagram fits the MTU; no empty trailing fragment.

use std::time::Instant;

use mccache::NodeId;
use mccache_proto::drop::DropReason;
use mccache_proto::fragment::max_payload_per_datagram;
use mccache_proto::header::{HEADER_LEN, Header};
use mccache_proto::wire::{Wire, WireConfig};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const MAX: usize = 1024 * 1024;
/// Largest reordering distance applied, in datagrams (below the 8,192-wide replay window).
const REORDER: usize = 1000;

fn config(mtu: usize, encrypted: bool) -> WireConfig {
    WireConfig {
        cluster_name: "roundtrip".into(),
        keys: if encrypted {
            vec![[0x5A; 32], [0x11; 32]]
        } else {
            vec![]
        },
        mtu,
        max_message_size: MAX,
        ..WireConfig::default()
    }
}

/// Encodes `payload`, checks the datagrams' shape, delivers them shuffled with duplicates and
/// checks the message comes out exactly once.
fn roundtrip(mtu: usize, encrypted: bool, payload: &[u8], seed: u64) -> Result<(), TestCaseError> {
    let mut tx = Wire::new(config(mtu, encrypted), NodeId(0xA11CE));
    let mut rx = Wire::new(config(mtu, encrypted), NodeId(0xB0B));
    let chunk = max_payload_per_datagram(mtu, encrypted);
    let overhead = mtu - chunk;

    let datagrams = tx.encode(payload).unwrap();
    let expected = payload.len().div_ceil(chunk).max(1);
    prop_assert_eq!(datagrams.len(), expected);
    for (i, d) in datagrams.iter().enumerate() {
        prop_assert!(
            d.len() <= mtu,
            "datagram {} is {} > mtu {}",
            i,
            d.len(),
            mtu
        );
        let h = Header::decode(d).unwrap();
        prop_assert_eq!(usize::from(h.frag_index), i);
        prop_assert_eq!(usize::from(h.frag_count), expected);
        let body = d.len() - overhead;
        if expected > 1 {
            // No empty fragment at all, in particular no empty trailing one (McCache B5).
            prop_assert!(body > 0, "empty fragment {} of {}", i, expected);
        }
        if i + 1 < expected {
            prop_assert_eq!(body, chunk);
        }
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut delivery: Vec<(usize, &Vec<u8>)> = datagrams.iter().enumerate().collect();
    let dups = rng.random_range(0..=datagrams.len().min(8));
    for _ in 0..dups {
        let i = rng.random_range(0..datagrams.len());
        delivery.push((i, &datagrams[i]));
    }
    if datagrams.len() <= REORDER {
        delivery.shuffle(&mut rng);
    } else {
        // Beyond the replay window (8,192 packet numbers) a datagram counts as a replay, so
        // long messages are reordered (duplicates included) by less than the window.
        for (pos, _) in delivery.iter_mut() {
            *pos += rng.random_range(0..REORDER);
        }
        delivery.sort_by_key(|(pos, _)| *pos);
    }

    let now = Instant::now();
    let mut delivered = Vec::new();
    let mut replays = 0;
    for (_, d) in delivery {
        match rx.decode(now, d) {
            Ok(Some(msg)) => delivered.push(msg),
            Ok(None) => {}
            Err(DropReason::Replay) => replays += 1,
            Err(other) => prop_assert!(false, "unexpected drop {:?}", other),
        }
    }
    prop_assert_eq!(delivered.len(), 1);
    // Only the duplicates were refused.
    prop_assert_eq!(replays, dups);
    prop_assert_eq!(delivered[0].0, NodeId(0xA11CE));
    prop_assert!(delivered[0].1 == payload, "payload differs");
    let stats = rx.stats();
    prop_assert_eq!((stats.in_progress, stats.bytes_held), (0, 0));
    Ok(())
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Sizes densely around multiples of the chunk (where off-by-one errors live).
    #[test]
    fn sizes_near_chunk_multiples(mtu in 576usize..=9000, encrypted: bool, k in 0usize..24,
                                  delta in -3i64..=3, seed: u64) {
        let chunk = max_payload_per_datagram(mtu, encrypted);
        let len = (k * chunk).saturating_add_signed(delta as isize).min(MAX);
        roundtrip(mtu, encrypted, &payload(len, seed), seed)?;
    }

    /// Small messages of every size.
    #[test]
    fn small_sizes(mtu in 576usize..=9000, encrypted: bool, len in 0usize..4096, seed: u64) {
        roundtrip(mtu, encrypted, &payload(len, seed), seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random sizes up to the 1 MiB maximum (fewer cases: each is up to ~2,000 datagrams).
    #[test]
    fn large_sizes(mtu in 576usize..=9000, encrypted: bool, len in 0usize..=MAX, seed: u64) {
        roundtrip(mtu, encrypted, &payload(len, seed), seed)?;
    }
}

#[test]
fn extremes_round_trip() {
    for encrypted in [false, true] {
        for mtu in [576, 1472, 9000] {
            let chunk = max_payload_per_datagram(mtu, encrypted);
            for len in [0, 1, chunk - 1, chunk, chunk + 1, MAX - 1, MAX] {
                roundtrip(mtu, encrypted, &payload(len, len as u64), 7).unwrap();
            }
        }
    }
    assert_eq!(HEADER_LEN, 48);
}

#[test]
fn interleaved_messages_from_several_senders() {
    let mtu = 700;
    let mut rx = Wire::new(config(mtu, true), NodeId(1));
    let mut senders: Vec<Wire> = (2..6)
        .map(|i| Wire::new(config(mtu, true), NodeId(i)))
        .collect();
    let mut all = Vec::new();
    let mut expected = Vec::new();
    for (s, tx) in senders.iter_mut().enumerate() {
        for m in 0..5 {
            let p = payload(1000 * m + 17 * s, (s * 10 + m) as u64);
            all.extend(tx.encode(&p).unwrap());
            expected.push((tx.node_id(), p));
        }
    }
    all.shuffle(&mut StdRng::seed_from_u64(99));
    let now = Instant::now();
    let mut got: Vec<(NodeId, Vec<u8>)> = all
        .iter()
        .filter_map(|d| rx.decode(now, d).unwrap())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn reordering_beyond_the_replay_window_is_a_replay() {
    let mut tx = Wire::new(config(576, true), NodeId(2));
    let mut rx = Wire::new(config(576, true), NodeId(3));
    let window = mccache_proto::replay::WINDOW as usize;
    let datagrams: Vec<Vec<u8>> = (0..window + 100)
        .map(|_| tx.encode(b"one datagram").unwrap().remove(0))
        .collect();
    let now = Instant::now();
    assert!(rx.decode(now, &datagrams[window + 99]).unwrap().is_some());
    assert_eq!(rx.decode(now, &datagrams[0]), Err(DropReason::Replay));
    assert!(
        rx.decode(now, &datagrams[100]).unwrap().is_some(),
        "inside the window"
    );
}
