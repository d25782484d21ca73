//! Key formatting: one key per stored payload.
#![allow(missing_docs)]

use corepost::keys::KeySpace;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn keys(c: &mut Criterion) {
    let ks = KeySpace::new("corepost", "ingest-host-01", 3, 1_795_873_262_604_259);
    let mut g = c.benchmark_group("keys");
    g.throughput(Throughput::Elements(1));
    let mut seq = 0u64;
    g.bench_function("format", |b| {
        b.iter(|| {
            seq += 1;
            black_box(ks.key(None, black_box(1_795_910_399), seq, "json"))
        })
    });
    g.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
