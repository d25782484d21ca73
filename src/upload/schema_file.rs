//! `batch.schema_file`: a fixed set of Parquet columns, written as a JSON object that maps
//! each column to its type, in column order:
//!
//! ```json
//! {"device_id": "string", "ts": "int64", "os": {"name": "string", "build": "int64"},
//!  "metrics": ["float64"], "ok": "bool"}
//! ```
//!
//! A type is `"string"`, `"int64"`, `"float64"` or `"bool"`, an object (a struct of such
//! columns) or an array of one type (a list of it). Every column is nullable.
//!
//! With `ack = "durable"` a copy of the file is kept in `{spool.dir}/schemas/{sha256}.json`
//! and its digest recorded with the spool's segments, so a replay after a crash encodes its
//! records with the schema they were taken with, even once the file has changed (a payload
//! could otherwise move between a Parquet object and its error output, and be stored twice).

use arrow_schema::{DataType, Field, Fields, Schema};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads and parses a schema file; the error says what is wrong (the caller names the key).
pub fn load(path: &str) -> Result<Arc<Schema>, SchemaFileError> {
    Ok(read(path)?.0)
}

/// Reads and parses a schema file: its schema and its text.
pub fn read(path: &str) -> Result<(Arc<Schema>, Vec<u8>), SchemaFileError> {
    let text = std::fs::read(path).map_err(|source| SchemaFileError::Read {
        path: path.into(),
        source,
    })?;
    let schema = parse(&text).map_err(|e| e.in_file(path))?;
    Ok((schema, text))
}

/// What is wrong with a schema file (or its kept copy).
#[derive(Debug, thiserror::Error)]
pub enum SchemaFileError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A kept copy whose text no longer matches its digest.
    #[error("{path} does not match its digest")]
    Digest {
        /// The kept copy.
        path: String,
    },
    /// The file's content is wrong (the path in front of what is wrong).
    #[error("{path}: {problem}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        problem: Box<SchemaFileError>,
    },
    /// Not the JSON object of columns the format asks for.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// An empty object.
    #[error("names no column")]
    NoColumn,
    /// A column named twice at the same level.
    #[error("column {0:?} is named twice")]
    Twice(String),
    /// A column whose type is wrong (its name in front of what is wrong).
    #[error("{column}: {problem}")]
    Column {
        /// The column.
        column: String,
        /// What is wrong.
        #[source]
        problem: Box<SchemaFileError>,
    },
    /// A type name the format does not know.
    #[error("unknown type {0:?} (string, int64, float64, bool, an object or a one-element array)")]
    UnknownType(String),
    /// A struct without columns.
    #[error("a struct needs a column")]
    EmptyStruct,
}

impl SchemaFileError {
    fn in_file(self, path: &str) -> Self {
        Self::Content {
            path: path.into(),
            problem: Box::new(self),
        }
    }
}

/// The SHA-256 of a schema file's text, in hex: its name among the kept copies.
pub fn digest(text: &[u8]) -> String {
    Sha256::digest(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the copy of the schema of digest `digest` is kept under `spool_dir`.
fn kept_path(spool_dir: &Path, digest: &str) -> PathBuf {
    spool_dir.join("schemas").join(format!("{digest}.json"))
}

/// Keeps a copy of a schema file's `text` under `spool_dir` (written and synced, unless
/// there already); returns its digest.
pub fn keep(spool_dir: &Path, text: &[u8], writer: usize) -> std::io::Result<String> {
    let digest = digest(text);
    let path = kept_path(spool_dir, &digest);
    if std::fs::read(&path).is_ok_and(|t| t == text) {
        return Ok(digest);
    }
    let dir = spool_dir.join("schemas");
    std::fs::create_dir_all(&dir)?;
    // A temporary name of this writer's own: shards keep the same copy at once.
    let tmp = dir.join(format!(".{digest}.{writer}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(digest)
}

/// The kept copy of the schema of digest `digest`, checked against it.
pub fn kept(spool_dir: &Path, digest: &str) -> Result<Arc<Schema>, SchemaFileError> {
    let path = kept_path(spool_dir, digest);
    let shown = path.display().to_string();
    let text = std::fs::read(&path).map_err(|source| SchemaFileError::Read {
        path: shown.clone(),
        source,
    })?;
    if self::digest(&text) != digest {
        return Err(SchemaFileError::Digest { path: shown });
    }
    parse(&text).map_err(|e| e.in_file(&shown))
}

/// Parses a schema file's text.
pub fn parse(text: &[u8]) -> Result<Arc<Schema>, SchemaFileError> {
    let cols: Columns = serde_json::from_slice(text)?;
    if cols.0.is_empty() {
        return Err(SchemaFileError::NoColumn);
    }
    Ok(Arc::new(Schema::new(fields(&cols)?)))
}

/// A column's type as written.
enum Type {
    Name(String),
    Struct(Columns),
    List(Box<Type>),
}

/// Columns in the order written.
struct Columns(Vec<(String, Type)>);

fn fields(cols: &Columns) -> Result<Fields, SchemaFileError> {
    let mut seen = std::collections::HashSet::new();
    cols.0
        .iter()
        .map(|(name, ty)| {
            if !seen.insert(name.as_str()) {
                return Err(SchemaFileError::Twice(name.clone()));
            }
            Ok(Field::new(
                name,
                data_type(ty).map_err(|e| SchemaFileError::Column {
                    column: name.clone(),
                    problem: Box::new(e),
                })?,
                true,
            ))
        })
        .collect()
}

fn data_type(ty: &Type) -> Result<DataType, SchemaFileError> {
    Ok(match ty {
        Type::Name(n) => match n.as_str() {
            "string" => DataType::Utf8,
            "int64" => DataType::Int64,
            "float64" => DataType::Float64,
            "bool" => DataType::Boolean,
            other => return Err(SchemaFileError::UnknownType(other.into())),
        },
        Type::Struct(cols) if cols.0.is_empty() => return Err(SchemaFileError::EmptyStruct),
        Type::Struct(cols) => DataType::Struct(fields(cols)?),
        Type::List(inner) => {
            DataType::List(Arc::new(Field::new_list_field(data_type(inner)?, true)))
        }
    })
}

impl<'de> de::Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Type::deserialize(d)? {
            Type::Struct(cols) => Ok(cols),
            _ => Err(de::Error::custom(
                "a schema file is a JSON object of columns",
            )),
        }
    }
}

impl<'de> de::Deserialize<'de> for Type {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TypeVisitor)
    }
}

struct TypeVisitor;

impl<'de> Visitor<'de> for TypeVisitor {
    type Value = Type;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a type name, an object of columns or a one-element array")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Type, E> {
        Ok(Type::Name(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Type, A::Error> {
        let mut cols = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Type>()? {
            cols.push((k, v));
        }
        Ok(Type::Struct(Columns(cols)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Type, A::Error> {
        let Some(inner) = seq.next_element::<Type>()? else {
            return Err(de::Error::custom("a list type names its element's type"));
        };
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("a list type names one element type"));
        }
        Ok(Type::List(Box::new(inner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_their_order_and_nest() {
        let s = parse(br#"{"z": "string", "a": {"n": "int64", "b": "bool"}, "m": ["float64"], "l": [{"k": "string"}]}"#).unwrap();
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["z", "a", "m", "l"]);
        assert_eq!(s.field(0).data_type(), &DataType::Utf8);
        let DataType::Struct(inner) = s.field(1).data_type() else {
            panic!("{:?}", s.field(1))
        };
        assert_eq!(inner[0].name(), "n");
        assert_eq!(inner[1].data_type(), &DataType::Boolean);
        assert!(
            matches!(s.field(2).data_type(), DataType::List(f) if f.data_type() == &DataType::Float64)
        );
        assert!(s.fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn a_kept_copy_is_found_by_its_digest_whatever_the_file_becomes() {
        let dir = tempfile::tempdir().unwrap();
        let text = br#"{"a": "int64"}"#;
        let d = keep(dir.path(), text, 0).unwrap();
        assert_eq!(d, digest(text));
        assert_eq!(
            keep(dir.path(), text, 1).unwrap(),
            d,
            "kept once, by digest"
        );
        let other = keep(dir.path(), br#"{"a": "string"}"#, 0).unwrap();
        assert_ne!(other, d);
        assert_eq!(
            kept(dir.path(), &d).unwrap().field(0).data_type(),
            &DataType::Int64
        );
        assert_eq!(
            kept(dir.path(), &other).unwrap().field(0).data_type(),
            &DataType::Utf8
        );
        std::fs::write(kept_path(dir.path(), &d), br#"{"a": "bool"}"#).unwrap();
        assert!(kept(dir.path(), &d)
            .unwrap_err()
            .to_string()
            .contains("does not match"));
        assert!(kept(dir.path(), "0000")
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }

    #[test]
    fn bad_files_say_why() {
        for (text, why) in [
            (&br#"{"a": "int"}"#[..], "unknown type \"int\""),
            (br#"{"a": "string", "a": "int64"}"#, "named twice"),
            (br#"{"a": []}"#, "names its element"),
            (br#"{"a": ["string", "int64"]}"#, "one element type"),
            (br#"{"a": {}}"#, "needs a column"),
            (br#"{}"#, "names no column"),
            (br#"["string"]"#, "JSON object of columns"),
            (br#"{"a": 1}"#, "a type name"),
            (b"{", "EOF"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
