//! `keys.template`: parsing, its errors, rendering and escaping of values.

use super::*;

const HIVE: &str =
    "{prefix}/event={payload.event}/dt={yyyy}-{mm}-{dd}/hour={hh}/{instance}-{shard}-{start}-{seq}";

/// 2026-11-28 23:59:59 UTC.
const T: u64 = 1_795_910_399;

fn space(template: &str) -> KeySpace {
    let t = Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
    KeySpace::with_template(Arc::new(t), "events", "host-a", 1, 7)
}

fn part(ks: &KeySpace, payload: &str) -> String {
    ks.partition(&ks.fields(None, T, &[]), payload.as_bytes())
}

#[test]
fn the_default_template_is_the_layout_keys_always_had() {
    assert_eq!(Template::default().text(), DEFAULT_TEMPLATE);
    let ks = space(DEFAULT_TEMPLATE);
    assert_eq!(
        ks.key(None, T, 42, "json"),
        KeySpace::new("events", "host-a", 1, 7).key(None, T, 42, "json")
    );
    assert_eq!(
        ks.key(Some("acme"), T, 42, "json"),
        "events/acme/2026/11/28/23/host-a-1-7-42.json"
    );
    assert!(!Template::default().per_payload());
    assert!(Template::default().headers().is_empty());
}

#[test]
fn a_hive_template_partitions_by_the_payloads_field() {
    let ks = space(HIVE);
    let p = part(&ks, r#"{"event":"click","n":1}"#);
    assert_eq!(p, "events/event=click/dt=2026-11-28/hour=23");
    assert_eq!(
        ks.object_key(&p, ks.seq_name(5), "ndjson"),
        "events/event=click/dt=2026-11-28/hour=23/host-a-1-7-5.ndjson"
    );
    let spooled = ObjectName::Spooled {
        segment: 9,
        offset: 4096,
        index: 3,
    };
    assert_eq!(
        ks.object_key(&p, spooled, "ndjson.zst"),
        "events/event=click/dt=2026-11-28/hour=23/host-a-1-s9-4096-3.ndjson.zst"
    );
    assert!(ks.template().per_payload());
    // Missing, null, empty, an object or an array: Hive's default partition.
    for missing in [
        r#"{"n":1}"#,
        r#"{"event":null}"#,
        r#"{"event":""}"#,
        r#"{"event":{"a":1}}"#,
        r#"{"event":[1]}"#,
        "[1,2]",
        "17",
        "",
    ] {
        assert_eq!(
            part(&ks, missing),
            "events/event=__HIVE_DEFAULT_PARTITION__/dt=2026-11-28/hour=23",
            "{missing}"
        );
    }
    // Integers and booleans as written.
    assert!(part(&ks, r#"{"event":-42}"#).contains("/event=-42/"));
    assert!(part(&ks, r#"{"event":true}"#).contains("/event=true/"));
}

#[test]
fn hostile_values_stay_one_safe_segment() {
    let ks = space("{prefix}/{payload.e}/x={payload.e}/{instance}-{shard}-{start}-{seq}");
    let long = "é".repeat(300);
    let cases: [(&str, &str); 11] = [
        ("/", "%2F"),
        ("..", "%2E."),
        (".", "%2E"),
        ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        (".hidden", "%2Ehidden"),
        ("100%", "100%25"),
        ("a b", "a%20b"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("\\ud800", "%EF%BF%BD"),
        ("a\\/b", "a%2Fb"),
        ("\\u002e\\u002E", "%2E."),
    ];
    for (value, want) in cases {
        let p = part(&ks, &format!(r#"{{"e":"{value}"}}"#));
        let segs: Vec<&str> = p.split('/').collect();
        assert_eq!(segs.len(), 3, "{value:?} -> {p}");
        assert_eq!(segs[1], want, "{value:?}");
        for s in &segs {
            assert!(!s.is_empty() && *s != "." && *s != "..", "{value:?} -> {p}");
            assert!(!s.contains('\\'), "{value:?} -> {p}");
        }
        // Inside a segment with text a leading dot is harmless and kept.
        assert!(segs[2].starts_with("x="), "{p}");
    }
    let p = part(&ks, &format!(r#"{{"e":"{long}"}}"#));
    let segs: Vec<&str> = p.split('/').collect();
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[1].len(), value::MAX_VALUE, "{p}");
    let other = part(&ks, &format!(r#"{{"e":"{long}x"}}"#));
    assert_ne!(p, other, "distinct long values stay distinct");
}

#[test]
fn headers_tenants_and_minutes() {
    let ks = space(
        "{prefix}/{tenant}/t={tenant}/src={header.X-Source}/{header.x-source}/{mi}/{instance}-{shard}-{start}-{seq}",
    );
    assert_eq!(ks.template().headers(), ["x-source"]);
    assert!(!ks.template().per_payload());
    let values = [Some(b"app/v1".to_vec().into_boxed_slice())];
    let p = ks.partition(&ks.fields(Some("acme"), T, &values), b"{}");
    assert_eq!(p, "events/acme/t=acme/src=app%2Fv1/app%2Fv1/59");
    // No tenant: its own level is left out, inside text it is the default partition; a
    // missing header is the default partition.
    let none = [None];
    let p = ks.partition(&ks.fields(None, T, &none), b"{}");
    assert_eq!(
        p,
        "events/t=__HIVE_DEFAULT_PARTITION__/src=__HIVE_DEFAULT_PARTITION__/__HIVE_DEFAULT_PARTITION__/59"
    );
    // Fewer values than headers (a record written before): the default partition.
    let p = ks.partition(&ks.fields(None, T, &[]), b"{}");
    assert!(p.ends_with("/src=__HIVE_DEFAULT_PARTITION__/__HIVE_DEFAULT_PARTITION__/59"));
}

#[test]
fn a_template_of_only_a_name_and_an_empty_prefix() {
    let ks = KeySpace::with_template(
        Arc::new(Template::parse("{instance}_{shard}_{start}_{seq}").unwrap()),
        "",
        "h",
        0,
        5,
    );
    assert_eq!(part(&ks, "{}"), "");
    assert_eq!(ks.key(None, T, 3, "json"), "h_0_5_3.json");
}

#[test]
fn bad_templates_are_refused_saying_why() {
    let err = |t: &str| Template::parse(t).expect_err(t).to_string();
    let name = "{instance}-{shard}-{start}-{seq}";
    assert!(err(&format!("{{prefix}}/{{payload.event/{name}")).contains("unbalanced braces"));
    assert!(err(&format!("{{prefix}}/event}}/{name}")).contains("unbalanced braces"));
    assert!(err(&format!("{{prefix}}/{{a{{b}}}}/{name}")).contains("unbalanced braces"));
    let e = err(&format!("{{prefix}}/{{event}}/{name}"));
    assert!(
        e.contains("unknown variable {event}") && e.contains("{payload.FIELD}"),
        "{e}"
    );
    assert!(err("{prefix}/{instance}-{shard}-{start}").contains("{seq} is missing"));
    assert!(err("{prefix}/{instance}-{shard}-{seq}").contains("{start} is missing"));
    assert!(err(&format!("{name}/{{prefix}}")).contains("{instance} is missing"));
    assert!(err(&format!("{{prefix}}/{name}-{{payload.e}}")).contains("last path segment"));
    assert!(err(&format!("{{seq}}/{name}")).contains("last segment only"));
    assert!(err(&format!("{{prefix}}//{name}")).contains("empty path segment"));
    assert!(err(&format!("{{prefix}}/../{name}")).contains("\"..\""));
    assert!(err(&format!("/{name}")).contains("start or end"));
    assert!(err(&format!("{name}/")).contains("start or end"));
    assert!(err("").contains("empty"));
    assert!(err(&format!("a b/{name}")).contains("text in a template"));
    assert!(err(&format!("{{payload.}}/{name}")).contains("payload field path"));
    assert!(err(&format!("{{payload.a..b}}/{name}")).contains("payload field path"));
    assert!(err(&format!("{{header.a b}}/{name}")).contains("not a header name"));
    assert!(err(&format!("{{header.}}/{name}")).contains("not a header name"));
    for secret in ["Authorization", "cookie", "Proxy-Authorization"] {
        let e = err(&format!("{{header.{secret}}}/{name}"));
        assert!(e.contains("credentials"), "{e}");
    }
    Template::parse(HIVE).unwrap();
    Template::parse(&format!("{{payload.os.name}}/{{header.X-Real-IP}}/{name}")).unwrap();
}

#[test]
fn the_longest_key_is_known_before_any_is_made() {
    let name = "{instance}-{shard}-{start}-{seq}";
    let t = Template::default();
    // events/ + tenant/ + 2026/11/28/23/ + name + .ndjson.zst, at most.
    assert!(t.max_key_len(6, 6) < 300, "{}", t.max_key_len(6, 6));
    let many: Vec<String> = (0..8).map(|i| format!("{{payload.f{i}}}")).collect();
    let t = Template::parse(&format!("{}/{name}", many.join("/"))).unwrap();
    assert!(t.max_key_len(0, 8) > 1024);
    // The longest key it can make: values cut to 128 bytes, each starting with a dot (written
    // `%2E`), the largest numbers, the longest ending (the error output's `errors/` and
    // `.ndjson`, longer than `.ndjson.zst`).
    let ks = KeySpace::with_template(Arc::new(t.clone()), "", "hostname", usize::MAX, 0);
    let fields: Vec<String> = (0..8)
        .map(|i| format!("\"f{i}\":\".{}\"", "a".repeat(300)))
        .collect();
    let payload = format!("{{{}}}", fields.join(","));
    let p = ks.partition(&ks.fields(None, T, &[]), payload.as_bytes());
    let spooled = ObjectName::Spooled {
        segment: u64::MAX,
        offset: u64::MAX,
        index: usize::MAX,
    };
    let key = ks.unfit_key(&p, spooled);
    assert_eq!(key.len(), t.max_key_len(0, 8), "{key}");
    assert!(ks.object_key(&p, spooled, "ndjson.zst").len() < key.len());
}
