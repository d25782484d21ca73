//! Body → payloads: validating a request body and finding each payload's bytes in it.
//!
//! Both parsers return the same thing: the byte range of every element of `data`, as the
//! client sent it (escapes, non-ASCII text and 64-bit integers survive because nothing is
//! re-encoded). Which one runs is `server.parser`; `benches/ingest.rs` measures both.
//!
//! Unsafe code is denied here and forbidden in every submodule but `stage1`, whose vector
//! loads and AVX2 dispatch allow it locally, each with its `// SAFETY:` line.

mod scan;
mod simd;
mod stage1;
pub mod token;

use crate::config::ParserKind;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Deepest nesting of arrays and objects accepted (the top-level object is level 1); the same
/// limit as serde_json's recursion limit, so neither parser accepts what the other refuses.
pub const MAX_DEPTH: usize = 128;

/// Byte range `start..end` of one payload inside the request body.
pub type Span = (u32, u32);

/// Why a body is not a collection of payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
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
    /// A body longer than the parsers can index (4 GiB).
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
}

/// A body over a limit: the words a client reads with its `413`, whichever layer found it
/// (HTTP reading the body, intake's declared length or spool record, the parsers' index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body larger than {0} bytes")]
pub struct BodyTooLarge(pub usize);

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

impl ParseError {
    /// Invalid JSON at byte `at`: `what` (one of [`describe`]'s phrases).
    pub fn json_at(at: usize, what: impl Into<Cow<'static, str>>) -> Self {
        ParseError::Json {
            at: Some(at),
            what: what.into(),
        }
    }

    /// Invalid JSON at no byte that can be named.
    pub fn json(what: impl Into<Cow<'static, str>>) -> Self {
        ParseError::Json {
            at: None,
            what: what.into(),
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
    ) -> Result<BodyToken<'b>, ParseError> {
        spans.clear();
        if body.len() > u32::MAX as usize {
            return Err(BodyTooLarge(u32::MAX as usize).into());
        }
        match self.kind {
            ParserKind::Serde => parse_serde(body, spans),
            ParserKind::Simd => self.simd.parse(body, spans),
        }
    }
}

fn parse_serde<'b>(body: &'b [u8], spans: &mut Vec<Span>) -> Result<BodyToken<'b>, ParseError> {
    // serde_json does not look inside values it skips (unknown fields), so UTF-8 is checked
    // for the whole body here, as simd-json does.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ParseError::json_at(e.valid_up_to(), describe::UTF8));
    }
    let c: Collection<'_> = serde_json::from_slice(body).map_err(|e| serde_error(body, &e))?;
    let base = body.as_ptr() as usize;
    spans.reserve(c.data.len());
    for raw in c.data {
        let s = raw.get();
        // A borrowed RawValue is a sub-slice of `body`; its offset is plain address arithmetic.
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        if start > body.len() || start + s.len() > body.len() {
            return Err(ParseError::json("payload outside the body"));
        }
        spans.push((start as u32, (start + s.len()) as u32));
    }
    let token = c.token.map(raw_token).transpose()?.flatten();
    check_depth(body, spans, MAX_DEPTH)?;
    Ok(token)
}

/// The bytes of a raw `token` value: borrowed unless it has escapes; `None` for `null`.
fn raw_token(raw: &RawValue) -> Result<Option<Cow<'_, [u8]>>, ParseError> {
    let text = raw.get();
    match text.as_bytes() {
        b"null" => Ok(None),
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => Ok(Some(Cow::Borrowed(inner))),
        [b'"', ..] => serde_json::from_str::<String>(text)
            .map(|s| Some(Cow::Owned(s.into_bytes())))
            .map_err(|_| ParseError::json(describe::ESCAPE)),
        _ => Err(ParseError::Shape("`token` must be a string".into())),
    }
}

/// A serde_json error in words: wrong shapes keep serde's own account of what is wrong, syntax
/// errors get [`describe`]'s phrase and the byte they are at.
fn serde_error(body: &[u8], e: &serde_json::Error) -> ParseError {
    use serde_json::error::Category;
    match e.classify() {
        // serde would say "invalid length 2, expected struct Collection with 3 elements".
        Category::Data if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') => {
            ParseError::Shape(NOT_AN_OBJECT.into())
        }
        Category::Data => ParseError::Shape(e.to_string()),
        Category::Eof => ParseError::json_at(body.len(), describe::EOF),
        Category::Io => ParseError::json(format!("could not read the body: {e}")),
        Category::Syntax => serde_syntax(body, e),
    }
}

/// serde_json tells its syntax errors apart only in their messages ("expected value at line 1
/// column 1"); the message without its position names the class.
fn serde_syntax(body: &[u8], e: &serde_json::Error) -> ParseError {
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
                .unwrap_or(ParseError::json_at(at, ESCAPE))
        }
        c if c.starts_with("control character") => {
            return string_fault_at(body, &[StrFault::Control])
                .unwrap_or(ParseError::json_at(at, CONTROL))
        }
        "invalid unicode code point" | "lone leading surrogate in hex escape" => SURROGATE,
        "invalid number" | "number out of range" => {
            return ParseError::json_at(number_start(body, at), NUMBER)
        }
        "recursion limit exceeded" => return ParseError::TooDeep(MAX_DEPTH),
        // A class this list does not know yet (a newer serde_json): its own words.
        other => return ParseError::json_at(at, other.to_owned()),
    };
    ParseError::json_at(at, what)
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
fn string_fault_at(body: &[u8], kinds: &[StrFault]) -> Option<ParseError> {
    match scan_strings(body, kinds) {
        StrScan::Fault(at, f) => Some(ParseError::json_at(
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
fn check_depth(body: &[u8], spans: &[Span], max: usize) -> Result<(), ParseError> {
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

fn scan_depth(p: &[u8], max: usize) -> Result<(), ParseError> {
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
                    return Err(ParseError::TooDeep(MAX_DEPTH));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
