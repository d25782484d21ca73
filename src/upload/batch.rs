//! Building objects: one payload as `.json`, or many as NDJSON, optionally gzip or zstd.
//!
//! An NDJSON object holds one payload per line in arrival order. A payload is stored as the
//! client sent it, except that line breaks between its tokens (legal JSON whitespace; a JSON
//! string cannot hold a raw line break) become spaces, so each payload stays on one line.

use crate::config::{BatchConfig, Compression};
use flate2::write::GzEncoder;
use std::io::Write;

/// What an object is: its key suffix and HTTP headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectFormat {
    /// Key suffix without the dot: `json`, `ndjson`, `ndjson.gz` or `ndjson.zst`.
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

impl ObjectFormat {
    /// The format the batch settings produce.
    pub fn of(cfg: &BatchConfig) -> ObjectFormat {
        if !cfg.ndjson() {
            return JSON;
        }
        match cfg.compression {
            Compression::None => NDJSON,
            Compression::Gzip => NDJSON_GZ,
            Compression::Zstd => NDJSON_ZST,
        }
    }

    /// The format of an existing object, from its key (for spilled objects uploaded at the
    /// next start, whatever the settings are now).
    pub fn from_key(key: &str) -> ObjectFormat {
        [NDJSON_GZ, NDJSON_ZST, NDJSON]
            .into_iter()
            .find(|f| key.ends_with(&format!(".{}", f.ext)))
            .unwrap_or(JSON)
    }

    /// Whether objects of this format hold one payload per line.
    pub fn is_ndjson(&self) -> bool {
        self.ext != JSON.ext
    }
}

enum Encoder {
    Plain(Vec<u8>),
    Gzip(GzEncoder<Vec<u8>>),
    Zstd(zstd::Encoder<'static, Vec<u8>>),
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
    /// An empty object in the configured format.
    pub fn new(cfg: &BatchConfig) -> std::io::Result<Self> {
        let format = ObjectFormat::of(cfg);
        let enc = match cfg.compression {
            Compression::None => Encoder::Plain(Vec::new()),
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
        payload.len() + usize::from(self.format.is_ndjson())
    }

    /// Adds one payload (a line of NDJSON, or the whole `.json` object).
    pub fn push(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let ndjson = self.format.is_ndjson();
        let w: &mut dyn Write = match &mut self.enc {
            Encoder::Plain(v) => v,
            Encoder::Gzip(g) => g,
            Encoder::Zstd(z) => z,
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

    /// The finished object's bytes and format.
    pub fn finish(self) -> std::io::Result<(Vec<u8>, ObjectFormat)> {
        let data = match self.enc {
            Encoder::Plain(v) => v,
            Encoder::Gzip(g) => g.finish()?,
            Encoder::Zstd(z) => z.finish()?,
        };
        Ok((data, self.format))
    }
}

/// How many payloads a stored object holds (for counting spilled objects uploaded later).
pub fn payloads_in(data: &[u8], format: ObjectFormat) -> usize {
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
        let mut b = ObjectBuilder::new(&cfg(1, Compression::None)).unwrap();
        b.push(b"{\n \"a\": 1}").unwrap();
        let (data, f) = b.finish().unwrap();
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
            let mut b = ObjectBuilder::new(&cfg(10, c)).unwrap();
            for p in payloads {
                b.push(p).unwrap();
            }
            assert_eq!(b.payloads(), 4);
            let (data, f) = b.finish().unwrap();
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
