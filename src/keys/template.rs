//! `keys.template`: the layout of object keys, parsed once at start.
//!
//! A template is path segments separated by `/`. Every segment but the last names a
//! directory (the object's partition: objects are batched per partition); the last names
//! the object within it and must hold `{instance}`, `{shard}`, `{start}` and `{seq}`, which
//! keep keys unique across shards, restarts and machines. The object's extension (`.json`,
//! `.ndjson.gz`, ...) follows it.

use super::value::{lookup, push_safe, DEFAULT_PARTITION, MAX_VALUE};
use std::fmt::Write;

/// The default template: the layout keys had before templates existed.
pub const DEFAULT_TEMPLATE: &str =
    "{prefix}/{tenant}/{yyyy}/{mm}/{dd}/{hh}/{instance}-{shard}-{start}-{seq}";

/// The longest key S3 takes, in bytes.
pub const MAX_KEY: usize = 1024;

/// Every variable, for error messages.
const KNOWN: &str = "{prefix}, {tenant}, {yyyy}, {mm}, {dd}, {hh}, {mi}, {instance}, {shard}, {start}, {seq}, {payload.FIELD}, {header.NAME}";

/// A variable of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Prefix,
    Tenant,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Instance,
    Shard,
    Start,
    Seq,
    /// A payload's field, by path (`os.name` is `["os", "name"]`).
    Payload(Vec<String>),
    /// A request header, by its index in [`Template::headers`].
    Header(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

type Segment = Vec<Piece>;

/// A parsed `keys.template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    /// The partition's segments (all but the last).
    dirs: Vec<Segment>,
    /// The last segment: the object's name within its partition.
    name: Segment,
    /// Lower-cased names of the headers the template uses, in order of first use.
    headers: Vec<String>,
    /// Whether the partition depends on each payload (`{payload.FIELD}`), not only on its
    /// request.
    per_payload: bool,
}

/// What the partition of a payload is rendered from, besides the payload itself.
#[derive(Debug, Clone, Copy)]
pub struct RequestFields<'a> {
    /// `keys.prefix` (without a trailing `/`).
    pub prefix: &'a str,
    /// The request's tenant, if it has one.
    pub tenant: Option<&'a str>,
    /// When the request was accepted (Unix seconds).
    pub received_secs: u64,
    /// The values of [`Template::headers`], in that order (missing ones `None`).
    pub headers: &'a [Option<Box<[u8]>>],
    /// The instance name.
    pub instance: &'a str,
    /// The shard index.
    pub shard: usize,
}

/// What the last segment's `{start}` and `{seq}` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectName {
    /// A memory-queued object: the process start (µs) and its first payload's sequence number.
    Seq {
        /// Process start time in microseconds.
        start: u64,
        /// Sequence number of the object's first payload.
        seq: u64,
    },
    /// An object of a spooled request: `{start}` is `s{segment}` and `{seq}` is
    /// `{offset}-{index}`, its first payload's place in the spool, so a replay names it again
    /// the same.
    Spooled {
        /// The record's segment.
        segment: u64,
        /// The record's offset in it.
        offset: u64,
        /// Index of the object's first payload in the request.
        index: usize,
    },
}

/// Why a key template was refused, in words (the caller names the key, `keys.template`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is empty.
    #[error("must not be empty")]
    Empty,
    /// A key may not start or end with a `/`.
    #[error("must not start or end with '/'")]
    SlashAtEnd,
    /// A `{` with no `}` before the next `{` or the end.
    #[error("unbalanced braces: the '{{' at byte {at} is not closed by a '}}'")]
    Unclosed {
        /// Byte offset of the `{`.
        at: usize,
    },
    /// A `}` that closes nothing.
    #[error("unbalanced braces: the '}}' at byte {at} closes no '{{'")]
    Unopened {
        /// Byte offset of the `}`.
        at: usize,
    },
    /// Text outside variables that is not allowed in a key as it stands.
    #[error("{c:?} at byte {at}: text in a template may only be ASCII letters, digits and ._-=+,@~ (values are escaped; text is not)")]
    Character {
        /// The character.
        c: char,
        /// Its byte offset.
        at: usize,
    },
    /// `{start}` or `{seq}` in a directory: every object would be a partition of its own.
    #[error("{{start}} and {{seq}} name an object: they belong in the last segment only, or every object would be a partition of its own")]
    NameInDirectory,
    /// `{payload.…}` with an empty field name.
    #[error("{{{name}}}: a payload field path is names separated by single dots, such as {{payload.os.name}}")]
    PayloadPath {
        /// The variable as written, without braces.
        name: String,
    },
    /// `{header.…}` with no header name or not an HTTP token.
    #[error("{{{name}}}: not a header name (letters, digits and !#$%&'*+-.^_`|~)")]
    HeaderName {
        /// The variable as written, without braces.
        name: String,
    },
    /// A header that carries credentials.
    #[error("{{{name}}}: the {header} header carries credentials, which must never be written into object keys")]
    SecretHeader {
        /// The variable as written, without braces.
        name: String,
        /// The header's name, lowercase.
        header: String,
    },
    /// A name between braces that is no variable.
    #[error("unknown variable {{{name}}}; known: {}", KNOWN)]
    UnknownVariable {
        /// The name as written.
        name: String,
    },
    /// `//`.
    #[error("has an empty path segment ('//')")]
    EmptySegment,
    /// A segment `.` or `..`.
    #[error("has a path segment {0:?}, which a path would resolve away")]
    DotSegment(String),
    /// The last segment lacks one of the variables that keep keys unique.
    #[error("the last path segment must contain {{instance}}, {{shard}}, {{start}} and {{seq}}, which keep keys unique across shards, restarts and machines; {missing} is missing")]
    NameMissing {
        /// The missing variable, with braces.
        missing: &'static str,
    },
    /// The last segment holds a variable other than those four.
    #[error("the last path segment names the object within its partition: it may hold only {{instance}}, {{shard}}, {{start}}, {{seq}} and text; put other variables in the directories before it")]
    NameVariable,
}

impl Template {
    /// Parses and checks a template; the error says what is wrong, in words (the caller
    /// names the key).
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        if text.starts_with('/') || text.ends_with('/') {
            return Err(TemplateError::SlashAtEnd);
        }
        let mut headers = Vec::new();
        let mut segments = Vec::new();
        let mut seg: Segment = Vec::new();
        let mut text_run = String::new();
        let mut chars = text.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, '{')) | None => return Err(TemplateError::Unclosed { at }),
                            Some((_, c)) => name.push(c),
                        }
                    }
                    if !text_run.is_empty() {
                        seg.push(Piece::Text(std::mem::take(&mut text_run)));
                    }
                    seg.push(Piece::Var(variable(&name, &mut headers)?));
                }
                '}' => return Err(TemplateError::Unopened { at }),
                '/' => {
                    if !text_run.is_empty() {
                        seg.push(Piece::Text(std::mem::take(&mut text_run)));
                    }
                    segments.push(check_segment(std::mem::take(&mut seg))?);
                }
                c if c.is_ascii_alphanumeric() || "._-=+,@~".contains(c) => text_run.push(c),
                c => return Err(TemplateError::Character { c, at }),
            }
        }
        if !text_run.is_empty() {
            seg.push(Piece::Text(text_run));
        }
        let name = check_segment(seg)?;
        check_name(&name)?;
        for dir in &segments {
            if dir
                .iter()
                .any(|p| matches!(p, Piece::Var(Var::Start | Var::Seq)))
            {
                return Err(TemplateError::NameInDirectory);
            }
        }
        let per_payload = segments
            .iter()
            .flatten()
            .any(|p| matches!(p, Piece::Var(Var::Payload(_))));
        Ok(Template {
            text: text.to_string(),
            dirs: segments,
            name,
            headers,
            per_payload,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Lower-cased names of the request headers it uses (`{header.NAME}`), in the order
    /// [`RequestFields::headers`] holds their values.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Whether a payload's partition depends on the payload (`{payload.FIELD}`); if not, all
    /// payloads of a request share their request's partition.
    pub fn per_payload(&self) -> bool {
        self.per_payload
    }

    /// The longest key this template can make, in bytes, with a prefix of `prefix_len` bytes
    /// and an instance name of `instance_len` (each value at most [`MAX_VALUE`], the longest
    /// tenant, sequence numbers and extension): S3 refuses keys over [`MAX_KEY`] for good.
    pub fn max_key_len(&self, prefix_len: usize, instance_len: usize) -> usize {
        let var = |v: &Var, in_name: bool| match v {
            Var::Prefix => prefix_len,
            Var::Tenant => crate::auth::MAX_TENANT.max(DEFAULT_PARTITION.len()),
            Var::Year => 4,
            Var::Month | Var::Day | Var::Hour | Var::Minute => 2,
            Var::Instance if in_name => instance_len,
            Var::Payload(_) | Var::Header(_) | Var::Instance => MAX_VALUE,
            Var::Shard => 20,
            // `s{segment}`, and `{offset}-{index}`.
            Var::Start => 21,
            Var::Seq => 41,
        };
        let seg = |seg: &Segment, in_name: bool| -> usize {
            seg.iter()
                .map(|p| match p {
                    Piece::Text(t) => t.len(),
                    Piece::Var(v) => var(v, in_name),
                })
                .sum()
        };
        // Per directory: its `/` and a leading dot written `%2E`; then `.ndjson.zst`, or
        // for the error output of Parquet objects `errors/` and `.ndjson`.
        let dirs: usize = self.dirs.iter().map(|d| seg(d, false) + 3).sum();
        let ext = ".ndjson.zst"
            .len()
            .max(super::UNFIT_DIR.len() + 1 + ".ndjson".len());
        dirs + seg(&self.name, true) + ext
    }

    /// The partition of `payload` (the key up to the object's name, without a trailing
    /// `/`; empty if the template is only a name).
    pub fn partition(&self, req: &RequestFields<'_>, payload: &[u8]) -> String {
        let mut out = String::with_capacity(96);
        let time = super::civil_minute(req.received_secs);
        for seg in &self.dirs {
            let before = out.len();
            if before > 0 {
                out.push('/');
            }
            let start = out.len();
            // `{prefix}` or `{tenant}` alone in a segment, and empty: the level is left out
            // (the layout without a prefix or a tenant).
            let optional = matches!(seg.as_slice(), [Piece::Var(Var::Prefix | Var::Tenant)]);
            // The prefix is the operator's text, kept as written.
            let prefix_only = matches!(seg.as_slice(), [Piece::Var(Var::Prefix)]);
            for piece in seg {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Var(v) => render(&mut out, v, req, time, payload, optional),
                }
            }
            if out.len() == start {
                out.truncate(before);
            } else if !prefix_only && out[start..].starts_with('.') {
                // Never `.` or `..` as a segment, nor a hidden directory.
                out.replace_range(start..start + 1, "%2E");
            }
        }
        out
    }

    /// The key of an object in `partition` (from [`Template::partition`]), with extension
    /// `ext` (without its dot).
    pub fn key(
        &self,
        partition: &str,
        instance: &str,
        shard: usize,
        name: ObjectName,
        ext: &str,
    ) -> String {
        let mut k = String::with_capacity(partition.len() + 64);
        if !partition.is_empty() {
            k.push_str(partition);
            k.push('/');
        }
        for piece in &self.name {
            // Writing into a String cannot fail.
            let _ = match (piece, name) {
                (Piece::Text(t), _) => k.write_str(t),
                (Piece::Var(Var::Instance), _) => k.write_str(instance),
                (Piece::Var(Var::Shard), _) => write!(k, "{shard}"),
                (Piece::Var(Var::Start), ObjectName::Seq { start, .. }) => write!(k, "{start}"),
                (Piece::Var(Var::Start), ObjectName::Spooled { segment, .. }) => {
                    write!(k, "s{segment}")
                }
                (Piece::Var(Var::Seq), ObjectName::Seq { seq, .. }) => write!(k, "{seq}"),
                (Piece::Var(Var::Seq), ObjectName::Spooled { offset, index, .. }) => {
                    write!(k, "{offset}-{index}")
                }
                // `check_name` allows nothing else in the last segment.
                (Piece::Var(_), _) => Ok(()),
            };
        }
        k.push('.');
        k.push_str(ext);
        k
    }
}

impl Default for Template {
    fn default() -> Self {
        match Template::parse(DEFAULT_TEMPLATE) {
            Ok(t) => t,
            // A test holds the default template valid.
            Err(e) => unreachable!("the default key template is invalid: {e}"),
        }
    }
}

/// One variable's value; `time` is the request's (year, month, day, hour, minute).
fn render(
    out: &mut String,
    v: &Var,
    req: &RequestFields<'_>,
    time: (i64, u32, u32, u32, u32),
    payload: &[u8],
    optional: bool,
) {
    let (y, mo, d, h, mi) = time;
    // Writing into a String cannot fail.
    let _ = match v {
        Var::Prefix => out.write_str(req.prefix),
        Var::Tenant => match req.tenant {
            Some(t) => out.write_str(t),
            None if optional => Ok(()),
            None => out.write_str(DEFAULT_PARTITION),
        },
        Var::Year => write!(out, "{y:04}"),
        Var::Month => write!(out, "{mo:02}"),
        Var::Day => write!(out, "{d:02}"),
        Var::Hour => write!(out, "{h:02}"),
        Var::Minute => write!(out, "{mi:02}"),
        Var::Instance => {
            push_safe(out, Some(req.instance.as_bytes()));
            Ok(())
        }
        Var::Shard => write!(out, "{}", req.shard),
        Var::Payload(path) => {
            push_safe(out, lookup(payload, path).as_deref());
            Ok(())
        }
        Var::Header(i) => {
            push_safe(out, req.headers.get(*i).and_then(|v| v.as_deref()));
            Ok(())
        }
        // Only in the last segment (checked at parse).
        Var::Start | Var::Seq => Ok(()),
    };
}

/// The variable named `name` (between braces); header names are collected in `headers`.
fn variable(name: &str, headers: &mut Vec<String>) -> Result<Var, TemplateError> {
    Ok(match name {
        "prefix" => Var::Prefix,
        "tenant" => Var::Tenant,
        "yyyy" => Var::Year,
        "mm" => Var::Month,
        "dd" => Var::Day,
        "hh" => Var::Hour,
        "mi" => Var::Minute,
        "instance" => Var::Instance,
        "shard" => Var::Shard,
        "start" => Var::Start,
        "seq" => Var::Seq,
        _ => {
            if let Some(path) = name.strip_prefix("payload.") {
                let parts: Vec<String> = path.split('.').map(String::from).collect();
                if parts.iter().any(String::is_empty) {
                    return Err(TemplateError::PayloadPath { name: name.into() });
                }
                Var::Payload(parts)
            } else if let Some(h) = name.strip_prefix("header.") {
                if h.is_empty() || !h.bytes().all(is_token_byte) {
                    return Err(TemplateError::HeaderName { name: name.into() });
                }
                let h = h.to_ascii_lowercase();
                if SECRET_HEADERS.contains(&h.as_str()) {
                    return Err(TemplateError::SecretHeader {
                        name: name.into(),
                        header: h,
                    });
                }
                let i = match headers.iter().position(|x| *x == h) {
                    Some(i) => i,
                    None => {
                        headers.push(h);
                        headers.len() - 1
                    }
                };
                Var::Header(i)
            } else {
                return Err(TemplateError::UnknownVariable { name: name.into() });
            }
        }
    })
}

/// Headers that carry credentials (tokens never reach logs, keys or `check-config`).
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-amz-security-token",
];

/// HTTP `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A segment may not be empty (`//`), nor a bare `.` or `..`.
fn check_segment(seg: Segment) -> Result<Segment, TemplateError> {
    match seg.as_slice() {
        [] => Err(TemplateError::EmptySegment),
        [Piece::Text(t)] if t == "." || t == ".." => Err(TemplateError::DotSegment(t.clone())),
        _ => Ok(seg),
    }
}

/// The last segment: `{instance}`, `{shard}`, `{start}` and `{seq}` all present (unique keys),
/// nothing that depends on a payload or request.
fn check_name(name: &Segment) -> Result<(), TemplateError> {
    for (var, word) in [
        (Var::Instance, "{instance}"),
        (Var::Shard, "{shard}"),
        (Var::Start, "{start}"),
        (Var::Seq, "{seq}"),
    ] {
        if !name.contains(&Piece::Var(var)) {
            return Err(TemplateError::NameMissing { missing: word });
        }
    }
    for p in name {
        if let Piece::Var(v) = p {
            if !matches!(v, Var::Instance | Var::Shard | Var::Start | Var::Seq) {
                return Err(TemplateError::NameVariable);
            }
        }
    }
    Ok(())
}
