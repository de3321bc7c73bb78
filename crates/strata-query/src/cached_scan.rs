//! [`CachedScanExec`]: a scan of segments through the [`SegmentCache`].
//!
//! Each partition reads its segments in turn. A segment's projected columns come from
//! the cache; the ones missing are decoded from the segment (every row, as the cache
//! keeps them) and kept. Then the segment is emitted in zones of [`ZONE_ROWS`] rows:
//! zones the scan's filters exclude by the zone maps (min, max, null count) are
//! skipped without touching their values, and the version's deletion vector is applied
//! to the rest. Batches are zero-copy slices of the cached arrays unless rows are
//! deleted in the zone.
//!
//! The filters stay `Inexact` (DataFusion filters the rows above the scan), so zone
//! maps only ever skip zones no row of which can match.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt64Array};
use arrow::compute::{SortOptions, cast, filter_record_batch, sort_to_indices};
use arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, ScalarValue, Statistics};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_expr_common::physical_expr::{
    snapshot_generation, snapshot_physical_expr,
};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions, SchedulingType,
};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::sort_pushdown::SortOrderPushdownResult;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use roaring::RoaringBitmap;
use strata_storage::BlobStore;
use strata_table::LiveSegment;
use strata_table::segment::read_segment;

use crate::cache::{CachedColumn, SegmentCache, ZONE_ROWS, into_zones};

/// What a cached scan reads: shared by its partitions' streams.
#[derive(Clone)]
struct Scan {
    cache: Arc<SegmentCache>,
    blobs: Arc<dyn BlobStore>,
    /// The table's stored schema and the schema it presents (views), every column.
    stored: SchemaRef,
    table: SchemaRef,
    /// Table columns read, and the output schema (those columns of `table`).
    projection: Vec<usize>,
    schema: SchemaRef,
    predicate: Option<Arc<PruningPredicate>>,
    /// The primary key columns each segment's rows are sorted by.
    key: Arc<[String]>,
    /// Filters over the output pushed down at planning whose value changes while the
    /// query runs (a TopK's current bound): looked at again whenever it changed.
    dynamic: Vec<Arc<dyn PhysicalExpr>>,
    /// The order a sort above wants (an output column and its direction): each
    /// segment's zones are visited best first by their zone maps, so a TopK's bound is
    /// tight after a zone or two and prunes the rest.
    order: Option<(usize, SortOptions)>,
}

/// Counters of one partition.
struct Metrics {
    output_rows: Count,
    cached: Count,
    decoded: Count,
    zones_scanned: Count,
    zones_pruned: Count,
}

impl Metrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name| MetricBuilder::new(set).counter(name, partition);
        Self {
            output_rows: MetricBuilder::new(set).output_rows(partition),
            cached: counter("columns_from_cache"),
            decoded: counter("columns_decoded"),
            zones_scanned: counter("zones_scanned"),
            zones_pruned: counter("zones_pruned"),
        }
    }
}

fn external(e: strata_table::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl Scan {
    /// The projected columns of `seg`, from the cache or decoded (and then kept).
    async fn columns(&self, seg: &LiveSegment, m: &Metrics) -> DfResult<Vec<Arc<CachedColumn>>> {
        let (columns, decoded) = load_columns(
            &self.cache,
            &self.blobs,
            seg,
            &self.stored,
            &self.table,
            &self.projection,
        )
        .await?;
        m.cached.add(columns.len() - decoded);
        m.decoded.add(decoded);
        Ok(columns)
    }

    /// `seg` ready to emit: its columns, and the zones its static filters may match
    /// (`None` when every row of it is deleted).
    async fn open(&self, seg: LiveSegment, m: &Metrics) -> DfResult<Option<Open>> {
        let rows = seg.meta.rows as usize;
        if seg
            .deleted
            .as_deref()
            .is_some_and(|d| d.len() >= seg.meta.rows)
        {
            return Ok(None);
        }
        let columns = self.columns(&seg, m).await?;
        let keep = match &self.predicate {
            Some(p) if !columns.is_empty() => p.prune(&ZoneStatistics {
                scan: self,
                columns: &columns,
                rows,
                zones: 0..rows.div_ceil(ZONE_ROWS),
            })?,
            _ => vec![true; rows.div_ceil(ZONE_ROWS)],
        };
        let zones = keep.len();
        let order = match self.order {
            Some((column, options)) => columns
                .get(column)
                .and_then(|c| zone_order(c, options))
                .unwrap_or_else(|| (0..zones).collect()),
            None => (0..zones).collect(),
        };
        Ok(Some(Open {
            seg,
            columns,
            keep,
            order,
            next: 0,
            generations: vec![None; self.dynamic.len()],
        }))
    }

    /// The next batch of live rows of `open`, or `None` when its zones are done.
    fn next_batch(&self, open: &mut Open, m: &Metrics) -> DfResult<Option<RecordBatch>> {
        let rows = open.seg.meta.rows as usize;
        while open.next < open.order.len() {
            let z = open.order[open.next];
            open.next += 1;
            if !self.dynamic.is_empty() {
                self.prune_dynamic(open, z)?;
            }
            if !open.keep[z] {
                m.zones_pruned.add(1);
                continue;
            }
            m.zones_scanned.add(1);
            let start = z * ZONE_ROWS;
            let len = ZONE_ROWS.min(rows - start);
            let arrays: Vec<ArrayRef> = open.columns.iter().map(|c| c.zone(z).clone()).collect();
            let batch = RecordBatch::try_new_with_options(
                self.schema.clone(),
                arrays,
                &RecordBatchOptions::new().with_row_count(Some(len)),
            )?;
            let deleted = open.seg.deleted.as_deref().filter(|d| !d.is_empty());
            let batch = match deleted.and_then(|dv| live_mask(dv, start, len)) {
                Some(mask) => filter_record_batch(&batch, &mask)?,
                None => batch,
            };
            if batch.num_rows() > 0 {
                m.output_rows.add(batch.num_rows());
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }

    /// Drops from `open` the zones not visited yet (from `from` on in storage order, or
    /// all of them in a sort's order) that the filters pushed down at run time (a
    /// TopK's bound so far, say) exclude as they stand now. Such a filter only narrows,
    /// so a zone it excludes stays excluded: each filter is looked at again only when
    /// it changed (its generation moved), and then over every zone left.
    fn prune_dynamic(&self, open: &mut Open, from: usize) -> DfResult<()> {
        if open.columns.is_empty() {
            return Ok(());
        }
        let from = if self.order.is_some() { 0 } else { from };
        let zones = from..open.keep.len();
        for (expr, seen) in self.dynamic.iter().zip(open.generations.iter_mut()) {
            let generation = snapshot_generation(expr);
            if *seen == Some(generation) {
                continue;
            }
            *seen = Some(generation);
            let now = snapshot_physical_expr(expr.clone())?;
            // A filter the pruning machinery cannot read prunes nothing.
            let Some(p) = PruningPredicateBuilder::new()
                .with_file_schema(self.schema.clone())
                .build(now)
            else {
                continue;
            };
            if p.always_true() {
                continue;
            }
            let keep = p.prune(&ZoneStatistics {
                scan: self,
                columns: &open.columns,
                rows: open.seg.meta.rows as usize,
                zones: zones.clone(),
            })?;
            for (z, keep) in zones.clone().zip(keep) {
                open.keep[z] &= keep;
            }
        }
        Ok(())
    }
}

/// A segment being emitted zone by zone.
struct Open {
    seg: LiveSegment,
    columns: Vec<Arc<CachedColumn>>,
    /// Zones that may hold matching rows.
    keep: Vec<bool>,
    /// The zones in the order they are visited; `next` is the next to look at.
    order: Vec<usize>,
    next: usize,
    /// The generation of each dynamic filter when it last pruned `keep`.
    generations: Vec<Option<u64>>,
}

/// The zones of `column` best first for a sort by it: by their greatest value for a
/// descending sort, by their least for an ascending one (`None` for a type without zone
/// maps).
fn zone_order(column: &CachedColumn, options: SortOptions) -> Option<Vec<usize>> {
    let bounds = if options.descending {
        column.maxs()?
    } else {
        column.mins()?
    };
    let sorted = sort_to_indices(bounds, Some(options), None).ok()?;
    Some(sorted.values().iter().map(|&z| z as usize).collect())
}

/// The columns `projection` (table column indices) of `seg`, from `cache` or decoded
/// and kept there; also how many were decoded.
async fn load_columns(
    cache: &SegmentCache,
    blobs: &Arc<dyn BlobStore>,
    seg: &LiveSegment,
    stored: &SchemaRef,
    table: &SchemaRef,
    projection: &[usize],
) -> DfResult<(Vec<Arc<CachedColumn>>, usize)> {
    let path = seg.meta.path.as_str();
    let mut found: Vec<Option<Arc<CachedColumn>>> = projection
        .iter()
        .map(|&c| {
            let f = table.field(c);
            cache.get(path, f.name(), f.data_type())
        })
        .collect();
    let missing: Vec<usize> = projection
        .iter()
        .zip(&found)
        .filter(|(_, hit)| hit.is_none())
        .map(|(&c, _)| c)
        .collect();
    if !missing.is_empty() {
        let mut decoded = decode(blobs, seg, stored, table, &missing)
            .await?
            .into_iter();
        for (slot, &c) in found.iter_mut().zip(projection) {
            if slot.is_none() {
                let column = Arc::new(CachedColumn::new(decoded.next().expect("decoded")));
                let f = table.field(c);
                cache.insert(path, f.name(), f.data_type(), column.clone());
                *slot = Some(column);
            }
        }
    }
    let columns: Vec<Arc<CachedColumn>> = found.into_iter().map(|c| c.expect("filled")).collect();
    if let Some(c) = columns.iter().find(|c| c.rows() as u64 != seg.meta.rows) {
        return Err(DataFusionError::Execution(format!(
            "segment {path}: a column holds {} rows where the manifest says {}",
            c.rows(),
            seg.meta.rows
        )));
    }
    Ok((columns, missing.len()))
}

/// Columns of segments to decode into the cache off the query path.
pub struct FillJob {
    pub blobs: Arc<dyn BlobStore>,
    pub stored: SchemaRef,
    pub table: SchemaRef,
    pub columns: Vec<usize>,
    pub segments: Vec<LiveSegment>,
}

impl fmt::Debug for FillJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillJob")
            .field("columns", &self.columns)
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl FillJob {
    /// Decodes the job's columns of its segments into `cache`, skipping segments whose
    /// columns are all there already.
    pub async fn run(self, cache: &SegmentCache) {
        for seg in &self.segments {
            let fields = self.columns.iter().map(|&c| self.table.field(c));
            if cache.contains_all(&seg.meta.path, fields) {
                continue;
            }
            cache.idle().await;
            let loaded = load_columns(
                cache,
                &self.blobs,
                seg,
                &self.stored,
                &self.table,
                &self.columns,
            )
            .await;
            if let Err(e) = loaded {
                tracing::warn!(segment = %seg.meta.path, error = %e, "filling the segment cache");
                return;
            }
        }
    }
}

/// `columns` (table column indices) of `seg`, every row, in the table's presented
/// types, as zones.
async fn decode(
    blobs: &Arc<dyn BlobStore>,
    seg: &LiveSegment,
    stored: &SchemaRef,
    table: &SchemaRef,
    columns: &[usize],
) -> DfResult<Vec<Vec<ArrayRef>>> {
    let batches = read_segment(blobs.clone(), &seg.meta, stored, columns, None)
        .await
        .map_err(external)?;
    columns
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let want = table.field(c).data_type();
            let parts = batches
                .iter()
                .map(|b| {
                    let part = b.column(i);
                    Ok(if part.data_type() == want {
                        part.clone()
                    } else {
                        cast(part, want)?
                    })
                })
                .collect::<DfResult<Vec<ArrayRef>>>()?;
            Ok(into_zones(&parts)?)
        })
        .collect()
}

/// The rows of `start..start + len` not in `deleted`, or `None` when none is deleted.
fn live_mask(deleted: &RoaringBitmap, start: usize, len: usize) -> Option<BooleanArray> {
    let (lo, hi) = (start as u32, (start + len) as u32);
    if deleted.range_cardinality(lo..hi) == 0 {
        return None;
    }
    Some(BooleanArray::from_iter(
        (lo..hi).map(|r| Some(!deleted.contains(r))),
    ))
}

/// The zone maps of one segment's projected columns, one container per zone of
/// `zones`.
struct ZoneStatistics<'a> {
    scan: &'a Scan,
    columns: &'a [Arc<CachedColumn>],
    rows: usize,
    zones: std::ops::Range<usize>,
}

impl ZoneStatistics<'_> {
    /// The entries of a per-zone array for `zones`.
    fn part(&self, per_zone: &ArrayRef) -> ArrayRef {
        per_zone.slice(self.zones.start, self.zones.len())
    }

    fn column(&self, column: &Column) -> Option<&CachedColumn> {
        self.scan
            .projection
            .iter()
            .position(|&c| self.scan.table.field(c).name() == &column.name)
            .map(|i| self.columns[i].as_ref())
    }
}

impl PruningStatistics for ZoneStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        Some(self.part(self.column(column)?.mins()?))
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        Some(self.part(self.column(column)?.maxs()?))
    }

    fn num_containers(&self) -> usize {
        self.zones.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        Some(self.part(self.column(column)?.null_counts()))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.zones
                .clone()
                .map(|z| ZONE_ROWS.min(self.rows - z * ZONE_ROWS) as u64),
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

/// One partition's stream: its segments still to read and the one being emitted.
struct Emit {
    scan: Arc<Scan>,
    metrics: Metrics,
    segments: std::collections::VecDeque<LiveSegment>,
    open: Option<Open>,
}

/// A scan of segments through the segment cache (see the module docs).
pub struct CachedScanExec {
    scan: Arc<Scan>,
    groups: Vec<Vec<LiveSegment>>,
    /// The whole scan's statistics and each partition's (projected).
    statistics: Arc<Statistics>,
    group_statistics: Vec<Arc<Statistics>>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// The arguments of [`CachedScanExec::new`].
pub(crate) struct CachedScanArgs {
    pub cache: Arc<SegmentCache>,
    pub blobs: Arc<dyn BlobStore>,
    pub stored: SchemaRef,
    pub table: SchemaRef,
    pub projection: Vec<usize>,
    pub predicate: Option<Arc<PruningPredicate>>,
    /// The primary key columns each segment's rows are sorted by.
    pub key: Arc<[String]>,
    /// Segments per partition, with each segment's statistics (unprojected).
    pub groups: Vec<Vec<(LiveSegment, Statistics)>>,
    pub limit: Option<usize>,
}

impl CachedScanExec {
    pub(crate) fn new(args: CachedScanArgs) -> DfResult<Self> {
        let schema = Arc::new(args.table.project(&args.projection)?);
        let mut group_statistics = Vec::with_capacity(args.groups.len());
        let mut groups = Vec::with_capacity(args.groups.len());
        for group in args.groups {
            let stats = Statistics::try_merge_iter(group.iter().map(|(_, s)| s), &args.table)?;
            group_statistics.push(Arc::new(stats.project(Some(&args.projection))));
            groups.push(group.into_iter().map(|(s, _)| s).collect::<Vec<_>>());
        }
        let mut statistics =
            Statistics::try_merge_iter(group_statistics.iter().map(|s| s.as_ref()), &schema)?;
        if let Some(limit) = args.limit {
            statistics = statistics.with_fetch(Some(limit), 0, groups.len().max(1))?;
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        Ok(Self {
            scan: Arc::new(Scan {
                cache: args.cache,
                blobs: args.blobs,
                stored: args.stored,
                table: args.table,
                projection: args.projection,
                schema,
                predicate: args.predicate,
                key: args.key,
                dynamic: vec![],
                order: None,
            }),
            groups,
            statistics: Arc::new(statistics),
            group_statistics,
            limit: args.limit,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The primary key columns each segment's rows are sorted by (a partition reads
    /// its segments one after the other).
    pub(crate) fn sort_key(&self) -> &[String] {
        &self.scan.key
    }

    /// This scan with `scan` in place of its own (fresh metrics).
    fn with_scan(&self, scan: Scan) -> CachedScanExec {
        CachedScanExec {
            scan: Arc::new(scan),
            groups: self.groups.clone(),
            statistics: self.statistics.clone(),
            group_statistics: self.group_statistics.clone(),
            limit: self.limit,
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn segments(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    /// The ids of the dynamic filters pushed down to this scan.
    pub(crate) fn dynamic_filter_ids(&self) -> Vec<Option<u64>> {
        self.scan
            .dynamic
            .iter()
            .map(|d| d.expression_id())
            .collect()
    }

    /// This scan reading the fresh instances of its dynamic filters (found by their
    /// expression id in `fresh`, each rebuilt over the columns this scan sees); `None`
    /// when one of them has none.
    pub(crate) fn with_fresh_filters(
        &self,
        fresh: &HashMap<u64, Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Option<CachedScanExec>> {
        let mut scan = (*self.scan).clone();
        for d in &mut scan.dynamic {
            let Some(new) = d.expression_id().and_then(|id| fresh.get(&id)) else {
                return Ok(None);
            };
            *d = Arc::clone(new).with_new_children(d.children().into_iter().cloned().collect())?;
        }
        Ok(Some(self.with_scan(scan)))
    }
}

impl fmt::Debug for CachedScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedScanExec")
            .field("segments", &self.segments())
            .field("partitions", &self.groups.len())
            .finish()
    }
}

impl DisplayAs for CachedScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<&str> = self
            .scan
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "StrataCachedScan: segments={}, partitions={}, projection=[{}]",
                    self.segments(),
                    self.groups.len(),
                    columns.join(", ")
                )?;
                if let Some(p) = &self.scan.predicate {
                    write!(f, ", zone_predicate={}", p.predicate_expr())?;
                }
                if !self.scan.dynamic.is_empty() {
                    write!(f, ", dynamic_filters={}", self.scan.dynamic.len())?;
                }
                if let Some((column, options)) = self.scan.order {
                    let name = columns.get(column).copied().unwrap_or("?");
                    write!(f, ", zones_by=[{name} {options}]")?;
                }
                if let Some(limit) = self.limit {
                    write!(f, ", limit={limit}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(f, "segments={}", self.segments()),
        }
    }
}

impl ExecutionPlan for CachedScanExec {
    fn name(&self) -> &str {
        "CachedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    #[allow(deprecated, reason = "required by the trait until it is removed")]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let segments: std::collections::VecDeque<LiveSegment> = self
            .groups
            .get(partition)
            .cloned()
            .unwrap_or_default()
            .into();
        let state = Emit {
            scan: self.scan.clone(),
            metrics: Metrics::new(&self.metrics, partition),
            segments,
            open: None,
        };
        let batches = futures::stream::try_unfold(state, |mut st| async move {
            loop {
                if let Some(open) = &mut st.open {
                    if let Some(batch) = st.scan.next_batch(open, &st.metrics)? {
                        return Ok(Some((batch, st)));
                    }
                    st.open = None;
                }
                let Some(seg) = st.segments.pop_front() else {
                    return Ok(None);
                };
                st.open = st.scan.open(seg, &st.metrics).await?;
            }
        });
        let stream: futures::stream::BoxStream<'static, DfResult<RecordBatch>> = match self.limit {
            Some(limit) => batches
                .scan(0usize, move |seen, batch| {
                    let more = *seen < limit;
                    if let Ok(b) = &batch {
                        *seen += b.num_rows();
                    }
                    futures::future::ready(more.then_some(batch))
                })
                .boxed(),
            None => batches.boxed(),
        };
        Ok(datafusion::physical_plan::coop::make_cooperative(Box::pin(
            RecordBatchStreamAdapter::new(self.scan.schema.clone(), stream),
        )))
    }

    /// Takes the filters DataFusion pushes down after planning (a TopK's dynamic bound)
    /// to skip zones with; answers that it does not apply them, so they are still
    /// evaluated above.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .into_iter()
            .map(|f| f.filter)
            .collect();
        let unapplied = vec![PushedDown::No; filters.len()];
        // Static filters arrived at planning (the scan's predicate already has them).
        if phase != FilterPushdownPhase::Post || filters.is_empty() {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                unapplied,
            ));
        }
        let mut scan = (*self.scan).clone();
        scan.dynamic.extend(filters);
        Ok(FilterPushdownPropagation {
            filters: unapplied,
            updated_node: Some(Arc::new(self.with_scan(scan))),
        })
    }

    /// A sort above (a TopK): each segment's zones are visited best first for its
    /// first key, which the sort still has to finish (`Inexact`).
    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
    ) -> DfResult<SortOrderPushdownResult<Arc<dyn ExecutionPlan>>> {
        let Some(first) = order.first() else {
            return Ok(SortOrderPushdownResult::Unsupported);
        };
        let Some(column) = first.expr.downcast_ref::<ColumnExpr>() else {
            return Ok(SortOrderPushdownResult::Unsupported);
        };
        if column.index() >= self.scan.schema.fields().len() {
            return Ok(SortOrderPushdownResult::Unsupported);
        }
        let mut scan = (*self.scan).clone();
        scan.order = Some((column.index(), first.options));
        Ok(SortOrderPushdownResult::Inexact {
            inner: Arc::new(self.with_scan(scan)),
        })
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    #[allow(
        deprecated,
        reason = "statistics_from_inputs falls back to it for leaves"
    )]
    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Arc<Statistics>> {
        Ok(match partition {
            None => self.statistics.clone(),
            Some(p) => self
                .group_statistics
                .get(p)
                .cloned()
                .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.scan.schema))),
        })
    }
}
