//! Model-based test of versioned tables.
//!
//! Random sequences of append or upsert (per case: with or without row key), delete by
//! key and by predicate, rollback, tag, vacuum, compaction, add-column, bad writes and
//! handle switches run against a real table on the memory backend and, step by step,
//! against a plain in-memory model. After every step:
//!
//! - the head, the list of versions (and their operations), the tags and time travel by
//!   timestamp agree with the model;
//! - every version the model retains reads exactly the model's rows, schema and
//!   producer marks, and every version it vacuumed fails with `VersionVacuumed`;
//! - every committing operation produced exactly one version, numbered head + 1, and
//!   every failing one committed nothing.
//!
//! Each case ends by checking everything again through a second, long idle handle and a
//! fresh one (no cache), which read through checkpoints.
//!
//! Knobs: `PROPTEST_CASES` (default 32), `STRATA_MODEL_OPS` (longest sequence, default
//! 25). Values include NaN, -0.0 and infinities, which once broke statistics pruning and
//! metadata encoding.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use strata_storage::{MemoryBlobStore, MemoryMetaStore};
use strata_table::{
    Catalog, CmpOp, Error, LiveSegment, Manifest, Operation, Predicate, Table, TableOptions,
    VacuumPolicy, VersionSpec, WriteOutcome,
};
use strata_types::{DatasetName, DatasetSpec, Value};

const NAME: &str = "model";
/// Partition key values rows are written with.
const KEYS: [&str; 4] = ["a", "b", "c", "ü"];
/// A partition key value no row has: deletes and predicates may name it.
const ABSENT_KEY: &str = "zz";
/// Values of `v` and of float columns.
const FLOATS: [f64; 6] = [0.0, 1.0, -1.5, 2.5, 1e10, -3.0];
/// Floats that once broke statistics pruning or metadata encoding (see the regression
/// tests at the end of this file).
const EXOTIC_FLOATS: [f64; 4] = [f64::NAN, -0.0, f64::INFINITY, f64::NEG_INFINITY];
const STRS: [&str; 4] = ["x", "y", "", "zz"];
const TAGS: [&str; 3] = ["t0", "t1", "t2"];
const PRODUCERS: [&str; 2] = ["p0", "p1"];
/// Commits that expire (slow machine) are retried this often before the case fails.
const MAX_EXPIRED_RETRIES: u32 = 5;

// ---------------------------------------------------------------------------------------
// Values and rows
// ---------------------------------------------------------------------------------------

/// The float value chosen by `seed`.
fn float(seed: usize) -> f64 {
    static VALUES: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let values = VALUES.get_or_init(|| {
        let mut v = FLOATS.to_vec();
        v.extend(EXOTIC_FLOATS);
        v
    });
    values[seed % values.len()]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColType {
    Int64,
    Int32,
    Utf8,
    Float64,
    Bool,
}

impl ColType {
    const ALL: [ColType; 5] = [
        ColType::Int64,
        ColType::Int32,
        ColType::Utf8,
        ColType::Float64,
        ColType::Bool,
    ];

    fn data_type(self) -> DataType {
        match self {
            ColType::Int64 => DataType::Int64,
            ColType::Int32 => DataType::Int32,
            ColType::Utf8 => DataType::Utf8,
            ColType::Float64 => DataType::Float64,
            ColType::Bool => DataType::Boolean,
        }
    }

    fn of(dt: &DataType) -> ColType {
        match dt {
            DataType::Int64 => ColType::Int64,
            DataType::Int32 => ColType::Int32,
            DataType::Utf8 => ColType::Utf8,
            DataType::Float64 => ColType::Float64,
            DataType::Boolean => ColType::Bool,
            other => panic!("unexpected column type {other}"),
        }
    }

    /// A non-null value of this type chosen by `seed`.
    fn value(self, seed: u32) -> Cell {
        match self {
            ColType::Int64 | ColType::Int32 => Cell::Int(i64::from(seed % 6) - 1),
            ColType::Utf8 => Cell::Str(STRS[seed as usize % STRS.len()].to_string()),
            ColType::Float64 => Cell::float(float(seed as usize)),
            ColType::Bool => Cell::Bool(seed.is_multiple_of(2)),
        }
    }
}

/// One value of a row. Floats are kept as their bits: rows compare bit for bit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => f.write_str("null"),
            Cell::Bool(b) => write!(f, "{b}"),
            Cell::Int(i) => write!(f, "{i}"),
            Cell::Float(bits) => write!(f, "{:?}f", f64::from_bits(*bits)),
            Cell::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Cell {
    fn float(x: f64) -> Cell {
        Cell::Float(x.to_bits())
    }

    fn as_value(&self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(*b),
            Cell::Int(i) => Value::Int(*i),
            Cell::Float(bits) => Value::Float(f64::from_bits(*bits)),
            Cell::Str(s) => Value::Str(s.clone()),
        }
    }
}

/// A row in schema order: `k`, `t`, `v`, then the added columns.
type Row = Vec<Cell>;
/// Column names and types, in order.
type ModelSchema = Vec<(String, ColType)>;

fn base_schema() -> ModelSchema {
    vec![
        ("k".to_string(), ColType::Utf8),
        ("t".to_string(), ColType::Int64),
        ("v".to_string(), ColType::Float64),
    ]
}

/// The Arrow schema of a model schema: the key columns are non-null, the others nullable.
fn arrow_schema(schema: &ModelSchema) -> Arc<Schema> {
    Arc::new(Schema::new(
        schema
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| Field::new(name, ty.data_type(), i >= 2))
            .collect::<Vec<_>>(),
    ))
}

fn array_of<'a>(ty: ColType, cells: impl Iterator<Item = &'a Cell>) -> ArrayRef {
    fn bad(ty: ColType, c: &Cell) -> ! {
        panic!("cell {c:?} in a {ty:?} column")
    }
    match ty {
        ColType::Int64 => Arc::new(Int64Array::from_iter(cells.map(|c| match c {
            Cell::Null => None,
            Cell::Int(i) => Some(*i),
            c => bad(ty, c),
        }))),
        ColType::Int32 => Arc::new(Int32Array::from_iter(cells.map(|c| match c {
            Cell::Null => None,
            Cell::Int(i) => Some(i32::try_from(*i).expect("small ints")),
            c => bad(ty, c),
        }))),
        ColType::Utf8 => Arc::new(StringArray::from_iter(cells.map(|c| match c {
            Cell::Null => None,
            Cell::Str(s) => Some(s.as_str()),
            c => bad(ty, c),
        }))),
        ColType::Float64 => Arc::new(Float64Array::from_iter(cells.map(|c| match c {
            Cell::Null => None,
            Cell::Float(bits) => Some(f64::from_bits(*bits)),
            c => bad(ty, c),
        }))),
        ColType::Bool => Arc::new(BooleanArray::from_iter(cells.map(|c| match c {
            Cell::Null => None,
            Cell::Bool(b) => Some(*b),
            c => bad(ty, c),
        }))),
    }
}

fn cell_at(col: &dyn Array, i: usize) -> Cell {
    if col.is_null(i) {
        return Cell::Null;
    }
    match ColType::of(col.data_type()) {
        ColType::Int64 => Cell::Int(col.as_primitive::<Int64Type>().value(i)),
        ColType::Int32 => Cell::Int(i64::from(col.as_primitive::<Int32Type>().value(i))),
        ColType::Utf8 => Cell::Str(col.as_string::<i32>().value(i).to_string()),
        ColType::Float64 => Cell::float(col.as_primitive::<Float64Type>().value(i)),
        ColType::Bool => Cell::Bool(col.as_boolean().value(i)),
    }
}

/// All rows of a batch, sorted.
fn rows_of(batch: &RecordBatch) -> Vec<Row> {
    let mut rows: Vec<Row> = (0..batch.num_rows())
        .map(|i| {
            batch
                .columns()
                .iter()
                .map(|c| cell_at(c.as_ref(), i))
                .collect()
        })
        .collect();
    rows.sort();
    rows
}

/// A batch of `rows` with `schema`, optionally with its columns in reverse order.
fn batch_of(schema: &ModelSchema, rows: &[Row], reversed: bool) -> RecordBatch {
    let mut order: Vec<usize> = (0..schema.len()).collect();
    if reversed {
        order.reverse();
    }
    let full = arrow_schema(schema);
    let fields: Vec<Field> = order.iter().map(|&i| full.field(i).clone()).collect();
    let columns: Vec<ArrayRef> = order
        .iter()
        .map(|&i| array_of(schema[i].1, rows.iter().map(|r| &r[i])))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("valid batch")
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// A row to write: values are chosen against the head schema when the step runs.
#[derive(Clone, Debug)]
struct RowGen {
    /// Index into `KEYS`.
    k: u8,
    t: i64,
    /// Chooses the value by `float`; `None` writes a null.
    v: Option<u8>,
    /// Chooses the values (or nulls) of added columns.
    extra: u32,
}

impl RowGen {
    fn row(&self, schema: &ModelSchema) -> Row {
        let mut row = vec![
            Cell::Str(KEYS[self.k as usize % KEYS.len()].to_string()),
            Cell::Int(self.t),
            self.v
                .map_or(Cell::Null, |i| Cell::float(float(i as usize))),
        ];
        for (j, (_, ty)) in schema.iter().enumerate().skip(3) {
            let s = self
                .extra
                .wrapping_mul(2_654_435_761)
                .rotate_left(7 * j as u32)
                >> 24;
            row.push(if s.is_multiple_of(4) {
                Cell::Null
            } else {
                ty.value(s >> 2)
            });
        }
        row
    }
}

#[derive(Clone, Debug)]
struct WriteGen {
    rows: Vec<RowGen>,
    /// Repeat the key of the last row with another value: the later row must win.
    dup_last: bool,
    /// Split the rows into two batches at this index (modulo the row count + 1).
    split: u8,
    /// Pass columns in reverse order: the table puts them in schema order.
    reversed: bool,
    /// Exactly-once mark (producer index, sequence number).
    mark: Option<(u8, u64)>,
}

/// A column a predicate names.
#[derive(Clone, Copy, Debug)]
enum ColSel {
    K,
    T,
    V,
    /// The n-th added column, which may not exist (then the delete must fail).
    Extra(u8),
}

#[derive(Clone, Debug)]
enum PredGen {
    Cmp(ColSel, CmpOp, u8),
    In(ColSel, Vec<u8>),
    IsNull(ColSel),
    IsNotNull(ColSel),
    And(Vec<PredGen>),
    Or(Vec<PredGen>),
    Not(Box<PredGen>),
}

/// A version to roll back to or tag, chosen against the model when the step runs.
#[derive(Clone, Debug)]
enum Target {
    /// Any version 1..=head, vacuumed or not.
    Any(u8),
    /// A retained version.
    Retained(u8),
    /// A vacuumed version, if there is one (else any version).
    Vacuumed(u8),
    Head,
    /// Past the head: `VersionNotFound`.
    Future(u8),
    /// Version 0 never exists.
    Zero,
    /// A tag, which may not exist.
    Tag(u8),
}

#[derive(Clone, Copy, Debug)]
enum AddKind {
    Ok,
    /// Not nullable: rejected.
    NotNull,
    /// Same name as an existing column but for case: rejected.
    Duplicate,
}

#[derive(Clone, Debug)]
enum Op {
    Write(WriteGen),
    /// A write whose batch does not fit the schema: 0 = a column missing, 1 = an unknown
    /// column, 2 = a null key. Must fail with `SchemaMismatch` and commit nothing.
    BadWrite(u8),
    /// Keys as (index into KEYS plus one absent key, t); without a row key only k counts.
    DeleteKeys(Vec<(u8, i64)>),
    DeleteWhere(PredGen),
    Rollback(Target),
    CreateTag(u8, Target),
    DeleteTag(u8),
    /// Vacuum with keep_last (0 is rejected).
    Vacuum(u64),
    Compact,
    AddColumn(ColType, AddKind),
    /// Continue with a fresh handle (no cached manifest).
    Reopen,
    /// Continue with the other handle, whose cached manifest may be many versions old.
    Switch,
    /// Appends or upserts `n` rows of key `a` with t = offset..offset+n in one batch: big
    /// enough to split segments. Only used by the fixed sequences (too slow for proptest).
    Bulk {
        n: u32,
        offset: i64,
    },
}

/// Per-case settings.
#[derive(Clone, Debug)]
struct Case {
    /// With a row key, writes upsert on (k, t); without, they append.
    row_key: bool,
    shards: u32,
    checkpoint_interval: u64,
    blob_grace_ms: i64,
    target_bytes: u64,
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        1u32..=4,
        2u64..=5,
        prop_oneof![Just(100i64), Just(400)],
        prop_oneof![Just(1u64), Just(2048), Just(1 << 20)],
    )
        .prop_map(
            |(row_key, shards, checkpoint_interval, blob_grace_ms, target_bytes)| Case {
                row_key,
                shards,
                checkpoint_interval,
                blob_grace_ms,
                target_bytes,
            },
        )
}

fn row_strategy() -> impl Strategy<Value = RowGen> {
    (
        0u8..4,
        0i64..6,
        prop::option::weighted(0.8, 0u8..16),
        any::<u32>(),
    )
        .prop_map(|(k, t, v, extra)| RowGen { k, t, v, extra })
}

fn write_strategy() -> impl Strategy<Value = WriteGen> {
    (
        prop::collection::vec(row_strategy(), 0..=6),
        prop::bool::weighted(0.2),
        any::<u8>(),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.3, (0u8..2, 1u64..6)),
    )
        .prop_map(|(rows, dup_last, split, reversed, mark)| WriteGen {
            rows,
            dup_last,
            split,
            reversed,
            mark,
        })
}

fn col_strategy() -> impl Strategy<Value = ColSel> {
    prop_oneof![
        2 => Just(ColSel::K),
        2 => Just(ColSel::T),
        3 => Just(ColSel::V),
        2 => (0u8..3).prop_map(ColSel::Extra),
    ]
}

fn cmp_op_strategy() -> impl Strategy<Value = CmpOp> {
    prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::NotEq),
        Just(CmpOp::Lt),
        Just(CmpOp::LtEq),
        Just(CmpOp::Gt),
        Just(CmpOp::GtEq),
    ]
}

fn pred_strategy() -> impl Strategy<Value = PredGen> {
    let leaf = prop_oneof![
        4 => (col_strategy(), cmp_op_strategy(), any::<u8>()).prop_map(|(c, o, l)| PredGen::Cmp(c, o, l)),
        2 => (col_strategy(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(c, l)| PredGen::In(c, l)),
        1 => col_strategy().prop_map(PredGen::IsNull),
        1 => col_strategy().prop_map(PredGen::IsNotNull),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(PredGen::And),
            prop::collection::vec(inner.clone(), 0..3).prop_map(PredGen::Or),
            inner.prop_map(|p| PredGen::Not(Box::new(p))),
        ]
    })
}

fn target_strategy() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => any::<u8>().prop_map(Target::Retained),
        2 => any::<u8>().prop_map(Target::Any),
        3 => any::<u8>().prop_map(Target::Vacuumed),
        1 => Just(Target::Head),
        1 => (0u8..3).prop_map(Target::Future),
        1 => Just(Target::Zero),
        2 => (0u8..3).prop_map(Target::Tag),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => write_strategy().prop_map(Op::Write),
        1 => (0u8..3).prop_map(Op::BadWrite),
        2 => prop::collection::vec((0u8..5, 0i64..6), 0..4).prop_map(Op::DeleteKeys),
        3 => pred_strategy().prop_map(Op::DeleteWhere),
        3 => target_strategy().prop_map(Op::Rollback),
        2 => ((0u8..3), target_strategy()).prop_map(|(n, t)| Op::CreateTag(n, t)),
        1 => (0u8..3).prop_map(Op::DeleteTag),
        3 => (0u64..6).prop_map(Op::Vacuum),
        2 => Just(Op::Compact),
        2 => (
            prop::sample::select(ColType::ALL.to_vec()),
            prop_oneof![6 => Just(AddKind::Ok), 1 => Just(AddKind::NotNull), 1 => Just(AddKind::Duplicate)],
        )
            .prop_map(|(ty, kind)| Op::AddColumn(ty, kind)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Switch),
    ]
}

/// The custom strategy of the test: a case and its operations.
fn ops_strategy(max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_strategy(), 1..=max_ops)
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ModelVersion {
    schema: Arc<ModelSchema>,
    /// Sorted.
    rows: Arc<Vec<Row>>,
    producers: BTreeMap<String, u64>,
    /// `Operation::name` of the commit.
    op: &'static str,
}

#[derive(Debug)]
struct Model {
    upsert: bool,
    /// Every version ever committed (vacuumed ones too).
    versions: BTreeMap<u64, ModelVersion>,
    /// Retention: versions >= oldest, plus protected ones.
    oldest: u64,
    protected: BTreeSet<u64>,
    tags: BTreeMap<String, u64>,
}

/// An error an operation must fail with.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    NotFound { version: u64, head: u64 },
    Vacuumed { version: u64, oldest: u64 },
    TagNotFound,
    TagExists,
    SchemaMismatch,
    InvalidArgument,
}

fn assert_error(got: &Error, want: &Expect, ctx: &str) {
    let ok = match (want, got) {
        (
            Expect::NotFound { version, head },
            Error::VersionNotFound {
                version: v,
                head: h,
                ..
            },
        ) => v == version && h == head,
        (
            Expect::Vacuumed { version, oldest },
            Error::VersionVacuumed {
                version: v,
                oldest: o,
                ..
            },
        ) => v == version && o == oldest,
        (Expect::TagNotFound, Error::TagNotFound { .. })
        | (Expect::TagExists, Error::TagExists { .. })
        | (Expect::SchemaMismatch, Error::SchemaMismatch(_))
        | (Expect::InvalidArgument, Error::InvalidArgument(_)) => true,
        _ => false,
    };
    assert!(ok, "{ctx}: expected {want:?}, got {got:?}");
}

fn expect_err<T: std::fmt::Debug>(result: strata_table::Result<T>, want: &Expect, ctx: &str) {
    match result {
        Ok(v) => panic!("{ctx}: expected {want:?}, got Ok({v:?})"),
        Err(e) => assert_error(&e, want, ctx),
    }
}

impl Model {
    fn new(upsert: bool) -> Self {
        let v1 = ModelVersion {
            schema: Arc::new(base_schema()),
            rows: Arc::new(vec![]),
            producers: BTreeMap::new(),
            op: "create",
        };
        Self {
            upsert,
            versions: BTreeMap::from([(1, v1)]),
            oldest: 1,
            protected: BTreeSet::new(),
            tags: BTreeMap::new(),
        }
    }

    fn head(&self) -> u64 {
        *self.versions.keys().next_back().expect("version 1 exists")
    }

    fn head_version(&self) -> &ModelVersion {
        &self.versions[&self.head()]
    }

    fn retains(&self, v: u64) -> bool {
        v >= self.oldest || self.protected.contains(&v)
    }

    fn retained(&self) -> Vec<u64> {
        self.versions
            .keys()
            .copied()
            .filter(|v| self.retains(*v))
            .collect()
    }

    /// Commits a version with `rows` (sorted here), `schema` and `op`; marks as given.
    fn commit(
        &mut self,
        schema: Arc<ModelSchema>,
        mut rows: Vec<Row>,
        producers: BTreeMap<String, u64>,
        op: &'static str,
    ) -> u64 {
        rows.sort();
        let v = self.head() + 1;
        self.versions.insert(
            v,
            ModelVersion {
                schema,
                rows: Arc::new(rows),
                producers,
                op,
            },
        );
        v
    }

    /// Commits a version whose content equals the head's.
    fn commit_same(&mut self, op: &'static str) -> u64 {
        let head = self.head_version().clone();
        let v = self.head() + 1;
        self.versions.insert(v, ModelVersion { op, ..head });
        v
    }

    fn resolve(&self, spec: &VersionSpec) -> Result<u64, Expect> {
        let head = self.head();
        match spec {
            VersionSpec::Head => Ok(head),
            VersionSpec::Version(v) => {
                if *v == 0 || *v > head {
                    Err(Expect::NotFound { version: *v, head })
                } else if !self.retains(*v) {
                    Err(Expect::Vacuumed {
                        version: *v,
                        oldest: self.oldest,
                    })
                } else {
                    Ok(*v)
                }
            }
            VersionSpec::Tag(t) => self.tags.get(t).copied().ok_or(Expect::TagNotFound),
            VersionSpec::Timestamp(_) => unreachable!("the model does not track time"),
        }
    }

    fn target(&self, t: &Target) -> VersionSpec {
        let head = self.head();
        match t {
            Target::Any(s) => VersionSpec::Version(1 + u64::from(*s) % head),
            Target::Retained(s) => {
                let r = self.retained();
                VersionSpec::Version(r[*s as usize % r.len()])
            }
            Target::Vacuumed(s) => {
                let gone: Vec<u64> = (1..head).filter(|v| !self.retains(*v)).collect();
                match gone.len() {
                    0 => VersionSpec::Version(1 + u64::from(*s) % head),
                    n => VersionSpec::Version(gone[*s as usize % n]),
                }
            }
            Target::Head => VersionSpec::Head,
            Target::Future(d) => VersionSpec::Version(head + 1 + u64::from(*d)),
            Target::Zero => VersionSpec::Version(0),
            Target::Tag(i) => VersionSpec::Tag(TAGS[*i as usize % TAGS.len()].to_string()),
        }
    }

    fn column(schema: &ModelSchema, name: &str) -> usize {
        schema
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("model has no column {name}"))
    }
}

/// Whether a predicate names a column the schema lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Missing {
    No,
    /// Only in `IN ()` lists, which `bind` does not check (see
    /// `delete_where_with_an_empty_in_list_on_a_missing_column_is_an_invalid_argument`).
    InEmptyInList,
    Yes,
}

/// A predicate for `pg` against `schema`, and whether it names a missing column.
fn predicate(pg: &PredGen, schema: &ModelSchema) -> (Predicate, Missing) {
    let column = |c: ColSel| -> (String, Option<ColType>, bool) {
        match c {
            ColSel::K => ("k".into(), Some(ColType::Utf8), true),
            ColSel::T => ("t".into(), Some(ColType::Int64), false),
            ColSel::V => ("v".into(), Some(ColType::Float64), false),
            ColSel::Extra(i) => {
                let name = format!("c{i}");
                let ty = schema.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
                (name, ty, false)
            }
        }
    };
    let missing = |ty: Option<ColType>| {
        if ty.is_some() {
            Missing::No
        } else {
            Missing::Yes
        }
    };
    let literal = |ty: Option<ColType>, is_key: bool, seed: u8| -> Value {
        if seed % 16 == 15 {
            return Value::Null;
        }
        match ty {
            None => Value::Int(i64::from(seed)),
            Some(_) if is_key => Value::Str(
                if seed as usize % 5 == 4 {
                    ABSENT_KEY
                } else {
                    KEYS[seed as usize % 5]
                }
                .into(),
            ),
            Some(ColType::Int64) => Value::Int(i64::from(seed % 8) - 1),
            Some(ty) => ty.value(u32::from(seed)).as_value(),
        }
    };
    match pg {
        PredGen::Cmp(c, op, seed) => {
            let (name, ty, key) = column(*c);
            (
                Predicate::cmp(&name, *op, literal(ty, key, *seed)),
                missing(ty),
            )
        }
        PredGen::In(c, seeds) => {
            let (name, ty, key) = column(*c);
            let values: Vec<Value> = seeds.iter().map(|s| literal(ty, key, *s)).collect();
            let m = match missing(ty) {
                Missing::Yes if values.is_empty() => Missing::InEmptyInList,
                m => m,
            };
            (
                Predicate::In {
                    column: name,
                    values,
                },
                m,
            )
        }
        PredGen::IsNull(c) => {
            let (name, ty, _) = column(*c);
            (Predicate::IsNull(name), missing(ty))
        }
        PredGen::IsNotNull(c) => {
            let (name, ty, _) = column(*c);
            (Predicate::IsNotNull(name), missing(ty))
        }
        PredGen::And(ps) | PredGen::Or(ps) => {
            let parts: Vec<(Predicate, Missing)> =
                ps.iter().map(|p| predicate(p, schema)).collect();
            let m = parts.iter().map(|(_, m)| *m).max().unwrap_or(Missing::No);
            let ps = parts.into_iter().map(|(p, _)| p).collect();
            let p = if matches!(pg, PredGen::And(_)) {
                Predicate::And(ps)
            } else {
                Predicate::Or(ps)
            };
            (p, m)
        }
        PredGen::Not(p) => {
            let (p, m) = predicate(p, schema);
            (Predicate::Not(Box::new(p)), m)
        }
    }
}

fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn or3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// Compares a cell with a literal; `None` when either is null (SQL unknown). Floats
/// compare by IEEE total order, like Arrow's comparison kernels.
fn compare(cell: &Cell, lit: &Value) -> Option<Ordering> {
    match (cell, lit) {
        (Cell::Null, _) | (_, Value::Null) => None,
        (Cell::Int(a), Value::Int(b)) => Some(a.cmp(b)),
        (Cell::Float(a), Value::Float(b)) => Some(f64::from_bits(*a).total_cmp(b)),
        (Cell::Str(a), Value::Str(b)) => Some(a.as_str().cmp(b.as_str())),
        (Cell::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (c, l) => panic!("model cannot compare {c:?} with {l:?}"),
    }
}

/// Three-valued evaluation of `p` on `row`.
fn eval(p: &Predicate, schema: &ModelSchema, row: &Row) -> Option<bool> {
    let cell = |c: &str| &row[Model::column(schema, c)];
    match p {
        Predicate::Compare { column, op, value } => {
            compare(cell(column), value).map(|o| match op {
                CmpOp::Eq => o.is_eq(),
                CmpOp::NotEq => o.is_ne(),
                CmpOp::Lt => o.is_lt(),
                CmpOp::LtEq => o.is_le(),
                CmpOp::Gt => o.is_gt(),
                CmpOp::GtEq => o.is_ge(),
            })
        }
        // Unknown does not short-circuit in three-valued logic: no `try_fold` here.
        Predicate::In { column, values } => {
            let mut acc = Some(false);
            for v in values {
                acc = or3(acc, compare(cell(column), v).map(Ordering::is_eq));
            }
            acc
        }
        Predicate::IsNull(c) => Some(*cell(c) == Cell::Null),
        Predicate::IsNotNull(c) => Some(*cell(c) != Cell::Null),
        Predicate::And(ps) => {
            let mut acc = Some(true);
            for p in ps {
                acc = and3(acc, eval(p, schema, row));
            }
            acc
        }
        Predicate::Or(ps) => {
            let mut acc = Some(false);
            for p in ps {
                acc = or3(acc, eval(p, schema, row));
            }
            acc
        }
        Predicate::Not(p) => eval(p, schema, row).map(|b| !b),
    }
}

/// The segments `compact` merges at `head`: in each shard, its small or sparse segments
/// if there are at least two of them or one has deleted rows. Empty: nothing to do.
fn compaction_inputs(head: &Manifest, target_bytes: u64) -> BTreeSet<(u32, String)> {
    let mut shards: BTreeMap<u32, Vec<&LiveSegment>> = BTreeMap::new();
    for seg in head.live_segments() {
        let small = seg.meta.bytes < target_bytes / 2;
        let dead = seg.meta.rows - seg.live_rows();
        if small || dead * 5 > seg.meta.rows {
            shards.entry(seg.meta.shard).or_default().push(seg);
        }
    }
    shards
        .into_values()
        .filter(|segs| segs.len() >= 2 || segs.iter().any(|s| s.deleted.is_some()))
        .flatten()
        .map(|s| (s.meta.shard, s.meta.id.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn kv_spec(shards: u32, row_key: bool) -> DatasetSpec {
    DatasetSpec::new(
        DatasetName::new(NAME).unwrap(),
        arrow_schema(&base_schema()),
        vec!["k".into()],
        if row_key { vec!["t".into()] } else { vec![] },
        shards,
    )
    .unwrap()
}

struct Harness {
    case: Case,
    catalog: Catalog,
    /// The handle operations and checks go through.
    table: Table,
    /// A second handle of the same table, idle until `Op::Switch`.
    other: Table,
    model: Model,
}

impl Harness {
    async fn new(case: Case) -> Self {
        let mut options = TableOptions {
            checkpoint_interval: case.checkpoint_interval,
            blob_grace_ms: case.blob_grace_ms,
            ..TableOptions::default()
        };
        options.segment.target_bytes = case.target_bytes;
        let catalog = Catalog::with_options(
            Arc::new(MemoryBlobStore::new()),
            Arc::new(MemoryMetaStore::new()),
            options,
        );
        let table = catalog
            .create_table(kv_spec(case.shards, case.row_key))
            .await
            .unwrap();
        let other = catalog.open_table(NAME).await.unwrap();
        let model = Model::new(case.row_key);
        Self {
            case,
            catalog,
            table,
            other,
            model,
        }
    }

    /// Runs `ops`, checking the table against the model after every step, and at the end
    /// through the other handle and a fresh one.
    async fn run(&mut self, ops: &[Op]) {
        self.check(&self.table, "initial").await;
        for (i, op) in ops.iter().enumerate() {
            let ctx = format!("step {i} ({op:?}) of {:?}", self.case);
            self.apply(op, &ctx).await;
            self.check(&self.table, &ctx).await;
        }
        self.check(&self.other, "other handle at the end").await;
        let fresh = self.catalog.open_table(NAME).await.unwrap();
        self.check(&fresh, "fresh handle at the end").await;
    }

    /// Asserts that an operation that failed changed nothing.
    async fn assert_unchanged(&self, ctx: &str) {
        assert_eq!(
            self.table.head_version().await.unwrap(),
            self.model.head(),
            "{ctx}: a failed operation committed"
        );
    }

    /// Asserts that `got` is the next version.
    fn assert_next(&self, got: u64, ctx: &str) {
        assert_eq!(
            got,
            self.model.head() + 1,
            "{ctx}: committed version number"
        );
    }

    async fn apply(&mut self, op: &Op, ctx: &str) {
        match op {
            Op::Write(w) => self.write(w, ctx).await,
            Op::Bulk { n, offset } => {
                let rows: Vec<RowGen> = (0..*n)
                    .map(|i| RowGen {
                        k: 0,
                        t: offset + i64::from(i),
                        v: Some((i % 7) as u8),
                        extra: i,
                    })
                    .collect();
                let w = WriteGen {
                    rows,
                    dup_last: false,
                    split: 0,
                    reversed: false,
                    mark: None,
                };
                self.write(&w, ctx).await;
            }
            Op::BadWrite(kind) => {
                let schema = self.model.head_version().schema.clone();
                let rows = vec![
                    RowGen {
                        k: 0,
                        t: 1,
                        v: None,
                        extra: 7,
                    }
                    .row(&schema),
                ];
                let good = batch_of(&schema, &rows, false);
                let bad = match kind % 3 {
                    0 => good
                        .project(&(0..schema.len() - 1).collect::<Vec<_>>())
                        .unwrap(),
                    1 => {
                        let mut fields: Vec<Field> = good
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.as_ref().clone())
                            .collect();
                        fields.push(Field::new("zz", DataType::Int64, true));
                        let mut cols = good.columns().to_vec();
                        cols.push(Arc::new(Int64Array::from(vec![1])));
                        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
                    }
                    _ => {
                        let mut fields: Vec<Field> = good
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.as_ref().clone())
                            .collect();
                        fields[0] = Field::new("k", DataType::Utf8, true);
                        let mut cols = good.columns().to_vec();
                        cols[0] = Arc::new(StringArray::from(vec![None::<&str>]));
                        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
                    }
                };
                let result = self.table.write(&[bad], BTreeMap::new()).await;
                expect_err(result, &Expect::SchemaMismatch, ctx);
                self.assert_unchanged(ctx).await;
            }
            Op::DeleteKeys(keys) => self.delete_keys(keys, ctx).await,
            Op::DeleteWhere(pg) => self.delete_where(pg, ctx).await,
            Op::Rollback(target) => {
                let spec = self.model.target(target);
                let result = self.table.rollback(&spec).await;
                match self.model.resolve(&spec) {
                    Err(want) => {
                        expect_err(result, &want, ctx);
                        self.assert_unchanged(ctx).await;
                    }
                    Ok(to) => {
                        let info = result.unwrap_or_else(|e| panic!("{ctx}: rollback failed: {e}"));
                        self.assert_next(info.version, ctx);
                        assert_eq!(info.operation, Operation::Rollback { to }, "{ctx}");
                        let target = self.model.versions[&to].clone();
                        let mut producers = self.model.head_version().producers.clone();
                        for (p, s) in &target.producers {
                            let m = producers.entry(p.clone()).or_insert(0);
                            *m = (*m).max(*s);
                        }
                        let v = self.model.head() + 1;
                        self.model.versions.insert(
                            v,
                            ModelVersion {
                                producers,
                                op: "rollback",
                                ..target
                            },
                        );
                    }
                }
            }
            Op::CreateTag(name, target) => {
                let name = TAGS[*name as usize % TAGS.len()];
                let spec = self.model.target(target);
                let result = self.table.create_tag(name, &spec).await;
                let want = self.model.resolve(&spec).and_then(|v| {
                    if self.model.tags.contains_key(name) {
                        Err(Expect::TagExists)
                    } else {
                        Ok(v)
                    }
                });
                match want {
                    Err(want) => expect_err(result, &want, ctx),
                    Ok(v) => {
                        let info = result.unwrap_or_else(|e| panic!("{ctx}: tag failed: {e}"));
                        assert_eq!((info.name.as_str(), info.version), (name, v), "{ctx}");
                        self.model.tags.insert(name.to_string(), v);
                    }
                }
                self.assert_unchanged(ctx).await;
            }
            Op::DeleteTag(name) => {
                let name = TAGS[*name as usize % TAGS.len()];
                let result = self.table.delete_tag(name).await;
                if self.model.tags.remove(name).is_some() {
                    result.unwrap_or_else(|e| panic!("{ctx}: delete tag failed: {e}"));
                } else {
                    expect_err(result, &Expect::TagNotFound, ctx);
                }
                self.assert_unchanged(ctx).await;
            }
            Op::Vacuum(keep_last) => self.vacuum(*keep_last, ctx).await,
            Op::Compact => self.compact(ctx).await,
            Op::AddColumn(ty, kind) => self.add_column(*ty, *kind, ctx).await,
            Op::Reopen => {
                self.table = self.catalog.open_table(NAME).await.unwrap();
            }
            Op::Switch => std::mem::swap(&mut self.table, &mut self.other),
        }
    }

    async fn write(&mut self, w: &WriteGen, ctx: &str) {
        let head = self.model.head_version().clone();
        let mut rows: Vec<Row> = w.rows.iter().map(|r| r.row(&head.schema)).collect();
        if w.dup_last
            && let Some(last) = w.rows.last()
        {
            let again = RowGen {
                v: Some(last.v.map_or(0, |v| v + 1)),
                extra: last.extra.wrapping_add(1),
                ..last.clone()
            };
            rows.push(again.row(&head.schema));
        }
        let batch = batch_of(&head.schema, &rows, w.reversed);
        let split = w.split as usize % (rows.len() + 1);
        let batches = [
            batch.slice(0, split),
            batch.slice(split, rows.len() - split),
        ];
        let marks: BTreeMap<String, u64> = w
            .mark
            .iter()
            .map(|(p, s)| (PRODUCERS[*p as usize % PRODUCERS.len()].to_string(), *s))
            .collect();
        let duplicate = !marks.is_empty()
            && marks
                .iter()
                .all(|(p, s)| head.producers.get(p).is_some_and(|m| m >= s));
        // The expected content: an upsert replaces live rows with the same (k, t), and the
        // last of several new rows with one key wins; an append keeps everything.
        let (new_rows, added, removed) = if self.model.upsert {
            let mut latest: BTreeMap<(Cell, Cell), Row> = BTreeMap::new();
            for r in &rows {
                latest.insert((r[0].clone(), r[1].clone()), r.clone());
            }
            let mut kept: Vec<Row> = head
                .rows
                .iter()
                .filter(|r| !latest.contains_key(&(r[0].clone(), r[1].clone())))
                .cloned()
                .collect();
            let removed = head.rows.len() - kept.len();
            let added = latest.len();
            kept.extend(latest.into_values());
            (kept, added, removed)
        } else {
            let mut all = head.rows.to_vec();
            all.extend(rows.iter().cloned());
            (all, rows.len(), 0)
        };
        let mut expired = 0;
        let info = loop {
            match self.table.write(&batches, marks.clone()).await {
                Ok(WriteOutcome::Committed(info)) => {
                    assert!(!duplicate, "{ctx}: a duplicate batch was written again");
                    break info;
                }
                Ok(WriteOutcome::Duplicate { head: h }) => {
                    assert!(duplicate, "{ctx}: a new batch was taken for a duplicate");
                    assert_eq!(h, self.model.head(), "{ctx}: duplicate head");
                    self.assert_unchanged(ctx).await;
                    return;
                }
                Err(Error::TransactionExpired { .. }) if expired < MAX_EXPIRED_RETRIES => {
                    // The machine was slower than the grace period: nothing was committed.
                    self.assert_unchanged(ctx).await;
                    expired += 1;
                }
                Err(e) => panic!("{ctx}: write failed: {e}"),
            }
        };
        self.assert_next(info.version, ctx);
        let op = if self.model.upsert {
            Operation::Upsert
        } else {
            Operation::Append
        };
        assert_eq!(info.operation, op, "{ctx}");
        assert_eq!(
            (info.rows_added, info.rows_removed),
            (added as u64, removed as u64),
            "{ctx}: rows added and removed"
        );
        let mut producers = head.producers.clone();
        for (p, s) in marks {
            let m = producers.entry(p).or_insert(0);
            *m = (*m).max(s);
        }
        self.model
            .commit(head.schema.clone(), new_rows, producers, op.name());
    }

    async fn delete_keys(&mut self, keys: &[(u8, i64)], ctx: &str) {
        let head = self.model.head_version().clone();
        let key_of = |i: u8| -> String {
            if i as usize >= KEYS.len() {
                ABSENT_KEY.to_string()
            } else {
                KEYS[i as usize].to_string()
            }
        };
        let ks = StringArray::from_iter_values(keys.iter().map(|(k, _)| key_of(*k)));
        let batch = if self.model.upsert {
            let ts = Int64Array::from_iter_values(keys.iter().map(|(_, t)| *t));
            RecordBatch::try_from_iter(vec![
                ("k", Arc::new(ks) as ArrayRef),
                ("t", Arc::new(ts) as ArrayRef),
            ])
        } else {
            RecordBatch::try_from_iter(vec![("k", Arc::new(ks) as ArrayRef)])
        }
        .unwrap();
        // try_from_iter makes nullable fields; the key schema is not nullable.
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(false))
            .collect();
        let batch =
            RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec()).unwrap();
        let doomed: HashSet<(Cell, Cell)> = keys
            .iter()
            .map(|(k, t)| (Cell::Str(key_of(*k)), Cell::Int(*t)))
            .collect();
        let doomed_k: HashSet<Cell> = doomed.iter().map(|(k, _)| k.clone()).collect();
        let hit = |r: &Row| {
            if self.model.upsert {
                doomed.contains(&(r[0].clone(), r[1].clone()))
            } else {
                doomed_k.contains(&r[0])
            }
        };
        let kept: Vec<Row> = head.rows.iter().filter(|r| !hit(r)).cloned().collect();
        let removed = head.rows.len() - kept.len();
        let info = self
            .table
            .delete_keys(&batch)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: delete_keys failed: {e}"));
        self.assert_next(info.version, ctx);
        assert_eq!(info.rows_removed, removed as u64, "{ctx}: rows removed");
        self.model
            .commit(head.schema.clone(), kept, head.producers.clone(), "delete");
    }

    async fn delete_where(&mut self, pg: &PredGen, ctx: &str) {
        let head = self.model.head_version().clone();
        let (pred, missing) = predicate(pg, &head.schema);
        let ctx = format!("{ctx} [{pred}]");
        let result = self.table.delete_where(&pred).await;
        match missing {
            Missing::No => {}
            Missing::Yes => {
                expect_err(result, &Expect::InvalidArgument, &ctx);
                self.assert_unchanged(&ctx).await;
                return;
            }
            Missing::InEmptyInList => {
                expect_err(result, &Expect::InvalidArgument, &ctx);
                self.assert_unchanged(&ctx).await;
                return;
            }
        }
        let kept: Vec<Row> = head
            .rows
            .iter()
            .filter(|r| eval(&pred, &head.schema, r) != Some(true))
            .cloned()
            .collect();
        let removed = head.rows.len() - kept.len();
        let info = result.unwrap_or_else(|e| panic!("{ctx}: delete_where failed: {e}"));
        self.assert_next(info.version, &ctx);
        assert_eq!(info.rows_removed, removed as u64, "{ctx}: rows removed");
        self.model
            .commit(head.schema.clone(), kept, head.producers.clone(), "delete");
    }

    async fn vacuum(&mut self, keep_last: u64, ctx: &str) {
        let policy = VacuumPolicy {
            keep_last: Some(keep_last),
            keep_within_ms: None,
        };
        if keep_last == 0 {
            expect_err(
                self.table.vacuum(&policy).await,
                &Expect::InvalidArgument,
                ctx,
            );
            self.assert_unchanged(ctx).await;
            return;
        }
        let started = now_ms();
        let report = self
            .table
            .vacuum(&policy)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: vacuum failed: {e}"));
        // Keep the newest `keep_last` versions (never fewer than before, never the head),
        // plus every version a tag names.
        let h = self.model.head();
        let wanted = (h + 1).saturating_sub(keep_last).max(1);
        let oldest = wanted.clamp(self.model.oldest, h);
        if oldest <= self.model.oldest {
            assert_eq!(
                report.version, None,
                "{ctx}: vacuum with nothing to do committed"
            );
            assert_eq!(report.oldest_retained, self.model.oldest, "{ctx}");
            assert_eq!(report.versions_removed, 0, "{ctx}");
        } else {
            let before = self.model.retained();
            // Only versions tagged now stay protected: a deleted tag releases its version.
            let protected: BTreeSet<u64> = self
                .model
                .tags
                .values()
                .copied()
                .filter(|v| *v < oldest && self.model.retains(*v))
                .collect();
            self.assert_next(report.version.expect("vacuum removed versions"), ctx);
            self.model.oldest = oldest;
            self.model.protected = protected;
            let removed = before.iter().filter(|v| !self.model.retains(**v)).count();
            assert_eq!(report.oldest_retained, oldest, "{ctx}: {report:?}");
            assert_eq!(report.versions_removed, removed as u64, "{ctx}: {report:?}");
            self.model.commit_same("vacuum");
        }
        self.assert_no_garbage(started - self.case.blob_grace_ms, ctx)
            .await;
    }

    /// After a vacuum: no checkpoint of a removed version is left, and every segment
    /// older than `cutoff_ms` belongs to some retained version.
    async fn assert_no_garbage(&self, cutoff_ms: i64, ctx: &str) {
        let mut live: HashSet<String> = HashSet::new();
        for v in self.model.retained() {
            let snap = self.table.snapshot(&VersionSpec::Version(v)).await.unwrap();
            live.extend(snap.manifest().live_segments().map(|s| s.meta.path.clone()));
        }
        for blob in self.table.blobs().list("").await.unwrap() {
            if blob.path.contains("/segments/") {
                assert!(
                    live.contains(&blob.path) || blob.last_modified_ms >= cutoff_ms,
                    "{ctx}: vacuum left unreferenced segment {} ({} ms old)",
                    blob.path,
                    now_ms() - blob.last_modified_ms
                );
            } else if let Some(name) = blob.path.split("/checkpoints/").nth(1) {
                let v: u64 = name.split('.').next().unwrap().parse().unwrap();
                assert!(
                    self.model.retains(v),
                    "{ctx}: vacuum left the checkpoint of removed version {v}"
                );
            }
        }
    }

    async fn compact(&mut self, ctx: &str) {
        let before = self.table.head().await.unwrap();
        let inputs = compaction_inputs(&before, self.case.target_bytes);
        let mut expired = 0;
        let result = loop {
            match self.table.compact().await {
                Err(Error::TransactionExpired { .. }) if expired < MAX_EXPIRED_RETRIES => {
                    self.assert_unchanged(ctx).await;
                    expired += 1;
                }
                other => break other.unwrap_or_else(|e| panic!("{ctx}: compact failed: {e}")),
            }
        };
        assert_eq!(
            result.is_some(),
            !inputs.is_empty(),
            "{ctx}: compaction ran: {result:?}"
        );
        if let Some(info) = result {
            self.assert_next(info.version, ctx);
            let shards: BTreeSet<u32> = inputs.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                info.operation,
                Operation::Compact {
                    shards: shards.into_iter().collect()
                },
                "{ctx}"
            );
            // The inputs are replaced by new segments without deleted rows; the other
            // segments stay as they were.
            let after = self.table.head().await.unwrap();
            for seg in after.live_segments() {
                let key = (seg.meta.shard, seg.meta.id.clone());
                match before.segment(seg.meta.shard, &seg.meta.id) {
                    Some(old) => {
                        assert!(!inputs.contains(&key), "{ctx}: input {key:?} still live");
                        assert_eq!(seg.deleted, old.deleted, "{ctx}: {key:?} changed");
                    }
                    None => assert!(seg.deleted.is_none(), "{ctx}: new {key:?} has deletes"),
                }
            }
            self.model.commit_same("compact");
        }
    }

    async fn add_column(&mut self, ty: ColType, kind: AddKind, ctx: &str) {
        let head = self.model.head_version().clone();
        let extras = head.schema.len() - 3;
        let field = match kind {
            AddKind::Ok => Field::new(format!("c{extras}"), ty.data_type(), true),
            AddKind::NotNull => Field::new(format!("c{extras}"), ty.data_type(), false),
            AddKind::Duplicate => {
                let name = head.schema[extras % head.schema.len()].0.to_uppercase();
                Field::new(name, ty.data_type(), true)
            }
        };
        let result = self.table.add_column(field.clone()).await;
        if !matches!(kind, AddKind::Ok) {
            expect_err(result, &Expect::InvalidArgument, ctx);
            self.assert_unchanged(ctx).await;
            return;
        }
        let info = result.unwrap_or_else(|e| panic!("{ctx}: add_column failed: {e}"));
        self.assert_next(info.version, ctx);
        let mut schema = (*head.schema).clone();
        schema.push((field.name().clone(), ty));
        let rows = head
            .rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.push(Cell::Null);
                r
            })
            .collect();
        self.model
            .commit(Arc::new(schema), rows, head.producers.clone(), "add_column");
    }

    /// Compares everything observable through `table` with the model.
    async fn check(&self, table: &Table, ctx: &str) {
        let m = &self.model;
        let head = m.head();
        assert_eq!(table.head_version().await.unwrap(), head, "{ctx}: head");
        let listed = table.list_versions().await.unwrap();
        let listed_numbers: Vec<u64> = listed.iter().map(|i| i.version).collect();
        assert_eq!(listed_numbers, m.retained(), "{ctx}: list_versions");
        for info in &listed {
            assert_eq!(
                info.operation.name(),
                m.versions[&info.version].op,
                "{ctx}: operation of version {}",
                info.version
            );
        }
        // Commit times never decrease, and a time resolves to the newest retained
        // version committed at or before it.
        for pair in listed.windows(2) {
            assert!(
                pair[0].timestamp_ms <= pair[1].timestamp_ms,
                "{ctx}: {pair:?}"
            );
        }
        for info in &listed {
            let want = listed
                .iter()
                .filter(|i| i.timestamp_ms <= info.timestamp_ms)
                .map(|i| i.version)
                .max();
            let got = table
                .resolve(&VersionSpec::Timestamp(info.timestamp_ms))
                .await
                .unwrap();
            assert_eq!(
                Some(got),
                want,
                "{ctx}: version at {} ms",
                info.timestamp_ms
            );
        }
        let first = listed[0].timestamp_ms;
        let before = table.resolve(&VersionSpec::Timestamp(first - 1)).await;
        assert!(
            matches!(before, Err(Error::NoVersionAtTime { .. })),
            "{ctx}: version before the first: {before:?}"
        );
        for v in 1..=head {
            if m.retains(v) {
                self.check_version(table, v, ctx).await;
            } else {
                let result = table.snapshot(&VersionSpec::Version(v)).await;
                let want = Expect::Vacuumed {
                    version: v,
                    oldest: m.oldest,
                };
                expect_err(
                    result,
                    &want,
                    &format!("{ctx}: reading vacuumed version {v}"),
                );
            }
        }
        for v in [0, head + 1] {
            let result = table.snapshot(&VersionSpec::Version(v)).await;
            expect_err(result, &Expect::NotFound { version: v, head }, ctx);
        }
        assert_eq!(
            table.resolve(&VersionSpec::Head).await.unwrap(),
            head,
            "{ctx}: head spec"
        );
        assert_eq!(
            table
                .resolve(&VersionSpec::Timestamp(i64::MAX))
                .await
                .unwrap(),
            head,
            "{ctx}: latest version by time"
        );
        let tags: BTreeMap<String, u64> = table
            .list_tags()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.version))
            .collect();
        assert_eq!(tags, m.tags, "{ctx}: tags");
        for (name, v) in &m.tags {
            let snap = table
                .snapshot(&VersionSpec::Tag(name.clone()))
                .await
                .unwrap();
            assert_eq!(snap.version(), *v, "{ctx}: tag {name}");
        }
    }

    async fn check_version(&self, table: &Table, v: u64, ctx: &str) {
        let want = &self.model.versions[&v];
        let snap = table
            .snapshot(&VersionSpec::Version(v))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reading retained version {v}: {e}"));
        assert_eq!(snap.version(), v, "{ctx}");
        let schema: Vec<(String, ColType, bool)> = snap
            .schema()
            .fields()
            .iter()
            .map(|f| {
                (
                    f.name().clone(),
                    ColType::of(f.data_type()),
                    f.is_nullable(),
                )
            })
            .collect();
        let want_schema: Vec<(String, ColType, bool)> = want
            .schema
            .iter()
            .enumerate()
            .map(|(i, (n, t))| (n.clone(), *t, i >= 2))
            .collect();
        assert_eq!(schema, want_schema, "{ctx}: schema of version {v}");
        let batch = snap
            .read_all()
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reading rows of version {v}: {e}"));
        let rows = rows_of(&batch);
        assert!(
            rows == *want.rows,
            "{ctx}: rows of version {v}\n   table: {rows:?}\n   model: {:?}",
            want.rows
        );
        assert_eq!(
            snap.num_rows(),
            rows.len() as u64,
            "{ctx}: row count of version {v}"
        );
        assert_eq!(
            snap.manifest().producers,
            want.producers,
            "{ctx}: producer marks of version {v}"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: env_or("PROPTEST_CASES", 32),
        // Failures are reported with their shrunk sequence; no regression files are written.
        failure_persistence: None,
        max_shrink_time: 300_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn table_matches_model(
        case in case_strategy(),
        ops in ops_strategy(env_or("STRATA_MODEL_OPS", 25)),
    ) {
        runtime().block_on(async {
            let mut h = Harness::new(case).await;
            h.run(&ops).await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// Fixed sequences
// ---------------------------------------------------------------------------------------

fn case(row_key: bool, shards: u32) -> Case {
    Case {
        row_key,
        shards,
        checkpoint_interval: 3,
        blob_grace_ms: 400,
        target_bytes: 1 << 20,
    }
}

fn row(k: u8, t: i64, v: u8) -> RowGen {
    RowGen {
        k,
        t,
        v: Some(v),
        extra: u32::from(v) * 77 + 1,
    }
}

fn write(rows: Vec<RowGen>) -> Op {
    Op::Write(WriteGen {
        rows,
        dup_last: false,
        split: 0,
        reversed: false,
        mark: None,
    })
}

async fn run_fixed(case: Case, ops: Vec<Op>) {
    let mut h = Harness::new(case).await;
    h.run(&ops).await;
}

#[tokio::test]
async fn rollback_across_add_column_then_write_and_re_add_with_another_type() {
    let ops = vec![
        write(vec![row(0, 1, 1), row(1, 2, 2)]),
        Op::AddColumn(ColType::Int64, AddKind::Ok),
        write(vec![row(0, 1, 3), row(2, 3, 4)]),
        // Back to the schema without c0: writes without c0 work again ...
        Op::Rollback(Target::Any(1)),
        write(vec![row(0, 4, 5)]),
        // ... and c0 comes back with another type; the int c0 segments are not live.
        Op::AddColumn(ColType::Utf8, AddKind::Ok),
        write(vec![row(0, 1, 0), row(1, 5, 1)]),
        Op::DeleteWhere(PredGen::IsNull(ColSel::Extra(0))),
        Op::Compact,
        Op::Rollback(Target::Any(3)),
        write(vec![row(3, 0, 2)]),
        Op::Reopen,
        Op::Vacuum(4),
    ];
    run_fixed(case(true, 2), ops.clone()).await;
    run_fixed(case(false, 3), ops).await;
}

#[tokio::test]
async fn vacuum_after_rollback_to_tagged_version() {
    let ops = vec![
        write(vec![row(0, 1, 1)]),
        write(vec![row(1, 1, 2)]),
        Op::CreateTag(0, Target::Head), // t0 -> 3
        write(vec![row(0, 1, 3)]),
        Op::DeleteKeys(vec![(1, 1)]),
        Op::Vacuum(2), // keeps 4, 5 and the tagged 3
        Op::Rollback(Target::Tag(0)),
        Op::Rollback(Target::Any(1)), // vacuumed
        Op::DeleteTag(0),
        write(vec![row(2, 2, 4)]),
        // Without its tag, version 3 stays readable only until the next vacuum.
        Op::Rollback(Target::Any(2)),   // 3, still readable
        Op::CreateTag(1, Target::Head), // t1 -> 9
        Op::Vacuum(1),
        Op::Rollback(Target::Any(2)),     // 3: vacuumed now
        Op::CreateTag(1, Target::Any(1)), // vacuumed: rejected
        Op::Rollback(Target::Tag(1)),
        Op::Reopen,
        Op::Vacuum(1),
    ];
    run_fixed(case(true, 1), ops.clone()).await;
    run_fixed(case(false, 4), ops).await;
}

#[tokio::test]
async fn compaction_after_deletes_then_rollback_to_before_compaction() {
    let ops = vec![
        write(vec![row(0, 1, 1), row(0, 2, 2), row(1, 1, 3), row(2, 3, 4)]),
        write(vec![row(0, 2, 5), row(3, 4, 0), row(1, 5, 1)]),
        Op::DeleteWhere(PredGen::Cmp(ColSel::V, CmpOp::GtEq, 1)),
        Op::DeleteKeys(vec![(3, 4)]),
        Op::Compact,                  // v6
        Op::Compact,                  // nothing left to do
        Op::Rollback(Target::Any(2)), // version 3: before the deletes and the compaction
        write(vec![row(0, 1, 2)]),
        Op::Compact,
        Op::Vacuum(2),
        Op::Rollback(Target::Retained(0)),
        Op::Reopen,
        Op::Vacuum(1),
    ];
    run_fixed(case(true, 2), ops.clone()).await;
    run_fixed(case(false, 2), ops).await;
}

#[tokio::test]
async fn big_writes_split_segments_and_upserts_cross_the_split() {
    let mut c = case(true, 1);
    c.target_bytes = 4096;
    let mut h = Harness::new(c).await;
    // More rows than the writer puts in one chunk, so the segment is cut.
    h.run(&[Op::Bulk {
        n: 17_000,
        offset: 0,
    }])
    .await;
    let segments = h.table.head().await.unwrap().live_segments().count();
    assert!(segments >= 2, "no split: {segments} segment(s)");
    h.run(&[
        write(vec![
            row(0, 0, 1),
            row(0, 16_383, 2),
            row(0, 16_384, 3),
            row(0, 16_999, 4),
        ]),
        Op::DeleteWhere(PredGen::Cmp(ColSel::T, CmpOp::LtEq, 2)),
        Op::DeleteKeys(vec![(0, 5), (0, 16_385)]),
        Op::Compact,
        Op::Rollback(Target::Any(2)),
        Op::Vacuum(2),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------
// Regression tests for bugs the model found (all fixed; each comment says what broke)
// ---------------------------------------------------------------------------------------

/// Was: `Predicate::bind` checked a column only through its literals, so `c IN ()` on a column
/// that does not exist slips through and fails later as an Arrow schema error instead
/// of the `InvalidArgument` every other bad predicate gets.
#[tokio::test]
async fn delete_where_with_an_empty_in_list_on_a_missing_column_is_an_invalid_argument() {
    let h = Harness::new(case(true, 1)).await;
    let pred = Predicate::In {
        column: "nope".into(),
        values: vec![],
    };
    let err = h.table.delete_where(&pred).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(h.table.head_version().await.unwrap(), 1);
}

/// Writes `values` (as rows t = 0, 1, ... of key `a`, one segment) to a fresh table,
/// deletes where `pred`, and returns whether the row t = 0 survived.
async fn survives(values: &[f64], pred: &Predicate) -> bool {
    let h = Harness::new(case(false, 1)).await;
    let rows: Vec<Row> = values
        .iter()
        .enumerate()
        .map(|(t, x)| vec![Cell::Str("a".into()), Cell::Int(t as i64), Cell::float(*x)])
        .collect();
    let batch = batch_of(&base_schema(), &rows, false);
    h.table.write(&[batch], BTreeMap::new()).await.unwrap();
    h.table.delete_where(pred).await.unwrap();
    let snap = h.table.snapshot(&VersionSpec::Head).await.unwrap();
    rows_of(&snap.read_all().await.unwrap())
        .iter()
        .any(|r| r[1] == Cell::Int(0))
}

/// Was: segment statistics ignored NaN, but `Predicate::may_match` takes min/max as bounds of
/// every non-null value, while `evaluate` (Arrow kernels, IEEE total order) ranks NaN
/// above everything. So `v > 1` deletes a NaN row alone in its segment (no bounds: the
/// segment is read) but not one that shares its segment with a 0.0 (max 0.0: skipped).
#[tokio::test]
async fn delete_where_treats_nan_the_same_whatever_shares_its_segment() {
    let pred = Predicate::cmp("v", CmpOp::Gt, 1.0);
    let alone = survives(&[f64::NAN], &pred).await;
    let with_zero = survives(&[f64::NAN, 0.0], &pred).await;
    assert_eq!(
        alone, with_zero,
        "NaN row survives `{pred}`: alone {alone}, next to 0.0 {with_zero}"
    );
}

/// Was: `may_match` pruned `v <> x` when min == max == x by `Value`'s `PartialEq` (IEEE:
/// 0.0 == -0.0), while `evaluate` compares bits (Arrow: 0.0 <> -0.0). So `v <> -0.0`
/// keeps a 0.0 alone in its segment but deletes it next to a 1.0.
#[tokio::test]
async fn delete_where_treats_signed_zeros_the_same_whatever_shares_their_segment() {
    let pred = Predicate::cmp("v", CmpOp::NotEq, -0.0);
    let alone = survives(&[0.0], &pred).await;
    let with_one = survives(&[0.0, 1.0], &pred).await;
    assert_eq!(
        alone, with_one,
        "0.0 row survives `{pred}`: alone {alone}, next to 1.0 {with_one}"
    );
}

/// Was: an infinite float became a segment bound (`ColumnStats` dropped only NaN), and
/// serde_json wrote a non-finite `Value::Float` as `null`, which it cannot read back:
/// the committed version record no longer decodes, so every later read that replays it
/// (a fresh handle, `list_versions`) fails with `CorruptMetadata`.
#[tokio::test]
async fn infinite_floats_keep_versions_readable() {
    let h = Harness::new(case(true, 1)).await;
    let rows = vec![vec![
        Cell::Str("a".into()),
        Cell::Int(1),
        Cell::float(f64::INFINITY),
    ]];
    let batch = batch_of(&base_schema(), &rows, false);
    h.table.write(&[batch], BTreeMap::new()).await.unwrap();
    let versions = h.table.list_versions().await;
    assert!(versions.is_ok(), "{versions:?}");
    let fresh = h.catalog.open_table(NAME).await.unwrap();
    let snap = fresh.snapshot(&VersionSpec::Head).await;
    let snap = snap.unwrap_or_else(|e| panic!("reading the head after writing inf: {e:?}"));
    assert_eq!(rows_of(&snap.read_all().await.unwrap()), rows);
}

/// Regression test (bug also found by the model; fixed in cc03f27): `head_version` probed
/// from the handle's cached version through `versions/` and stopped at the first gap,
/// and vacuum left a gap above every tagged version it kept below its cut. So a handle
/// that last saw a tagged version took it for the head, and its next write was
/// "committed" into the gap (`put_if_absent` on the vacuumed version 2, below the head),
/// invisible at the head.
#[tokio::test]
async fn a_handle_that_last_saw_a_tagged_version_finds_the_head_after_vacuum() {
    let h = Harness::new(case(true, 1)).await;
    let idle = h.catalog.open_table(NAME).await.unwrap();
    idle.snapshot(&VersionSpec::Head).await.unwrap(); // caches version 1
    let t = &h.table;
    let batch = |t: i64| {
        let rows = vec![vec![Cell::Str("a".into()), Cell::Int(t), Cell::Null]];
        batch_of(&base_schema(), &rows, false)
    };
    t.write(&[batch(1)], BTreeMap::new()).await.unwrap(); // 2
    t.write(&[batch(2)], BTreeMap::new()).await.unwrap(); // 3
    t.create_tag("keep", &VersionSpec::Version(1))
        .await
        .unwrap();
    let policy = VacuumPolicy {
        keep_last: Some(1),
        keep_within_ms: None,
    };
    let report = t.vacuum(&policy).await.unwrap(); // 4: keeps 1 (tagged), 3 and 4
    assert_eq!(report.version, Some(4));
    assert_eq!(
        idle.head_version().await.unwrap(),
        4,
        "head seen by the idle handle"
    );
    let outcome = idle.write(&[batch(3)], BTreeMap::new()).await.unwrap();
    let WriteOutcome::Committed(info) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(info.version, 5, "version committed by the idle handle");
}

/// Regression test (found with the one above): the same gap defeated the head hint
/// (written every 32 versions) for every new handle.
#[tokio::test]
async fn a_fresh_handle_finds_the_head_when_the_hinted_version_is_tagged_and_kept() {
    let h = Harness::new(case(true, 1)).await;
    let t = &h.table;
    for i in 0..33 {
        let rows = vec![vec![Cell::Str("a".into()), Cell::Int(i), Cell::Null]];
        let batch = batch_of(&base_schema(), &rows, false);
        t.write(&[batch], BTreeMap::new()).await.unwrap(); // 2..=34; hint at 32
    }
    t.create_tag("keep", &VersionSpec::Version(32))
        .await
        .unwrap();
    let policy = VacuumPolicy {
        keep_last: Some(1),
        keep_within_ms: None,
    };
    assert_eq!(t.vacuum(&policy).await.unwrap().version, Some(35));
    let fresh = h.catalog.open_table(NAME).await.unwrap();
    assert_eq!(fresh.head_version().await.unwrap(), 35);
}
