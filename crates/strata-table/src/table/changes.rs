//! The change feed: the rows each version inserted, deleted or replaced.
//!
//! A version's change is the difference between the manifests of `v - 1` and `v`, computed
//! from what differs between them, never from the whole table:
//! - a segment live at `v` and not at `v - 1`: its live rows were inserted;
//! - a segment live at `v - 1` and not at `v`: its live rows were deleted;
//! - a segment live at both with another deletion vector: the rows newly in the vector
//!   were deleted, the rows no longer in it (a rollback) inserted again.
//!
//! Shards whose segment maps are shared between the two manifests are not looked at.
//! Only the rows named are read (the deletion vectors become Parquet row selections).
//! When a version both removes and adds rows, rows are paired by primary key: a key
//! removed and added is an `update_before`/`update_after` pair, or nothing at all when
//! the row is the same on both sides (a rollback across a compaction re-adds the rows it
//! removes). Compactions, vacuums, column additions and the dataset's creation change no
//! row and yield nothing. A rollback is a change like any other: its diff against the
//! version before it.

use std::collections::HashMap;
use std::fmt;

use arrow::array::{StringArray, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::row::{RowConverter, SortField};
use futures::stream::BoxStream;

use super::*;

/// The column naming what happened to a row.
pub const CHANGE_TYPE: &str = "_change_type";
/// The column holding the version that made the change.
pub const COMMIT_VERSION: &str = "_commit_version";
/// The column holding that version's commit time.
pub const COMMIT_TIMESTAMP: &str = "_commit_timestamp";

/// What happened to a row, as `_change_type` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Insert,
    Delete,
    UpdateBefore,
    UpdateAfter,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Insert => "insert",
            ChangeType::Delete => "delete",
            ChangeType::UpdateBefore => "update_before",
            ChangeType::UpdateAfter => "update_after",
        }
    }
}

/// The schema of change rows: the table's columns, then the three change columns.
pub fn changes_schema(table: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, false));
    fields.push(Field::new(COMMIT_VERSION, DataType::UInt64, false));
    fields.push(Field::new(
        COMMIT_TIMESTAMP,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// One version's changes: its rows as a stream of batches of [`changes_schema`].
pub struct VersionChanges {
    pub version: u64,
    pub timestamp_ms: i64,
    pub operation: Operation,
    pub schema: SchemaRef,
    pub rows: BoxStream<'static, Result<RecordBatch>>,
}

impl fmt::Debug for VersionChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VersionChanges")
            .field("version", &self.version)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

/// Walks the versions of a table one after another from a starting version, keeping the
/// manifest of the version before the next one (so each step reads one record).
#[derive(Debug)]
pub struct ChangeCursor {
    table: Table,
    /// The manifest of `next - 1`.
    prev: Arc<Manifest>,
    next: u64,
}

/// Rows of one segment named by a bitmap of row positions.
struct Part {
    meta: Arc<SegmentMeta>,
    rows: RoaringBitmap,
}

impl ChangeCursor {
    /// A cursor whose first step yields the changes of version `from` (1 or more).
    /// Fails with [`Error::ChangesVacuumed`] when the version before `from` is gone, and
    /// with [`Error::VersionNotFound`] when `from` is beyond the head plus one.
    pub async fn open(table: &Table, from: u64) -> Result<Self> {
        let from = from.max(1);
        let head = table.head_version().await?;
        if from > head + 1 {
            return Err(Error::VersionNotFound {
                dataset: table.name().to_string(),
                version: from,
                head,
            });
        }
        // The changes of `v` need the manifest of `v - 1`: vacuum keeps versions from
        // `oldest` on, so changes are readable from `oldest + 1` (from 1 if it kept all).
        let oldest = table.head().await?.retention.oldest;
        if oldest > 1 && from <= oldest {
            return Err(table.changes_vacuumed(from).await);
        }
        let prev = if from == 1 {
            Arc::new(Manifest::empty(table.spec().schema.clone()))
        } else {
            match table.manifest(from - 1).await {
                Ok(m) => m,
                Err(Error::VersionVacuumed { .. }) => {
                    return Err(table.changes_vacuumed(from).await);
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            table: table.clone(),
            prev,
            next: from,
        })
    }

    /// The version whose changes the next step yields.
    pub fn position(&self) -> u64 {
        self.next
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The changes of the next version, if it is committed; `schema` (the table's columns
    /// wanted; its key columns at least) defaults to that version's schema.
    pub async fn step(&mut self, schema: Option<SchemaRef>) -> Result<Option<VersionChanges>> {
        let v = self.next;
        let record = match self.table.record(v).await? {
            Some(record) => record,
            None => {
                let head = self.table.head_version().await?;
                if v > head {
                    return Ok(None);
                }
                // Committed between the two reads, or vacuumed: the log is contiguous up
                // to the head, so a record still missing now was removed.
                match self.table.record(v).await? {
                    Some(record) => record,
                    None => return Err(self.table.changes_vacuumed(v).await),
                }
            }
        };
        let cur = if record.base.is_some() {
            self.table.manifest(v).await?
        } else {
            let mut m = (*self.prev).clone();
            m.apply(&record)?;
            Arc::new(m)
        };
        let schema = schema.unwrap_or_else(|| cur.schema.clone());
        let out = changes_schema(&schema);
        let changes_rows = !matches!(
            record.operation,
            Operation::Create
                | Operation::Compact { .. }
                | Operation::Vacuum { .. }
                | Operation::AddColumn { .. }
        );
        let (removed, added) = if changes_rows {
            diff(&self.prev, &cur)
        } else {
            (vec![], vec![])
        };
        let stamp = Stamp {
            version: v,
            timestamp_ms: record.timestamp_ms,
        };
        let rows = if removed.is_empty() || added.is_empty() {
            let (parts, kind) = if removed.is_empty() {
                (added, ChangeType::Insert)
            } else {
                (removed, ChangeType::Delete)
            };
            self.stream_parts(parts, schema, out.clone(), stamp, kind)
        } else {
            let rows = self
                .paired(removed, added, schema, out.clone(), stamp)
                .await?;
            futures::stream::iter(rows.into_iter().map(Ok)).boxed()
        };
        self.prev = cur;
        self.next = v + 1;
        Ok(Some(VersionChanges {
            version: v,
            timestamp_ms: record.timestamp_ms,
            operation: record.operation,
            schema: out,
            rows,
        }))
    }

    /// One kind of change, streamed segment by segment (memory: a few segments' rows).
    fn stream_parts(
        &self,
        parts: Vec<Part>,
        schema: SchemaRef,
        out: SchemaRef,
        stamp: Stamp,
        kind: ChangeType,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        let table = self.table.clone();
        let columns: Vec<usize> = (0..schema.fields().len()).collect();
        futures::stream::iter(parts)
            .map(move |part| {
                let (table, schema, columns) = (table.clone(), schema.clone(), columns.clone());
                async move { read_part(&table, &part, &schema, &columns, stamp.version).await }
            })
            .buffered(self.table.options().read_parallelism.max(1))
            .map_ok(move |batches| {
                let out = out.clone();
                futures::stream::iter(
                    batches
                        .into_iter()
                        .filter(|b| b.num_rows() > 0)
                        .map(move |b| label(&out, &b, &vec![kind; b.num_rows()], stamp)),
                )
            })
            .try_flatten()
            .boxed()
    }

    /// Removed and added rows of one version paired by primary key (memory: the change).
    async fn paired(
        &self,
        removed: Vec<Part>,
        added: Vec<Part>,
        schema: SchemaRef,
        out: SchemaRef,
        stamp: Stamp,
    ) -> Result<Vec<RecordBatch>> {
        let columns: Vec<usize> = (0..schema.fields().len()).collect();
        let mut sides = Vec::with_capacity(2);
        for parts in [removed, added] {
            let mut rows = Vec::new();
            for part in &parts {
                rows.extend(read_part(&self.table, part, &schema, &columns, stamp.version).await?);
            }
            sides.push(compute::concat_batches(&schema, &rows)?);
        }
        let (before, after) = (&sides[0], &sides[1]);
        let keys = KeyCodec::new(
            &schema,
            &self.table.spec().partition_key,
            &self.table.spec().row_key,
        )?;
        let (kb, ka) = (keys.encode(before)?, keys.encode(after)?);
        let whole = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let (wb, wa) = (
            whole.convert_columns(before.columns())?,
            whole.convert_columns(after.columns())?,
        );
        let by_key: HashMap<&[u8], usize> = (0..before.num_rows())
            .map(|i| (kb.row(i).data(), i))
            .collect();
        let mut before_kind = vec![ChangeType::Delete; before.num_rows()];
        let mut after_kind = vec![ChangeType::Insert; after.num_rows()];
        let mut keep_before = vec![true; before.num_rows()];
        let mut keep_after = vec![true; after.num_rows()];
        for (j, kind) in after_kind.iter_mut().enumerate() {
            if let Some(&i) = by_key.get(ka.row(j).data()) {
                if wb.row(i) == wa.row(j) {
                    keep_before[i] = false;
                    keep_after[j] = false;
                } else {
                    before_kind[i] = ChangeType::UpdateBefore;
                    *kind = ChangeType::UpdateAfter;
                }
            }
        }
        let mut batches = Vec::with_capacity(2);
        for (batch, kinds, keep) in [
            (before, before_kind, keep_before),
            (after, after_kind, keep_after),
        ] {
            let keep = arrow::array::BooleanArray::from(keep);
            let rows = compute::filter_record_batch(batch, &keep)?;
            let kinds: Vec<ChangeType> = kinds
                .into_iter()
                .zip(keep.values().iter())
                .filter_map(|(k, kept)| kept.then_some(k))
                .collect();
            if rows.num_rows() > 0 {
                batches.push(label(&out, &rows, &kinds, stamp)?);
            }
        }
        Ok(batches)
    }
}

#[derive(Clone, Copy)]
struct Stamp {
    version: u64,
    timestamp_ms: i64,
}

/// `rows` with the change columns appended.
fn label(
    out: &SchemaRef,
    rows: &RecordBatch,
    kinds: &[ChangeType],
    stamp: Stamp,
) -> Result<RecordBatch> {
    let n = rows.num_rows();
    let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
    cols.push(Arc::new(StringArray::from_iter_values(
        kinds.iter().map(|k| k.as_str()),
    )));
    cols.push(Arc::new(UInt64Array::from_value(stamp.version, n)));
    cols.push(Arc::new(
        TimestampMillisecondArray::from_value(stamp.timestamp_ms, n).with_timezone("UTC"),
    ));
    Ok(RecordBatch::try_new(out.clone(), cols)?)
}

/// Every row position of a segment of `rows` rows.
fn all_rows(rows: u64) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..rows as u32);
    all
}

/// Reads the rows of `part` (all of `columns`, in segment order) for the changes of
/// `version`.
async fn read_part(
    table: &Table,
    part: &Part,
    schema: &SchemaRef,
    columns: &[usize],
    version: u64,
) -> Result<Vec<RecordBatch>> {
    let skip = all_rows(part.meta.rows) - &part.rows;
    let blobs = table.inner.blobs.clone();
    match read_segment(blobs, &part.meta, schema, columns, Some(&skip)).await {
        // Vacuum deleted the segment under a reader that fell behind (a segment missing
        // from a version vacuum kept is another matter, reported as it is).
        Err(Error::Storage(e)) if e.is_not_found() => {
            let oldest = table.head().await?.retention.oldest;
            if version <= oldest {
                Err(table.changes_vacuumed(version).await)
            } else {
                Err(Error::Storage(e))
            }
        }
        r => r,
    }
}

/// The rows removed and added between two manifests, by segment.
fn diff(prev: &Manifest, cur: &Manifest) -> (Vec<Part>, Vec<Part>) {
    let all = |seg: &LiveSegment| {
        let mut rows = all_rows(seg.meta.rows);
        if let Some(d) = &seg.deleted {
            rows -= d.as_ref();
        }
        rows
    };
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let push = |to: &mut Vec<Part>, meta: &Arc<SegmentMeta>, rows: RoaringBitmap| {
        if !rows.is_empty() {
            to.push(Part {
                meta: meta.clone(),
                rows,
            });
        }
    };
    for shard in prev.shard_ids(cur) {
        if prev.shares_shard(cur, shard) {
            continue;
        }
        for old in prev.shard_segments(shard) {
            match cur.segment(shard, &old.meta.id) {
                None => push(&mut removed, &old.meta, all(old)),
                Some(new) => {
                    let same = match (&old.deleted, &new.deleted) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                        _ => false,
                    };
                    if !same {
                        let empty = RoaringBitmap::new();
                        let was = old.deleted.as_deref().unwrap_or(&empty);
                        let now = new.deleted.as_deref().unwrap_or(&empty);
                        push(&mut removed, &old.meta, now - was);
                        push(&mut added, &old.meta, was - now);
                    }
                }
            }
        }
        for new in cur.shard_segments(shard) {
            if prev.segment(shard, &new.meta.id).is_none() {
                push(&mut added, &new.meta, all(new));
            }
        }
    }
    (removed, added)
}

impl Table {
    /// The error for a change feed position whose versions vacuum removed.
    pub(super) async fn changes_vacuumed(&self, version: u64) -> Error {
        let oldest = match self.head().await {
            Ok(m) => m.retention.oldest,
            Err(e) => return e,
        };
        Error::ChangesVacuumed {
            dataset: self.name().to_string(),
            version,
            // The changes of `oldest` need the manifest before it, which is gone.
            readable: oldest + 1,
        }
    }

    /// The changes of versions `from..=to`, one version after another, as batches of
    /// [`changes_schema`]`(schema)`.
    pub fn changes(
        &self,
        from: u64,
        to: u64,
        schema: SchemaRef,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        let table = self.clone();
        let start = async move { ChangeCursor::open(&table, from).await };
        futures::stream::once(start)
            .map_ok(move |cursor| {
                let schema = schema.clone();
                futures::stream::try_unfold(cursor, move |mut cursor| {
                    let schema = schema.clone();
                    async move {
                        if cursor.position() > to {
                            return Ok::<_, Error>(None);
                        }
                        match cursor.step(Some(schema)).await? {
                            Some(changes) => Ok(Some((changes.rows, cursor))),
                            None => Ok(None),
                        }
                    }
                })
                .try_flatten()
            })
            .try_flatten()
            .boxed()
    }
}
