//! Building objects: one payload as `.json`, or many as NDJSON, optionally gzip or zstd, or
//! as Parquet (see `parquet`).
//!
//! An NDJSON object holds one payload per line in arrival order. A payload is stored as the
//! client sent it, except that line breaks between its tokens (legal JSON whitespace; a JSON
//! string cannot hold a raw line break) become spaces, so each payload stays on one line. A
//! Parquet object keeps its payloads the same way until it closes, then encodes them.

use super::parquet;
use crate::config::{BatchConfig, BatchFormat, Compression};
use arrow_schema::SchemaRef;
use flate2::write::GzEncoder;
use std::io::Write;
use std::ops::Range;

/// What an object is: its key suffix and HTTP headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectFormat {
    /// Key suffix without the dot: `json`, `ndjson`, `ndjson.gz`, `ndjson.zst` or `parquet`.
    pub ext: &'static str,
    /// `Content-Type` of the object.
    pub content_type: &'static str,
    /// `Content-Encoding` of the object, when compressed.
    pub content_encoding: Option<&'static str>,
}

const JSON: ObjectFormat = ObjectFormat {
    ext: "json",
    content_type: "application/json",
    content_encoding: None,
};
const NDJSON: ObjectFormat = ObjectFormat {
    ext: "ndjson",
    content_type: "application/x-ndjson",
    content_encoding: None,
};
const NDJSON_GZ: ObjectFormat = ObjectFormat {
    ext: "ndjson.gz",
    content_type: "application/x-ndjson",
    content_encoding: Some("gzip"),
};
const NDJSON_ZST: ObjectFormat = ObjectFormat {
    ext: "ndjson.zst",
    content_type: "application/x-ndjson",
    content_encoding: Some("zstd"),
};
const PARQUET: ObjectFormat = ObjectFormat {
    ext: "parquet",
    content_type: "application/vnd.apache.parquet",
    content_encoding: None,
};

/// The format of the error output: the payloads a Parquet object could not take, as NDJSON.
pub const UNFIT: ObjectFormat = NDJSON;

impl ObjectFormat {
    /// The format the batch settings produce.
    pub fn of(cfg: &BatchConfig) -> ObjectFormat {
        if cfg.format == BatchFormat::Parquet {
            return PARQUET;
        }
        if !cfg.ndjson() {
            return JSON;
        }
        match cfg.compression {
            Compression::None => NDJSON,
            Compression::Gzip => NDJSON_GZ,
            Compression::Zstd => NDJSON_ZST,
            // Refused by validation without Parquet.
            Compression::Snappy => NDJSON,
        }
    }

    /// The format of an existing object, from its key (for spilled objects uploaded at the
    /// next start, whatever the settings are now).
    pub fn from_key(key: &str) -> ObjectFormat {
        [NDJSON_GZ, NDJSON_ZST, NDJSON, PARQUET]
            .into_iter()
            .find(|f| key.ends_with(&format!(".{}", f.ext)))
            .unwrap_or(JSON)
    }

    /// Whether objects of this format hold one payload per line.
    pub fn is_ndjson(&self) -> bool {
        self.ext.starts_with("ndjson")
    }

    /// Whether objects of this format are Parquet files.
    pub fn is_parquet(&self) -> bool {
        self.ext == PARQUET.ext
    }
}

enum Encoder {
    Plain(Vec<u8>),
    Gzip(GzEncoder<Vec<u8>>),
    Zstd(zstd::Encoder<'static, Vec<u8>>),
    /// Parquet: the payloads as NDJSON lines, encoded at [`ObjectBuilder::finish`].
    Parquet(Box<Rows>),
}

/// A Parquet object's payloads until it closes.
struct Rows {
    lines: Vec<u8>,
    /// Each payload in `lines`, without its line break.
    spans: Vec<Range<usize>>,
    schema: Option<SchemaRef>,
    compression: Compression,
    level: Option<i32>,
}

/// A closed object: what to store.
#[derive(Debug)]
pub struct Finished {
    /// The object: its bytes, format and payloads. `None` for a Parquet object none of whose
    /// payloads fit.
    pub object: Option<(Vec<u8>, ObjectFormat, usize)>,
    /// The payloads a Parquet object could not take, for the error output.
    pub unfit: Option<Unfit>,
}

/// Payloads set apart from a Parquet object: NDJSON, in arrival order ([`UNFIT`]).
#[derive(Debug)]
pub struct Unfit {
    /// The NDJSON object.
    pub data: Vec<u8>,
    /// Payloads in it.
    pub payloads: usize,
    /// Why the first of them did not fit.
    pub reason: String,
}

/// One object being filled.
pub struct ObjectBuilder {
    format: ObjectFormat,
    enc: Encoder,
    payloads: usize,
    raw_bytes: usize,
}

impl std::fmt::Debug for ObjectBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBuilder")
            .field("format", &self.format)
            .field("payloads", &self.payloads)
            .field("raw_bytes", &self.raw_bytes)
            .finish()
    }
}

impl ObjectBuilder {
    /// An empty object in the configured format; `schema` fixes a Parquet object's columns
    /// (`batch.schema_file`), otherwise they are inferred from its payloads.
    pub fn new(cfg: &BatchConfig, schema: Option<&SchemaRef>) -> std::io::Result<Self> {
        let format = ObjectFormat::of(cfg);
        let enc = match cfg.compression {
            _ if format.is_parquet() => Encoder::Parquet(Box::new(Rows {
                lines: Vec::new(),
                spans: Vec::new(),
                schema: schema.cloned(),
                compression: cfg.compression,
                level: cfg.level,
            })),
            Compression::None | Compression::Snappy => Encoder::Plain(Vec::new()),
            Compression::Gzip => Encoder::Gzip(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(cfg.level.unwrap_or(6).clamp(0, 9) as u32),
            )),
            Compression::Zstd => {
                Encoder::Zstd(zstd::Encoder::new(Vec::new(), cfg.level.unwrap_or(3))?)
            }
        };
        Ok(Self {
            format,
            enc,
            payloads: 0,
            raw_bytes: 0,
        })
    }

    /// Payloads added so far.
    pub fn payloads(&self) -> usize {
        self.payloads
    }

    /// Uncompressed bytes added so far (what `batch.max_bytes` limits).
    pub fn raw_bytes(&self) -> usize {
        self.raw_bytes
    }

    /// Uncompressed bytes `payload` would add.
    pub fn cost(&self, payload: &[u8]) -> usize {
        payload.len() + usize::from(!self.is_single())
    }

    /// Whether the object holds one payload as sent (`.json`), not one per line.
    fn is_single(&self) -> bool {
        self.format == JSON
    }

    /// Adds one payload (a line of NDJSON, or the whole `.json` object).
    pub fn push(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let ndjson = !self.is_single();
        let w: &mut dyn Write = match &mut self.enc {
            Encoder::Plain(v) => v,
            Encoder::Gzip(g) => g,
            Encoder::Zstd(z) => z,
            Encoder::Parquet(rows) => {
                let at = rows.lines.len();
                rows.spans.push(at..at + payload.len());
                &mut rows.lines
            }
        };
        if ndjson && payload.iter().any(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = payload
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                .collect();
            w.write_all(&line)?;
        } else {
            w.write_all(payload)?;
        }
        if ndjson {
            w.write_all(b"\n")?;
        }
        self.payloads += 1;
        self.raw_bytes += payload.len() + usize::from(ndjson);
        Ok(())
    }

    /// The finished object (a Parquet object is encoded here, from its payloads as sent).
    pub fn finish(self) -> std::io::Result<Finished> {
        let data = match self.enc {
            Encoder::Plain(v) => v,
            Encoder::Gzip(g) => g.finish()?,
            Encoder::Zstd(z) => z.finish()?,
            Encoder::Parquet(rows) => return Ok(rows.finish(self.format)),
        };
        Ok(Finished {
            object: Some((data, self.format, self.payloads)),
            unfit: None,
        })
    }
}

impl Rows {
    fn finish(self, format: ObjectFormat) -> Finished {
        let e = parquet::encode(
            &self.lines,
            &self.spans,
            self.schema.as_ref(),
            self.compression,
            self.level,
        );
        let unfit = (!e.unfit.is_empty()).then(|| {
            let mut data = Vec::with_capacity(e.unfit.iter().map(|r| r.len() + 1).sum());
            for r in &e.unfit {
                data.extend_from_slice(&self.lines[r.clone()]);
                data.push(b'\n');
            }
            Unfit {
                data,
                payloads: e.unfit.len(),
                reason: e.reason.unwrap_or_default(),
            }
        });
        Finished {
            object: e.parquet.map(|file| (file, format, e.rows)),
            unfit,
        }
    }
}

/// How many payloads a stored object holds (for counting spilled objects uploaded later).
pub fn payloads_in(data: &[u8], format: ObjectFormat) -> usize {
    if format.is_parquet() {
        return parquet::rows_in(data);
    }
    if !format.is_ndjson() {
        return 1;
    }
    let count = |d: &[u8]| d.iter().filter(|&&b| b == b'\n').count();
    match format.content_encoding {
        None => count(data),
        Some("gzip") => {
            let mut out = Vec::new();
            let mut d = flate2::read::GzDecoder::new(data);
            std::io::Read::read_to_end(&mut d, &mut out).map_or(0, |_| count(&out))
        }
        Some(_) => zstd::decode_all(data).map_or(0, |out| count(&out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_payloads: usize, compression: Compression) -> BatchConfig {
        BatchConfig {
            max_payloads,
            compression,
            ..BatchConfig::default()
        }
    }

    /// A JSON or NDJSON object's bytes and format.
    fn done(b: ObjectBuilder) -> (Vec<u8>, ObjectFormat) {
        let f = b.finish().unwrap();
        assert!(f.unfit.is_none());
        let (data, format, _) = f.object.unwrap();
        (data, format)
    }

    #[test]
    fn parquet_objects_keep_payloads_until_they_close_and_set_apart_the_unfit() {
        let batch = BatchConfig {
            format: BatchFormat::Parquet,
            ..cfg(10, Compression::Zstd)
        };
        assert_eq!(ObjectFormat::of(&batch).ext, "parquet");
        let mut b = ObjectBuilder::new(&batch, None).unwrap();
        for p in [&b"{\"a\":\n1}"[..], b"[1]", b"{\"a\":2}", b"7"] {
            assert_eq!(b.cost(p), p.len() + 1);
            b.push(p).unwrap();
        }
        assert_eq!(b.payloads(), 4);
        let f = b.finish().unwrap();
        let (data, format, rows) = f.object.unwrap();
        assert_eq!((format.ext, rows), ("parquet", 2));
        assert_eq!(ObjectFormat::from_key("p/a.parquet"), format);
        assert_eq!(payloads_in(&data, format), 2);
        let unfit = f.unfit.unwrap();
        assert_eq!(unfit.data, b"[1]\n7\n");
        assert_eq!(
            (unfit.payloads, unfit.reason.as_str()),
            (2, "not a JSON object")
        );
        assert_eq!(payloads_in(&unfit.data, UNFIT), 2);
    }

    fn decode(data: &[u8], f: ObjectFormat) -> Vec<u8> {
        match f.content_encoding {
            None => data.to_vec(),
            Some("gzip") => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out)
                    .unwrap();
                out
            }
            Some(_) => zstd::decode_all(data).unwrap(),
        }
    }

    #[test]
    fn single_payload_objects_are_the_bytes_as_sent() {
        let mut b = ObjectBuilder::new(&cfg(1, Compression::None), None).unwrap();
        b.push(b"{\n \"a\": 1}").unwrap();
        let (data, f) = done(b);
        assert_eq!(data, b"{\n \"a\": 1}");
        assert_eq!(f.ext, "json");
        assert_eq!(f.content_type, "application/json");
    }

    #[test]
    fn ndjson_round_trips_in_every_compression() {
        let payloads: [&[u8]; 4] = [
            b"{\"a\":1}",
            b"[1,\r\n2]",
            b"\"x\\ny\"",
            b"12345678901234567890",
        ];
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut b = ObjectBuilder::new(&cfg(10, c), None).unwrap();
            for p in payloads {
                b.push(p).unwrap();
            }
            assert_eq!(b.payloads(), 4);
            let (data, f) = done(b);
            assert_eq!(ObjectFormat::from_key(&format!("a/b-1.{}", f.ext)), f);
            let text = decode(&data, f);
            assert_eq!(
                text, b"{\"a\":1}\n[1,  2]\n\"x\\ny\"\n12345678901234567890\n",
                "{c:?}"
            );
            assert_eq!(payloads_in(&data, f), 4);
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                serde_json::from_slice::<serde_json::Value>(line).unwrap();
            }
        }
    }

    #[test]
    fn formats_follow_the_settings() {
        assert_eq!(ObjectFormat::of(&cfg(1, Compression::None)).ext, "json");
        assert_eq!(ObjectFormat::of(&cfg(5, Compression::None)).ext, "ndjson");
        let gz = ObjectFormat::of(&cfg(1, Compression::Gzip));
        assert_eq!((gz.ext, gz.content_encoding), ("ndjson.gz", Some("gzip")));
        let zst = ObjectFormat::of(&cfg(9, Compression::Zstd));
        assert_eq!(
            (zst.ext, zst.content_encoding),
            ("ndjson.zst", Some("zstd"))
        );
        assert_eq!(ObjectFormat::from_key("p/2026/x-0-1-2.json").ext, "json");
    }
}
