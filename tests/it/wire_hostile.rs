//! Hostile and broken input: every bad datagram is dropped with the right reason, nothing panics,
//! and memory stays within its bounds.

use std::time::{Duration, Instant};

use crate::support::forger;

use forger::Forger;
use mccache::NodeId;
use mccache_proto::crypto::key_id;
use mccache_proto::drop::{DropCounters, DropReason};
use mccache_proto::header::{HEADER_LEN, cluster_id};
use mccache_proto::wire::{Wire, WireConfig};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEY: [u8; 32] = [0x42; 32];
const CLUSTER: &str = "hostile";
const ME: NodeId = NodeId(0x1111);
const PEER: NodeId = NodeId(0x2222);

fn cfg(keys: Vec<[u8; 32]>) -> WireConfig {
    WireConfig {
        cluster_name: CLUSTER.into(),
        keys,
        mtu: 1472,
        max_message_size: 64 * 1024,
        reassembly_timeout: Duration::from_secs(2),
        max_reassembly_bytes: 256 * 1024,
        ..WireConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_and_are_dropped(bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                                                 encrypted: bool) {
        let mut rx = Wire::new(cfg(if encrypted { vec![KEY] } else { vec![] }), ME);
        prop_assert!(rx.decode(Instant::now(), &bytes).is_err());
    }

    /// A valid header followed by garbage: the body never authenticates.
    #[test]
    fn valid_header_random_body(body in proptest::collection::vec(any::<u8>(), 0..2000),
                                encrypted: bool, index in 0u16..4, count in 1u16..5) {
        let keys = if encrypted { vec![KEY] } else { vec![] };
        let forger = Forger::new(keys.clone(), CLUSTER);
        let mut d = forger.header(PEER, 1, 1, index.min(count - 1), count).encode().to_vec();
        d.extend_from_slice(&body);
        let mut rx = Wire::new(cfg(keys), ME);
        let r = rx.decode(Instant::now(), &d);
        let expected = if encrypted {
            [DropReason::AuthFailure, DropReason::TooShort]
        } else {
            [DropReason::BadChecksum, DropReason::TooShort]
        };
        prop_assert!(matches!(r, Err(e) if expected.contains(&e)), "{:?}", r);
    }
}

#[test]
fn truncations_are_dropped() {
    for keys in [vec![KEY], vec![]] {
        let mut tx = Wire::new(cfg(keys.clone()), PEER);
        let mut rx = Wire::new(cfg(keys), ME);
        let d = tx.encode(b"some message body").unwrap().remove(0);
        for len in 0..d.len() {
            let r = rx.decode(Instant::now(), &d[..len]);
            assert!(r.is_err(), "prefix {len} accepted");
            if len < HEADER_LEN {
                assert_eq!(r, Err(DropReason::TooShort), "prefix {len}");
            }
        }
        // The failed attempts did not touch the replay window: the real datagram still opens.
        assert_eq!(
            rx.decode(Instant::now(), &d).unwrap().unwrap().1,
            b"some message body"
        );
    }
}

#[test]
fn wrong_magic_and_version() {
    let mut tx = Wire::new(cfg(vec![KEY]), PEER);
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    let d = tx.encode(b"x").unwrap().remove(0);
    let mut bad = d.clone();
    bad[0] = b'X';
    assert_eq!(rx.decode(Instant::now(), &bad), Err(DropReason::BadMagic));
    let mut bad = d.clone();
    bad[2] = bad[2].wrapping_add(1);
    assert_eq!(rx.decode(Instant::now(), &bad), Err(DropReason::BadVersion));
}

#[test]
fn every_bit_flip_of_a_sealed_datagram_is_refused() {
    let mut tx = Wire::new(cfg(vec![KEY]), PEER);
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    let d = tx.encode(&[7u8; 300]).unwrap().remove(0);
    let mut counters = DropCounters::default();
    for byte in 0..d.len() {
        for bit in 0..8 {
            let mut bad = d.clone();
            bad[byte] ^= 1 << bit;
            let reason = rx
                .decode(Instant::now(), &bad)
                .expect_err("tampered datagram accepted");
            counters.record(reason);
            match byte {
                // magic, version, flags, key id, reserved, index/count, cluster id, sender:
                // structural checks may catch these first.
                0..=21 => {}
                // packet number, message id, send time, body and tag: only authentication can
                // tell. (Except a flip that zeroes the packet number 1, which is malformed.)
                29 if bit == 0 => assert_eq!(reason, DropReason::Malformed),
                22..=45 => assert_eq!(reason, DropReason::AuthFailure, "byte {byte} bit {bit}"),
                46..=47 => assert_eq!(reason, DropReason::Malformed, "byte {byte} bit {bit}"),
                _ => assert_eq!(reason, DropReason::AuthFailure, "byte {byte} bit {bit}"),
            }
        }
    }
    // Sender and key id flips land in authentication or key lookup too.
    assert!(counters.get(DropReason::AuthFailure) > (d.len() as u64 - 24) * 8);
    assert!(counters.get(DropReason::UnknownKeyId) > 0);
    assert!(counters.get(DropReason::ForeignCluster) > 0);
    assert_eq!(
        rx.decode(Instant::now(), &d).unwrap().unwrap().1,
        vec![7u8; 300]
    );
}

#[test]
fn wrong_key_is_refused() {
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    // A key with another key id: no key to try.
    let other = (0..=255u8)
        .map(|b| [b; 32])
        .find(|k| key_id(k) != key_id(&KEY))
        .unwrap();
    let mut tx = Wire::new(cfg(vec![other]), PEER);
    assert_eq!(
        rx.decode(Instant::now(), &tx.encode(b"x").unwrap()[0]),
        Err(DropReason::UnknownKeyId)
    );
    // A key whose id collides with ours: authentication fails.
    let colliding = (0..=u16::MAX)
        .map(|b| {
            let mut k = [0u8; 32];
            k[..2].copy_from_slice(&b.to_be_bytes());
            k
        })
        .find(|k| *k != KEY && key_id(k) == key_id(&KEY))
        .unwrap();
    let mut tx = Wire::new(cfg(vec![colliding]), PEER);
    assert_eq!(
        rx.decode(Instant::now(), &tx.encode(b"x").unwrap()[0]),
        Err(DropReason::AuthFailure)
    );
}

#[test]
fn another_cluster_is_refused() {
    for keys in [vec![KEY], vec![]] {
        let mut rx = Wire::new(cfg(keys.clone()), ME);
        let mut tx = Wire::new(
            WireConfig {
                cluster_name: "other".into(),
                ..cfg(keys.clone())
            },
            PEER,
        );
        let d = tx.encode(b"x").unwrap().remove(0);
        assert_eq!(
            rx.decode(Instant::now(), &d),
            Err(DropReason::ForeignCluster)
        );
        // Rewriting the cluster id to ours does not help: the header and the cluster name are
        // authenticated.
        let mut forged = d.clone();
        forged[10..14].copy_from_slice(&cluster_id(CLUSTER).to_be_bytes());
        let expected = if keys.is_empty() {
            DropReason::BadChecksum
        } else {
            DropReason::AuthFailure
        };
        assert_eq!(rx.decode(Instant::now(), &forged), Err(expected));
    }
}

#[test]
fn other_cluster_label_under_same_key_fails_authentication() {
    // Same key, same header (cluster id included), only the label bound into the AAD differs.
    let mut forger = Forger::new(vec![KEY], "other");
    let mut h = forger.header(PEER, 1, 1, 0, 1);
    h.cluster_id = cluster_id(CLUSTER);
    let d = forger.seal(h, b"payload");
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    assert_eq!(rx.decode(Instant::now(), &d), Err(DropReason::AuthFailure));
}

#[test]
fn unknown_key_id_and_mode_mismatch() {
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    let mut tx = Wire::new(cfg(vec![KEY]), PEER);
    let mut d = tx.encode(b"x").unwrap().remove(0);
    d[4] = d[4].wrapping_add(1);
    assert_eq!(rx.decode(Instant::now(), &d), Err(DropReason::UnknownKeyId));
    // A plaintext datagram to a node that requires encryption.
    let mut plain = Wire::new(cfg(vec![]), PEER);
    assert_eq!(
        rx.decode(Instant::now(), &plain.encode(b"x").unwrap()[0]),
        Err(DropReason::AuthFailure)
    );
    // A sealed datagram to a plaintext node.
    let mut rx_plain = Wire::new(cfg(vec![]), ME);
    assert_eq!(
        rx_plain.decode(Instant::now(), &tx.encode(b"x").unwrap()[0]),
        Err(DropReason::UnknownKeyId)
    );
}

#[test]
fn replayed_datagrams_are_refused() {
    for keys in [vec![KEY], vec![]] {
        let mut tx = Wire::new(cfg(keys.clone()), PEER);
        let mut rx = Wire::new(cfg(keys), ME);
        let now = Instant::now();
        let single = tx.encode(b"one").unwrap().remove(0);
        let multi = tx.encode(&[1u8; 3000]).unwrap();
        assert!(rx.decode(now, &single).unwrap().is_some());
        assert_eq!(rx.decode(now, &single), Err(DropReason::Replay));
        assert!(rx.decode(now, &multi[0]).unwrap().is_none());
        assert_eq!(rx.decode(now, &multi[0]), Err(DropReason::Replay));
        assert_eq!(rx.decode(now, &multi[2]).unwrap(), None);
        assert!(rx.decode(now, &multi[1]).unwrap().is_some());
        for d in &multi {
            assert_eq!(rx.decode(now, d), Err(DropReason::Replay));
        }
        // Far behind the window: refused even though never seen.
        let old = tx.encode(b"old").unwrap().remove(0);
        for _ in 0..mccache_proto::replay::WINDOW + 76 {
            rx.decode(now, &tx.encode(b"new").unwrap()[0]).unwrap();
        }
        assert_eq!(rx.decode(now, &old), Err(DropReason::Replay));
    }
}

#[test]
fn inconsistent_fragments_are_refused() {
    let mut f = Forger::new(vec![KEY], CLUSTER);
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    let now = Instant::now();
    let chunk = [9u8; 100];
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 1, 5, 0, 3, &chunk)),
        Ok(None)
    );
    // Another fragment count for the same message id.
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 2, 5, 1, 4, &chunk)),
        Err(DropReason::Malformed)
    );
    // A non-last fragment of another size.
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 3, 5, 1, 3, &chunk[..50])),
        Err(DropReason::Malformed)
    );
    // A last fragment larger than a chunk.
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 4, 5, 2, 3, &[1u8; 101])),
        Err(DropReason::Malformed)
    );
    // An empty trailing fragment.
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 5, 5, 2, 3, &[])),
        Err(DropReason::Malformed)
    );
    // The same fragment again under a new packet number.
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 6, 5, 0, 3, &chunk)),
        Err(DropReason::Duplicate)
    );
    // Index >= count (header check, even though authentic).
    let mut h = f.header(PEER, 7, 5, 0, 3);
    h.frag_index = 3;
    let d = f.seal(h, &chunk);
    assert_eq!(rx.decode(now, &d), Err(DropReason::Malformed));
    // The message still completes with consistent fragments.
    assert_eq!(
        rx.decode(now, &f.datagram(PEER, 8, 5, 2, 3, &[2u8; 10])),
        Ok(None)
    );
    let (sender, payload) = rx
        .decode(now, &f.datagram(PEER, 9, 5, 1, 3, &chunk))
        .unwrap()
        .unwrap();
    assert_eq!((sender, payload.len()), (PEER, 210));
}

#[test]
fn huge_claimed_counts_allocate_little() {
    let mut f = Forger::new(vec![KEY], CLUSTER);
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    let now = Instant::now();
    // 65,535 fragments of 1,000 bytes would be 64 MB: refused before anything is stored.
    let d = f.datagram(PEER, 1, 1, 0, u16::MAX, &[0u8; 1000]);
    assert_eq!(rx.decode(now, &d), Err(DropReason::Oversize));
    assert_eq!(rx.stats().bytes_held, 0);
    // 65,535 fragments of 1 byte fit the 64 KiB limit: only what arrived is held.
    let d = f.datagram(PEER, 2, 2, 7, u16::MAX, &[0u8; 1]);
    assert_eq!(rx.decode(now, &d), Ok(None));
    assert!(
        rx.stats().bytes_held < 16 * 1024,
        "{}",
        rx.stats().bytes_held
    );
}

#[test]
fn floods_of_partial_messages_stay_within_the_byte_cap() {
    // Plaintext: anyone can forge datagrams, from any number of senders.
    let mut f = Forger::new(vec![], CLUSTER);
    let mut rx = Wire::new(cfg(vec![]), ME);
    let cap = 256 * 1024; // the configured cap (it already fits a largest 64 KiB message)
    let mut rng = StdRng::seed_from_u64(1);
    let mut now = Instant::now();
    let mut max_held = 0;
    for pn in 1..=20_000u64 {
        let sender = NodeId(rng.random_range(1..=5_000u64) + 0x10000);
        let mid = rng.random_range(1..=100u64);
        let d = f.datagram(sender, pn, mid, 0, 40, &[0u8; 1400]);
        let r = rx.decode(now, &d);
        assert!(
            matches!(
                r,
                Ok(None) | Err(DropReason::Replay) | Err(DropReason::Duplicate)
            ),
            "{r:?}"
        );
        max_held = max_held.max(rx.stats().bytes_held);
        now += Duration::from_micros(10);
    }
    let stats = rx.stats();
    assert!(max_held <= cap, "held {max_held} > {cap}");
    assert!(stats.evicted > 0);
    assert!(stats.in_progress < 300, "{}", stats.in_progress);

    // One sender opening endless messages is held to 32 at a time.
    let mut rx = Wire::new(cfg(vec![]), ME);
    for mid in 1..=1000u64 {
        rx.decode(now, &f.datagram(PEER, mid, mid, 0, 2, &[1u8; 10]))
            .unwrap();
    }
    assert_eq!(rx.stats().in_progress, 32);
    // The newest survive: message 1000 completes.
    assert!(
        rx.decode(now, &f.datagram(PEER, 1001, 1000, 1, 2, &[1u8; 5]))
            .unwrap()
            .is_some()
    );

    // Everything left behind expires.
    assert_eq!(rx.expire(now + Duration::from_secs(3)), 31);
    assert_eq!((rx.stats().in_progress, rx.stats().bytes_held), (0, 0));
    assert_eq!(rx.stats().expired, 31);
}

#[test]
fn forget_sender_drops_its_state() {
    let mut tx = Wire::new(cfg(vec![KEY]), PEER);
    let mut rx = Wire::new(cfg(vec![KEY]), ME);
    let now = Instant::now();
    let ds = tx.encode(&[3u8; 5000]).unwrap();
    assert_eq!(rx.decode(now, &ds[0]), Ok(None));
    assert_eq!(rx.stats().in_progress, 1);
    rx.forget_sender(PEER);
    assert_eq!(
        (
            rx.stats().in_progress,
            rx.stats().bytes_held,
            rx.stats().replay_senders
        ),
        (0, 0, 0)
    );
}

#[test]
fn key_rotation() {
    let old = [0x01; 32];
    let new = [0x02; 32];
    let now = Instant::now();
    let mut only_old = Wire::new(cfg(vec![old]), NodeId(1));
    let mut only_new = Wire::new(cfg(vec![new]), NodeId(2));
    let mut rotating = Wire::new(cfg(vec![new, old]), NodeId(3));
    let mut staged = Wire::new(cfg(vec![old, new]), NodeId(4));

    let from_old = only_old.encode(b"sealed by old").unwrap().remove(0);
    let from_new = only_new.encode(b"sealed by new").unwrap().remove(0);
    assert_eq!(
        rotating.decode(now, &from_old).unwrap().unwrap().1,
        b"sealed by old"
    );
    assert_eq!(
        rotating.decode(now, &from_new).unwrap().unwrap().1,
        b"sealed by new"
    );
    // A node that staged the new key (old still primary) opens the rotated node's traffic.
    let from_rotating = rotating.encode(b"sealed by new").unwrap().remove(0);
    assert_eq!(
        staged.decode(now, &from_rotating).unwrap().unwrap().1,
        b"sealed by new"
    );
    // A node without the new key cannot (UnknownKeyId, or AuthFailure should the one-byte key
    // ids of the two keys happen to collide).
    let r = only_old.decode(now, &from_rotating);
    assert!(
        matches!(r, Err(DropReason::UnknownKeyId | DropReason::AuthFailure)),
        "{r:?}"
    );
}
