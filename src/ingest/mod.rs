//! Body → payloads: validating a request body and finding each payload's bytes in it.
//!
//! Both parsers return the same thing: the byte range of every element of `data`, as the
//! client sent it (escapes, non-ASCII text and 64-bit integers survive because nothing is
//! re-encoded). Which one runs is `server.parser`; `benches/ingest.rs` measures both.
#![forbid(unsafe_code)]

mod scan;
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
    /// The body is not valid JSON (or not UTF-8): what was expected or found there, in words,
    /// and at which byte of the (decoded) body, the same words whichever parser runs.
    #[error("invalid JSON{}: {what}", at_byte(.at))]
    Json {
        /// Offset of the fault in the body; the body's length when it ended too early;
        /// `None` when no byte can be named.
        at: Option<usize>,
        /// What is wrong, e.g. "expected a value" (see [`describe`]).
        what: Cow<'static, str>,
    },
    /// Valid JSON of the wrong shape.
    #[error("wrong shape: {0}")]
    Shape(String),
    /// Containers nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// `[auth]` is set and the request has no listed token: `401` with `WWW-Authenticate:
    /// Bearer`. The message never contains the token.
    #[error("{}", refusal_words(.0))]
    Unauthorized(crate::auth::Refusal),
    /// The body is larger than `server.max_body_bytes`.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// A compressed body whose decoded size passes `server.max_decoded_bytes` (decoding
    /// stops there).
    #[error("decoded body larger than {0} bytes (server.max_decoded_bytes)")]
    DecodedTooLarge(usize),
    /// A zstd frame whose window (memory the decoder must keep) is larger than the limit:
    /// `server.max_decoded_bytes` rounded down to a power of two, at least 8 MiB.
    #[error("zstd window larger than {0} bytes (set by server.max_decoded_bytes); compress with a smaller window")]
    WindowTooLarge(usize),
    /// A `Content-Encoding` other than gzip, deflate, zstd or identity, or more than one.
    #[error("unsupported Content-Encoding {0:?}; request bodies may be gzip, deflate or zstd")]
    UnsupportedEncoding(String),
    /// The compressed body could not be decoded (corrupt, truncated, trailing data).
    #[error("invalid {coding} data: {why}")]
    BadEncoding {
        /// The body's `Content-Encoding`.
        coding: &'static str,
        /// What the decoder found.
        why: String,
    },
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

fn refusal_words(r: &crate::auth::Refusal) -> &'static str {
    match r {
        crate::auth::Refusal::Missing => "a token is required: send `Authorization: Bearer TOKEN` (or the body's \"token\" field)",
        crate::auth::Refusal::Invalid => "invalid token: send `Authorization: Bearer TOKEN` with a listed token",
    }
}

fn at_byte(at: &Option<usize>) -> String {
    at.map(|a| format!(" at byte {a}")).unwrap_or_default()
}

/// The words for invalid JSON, shared by both parsers so that a fault reads the same whichever
/// one found it.
pub mod describe {
    /// The body ended inside a value (also an empty body).
    pub const EOF: &str = "unexpected end of the body";
    /// Something other than a value where a value must be (`nope`, `]`, `{"a":}`).
    pub const VALUE: &str = "expected a value";
    /// A complete JSON value followed by more than whitespace.
    pub const TRAILING: &str = "unexpected data after the JSON value";
    /// A `,` right before `]` or `}`.
    pub const TRAILING_COMMA: &str = "trailing comma";
    /// Neither `,` nor `]` after an element of an array.
    pub const ARRAY_NEXT: &str = "expected `,` or `]` after an array element";
    /// Neither `,` nor `}` after a member of an object.
    pub const OBJECT_NEXT: &str = "expected `,` or `}` after an object member";
    /// An object member that does not start with a string.
    pub const KEY: &str = "expected a string key";
    /// No `:` after an object's key.
    pub const COLON: &str = "expected `:` after an object key";
    /// A string where one was required and something else was found.
    pub const STRING: &str = "expected a string";
    /// A backslash followed by a character that is not a JSON escape, or `\u` without four
    /// hex digits.
    pub const ESCAPE: &str = "invalid escape sequence in a string";
    /// A `\u` escape of half a surrogate pair without the other half (UTF-16 for a
    /// character beyond U+FFFF takes two escapes).
    pub const SURROGATE: &str = "unpaired surrogate in a \\u escape";
    /// A byte below 0x20 inside a string; JSON requires it escaped.
    pub const CONTROL: &str = "unescaped control character in a string";
    /// Bytes that are not UTF-8.
    pub const UTF8: &str = "invalid UTF-8";
    /// A malformed number (`01`, `1.`, `-`, `1e`) or, with the simd parser, one beyond 64-bit
    /// integers or the f64 range.
    pub const NUMBER: &str = "invalid number";
}

impl IngestError {
    /// Invalid JSON at byte `at`: `what` (one of [`describe`]'s phrases).
    pub fn json_at(at: usize, what: impl Into<Cow<'static, str>>) -> Self {
        IngestError::Json {
            at: Some(at),
            what: what.into(),
        }
    }

    /// Invalid JSON at no byte that can be named.
    pub fn json(what: impl Into<Cow<'static, str>>) -> Self {
        IngestError::Json {
            at: None,
            what: what.into(),
        }
    }

    /// The HTTP status that tells the client what happened.
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Json { .. }
            | IngestError::Shape(_)
            | IngestError::Body(_)
            | IngestError::BadEncoding { .. }
            | IngestError::TooDeep(_) => StatusCode::BAD_REQUEST,
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge(_)
            | IngestError::DecodedTooLarge(_)
            | IngestError::WindowTooLarge(_)
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
    /// Raw, so that the token is borrowed from the body (serde's `Option<Cow<str>>` always
    /// copies); checked to be a string or `null` in [`raw_token`].
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// The body's `token` field, as the string's bytes with its escapes decoded: borrowed from
/// the body (no copy) unless it has escapes; `None` when absent or `null`. Checked against
/// `[auth]` when a request has no `Authorization` header.
pub type BodyToken<'b> = Option<Cow<'b, [u8]>>;

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
    /// Returns the body's `token` field (see [`BodyToken`]).
    pub fn parse<'b>(
        &mut self,
        body: &'b [u8],
        spans: &mut Vec<Span>,
    ) -> Result<BodyToken<'b>, IngestError> {
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

fn parse_serde<'b>(body: &'b [u8], spans: &mut Vec<Span>) -> Result<BodyToken<'b>, IngestError> {
    // serde_json does not look inside values it skips (unknown fields), so UTF-8 is checked
    // for the whole body here, as simd-json does.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(IngestError::json_at(e.valid_up_to(), describe::UTF8));
    }
    let c: Collection<'_> = serde_json::from_slice(body).map_err(|e| serde_error(body, &e))?;
    let base = body.as_ptr() as usize;
    spans.reserve(c.data.len());
    for raw in c.data {
        let s = raw.get();
        // A borrowed RawValue is a sub-slice of `body`; its offset is plain address arithmetic.
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        if start > body.len() || start + s.len() > body.len() {
            return Err(IngestError::json("payload outside the body"));
        }
        spans.push((start as u32, (start + s.len()) as u32));
    }
    let token = c.token.map(raw_token).transpose()?.flatten();
    check_depth(body, spans, MAX_DEPTH)?;
    Ok(token)
}

/// The bytes of a raw `token` value: borrowed unless it has escapes; `None` for `null`.
fn raw_token(raw: &RawValue) -> Result<Option<Cow<'_, [u8]>>, IngestError> {
    let text = raw.get();
    match text.as_bytes() {
        b"null" => Ok(None),
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => Ok(Some(Cow::Borrowed(inner))),
        [b'"', ..] => serde_json::from_str::<String>(text)
            .map(|s| Some(Cow::Owned(s.into_bytes())))
            .map_err(|_| IngestError::json(describe::ESCAPE)),
        _ => Err(IngestError::Shape("`token` must be a string".into())),
    }
}

/// A serde_json error in words: wrong shapes keep serde's own account of what is wrong, syntax
/// errors get [`describe`]'s phrase and the byte they are at.
fn serde_error(body: &[u8], e: &serde_json::Error) -> IngestError {
    use serde_json::error::Category;
    match e.classify() {
        // serde would say "invalid length 2, expected struct Collection with 3 elements".
        Category::Data if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') => {
            IngestError::Shape(NOT_AN_OBJECT.into())
        }
        Category::Data => IngestError::Shape(e.to_string()),
        Category::Eof => IngestError::json_at(body.len(), describe::EOF),
        Category::Io => IngestError::json(format!("could not read the body: {e}")),
        Category::Syntax => serde_syntax(body, e),
    }
}

/// serde_json tells its syntax errors apart only in their messages ("expected value at line 1
/// column 1"); the message without its position names the class.
fn serde_syntax(body: &[u8], e: &serde_json::Error) -> IngestError {
    use describe::*;
    let full = e.to_string();
    let code = full
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&full);
    let mut at = byte_of(body, e.line(), e.column());
    let what = match code {
        "expected value" => VALUE,
        "expected ident" => {
            // serde_json reports a bad literal (`nope`, `tru`) where it stopped reading it;
            // the value starts at its first letter.
            while at > 0 && body.get(at - 1).is_some_and(u8::is_ascii_alphabetic) {
                at -= 1;
            }
            VALUE
        }
        "trailing characters" => TRAILING,
        "trailing comma" => TRAILING_COMMA,
        "expected `,` or `]`" => ARRAY_NEXT,
        "expected `,` or `}`" => OBJECT_NEXT,
        "key must be a string" => KEY,
        "expected `:`" => COLON,
        "expected `\"`" => STRING,
        // serde_json reports these where it stopped reading; the fault starts earlier.
        "invalid escape" | "unexpected end of hex escape" => {
            return string_fault_at(body, &[StrFault::Escape])
                .unwrap_or(IngestError::json_at(at, ESCAPE))
        }
        c if c.starts_with("control character") => {
            return string_fault_at(body, &[StrFault::Control])
                .unwrap_or(IngestError::json_at(at, CONTROL))
        }
        "invalid unicode code point" | "lone leading surrogate in hex escape" => SURROGATE,
        "invalid number" | "number out of range" => {
            return IngestError::json_at(number_start(body, at), NUMBER)
        }
        "recursion limit exceeded" => return IngestError::TooDeep(MAX_DEPTH),
        // A class this list does not know yet (a newer serde_json): its own words.
        other => return IngestError::json_at(at, other.to_owned()),
    };
    IngestError::json_at(at, what)
}

/// The shape error for a body that is valid JSON but not an object.
const NOT_AN_OBJECT: &str = "the body must be a JSON object with a \"data\" array";

/// A fault inside a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrFault {
    /// A byte below 0x20 (JSON requires it escaped).
    Control,
    /// A backslash not followed by a JSON escape, or `\u` without four hex digits.
    Escape,
    /// A `\u` escape of half a surrogate pair without the other half.
    Surrogate,
}

/// What a lexical pass over the strings of a body finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrScan {
    /// The first fault of a kind asked for, at this byte (an escape's backslash).
    Fault(usize, StrFault),
    /// No such fault, but the body ends inside a string.
    Open,
    /// Neither.
    Clean,
}

/// Scans the strings of `body` (found by their quotes, which is exact as long as the body is
/// valid JSON up to the fault) for the first fault of one of `kinds`. Both parsers use it to
/// name the byte of a fault inside a string: serde_json reports such faults where it
/// stopped reading, and simd-json (depending on the CPU's code path) at an offset inside the
/// string, or nowhere at all.
fn scan_strings(body: &[u8], kinds: &[StrFault]) -> StrScan {
    let hex4 = |i: usize| -> Option<u32> {
        let h = body.get(i..i + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    };
    let (mut i, mut in_str) = (0, false);
    while i < body.len() {
        let c = body[i];
        if !in_str {
            in_str = c == b'"';
            i += 1;
            continue;
        }
        let fault = match c {
            b'"' => {
                in_str = false;
                i += 1;
                continue;
            }
            0..=0x1f => Some(StrFault::Control),
            b'\\' => match body.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                    i += 2;
                    continue;
                }
                Some(b'u') => match hex4(i + 2) {
                    None => Some(StrFault::Escape),
                    Some(0xD800..=0xDBFF) => {
                        let low = (body.get(i + 6..i + 8) == Some(b"\\u"))
                            .then(|| hex4(i + 8))
                            .flatten();
                        if matches!(low, Some(0xDC00..=0xDFFF)) {
                            i += 12;
                            continue;
                        }
                        Some(StrFault::Surrogate)
                    }
                    Some(0xDC00..=0xDFFF) => Some(StrFault::Surrogate),
                    Some(_) => {
                        i += 6;
                        continue;
                    }
                },
                // The body ends right after the backslash.
                None => {
                    i += 1;
                    continue;
                }
                Some(_) => Some(StrFault::Escape),
            },
            _ => None,
        };
        if let Some(f) = fault.filter(|f| kinds.contains(f)) {
            return StrScan::Fault(i, f);
        }
        i += 1;
    }
    if in_str {
        StrScan::Open
    } else {
        StrScan::Clean
    }
}

/// The first fault of one of `kinds` in the strings of `body`, as an error.
fn string_fault_at(body: &[u8], kinds: &[StrFault]) -> Option<IngestError> {
    match scan_strings(body, kinds) {
        StrScan::Fault(at, f) => Some(IngestError::json_at(
            at,
            match f {
                StrFault::Control => describe::CONTROL,
                StrFault::Escape => describe::ESCAPE,
                StrFault::Surrogate => describe::SURROGATE,
            },
        )),
        StrScan::Open | StrScan::Clean => None,
    }
}

/// Where the number around byte `at` starts: both parsers report a bad number at the byte
/// where they gave up on it, which differs between them.
fn number_start(body: &[u8], mut at: usize) -> usize {
    at = at.min(body.len());
    while at > 0
        && body
            .get(at - 1)
            .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        at -= 1;
    }
    at
}

/// The byte offset of serde_json's 1-based `line` and `column` (the column counts the bytes of
/// the line up to and including the one at fault).
fn byte_of(body: &[u8], line: usize, column: usize) -> usize {
    let start = if line <= 1 {
        0
    } else {
        body.iter()
            .enumerate()
            .filter(|&(_, &c)| c == b'\n')
            .nth(line - 2)
            .map_or(body.len(), |(i, _)| i + 1)
    };
    (start + column.saturating_sub(1)).min(body.len())
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
                p.parse(body, &mut spans).map(|_| {
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

    /// The `token` each parser gives back: `[serde, simd]`.
    fn tokens(body: &[u8]) -> [Option<Vec<u8>>; 2] {
        [ParserKind::Serde, ParserKind::Simd].map(|k| {
            let mut spans = Vec::new();
            BodyParser::new(k)
                .parse(body, &mut spans)
                .unwrap_or_else(|e| panic!("{k:?}: {e}"))
                .map(|t| t.into_owned())
        })
    }

    #[test]
    fn both_parsers_give_back_the_token() {
        let same = |body: &str, want: Option<&[u8]>| {
            let want = want.map(<[u8]>::to_vec);
            assert_eq!(tokens(body.as_bytes()), [want.clone(), want], "{body}");
        };
        same(r#"{"token":"abc","data":[1]}"#, Some(b"abc"));
        same(r#"{"data":[1], "token" : "a-b.c_d" }"#, Some(b"a-b.c_d"));
        same(r#"{"data":[1],"token":"a\u0062c\"d\\"}"#, Some(b"abc\"d\\"));
        same(
            r#"{"data":[1],"token":"\u00e9"}"#,
            Some("\u{e9}".as_bytes()),
        );
        same(r#"{"data":[1],"token":""}"#, Some(b""));
        same(r#"{"data":[1],"token":null}"#, None);
        same(r#"{"data":[1]}"#, None);
        same(
            r#"{"data":[{"token":"inner"}],"x":{"token":"nested"}}"#,
            None,
        );
        // Borrowed from the body (no copy) when it has no escapes.
        let body = br#"{"token":"abc","data":[]}"#;
        for k in [ParserKind::Serde, ParserKind::Simd] {
            let mut spans = Vec::new();
            let t = BodyParser::new(k).parse(body, &mut spans).unwrap();
            assert!(matches!(t, Some(Cow::Borrowed(b"abc"))), "{k:?}");
        }
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
                matches!(err(b), IngestError::Json { .. }),
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
            IngestError::Json { .. }
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
            assert!(
                matches!(&r[1], Err(IngestError::Json { what, .. }) if what == describe::NUMBER
                    || what == describe::SURROGATE),
                "simd refuses it: {:?}",
                r[1]
            );
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

    /// The error messages of both parsers for `body`: `[serde, simd]`.
    fn messages(body: &[u8]) -> [String; 2] {
        let r = both(body);
        let m = |r: &Result<Vec<String>, IngestError>| match r {
            Ok(p) => panic!("{:?} accepted: {p:?}", String::from_utf8_lossy(body)),
            Err(e) => e.to_string(),
        };
        [m(&r[0]), m(&r[1])]
    }

    /// Both parsers say `want` about each of `bodies`, word for word.
    fn both_say(want: &str, bodies: &[(&[u8], usize)]) {
        for &(body, at) in bodies {
            let want = format!("invalid JSON at byte {at}: {want}");
            assert_eq!(
                messages(body),
                [want.clone(), want],
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_messages_say_where() {
        both_say(describe::TRAILING_COMMA, &[(b"{\"data\":[1,]}", 11)]);
        // On a later line: still the byte offset in the body.
        both_say(describe::ARRAY_NEXT, &[(b"{\n\"data\":\n[1\n2]}", 13)]);
    }

    #[test]
    fn no_value_where_one_is_due_says_expected_a_value() {
        both_say(
            describe::VALUE,
            &[
                (b"nope", 0),
                (b"x", 0),
                (b"  ]", 2),
                (b"{\"data\":[tru]}", 9),
                (b"{\"data\":[}", 9),
                (b"{\"data\":}", 8),
                (b"{\"data\":[1,,2]}", 11),
                (b"{\"data\":[1,}", 11),
            ],
        );
    }

    #[test]
    fn a_body_that_stops_early_says_unexpected_end() {
        both_say(
            describe::EOF,
            &[
                (b"", 0),
                (b"  \n", 3),
                (b"{", 1),
                (b"{\"data\":[1", 10),
                (b"{\"data\":[\"ab", 12),
                (b"{\"data\"", 7),
            ],
        );
    }

    #[test]
    fn more_after_the_value_says_unexpected_data() {
        both_say(
            describe::TRAILING,
            &[
                (b"{\"data\":[1]} x", 13),
                (b"{\"data\":[]}{}", 11),
                (b"{\"data\":[]}\n\n]", 13),
            ],
        );
        // Wrong shapes before the trailing data: serde_json streams and stops at the shape
        // (not an object; no `data`), simd-json validates the whole body first.
        for (body, at) in [(&b"1 2"[..], 2), (b"[] x", 3), (b"{} x", 3), (b"{}}", 2)] {
            let [serde, simd] = messages(body);
            assert!(serde.starts_with("wrong shape: "), "{serde}");
            assert_eq!(
                simd,
                format!("invalid JSON at byte {at}: unexpected data after the JSON value")
            );
        }
    }

    #[test]
    fn trailing_commas_are_named() {
        both_say(
            describe::TRAILING_COMMA,
            &[(b"{\"data\":[1,]}", 11), (b"{\"data\":[],}", 11)],
        );
    }

    #[test]
    fn missing_separators_and_keys_are_named() {
        both_say(describe::ARRAY_NEXT, &[(b"{\"data\":[1 2]}", 11)]);
        both_say(describe::OBJECT_NEXT, &[(b"{\"data\":[] \"x\":1}", 11)]);
        both_say(describe::KEY, &[(b"{1:2}", 1), (b"{\"data\":[],1:2}", 11)]);
        both_say(describe::COLON, &[(b"{\"data\" []}", 8)]);
    }

    #[test]
    fn string_faults_are_named() {
        for (body, what) in [
            (&b"{\"data\":[\"a\\xb\"]}"[..], describe::ESCAPE),
            (b"{\"data\":[\"\\u12G4\"]}", describe::ESCAPE),
            (b"{\"data\":[\"a\tb\"]}", describe::CONTROL),
            (b"{\"data\":[\"\xff\"]}", describe::UTF8),
            (b"{\"\":\"\xc3\",\"data\":[]}", describe::UTF8),
        ] {
            for m in messages(body) {
                assert!(
                    m.starts_with("invalid JSON at byte ") && m.ends_with(what),
                    "{:?}: {m}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        both_say(describe::UTF8, &[(b"{\"data\":[\"\xff\"]}", 10)]);
        both_say(describe::CONTROL, &[(b"{\"data\":[\"a\tb\"]}", 11)]);
    }

    #[test]
    fn number_faults_are_named() {
        for body in [
            &b"{\"data\":[01]}"[..],
            b"{\"data\":[1.]}",
            b"{\"data\":[-]}",
            b"{\"data\":[1e]}",
            b"{\"data\":[1.5e+]}",
            b"{\"data\":[-x]}",
        ] {
            for m in messages(body) {
                assert!(
                    m.starts_with("invalid JSON at byte ") && m.ends_with(describe::NUMBER),
                    "{:?}: {m}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // Numbers only the simd parser refuses (serde stores them as sent).
        for body in [
            &b"{\"data\":[1e400]}"[..],
            b"{\"data\":[18446744073709551616]}",
        ] {
            let r = both(body);
            assert!(r[0].is_ok());
            let m = r[1].clone().unwrap_err().to_string();
            assert!(
                m.starts_with("invalid JSON at byte 9") && m.ends_with(describe::NUMBER),
                "{m}"
            );
        }
    }

    #[test]
    fn wrong_shapes_keep_saying_what_is_wrong() {
        for (body, simd, serde) in [
            (
                &b"{\"data\":{}}"[..],
                "`data` must be an array of payloads",
                "invalid type: map, expected a sequence",
            ),
            (b"[]", NOT_AN_OBJECT, NOT_AN_OBJECT),
            (b"\"data\"", NOT_AN_OBJECT, NOT_AN_OBJECT),
            (
                b"{\"version\":1,\"data\":[]}",
                "`version` must be a string",
                "invalid type: integer `1`",
            ),
            (b"{}", "missing field `data`", "missing field `data`"),
        ] {
            let [m_serde, m_simd] = messages(body);
            assert!(
                m_serde.starts_with("wrong shape: ") && m_serde.contains(serde),
                "{m_serde}"
            );
            assert!(
                m_simd.starts_with("wrong shape: ") && m_simd.contains(simd),
                "{m_simd}"
            );
        }
    }

    /// A word like `ExpectedNull` or `InvalidUtf8`: an enum's Debug name, not words.
    fn camel_case(m: &str) -> bool {
        m.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
            let b = w.as_bytes();
            (1..b.len().saturating_sub(1)).any(|i| {
                b[0].is_ascii_uppercase()
                    && b[i].is_ascii_lowercase()
                    && b[i + 1].is_ascii_uppercase()
            })
        })
    }

    #[test]
    fn no_message_is_a_debug_name() {
        assert!(camel_case("invalid JSON: ExpectedNull at byte 0"));
        assert!(!camel_case("invalid JSON at byte 0: invalid UTF-8"));
        for body in [
            &b"nope"[..],
            b"",
            b"{",
            b"{\"data\":[1,]}",
            b"{\"data\":[1]} x",
            b"{\"data\":[\"\xff\"]}",
            b"{\"data\":[1e400]}",
            b"{\"data\":[\"\\ud800\"]}",
            b"{\"data\":[\"\\udc00\"]}",
            b"{\"data\":[\"\\ud800\\u0041\"]}",
        ] {
            for r in both(body) {
                if let Err(e) = r {
                    assert!(!camel_case(&e.to_string()), "{e}");
                }
            }
        }
    }
}
