//! Payload encoding: what storing "equal in value" would cost if payloads were re-encoded
//! (serde_json `Value` round trip) against copying the bytes as sent, which corepost does;
//! and the upload worker's CPU per payload from a parsed request to objects in the fs sink,
//! through a partitioning `keys.template`, as NDJSON (plain, zstd) or Parquet (zstd; schema
//! inferred per object, or fixed by a schema file).
#![allow(missing_docs)]

use corepost::config::{BatchConfig, BatchFormat, Compression, ParserKind};
use corepost::keys::{KeySpace, Template};
use corepost::parse::BodyParser;
use corepost::upload::{FsSink, ObjectBuilder};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

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

/// CPU time of the measuring thread (`CLOCK_THREAD_CPUTIME_ID`: user and system, in
/// nanoseconds), instead of wall time: on a shared machine the wall time of a pinned benchmark counts the
/// time other processes hold its core; its CPU time is what it costs. The fs writes' system
/// time counts.
struct ThreadCpu;

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("clock_gettime");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

/// Payloads per object: objects close by count, as under load.
const OBJECT_PAYLOADS: usize = 1_000;

/// The worker's path for one request, per payload: its partition from the template, its
/// partition's object (closed and written to the fs sink every [`OBJECT_PAYLOADS`]). Object
/// names cycle through 16 sequence numbers per partition, so the files are overwritten
/// and the disk use stays bounded; the write itself is measured.
fn objects_into_fs(c: &mut Criterion<ThreadCpu>) {
    let template = Template::parse(
        "{prefix}/event={payload.event}/dt={yyyy}-{mm}-{dd}/{instance}-{shard}-{start}-{seq}",
    )
    .expect("a valid template");
    let ks = KeySpace::with_template(Arc::new(template), "corepost", "bench", 0, 1);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
    let sink = FsSink::new(dir.path(), false);
    // The body files' shape, for Parquet with `batch.schema_file` (no inference).
    let schema = corepost::upload::schema_file::parse(
        br#"{"device_id": "string", "ts": "int64", "event": "string",
            "os": {"name": "string", "build": "int64"}, "metrics": ["float64"],
            "tags": ["string"], "ok": "bool"}"#,
    )
    .expect("a valid schema");
    let formats = [
        ("ndjson", BatchFormat::Json, Compression::None, None),
        ("ndjson_zstd", BatchFormat::Json, Compression::Zstd, None),
        (
            "parquet_zstd",
            BatchFormat::Parquet,
            Compression::Zstd,
            None,
        ),
        (
            "parquet_zstd_schema_file",
            BatchFormat::Parquet,
            Compression::Zstd,
            Some(&schema),
        ),
    ];
    let mut g = c.benchmark_group("objects_into_fs");
    g.measurement_time(Duration::from_secs(6));
    for (body_name, body) in [("body10", BODY10), ("body100", BODY100)] {
        let mut spans = Vec::new();
        BodyParser::new(ParserKind::Simd)
            .parse(body, &mut spans)
            .expect("a valid body");
        g.throughput(Throughput::Elements(spans.len() as u64));
        // The template alone: each payload's partition.
        g.bench_function(BenchmarkId::new("template_only", body_name), |b| {
            b.iter(|| {
                let fields = ks.fields(None, 1_796_656_260, &[]);
                for &(s, e) in &spans {
                    black_box(ks.partition(&fields, &body[s as usize..e as usize]));
                }
            })
        });
        for (name, format, compression, schema) in formats {
            let cfg = BatchConfig {
                format,
                compression,
                max_payloads: OBJECT_PAYLOADS,
                max_bytes: 64 << 20,
                ..BatchConfig::default()
            };
            let mut open: HashMap<String, ObjectBuilder> = HashMap::new();
            let mut closed = 0u64;
            g.bench_function(BenchmarkId::new(name, body_name), |b| {
                b.iter(|| {
                    let fields = ks.fields(None, 1_796_656_260, &[]);
                    for &(s, e) in &spans {
                        let payload = &body[s as usize..e as usize];
                        let part = ks.partition(&fields, payload);
                        let o = match open.get_mut(&part) {
                            Some(o) => o,
                            None => open
                                .entry(part.clone())
                                .or_insert(ObjectBuilder::new(&cfg, schema).expect("a builder")),
                        };
                        o.push(payload).expect("push");
                        if o.payloads() >= OBJECT_PAYLOADS {
                            let Some(o) = open.remove(&part) else {
                                continue;
                            };
                            let done = o.finish().expect("finish");
                            if let Some((data, f, _)) = done.object {
                                closed += 1;
                                let key = ks.object_key(&part, ks.seq_name(closed % 16), f.ext);
                                sink.put(&key, &data).expect("fs write");
                            }
                            assert!(done.unfit.is_none(), "body payloads all fit");
                        }
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encode);
criterion_group! {
    name = cpu_benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = objects_into_fs
}
criterion_main!(benches, cpu_benches);
