//! Payload re-encoding: what storing "equal in value" would cost if payloads were re-encoded
//! (serde_json `Value` round trip) against copying the bytes as sent, which corepost does.
#![allow(missing_docs)]

use corepost::config::ParserKind;
use corepost::ingest::BodyParser;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const BODY10: &[u8] = include_bytes!("workload/body10.json");
const BODY100: &[u8] = include_bytes!("workload/body100.json");

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("payload_bytes");
    for (name, body) in [("body10", BODY10), ("body100", BODY100)] {
        let mut spans = Vec::new();
        BodyParser::new(ParserKind::Serde)
            .parse(body, &mut spans)
            .unwrap();
        g.throughput(Throughput::Elements(spans.len() as u64));
        g.bench_with_input(BenchmarkId::new("as_sent", name), body, |b, body| {
            b.iter(|| {
                let shared = bytes::Bytes::copy_from_slice(body);
                let n: usize = spans
                    .iter()
                    .map(|&(s, e)| shared.slice(s as usize..e as usize).len())
                    .sum();
                black_box(n)
            })
        });
        g.bench_with_input(
            BenchmarkId::new("reencode_serde_value", name),
            body,
            |b, body| {
                b.iter(|| {
                    let n: usize = spans
                        .iter()
                        .map(|&(s, e)| {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body[s as usize..e as usize]).unwrap();
                            serde_json::to_vec(&v).unwrap().len()
                        })
                        .sum();
                    black_box(n)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
