//! [`StrataTable`]: a DataFusion [`TableProvider`] for one dataset at one version.
//!
//! `scan` prunes in two steps before any byte of a segment is read:
//! 1. shards: equality / `IN` filters on every partition key column give the literal
//!    keys; their shards (the same xxh3 hash the writer uses) are the only ones read;
//! 2. segments: the manifest's per-column min/max/null counts feed a DataFusion
//!    [`PruningPredicate`] built from all filters.
//!
//! The remaining segments become one [`PartitionedFile`] each (size from the manifest, so
//! no `head` request), spread over `target_partitions` groups by size, read by
//! DataFusion's [`ParquetSource`] with the filters as predicate (row group statistics,
//! page index, row filters). A segment's deletion vector travels as a file-level
//! [`ParquetRowSelection`] that DataFusion splits across row groups.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use parquet::file::metadata::PageIndexPolicy;
use strata_table::segment::{SegmentMeta, deletion_selection, shard_of_rows};
use strata_table::{LiveSegment, Snapshot, Table, VersionSpec};
use strata_types::Value;

use crate::cache::SegmentCache;
use crate::cached_scan::{CachedScanArgs, CachedScanExec, FillJob};
use crate::error::{Error, Result};
use crate::hooks::DatasetHooks;
use crate::object_store::BlobObjectStore;
use crate::run_aggregate::{SortedFile, SortedFiles};
use crate::sink::StrataSink;
use crate::views;

/// The object store URL segments are read under unless told otherwise.
pub const DEFAULT_STORE_URL: &str = "strata://store/";

/// Most partition key combinations (product of the literal lists) turned into shards;
/// beyond this the filter does not prune shards.
const MAX_KEY_COMBINATIONS: usize = 4096;

/// One dataset at one version, as a DataFusion table.
#[derive(Clone)]
pub struct StrataTable {
    snapshot: Snapshot,
    /// The snapshot's schema with strings and binaries as views (see [`crate::views`]).
    schema: SchemaRef,
    store_url: ObjectStoreUrl,
    /// Where `INSERT` commits go through; without hooks the table is read-only.
    hooks: Option<Arc<dyn DatasetHooks>>,
    /// True when the table reads the head (only then may it be written).
    at_head: bool,
}

impl fmt::Debug for StrataTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrataTable")
            .field("dataset", &self.snapshot.table().name())
            .field("version", &self.snapshot.version())
            .field("store_url", &self.store_url.as_str())
            .finish()
    }
}

/// What `scan` decided, for tests and `EXPLAIN ANALYZE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub dataset: String,
    pub version: u64,
    pub segments_total: usize,
    /// Segments left after shard pruning.
    pub segments_after_shards: usize,
    /// Segments left after statistics pruning (and dropping fully deleted segments).
    pub segments_scanned: usize,
    /// Bytes of all live segments, and of the segments left to scan (the scan reads
    /// only the projected columns' pages of those).
    pub bytes_total: u64,
    pub bytes_after_pruning: u64,
}

impl fmt::Display for PruneStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@v{}: segments total={} after_shard_pruning={} after_stats_pruning={}, segment bytes total={} after_pruning={}",
            self.dataset,
            self.version,
            self.segments_total,
            self.segments_after_shards,
            self.segments_scanned,
            self.bytes_total,
            self.bytes_after_pruning
        )
    }
}

/// The pruning decisions of the scans of one statement, collected through the
/// session's config extensions (the engine installs a fresh log per statement).
#[derive(Debug, Default)]
pub struct ScanLog(Mutex<Vec<PruneStats>>);

impl ScanLog {
    pub fn entries(&self) -> Vec<PruneStats> {
        self.0.lock().expect("scan log lock").clone()
    }
}

impl StrataTable {
    /// True when the table reads its dataset's head (not a version, tag or time).
    pub fn reads_head(&self) -> bool {
        self.at_head
    }

    /// The table at a version already resolved.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            schema: views::view_schema(&snapshot.schema()),
            snapshot,
            store_url: ObjectStoreUrl::parse(DEFAULT_STORE_URL).expect("valid default URL"),
            hooks: None,
            at_head: false,
        }
    }

    /// `table` at `version` (head, number, timestamp or tag).
    pub async fn at(table: &Table, version: VersionSpec) -> Result<Self> {
        let at_head = version == VersionSpec::Head;
        let mut t = Self::new(table.snapshot(&version).await?);
        t.at_head = at_head;
        Ok(t)
    }

    /// The table at its head, already known to be version `head` (no look at the
    /// version log).
    pub async fn at_known_head(table: &Table, head: u64) -> Result<Self> {
        let mut t = Self::new(table.known_snapshot(head).await?);
        t.at_head = true;
        Ok(t)
    }

    /// Lets `INSERT` write to the table (at the head only), committing through `hooks`.
    pub fn with_hooks(mut self, hooks: Arc<dyn DatasetHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Reads segments under `url` instead of [`DEFAULT_STORE_URL`]: needed when one
    /// session holds tables of catalogs on different blob stores.
    pub fn with_store_url(mut self, url: ObjectStoreUrl) -> Self {
        self.store_url = url;
        self
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }

    pub fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }

    /// Registers the table's blob store under its URL unless something is registered.
    pub fn ensure_store(&self, state: &dyn Session) {
        let env = state.runtime_env();
        if env.object_store(&self.store_url).is_err() {
            env.register_object_store(
                self.store_url.as_ref(),
                Arc::new(BlobObjectStore::new(self.snapshot.table().blobs().clone())),
            );
        }
    }

    /// The live segments `filters` (a conjunction) may match, and what pruning did.
    pub fn prune(&self, filters: &[Expr]) -> DfResult<(Vec<LiveSegment>, PruneStats)> {
        let manifest = self.snapshot.manifest();
        let mut stats = PruneStats {
            dataset: self.snapshot.table().name().to_string(),
            version: self.version(),
            segments_total: manifest.segment_count(),
            bytes_total: manifest.live_segments().map(|s| s.meta.bytes).sum(),
            ..Default::default()
        };
        let segments: Vec<LiveSegment> = match self.shards_for(filters)? {
            Some(shards) => shards
                .into_iter()
                .flat_map(|s| manifest.shard_segments(s).cloned())
                .collect(),
            None => manifest.live_segments().cloned().collect(),
        };
        stats.segments_after_shards = segments.len();
        let schema = self.schema();
        let keep = match self.pruning_predicate(filters)? {
            Some(pp) => pp.prune(&SegmentStatistics {
                schema: &schema,
                stored: &self.snapshot.schema(),
                segments: &segments,
            })?,
            None => vec![true; segments.len()],
        };
        let out: Vec<LiveSegment> = segments
            .into_iter()
            .zip(keep)
            .filter(|(s, keep)| *keep && s.live_rows() > 0)
            .map(|(s, _)| s)
            .collect();
        stats.segments_scanned = out.len();
        stats.bytes_after_pruning = out.iter().map(|s| s.meta.bytes).sum();
        Ok((out, stats))
    }

    /// A filter as a physical expression over the table's columns. Filters reach a
    /// provider with their columns qualified by the query's name for the table
    /// (`weather.ts`, `w.ts`); the schema here is unqualified.
    fn physical_expr(&self, expr: &Expr) -> DfResult<Arc<dyn PhysicalExpr>> {
        let df_schema = DFSchema::try_from(self.schema().as_ref().clone())?;
        create_physical_expr(
            &unnormalize_col(expr.clone()),
            &df_schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
    }

    fn pruning_predicate(&self, filters: &[Expr]) -> DfResult<Option<Arc<PruningPredicate>>> {
        let Some(expr) = conjunction(filters.iter().cloned()) else {
            return Ok(None);
        };
        let physical = self.physical_expr(&expr)?;
        // Expressions the pruning machinery cannot use simply do not prune.
        Ok(PruningPredicateBuilder::new()
            .with_file_schema(self.schema())
            .build(physical))
    }

    /// Shards the filters restrict the scan to, or `None` when they do not restrict it.
    fn shards_for(&self, filters: &[Expr]) -> DfResult<Option<BTreeSet<u32>>> {
        let spec = self.snapshot.table().spec();
        // Literals are hashed as stored, in the declared (not the view) types.
        let schema = self.snapshot.schema();
        let mut per_column: Vec<Vec<ScalarValue>> = Vec::new();
        for name in &spec.partition_key {
            let values = filters
                .iter()
                .flat_map(split_conjunction)
                .find_map(|e| key_literals(e).filter(|(c, _)| c == name).map(|(_, v)| v));
            let Some(values) = values else {
                return Ok(None);
            };
            let field = schema.field_with_name(name)?;
            // A literal that does not survive a round trip through the column type
            // could hash differently from the stored value: then do not prune.
            let mut cast = Vec::with_capacity(values.len());
            for v in values {
                if v.is_null() {
                    continue; // `key = NULL` matches no row
                }
                match v.cast_to(field.data_type()) {
                    Ok(c) if c.cast_to(&v.data_type()).ok().as_ref() == Some(&v) => cast.push(c),
                    _ => return Ok(None),
                }
            }
            per_column.push(cast);
        }
        let combos = per_column
            .iter()
            .try_fold(1usize, |acc, v| acc.checked_mul(v.len()))
            .unwrap_or(usize::MAX);
        if combos > MAX_KEY_COMBINATIONS {
            return Ok(None);
        }
        if combos == 0 {
            return Ok(Some(BTreeSet::new()));
        }
        // The cartesian product of the key literals, column by column.
        let mut rows: Vec<Vec<ScalarValue>> = vec![vec![]];
        for values in &per_column {
            rows = rows
                .into_iter()
                .flat_map(|r| {
                    values.iter().map(move |v| {
                        let mut r = r.clone();
                        r.push(v.clone());
                        r
                    })
                })
                .collect();
        }
        let fields: Vec<Field> = spec
            .partition_key
            .iter()
            .map(|n| schema.field_with_name(n).cloned())
            .collect::<Result<_, _>>()?;
        let columns: Vec<ArrayRef> = (0..fields.len())
            .map(|i| ScalarValue::iter_to_array(rows.iter().map(|r| r[i].clone())))
            .collect::<DfResult<_>>()?;
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let indices: Vec<usize> = (0..batch.num_columns()).collect();
        let shards = shard_of_rows(&batch, &indices, spec.shards)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(Some(shards.into_iter().collect()))
    }

    /// `segments` read by DataFusion's Parquet source: one file per segment, the
    /// deletion vector as a row selection, filters pushed into the reader.
    fn parquet_scan(
        &self,
        state: &dyn Session,
        segments: &[LiveSegment],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let stored = self.snapshot.schema();
        self.ensure_store(state);
        let env = state.runtime_env();
        // Segments are immutable and their paths unique, so their footers and page
        // indexes are cached across queries in the runtime's metadata cache.
        let readers = CachedParquetFileReaderFactory::new(
            env.object_store(&self.store_url)?,
            env.cache_manager.get_file_metadata_cache(),
        );
        // No predicate here: the filters reach the Parquet source through DataFusion's
        // physical filter pushdown (from the `FilterExec` above an `Inexact` scan), which
        // would otherwise conjoin them with a copy of themselves.
        let source = ParquetSource::new(schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone())
            .with_parquet_file_reader_factory(Arc::new(readers))
            .with_enable_page_index(true)
            .with_pushdown_filters(true);
        // Each file's rows are sorted by the primary key (for aggregations by runs).
        let sorted = state.config_options().extensions.get::<SortedFiles>();
        let key = self.sort_key();
        let footers = env.cache_manager.get_file_metadata_cache();
        let files: Vec<PartitionedFile> = segments
            .iter()
            .map(|s| {
                let file = segment_file(&s.meta)
                    .with_statistics(Arc::new(segment_statistics(&schema, &stored, s)));
                if let Some(sorted) = sorted {
                    sorted.record(
                        file.object_meta.location.as_ref(),
                        SortedFile {
                            key: key.clone(),
                            segment: s.meta.clone(),
                            stored: stored.clone(),
                            footers: footers.clone(),
                        },
                    );
                }
                match &s.deleted {
                    Some(dv) if !dv.is_empty() => file.with_extension(ParquetRowSelection::new(
                        deletion_selection(dv, s.meta.rows),
                    )),
                    _ => file,
                }
            })
            .collect();
        let (groups, statistics) = group_files(files, &schema, state.config().target_partitions())?;
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// Reads the footers and page indexes of the live segments into the runtime's
    /// Parquet metadata cache, as their first scans would, until what it read takes
    /// half the cache's limit. Returns how many segments it read.
    pub async fn load_segment_metadata(&self, state: &dyn Session) -> DfResult<usize> {
        self.ensure_store(state);
        let env = state.runtime_env();
        let store = env.object_store(&self.store_url)?;
        let cache = env.cache_manager.get_file_metadata_cache();
        let budget = cache.cache_limit() / 2;
        let (mut loaded, mut bytes) = (0, 0);
        for segment in self.snapshot.manifest().live_segments() {
            if bytes >= budget {
                break;
            }
            let file = segment_file(&segment.meta);
            let metadata = DFParquetMetadata::new(store.as_ref(), &file.object_meta)
                .with_file_metadata_cache(Some(cache.clone()))
                .with_page_index_policy(Some(PageIndexPolicy::Optional))
                .fetch_metadata()
                .await?;
            bytes += metadata.memory_size();
            loaded += 1;
        }
        Ok(loaded)
    }

    /// The primary key columns segments are sorted by.
    pub(crate) fn sort_key(&self) -> Arc<[String]> {
        self.snapshot
            .table()
            .spec()
            .primary_key()
            .map(String::from)
            .collect()
    }

    fn filter_prunes(&self, filter: &Expr) -> bool {
        let spec = self.snapshot.table().spec();
        let on_key = spec.partition_key.len() == 1
            && split_conjunction(filter)
                .into_iter()
                .filter_map(key_literals)
                .any(|(c, _)| c == spec.partition_key[0]);
        on_key
            || self
                .pruning_predicate(std::slice::from_ref(filter))
                .ok()
                .flatten()
                .is_some()
    }
}

/// The file of `segment` as scans and the metadata cache know it (the cache checks an
/// entry against the size and modification time).
fn segment_file(segment: &SegmentMeta) -> PartitionedFile {
    let mut file = PartitionedFile::new(segment.path.clone(), segment.bytes);
    if let Some(created) = chrono::DateTime::from_timestamp_millis(segment.created_ms) {
        file.object_meta.last_modified = created;
    }
    file
}

/// `col = lit`, `lit = col`, `col IN (lits)` and ORs of those on one column: the column
/// and the literals it may equal.
fn key_literals(expr: &Expr) -> Option<(String, Vec<ScalarValue>)> {
    match expr {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => match (b.left.as_ref(), b.right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                Some((c.name.clone(), vec![v.clone()]))
            }
            _ => None,
        },
        Expr::BinaryExpr(b) if b.op == Operator::Or => {
            let (lc, mut lv) = key_literals(&b.left)?;
            let (rc, rv) = key_literals(&b.right)?;
            (lc == rc).then(|| {
                lv.extend(rv);
                (lc, lv)
            })
        }
        Expr::InList(l) if !l.negated => {
            let Expr::Column(c) = l.expr.as_ref() else {
                return None;
            };
            let values = l
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some((c.name.clone(), values))
        }
        _ => None,
    }
}

/// Segment statistics from the manifest, one container per segment. They cover every
/// row of a segment, deleted or not: a superset of the live rows, so pruning is safe.
struct SegmentStatistics<'a> {
    /// The table's schema (views) and the stored one.
    schema: &'a Schema,
    stored: &'a Schema,
    segments: &'a [LiveSegment],
}

impl SegmentStatistics<'_> {
    fn bound(&self, column: &Column, min: bool) -> Option<ArrayRef> {
        let dt = self.schema.field_with_name(&column.name).ok()?.data_type();
        let stored = self.stored.field_with_name(&column.name).ok()?.data_type();
        let arrays = self
            .segments
            .iter()
            .map(|s| {
                let st = s.meta.column_stats(&column.name);
                let v = if min { st.min } else { st.max };
                stat_array(v, stored, dt)
            })
            .collect::<Option<Vec<_>>>()?;
        let refs: Vec<&dyn arrow::array::Array> = arrays.iter().map(|a| a.as_ref()).collect();
        arrow::compute::concat(&refs).ok()
    }
}

impl PruningStatistics for SegmentStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, true)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, false)
    }

    fn num_containers(&self) -> usize {
        self.segments.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.schema.field_with_name(&column.name).ok()?;
        Some(Arc::new(UInt64Array::from_iter_values(
            self.segments
                .iter()
                .map(|s| s.meta.column_stats(&column.name).null_count),
        )))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.segments.iter().map(|s| s.meta.rows),
        )))
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

/// What the manifest knows of a segment's live rows, as DataFusion statistics (they let
/// `count(*)` be answered without a read and TopK filters skip whole segments).
///
/// The row count is exact: deleted rows are counted by the deletion vector. The column
/// bounds and null counts cover every row written, deleted or not, so they are exact
/// only for segments without deletions; float bounds are never exact (the manifest
/// orders floats by IEEE total order, where `-0.0 < 0.0` and NaN is largest).
fn segment_statistics(schema: &Schema, stored: &Schema, segment: &LiveSegment) -> Statistics {
    let whole = segment.deleted.as_ref().is_none_or(|d| d.is_empty());
    let live = segment.live_rows();
    let bound = |v: Option<Value>, stored: &DataType, dt: &DataType, exact: bool| {
        v.and_then(|v| stat_array(Some(v), stored, dt))
            .and_then(|a| ScalarValue::try_from_array(&a, 0).ok())
            .map_or(Precision::Absent, |v| precision(exact, v))
    };
    let column_statistics = schema
        .fields()
        .iter()
        .zip(stored.fields())
        .map(|(f, s)| {
            let st = segment.meta.column_stats(f.name());
            let exact_bounds = whole && !f.data_type().is_floating();
            let (dt, sdt) = (f.data_type(), s.data_type());
            // A sum is exact over a whole segment (no deleted rows).
            let sum_value = match (whole, st.sum, dt) {
                (true, Some(Value::Float(v)), DataType::Float64) => {
                    Precision::Exact(ScalarValue::Float64(Some(v)))
                }
                _ => Precision::Absent,
            };
            ColumnStatistics {
                null_count: precision(whole, st.null_count as usize),
                min_value: bound(st.min, sdt, dt, exact_bounds),
                max_value: bound(st.max, sdt, dt, exact_bounds),
                sum_value,
                ..ColumnStatistics::new_unknown()
            }
        })
        .collect();
    let bytes = segment.meta.bytes as f64 * live as f64 / segment.meta.rows.max(1) as f64;
    Statistics {
        num_rows: Precision::Exact(live as usize),
        total_byte_size: Precision::Inexact(bytes as usize),
        column_statistics,
    }
}

/// A manifest bound (absent: null) as a one-value array of `dt`, built in the stored
/// type `stored` first.
fn stat_array(v: Option<Value>, stored: &DataType, dt: &DataType) -> Option<ArrayRef> {
    let array = v.unwrap_or(Value::Null).to_array(stored).ok()?;
    if stored == dt {
        Some(array)
    } else {
        arrow::compute::cast(&array, dt).ok()
    }
}

fn precision<T: fmt::Debug + Clone + PartialEq + Eq + PartialOrd>(
    exact: bool,
    v: T,
) -> Precision<T> {
    if exact {
        Precision::Exact(v)
    } else {
        Precision::Inexact(v)
    }
}

/// Spreads `items` over at most `n` groups, heaviest first onto the lightest group.
fn balance<T>(mut items: Vec<T>, weight: impl Fn(&T) -> u64, n: usize) -> Vec<Vec<T>> {
    let n = n.clamp(1, items.len().max(1));
    items.sort_by_key(|i| std::cmp::Reverse(weight(i)));
    let mut groups: Vec<(u64, Vec<T>)> = (0..n).map(|_| (0, vec![])).collect();
    for item in items {
        let g = groups
            .iter_mut()
            .min_by_key(|(w, _)| *w)
            .expect("at least one group");
        g.0 += weight(&item);
        g.1.push(item);
    }
    groups
        .into_iter()
        .map(|(_, items)| items)
        .filter(|items| !items.is_empty())
        .collect()
}

/// Spreads files over at most `n` groups by size; with each group's statistics and the
/// whole scan's (merged from the files').
fn group_files(
    files: Vec<PartitionedFile>,
    schema: &Schema,
    n: usize,
) -> DfResult<(Vec<FileGroup>, Statistics)> {
    let groups = balance(files, |f| f.object_meta.size, n)
        .into_iter()
        .map(|files| {
            let stats = Statistics::try_merge_iter(
                files.iter().filter_map(|f| f.statistics.as_deref()),
                schema,
            )?;
            Ok(FileGroup::new(files).with_statistics(Arc::new(stats)))
        })
        .collect::<DfResult<Vec<_>>>()?;
    let total = Statistics::try_merge_iter(
        groups.iter().filter_map(|g| g.file_statistics(None)),
        schema,
    )?;
    Ok((groups, total))
}

#[async_trait]
impl TableProvider for StrataTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.filter_prunes(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let stored = self.snapshot.schema();
        let (segments, stats) = self.prune(filters)?;
        tracing::debug!(
            dataset = %self.snapshot.table().name(),
            version = self.version(),
            total = stats.segments_total,
            after_shards = stats.segments_after_shards,
            scanned = stats.segments_scanned,
            "pruned segments"
        );
        if let Some(log) = state.config().get_extension::<ScanLog>() {
            log.0.lock().expect("scan log lock").push(stats.clone());
        }
        if segments.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema,
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let Some(cache) = state
            .config()
            .get_extension::<SegmentCache>()
            .filter(|c| c.capacity() > 0)
        else {
            return self.parquet_scan(state, &segments, projection, limit);
        };
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        // Segments whose projected columns are all cached are read from memory. The
        // others are read as they always are (the Parquet source reads only what the
        // filters leave), and their columns are decoded into the cache off the query
        // path for the queries after this one: a cold cache costs a query nothing.
        let (memory, parquet): (Vec<LiveSegment>, Vec<LiveSegment>) =
            segments.into_iter().partition(|s| {
                cache.contains_all(&s.meta.path, columns.iter().map(|&c| schema.field(c)))
            });
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !memory.is_empty() {
            let with_stats: Vec<(LiveSegment, Statistics)> = memory
                .into_iter()
                .map(|s| {
                    let st = segment_statistics(&schema, &stored, &s);
                    (s, st)
                })
                .collect();
            let groups = balance(
                with_stats,
                |(s, _)| s.meta.rows,
                state.config().target_partitions(),
            );
            plans.push(Arc::new(CachedScanExec::new(CachedScanArgs {
                cache: cache.clone(),
                blobs: self.snapshot.table().blobs().clone(),
                stored: stored.clone(),
                table: schema.clone(),
                projection: columns.clone(),
                predicate: self.pruning_predicate(filters)?,
                key: self.sort_key(),
                groups,
                limit,
            })?));
        }
        if !parquet.is_empty() {
            plans.push(self.parquet_scan(state, &parquet, projection, limit)?);
            cache.fill_later(FillJob {
                blobs: self.snapshot.table().blobs().clone(),
                stored,
                table: schema,
                columns,
                segments: parquet,
            });
        }
        UnionExec::try_new(plans)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let name = self.snapshot.table().name();
        let Some(hooks) = self.hooks.clone() else {
            return Err(Error::Unsupported(format!("dataset {name:?} is read-only here")).into());
        };
        if !self.at_head {
            return Err(Error::plan(format!(
                "cannot write to version {} of {name:?}: only the head takes writes",
                self.version()
            ))
            .into());
        }
        if insert_op != InsertOp::Append {
            return Err(Error::Unsupported(format!(
                "{insert_op} on {name:?}: use INSERT INTO (rows with an existing primary key replace it)"
            ))
            .into());
        }
        let sink = StrataSink::new(self.snapshot.table().clone(), self.schema(), hooks);
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}
