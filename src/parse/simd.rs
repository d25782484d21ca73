//! simd-json parser: validation by simd-json's tape (reused buffers, no DOM), payload byte
//! ranges from simd-json's structural indexes, so payloads stay the bytes the client sent.
//! A plain body is taken by one cheaper, vectorised validating pass first (`scan`);
//! simd-json decides the rest and words every fault.

use super::describe::*;
use super::{
    number_start, scan_strings, string_fault_at, BodyTooLarge, ParseError, Span, StrFault, StrScan,
    MAX_DEPTH, NOT_AN_OBJECT,
};
use simd_json::{fill_tape_padded, Buffers, Tape, INPUT_PADDING};

/// Reusable simd-json state for one shard.
pub(super) struct SimdState {
    /// Copy of the body plus padding: simd-json unescapes strings in place, and the body must
    /// stay as sent.
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
    /// The fast path's token positions (`scan`), kept from one body to the next.
    index: Vec<u32>,
}

impl std::fmt::Debug for SimdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimdState")
            .field("scratch_capacity", &self.scratch.capacity())
            .finish_non_exhaustive()
    }
}

impl Default for SimdState {
    fn default() -> Self {
        Self {
            scratch: Vec::with_capacity(16 * 1024),
            buffers: Buffers::with_max_depth(16 * 1024, MAX_DEPTH),
            tape: Tape::null().reset(),
            index: Vec::new(),
        }
    }
}

fn shape(msg: impl Into<String>) -> ParseError {
    ParseError::Shape(msg.into())
}

/// A structural index walk that ran off the end: a parser bug, not a client error, but it must
/// still be an answer rather than a panic.
fn lost() -> ParseError {
    ParseError::json("could not locate payloads in the body")
}

impl SimdState {
    pub(super) fn parse<'b>(
        &mut self,
        body: &'b [u8],
        spans: &mut Vec<Span>,
    ) -> Result<super::BodyToken<'b>, ParseError> {
        // The plain case without simd-json (see `scan`); anything else is decided below.
        if let Some(token) = super::scan::scan(body, &mut self.index, spans) {
            return Ok(token);
        }
        spans.clear();
        self.parse_full(body, spans)
    }

    /// simd-json's tape and structural indexes: decides every body, and words its faults.
    pub(super) fn parse_full<'b>(
        &mut self,
        body: &'b [u8],
        spans: &mut Vec<Span>,
    ) -> Result<super::BodyToken<'b>, ParseError> {
        let len = body.len();
        self.scratch.clear();
        self.scratch.extend_from_slice(body);
        self.scratch.resize(len + INPUT_PADDING, b' ');
        let mut tape = std::mem::replace(&mut self.tape, Tape::null()).reset();
        let res = fill_tape_padded(&mut self.scratch, len, &mut self.buffers, &mut tape);
        let top_is_object = matches!(tape.0.first(), Some(simd_json::Node::Object { .. }));
        self.tape = tape.reset();
        if let Err(e) = res {
            return Err(describe(body, &e));
        }
        if !top_is_object {
            return Err(shape(NOT_AN_OBJECT));
        }
        walk(body, self.buffers.structural_indexes(), spans)
    }
}

/// simd-json's error in words, at the byte it names. simd-json finds some faults in its first
/// pass over the body (unterminated strings, control characters in strings, invalid UTF-8, no
/// value at all); those carry no position (index 0, no character), so the byte is found here.
/// One error type of the second pass stands for several faults, told apart by what precedes
/// the byte at fault.
fn describe(body: &[u8], e: &simd_json::Error) -> ParseError {
    use simd_json::ErrorType as T;
    let at = e.index().min(body.len());
    let first_pass = e.character().is_none();
    let here = body.get(at).copied();
    let before = body[..at].iter().rev().copied().find(|&c| !is_ws(c));
    let what = match e.error() {
        T::DepthLimitExceeded => return ParseError::TooDeep(MAX_DEPTH),
        T::InputTooLarge => return BodyTooLarge(u32::MAX as usize).into(),
        // Nothing but whitespace.
        T::Eof => return ParseError::json_at(body.len(), EOF),
        T::Syntax if first_pass => return first_pass_syntax(body),
        T::InvalidUtf8 if first_pass => {
            let bad = std::str::from_utf8(body)
                .err()
                .map_or(at, |u| u.valid_up_to());
            return ParseError::json_at(bad, UTF8);
        }
        // The second pass ran out of tokens inside a container.
        T::Syntax | T::UnterminatedString => return ParseError::json_at(body.len(), EOF),
        // A value was due but this byte cannot start one; or the top-level object or array
        // closed here and more follows (the index is that of the closing bracket).
        T::InternalError => match (before, here) {
            (Some(b','), Some(b']')) => TRAILING_COMMA,
            (None | Some(b':' | b','), _) | (Some(b'['), Some(b'}')) | (_, None) => VALUE,
            (_, Some(b']' | b'}')) => {
                let next = (at + 1..body.len())
                    .find(|&i| !is_ws(body[i]))
                    .unwrap_or(body.len());
                return ParseError::json_at(next, TRAILING);
            }
            _ => VALUE,
        },
        // A top-level scalar with more after it; serde_json finds where the scalar ends.
        T::TrailingData => return first_pass_syntax_serde(body),
        T::ExpectedTrue | T::ExpectedFalse | T::ExpectedNull => VALUE,
        T::ExpectedArrayContent | T::ExpectedArrayComma => ARRAY_NEXT,
        T::ExpectedObjectContent if before == Some(b'{') => KEY,
        T::ExpectedObjectContent | T::ExpectedMapComma | T::ExpectedMapEnd => OBJECT_NEXT,
        T::ExpectedObjectKey if here == Some(b'}') => TRAILING_COMMA,
        T::ExpectedObjectKey | T::KeyMustBeAString | T::BadKeyType => KEY,
        T::ExpectedObjectColon => COLON,
        // A bad escape. simd-json's index for these is relative to the string (or its
        // current block) on some CPUs' code paths, so the escape is found here.
        T::InvalidEscape | T::InvalidUnicodeEscape | T::InvalidUnicodeCodepoint => {
            return string_fault_at(body, &[StrFault::Escape, StrFault::Surrogate])
                .unwrap_or(ParseError::json(ESCAPE))
        }
        T::InvalidUtf8 => match std::str::from_utf8(body) {
            Err(u) => return ParseError::json_at(u.valid_up_to(), UTF8),
            Ok(_) => SURROGATE,
        },
        T::InvalidNumber
        | T::InvalidExponent
        | T::Overflow
        | T::ExpectedNumber
        | T::ExpectedSigned
        | T::ExpectedUnsigned
        | T::ExpectedInteger
        | T::ExpectedFloat => return ParseError::json_at(number_start(body, at), NUMBER),
        T::ExpectedString => STRING,
        T::ExpectedArray => "expected an array",
        T::ExpectedMap => "expected an object",
        T::ExpectedBoolean => "expected `true` or `false`",
        T::ExpectedEnum => "expected one of the allowed values",
        T::UnexpectedCharacter | T::NoStructure => "unexpected character",
        T::Unexpected(..) => "a value of the wrong type",
        // Not faults of the body: failures of the parser itself, which only the tape-less or
        // serde parts of simd-json (not used here) or a broken build can give.
        T::Serde(m) => return ParseError::json(format!("the parser failed: {m}")),
        T::Io(err) => return ParseError::json(format!("the parser failed: {err}")),
        T::Parser | T::InsufficientPadding | T::SimdUnsupported => {
            return ParseError::json("the parser failed")
        }
    };
    ParseError::json_at(at, what)
}

/// The faults simd-json's first pass reports as a bare syntax error: a string still open at
/// the end of the body, or a control character inside a string.
fn first_pass_syntax(body: &[u8]) -> ParseError {
    match scan_strings(body, &[StrFault::Control]) {
        StrScan::Fault(at, _) => ParseError::json_at(at, CONTROL),
        StrScan::Open => ParseError::json_at(body.len(), EOF),
        // Not one of the two: let serde_json say what it is.
        StrScan::Clean => first_pass_syntax_serde(body),
    }
}

/// serde_json's account of a body simd-json refused without saying where.
fn first_pass_syntax_serde(body: &[u8]) -> ParseError {
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(e) => super::serde_error(body, &e),
        Ok(_) => ParseError::json("malformed JSON"),
    }
}

fn at(body: &[u8], idx: &[u32], t: usize) -> Result<(usize, u8), ParseError> {
    let pos = *idx.get(t).ok_or_else(lost)? as usize;
    let c = *body.get(pos).ok_or_else(lost)?;
    Ok((pos, c))
}

/// Returns the token index just past the value starting at token `t`.
fn skip_value(body: &[u8], idx: &[u32], mut t: usize) -> Result<usize, ParseError> {
    let (_, c) = at(body, idx, t)?;
    if c != b'{' && c != b'[' {
        return Ok(t + 1);
    }
    let mut depth = 0usize;
    loop {
        let (_, c) = at(body, idx, t)?;
        t += 1;
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(t);
                }
            }
            _ => {}
        }
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Decodes the string (a key, or the `token` value) whose opening quote is at `start` and
/// which the structural character at `colon` follows.
fn key_at(body: &[u8], start: usize, colon: usize) -> Result<KeyBytes<'_>, ParseError> {
    let mut end = colon;
    while end > start && is_ws(body[end - 1]) {
        end -= 1;
    }
    let raw = body.get(start..end).ok_or_else(lost)?;
    if raw.len() < 2 {
        return Err(lost());
    }
    if raw.contains(&b'\\') {
        serde_json::from_slice::<String>(raw)
            .map(|s| KeyBytes::Owned(s.into_bytes()))
            .map_err(|_| ParseError::json_at(start, ESCAPE))
    } else {
        Ok(KeyBytes::Borrowed(&raw[1..raw.len() - 1]))
    }
}

/// A key as bytes: borrowed from the body, or decoded when it has escapes.
type KeyBytes<'a> = std::borrow::Cow<'a, [u8]>;

/// Walks the top-level object of valid JSON by its structural indexes (every `{}[]:,` plus the
/// first byte of each scalar or string), records the span of each element of `data`, and
/// returns the `token` string's bytes.
fn walk<'b>(
    body: &'b [u8],
    idx: &[u32],
    spans: &mut Vec<Span>,
) -> Result<super::BodyToken<'b>, ParseError> {
    let mut t = 1; // token 0 is the object's `{`
    let (mut seen_data, mut seen_version, mut seen_token) = (false, false, false);
    let mut token = None;
    loop {
        let (pos, c) = at(body, idx, t)?;
        if c == b'}' {
            break;
        }
        if c == b',' {
            t += 1;
            continue;
        }
        let (colon, _) = at(body, idx, t + 1)?;
        let key = key_at(body, pos, colon)?;
        t += 2;
        let (_, v) = at(body, idx, t)?;
        match &key[..] {
            b"data" => {
                if seen_data {
                    return Err(shape("duplicate field `data`"));
                }
                seen_data = true;
                if v != b'[' {
                    return Err(shape("`data` must be an array of payloads"));
                }
                t += 1;
                loop {
                    let (start, c) = at(body, idx, t)?;
                    if c == b']' {
                        t += 1;
                        break;
                    }
                    if c == b',' {
                        t += 1;
                        continue;
                    }
                    t = skip_value(body, idx, t)?;
                    let (mut end, _) = at(body, idx, t)?;
                    while end > start && is_ws(body[end - 1]) {
                        end -= 1;
                    }
                    spans.push((start as u32, end as u32));
                }
            }
            b"version" | b"token" => {
                let name = String::from_utf8_lossy(&key).into_owned();
                let seen = if &key[..] == b"version" {
                    &mut seen_version
                } else {
                    &mut seen_token
                };
                if std::mem::replace(seen, true) {
                    return Err(shape(format!("duplicate field `{name}`")));
                }
                if v != b'"' && v != b'n' {
                    return Err(shape(format!("`{name}` must be a string")));
                }
                let (start, _) = at(body, idx, t)?;
                t = skip_value(body, idx, t)?;
                if v == b'"' && &key[..] == b"token" {
                    // The string runs up to the next structural character (`,` or `}`).
                    let (next, _) = at(body, idx, t)?;
                    token = Some(key_at(body, start, next)?);
                }
            }
            _ => t = skip_value(body, idx, t)?,
        }
    }
    if !seen_data {
        return Err(shape("missing field `data`"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::ErrorType as T;

    /// Every error type of simd-json 0.19 (`ErrorType` is neither `Clone` nor iterable).
    fn every_error_type() -> Vec<T> {
        vec![
            T::Unexpected(None, None),
            T::InputTooLarge,
            T::InsufficientPadding,
            T::BadKeyType,
            T::ExpectedArray,
            T::ExpectedArrayComma,
            T::ExpectedBoolean,
            T::ExpectedEnum,
            T::ExpectedFloat,
            T::ExpectedInteger,
            T::ExpectedMap,
            T::ExpectedObjectColon,
            T::ExpectedMapComma,
            T::ExpectedMapEnd,
            T::ExpectedNull,
            T::ExpectedTrue,
            T::ExpectedFalse,
            T::ExpectedNumber,
            T::ExpectedSigned,
            T::ExpectedString,
            T::ExpectedUnsigned,
            T::InternalError,
            T::InvalidEscape,
            T::InvalidExponent,
            T::InvalidNumber,
            T::InvalidUtf8,
            T::InvalidUnicodeEscape,
            T::InvalidUnicodeCodepoint,
            T::KeyMustBeAString,
            T::NoStructure,
            T::Parser,
            T::Eof,
            T::Serde("custom".into()),
            T::Syntax,
            T::TrailingData,
            T::UnexpectedCharacter,
            T::UnterminatedString,
            T::ExpectedArrayContent,
            T::ExpectedObjectContent,
            T::ExpectedObjectKey,
            T::Overflow,
            T::DepthLimitExceeded,
            T::SimdUnsupported,
            T::Io(std::io::Error::other("gone")),
        ]
    }

    /// Every error type simd-json has gets words, never its Debug name (`describe` matches
    /// them exhaustively, so a variant that a newer simd-json adds does not compile without
    /// words). Built as simd-json builds its first-pass errors: no position.
    #[test]
    fn every_simd_json_error_type_has_words() {
        for body in [&b"{\"data\":[1]} "[..], b"{\"data\":[\"\\q\"]}", b""] {
            for t in every_error_type() {
                let name = format!("{t:?}");
                let name = name.split('(').next().unwrap_or_default().to_string();
                let e = describe(body, &simd_json::Error::generic(t));
                let m = e.to_string();
                assert!(!m.contains(&name), "{name}: {m}");
                let status = crate::http::answer::parse_status(&e);
                assert!(matches!(status.as_u16(), 400 | 413), "{name}: {status} {m}");
            }
        }
    }
}
