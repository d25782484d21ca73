use super::*;
use arrow_array::{Array, Int64Array, ListArray, StringArray, StructArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The payloads as one buffer and their spans.
fn buf_of(payloads: &[&str]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    for p in payloads {
        let at = buf.len();
        buf.extend_from_slice(p.as_bytes());
        spans.push(at..buf.len());
        buf.push(b'\n');
    }
    (buf, spans)
}

fn read(file: &[u8]) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(file))
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1, "one batch");
    batches.into_iter().next().unwrap()
}

fn unfit_text(buf: &[u8], e: &Encoded) -> Vec<String> {
    e.unfit
        .iter()
        .map(|r| String::from_utf8_lossy(&buf[r.clone()]).into_owned())
        .collect()
}

#[test]
fn nested_fields_and_lists_round_trip_in_every_codec() {
    let payloads = [
        r#"{"id":"a","ts":1,"os":{"name":"linux","build":7},"metrics":[0.5,1.5],"ok":true}"#,
        r#"{"id":"b","ts":2,"os":{"name":"windows"},"metrics":[],"ok":false}"#,
        "{\"id\":\"c\",\n\"ts\":3,\"metrics\":[2,3,4],\"extra\":\"x\"}",
    ];
    let (buf, spans) = buf_of(&payloads);
    for c in [Compression::None, Compression::Zstd, Compression::Snappy] {
        let e = encode(&buf, &spans, None, c, None);
        assert!(e.unfit.is_empty(), "{:?}", e.reason);
        assert_eq!(e.rows, 3);
        let file = e.parquet.unwrap();
        assert_eq!(rows_in(&file), 3);
        let b = read(&file);
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let ids = col("id");
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Some("a"), Some("b"), Some("c")]
        );
        let ts = col("ts");
        let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ts.values(), &[1, 2, 3]);
        let os = col("os");
        let os = os.as_any().downcast_ref::<StructArray>().unwrap();
        let names = os.column_by_name("name").unwrap();
        let names = names.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(names.value(0), "linux");
        assert_eq!(names.value(1), "windows");
        assert!(os.is_null(2));
        let m = col("metrics");
        let m = m.as_any().downcast_ref::<ListArray>().unwrap();
        let lens: Vec<usize> = (0..3).map(|i| m.value(i).len()).collect();
        assert_eq!(lens, [2, 0, 3]);
        assert_eq!(
            m.value_type(),
            DataType::Float64,
            "ints and floats: float64"
        );
    }
}

#[test]
fn encoding_is_a_function_of_the_payloads() {
    let (buf, spans) = buf_of(&[
        r#"{"b":1,"a":{"y":"q","x":[1]}}"#,
        r#"{"c":null,"a":{"z":2}}"#,
    ]);
    let one = encode(&buf, &spans, None, Compression::Zstd, Some(5));
    let two = encode(&buf, &spans, None, Compression::Zstd, Some(5));
    assert!(one.parquet.is_some());
    assert_eq!(one.parquet, two.parquet);
}

#[test]
fn payloads_that_are_not_objects_or_conflict_are_set_apart_in_order() {
    let payloads = [
        r#"{"i":0,"a":{"x":1}}"#,
        "[1,2]",
        r#"{"i":2,"a":5}"#,
        "42",
        r#"{"i":4,"a":{"y":"s"}}"#,
        r#""text""#,
        r#"{"i":6,"a":[1]}"#,
    ];
    let (buf, spans) = buf_of(&payloads);
    let e = encode(&buf, &spans, None, Compression::Zstd, None);
    assert_eq!(
        unfit_text(&buf, &e),
        [
            "[1,2]",
            r#"{"i":2,"a":5}"#,
            "42",
            r#""text""#,
            r#"{"i":6,"a":[1]}"#
        ]
    );
    assert_eq!(e.reason.as_deref(), Some("not a JSON object"));
    assert_eq!(e.rows, 2);
    let b = read(&e.parquet.unwrap());
    let i = b.column_by_name("i").unwrap();
    let i = i.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(i.values(), &[0, 4]);
}

#[test]
fn a_fixed_schema_sets_apart_unknown_fields_and_other_types() {
    let schema = crate::upload::schema_file::parse(
        br#"{"i": "int64", "os": {"name": "string"}, "m": ["float64"]}"#,
    )
    .unwrap();
    let payloads = [
        r#"{"i":0,"os":{"name":"a"},"m":[1.5]}"#,
        r#"{"i":1,"other":true}"#,
        r#"{"i":"two"}"#,
        r#"{"i":3}"#,
        r#"{"i":4,"os":{"name":"b","build":1}}"#,
        r#"{"i":5,"m":"x"}"#,
        r#"{"i":6,"os":null,"m":null}"#,
    ];
    let (buf, spans) = buf_of(&payloads);
    let e = encode(&buf, &spans, Some(&schema), Compression::Zstd, None);
    assert_eq!(
        unfit_text(&buf, &e),
        [
            r#"{"i":1,"other":true}"#,
            r#"{"i":"two"}"#,
            r#"{"i":4,"os":{"name":"b","build":1}}"#,
            r#"{"i":5,"m":"x"}"#
        ]
    );
    assert!(
        e.reason.as_deref().unwrap().contains("other"),
        "{:?}",
        e.reason
    );
    let b = read(&e.parquet.unwrap());
    assert_eq!(b.schema().fields().len(), 3, "the file's columns");
    let i = b.column_by_name("i").unwrap();
    let i = i.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(i.values(), &[0, 3, 6]);
}

#[test]
fn nothing_is_lost_whatever_the_payloads() {
    for payloads in [
        &["{}", "{}"][..],
        &[r#"{"a":null}"#, r#"{"a":[]}"#],
        &["null", "[]"],
        &[r#"{"a":"\ud800"}"#, r#"{"a":1}"#],
        &[r#"{"a":18446744073709551615}"#, r#"{"a":1}"#],
    ] {
        let (buf, spans) = buf_of(payloads);
        let e = encode(&buf, &spans, None, Compression::None, None);
        let rows = e.parquet.as_deref().map_or(0, rows_in);
        assert_eq!(rows, e.rows, "{payloads:?}: {e:?}");
        assert_eq!(
            e.rows + e.unfit.len(),
            payloads.len(),
            "{payloads:?}: {e:?}"
        );
    }
}
