//! Bounded memory under floods. A raw socket on 127.0.0.1 floods a plaintext cluster (plaintext
//! lets anyone craft valid-looking datagrams; they are built with the crate's own wire encoder)
//! with spoofed sender ids, endless partial fragments, huge claimed fragment counts, far-ahead
//! stream announcements and NAK storms, while two real nodes keep replicating.
//!
//! Asserted: reassembly bytes and in-progress counts stay under their caps, membership stays
//! bounded, this process's RSS grows by less than 64 MiB, and the real nodes converge.

#![forbid(unsafe_code)]

use crate::hostile_util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hostile_util::{Injector, T, config, dropped, group, rss_kib, wait_members, wait_until};
use mccache::{Node, NodeId};
use mccache_proto::crypto::Keyring;
use mccache_proto::header::{Header, cluster_id};
use mccache_proto::message::Msg;
use mccache_proto::wire::{Wire, WireConfig};

const CLUSTER: &str = "flood";

/// A valid-looking plaintext datagram (correct crc) with arbitrary header fields.
fn forge(sender: u64, pn: u64, mid: u64, index: u16, count: u16, body: &[u8]) -> Vec<u8> {
    let h = Header {
        encrypted: false,
        key_id: 0,
        frag_index: index,
        frag_count: count,
        cluster_id: cluster_id(CLUSTER),
        sender: NodeId(sender),
        packet_number: pn,
        message_id: mid,
        sent_ms: wall_ms_now(),
    };
    let mut d = h.encode().to_vec();
    d.extend_from_slice(body);
    Keyring::new(&[], CLUSTER).seal(&mut d);
    d
}

fn spoof(id: u64) -> Wire {
    Wire::new(
        WireConfig {
            cluster_name: CLUSTER.into(),
            ..WireConfig::default()
        },
        NodeId(id),
    )
}

/// One round of every kind of flood; returns the datagrams.
fn round(
    r: u64,
    victim: NodeId,
    writer: NodeId,
    members: &mut [Wire],
    writer_hi: u64,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Endless partial fragments from ever new spoofed senders: the first fragments of a
    // 30-fragment message whose rest never comes.
    for s in 0..64u64 {
        let sender = 0x1_0000_0000 + r * 64 + s;
        for i in 0..3 {
            out.push(forge(
                sender,
                i + 1,
                1,
                i as u16,
                30,
                &[(r % 251) as u8; 1400],
            ));
        }
    }
    // Huge claimed fragment counts: a single fragment of a message of 65535 fragments.
    for s in 0..16u64 {
        out.push(forge(
            0x2_0000_0000 + r * 16 + s,
            1,
            1,
            0,
            u16::MAX,
            &[1; 1400],
        ));
    }
    // Spoofed members: NAK storms at both real nodes for everything they ever sent, many
    // times over in each NAK, and far-ahead stream announcements.
    for (i, w) in members.iter_mut().enumerate() {
        let nak = |to| {
            Msg::Nak {
                to,
                ranges: vec![(1, writer_hi.max(1)); 64],
            }
            .encode()
        };
        out.extend(w.encode(&nak(writer)).expect("encodes"));
        out.extend(w.encode(&nak(victim)).expect("encodes"));
        let hi = if i == 0 { u64::MAX } else { 60_000 * (r + 1) };
        out.extend(
            w.encode(&Msg::Tail { seq_hi: hi }.encode())
                .expect("encodes"),
        );
        if i == 1 {
            out.extend(
                w.encode(
                    &Msg::Data {
                        seq: u64::MAX - r,
                        items: vec![],
                    }
                    .encode(),
                )
                .expect("encodes"),
            );
        }
    }
    out
}

#[test]
fn floods_stay_bounded_and_real_writes_converge() {
    // It measures this process's RSS.
    if crate::support::in_own_process(
        module_path!(),
        "floods_stay_bounded_and_real_writes_converge",
    ) {
        return;
    }
    let (g, port) = (20, 47120);
    let grp = group(g, port);
    let victim = Node::start(config(g, port, CLUSTER, &[])).unwrap();
    let writer = Node::start(config(g, port, CLUSTER, &[])).unwrap();
    wait_members(&[&victim, &writer]);
    let vc = victim.cache::<u32, String>("f").unwrap();
    let wc = writer.cache::<u32, String>("f").unwrap();
    for i in 0..500 {
        wc.insert(i, format!("warm-{i}")).unwrap();
    }
    assert!(wait_until(T, || vc.len() == 500));
    let rss_before = rss_kib();
    let max_message = victim.config().max_message_size;
    let reassembly_cap = 4 * (max_message + (64 << 10)) as u64;

    let inject = Injector::new(grp);
    let mut members: Vec<Wire> = (0..12u64).map(|i| spoof(0x3_0000_0000 + i)).collect();
    // Make the spoofed members known first (a Hello each).
    for w in &mut members {
        let hello = Msg::Hello {
            wall_ms: 0,
            name: "spoof".into(),
            join: false,
            seq_hi: 0,
            acks: vec![],
            caches: vec![],
        };
        for d in w.encode(&hello.encode()).unwrap() {
            inject.send(&d);
        }
    }
    assert!(
        wait_until(T, || victim.members().len() >= 13),
        "{}",
        victim.members().len()
    );

    let flooding = AtomicBool::new(true);
    let (vid, wid) = (victim.id(), writer.id());
    let mut max_rss = rss_before;
    let mut max_bytes = 0u64;
    let mut max_in_progress = 0u64;
    let mut rounds = 0u64;
    let mut sent = 0u64;
    std::thread::scope(|s| {
        // Real writes during the flood.
        let wc2 = wc.clone();
        let flooding = &flooding;
        let writes = s.spawn(move || {
            let mut i = 0u32;
            while flooding.load(Ordering::Relaxed) {
                wc2.insert(1000 + i % 300, format!("during-{i}")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        });
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let hi = writer.network_metrics().data_messages_sent;
            for d in round(rounds, vid, wid, &mut members, hi) {
                inject.send(&d);
                sent += 1;
            }
            rounds += 1;
            for n in [&victim, &writer] {
                let m = n.network_metrics();
                max_bytes = max_bytes.max(m.reassembly_bytes);
                max_in_progress = max_in_progress.max(m.reassemblies_in_progress);
            }
            max_rss = max_rss.max(rss_kib());
            std::thread::sleep(Duration::from_millis(5));
        }
        flooding.store(false, Ordering::Relaxed);
        let writes = writes.join().unwrap();
        assert!(
            writes > 100,
            "the writer made progress during the flood: {writes}"
        );
    });

    let vm = victim.network_metrics();
    eprintln!(
        "flood: {rounds} rounds, {sent} datagrams; max reassembly {max_bytes} B (cap {reassembly_cap}), \
         max in progress {max_in_progress}; RSS {rss_before} -> max {max_rss} KiB; victim dropped {:?}; \
         writer dropped {:?}",
        vm.dropped,
        writer.network_metrics().dropped
    );
    assert!(
        max_bytes <= reassembly_cap,
        "reassembly bytes {max_bytes} over cap {reassembly_cap}"
    );
    // Every partial message holds at least one fragment of >= 1000 bytes.
    assert!(
        max_in_progress <= reassembly_cap / 1000,
        "{max_in_progress} partial messages"
    );
    assert!(
        max_rss - rss_before < 64 << 10,
        "RSS grew {} KiB",
        max_rss - rss_before
    );
    assert!(
        vm.dropped.get("oversize").copied().unwrap_or(0) > 0,
        "huge counts were dropped as oversize"
    );
    assert!(
        dropped(&victim, "gap_budget") > 0,
        "far-ahead announcements hit the gap budget"
    );
    assert!(victim.members().len() <= 256 && writer.members().len() <= 256);

    // After the flood the real nodes converge: same entries, same checksum.
    assert!(
        wait_until(Duration::from_secs(30), || vc.checksum() == wc.checksum()
            && vc.len() == wc.len()),
        "no convergence: victim {} entries, writer {}",
        vc.len(),
        wc.len()
    );
    let final_write = wc.len() as u32;
    wc.insert(99_999, "after".into()).unwrap();
    assert!(wait_until(T, || vc.get(&99_999).as_deref() == Some("after")));
    assert!(final_write >= 500);
    // Partial messages expire: nothing is held for long after the flood.
    assert!(
        wait_until(T, || victim.network_metrics().reassemblies_in_progress == 0),
        "{:?}",
        victim.network_metrics()
    );
}

/// This machine's wall clock in ms, as a sender stamps it into headers.
fn wall_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
