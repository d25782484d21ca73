//! The fast path of the simd parser: one validating pass over the body that finds the
//! payloads' byte ranges and the `token` as it goes, without simd-json's copy of the body,
//! its tape or its number conversions (most of a request's parsing cost: see
//! benches/results/2026-11-30-percore-budget.md).
//!
//! It answers only for the plain case: a body it accepts is valid JSON (UTF-8, RFC 8259
//! grammar) of the right shape, well within every limit, that simd-json accepts too, with
//! the same spans and token. Anything else (a fault, a wrong shape, an exponent or a long
//! number, a `\u` surrogate, an escaped key or token, nesting near the limit) gives `None`,
//! and the full parser then decides and words the answer, so what a client sees does not
//! depend on this pass.
#![forbid(unsafe_code)]

use super::{BodyToken, Span, MAX_DEPTH};
use std::borrow::Cow;

/// Longest integer part taken here: 18 digits always fit an `i64` (simd-json refuses
/// integers outside `i64`/`u64`).
const MAX_INT_DIGITS: usize = 18;
/// Longest fraction taken here; a longer one is left to simd-json's own conversion.
const MAX_FRAC_DIGITS: usize = 20;

/// Validates `body` and appends each payload's span to `spans`; `None` when the full parser
/// has to decide (see the module doc). `spans` may then hold a partial list.
pub(super) fn scan<'b>(body: &'b [u8], spans: &mut Vec<Span>) -> Option<BodyToken<'b>> {
    std::str::from_utf8(body).ok()?;
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    let (mut seen_data, mut seen_version, mut seen_token) = (false, false, false);
    let mut token = None;
    loop {
        let (k0, k1, escaped) = s.string()?;
        if escaped {
            return None;
        }
        s.ws();
        s.eat(b':')?;
        s.ws();
        match &body[k0..k1] {
            b"data" => {
                if std::mem::replace(&mut seen_data, true) {
                    return None;
                }
                s.eat(b'[')?;
                s.ws();
                if s.peek() == Some(b']') {
                    s.i += 1;
                } else {
                    loop {
                        let start = s.i;
                        s.value(3)?;
                        spans.push((start as u32, s.i as u32));
                        s.ws();
                        match s.next()? {
                            b',' => s.ws(),
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
                if s.peek() == Some(b'"') {
                    let (v0, v1, escaped) = s.string()?;
                    if key == b"token" {
                        if escaped {
                            return None;
                        }
                        token = Some(Cow::Borrowed(&body[v0..v1]));
                    }
                } else {
                    s.literal(b"null")?;
                }
            }
            _ => s.value(2)?,
        }
        s.ws();
        match s.next()? {
            b',' => s.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    (s.i == body.len() && seen_data).then_some(token)
}

struct Scanner<'b> {
    b: &'b [u8],
    i: usize,
}

impl Scanner<'_> {
    /// The byte at `i`, or 0 past the end: 0 is valid nowhere in JSON outside a string and is
    /// a control character inside one, so every caller refuses it.
    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.at(self.i), b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }

    /// One value whose containers (if it is one) sit at nesting `level`.
    fn value(&mut self, level: usize) -> Option<()> {
        match self.at(self.i) {
            b'"' => self.string().map(|_| ()),
            b'{' => {
                if level >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.at(self.i) == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.value(level + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if level >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.at(self.i) == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value(level + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    /// A string starting at its opening quote; returns the range of its contents (quotes
    /// excluded) and whether it has escapes. Control characters and `\u` surrogates are left
    /// to the full parser.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        if self.at(self.i) != b'"' {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first quote, backslash or control character.
            while let Some(chunk) = self.b.get(i..i + 8) {
                let word = u64::from_le_bytes(chunk.try_into().ok()?);
                let stop = special(word);
                if stop != 0 {
                    i += (stop.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match self.at(i) {
                b'"' => {
                    self.i = i + 1;
                    return Some((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match self.at(i + 1) {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            let hex = self.b.get(i + 2..i + 6)?;
                            let mut v = 0u32;
                            for &h in hex {
                                v = v * 16 + (h as char).to_digit(16)?;
                            }
                            if (0xD800..=0xDFFF).contains(&v) {
                                return None;
                            }
                            i += 6;
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }

    /// RFC 8259's number grammar, without an exponent and within the digit counts above.
    fn number(&mut self) -> Option<()> {
        let mut i = self.i;
        if self.at(i) == b'-' {
            i += 1;
        }
        let int = i;
        while self.at(i).is_ascii_digit() {
            i += 1;
        }
        let digits = i - int;
        if digits == 0 || digits > MAX_INT_DIGITS || (digits > 1 && self.at(int) == b'0') {
            return None;
        }
        if self.at(i) == b'.' {
            i += 1;
            let frac = i;
            while self.at(i).is_ascii_digit() {
                i += 1;
            }
            if i == frac || i - frac > MAX_FRAC_DIGITS {
                return None;
            }
        }
        if matches!(self.at(i), b'e' | b'E') {
            return None;
        }
        self.i = i;
        Some(())
    }
}

/// The bytes of `word` (little-endian) that end a plain run of string: `"`, `\\` or a control
/// character. Only the lowest set bit is exact (a borrow may set bits above a match), which is
/// the one used.
fn special(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(word ^ (ONES * b'"' as u64))
        | zero(word ^ (ONES * b'\\' as u64))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
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
        let Some(token) = scan(body, &mut fast) else {
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

    /// Every single-byte change of a body that has each construct: the fast path never accepts
    /// what the full parser refuses, nor gives other spans or another token.
    #[test]
    fn mutations_never_pass_the_fast_path_alone() {
        let base = br#"{"version":"1","token":"t","data":[{"a":[1,-2.5,true,null],"b":"x\"\u00e9"},false,{}],"n":[{}],"s":"0123456789abcdef\\xyz\/01234567\n"}"#;
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
        // Changes inside strings and whitespace keep the body valid: the fast path saw some.
        assert!(taken > 100, "{taken}");
    }
}
