//! `[batch]`: how payloads are grouped and encoded into objects (JSON, NDJSON or Parquet).

use serde::{Deserialize, Serialize};

/// How payloads are grouped into objects.
///
/// With `max_payloads = 1` and no compression every payload is its own `.json` object (the Go
/// service's layout: one PUT per payload). Otherwise an object is NDJSON, one payload per line
/// in arrival order, closed when it holds `max_payloads` payloads or `max_bytes` bytes or has
/// been open for `max_age_ms`, whichever comes first; keys end `.ndjson`, `.ndjson.gz` or
/// `.ndjson.zst`. With `format = "parquet"` the same batches are Parquet files instead
/// (`.parquet`), and payloads that do not fit go to an error output (see `format`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Payloads per object at most. `1` (with no compression) keeps one object per payload.
    /// With `format = "parquet"` it is also the rows of the object's one row group.
    pub max_payloads: usize,
    /// Uncompressed NDJSON bytes per object at most; a payload that would pass it starts the
    /// next object (a single larger payload gets an object of its own). For Parquet objects
    /// it counts the payloads' JSON, before encoding.
    pub max_bytes: usize,
    /// An object is closed this long after its first payload arrived, even if no more come,
    /// so a quiet shard still delivers.
    pub max_age_ms: u64,
    /// What objects hold: `json` (the default: one `.json` object per payload, or NDJSON
    /// batches) or `parquet` (one Parquet file per batch, one row group, key ending
    /// `.parquet`; its schema inferred from the object's payloads, or fixed by
    /// `schema_file`). The payloads are kept as sent until the object closes, and encoded
    /// by the upload worker then, never on the request path; a durable replay encodes the
    /// same payloads again into the same key. A payload that is not a JSON object, or does
    /// not fit the schema, is not dropped: it goes into an NDJSON object of its own under
    /// `{keys.prefix}/errors/` (the data object's key below the prefix, ending `.ndjson`)
    /// and is counted in `corepost_payloads_unfit_total`. See "Parquet objects" in
    /// docs/operations.md.
    pub format: BatchFormat,
    /// With `format = "parquet"`: a file fixing the columns, instead of inferring them per
    /// object. JSON: an object mapping each column to its type, in column order; a type is
    /// `"string"`, `"int64"`, `"float64"`, `"bool"`, an object (a struct of such columns)
    /// or a one-element array (a list of that type), e.g. `{"event": "string", "os":
    /// {"name": "string"}, "metrics": ["float64"]}`. Every column may be null or missing; a
    /// payload with a field the file does not name, or a value of another type, goes to
    /// the error output. Read at start; with `ack = "durable"` a copy is kept in
    /// `{spool.dir}/schemas/`, so requests replayed after a crash are encoded with the file
    /// they were taken with, even once it has changed.
    pub schema_file: Option<String>,
    /// `none`, `gzip`, `zstd` or (Parquet only) `snappy`. JSON objects: sets
    /// `Content-Encoding` and the key's suffix; Parquet objects: the codec of the columns
    /// inside the file (`gzip` is refused there).
    pub compression: Compression,
    /// Compression level: gzip 0–9 (default 6), zstd 1–22 (default 3).
    pub level: Option<i32>,
    /// Objects of this many (stored) bytes or more are sent with multipart upload.
    pub multipart_threshold_bytes: usize,
    /// Part size for multipart upload (S3 requires at least 5 MiB for all parts but the last).
    pub part_bytes: usize,
    /// Objects being filled at once per shard, one per partition (`keys.template`) and
    /// tenant. A payload of a partition with no open object while this many are open first
    /// closes (uploads) the one opened longest ago: nothing waits and nothing is lost, but
    /// payloads of many-valued partitions land in smaller objects. Each open object holds
    /// its payloads' requests in the queue budget, and its compressor's state.
    pub max_open_partitions: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_payloads: 1,
            max_bytes: 1 << 20,
            max_age_ms: 1_000,
            format: BatchFormat::Json,
            schema_file: None,
            compression: Compression::None,
            level: None,
            multipart_threshold_bytes: 64 << 20,
            part_bytes: 8 << 20,
            max_open_partitions: 500,
        }
    }
}

impl BatchConfig {
    /// Whether objects are NDJSON batches (otherwise one `.json` object per payload, or
    /// Parquet).
    pub fn ndjson(&self) -> bool {
        self.format == BatchFormat::Json
            && (self.max_payloads > 1 || self.compression != Compression::None)
    }
}

/// What objects hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchFormat {
    /// The payloads' JSON as sent: one `.json` object per payload, or NDJSON batches.
    Json,
    /// Apache Parquet: columns from the payloads' fields, one row per payload.
    Parquet,
}

/// Compression of batched objects.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain NDJSON; uncompressed Parquet columns.
    None,
    /// gzip (`Content-Encoding: gzip`, `.ndjson.gz`).
    Gzip,
    /// Zstandard (`Content-Encoding: zstd`, `.ndjson.zst`; Parquet's `ZSTD` codec).
    Zstd,
    /// Parquet's `SNAPPY` codec (Parquet only).
    Snappy,
}
