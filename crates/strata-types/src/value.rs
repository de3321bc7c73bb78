//! Single values of Strata columns, used for key bounds, column statistics and
//! predicate literals. They are stored in version records, so their serialized
//! form is part of the on-disk format.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array, new_null_array,
};
use arrow::compute;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Longest string or binary value kept as a statistic; longer bounds are dropped
/// (an absent bound never prunes, so dropping is always safe).
pub const MAX_STAT_BYTES: usize = 256;

/// A value of one of Strata's column types, without its type: integers of every width,
/// dates and timestamps are `Int`/`UInt`, floats are `Float`, decimals are their
/// unscaled `Decimal`. The column's Arrow type gives the meaning back ([`Value::to_array`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// Compared by IEEE total order (-0.0 < 0.0, NaN above everything), as Arrow's
    /// comparison kernels do; serialized losslessly (non-finite values as strings).
    Float(#[serde(with = "f64_lossless")] f64),
    Str(String),
    Bytes(#[serde(with = "b64")] Vec<u8>),
    Decimal(#[serde(with = "i128_str")] i128),
}

mod b64 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

mod f64_lossless {
    use super::*;
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = f64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<f64, E> {
                Ok(v)
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<f64, E> {
                match v {
                    "NaN" => Ok(f64::NAN),
                    "inf" => Ok(f64::INFINITY),
                    "-inf" => Ok(f64::NEG_INFINITY),
                    other => Err(E::custom(format!("not a float: {other:?}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

mod i128_str {
    use super::*;
    pub fn serialize<S: Serializer>(v: &i128, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i128, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl PartialEq for Value {
    /// Equality agrees with [`Ord`]: floats compare by total order, so -0.0 != 0.0
    /// and NaN == NaN, exactly as statistics pruning needs.
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    /// Total order: `Null` first, values of one variant by their natural order
    /// (floats by IEEE total order), different variants by variant index. Values of
    /// one column always share a variant, so the cross-variant order never matters.
    fn cmp(&self, other: &Self) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (UInt(a), UInt(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Str(a), Str(b)) => a.cmp(b),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Decimal(a), Decimal(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

macro_rules! prim_value {
    ($array:expr, $row:expr, $t:ty, $variant:ident, $cast:ty) => {
        Value::$variant($array.as_primitive::<$t>().value($row) as $cast)
    };
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::UInt(_) => 3,
            Value::Float(_) => 4,
            Value::Str(_) => 5,
            Value::Bytes(_) => 6,
            Value::Decimal(_) => 7,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value at `row` of `array`.
    pub fn from_array(array: &dyn Array, row: usize) -> Result<Value> {
        if array.is_null(row) {
            return Ok(Value::Null);
        }
        Ok(match array.data_type() {
            DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
            DataType::Int8 => prim_value!(array, row, Int8Type, Int, i64),
            DataType::Int16 => prim_value!(array, row, Int16Type, Int, i64),
            DataType::Int32 => prim_value!(array, row, Int32Type, Int, i64),
            DataType::Int64 => prim_value!(array, row, Int64Type, Int, i64),
            DataType::UInt8 => prim_value!(array, row, UInt8Type, UInt, u64),
            DataType::UInt16 => prim_value!(array, row, UInt16Type, UInt, u64),
            DataType::UInt32 => prim_value!(array, row, UInt32Type, UInt, u64),
            DataType::UInt64 => prim_value!(array, row, UInt64Type, UInt, u64),
            DataType::Float32 => prim_value!(array, row, Float32Type, Float, f64),
            DataType::Float64 => prim_value!(array, row, Float64Type, Float, f64),
            DataType::Date32 => prim_value!(array, row, Date32Type, Int, i64),
            DataType::Timestamp(TimeUnit::Second, _) => {
                prim_value!(array, row, TimestampSecondType, Int, i64)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                prim_value!(array, row, TimestampMillisecondType, Int, i64)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                prim_value!(array, row, TimestampMicrosecondType, Int, i64)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                prim_value!(array, row, TimestampNanosecondType, Int, i64)
            }
            DataType::Decimal128(_, _) => {
                Value::Decimal(array.as_primitive::<Decimal128Type>().value(row))
            }
            DataType::Utf8 => Value::Str(array.as_string::<i32>().value(row).to_string()),
            DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
            other => {
                return Err(Error::InvalidValue(format!(
                    "column type {other} is not supported"
                )));
            }
        })
    }

    /// A one-row array of type `dt` holding this value.
    pub fn to_array(&self, dt: &DataType) -> Result<ArrayRef> {
        let mismatch = || Error::InvalidValue(format!("value {self:?} does not fit type {dt}"));
        if self.is_null() {
            return Ok(new_null_array(dt, 1));
        }
        let int = || -> Result<i64> {
            match self {
                Value::Int(v) => Ok(*v),
                Value::UInt(v) => i64::try_from(*v).map_err(|_| mismatch()),
                _ => Err(mismatch()),
            }
        };
        let uint = || -> Result<u64> {
            match self {
                Value::UInt(v) => Ok(*v),
                Value::Int(v) => u64::try_from(*v).map_err(|_| mismatch()),
                _ => Err(mismatch()),
            }
        };
        let array: ArrayRef = match dt {
            DataType::Boolean => match self {
                Value::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
                _ => return Err(mismatch()),
            },
            DataType::Int8 => Arc::new(Int8Array::from(vec![
                i8::try_from(int()?).map_err(|_| mismatch())?,
            ])),
            DataType::Int16 => Arc::new(Int16Array::from(vec![
                i16::try_from(int()?).map_err(|_| mismatch())?,
            ])),
            DataType::Int32 => Arc::new(Int32Array::from(vec![
                i32::try_from(int()?).map_err(|_| mismatch())?,
            ])),
            DataType::Int64 => Arc::new(Int64Array::from(vec![int()?])),
            DataType::UInt8 => Arc::new(UInt8Array::from(vec![
                u8::try_from(uint()?).map_err(|_| mismatch())?,
            ])),
            DataType::UInt16 => Arc::new(UInt16Array::from(vec![
                u16::try_from(uint()?).map_err(|_| mismatch())?,
            ])),
            DataType::UInt32 => Arc::new(UInt32Array::from(vec![
                u32::try_from(uint()?).map_err(|_| mismatch())?,
            ])),
            DataType::UInt64 => Arc::new(UInt64Array::from(vec![uint()?])),
            DataType::Float32 | DataType::Float64 => {
                let f = match self {
                    Value::Float(f) => *f,
                    Value::Int(i) => *i as f64,
                    Value::UInt(u) => *u as f64,
                    _ => return Err(mismatch()),
                };
                if matches!(dt, DataType::Float32) {
                    Arc::new(Float32Array::from(vec![f as f32]))
                } else {
                    Arc::new(Float64Array::from(vec![f]))
                }
            }
            DataType::Date32 => Arc::new(Date32Array::from(vec![
                i32::try_from(int()?).map_err(|_| mismatch())?,
            ])),
            DataType::Timestamp(unit, tz) => {
                let v = int()?;
                let tz = tz.clone();
                match unit {
                    TimeUnit::Second => {
                        Arc::new(TimestampSecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                    TimeUnit::Millisecond => {
                        Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                    TimeUnit::Microsecond => {
                        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                    TimeUnit::Nanosecond => {
                        Arc::new(TimestampNanosecondArray::from(vec![v]).with_timezone_opt(tz))
                    }
                }
            }
            DataType::Decimal128(p, s) => match self {
                Value::Decimal(d) => {
                    Arc::new(Decimal128Array::from(vec![*d]).with_precision_and_scale(*p, *s)?)
                }
                _ => return Err(mismatch()),
            },
            DataType::Utf8 => match self {
                Value::Str(s) => Arc::new(StringArray::from(vec![s.as_str()])),
                _ => return Err(mismatch()),
            },
            DataType::Binary => match self {
                Value::Bytes(b) => Arc::new(BinaryArray::from(vec![b.as_slice()])),
                _ => return Err(mismatch()),
            },
            _ => return Err(mismatch()),
        };
        Ok(array)
    }

    /// Whether this bound is small enough to be kept as a statistic.
    fn fits_stat(&self) -> bool {
        match self {
            Value::Str(s) => s.len() <= MAX_STAT_BYTES,
            Value::Bytes(b) => b.len() <= MAX_STAT_BYTES,
            _ => true,
        }
    }
}

/// Min, max and null count of one column of one segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub name: String,
    /// Smallest non-null value; `None` when unknown (all null, or too long to keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Value>,
    pub null_count: u64,
    /// Sum of the non-null values of a `Float64` column (as ORC keeps it): answers
    /// `sum` and `avg` over whole segments without reading them. `None` for other
    /// types (an integer sum merged from statistics would not be checked for
    /// overflow), an all-null column, and segments written before sums were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<Value>,
}

impl ColumnStats {
    /// Computes the statistics of `array`. Floats are bounded by IEEE total order.
    pub fn compute(name: &str, array: &dyn Array) -> Result<ColumnStats> {
        let null_count = array.null_count() as u64;
        let (min, max) = if null_count as usize == array.len() {
            (None, None)
        } else {
            min_max(array)?
        };
        let keep = |v: Option<Value>| v.filter(|v| !v.is_null() && v.fits_stat());
        let sum = if null_count as usize == array.len() {
            None
        } else {
            match array.data_type() {
                DataType::Float64 => {
                    compute::sum(array.as_primitive::<Float64Type>()).map(Value::Float)
                }
                _ => None,
            }
        };
        Ok(ColumnStats {
            name: name.to_string(),
            min: keep(min),
            max: keep(max),
            null_count,
            sum,
        })
    }
}

fn min_max(array: &dyn Array) -> Result<(Option<Value>, Option<Value>)> {
    fn prim<T: arrow::datatypes::ArrowNumericType>(
        array: &dyn Array,
    ) -> Result<(Option<Value>, Option<Value>)>
    where
        T::Native: Into<Value>,
    {
        let a = array.as_primitive::<T>();
        Ok((
            compute::min(a).map(Into::into),
            compute::max(a).map(Into::into),
        ))
    }
    Ok(match array.data_type() {
        DataType::Boolean => {
            let a = array.as_boolean();
            (
                compute::min_boolean(a).map(Value::Bool),
                compute::max_boolean(a).map(Value::Bool),
            )
        }
        DataType::Int8 => prim::<Int8Type>(array)?,
        DataType::Int16 => prim::<Int16Type>(array)?,
        DataType::Int32 => prim::<Int32Type>(array)?,
        DataType::Int64 => prim::<Int64Type>(array)?,
        DataType::UInt8 => prim::<UInt8Type>(array)?,
        DataType::UInt16 => prim::<UInt16Type>(array)?,
        DataType::UInt32 => prim::<UInt32Type>(array)?,
        DataType::UInt64 => prim::<UInt64Type>(array)?,
        DataType::Float32 | DataType::Float64 => {
            // IEEE total order, as Arrow's comparison kernels use when evaluating
            // predicates: -0.0 < 0.0 and NaN above everything. Bounds computed any other
            // way could prune a segment holding matching rows.
            let a = compute::cast(array, &DataType::Float64)?;
            let a = a.as_primitive::<Float64Type>();
            let mut lo: Option<f64> = None;
            let mut hi: Option<f64> = None;
            for v in a.iter().flatten() {
                if lo.is_none_or(|l| v.total_cmp(&l).is_lt()) {
                    lo = Some(v);
                }
                if hi.is_none_or(|h| v.total_cmp(&h).is_gt()) {
                    hi = Some(v);
                }
            }
            (lo.map(Value::Float), hi.map(Value::Float))
        }
        DataType::Date32 => prim::<Date32Type>(array)?,
        DataType::Timestamp(TimeUnit::Second, _) => prim::<TimestampSecondType>(array)?,
        DataType::Timestamp(TimeUnit::Millisecond, _) => prim::<TimestampMillisecondType>(array)?,
        DataType::Timestamp(TimeUnit::Microsecond, _) => prim::<TimestampMicrosecondType>(array)?,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => prim::<TimestampNanosecondType>(array)?,
        DataType::Decimal128(_, _) => {
            let a = array.as_primitive::<Decimal128Type>();
            (
                compute::min(a).map(Value::Decimal),
                compute::max(a).map(Value::Decimal),
            )
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (
                compute::min_string(a).map(|s| Value::Str(s.to_string())),
                compute::max_string(a).map(|s| Value::Str(s.to_string())),
            )
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            (
                compute::min_binary(a).map(|s| Value::Bytes(s.to_vec())),
                compute::max_binary(a).map(|s| Value::Bytes(s.to_vec())),
            )
        }
        other => {
            return Err(Error::InvalidValue(format!(
                "column type {other} is not supported"
            )));
        }
    })
}

macro_rules! from_native {
    ($($t:ty => $variant:ident as $cast:ty),*) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v as $cast)
            }
        })*
    };
}
from_native!(i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
    u8 => UInt as u64, u16 => UInt as u64, u32 => UInt as u64, u64 => UInt as u64);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_round_trip() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![Some(3), None, Some(-7)]));
        let s = ColumnStats::compute("x", &a).unwrap();
        assert_eq!(
            (s.min, s.max, s.null_count),
            (Some(Value::Int(-7)), Some(Value::Int(3)), 1)
        );

        let f: ArrayRef = Arc::new(Float64Array::from(vec![1.5, f64::NAN, -2.0]));
        let s = ColumnStats::compute("f", &f).unwrap();
        assert_eq!(
            (s.min, s.max),
            (Some(Value::Float(-2.0)), Some(Value::Float(f64::NAN)))
        );
        let z: ArrayRef = Arc::new(Float64Array::from(vec![0.0, -0.0]));
        let s = ColumnStats::compute("z", &z).unwrap();
        assert_eq!(
            (s.min, s.max),
            (Some(Value::Float(-0.0)), Some(Value::Float(0.0)))
        );
        assert_ne!(Value::Float(-0.0), Value::Float(0.0));
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -0.0, 1e300] {
            let json = serde_json::to_string(&Value::Float(v)).unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&json).unwrap(),
                Value::Float(v),
                "{json}"
            );
        }

        let long: ArrayRef = Arc::new(StringArray::from(vec!["a".repeat(300)]));
        assert_eq!(ColumnStats::compute("s", &long).unwrap().max, None);

        for (v, dt) in [
            (Value::Int(5), DataType::Int8),
            (
                Value::Int(1_700_000_000_000),
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ),
            (Value::Decimal(-12345), DataType::Decimal128(10, 2)),
            (Value::Str("x".into()), DataType::Utf8),
            (Value::Bytes(vec![0, 255]), DataType::Binary),
            (Value::UInt(u64::MAX), DataType::UInt64),
        ] {
            let arr = v.to_array(&dt).unwrap();
            assert_eq!(arr.data_type(), &dt);
            assert_eq!(Value::from_array(&arr, 0).unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
        }
        assert!(Value::Int(300).to_array(&DataType::Int8).is_err());
        assert!(Value::Str("x".into()).to_array(&DataType::Int64).is_err());
    }
}
