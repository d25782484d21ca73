//! Differential fuzzing of the two body parsers (`server.parser = "serde"` and `"simd"`).
//!
//! A failed assertion is a finding. Invariants, for any bytes:
//! 1. neither parser panics;
//! 2. both accept, or both refuse with the same HTTP status (`corepost::http::answer::parse_status`);
//!    with `COREPOST_FUZZ_STRICT_VARIANT=1` also with the same `ParseError` variant;
//! 3. a simd parser that is reused across bodies (as a shard reuses it) answers exactly like a
//!    fresh one (no state leaks from one body to the next);
//! 4. when both accept they return identical spans; every span lies inside the body, spans are
//!    in order and do not overlap, carry no surrounding whitespace, and each parses on its own
//!    with serde_json;
//! 5. when both accept (and the body nests no deeper than `VALUE_CHECK_DEPTH`, so that
//!    serde_json's own recursion limit cannot trip), the body parses with serde_json as an
//!    object whose `data` array has exactly one element per span, each equal in value to the
//!    span's own parse.
//!
//! `COREPOST_FUZZ_IGNORE_KNOWN=1` lets inputs through whose accept/refuse disagreement is one
//! of the already reported classes (see `known_disagreement` and fuzz/README.md), so that a
//! long run can look for new ones; without it every disagreement is a crash.
#![no_main]

use corepost::config::ParserKind;
use corepost::http::answer::parse_status;
use corepost::parse::{describe, BodyParser, ParseError, Span, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::cell::RefCell;
use std::sync::OnceLock;

/// serde_json refuses a 128th level of nesting (its recursion limit counts down from 128 and
/// fails on reaching 0), while `MAX_DEPTH` accepts 128 levels; comparing `Value`s is only done
/// well below both.
const VALUE_CHECK_DEPTH: usize = 100;

thread_local! {
    static REUSED_SIMD: RefCell<BodyParser> = RefCell::new(BodyParser::new(ParserKind::Simd));
}

fn ignore_known() -> bool {
    static IGNORE: OnceLock<bool> = OnceLock::new();
    *IGNORE.get_or_init(|| std::env::var_os("COREPOST_FUZZ_IGNORE_KNOWN").is_some_and(|v| v == "1"))
}

fn strict_variant() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT
        .get_or_init(|| std::env::var_os("COREPOST_FUZZ_STRICT_VARIANT").is_some_and(|v| v == "1"))
}

fn run(parser: &mut BodyParser, body: &[u8]) -> Result<Vec<Span>, ParseError> {
    let mut spans = Vec::new();
    parser.parse(body, &mut spans).map(|_token| spans)
}

/// Deepest nesting of `[`/`{` outside strings (exact for valid JSON).
fn max_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &c in body {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Number tokens (outside strings) of a body.
fn numbers(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut i, mut in_str, mut esc) = (0usize, false, false);
    while i < body.len() {
        let c = body[i];
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < body.len()
                && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            out.push(&body[start..i]);
        } else {
            i += 1;
        }
    }
    out
}

/// A number that serde_json skips over as raw text but simd-json cannot represent: an integer
/// outside i64 and u64, or a float that overflows f64.
fn has_unrepresentable_number(body: &[u8]) -> bool {
    numbers(body).into_iter().any(|n| {
        let Ok(t) = std::str::from_utf8(n) else {
            return false;
        };
        if t.contains(['.', 'e', 'E']) {
            t.parse::<f64>().is_ok_and(|f| f.is_infinite())
        } else {
            t.parse::<i64>().is_err() && t.parse::<u64>().is_err() && t.len() > 1
        }
    })
}

/// A `\uXXXX` escape of a UTF-16 surrogate that is not part of a high+low pair.
fn has_lone_surrogate(body: &[u8]) -> bool {
    let hex = |b: &[u8]| -> Option<u16> {
        let s = std::str::from_utf8(b).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let esc_at = |i: usize| -> Option<u16> {
        if body.get(i) == Some(&b'\\') && body.get(i + 1) == Some(&b'u') {
            hex(body.get(i + 2..i + 6)?)
        } else {
            None
        }
    };
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            if let Some(u) = esc_at(i) {
                if (0xD800..0xDC00).contains(&u) {
                    match esc_at(i + 6) {
                        Some(l) if (0xDC00..0xE000).contains(&l) => i += 12,
                        _ => return true,
                    }
                    continue;
                } else if (0xDC00..0xE000).contains(&u) {
                    return true;
                }
            }
            i += 2; // skip the escaped character (an escaped backslash is not an escape)
            continue;
        }
        i += 1;
    }
    false
}

/// The accept/refuse disagreements already found and reported (fuzz/README.md, "Findings").
fn known_disagreement(
    body: &[u8],
    serde: &Result<Vec<Span>, ParseError>,
    simd: &Result<Vec<Span>, ParseError>,
) -> Option<&'static str> {
    match (serde, simd) {
        // F1: a duplicate `version` or `token` key: serde refuses, simd accepts.
        (Err(ParseError::Shape(m)), Ok(_))
            if m.starts_with("duplicate field `version`")
                || m.starts_with("duplicate field `token`") =>
        {
            Some("F1 duplicate version/token")
        }
        // F2: a number simd-json cannot represent: serde accepts, simd refuses.
        (Ok(_), Err(ParseError::Json { what, .. }))
            if what == describe::NUMBER && has_unrepresentable_number(body) =>
        {
            Some("F2 out-of-range number")
        }
        // F3: invalid UTF-8 inside a value serde_json skips: serde accepts, simd refuses.
        (Ok(_), Err(ParseError::Json { what, .. }))
            if what == describe::UTF8 && std::str::from_utf8(body).is_err() =>
        {
            Some("F3 invalid UTF-8 in an ignored field")
        }
        // F4: a lone surrogate escape: serde accepts, simd refuses.
        (Ok(_), Err(ParseError::Json { what, .. }))
            if what == describe::SURROGATE && has_lone_surrogate(body) =>
        {
            Some("F4 lone surrogate escape")
        }
        _ => None,
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 300 {
        format!("{}… ({} bytes)", &s[..s.floor_char_boundary(300)], b.len())
    } else {
        format!("{s:?}")
    }
}

fuzz_target!(|body: &[u8]| {
    let serde = run(&mut BodyParser::new(ParserKind::Serde), body);
    let simd = run(&mut BodyParser::new(ParserKind::Simd), body);
    let reused = REUSED_SIMD.with(|p| run(&mut p.borrow_mut(), body));

    assert_eq!(
        simd,
        reused,
        "a reused simd parser answers differently from a fresh one on {}",
        show(body)
    );

    if ignore_known() && known_disagreement(body, &serde, &simd).is_some() {
        return;
    }

    let spans = match (serde, simd) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a,
                b,
                "parsers accept with different spans on {}",
                show(body)
            );
            a
        }
        (Err(a), Err(b)) => {
            assert_eq!(
                parse_status(&a),
                parse_status(&b),
                "parsers refuse with different statuses: serde {a:?} / simd {b:?} on {}",
                show(body)
            );
            if strict_variant() {
                assert_eq!(
                    std::mem::discriminant(&a),
                    std::mem::discriminant(&b),
                    "parsers refuse with different errors: serde {a:?} / simd {b:?} on {}",
                    show(body)
                );
            }
            return;
        }
        (Ok(a), Err(b)) => panic!(
            "serde accepts ({} payloads), simd refuses with {b:?} on {}",
            a.len(),
            show(body)
        ),
        (Err(a), Ok(b)) => panic!(
            "simd accepts ({} payloads), serde refuses with {a:?} on {}",
            b.len(),
            show(body)
        ),
    };

    // Both accepted: every span is a standalone JSON value, in order, inside the body.
    let mut prev_end = 0usize;
    let mut values = Vec::with_capacity(spans.len());
    for &(s, e) in &spans {
        let (s, e) = (s as usize, e as usize);
        assert!(
            s < e && e <= body.len(),
            "span {s}..{e} outside a body of {} bytes: {}",
            body.len(),
            show(body)
        );
        assert!(
            s >= prev_end,
            "spans overlap or are out of order at {s}..{e}: {}",
            show(body)
        );
        prev_end = e;
        let p = &body[s..e];
        assert!(
            !is_ws(p[0]) && !is_ws(p[p.len() - 1]),
            "span {s}..{e} has surrounding whitespace: {}",
            show(p)
        );
        match serde_json::from_slice::<Value>(p) {
            Ok(v) => values.push(v),
            Err(err) => panic!(
                "accepted payload {s}..{e} does not parse with serde_json ({err}): {} in {}",
                show(p),
                show(body)
            ),
        }
    }

    // Both accepted: the whole body, as serde_json sees it, has exactly these payloads.
    if max_depth(body) > VALUE_CHECK_DEPTH {
        assert!(
            max_depth(body) <= MAX_DEPTH,
            "accepted nesting deeper than MAX_DEPTH"
        );
        return;
    }
    let whole: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(err) => panic!(
            "accepted body does not parse with serde_json ({err}): {}",
            show(body)
        ),
    };
    let data = whole
        .as_object()
        .and_then(|o| o.get("data"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("accepted body has no `data` array: {}", show(body)));
    assert_eq!(
        data.len(),
        values.len(),
        "`data` has {} elements but {} spans: {}",
        data.len(),
        values.len(),
        show(body)
    );
    for (i, (d, v)) in data.iter().zip(&values).enumerate() {
        assert_eq!(d, v, "payload {i} differs from data[{i}] in {}", show(body));
    }
});
