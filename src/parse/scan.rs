//! The fast path of the simd parser: one validating pass over the body that finds the
//! payloads' byte ranges and the `token` as it goes, without simd-json's copy of the body,
//! its tape or its number conversions (most of a request's parsing cost: see
//! benches/results/2026-11-30-percore-budget.md).
//!
//! It runs in two stages, as simdjson does: `stage1` classifies the body 64 bytes at a time
//! with vector instructions, checks its strings and writes out the position of every token;
//! stage 2 (here) walks those positions, checks the grammar, numbers and literals, and
//! records the spans (benches/results/2026-12-07-simd-validation.md).
//!
//! It answers only for the plain case: a body it accepts is valid JSON (UTF-8, RFC 8259
//! grammar) of the right shape, well within every limit, that simd-json accepts too, with
//! the same spans and token. Anything else (a fault, a wrong shape, an exponent or a long
//! number, a `\u` surrogate, an escaped key or token, nesting near the limit) gives `None`,
//! and the full parser then decides and words the answer, so what a client sees does not
//! depend on this pass.

use super::stage1;
use super::{BodyToken, Span, MAX_DEPTH};
use std::borrow::Cow;

/// Longest integer part taken here: 18 digits always fit an `i64` (simd-json refuses
/// integers outside `i64`/`u64`).
const MAX_INT_DIGITS: usize = 18;
/// Longest fraction taken here; a longer one is left to simd-json's own conversion.
const MAX_FRAC_DIGITS: usize = 20;

/// Validates `body` and appends each payload's span to `spans`; `None` when the full parser
/// has to decide (see the module doc). `spans` may then hold a partial list. `idx` is stage
/// 1's buffer of token positions, kept from one body to the next.
pub(super) fn scan<'b>(
    body: &'b [u8],
    idx: &mut Vec<u32>,
    spans: &mut Vec<Span>,
) -> Option<BodyToken<'b>> {
    let n = stage1::index(body, idx)?;
    let mut w = Walk {
        b: body,
        toks: idx.get(..n)?,
        t: 0,
    };
    if w.byte(0) != b'{' {
        return None;
    }
    w.t = 1;
    let (mut seen_data, mut seen_version, mut seen_token) = (false, false, false);
    let mut token = None;
    loop {
        let key = w.key()?;
        if key.contains(&b'\\') {
            return None;
        }
        match key {
            b"data" => {
                if std::mem::replace(&mut seen_data, true) {
                    return None;
                }
                if w.byte(w.t) != b'[' {
                    return None;
                }
                w.t += 1;
                if w.byte(w.t) == b']' {
                    w.t += 1;
                } else {
                    loop {
                        let start = w.pos(w.t);
                        w.value(3)?;
                        // A payload ends where the whitespace before the next token starts.
                        let next = w.pos(w.t);
                        spans.push((start as u32, w.trim_end(next) as u32));
                        let c = w.byte(w.t);
                        w.t += 1;
                        match c {
                            b',' => {}
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
            }
            key @ (b"version" | b"token") => {
                let seen = if key == b"version" {
                    &mut seen_version
                } else {
                    &mut seen_token
                };
                if std::mem::replace(seen, true) {
                    return None;
                }
                let p = w.pos(w.t);
                w.t += 1;
                if body.get(p) == Some(&b'"') {
                    if key == b"token" {
                        // The closing quote is the last byte before the next token's
                        // whitespace.
                        let close = w.trim_end(w.pos(w.t)).checked_sub(1)?;
                        let v = body.get(p + 1..close)?;
                        if v.contains(&b'\\') {
                            return None;
                        }
                        token = Some(Cow::Borrowed(v));
                    }
                } else {
                    w.literal(p, b"null")?;
                }
            }
            _ => w.value(2)?,
        }
        let c = w.byte(w.t);
        w.t += 1;
        match c {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    (w.t == n && seen_data).then_some(token)
}

/// Bytes that end a run of a number or literal: whitespace, `{}[]:,`, a quote, and 0 (what
/// [`Walk::at`] gives past the body's end; a 0 inside the body is a fault of stage 1).
static ENDS_RUN: [bool; 256] = {
    let mut t = [false; 256];
    let ends = b" \t\n\r{}[]:,\"\0";
    let mut i = 0;
    while i < ends.len() {
        t[ends[i] as usize] = true;
        i += 1;
    }
    t
};

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Stage 2: a walk over stage 1's token positions.
struct Walk<'b, 't> {
    b: &'b [u8],
    /// Positions of the tokens (see `stage1`).
    toks: &'t [u32],
    /// The next token.
    t: usize,
}

impl<'b> Walk<'b, '_> {
    /// The byte at `p`, or 0 past the end: 0 is no token and ends a run.
    #[inline(always)]
    fn at(&self, p: usize) -> u8 {
        self.b.get(p).copied().unwrap_or(0)
    }

    /// The position of token `t`; the body's length past the last one.
    #[inline(always)]
    fn pos(&self, t: usize) -> usize {
        self.toks.get(t).map_or(self.b.len(), |&p| p as usize)
    }

    /// The byte of token `t`, or 0 past the last one, which every caller refuses.
    #[inline(always)]
    fn byte(&self, t: usize) -> u8 {
        self.at(self.pos(t))
    }

    /// `p` moved back over the whitespace before it.
    #[inline(always)]
    fn trim_end(&self, mut p: usize) -> usize {
        while p > 0 && is_ws(self.at(p - 1)) {
            p -= 1;
        }
        p
    }

    /// An object member's key and its colon; returns the key's bytes as sent.
    #[inline(always)]
    fn key(&mut self) -> Option<&'b [u8]> {
        if self.byte(self.t) != b'"' || self.byte(self.t + 1) != b':' {
            return None;
        }
        let open = self.pos(self.t);
        let close = self.trim_end(self.pos(self.t + 1)).checked_sub(1)?;
        self.t += 2;
        self.b.get(open + 1..close)
    }

    /// A nested object member's key and its colon, whose bytes nothing needs (stage 1 checked
    /// the string).
    #[inline(always)]
    fn member(&mut self) -> Option<()> {
        let ok = self.byte(self.t) == b'"' && self.byte(self.t + 1) == b':';
        self.t += 2;
        ok.then_some(())
    }

    /// The literal `word` at byte `p`, ending its run.
    #[inline(always)]
    fn literal(&self, p: usize, word: &[u8]) -> Option<()> {
        let end = p + word.len();
        (self.b.get(p..end)? == word && ENDS_RUN[self.at(end) as usize]).then_some(())
    }

    /// The value at the current token, whose containers (if it is one) sit at nesting
    /// `level`; the current token is then the one after it. Iterative: the kinds of the open
    /// containers are a bit stack (1 for an array), which the depth limit keeps within 128
    /// bits.
    fn value(&mut self, level: usize) -> Option<()> {
        let mut stack = 0u128;
        let mut depth = 0usize;
        'value: loop {
            let p = self.pos(self.t);
            self.t += 1;
            match self.at(p) {
                // The string was checked by stage 1, and its closing quote is no token.
                b'"' => {}
                c @ (b'{' | b'[') => {
                    if level + depth >= MAX_DEPTH {
                        return None;
                    }
                    // `]` and `}` are two past `[` and `{`.
                    if self.byte(self.t) == c + 2 {
                        self.t += 1;
                    } else {
                        stack = (stack << 1) | u128::from(c == b'[');
                        depth += 1;
                        if c == b'{' {
                            self.member()?;
                        }
                        continue 'value;
                    }
                }
                b't' => self.literal(p, b"true")?,
                b'f' => self.literal(p, b"false")?,
                b'n' => self.literal(p, b"null")?,
                _ => number(self.b, p)?,
            }
            // After a value: the next element or member, or the end of containers.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let c = self.byte(self.t);
                self.t += 1;
                let in_array = stack & 1 == 1;
                match c {
                    b',' => {
                        if !in_array {
                            self.member()?;
                        }
                        continue 'value;
                    }
                    b']' | b'}' if (c == b']') == in_array => {
                        stack >>= 1;
                        depth -= 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// A number at byte `p` that ends its run: RFC 8259's grammar without an exponent, within
/// the digit counts above. A number that fits 16 bytes (past its sign) is checked from their
/// digit mask (`stage1::not_digits16`); a longer one, or one near the body's end, byte by byte.
#[inline(always)]
fn number(b: &[u8], p: usize) -> Option<()> {
    let i = p + usize::from(b.get(p) == Some(&b'-'));
    if let (Some(w), Some(mask)) = (b.get(i..i + 16), stage1::not_digits16(b, i)) {
        // Bit 16 stops the counts at the window's end.
        let mask = mask | (1 << 16);
        let int = mask.trailing_zeros() as usize;
        if int == 0 || (int > 1 && w[0] == b'0') {
            return None;
        }
        let mut end = int;
        if w.get(int) == Some(&b'.') {
            end += 1 + (mask >> (int + 1)).trailing_zeros() as usize;
            if end == int + 1 && end < 16 {
                return None;
            }
        }
        if let Some(&c) = w.get(end) {
            return ENDS_RUN[c as usize].then_some(());
        }
    }
    let end = number_slow(b, p)?;
    ENDS_RUN[b.get(end).copied().unwrap_or(0) as usize].then_some(())
}

/// How many ASCII digits start at byte `i`.
fn digits(b: &[u8], mut i: usize) -> usize {
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i - start
}

/// [`number`] byte by byte; returns the byte after the number.
fn number_slow(b: &[u8], p: usize) -> Option<usize> {
    let mut i = p + usize::from(b.get(p) == Some(&b'-'));
    let int = digits(b, i);
    if int == 0 || int > MAX_INT_DIGITS || (int > 1 && b.get(i) == Some(&b'0')) {
        return None;
    }
    i += int;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac = digits(b, i);
        if frac == 0 || frac > MAX_FRAC_DIGITS {
            return None;
        }
        i += frac;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::super::simd::SimdState;
    use super::*;

    const BODIES: [&[u8]; 3] = [
        include_bytes!("../../benches/workload/body1.json"),
        include_bytes!("../../benches/workload/body10.json"),
        include_bytes!("../../benches/workload/body100.json"),
    ];

    /// Bodies the fast path must take itself.
    const PLAIN: [&[u8]; 7] = [
        br#"{"data":[]}"#,
        b" {\n\t\"version\" : null ,\r\"data\": [ 1 , -0 , 0.5 , -12.25 , true , false , null ] } ",
        br#"{"token":"t0k","data":[{"a":{"b":[[],{}]}},"x\"y\\\n\u00e9\/",""],"z":{"k":[1,{"d":2}]}}"#,
        "{\"data\":[\"é 漢 \u{1F600}\",{\"é\":\"\u{7f}\"}],\"version\":\"1\"}".as_bytes(),
        br#"{"other":[1,2],"data":[123456789012345678,-0.00000000000000000001]}"#,
        br#"{"data":[{"data":1,"token":[2]}],"token":null}"#,
        br#"{"data":[1],"token":"","version":""}"#,
    ];

    /// Checks one body: when the fast path accepts it, the full parser accepts it too, with the
    /// same spans and token. Returns whether the fast path took it.
    fn agrees(body: &[u8]) -> bool {
        let (mut fast, mut full) = (Vec::new(), Vec::new());
        let shown = String::from_utf8_lossy(body);
        let Some(token) = scan(body, &mut Vec::new(), &mut fast) else {
            return false;
        };
        match SimdState::default().parse_full(body, &mut full) {
            Ok(t) => {
                assert_eq!(fast, full, "spans differ on {shown}");
                assert_eq!(token, t, "tokens differ on {shown}");
            }
            Err(e) => panic!("fast path accepted what the parser refuses ({e}): {shown}"),
        }
        true
    }

    #[test]
    fn plain_bodies_take_the_fast_path_with_the_same_result() {
        for body in BODIES.into_iter().chain(PLAIN) {
            assert!(agrees(body), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn unusual_bodies_are_left_to_the_full_parser() {
        let deep = |n: usize| format!(r#"{{"data":[{}{}]}}"#, "[".repeat(n), "]".repeat(n));
        for body in [
            &br#"{"data":[1e5]}"#[..],
            br#"{"data":[1234567890123456789]}"#,
            br#"{"data":["\ud83d\ude00"]}"#,
            br#"{"d\u0061ta":[]}"#,
            br#"{"token":"a\nb","data":[]}"#,
            deep(MAX_DEPTH - 2).as_bytes(),
        ] {
            assert!(!agrees(body), "{}", String::from_utf8_lossy(body));
        }
    }

    /// Every single-byte deletion, replacement and insertion of `base`, checked with
    /// [`agrees`]; returns how many the fast path took.
    fn mutations(base: &[u8]) -> usize {
        let swaps = b"{}[],:\"\\ 0-.eEtfnu1a\x01\x7f\xc3\xff";
        let mut taken = 0;
        for i in 0..=base.len() {
            let mut variants: Vec<Vec<u8>> = Vec::new();
            if i < base.len() {
                let mut cut = base.to_vec();
                cut.remove(i);
                variants.push(cut);
            }
            for &c in swaps {
                if i < base.len() {
                    let mut v = base.to_vec();
                    v[i] = c;
                    variants.push(v);
                }
                let mut v = base.to_vec();
                v.insert(i, c);
                variants.push(v);
            }
            for v in variants {
                taken += usize::from(agrees(&v));
            }
        }
        taken
    }

    /// Every single-byte change of a body that has each construct: the fast path never accepts
    /// what the full parser refuses, nor gives other spans or another token.
    #[test]
    fn mutations_never_pass_the_fast_path_alone() {
        let base = br#"{"version":"1","token":"t","data":[{"a":[1,-2.5,true,null],"b":"x\"\u00e9"},false,{}],"n":[{}],"s":"0123456789abcdef\\xyz\/01234567\n"}"#;
        // Changes inside strings and whitespace keep the body valid: the fast path saw some.
        let taken = mutations(base);
        assert!(taken > 100, "{taken}");
    }

    /// The same over a body whose strings (escapes, multi-byte UTF-8), numbers and literals
    /// straddle the 64-byte blocks of stage 1, so that a change moves them across a block
    /// boundary.
    #[test]
    fn mutations_across_block_boundaries_never_pass_the_fast_path_alone() {
        let base = "{\"data\":[\"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMN\\\\\\\"é漢\",\
            12345678901234.25,true,{\"k\":[null,\"\\u00e9\\n\u{1F600}x\"]},-0.5,\
            \"0123456789012345678901234567890123456789012345678901\\\"\\\\\"],\"token\":\"t\"}";
        let taken = mutations(base.as_bytes());
        assert!(taken > 100, "{taken}");
    }

    /// Each plain body moved by 0 to 64 bytes of leading whitespace, so that every byte of it
    /// sits at every offset of a 64-byte block once: the fast path takes them all, with the
    /// full parser's spans and token.
    #[test]
    fn plain_bodies_at_every_block_offset() {
        for body in BODIES.into_iter().chain(PLAIN) {
            for shift in 0..=64 {
                let mut moved = vec![b' '; shift];
                moved.extend_from_slice(body);
                assert!(
                    agrees(&moved),
                    "shift {shift}: {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
}
