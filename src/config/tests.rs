//! Unit tests of the configuration: defaults, layers, validation.
use super::*;

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn errors_name_their_keys() {
    let mut c = Config::default();
    c.server.listen = "nowhere".into();
    c.queue.max_payloads = 0;
    c.upload.max_in_flight = 0;
    c.shards.cores = Cores::Named("many".into());
    c.sink.kind = SinkKind::S3;
    let errs = c.validate().unwrap_err().0;
    let text: Vec<_> = errs
        .iter()
        .map(|e| e.0.split(':').next().unwrap())
        .collect();
    assert_eq!(
        text,
        [
            "server.listen",
            "shards.cores",
            "queue.max_payloads",
            "upload.max_in_flight",
            "sink.s3.bucket",
            "sink.s3.access_key_id"
        ]
    );
}

#[test]
fn the_decoded_body_cap_is_at_least_the_body_limit() {
    let mut c = Config::default();
    assert_eq!(c.server.max_decoded_bytes, 16 << 20);
    c.server.max_body_bytes = 32 << 20;
    let text = c.validate().unwrap_err().to_string();
    assert!(
        text.starts_with(
            "server.max_decoded_bytes: must be between server.max_body_bytes (33554432)"
        ),
        "{text}"
    );
    c.server.max_decoded_bytes = 32 << 20;
    c.queue.max_bytes = 64 << 20;
    assert_eq!(c.validate(), Ok(()));
    c.server.max_decoded_bytes = (1 << 30) + 1;
    assert!(c.validate().is_err());
    // It may exceed the queue: such a body gets 413 naming queue.max_bytes.
    let mut c = Config::default();
    c.queue.max_bytes = 8 << 20;
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn the_share_of_unverified_requests_is_a_percentage() {
    let mut c = Config::default();
    assert_eq!(c.auth.unverified_queue_percent, 25);
    for bad in [0, 101] {
        c.auth.unverified_queue_percent = bad;
        let text = c.validate().unwrap_err().to_string();
        assert!(
            text.starts_with("auth.unverified_queue_percent: must be between 1 and 100"),
            "{text}"
        );
    }
    c.auth.unverified_queue_percent = 100;
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn every_ack_mode_is_valid_and_the_spool_is_checked_when_durable() {
    let mut c = Config::default();
    c.server.ack = Ack::Uploaded;
    assert_eq!(c.validate(), Ok(()));
    c.server.ack = Ack::Durable;
    assert_eq!(c.validate(), Ok(()));
    c.spool.segment_bytes = 1 << 20;
    c.spool.max_bytes = 1 << 20;
    let text = c.validate().unwrap_err().to_string();
    assert!(text.contains("spool.segment_bytes"), "{text}");
    assert!(text.contains("spool.max_bytes"), "{text}");
}

#[test]
fn batch_limits_are_checked() {
    let mut c = Config::default();
    c.batch.max_payloads = 1000;
    c.queue.max_payloads = 100;
    c.batch.compression = Compression::Gzip;
    c.batch.level = Some(12);
    c.batch.part_bytes = 1 << 20;
    let text = c.validate().unwrap_err().to_string();
    for key in ["batch.max_payloads", "batch.level", "batch.part_bytes"] {
        assert!(text.contains(key), "{key} missing from {text}");
    }
    let mut c = Config::default();
    c.batch.level = Some(3);
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("batch.level"));
    c.batch.compression = Compression::Zstd;
    assert_eq!(c.validate(), Ok(()));
    assert!(c.batch.ndjson());
    assert!(!Config::default().batch.ndjson());
}

#[test]
fn parquet_settings_are_checked() {
    let err = |c: &Config| c.validate().unwrap_err().to_string();
    let mut c = Config::default();
    c.batch.format = BatchFormat::Parquet;
    c.batch.compression = Compression::Gzip;
    assert!(err(&c).starts_with("batch.compression: with batch.format = \"parquet\""));
    c.batch.compression = Compression::Snappy;
    assert_eq!(c.validate(), Ok(()));
    assert!(!c.batch.ndjson());
    c.batch.level = Some(3);
    assert!(err(&c).starts_with("batch.level"));
    c.batch.level = None;
    c.batch.format = BatchFormat::Json;
    assert!(err(&c).starts_with("batch.compression: \"snappy\" only with"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.json");
    let mut c = Config::default();
    c.batch.schema_file = Some(path.to_string_lossy().into_owned());
    assert!(err(&c).starts_with("batch.schema_file: set only with"));
    c.batch.format = BatchFormat::Parquet;
    assert!(
        err(&c).starts_with("batch.schema_file: cannot read"),
        "{}",
        err(&c)
    );
    std::fs::write(&path, r#"{"a": "integer"}"#).unwrap();
    assert!(err(&c).contains("unknown type \"integer\""), "{}", err(&c));
    std::fs::write(&path, r#"{"a": "int64", "b": {"c": ["string"]}}"#).unwrap();
    assert_eq!(c.validate(), Ok(()));
}

/// The keys named by the errors of `c` that are about overlapping data directories.
fn overlaps(c: &Config) -> Vec<String> {
    match c.validate() {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .0
            .iter()
            .map(|e| e.0.clone())
            .filter(|e| e.contains("same directory as") || e.contains("is inside"))
            .collect(),
    }
}

#[test]
fn data_directories_must_not_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| format!("{}/{p}", tmp.path().display());
    let mut c = Config::default();
    c.upload.spill_dir = t("a/b");
    c.sink.fs.root = t("a/./c/../b/");
    assert_eq!(
        overlaps(&c),
        [format!(
            "sink.fs.root: {:?} is the same directory as upload.spill_dir ({:?}); data directories must not overlap",
            t("a/./c/../b/"),
            t("a/b")
        )]
    );
    // One inside the other, either way round; the error names both keys.
    c.sink.fs.root = t("a");
    let errs = overlaps(&c);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("upload.spill_dir: ") && errs[0].contains("is inside sink.fs.root"),
        "{errs:?}"
    );
    c.sink.fs.root = t("a/b/objects");
    let errs = overlaps(&c);
    assert!(
        errs.len() == 1
            && errs[0].starts_with("sink.fs.root: ")
            && errs[0].contains("is inside upload.spill_dir"),
        "{errs:?}"
    );
    // A sibling whose name merely starts the same is not inside.
    c.sink.fs.root = t("a/b2");
    assert_eq!(overlaps(&c), Vec::<String>::new());
    // The fs root counts only with the fs sink.
    c.sink.fs.root = t("a/b");
    c.sink.kind = SinkKind::Discard;
    assert_eq!(overlaps(&c), Vec::<String>::new());
    // The spool counts only with ack = "durable".
    c.spool.dir = t("a/b/spool");
    assert_eq!(overlaps(&c), Vec::<String>::new());
    c.server.ack = Ack::Durable;
    let errs = overlaps(&c);
    assert!(
        errs.len() == 1
            && errs[0].starts_with("spool.dir: ")
            && errs[0].contains("upload.spill_dir"),
        "{errs:?}"
    );
    // Relative paths resolve against the working directory.
    let mut c = Config::default();
    c.upload.spill_dir = "data".into();
    c.sink.fs.root = std::env::current_dir()
        .unwrap()
        .join("data/objects")
        .display()
        .to_string();
    assert_eq!(overlaps(&c).len(), 1);
}

#[test]
fn overlap_is_seen_through_symlinks_even_below_directories_not_created_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut c = Config::default();
    c.sink.fs.root = real.display().to_string();
    c.upload.spill_dir = link.join("spill/not-yet").display().to_string();
    let errs = overlaps(&c);
    assert!(
        errs.len() == 1
            && errs[0].starts_with("upload.spill_dir: ")
            && errs[0].contains("is inside sink.fs.root"),
        "{errs:?}"
    );
}

#[test]
fn secrets_are_redacted() {
    let mut c = Config::default();
    c.sink.s3.secret_access_key = Some("hunter2".into());
    let out = c.to_redacted_toml();
    assert!(!out.contains("hunter2"));
    assert!(out.contains("<redacted>"));
}

#[test]
fn a_key_template_that_can_make_keys_longer_than_s3_takes_is_refused() {
    let mut c = Config::default();
    c.keys.template = "{prefix}/e={payload.event}/{instance}-{shard}-{start}-{seq}".into();
    assert_eq!(c.validate(), Ok(()));
    let many: Vec<String> = (0..8).map(|i| format!("{{header.h{i}}}")).collect();
    c.keys.template = format!(
        "{}/{{instance}}-{{shard}}-{{start}}-{{seq}}",
        many.join("/")
    );
    let text = c.validate().unwrap_err().to_string();
    assert!(
        text.starts_with("keys.template: ") && text.contains("S3 refuses keys over 1024 bytes"),
        "{text}"
    );
}
