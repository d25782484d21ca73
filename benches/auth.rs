//! The token check (`[auth]`): what a payload request pays for it, beside what it pays to
//! parse its body. `check/header/N` is the `Authorization: Bearer` path (parse the header
//! value, hash, one table probe, constant-time compare) with N tokens listed;
//! `check/body/N` the body `token` path for body10 (the token the parser gave back). The
//! token is the valid one; `miss` a wrong token of the same length (the same work).
#![allow(missing_docs)]

use corepost::auth::{bearer, ShardTokens, Tokens};
use corepost::config::ParserKind;
use corepost::parse::BodyParser;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

const BODY10: &[u8] = include_bytes!("workload/body10.json");

/// A tokens file of `n` tokens (32 random-looking characters each, every tenth with a
/// tenant) whose last line is `bench-token acme`, loaded as a shard sees it.
fn shard_tokens(n: usize) -> (ShardTokens, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let mut text = String::new();
    for i in 0..n.saturating_sub(1) {
        let t = format!("{:016x}{:016x}", fastrand::u64(..), i);
        if i % 10 == 0 {
            text.push_str(&format!("{t} tenant-{i}\n"));
        } else {
            text.push_str(&format!("{t}\n"));
        }
    }
    text.push_str("bench-token acme\n");
    std::fs::write(&path, text).unwrap();
    (ShardTokens::new(Tokens::load(&path).unwrap()), dir)
}

fn check(c: &mut Criterion) {
    let mut g = c.benchmark_group("check");
    for n in [1usize, 100, 10_000] {
        let (tokens, _dir) = shard_tokens(n);
        g.bench_with_input(BenchmarkId::new("header", n), &n, |b, _| {
            b.iter(|| {
                let t = bearer(black_box(b"Bearer bench-token")).unwrap();
                black_box(tokens.check(t).is_ok())
            })
        });
        g.bench_with_input(BenchmarkId::new("header-miss", n), &n, |b, _| {
            b.iter(|| {
                let t = bearer(black_box(b"Bearer bench-tokex")).unwrap();
                black_box(tokens.check(t).is_ok())
            })
        });
        let mut p = BodyParser::new(ParserKind::Simd);
        let mut spans = Vec::new();
        let token = p.parse(BODY10, &mut spans).unwrap().unwrap().into_owned();
        g.bench_with_input(BenchmarkId::new("body", n), &n, |b, _| {
            b.iter(|| black_box(tokens.check(black_box(&token)).is_ok()))
        });
    }
    // For scale: what the same request pays to parse its body.
    let mut p = BodyParser::new(ParserKind::Simd);
    let mut spans = Vec::new();
    g.bench_function("parse-body10-simd", |b| {
        b.iter(|| {
            let t = p.parse(black_box(BODY10), &mut spans).unwrap();
            black_box(t.is_some())
        })
    });
    g.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
