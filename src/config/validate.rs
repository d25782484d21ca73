//! Validation: every value the types alone cannot check, each error naming its key; the
//! data directories and their overlaps; the redacted print of `check-config`.

use super::*;

/// A configuration error; the message always names the key (or variable, or flag). Words,
/// not an enum: every one is collected into [`ConfigErrors`] and printed for the operator,
/// and nothing handles one differently from another; a cause (a TOML or file error) is
/// quoted in the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// All errors found in one configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Checks every value that the types alone cannot; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut bad = |key: &str, msg: String| errs.push(ConfigError(format!("{key}: {msg}")));
        self.validate_listen(&mut bad);
        self.validate_batch(&mut bad);
        if self.server.ack == Ack::Durable {
            self.validate_spool(&mut bad);
        }
        self.validate_timeouts(&mut bad);
        self.validate_capacity(&mut bad);
        self.validate_sink(&mut bad);
        self.validate_data_dirs(&mut bad);
        self.validate_keys(&mut bad);
        if let Some(tls) = &self.tls {
            self.validate_tls(tls, &mut bad);
        }
        self.validate_auth(&mut bad);
        self.validate_glommio(&mut bad);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Addresses and body limits.
    fn validate_listen(&self, bad: &mut impl FnMut(&str, String)) {
        if let Some(a) = &self.server.admin_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                bad(
                    "server.admin_listen",
                    format!("{a:?} is not an IP:port address"),
                );
            } else if *a == self.server.listen && !a.ends_with(":0") {
                bad(
                    "server.admin_listen",
                    "must differ from server.listen".into(),
                );
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "server.listen",
                format!("{:?} is not an IP:port address", self.server.listen),
            );
        }
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > 1 << 30 {
            bad(
                "server.max_body_bytes",
                "must be between 1 and 1073741824".into(),
            );
        }
        if self.server.max_decoded_bytes < self.server.max_body_bytes
            || self.server.max_decoded_bytes > 1 << 30
        {
            bad(
                "server.max_decoded_bytes",
                format!(
                    "must be between server.max_body_bytes ({}) and 1073741824: a body accepted plain must also be accepted compressed",
                    self.server.max_body_bytes
                ),
            );
        }
    }

    /// Timeouts and backoff (none may be zero), the header limit.
    fn validate_timeouts(&self, bad: &mut impl FnMut(&str, String)) {
        for (key, v) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.write_timeout_ms", self.server.write_timeout_ms),
            ("upload.request_timeout_ms", self.upload.request_timeout_ms),
            ("upload.backoff_base_ms", self.upload.backoff_base_ms),
            ("upload.drain_timeout_ms", self.upload.drain_timeout_ms),
            ("server.ack_timeout_ms", self.server.ack_timeout_ms),
            ("batch.max_age_ms", self.batch.max_age_ms),
        ] {
            if v == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if self.server.max_header_bytes < 1024 {
            bad("server.max_header_bytes", "must be at least 1024".into());
        }
        if self.upload.backoff_max_ms < self.upload.backoff_base_ms {
            bad(
                "upload.backoff_max_ms",
                "must be at least upload.backoff_base_ms".into(),
            );
        }
        if self.upload.refused_backoff_max_ms < 100 {
            bad(
                "upload.refused_backoff_max_ms",
                "must be at least 100".into(),
            );
        }
    }

    /// Shards, connections, the queue and uploads in flight.
    fn validate_capacity(&self, bad: &mut impl FnMut(&str, String)) {
        if let Cores::Named(name) = &self.shards.cores {
            if name != "all" {
                bad(
                    "shards.cores",
                    format!("{name:?} is neither a number nor \"all\""),
                );
            }
        }
        if self.shards.cores == Cores::Count(0) {
            bad("shards.cores", "must be at least 1".into());
        }
        if self.shards.max_connections == 0 {
            bad("shards.max_connections", "must be at least 1".into());
        }
        if self.queue.max_payloads == 0 {
            bad(
                "queue.max_payloads",
                "must be at least 1 (MAX_QUEUE)".into(),
            );
        }
        if self.queue.max_bytes < self.server.max_body_bytes {
            bad(
                "queue.max_bytes",
                format!(
                    "must be at least server.max_body_bytes ({}), or no full-size request could ever be queued",
                    self.server.max_body_bytes
                ),
            );
        }
        if self.upload.max_in_flight == 0 || self.upload.max_in_flight > 4096 {
            bad(
                "upload.max_in_flight",
                "must be between 1 and 4096 (MAX_WORKERS)".into(),
            );
        }
    }

    /// The sink's own settings and the spill directory.
    fn validate_sink(&self, bad: &mut impl FnMut(&str, String)) {
        if self.sink.kind == SinkKind::S3 {
            if self.sink.s3.bucket.as_deref().unwrap_or("").is_empty() {
                bad(
                    "sink.s3.bucket",
                    "required for the s3 sink (S3_BUCKET)".into(),
                );
            }
            if self.sink.s3.access_key_id.is_none() || self.sink.s3.secret_access_key.is_none() {
                bad(
                    "sink.s3.access_key_id",
                    "credentials required for the s3 sink (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
                );
            }
            if let Some(ep) = &self.sink.s3.endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    bad(
                        "sink.s3.endpoint",
                        format!("{ep:?} must start with http:// or https://"),
                    );
                }
            }
        }
        if self.upload.spill_dir.is_empty() {
            bad("upload.spill_dir", "must not be empty".into());
        }
        if self.sink.kind == SinkKind::Fs && self.sink.fs.root.is_empty() {
            bad("sink.fs.root", "must not be empty".into());
        }
    }

    /// The key prefix, instance name and template.
    fn validate_keys(&self, bad: &mut impl FnMut(&str, String)) {
        match crate::keys::Template::parse(&self.keys.template) {
            Err(e) => bad("keys.template", format!("{:?}: {e}", self.keys.template)),
            Ok(t) => {
                // The host name (the default instance) is at most 64 bytes.
                let instance = self.keys.instance.as_deref().map_or(64, str::len);
                let longest = t.max_key_len(self.keys.prefix.len(), instance);
                if longest > crate::keys::template::MAX_KEY {
                    bad(
                        "keys.template",
                        format!(
                            "{:?}: keys could be {longest} bytes long (each value up to 128 bytes, with keys.prefix and the instance name); S3 refuses keys over {} bytes",
                            self.keys.template,
                            crate::keys::template::MAX_KEY
                        ),
                    );
                }
            }
        }
        if self.keys.prefix.starts_with('/') || self.keys.prefix.contains("..") {
            bad(
                "keys.prefix",
                "must not start with '/' or contain '..'".into(),
            );
        }
        if let Some(inst) = &self.keys.instance {
            if inst.is_empty() || inst.contains('/') {
                bad(
                    "keys.instance",
                    "must be non-empty and contain no '/'".into(),
                );
            }
        }
    }

    /// `[auth] tokens_file`, read here so that `check-config` and start-up refuse a malformed
    /// file.
    fn validate_auth(&self, bad: &mut impl FnMut(&str, String)) {
        let pct = self.auth.unverified_queue_percent;
        if !(1..=100).contains(&pct) {
            bad(
                "auth.unverified_queue_percent",
                format!("must be between 1 and 100 (a percentage of queue.max_bytes), not {pct}"),
            );
        }
        if let Some(path) = &self.auth.tokens_file {
            // Read here so that `check-config` and start-up refuse a malformed file; the
            // message names the line, never a token.
            if let Err(e) = crate::auth::TokenSet::load(std::path::Path::new(path)) {
                bad("auth.tokens_file", e.to_string());
            }
        }
    }

    /// The runtime's memory and ring sizes.
    fn validate_glommio(&self, bad: &mut impl FnMut(&str, String)) {
        if self.glommio.io_memory_kib < 64 {
            bad("glommio.io_memory_kib", "must be at least 64".into());
        }
        if !(8..=32768).contains(&self.glommio.ring_depth) {
            bad("glommio.ring_depth", "must be between 8 and 32768".into());
        }
    }

    /// The data directories this configuration uses, with their keys: the spool (`ack =
    /// "durable"`), the spill directory, the fs sink's root (`sink.kind = "fs"`). Each is
    /// locked by the running server.
    pub fn data_dirs(&self) -> Vec<(&'static str, &str)> {
        let mut dirs = Vec::new();
        if self.server.ack == Ack::Durable {
            dirs.push(("spool.dir", self.spool.dir.as_str()));
        }
        dirs.push(("upload.spill_dir", self.upload.spill_dir.as_str()));
        if self.sink.kind == SinkKind::Fs {
            dirs.push(("sink.fs.root", self.sink.fs.root.as_str()));
        }
        dirs
    }

    /// No data directory may be another, or lie inside another: the spill replay would upload
    /// (and delete) the fs sink's objects or the spool's segments, the fs sink would write
    /// objects among the spool's or the spill directory's files.
    fn validate_data_dirs(&self, bad: &mut impl FnMut(&str, String)) {
        let dirs: Vec<_> = self
            .data_dirs()
            .into_iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|(key, d)| (key, d, resolve_dir(d)))
            .collect();
        for (i, (key_a, a, abs_a)) in dirs.iter().enumerate() {
            for (key_b, b, abs_b) in &dirs[i + 1..] {
                if abs_a == abs_b {
                    bad(
                        key_b,
                        format!("{b:?} is the same directory as {key_a} ({a:?}); data directories must not overlap"),
                    );
                } else if abs_b.starts_with(abs_a) {
                    bad(
                        key_b,
                        format!(
                            "{b:?} is inside {key_a} ({a:?}); data directories must not overlap"
                        ),
                    );
                } else if abs_a.starts_with(abs_b) {
                    bad(
                        key_a,
                        format!(
                            "{a:?} is inside {key_b} ({b:?}); data directories must not overlap"
                        ),
                    );
                }
            }
        }
    }

    /// Both files named and usable (read, parsed, the key matching the certificate): a bad
    /// file is reported at start (and by `check-config`) with its name.
    fn validate_tls(&self, tls: &TlsConfig, bad: &mut impl FnMut(&str, String)) {
        if tls.handshake_timeout_ms == 0 {
            bad("tls.handshake_timeout_ms", "must be greater than 0".into());
        }
        let mut named = true;
        for (key, v) in [
            ("tls.cert_file", &tls.cert_file),
            ("tls.key_file", &tls.key_file),
        ] {
            if v.is_empty() {
                bad(key, "required with [tls] (--tls-cert, --tls-key)".into());
                named = false;
            }
        }
        if named {
            for e in crate::tls::check(tls) {
                // Each message starts with its key.
                let e = e.to_string();
                let (key, msg) = e.split_once(": ").unwrap_or(("tls", e.as_str()));
                bad(key, msg.to_string());
            }
        }
    }

    fn validate_spool(&self, bad: &mut impl FnMut(&str, String)) {
        let sp = &self.spool;
        if sp.dir.is_empty() {
            bad("spool.dir", "must not be empty".into());
        }
        if !sp.segment_bytes.is_multiple_of(4096)
            || sp.segment_bytes < self.server.max_body_bytes as u64 + 4096
        {
            bad(
                "spool.segment_bytes",
                format!(
                    "must be a multiple of 4096 and at least server.max_body_bytes + 4096 ({})",
                    self.server.max_body_bytes + 4096
                ),
            );
        }
        if sp.max_bytes < 2 * sp.segment_bytes {
            bad(
                "spool.max_bytes",
                "must be at least twice spool.segment_bytes".into(),
            );
        }
        if sp.checkpoint_ms == 0 || sp.checkpoint_ms > 3_600_000 {
            bad(
                "spool.checkpoint_ms",
                "must be between 1 and 3600000 (one hour)".into(),
            );
        }
    }

    fn validate_batch(&self, bad: &mut impl FnMut(&str, String)) {
        let b = &self.batch;
        if b.max_payloads == 0 {
            bad("batch.max_payloads", "must be at least 1".into());
        }
        // A batch larger than the queue budget could never fill: the shard would refuse
        // requests until max_age closed it.
        if self.queue.max_payloads > 0 && b.max_payloads > self.queue.max_payloads {
            bad(
                "batch.max_payloads",
                format!(
                    "must not exceed queue.max_payloads ({})",
                    self.queue.max_payloads
                ),
            );
        }
        if b.max_bytes == 0 || b.max_bytes > self.queue.max_bytes {
            bad(
                "batch.max_bytes",
                format!(
                    "must be between 1 and queue.max_bytes ({})",
                    self.queue.max_bytes
                ),
            );
        }
        self.validate_format(bad);
        if let Some(level) = b.level {
            let (lo, hi) = match b.compression {
                Compression::Gzip => (0, 9),
                Compression::Zstd => (1, 22),
                Compression::None | Compression::Snappy => (0, 0),
            };
            if matches!(b.compression, Compression::None | Compression::Snappy) {
                bad(
                    "batch.level",
                    "set only with batch.compression = \"gzip\" or \"zstd\"".into(),
                );
            } else if !(lo..=hi).contains(&level) {
                bad("batch.level", format!("must be between {lo} and {hi}"));
            }
        }
        if b.max_open_partitions == 0 {
            bad("batch.max_open_partitions", "must be at least 1".into());
        }
        if b.part_bytes < 5 << 20 {
            bad(
                "batch.part_bytes",
                "must be at least 5242880 (S3's smallest part)".into(),
            );
        }
        if b.multipart_threshold_bytes < b.part_bytes {
            bad(
                "batch.multipart_threshold_bytes",
                "must be at least batch.part_bytes".into(),
            );
        }
    }

    /// `batch.format` and what goes with it: the codecs each format has, the schema file.
    fn validate_format(&self, bad: &mut impl FnMut(&str, String)) {
        let b = &self.batch;
        match (b.format, b.compression) {
            (BatchFormat::Parquet, Compression::Gzip) => bad(
                "batch.compression",
                "with batch.format = \"parquet\": \"none\", \"zstd\" or \"snappy\"".into(),
            ),
            (BatchFormat::Json, Compression::Snappy) => bad(
                "batch.compression",
                "\"snappy\" only with batch.format = \"parquet\"".into(),
            ),
            _ => {}
        }
        match (&b.schema_file, b.format) {
            (Some(_), BatchFormat::Json) => bad(
                "batch.schema_file",
                "set only with batch.format = \"parquet\"".into(),
            ),
            (Some(path), BatchFormat::Parquet) => {
                if let Err(e) = crate::upload::schema_file::load(path) {
                    bad("batch.schema_file", e.to_string());
                }
            }
            (None, _) => {}
        }
    }

    /// The configuration as TOML, with secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        if c.sink.s3.secret_access_key.is_some() {
            c.sink.s3.secret_access_key = Some("<redacted>".into());
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// `dir` as an absolute path with `.` and `..` resolved, for comparing directories: symlinks
/// are resolved in the longest part that exists (`canonicalize`), the rest, not created yet,
/// is taken as written.
fn resolve_dir(dir: &str) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| PathBuf::from(dir));
    let parts: Vec<Component<'_>> = abs.components().collect();
    let (mut out, rest) = (1..=parts.len())
        .rev()
        .find_map(|n| {
            let head: PathBuf = parts[..n].iter().collect();
            head.canonicalize().ok().map(|real| (real, &parts[n..]))
        })
        .unwrap_or((PathBuf::new(), &parts[..]));
    for part in rest {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
