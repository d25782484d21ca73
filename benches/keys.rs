//! Key formatting: one key per stored object; with `keys.template`, one partition per payload
//! (its fields looked up in the payload's JSON).
#![allow(missing_docs)]

use corepost::keys::{KeySpace, Template};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;

const BODY10: &[u8] = include_bytes!("workload/body10.json");

/// The payloads of body10, as the bytes the client sent.
fn payloads() -> Vec<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(BODY10).expect("body10 is JSON");
    v["data"]
        .as_array()
        .expect("a data array")
        .iter()
        .map(|p| serde_json::to_vec(p).expect("re-encode"))
        .collect()
}

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
    // The example template: a payload field, the date and the hour; per payload.
    let hive = Template::parse(
        "{prefix}/event={payload.event}/os={payload.os.name}/dt={yyyy}-{mm}-{dd}/hour={hh}/{instance}-{shard}-{start}-{seq}",
    )
    .expect("a valid template");
    let hks = KeySpace::with_template(
        Arc::new(hive),
        "corepost",
        "ingest-host-01",
        3,
        1_795_873_262_604_259,
    );
    let body = payloads();
    let mut i = 0usize;
    g.bench_function("partition_hive_body10", |b| {
        b.iter(|| {
            i = (i + 1) % body.len();
            let fields = hks.fields(None, black_box(1_795_910_399), &[]);
            black_box(hks.partition(&fields, black_box(&body[i])))
        })
    });
    g.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
