//! Row predicates for `DELETE … WHERE`: evaluated with Arrow kernels on the rows of a
//! segment, and checked against segment statistics first so segments that cannot
//! match are never read.

use std::fmt;

use arrow::array::{Array, BooleanArray, RecordBatch, Scalar};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};
use strata_types::{ColumnStats, Value};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// A boolean expression over columns, with SQL semantics: a comparison with a null is
/// unknown, and unknown rows do not match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Predicate {
    Compare {
        column: String,
        op: CmpOp,
        value: Value,
    },
    In {
        column: String,
        values: Vec<Value>,
    },
    IsNull(String),
    IsNotNull(String),
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
}

impl Predicate {
    pub fn cmp(column: &str, op: CmpOp, value: impl Into<Value>) -> Self {
        Predicate::Compare {
            column: column.to_string(),
            op,
            value: value.into(),
        }
    }

    pub fn eq(column: &str, value: impl Into<Value>) -> Self {
        Self::cmp(column, CmpOp::Eq, value)
    }

    /// Columns the predicate reads.
    pub fn columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_columns(&self, out: &mut Vec<String>) {
        match self {
            Predicate::Compare { column, .. }
            | Predicate::In { column, .. }
            | Predicate::IsNull(column)
            | Predicate::IsNotNull(column) => out.push(column.clone()),
            Predicate::And(ps) | Predicate::Or(ps) => {
                ps.iter().for_each(|p| p.collect_columns(out))
            }
            Predicate::Not(p) => p.collect_columns(out),
        }
    }

    /// Checks column names and converts literals to their column's type, so that
    /// statistics comparisons are exact. Fails with a message naming the problem.
    pub fn bind(&self, schema: &Schema) -> Result<Predicate> {
        let field = |c: &str| {
            schema.field_with_name(c).map_err(|_| {
                Error::InvalidArgument(format!("predicate column {c:?} does not exist"))
            })
        };
        let coerce = |c: &str, v: &Value| -> Result<Value> {
            let dt = field(c)?.data_type();
            let arr = v
                .to_array(dt)
                .map_err(|e| Error::InvalidArgument(format!("predicate on {c:?}: {e}")))?;
            Ok(Value::from_array(&arr, 0)?)
        };
        Ok(match self {
            Predicate::Compare { column, op, value } => Predicate::Compare {
                column: column.clone(),
                op: *op,
                value: coerce(column, value)?,
            },
            Predicate::In { column, values } => {
                field(column)?;
                Predicate::In {
                    column: column.clone(),
                    values: values
                        .iter()
                        .map(|v| coerce(column, v))
                        .collect::<Result<_>>()?,
                }
            }
            Predicate::IsNull(c) => {
                field(c)?;
                Predicate::IsNull(c.clone())
            }
            Predicate::IsNotNull(c) => {
                field(c)?;
                Predicate::IsNotNull(c.clone())
            }
            Predicate::And(ps) => {
                Predicate::And(ps.iter().map(|p| p.bind(schema)).collect::<Result<_>>()?)
            }
            Predicate::Or(ps) => {
                Predicate::Or(ps.iter().map(|p| p.bind(schema)).collect::<Result<_>>()?)
            }
            Predicate::Not(p) => Predicate::Not(Box::new(p.bind(schema)?)),
        })
    }

    /// Evaluates on `batch` (which holds at least the predicate's columns). Rows where the
    /// result is null (unknown) are returned as null; callers treat them as non-matching.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let column = |c: &str| {
            batch
                .column_by_name(c)
                .ok_or_else(|| Error::InvalidArgument(format!("predicate column {c:?} missing")))
        };
        Ok(match self {
            Predicate::Compare {
                column: c,
                op,
                value,
            } => {
                let col = column(c)?;
                if value.is_null() {
                    return Ok(BooleanArray::new_null(batch.num_rows()));
                }
                let lit = Scalar::new(value.to_array(col.data_type())?);
                match op {
                    CmpOp::Eq => cmp::eq(col, &lit)?,
                    CmpOp::NotEq => cmp::neq(col, &lit)?,
                    CmpOp::Lt => cmp::lt(col, &lit)?,
                    CmpOp::LtEq => cmp::lt_eq(col, &lit)?,
                    CmpOp::Gt => cmp::gt(col, &lit)?,
                    CmpOp::GtEq => cmp::gt_eq(col, &lit)?,
                }
            }
            Predicate::In { column: c, values } => {
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for v in values {
                    let one = Predicate::Compare {
                        column: c.clone(),
                        op: CmpOp::Eq,
                        value: v.clone(),
                    }
                    .evaluate(batch)?;
                    acc = boolean::or_kleene(&acc, &one)?;
                }
                acc
            }
            Predicate::IsNull(c) => arrow::compute::is_null(column(c)?)?,
            Predicate::IsNotNull(c) => arrow::compute::is_not_null(column(c)?)?,
            Predicate::And(ps) => {
                let mut acc = BooleanArray::from(vec![true; batch.num_rows()]);
                for p in ps {
                    acc = boolean::and_kleene(&acc, &p.evaluate(batch)?)?;
                }
                acc
            }
            Predicate::Or(ps) => {
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for p in ps {
                    acc = boolean::or_kleene(&acc, &p.evaluate(batch)?)?;
                }
                acc
            }
            Predicate::Not(p) => boolean::not(&p.evaluate(batch)?)?,
        })
    }

    /// False only when no row described by `stats` (a segment of `rows` rows) can match.
    /// Must be called on a bound predicate.
    pub fn may_match(&self, stats: &dyn Fn(&str) -> ColumnStats, rows: u64) -> bool {
        match self {
            Predicate::Compare { column, op, value } => {
                if value.is_null() {
                    return false;
                }
                let s = stats(column);
                if s.null_count >= rows {
                    return false;
                }
                let (Some(min), Some(max)) = (&s.min, &s.max) else {
                    return true;
                };
                match op {
                    CmpOp::Eq => min <= value && value <= max,
                    CmpOp::NotEq => !(min == value && max == value),
                    CmpOp::Lt => min < value,
                    CmpOp::LtEq => min <= value,
                    CmpOp::Gt => max > value,
                    CmpOp::GtEq => max >= value,
                }
            }
            Predicate::In { column, values } => values.iter().any(|v| {
                Predicate::Compare {
                    column: column.clone(),
                    op: CmpOp::Eq,
                    value: v.clone(),
                }
                .may_match(stats, rows)
            }),
            Predicate::IsNull(c) => stats(c).null_count > 0,
            Predicate::IsNotNull(c) => stats(c).null_count < rows,
            Predicate::And(ps) => ps.iter().all(|p| p.may_match(stats, rows)),
            Predicate::Or(ps) => ps.iter().any(|p| p.may_match(stats, rows)),
            // Statistics bound values, not their complement: stay conservative.
            Predicate::Not(_) => true,
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lit = |v: &Value| match v {
            Value::Null => "NULL".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Value::Bytes(b) => format!(
                "X'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
            Value::Decimal(d) => format!("{d}(unscaled)"),
        };
        match self {
            Predicate::Compare { column, op, value } => {
                let op = match op {
                    CmpOp::Eq => "=",
                    CmpOp::NotEq => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::LtEq => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::GtEq => ">=",
                };
                write!(f, "{column} {op} {}", lit(value))
            }
            Predicate::In { column, values } => {
                let vs: Vec<String> = values.iter().map(lit).collect();
                write!(f, "{column} IN ({})", vs.join(", "))
            }
            Predicate::IsNull(c) => write!(f, "{c} IS NULL"),
            Predicate::IsNotNull(c) => write!(f, "{c} IS NOT NULL"),
            Predicate::And(ps) | Predicate::Or(ps) => {
                let sep = if matches!(self, Predicate::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts: Vec<String> = ps.iter().map(|p| format!("({p})")).collect();
                if parts.is_empty() {
                    f.write_str(if matches!(self, Predicate::And(_)) {
                        "TRUE"
                    } else {
                        "FALSE"
                    })
                } else {
                    f.write_str(&parts.join(sep))
                }
            }
            Predicate::Not(p) => write!(f, "NOT ({p})"),
        }
    }
}
