//! Body → payloads: validating a request body and finding each payload's bytes in it.
//!
//! Both parsers return the same thing: the byte range of every element of `data`, as the
//! client sent it (escapes, non-ASCII text and 64-bit integers survive because nothing is
//! re-encoded). Which one runs is `server.parser`; `benches/ingest.rs` measures both.
#![forbid(unsafe_code)]

mod simd;

use crate::config::ParserKind;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Deepest nesting of arrays and objects accepted (the top-level object is level 1); the same
/// limit as serde_json's recursion limit, so neither parser accepts what the other refuses.
pub const MAX_DEPTH: usize = 128;

/// Byte range `start..end` of one payload inside the request body.
pub type Span = (u32, u32);

/// Why a request was not accepted. Each variant knows its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not valid JSON (or not UTF-8).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Valid JSON of the wrong shape.
    #[error("wrong shape: {0}")]
    Shape(String),
    /// Containers nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// The body is larger than `server.max_body_bytes`.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// More payloads than the shard's whole queue holds (`queue.max_payloads`): it could
    /// never be accepted, so a retry cannot help.
    #[error("{n} payloads in one request; at most {max} per request (queue.max_payloads)")]
    TooManyPayloads {
        /// Payloads in the request.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// A body larger than the shard's whole queue (`queue.max_bytes`).
    #[error("body of {len} bytes; at most {max} per request (queue.max_bytes)")]
    OverQueue {
        /// The body's length (declared or read).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body could not be read (connection error, bad chunked encoding).
    #[error("could not read the body: {0}")]
    Body(String),
    /// The body did not arrive within `server.body_read_timeout_ms`.
    #[error("body not received within {0} ms")]
    BodyTimeout(u64),
    /// The shard's queue has no room for the whole request.
    #[error("overloaded")]
    Overloaded,
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// `ack = "uploaded"`: the payloads were not all stored within `server.ack_timeout_ms`.
    #[error("not stored within {0} ms; the payloads stay queued and may still be stored, so a retry can store them twice")]
    AckTimeout(u64),
    /// `ack = "uploaded"`: the store could not take the payloads now; they were kept for a
    /// later upload.
    #[error("the store is unavailable; the payloads were kept for a later upload, so a retry can store them twice")]
    NotStored,
    /// `ack = "durable"`: the shard's spool has reached its disk budget.
    #[error("overloaded: the durable spool is full")]
    SpoolFull,
    /// `ack = "durable"`: the spool's disk is full (the disk, not the spool's own budget).
    #[error("overloaded: the durable spool's disk is full")]
    SpoolDiskFull,
    /// `ack = "durable"`: the spool could not write the request (disk failure; logged).
    #[error("the request could not be written to the durable spool")]
    SpoolFailed,
    /// `ack = "uploaded"`: the store refused the payloads for good (credentials, bucket).
    #[error("the store refused the payloads; they were kept in the spill directory")]
    StoreRefused,
}

impl IngestError {
    /// The HTTP status that tells the client what happened.
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Json(_)
            | IngestError::Shape(_)
            | IngestError::Body(_)
            | IngestError::TooDeep(_) => StatusCode::BAD_REQUEST,
            IngestError::TooLarge(_)
            | IngestError::TooManyPayloads { .. }
            | IngestError::OverQueue { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::Overloaded
            | IngestError::ShuttingDown
            | IngestError::AckTimeout(_)
            | IngestError::NotStored
            | IngestError::SpoolFull
            | IngestError::SpoolDiskFull => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::StoreRefused | IngestError::SpoolFailed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// The collection as the Go service defined it. `version` and `token` are optional like in
/// Go's decoder, but must be strings when present; unknown top-level fields are ignored.
#[derive(Deserialize)]
struct Collection<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)]
    version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// A body parser with its reusable buffers; one per shard.
#[derive(Debug)]
pub struct BodyParser {
    kind: ParserKind,
    simd: simd::SimdState,
}

impl BodyParser {
    /// A parser of the given kind.
    pub fn new(kind: ParserKind) -> Self {
        Self {
            kind,
            simd: simd::SimdState::default(),
        }
    }

    /// Validates `body` and appends the byte range of each payload to `spans` (cleared first).
    pub fn parse(&mut self, body: &[u8], spans: &mut Vec<Span>) -> Result<(), IngestError> {
        spans.clear();
        if body.len() > u32::MAX as usize {
            return Err(IngestError::TooLarge(u32::MAX as usize));
        }
        match self.kind {
            ParserKind::Serde => parse_serde(body, spans),
            ParserKind::Simd => self.simd.parse(body, spans),
        }
    }
}

fn parse_serde(body: &[u8], spans: &mut Vec<Span>) -> Result<(), IngestError> {
    // serde_json does not look inside values it skips (unknown fields), so UTF-8 is checked
    // for the whole body here, as simd-json does.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(IngestError::Json(format!(
            "invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    let c: Collection<'_> = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => IngestError::Shape(e.to_string()),
            _ => IngestError::Json(e.to_string()),
        }
    })?;
    let base = body.as_ptr() as usize;
    spans.reserve(c.data.len());
    for raw in c.data {
        let s = raw.get();
        // A borrowed RawValue is a sub-slice of `body`; its offset is plain address arithmetic.
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        if start > body.len() || start + s.len() > body.len() {
            return Err(IngestError::Json("payload outside the body".into()));
        }
        spans.push((start as u32, (start + s.len()) as u32));
    }
    check_depth(body, spans, MAX_DEPTH)
}

/// Refuses nesting deeper than `max`. serde_json skips over a raw value without a depth limit,
/// so the serde path checks each payload here (a payload sits at level 2). Counting a payload's
/// opening brackets bounds its depth in one vectorisable pass; only a payload with more opening
/// brackets than the limit allows is scanned precisely.
fn check_depth(body: &[u8], spans: &[Span], max: usize) -> Result<(), IngestError> {
    let max = max.saturating_sub(2);
    for &(s, e) in spans {
        let p = &body[s as usize..e as usize];
        let opens = p.iter().filter(|&&c| c == b'[' || c == b'{').count();
        if opens > max {
            scan_depth(p, max)?;
        }
    }
    Ok(())
}

fn scan_depth(p: &[u8], max: usize) -> Result<(), IngestError> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &c in p {
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
                if depth > max {
                    return Err(IngestError::TooDeep(MAX_DEPTH));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY10: &[u8] = include_bytes!("../../benches/workload/body10.json");

    fn both(body: &[u8]) -> Vec<Result<Vec<String>, IngestError>> {
        [ParserKind::Serde, ParserKind::Simd]
            .into_iter()
            .map(|k| {
                let mut p = BodyParser::new(k);
                let mut spans = Vec::new();
                p.parse(body, &mut spans).map(|()| {
                    spans
                        .iter()
                        .map(|&(s, e)| {
                            String::from_utf8(body[s as usize..e as usize].to_vec()).unwrap()
                        })
                        .collect()
                })
            })
            .collect()
    }

    fn ok(body: &str) -> Vec<String> {
        let r = both(body.as_bytes());
        assert_eq!(r[0], r[1], "parsers disagree on {body}");
        r[0].clone().unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn err(body: &[u8]) -> IngestError {
        let r = both(body);
        let e0 = r[0].clone().expect_err("serde accepted");
        let e1 = r[1].clone().expect_err("simd accepted");
        assert_eq!(e0.status(), e1.status(), "{e0} vs {e1}");
        assert_eq!(
            std::mem::discriminant(&e0),
            std::mem::discriminant(&e1),
            "{e0} vs {e1}"
        );
        e0
    }

    #[test]
    fn standard_body_gives_ten_payloads_equal_in_value() {
        let payloads = ok(std::str::from_utf8(BODY10).unwrap());
        assert_eq!(payloads.len(), 10);
        let whole: serde_json::Value = serde_json::from_slice(BODY10).unwrap();
        for (i, p) in payloads.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(p).unwrap();
            assert_eq!(v, whole["data"][i]);
        }
    }

    #[test]
    fn bytes_as_sent_survive() {
        let body = r#" { "token" : "t" , "data" : [ {"s":"a\"b\\c\u00e9\n","big":18446744073709551615,"neg":-9223372036854775808} , "ünïcødé ✓" ,
        [1,[2,{"x":[]}]] , null , 1.5e300 ] , "version" : "v" } "#;
        let p = ok(body);
        assert_eq!(
            p,
            [
                r#"{"s":"a\"b\\c\u00e9\n","big":18446744073709551615,"neg":-9223372036854775808}"#,
                r#""ünïcødé ✓""#,
                r#"[1,[2,{"x":[]}]]"#,
                "null",
                "1.5e300"
            ]
        );
    }

    #[test]
    fn empty_data_is_fine_and_other_fields_are_optional() {
        assert!(ok(r#"{"version":"1","token":"t","data":[]}"#).is_empty());
        assert_eq!(ok(r#"{"data":[{}],"extra":{"data":[1,2]}}"#), ["{}"]);
        assert_eq!(ok(r#"{"version":null,"data":[ 7 ]}"#), ["7"]);
    }

    #[test]
    fn escaped_key_is_still_data() {
        assert_eq!(ok(r#"{"d\u0061ta":[1]}"#), ["1"]);
    }

    #[test]
    fn invalid_json_is_a_json_error() {
        for b in [
            &b""[..],
            b"{",
            b"{\"data\":[1,]}",
            b"{\"data\":[1]} x",
            b"{\"data\":[\"\xff\"]}",
            b"nul",
        ] {
            assert!(
                matches!(err(b), IngestError::Json(_)),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn wrong_shape_is_a_shape_error() {
        for b in [
            &br#"[]"#[..],
            br#"{"version":"1"}"#,
            br#"{"data":{}}"#,
            br#"{"data":[],"version":5}"#,
            br#"{"data":[],"token":[]}"#,
            br#"{"data":[],"data":[]}"#,
            br#""data""#,
        ] {
            assert!(
                matches!(err(b), IngestError::Shape(_)),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    /// Regressions found by `fuzz/` (body_decoder): inputs on which the parsers disagreed.
    #[test]
    fn fuzz_regressions_agree() {
        // F1: repeated `version`/`token`; F3: invalid UTF-8 inside an ignored field.
        for b in [
            &br#"{"token":"","token":"","data":[]}"#[..],
            br#"{"version":"a","version":"b","data":[]}"#,
        ] {
            assert!(matches!(err(b), IngestError::Shape(_)));
        }
        assert!(matches!(
            err(b"{\"\":\"\xff\",\"data\":[]}"),
            IngestError::Json(_)
        ));
    }

    /// The one documented difference: simd-json refuses numbers it cannot represent and lone
    /// surrogate escapes anywhere in the body; serde_json skips over a raw payload without
    /// converting it, so the `serde` parser stores such payloads as sent.
    #[test]
    fn simd_is_stricter_on_numbers_and_surrogates() {
        for b in [
            &br#"{"data":[1e400]}"#[..],
            br#"{"data":[18446744073709551616]}"#,
            br#"{"data":[-9223372036854775809]}"#,
            br#"{"data":["\ud800"]}"#,
        ] {
            let r = both(b);
            assert!(r[0].is_ok(), "serde stores it as sent");
            assert!(matches!(r[1], Err(IngestError::Json(_))), "simd refuses it");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut b = String::from(r#"{"data":["#);
        b.push_str(&"[".repeat(10_000));
        b.push_str(&"]".repeat(10_000));
        b.push_str("]}");
        let e = err(b.as_bytes());
        assert_eq!(e, IngestError::TooDeep(MAX_DEPTH));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn depth_limit_is_the_same_for_both_parsers() {
        // Top-level object is level 1, `data` level 2, so payloads may nest MAX_DEPTH - 2 deep.
        let nested = |n: usize| format!(r#"{{"data":[{}{}]}}"#, "[".repeat(n), "]".repeat(n));
        assert_eq!(ok(&nested(MAX_DEPTH - 2)).len(), 1);
        assert_eq!(
            err(nested(MAX_DEPTH - 1).as_bytes()),
            IngestError::TooDeep(MAX_DEPTH)
        );
        // Brackets inside strings do not count.
        let in_string = format!(r#"{{"data":["{}"]}}"#, "[".repeat(500));
        assert_eq!(ok(&in_string).len(), 1);
    }

    #[test]
    fn error_messages_say_where() {
        let r = both(b"{\"data\":[1,]}");
        for e in r {
            let msg = e.unwrap_err().to_string();
            assert!(
                msg.contains("column 12") || msg.contains("byte 11"),
                "{msg}"
            );
        }
    }
}
