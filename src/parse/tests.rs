//! Both parsers on the same bodies: the same payloads, the same refusals in the same words.
use super::*;

const BODY10: &[u8] = include_bytes!("../../benches/workload/body10.json");

fn both(body: &[u8]) -> Vec<Result<Vec<String>, ParseError>> {
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

fn err(body: &[u8]) -> ParseError {
    let r = both(body);
    let e0 = r[0].clone().expect_err("serde accepted");
    let e1 = r[1].clone().expect_err("simd accepted");
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
            matches!(err(b), ParseError::Json { .. }),
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
            matches!(err(b), ParseError::Shape(_)),
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
        assert!(matches!(err(b), ParseError::Shape(_)));
    }
    assert!(matches!(
        err(b"{\"\":\"\xff\",\"data\":[]}"),
        ParseError::Json { .. }
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
            matches!(&r[1], Err(ParseError::Json { what, .. }) if what == describe::NUMBER
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
    assert_eq!(e, ParseError::TooDeep(MAX_DEPTH));
}

#[test]
fn depth_limit_is_the_same_for_both_parsers() {
    // Top-level object is level 1, `data` level 2, so payloads may nest MAX_DEPTH - 2 deep.
    let nested = |n: usize| format!(r#"{{"data":[{}{}]}}"#, "[".repeat(n), "]".repeat(n));
    assert_eq!(ok(&nested(MAX_DEPTH - 2)).len(), 1);
    assert_eq!(
        err(nested(MAX_DEPTH - 1).as_bytes()),
        ParseError::TooDeep(MAX_DEPTH)
    );
    // Brackets inside strings do not count.
    let in_string = format!(r#"{{"data":["{}"]}}"#, "[".repeat(500));
    assert_eq!(ok(&in_string).len(), 1);
}

/// The error messages of both parsers for `body`: `[serde, simd]`.
fn messages(body: &[u8]) -> [String; 2] {
    let r = both(body);
    let m = |r: &Result<Vec<String>, ParseError>| match r {
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
            b[0].is_ascii_uppercase() && b[i].is_ascii_lowercase() && b[i + 1].is_ascii_uppercase()
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
