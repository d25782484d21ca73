//! Parquet objects (`batch.format = "parquet"`), encoded when the object closes from the
//! payloads as sent: a function of those bytes, the schema and the codec only, so a durable
//! replay of the same request writes the same object.
//!
//! The schema is `batch.schema_file`'s, or inferred from the object's payloads by
//! arrow-json. Payloads that do not fit (not a JSON object; a field the schema does not
//! have; a value of another type; a field whose shape conflicts with the others' in an
//! inferred schema) are set apart, in arrival order, for the error output.

use crate::config::Compression;
use arrow_array::RecordBatch;
use arrow_json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as Codec, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use std::sync::Arc;

/// An object's payloads, encoded.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The Parquet file, when at least one payload fit.
    pub parquet: Option<Vec<u8>>,
    /// Rows in it.
    pub rows: usize,
    /// The payloads that did not fit, in arrival order.
    pub unfit: Vec<std::ops::Range<usize>>,
    /// Why the first of them did not.
    pub reason: Option<String>,
}

impl Encoded {
    fn set_apart(&mut self, payload: std::ops::Range<usize>, why: impl FnOnce() -> String) {
        if self.reason.is_none() {
            self.reason = Some(why());
        }
        self.unfit.push(payload);
    }
}

/// Encodes the payloads at `spans` of `buf` (each a JSON value) into one Parquet file of
/// one row group, with `schema` or one inferred from them.
pub fn encode(
    buf: &[u8],
    spans: &[std::ops::Range<usize>],
    schema: Option<&SchemaRef>,
    compression: Compression,
    level: Option<i32>,
) -> Encoded {
    let mut out = Encoded::default();
    let mut rows: Vec<std::ops::Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        let first = buf[span.clone()]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .copied();
        if first == Some(b'{') {
            rows.push(span.clone());
        } else {
            out.set_apart(span.clone(), || "not a JSON object".into());
        }
    }
    let (schema, inferred) = match schema {
        Some(s) => (s.clone(), false),
        None => (infer(buf, &mut rows, &mut out), true),
    };
    if rows.is_empty() {
        return out;
    }
    if schema.fields().is_empty() {
        // Parquet counts rows in columns: a file without one would hold no rows.
        return all_unfit(out, rows, &"no field to make a column of");
    }
    let batch = match decode(buf, &rows, &schema, inferred) {
        Ok(b) => b,
        Err(_) => {
            // Find the payloads that do not decode, one by one, and decode the others.
            let mut fit = Vec::with_capacity(rows.len());
            for r in rows {
                match decode(buf, std::slice::from_ref(&r), &schema, inferred) {
                    Ok(_) => fit.push(r),
                    Err(e) => out.set_apart(r, || e.to_string()),
                }
            }
            rows = fit;
            if rows.is_empty() {
                return out;
            }
            match decode(buf, &rows, &schema, inferred) {
                Ok(b) => b,
                Err(e) => return all_unfit(out, rows, &e),
            }
        }
    };
    match write(&batch, compression, level) {
        Ok(file) => {
            out.rows = batch.num_rows();
            out.parquet = Some(file);
        }
        Err(e) => return all_unfit(out, rows, &e),
    }
    out
}

/// Sets every row apart (a batch the writer refuses, such as one without any column).
fn all_unfit(
    mut out: Encoded,
    rows: Vec<std::ops::Range<usize>>,
    e: &dyn std::fmt::Display,
) -> Encoded {
    for r in rows {
        out.set_apart(r, || e.to_string());
    }
    out.unfit.sort_by_key(|r| r.start);
    out
}

/// The schema arrow-json infers from the payloads at `rows`. If their shapes conflict (a
/// field an object in one and a number in another), the payloads are taken in arrival
/// order and one that conflicts with those before it is set apart.
fn infer(buf: &[u8], rows: &mut Vec<std::ops::Range<usize>>, out: &mut Encoded) -> SchemaRef {
    let mut values = Vec::with_capacity(rows.len());
    let mut parsed = Vec::with_capacity(rows.len());
    for r in rows.drain(..) {
        match serde_json::from_slice::<Value>(&buf[r.clone()]) {
            Ok(v) => {
                values.push(v);
                parsed.push(r);
            }
            // JSON the body parser took and serde_json does not (a lone surrogate escape).
            Err(e) => out.set_apart(r, || e.to_string()),
        }
    }
    if let Ok(s) = infer_json_schema_from_iterator(values.iter().map(Ok)) {
        *rows = parsed;
        return Arc::new(s);
    }
    // A value standing for what was inferred so far: it infers to the same schema.
    let mut seen = Value::Object(Default::default());
    let mut schema = Schema::empty();
    for (v, r) in values.iter().zip(parsed) {
        match infer_json_schema_from_iterator([Ok(&seen), Ok(v)].into_iter()) {
            Ok(s) => {
                seen = witness_of_fields(s.fields());
                schema = s;
                rows.push(r);
            }
            Err(e) => out.set_apart(r, || e.to_string()),
        }
    }
    out.unfit.sort_by_key(|r| r.start);
    Arc::new(schema)
}

/// A JSON object whose inferred schema has these fields.
fn witness_of_fields(fields: &arrow_schema::Fields) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|f| (f.name().clone(), witness(f.data_type())))
            .collect(),
    )
}

fn witness(t: &DataType) -> Value {
    match t {
        DataType::Int64 => Value::from(0),
        DataType::Float64 => Value::from(0.5),
        DataType::Boolean => Value::Bool(true),
        DataType::Struct(fields) => witness_of_fields(fields),
        DataType::List(f) => match witness(f.data_type()) {
            Value::Null => Value::Array(Vec::new()),
            v => Value::Array(vec![v]),
        },
        DataType::Null => Value::Null,
        _ => Value::from(""),
    }
}

/// Decodes the payloads at `rows` into one record batch. With an inferred schema, scalars
/// of mixed types (inferred as strings) are taken as their JSON text.
fn decode(
    buf: &[u8],
    rows: &[std::ops::Range<usize>],
    schema: &SchemaRef,
    inferred: bool,
) -> Result<RecordBatch, ArrowError> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .with_strict_mode(true)
        .with_coerce_primitive(inferred)
        .build_decoder()?;
    for r in rows {
        let row = &buf[r.clone()];
        let mut at = 0;
        while at < row.len() {
            let n = decoder.decode(&row[at..])?;
            if n == 0 {
                return Err(ArrowError::JsonError("the decoder took no bytes".into()));
            }
            at += n;
        }
        // Each payload is one complete value.
        if decoder.has_partial_record() {
            return Err(ArrowError::JsonError("incomplete JSON value".into()));
        }
    }
    let batch = decoder
        .flush()?
        .ok_or_else(|| ArrowError::JsonError("no rows".into()))?;
    if batch.num_rows() != rows.len() {
        return Err(ArrowError::JsonError(format!(
            "{} values gave {} rows",
            rows.len(),
            batch.num_rows()
        )));
    }
    Ok(batch)
}

/// One Parquet file of one row group.
fn write(
    batch: &RecordBatch,
    compression: Compression,
    level: Option<i32>,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let codec = match compression {
        Compression::Zstd => Codec::ZSTD(ZstdLevel::try_new(level.unwrap_or(3))?),
        Compression::Snappy => Codec::SNAPPY,
        // Refused by validation with Parquet; kept uncompressed if it ever gets here.
        Compression::None | Compression::Gzip => Codec::UNCOMPRESSED,
    };
    let props = WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(batch.num_rows().max(1)))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    w.write(batch)?;
    w.into_inner()
}

/// Rows in a Parquet file (for counting spilled objects uploaded later); 0 if unreadable.
pub fn rows_in(data: &[u8]) -> usize {
    let bytes = bytes::Bytes::copy_from_slice(data);
    parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes)
        .map_or(0, |m| m.file_metadata().num_rows().max(0) as usize)
}

#[cfg(test)]
#[path = "parquet_tests.rs"]
mod tests;
