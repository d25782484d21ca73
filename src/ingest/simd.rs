//! simd-json parser: validation by simd-json's tape (reused buffers, no DOM), payload byte
//! ranges from simd-json's structural indexes, so payloads stay the bytes the client sent.
#![forbid(unsafe_code)]

use super::{IngestError, Span, MAX_DEPTH};
use simd_json::{fill_tape_padded, Buffers, Tape, INPUT_PADDING};

/// Reusable simd-json state for one shard.
pub(super) struct SimdState {
    /// Copy of the body plus padding: simd-json unescapes strings in place, and the body must
    /// stay as sent.
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
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
        }
    }
}

fn shape(msg: impl Into<String>) -> IngestError {
    IngestError::Shape(msg.into())
}

/// A structural index walk that ran off the end: a parser bug, not a client error, but it must
/// still be an answer rather than a panic.
fn lost() -> IngestError {
    IngestError::Json("could not locate payloads in the body".into())
}

impl SimdState {
    pub(super) fn parse(&mut self, body: &[u8], spans: &mut Vec<Span>) -> Result<(), IngestError> {
        let len = body.len();
        self.scratch.clear();
        self.scratch.extend_from_slice(body);
        self.scratch.resize(len + INPUT_PADDING, b' ');
        let mut tape = std::mem::replace(&mut self.tape, Tape::null()).reset();
        let res = fill_tape_padded(&mut self.scratch, len, &mut self.buffers, &mut tape);
        let top_is_object = matches!(tape.0.first(), Some(simd_json::Node::Object { .. }));
        self.tape = tape.reset();
        if let Err(e) = res {
            if *e.error() == simd_json::ErrorType::DepthLimitExceeded {
                return Err(IngestError::TooDeep(MAX_DEPTH));
            }
            return Err(IngestError::Json(format!(
                "{:?} at byte {}",
                e.error(),
                e.index()
            )));
        }
        if !top_is_object {
            return Err(shape(
                "the body must be a JSON object with a \"data\" array",
            ));
        }
        walk(body, self.buffers.structural_indexes(), spans)
    }
}

fn at(body: &[u8], idx: &[u32], t: usize) -> Result<(usize, u8), IngestError> {
    let pos = *idx.get(t).ok_or_else(lost)? as usize;
    let c = *body.get(pos).ok_or_else(lost)?;
    Ok((pos, c))
}

/// Returns the token index just past the value starting at token `t`.
fn skip_value(body: &[u8], idx: &[u32], mut t: usize) -> Result<usize, IngestError> {
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

/// Decodes the key whose opening quote is at `start` and whose `:` is at `colon`.
fn key_at(body: &[u8], start: usize, colon: usize) -> Result<KeyBytes<'_>, IngestError> {
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
            .map_err(|e| IngestError::Json(e.to_string()))
    } else {
        Ok(KeyBytes::Borrowed(&raw[1..raw.len() - 1]))
    }
}

/// A key as bytes: borrowed from the body, or decoded when it has escapes.
type KeyBytes<'a> = std::borrow::Cow<'a, [u8]>;

/// Walks the top-level object of valid JSON by its structural indexes (every `{}[]:,` plus the
/// first byte of each scalar or string) and records the span of each element of `data`.
fn walk(body: &[u8], idx: &[u32], spans: &mut Vec<Span>) -> Result<(), IngestError> {
    let mut t = 1; // token 0 is the object's `{`
    let (mut seen_data, mut seen_version, mut seen_token) = (false, false, false);
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
                t = skip_value(body, idx, t)?;
            }
            _ => t = skip_value(body, idx, t)?,
        }
    }
    if !seen_data {
        return Err(shape("missing field `data`"));
    }
    Ok(())
}
