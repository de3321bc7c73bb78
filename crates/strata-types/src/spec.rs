//! Dataset specifications: schema, keys and shard count, and their stable
//! on-disk/text form.
//!
//! Schemas are stored as [`ColumnDef`] lists whose types are short strings
//! (`"int64"`, `"timestamp(us, UTC)"`, `"decimal128(10, 2)"`). The format is ours,
//! so it does not change when arrow-rs changes its own serde output.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name::{DatasetName, validate_name};

/// Largest shard count a dataset may have.
pub const MAX_SHARDS: u32 = 4096;

/// One column in the stable text form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

/// The text form of a dataset spec, as found in `schemas/*.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpecDef {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub partition_key: Vec<String>,
    #[serde(default)]
    pub row_key: Vec<String>,
    #[serde(default = "default_shards")]
    pub shards: u32,
}

fn default_shards() -> u32 {
    4
}

/// A validated dataset: name, Arrow schema, partition key, optional row key and shard count.
///
/// Invariants (checked by [`DatasetSpec::new`]):
/// - every column type is one Strata stores (see [`parse_type`]);
/// - key columns exist, are distinct, are not nullable and are not floating point;
/// - the partition key is not empty; `1 <= shards <= MAX_SHARDS`.
///
/// Partition key + row key form the primary key. Without a row key the dataset is
/// append-only: rows are never deduplicated or replaced.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSpec {
    pub name: DatasetName,
    pub schema: SchemaRef,
    pub partition_key: Vec<String>,
    pub row_key: Vec<String>,
    pub shards: u32,
}

impl DatasetSpec {
    pub fn new(
        name: DatasetName,
        schema: SchemaRef,
        partition_key: Vec<String>,
        row_key: Vec<String>,
        shards: u32,
    ) -> Result<Self> {
        validate_schema(&schema)?;
        if partition_key.is_empty() {
            return Err(Error::InvalidSchema(
                "the partition key needs at least one column".into(),
            ));
        }
        if shards == 0 || shards > MAX_SHARDS {
            return Err(Error::InvalidSchema(format!(
                "shards must be between 1 and {MAX_SHARDS}, got {shards}"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for col in partition_key.iter().chain(&row_key) {
            if !seen.insert(col.as_str()) {
                return Err(Error::InvalidSchema(format!(
                    "key column {col:?} is listed twice"
                )));
            }
            let field = schema.field_with_name(col).map_err(|_| {
                Error::InvalidSchema(format!("key column {col:?} is not in the schema"))
            })?;
            if field.is_nullable() {
                return Err(Error::InvalidSchema(format!(
                    "key column {col:?} must be declared non-nullable"
                )));
            }
            if field.data_type().is_floating() {
                return Err(Error::InvalidSchema(format!(
                    "key column {col:?} is floating point; keys must compare exactly"
                )));
            }
        }
        Ok(Self {
            name,
            schema,
            partition_key,
            row_key,
            shards,
        })
    }

    /// Parses and validates the JSON text form.
    pub fn from_json(text: &str) -> Result<Self> {
        let def: DatasetSpecDef = serde_json::from_str(text)?;
        Self::from_def(&def)
    }

    pub fn from_def(def: &DatasetSpecDef) -> Result<Self> {
        let schema = schema_from_defs(&def.columns)?;
        Self::new(
            DatasetName::new(def.name.clone())?,
            schema,
            def.partition_key.clone(),
            def.row_key.clone(),
            def.shards,
        )
    }

    pub fn to_def(&self) -> DatasetSpecDef {
        DatasetSpecDef {
            name: self.name.to_string(),
            columns: schema_to_defs(&self.schema),
            partition_key: self.partition_key.clone(),
            row_key: self.row_key.clone(),
            shards: self.shards,
        }
    }

    /// Partition key columns followed by row key columns.
    pub fn primary_key(&self) -> impl Iterator<Item = &str> {
        self.partition_key
            .iter()
            .chain(&self.row_key)
            .map(String::as_str)
    }

    /// True when rows have a unique primary key, so writes are upserts.
    pub fn has_row_key(&self) -> bool {
        !self.row_key.is_empty()
    }
}

/// Checks that every column has a supported type and a valid, unique name.
pub fn validate_schema(schema: &Schema) -> Result<()> {
    if schema.fields().is_empty() {
        return Err(Error::InvalidSchema(
            "a schema needs at least one column".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        validate_name("column", field.name())?;
        if !seen.insert(field.name().to_ascii_lowercase()) {
            return Err(Error::InvalidSchema(format!(
                "column {:?} appears twice (names are case-insensitive)",
                field.name()
            )));
        }
        format_type(field.data_type())?;
    }
    Ok(())
}

pub fn schema_from_defs(columns: &[ColumnDef]) -> Result<SchemaRef> {
    let fields = columns
        .iter()
        .map(|c| Ok(Field::new(&c.name, parse_type(&c.data_type)?, c.nullable)))
        .collect::<Result<Vec<_>>>()?;
    let schema = Schema::new(fields);
    validate_schema(&schema)?;
    Ok(Arc::new(schema))
}

pub fn schema_to_defs(schema: &Schema) -> Vec<ColumnDef> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnDef {
            name: f.name().clone(),
            // Schemas are validated before they are stored, so formatting cannot fail.
            data_type: format_type(f.data_type()).unwrap_or_else(|e| e.to_string()),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Parses a type string: `boolean`, `int8`..`int64`, `uint8`..`uint64`, `float32`,
/// `float64`, `utf8`, `binary`, `date32`, `timestamp(ms|us|ns[, TZ])`,
/// `decimal128(P, S)`. Case-insensitive; `string`, `bool`, `double` and friends are aliases,
/// and the SQL names `CREATE TABLE` takes mean the same here (`timestamp` is
/// `timestamp(us)`, `timestamptz` `timestamp(us, UTC)`, `varchar`, `bigint`, `bytea`, …;
/// `int8` stays Arrow's 8-bit integer).
pub fn parse_type(text: &str) -> Result<DataType> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || Error::InvalidSchema(format!("unsupported column type {text:?}"));
    let simple = match t.as_str() {
        "boolean" | "bool" => Some(DataType::Boolean),
        "int8" | "tinyint" => Some(DataType::Int8),
        "int16" | "smallint" => Some(DataType::Int16),
        "int32" | "int" | "integer" => Some(DataType::Int32),
        "int64" | "bigint" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "float32" | "float" | "real" => Some(DataType::Float32),
        "float64" | "double" | "double precision" | "float8" => Some(DataType::Float64),
        "float4" => Some(DataType::Float32),
        "utf8" | "string" | "text" | "varchar" | "char" | "character varying" => {
            Some(DataType::Utf8)
        }
        "binary" | "bytes" | "blob" | "bytea" | "varbinary" => Some(DataType::Binary),
        "date32" | "date" => Some(DataType::Date32),
        // As SQL's CREATE TABLE reads them: microseconds, UTC when zoned.
        "timestamp" | "datetime" | "timestamp without time zone" => {
            Some(DataType::Timestamp(TimeUnit::Microsecond, None))
        }
        "timestamptz" | "timestamp with time zone" => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        _ => None,
    };
    if let Some(dt) = simple {
        return Ok(dt);
    }
    let args = |prefix: &str| -> Option<Vec<String>> {
        let inner = t
            .strip_prefix(prefix)?
            .trim()
            .strip_prefix('(')?
            .strip_suffix(')')?;
        Some(inner.split(',').map(|s| s.trim().to_string()).collect())
    };
    if let Some(args) = args("timestamp") {
        // Time zone names are case-sensitive ("Europe/Paris"), so recover them from the input.
        let unit = match args.first().map(String::as_str) {
            Some("s") => TimeUnit::Second,
            Some("ms") => TimeUnit::Millisecond,
            Some("us") => TimeUnit::Microsecond,
            Some("ns") => TimeUnit::Nanosecond,
            _ => return Err(bad()),
        };
        let tz = match args.len() {
            1 => None,
            2 => {
                let raw = text.trim();
                let open = raw.find(',').ok_or_else(bad)?;
                let tz = raw[open + 1..].trim().trim_end_matches(')').trim();
                if tz.is_empty() {
                    return Err(bad());
                }
                Some(tz.into())
            }
            _ => return Err(bad()),
        };
        return Ok(DataType::Timestamp(unit, tz));
    }
    if let Some(args) = args("decimal128").or_else(|| args("decimal")) {
        if args.len() != 2 {
            return Err(bad());
        }
        let p: u8 = args[0].parse().map_err(|_| bad())?;
        let s: i8 = args[1].parse().map_err(|_| bad())?;
        if p == 0 || p > 38 || s < 0 || s as u8 > p {
            return Err(Error::InvalidSchema(format!(
                "decimal128 precision must be 1..=38 and scale 0..=precision, got ({p}, {s})"
            )));
        }
        return Ok(DataType::Decimal128(p, s));
    }
    Err(bad())
}

/// The inverse of [`parse_type`]; fails for types Strata does not store.
pub fn format_type(dt: &DataType) -> Result<String> {
    Ok(match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 => "utf8".into(),
        DataType::Binary => "binary".into(),
        DataType::Date32 => "date32".into(),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("timestamp({unit}, {tz})"),
                None => format!("timestamp({unit})"),
            }
        }
        DataType::Decimal128(p, s) => format!("decimal128({p}, {s})"),
        other => {
            return Err(Error::InvalidSchema(format!(
                "column type {other} is not supported"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_strings_round_trip() {
        for t in [
            "boolean",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "float32",
            "float64",
            "utf8",
            "binary",
            "date32",
            "timestamp(ms)",
            "timestamp(us, UTC)",
            "timestamp(ns, Europe/Paris)",
            "decimal128(10, 2)",
        ] {
            let dt = parse_type(t).unwrap();
            assert_eq!(format_type(&dt).unwrap(), t);
        }
        assert!(parse_type("list<int>").is_err());
        assert!(parse_type("decimal128(40, 2)").is_err());
        assert!(parse_type("timestamp(weeks)").is_err());
    }

    fn spec(json: &str) -> Result<DatasetSpec> {
        DatasetSpec::from_json(json)
    }

    #[test]
    fn key_rules() {
        let ok = r#"{"name":"t","columns":[{"name":"k","type":"utf8","nullable":false},
            {"name":"ts","type":"timestamp(ms)","nullable":false},{"name":"v","type":"float64"}],
            "partition_key":["k"],"row_key":["ts"],"shards":3}"#;
        let s = spec(ok).unwrap();
        assert_eq!(s.primary_key().collect::<Vec<_>>(), ["k", "ts"]);
        assert_eq!(DatasetSpec::from_def(&s.to_def()).unwrap(), s);

        let nullable_key = ok.replace(r#""utf8","nullable":false"#, r#""utf8""#);
        assert!(
            spec(&nullable_key)
                .unwrap_err()
                .to_string()
                .contains("non-nullable")
        );
        let float_key = ok.replace(r#""row_key":["ts"]"#, r#""row_key":["v"]"#);
        assert!(spec(&float_key).is_err());
        let missing = ok.replace(r#""row_key":["ts"]"#, r#""row_key":["nope"]"#);
        assert!(
            spec(&missing)
                .unwrap_err()
                .to_string()
                .contains("not in the schema")
        );
        let zero = ok.replace(r#""shards":3"#, r#""shards":0"#);
        assert!(spec(&zero).is_err());
        let dup = ok.replace(r#"{"name":"v""#, r#"{"name":"K""#);
        assert!(spec(&dup).unwrap_err().to_string().contains("twice"));
    }
}
