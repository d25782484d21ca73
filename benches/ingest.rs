//! Request parsing: the two `BodyParser`s (simd-json tape + structural indexes, serde_json raw
//! values) and, for reference, a simd-json DOM, on the standard bodies of 1, 10 and 100
//! payloads. `server.parser`'s default follows this benchmark.
#![allow(missing_docs)]

use corepost::config::ParserKind;
use corepost::ingest::BodyParser;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const BODIES: [(&str, &[u8]); 3] = [
    ("body1", include_bytes!("workload/body1.json")),
    ("body10", include_bytes!("workload/body10.json")),
    ("body100", include_bytes!("workload/body100.json")),
];

fn parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, body) in BODIES {
        g.throughput(Throughput::Bytes(body.len() as u64));
        for (label, kind) in [("simd", ParserKind::Simd), ("serde", ParserKind::Serde)] {
            let mut p = BodyParser::new(kind);
            let mut spans = Vec::new();
            g.bench_with_input(BenchmarkId::new(label, name), body, |b, body| {
                b.iter(|| {
                    p.parse(black_box(body), &mut spans).unwrap();
                    black_box(spans.len())
                })
            });
        }
        let mut scratch = body.to_vec();
        g.bench_with_input(BenchmarkId::new("simd-dom", name), body, |b, body| {
            b.iter(|| {
                scratch.copy_from_slice(body);
                let v = simd_json::to_borrowed_value(&mut scratch).unwrap();
                black_box(simd_json::prelude::ValueAsScalar::as_str(&v).is_none())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parsers);
criterion_main!(benches);
