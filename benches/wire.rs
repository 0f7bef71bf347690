//! Encode + decode throughput of one 1,200-byte message (one datagram at MTU 1472), sealed and
//! plaintext. Run: `cargo bench --bench wire`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mccache::NodeId;
use mccache_proto::wire::{Wire, WireConfig};

fn roundtrip(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire_1200B");
    group.throughput(Throughput::Bytes(1200));
    for (name, keys) in [("sealed", vec![[7u8; 32]]), ("plaintext", vec![])] {
        let cfg = WireConfig {
            keys,
            ..WireConfig::default()
        };
        let mut tx = Wire::new(cfg.clone(), NodeId(1));
        let mut rx = Wire::new(cfg, NodeId(2));
        let payload = vec![0xA5u8; 1200];
        let now = Instant::now();
        let mut out = Vec::with_capacity(1);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                tx.encode_into(black_box(&payload), &mut out).unwrap();
                let got = rx.decode(now, &out[0]).unwrap().unwrap();
                black_box(got);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
