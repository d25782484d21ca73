//! Values in keys: a payload's field or a request header, made safe for a key and a Hive
//! path, and the field looked up in a payload's JSON without parsing the rest of it.
//!
//! Safe means: only `[A-Za-z0-9._-]` as they are, every other byte (`/`, `%`, spaces,
//! non-ASCII) percent-encoded as `%XX`, so a value can never add a path level; at most
//! [`MAX_VALUE`] bytes, a longer one cut and ended with `~` and a hash of the whole value, so
//! two distinct values stay distinct; an empty or missing value is
//! [`DEFAULT_PARTITION`], as Hive names it. Whole path segments of `.` or `..` are taken
//! care of where a segment is put together (see `template`).

use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// What a missing, null or empty value renders as (Hive's name for "no value").
pub const DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Longest rendered value, in bytes; longer ones are cut and end in `~{hash}`.
pub const MAX_VALUE: usize = 128;

/// Hex digits of the hash that ends a cut value (64 bits).
const HASH_HEX: usize = 16;

/// Appends `raw` made safe (see the module doc); `None` or empty is the default partition.
pub fn push_safe(out: &mut String, raw: Option<&[u8]>) {
    let raw = match raw {
        Some(r) if !r.is_empty() => r,
        _ => {
            out.push_str(DEFAULT_PARTITION);
            return;
        }
    };
    let start = out.len();
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            push_escape(out, b);
        }
    }
    if out.len() - start <= MAX_VALUE {
        return;
    }
    // Cut at a byte that does not split a `%XX`, leaving room for `~` and the hash.
    let mut cut = start + MAX_VALUE - 1 - HASH_HEX;
    let bytes = out.as_bytes();
    for back in 1..=2 {
        if bytes.get(cut - back) == Some(&b'%') {
            cut -= back;
            break;
        }
    }
    out.truncate(cut);
    out.push('~');
    let digest = Sha256::digest(raw);
    for b in &digest[..HASH_HEX / 2] {
        push_hex(out, *b);
    }
}

/// `%XX`, upper-case hex.
pub(super) fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    push_hex(out, b);
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// The value of the field at `path` (`["os", "name"]` for `os.name`) of a payload: a string's
/// unescaped text, a number as written, `true` or `false`; `None` when the payload is not an
/// object, the field is missing, null, an object or an array, or the JSON ends early. A field
/// given twice counts as its last value (as most JSON readers take it). Never panics, whatever
/// the bytes.
pub fn lookup<'a>(payload: &'a [u8], path: &[String]) -> Option<Cow<'a, [u8]>> {
    let mut s = Scan { b: payload, i: 0 };
    for key in path {
        s.ws();
        if s.peek()? != b'{' {
            return None;
        }
        s.i += 1;
        let mut found = None;
        loop {
            s.ws();
            match s.peek()? {
                b'}' => break,
                b'"' => {}
                _ => return None,
            }
            let name = s.string()?;
            s.ws();
            if s.peek()? != b':' {
                return None;
            }
            s.i += 1;
            s.ws();
            if *name == *key.as_bytes() {
                found = Some(s.i);
            }
            s.skip_value()?;
            s.ws();
            match s.peek()? {
                b',' => s.i += 1,
                b'}' => break,
                _ => return None,
            }
        }
        s.i = found?;
    }
    s.ws();
    match s.peek()? {
        b'"' => s.string(),
        b't' | b'f' | b'-' | b'0'..=b'9' => {
            let start = s.i;
            s.skip_value()?;
            s.b.get(start..s.i).map(Cow::Borrowed)
        }
        _ => None,
    }
}

/// A cursor over JSON text that skips what it is not asked about.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    /// Past the string at the cursor (on its `"`); its text with escapes undone, as UTF-8
    /// (a `\u` escape of half a surrogate pair becomes U+FFFD, as most JSON readers do).
    fn string(&mut self) -> Option<Cow<'a, [u8]>> {
        self.i += 1;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => {
                    let raw = self.b.get(start..self.i)?;
                    self.i += 1;
                    return Some(Cow::Borrowed(raw));
                }
                b'\\' => break,
                _ => self.i += 1,
            }
        }
        let mut out = self.b.get(start..self.i)?.to_vec();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek()?;
                    self.i += 1;
                    let c = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => self.unicode_escape(),
                        other => char::from(other),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }

    /// The character of a `\uXXXX` escape whose `\u` was just read (a surrogate pair is two
    /// escapes); U+FFFD for half a pair or bad hex.
    fn unicode_escape(&mut self) -> char {
        let Some(hi) = self.hex4() else {
            return char::REPLACEMENT_CHARACTER;
        };
        if (0xD800..0xDC00).contains(&hi) {
            if self.b.get(self.i..self.i + 2) == Some(b"\\u") {
                let save = self.i;
                self.i += 2;
                match self.hex4() {
                    Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        return char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
                    }
                    // Not the low half: that escape is read on its own.
                    _ => self.i = save,
                }
            }
            return char::REPLACEMENT_CHARACTER;
        }
        char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let v = u32::from_str_radix(text, 16).ok()?;
        self.i += 4;
        Some(v)
    }

    /// Past the value at the cursor; `None` if the JSON ends first.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                ) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safe(raw: &[u8]) -> String {
        let mut s = String::new();
        push_safe(&mut s, Some(raw));
        s
    }

    fn field(payload: &str, path: &str) -> Option<String> {
        let path: Vec<String> = path.split('.').map(String::from).collect();
        lookup(payload.as_bytes(), &path).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    #[test]
    fn only_unreserved_bytes_stay_as_they_are() {
        assert_eq!(safe(b"click_1.v-2"), "click_1.v-2");
        assert_eq!(safe(b"a/b"), "a%2Fb");
        assert_eq!(safe(b"../../etc"), "..%2F..%2Fetc");
        assert_eq!(safe(b"100%"), "100%25");
        assert_eq!(safe(b"a b+c=d"), "a%20b%2Bc%3Dd");
        assert_eq!(safe("é日".as_bytes()), "%C3%A9%E6%97%A5");
        assert_eq!(safe(b"\0\n"), "%00%0A");
        let mut s = String::new();
        push_safe(&mut s, None);
        push_safe(&mut s, Some(b""));
        assert_eq!(s, "__HIVE_DEFAULT_PARTITION____HIVE_DEFAULT_PARTITION__");
    }

    #[test]
    fn long_values_are_cut_with_a_hash_and_stay_distinct() {
        let a = "x".repeat(500);
        let b = format!("{}y", "x".repeat(499));
        let (sa, sb) = (safe(a.as_bytes()), safe(b.as_bytes()));
        assert_eq!(sa.len(), MAX_VALUE);
        assert_eq!(sb.len(), MAX_VALUE);
        assert_ne!(sa, sb);
        assert!(sa.starts_with("xxxx") && sa.as_bytes()[MAX_VALUE - 17] == b'~');
        assert_eq!(safe(a.as_bytes()), sa, "the same value, the same name");
        // Exactly the limit: as it is.
        assert_eq!(safe("z".repeat(MAX_VALUE).as_bytes()).len(), MAX_VALUE);
        // A cut never splits an escape, and never leaves a '/'.
        for pad in 0..3 {
            let v = format!("{}{}", "a".repeat(pad), "/".repeat(200));
            let s = safe(v.as_bytes());
            assert!(s.len() <= MAX_VALUE, "{s}");
            assert!(!s.contains('/'));
            let body = s.split('~').next().unwrap();
            assert!(
                body.len() >= 3 && !body[body.len() - 2..].contains('%'),
                "{s}"
            );
        }
    }

    #[test]
    fn fields_are_found_by_name_and_path() {
        let p = r#"{"event":"click","n":-12.5e3,"ok":true,"os":{"name":"linux","v":[1,{"name":"x"}]},"nil":null,"o":{},"a":[1]}"#;
        assert_eq!(field(p, "event").as_deref(), Some("click"));
        assert_eq!(field(p, "n").as_deref(), Some("-12.5e3"));
        assert_eq!(field(p, "ok").as_deref(), Some("true"));
        assert_eq!(field(p, "os.name").as_deref(), Some("linux"));
        assert_eq!(field(p, "nil"), None);
        assert_eq!(field(p, "o"), None);
        assert_eq!(field(p, "a"), None);
        assert_eq!(field(p, "missing"), None);
        assert_eq!(field(p, "event.x"), None);
        assert_eq!(field(r#"{"name":"top","os":{"v":1}}"#, "os.name"), None);
        assert_eq!(field("[1,2]", "event"), None);
        assert_eq!(field("\"s\"", "event"), None);
        assert_eq!(
            field(r#" { "e" : "a" , "e" : "b" } "#, "e").as_deref(),
            Some("b")
        );
    }

    #[test]
    fn strings_are_unescaped_text() {
        assert_eq!(
            field(r#"{"e":"a\/b\"c\\d\u00e9\n"}"#, "e").as_deref(),
            Some("a/b\"c\\dé\n")
        );
        // Keys with escapes are compared unescaped.
        assert_eq!(
            field(r#"{"ev\u0065nt":"x"}"#, "event").as_deref(),
            Some("x")
        );
        // A surrogate pair is one character; half a pair is U+FFFD.
        assert_eq!(field(r#"{"e":"\ud83d\ude00"}"#, "e").as_deref(), Some("😀"));
        assert_eq!(field(r#"{"e":"\ud800"}"#, "e").as_deref(), Some("\u{FFFD}"));
        assert_eq!(
            field(r#"{"e":"\ud800\u0041\udc00"}"#, "e").as_deref(),
            Some("\u{FFFD}A\u{FFFD}")
        );
        assert_eq!(
            field(r#"{"e":"\uZZZZ"}"#, "e").as_deref(),
            Some("\u{FFFD}ZZZZ")
        );
    }

    #[test]
    fn broken_json_never_panics() {
        let p = br#"{"a":"x\u12","b":[{"c":"\"}"]}],"e":"v"}"#;
        for end in 0..=p.len() {
            for path in ["a", "b", "e", "b.c"] {
                let path: Vec<String> = path.split('.').map(String::from).collect();
                let _ = lookup(&p[..end], &path);
            }
        }
        for junk in [&b"{\"a\""[..], b"{\"a\":", b"{,}", b"}}}", b"\\", b"{\"a\\"] {
            let _ = lookup(junk, &["a".to_string()]);
        }
        assert_eq!(
            field(r#"{"b":[{"c":"\"}]"}],"e":"v"}"#, "e").as_deref(),
            Some("v")
        );
    }
}
