//! Request parsing: the two `BodyParser`s (simd: the validating first pass, simd-json deciding
//! the rest; serde: serde_json raw values) and, for reference, simd-json alone (its tape, as
//! the simd parser's fallback runs it, and its DOM), on the standard bodies of 1, 10 and 100
//! payloads. `server.parser`'s default follows this benchmark.
//!
//! `INGEST_ONCE=<case>,<body>,<n> cargo bench --bench ingest` parses the body `n` times and exits
//! without criterion, for instruction counts that do not depend on the machine's noise:
//! `valgrind --tool=callgrind` on n = 1 and n = 1001 (the difference over 1000 is the cost of
//! one parse). `<case>` is one of `simd`, `serde`, `simd-tape`, `simd-dom`.
#![allow(missing_docs)]

use corepost::config::ParserKind;
use corepost::parse::BodyParser;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use simd_json::{fill_tape_padded, Buffers, Tape, INPUT_PADDING};
use std::hint::black_box;

const BODIES: [(&str, &[u8]); 3] = [
    ("body1", include_bytes!("workload/body1.json")),
    ("body10", include_bytes!("workload/body10.json")),
    ("body100", include_bytes!("workload/body100.json")),
];

const CASES: [&str; 4] = ["simd", "serde", "simd-tape", "simd-dom"];

/// One way of parsing a body, with its reused buffers; returns something of the result so
/// that the parse is not optimised away.
type Case = Box<dyn FnMut(&[u8]) -> usize>;

/// The case called `label` (one of [`CASES`]).
fn case(label: &str) -> Case {
    match label {
        "simd" | "serde" => {
            let kind = if label == "simd" {
                ParserKind::Simd
            } else {
                ParserKind::Serde
            };
            let mut p = BodyParser::new(kind);
            let mut spans = Vec::new();
            Box::new(move |body| {
                p.parse(body, &mut spans).unwrap();
                spans.len()
            })
        }
        // simd-json's tape over a padded copy, reused buffers: what the simd parser's full
        // path costs before its walk over the structural indexes.
        "simd-tape" => {
            let mut scratch = Vec::new();
            let mut buffers = Buffers::new(16 * 1024);
            let mut tape = Tape::null().reset();
            Box::new(move |body| {
                scratch.clear();
                scratch.extend_from_slice(body);
                scratch.resize(body.len() + INPUT_PADDING, b' ');
                let mut t = std::mem::replace(&mut tape, Tape::null()).reset();
                fill_tape_padded(&mut scratch, body.len(), &mut buffers, &mut t).unwrap();
                let n = t.0.len();
                tape = t.reset();
                n
            })
        }
        "simd-dom" => {
            let mut scratch = Vec::new();
            Box::new(move |body| {
                scratch.clear();
                scratch.extend_from_slice(body);
                let v = simd_json::to_borrowed_value(&mut scratch).unwrap();
                usize::from(simd_json::prelude::ValueAsScalar::as_str(&v).is_none())
            })
        }
        other => panic!("unknown case {other}"),
    }
}

fn parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, body) in BODIES {
        g.throughput(Throughput::Bytes(body.len() as u64));
        for label in CASES {
            let mut f = case(label);
            g.bench_with_input(BenchmarkId::new(label, name), body, |b, body| {
                b.iter(|| black_box(f(black_box(body))))
            });
        }
    }
    g.finish();
}

/// `INGEST_ONCE=<case>,<body>,<n>`: `n` parses and nothing else (see the module doc).
fn once() -> bool {
    let Ok(spec) = std::env::var("INGEST_ONCE") else {
        return false;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let [label, name, n] = parts[..] else {
        panic!("INGEST_ONCE=<case>,<body>,<n>");
    };
    let body = BODIES
        .iter()
        .find(|(b, _)| *b == name)
        .unwrap_or_else(|| panic!("unknown body {name}"))
        .1;
    let n: usize = n.parse().expect("n");
    let mut f = case(label);
    for _ in 0..n {
        black_box(f(black_box(body)));
    }
    true
}

criterion_group!(benches, parsers);

fn main() {
    if once() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
