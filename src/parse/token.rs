//! Where a body's `token` value lies, so that a copy of the body kept at rest (the durable
//! spool, and the dead-letter files written from it) can blank it in place: the same length
//! keeps the payloads' byte ranges valid, and a string of `*` keeps the JSON valid.

use std::ops::Range;

/// The bytes between the quotes of the top-level `token` string of `body`, a body the parser
/// accepted; `None` when it has no `token` string. A key written with escapes
/// (`"tok\u0065n"`) is the `token` field too, as the parsers read it.
pub fn token_range(body: &[u8]) -> Option<Range<usize>> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(body, i)?;
        let key = &body[i + 1..key_end];
        let is_token = if key.contains(&b'\\') {
            serde_json::from_slice::<String>(&body[i..=key_end]).is_ok_and(|k| k == "token")
        } else {
            key == b"token"
        };
        i = skip_ws(body, key_end + 1);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        if is_token && body.get(i) == Some(&b'"') {
            return Some(i + 1..string_end(body, i)?);
        }
        i = value_end(body, i)?;
    }
}

/// Overwrites every byte of `range` in `body` with `*`.
pub fn blank(body: &mut [u8], range: Range<usize>) {
    if let Some(bytes) = body.get_mut(range) {
        bytes.fill(b'*');
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The index of the closing quote of the string whose opening quote is at `start`.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    loop {
        match body.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j),
            _ => j += 1,
        }
    }
}

/// The index just past the value starting at `start`.
fn value_end(body: &[u8], start: usize) -> Option<usize> {
    match body.get(start)? {
        b'"' => Some(string_end(body, start)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = start;
            loop {
                match body.get(j)? {
                    b'"' => j = string_end(body, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = start;
            while body
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blanked(body: &str) -> String {
        let mut b = body.as_bytes().to_vec();
        if let Some(r) = token_range(&b) {
            blank(&mut b, r);
        }
        let out = String::from_utf8(b).unwrap();
        assert_eq!(out.len(), body.len());
        serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
        out
    }

    #[test]
    fn the_top_level_token_is_found_wherever_it_is() {
        assert_eq!(
            blanked(r#"{"token":"s3cr3t","data":[1]}"#),
            r#"{"token":"******","data":[1]}"#
        );
        assert_eq!(
            blanked(
                r#" { "version" : "1", "data":[{"token":"inner"},"a\"}]"], "n":-1.5e3,"x":{"token":"y"} , "token" : "a\u0062\"c" }"#
            ),
            r#" { "version" : "1", "data":[{"token":"inner"},"a\"}]"], "n":-1.5e3,"x":{"token":"y"} , "token" : "**********" }"#
        );
        assert_eq!(
            blanked(r#"{"data":[],"tok\u0065n":"abc"}"#),
            r#"{"data":[],"tok\u0065n":"***"}"#
        );
        for none in [
            r#"{"data":[{"token":"x"}]}"#,
            r#"{"data":[],"token":null}"#,
            r#"{"data":[],"tokens":"x"}"#,
            r#"[1]"#,
        ] {
            assert_eq!(blanked(none), none);
        }
        assert_eq!(token_range(br#"{"data":[],"token":""}"#), Some(20..20));
    }
}
