//! Partial aggregation by runs of equal group keys.
//!
//! Segments are sorted by primary key, and a scan's partition reads its segments one
//! after the other, so the rows of one value of the leading key columns come together:
//! `GROUP BY station` over a table keyed by `(station, ts)` sees each station as long
//! runs. DataFusion's partial aggregation hashes every row's key and scatters every
//! value into its group's accumulator (on 10M rows, 70 ms of CPU for `avg` by station);
//! [`RunAggregateExec`] finds the runs instead (a comparison of neighbours), aggregates
//! each run as a slice (a sum over a slice is a vectorized loop) and emits one row of
//! partial state per run. The final aggregation above merges those rows as it merges
//! any partial state, so a group split over batches, segments or partitions is still
//! one group. A batch whose runs are short (a key of many values) is aggregated with
//! each row's run number as its group index: no hashing, and as many rows out as the
//! hash aggregation emits when it gives up on a key of many values.
//!
//! [`RunAggregates`] puts it in place of a partial `AggregateExec` when the group
//! columns are exactly the first key columns of what its input reads, through operators
//! that keep the rows of a batch together and in order (filters, projections,
//! round-robin repartitioning, unions of such). Where the rows come from is
//! known from the leaves: a [`CachedScanExec`] knows its table's key, and the Parquet
//! scans the table provider plans record their files and keys in the statement's
//! [`SortedFiles`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, partition, take};
use arrow::datatypes::{DataType, Int32Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::logical_expr::EmitTo;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, InputOrderMode,
    Partitioning, PlanProperties, RecordBatchStream, SendableRecordBatchStream,
    apply_expression_roots,
};
use futures::{Stream, StreamExt};
use strata_table::SegmentMeta;

use crate::cached_scan::CachedScanExec;
use crate::dictionary_scan::read_as_dictionary;

/// Runs at least this long on average are aggregated run by run (an accumulator per
/// run costs about a microsecond; scattering a row into a group index a few ns).
const LONG_RUNS: usize = 256;

/// The segment files the statement's Parquet scans read, with what the provider knows
/// of each (see [`SortedFile`]). The engine puts a fresh one in each statement's
/// options; the table provider fills it as it plans scans; [`RunAggregates`] reads it.
/// Its clones (the statement's copies of its options) share it.
#[derive(Debug, Default, Clone)]
pub struct SortedFiles(Arc<Mutex<HashMap<String, SortedFile>>>);

/// What [`SortedFiles`] knows of one segment file.
#[derive(Clone)]
pub struct SortedFile {
    /// The primary key columns its rows are sorted by.
    pub key: Arc<[String]>,
    /// Its metadata (the columns it was written with).
    pub segment: Arc<SegmentMeta>,
    /// The table's stored schema (the types its columns were written with).
    pub stored: SchemaRef,
    /// The runtime's Parquet footer cache, where its footer may be.
    pub footers: Arc<FileMetadataCache>,
}

impl fmt::Debug for SortedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SortedFile")
            .field("key", &self.key)
            .field("segment", &self.segment.path)
            .finish_non_exhaustive()
    }
}

impl SortedFiles {
    /// Records what is known of the file at `path`.
    pub fn record(&self, path: &str, file: SortedFile) {
        self.0
            .lock()
            .expect("sorted files lock")
            .insert(path.to_string(), file);
    }

    pub(crate) fn get(&self, path: &str) -> Option<SortedFile> {
        self.0.lock().expect("sorted files lock").get(path).cloned()
    }
}

impl ExtensionOptions for SortedFiles {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, _value: &str) -> DfResult<()> {
        Err(DataFusionError::Configuration(format!(
            "{}.{key} is not a setting",
            Self::PREFIX
        )))
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![]
    }
}

impl ConfigExtension for SortedFiles {
    const PREFIX: &'static str = "strata_sorted_files";
}

/// The physical optimizer rule that puts [`RunAggregateExec`] where it applies (see
/// the module docs).
#[derive(Debug, Default)]
pub struct RunAggregates;

impl PhysicalOptimizerRule for RunAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = config.extensions.get::<SortedFiles>();
        plan.transform_up(|node| {
            let Some(agg) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(groups) = run_groups(agg, files) else {
                return Ok(Transformed::no(node));
            };
            let input = match files {
                Some(files) => dictionary_keys(agg, &groups, files),
                None => agg.input().clone(),
            };
            Ok(Transformed::yes(Arc::new(RunAggregateExec::new(
                input,
                groups,
                agg.aggr_expr().to_vec(),
                node.schema(),
            )) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "strata_run_aggregates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The input columns `agg` groups by, when it can run by runs: a partial aggregation
/// without grouping sets, filters, `DISTINCT`, ordered aggregates or a limit, grouping
/// by plain columns that are exactly the leading key columns its input is clustered by.
fn run_groups(agg: &AggregateExec, files: Option<&SortedFiles>) -> Option<Vec<usize>> {
    if !plain_partial(agg) || agg.group_expr().expr().is_empty() {
        return None;
    }
    let input = agg.input_schema();
    let groups = agg
        .group_expr()
        .expr()
        .iter()
        .map(|(e, _)| {
            let column = e.downcast_ref::<Column>()?;
            run_comparable(input.field(column.index()).data_type()).then_some(column.index())
        })
        .collect::<Option<Vec<usize>>>()?;
    let key = clustered_by(agg.input(), files)?;
    let mut prefix = key.get(..groups.len())?.to_vec();
    let mut sorted = groups.clone();
    prefix.sort_unstable();
    sorted.sort_unstable();
    (prefix == sorted).then_some(groups)
}

/// `agg`'s input with its string group columns read as dictionaries where the scan
/// under it allows (see [`crate::dictionary_scan`]) and no aggregate reads them.
fn dictionary_keys(
    agg: &AggregateExec,
    groups: &[usize],
    files: &SortedFiles,
) -> Arc<dyn ExecutionPlan> {
    let mut input = agg.input().clone();
    for &g in groups {
        let aggregated = agg.aggr_expr().iter().any(|a| {
            a.expressions()
                .iter()
                .any(|e| collect_columns(e).iter().any(|c| c.index() == g))
        });
        if !aggregated && let Some(read) = read_as_dictionary(&input, g, files) {
            input = read;
        }
    }
    input
}

/// Whether `agg` is a partial aggregation another operator may take over: no grouping
/// sets, filters, `DISTINCT`, ordered aggregates, limit or dynamic filters, and group
/// accumulators for every aggregate.
pub(crate) fn plain_partial(agg: &AggregateExec) -> bool {
    *agg.mode() == AggregateMode::Partial
        && agg.group_expr().is_single()
        && *agg.input_order_mode() == InputOrderMode::Linear
        && agg.limit_options().is_none()
        && agg.dynamic_expressions_produced().is_empty()
        && agg.filter_expr().iter().all(Option::is_none)
        && agg.aggr_expr().iter().all(|a| {
            !a.is_distinct() && a.order_bys().is_empty() && a.groups_accumulator_supported()
        })
}

/// Types whose equal neighbours are one group key for sure (floats are left out:
/// grouping tells `0.0` from `-0.0` and makes NaNs one group).
fn run_comparable(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::Boolean
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
        )
}

/// The output columns whose leading values each partition of `plan` delivers
/// together: its table's primary key columns, in key order, up to the first one it
/// does not output. `None` when that is not known.
fn clustered_by(plan: &Arc<dyn ExecutionPlan>, files: Option<&SortedFiles>) -> Option<Vec<usize>> {
    if let Some(scan) = plan.downcast_ref::<CachedScanExec>() {
        return Some(key_prefix(&plan.schema(), scan.sort_key()));
    }
    if let Some(source) = plan.downcast_ref::<DataSourceExec>() {
        let config = source.data_source().downcast_ref::<FileScanConfig>()?;
        let files = files?;
        let mut key: Option<Arc<[String]>> = None;
        for file in config.file_groups.iter().flat_map(|g| g.iter()) {
            let k = files.get(file.object_meta.location.as_ref())?.key;
            match &key {
                Some(prev) if *prev != k => return None,
                Some(_) => {}
                None => key = Some(k),
            }
        }
        return Some(key_prefix(&plan.schema(), &key?));
    }
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let inner = clustered_by(filter.input(), files)?;
        return Some(match filter.projection() {
            None => inner,
            Some(p) => map_columns(inner, |i| p.iter().position(|&j| j == i)),
        });
    }
    if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
        // Round robin moves whole batches; hashing splits them.
        return match repartition.partitioning() {
            Partitioning::RoundRobinBatch(_) if !repartition.preserve_order() => {
                clustered_by(repartition.input(), files)
            }
            _ => None,
        };
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let inner = clustered_by(projection.input(), files)?;
        return Some(map_columns(inner, |i| {
            projection.expr().iter().position(|p| {
                p.expr
                    .downcast_ref::<Column>()
                    .is_some_and(|c| c.index() == i)
            })
        }));
    }
    if plan.downcast_ref::<UnionExec>().is_some() {
        let mut keys = plan.children().into_iter().map(|c| clustered_by(c, files));
        let first = keys.next()??;
        return keys.all(|k| k.as_ref() == Some(&first)).then_some(first);
    }
    None
}

/// `key`'s columns as indices of `schema`, up to the first one it lacks.
fn key_prefix(schema: &Schema, key: &[String]) -> Vec<usize> {
    key.iter()
        .map_while(|name| schema.index_of(name).ok())
        .collect()
}

/// Key column indices through an operator mapping them (`None`: gone, and the ones
/// after it no longer lead).
fn map_columns(key: Vec<usize>, f: impl Fn(usize) -> Option<usize>) -> Vec<usize> {
    key.into_iter().map_while(f).collect()
}

/// A partial aggregation over input whose groups come in runs: one row of partial
/// state per run (see the module docs). Same output as the `AggregateExec` it
/// replaces.
#[derive(Debug)]
pub struct RunAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    /// Input columns grouped by, in output order.
    groups: Vec<usize>,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RunAggregateExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        groups: Vec<usize>,
        aggs: Vec<Arc<AggregateFunctionExpr>>,
        schema: SchemaRef,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            groups,
            aggs,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = self.input.schema();
        let groups: Vec<&str> = self
            .groups
            .iter()
            .map(|&i| input.field(i).name().as_str())
            .collect();
        let aggs: Vec<&str> = self.aggs.iter().map(|a| a.name()).collect();
        write!(
            f,
            "RunAggregateExec: gby=[{}], aggr=[{}]",
            groups.join(", "),
            aggs.join(", ")
        )?;
        let dictionaries: Vec<&str> = self
            .groups
            .iter()
            .map(|&i| input.field(i))
            .filter(|f| matches!(f.data_type(), DataType::Dictionary(_, _)))
            .map(|f| f.name().as_str())
            .collect();
        if !dictionaries.is_empty() {
            write!(f, ", dictionary=[{}]", dictionaries.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &str {
        "RunAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        apply_expression_roots(self.aggs.iter().flat_map(|a| a.expressions()), f)
    }

    #[allow(deprecated, reason = "required by the trait until it is removed")]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("RunAggregateExec has one child".into()))?;
        Ok(Arc::new(Self::new(
            input,
            self.groups.clone(),
            self.aggs.clone(),
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let batch_size = context.session_config().batch_size();
        let input = self.input.execute(partition, context)?;
        let args = self.aggs.iter().map(|a| a.expressions()).collect();
        Ok(Box::pin(RunAggregateStream {
            input,
            groups: self.groups.clone(),
            aggs: self.aggs.clone(),
            args,
            schema: self.schema.clone(),
            batch_size,
            pending: vec![],
            pending_rows: 0,
            done: false,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            runs: MetricBuilder::new(&self.metrics).counter("runs", partition),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

struct RunAggregateStream {
    input: SendableRecordBatchStream,
    groups: Vec<usize>,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    /// Each aggregate's argument expressions.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
    batch_size: usize,
    /// Partial state rows not sent yet (sent once there are a batch's worth).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    done: bool,
    baseline: BaselineMetrics,
    runs: Count,
}

/// The runs of equal values in `values` (what `partition` finds for one column without
/// nulls, as over a dictionary's indices), checking whole chunks against the run's
/// value at a time: group keys of sorted segments run long.
fn runs_of<T: Copy + PartialEq>(values: &[T]) -> Vec<Range<usize>> {
    const CHUNK: usize = 64;
    let mut runs = Vec::new();
    let mut start = 0;
    while start < values.len() {
        let value = values[start];
        let mut end = start + 1;
        // Not `all`: a fold without early exit compiles to vector compares.
        while let Some(chunk) = values.get(end..end + CHUNK)
            && chunk.iter().fold(true, |same, v| same & (*v == value))
        {
            end += CHUNK;
        }
        while end < values.len() && values[end] == value {
            end += 1;
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

impl RunAggregateStream {
    /// One row of partial state per run of equal group keys in `batch`.
    fn aggregate(&self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let rows = batch.num_rows();
        let keys: Vec<ArrayRef> = self
            .groups
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        // A dictionary column (one batch, one dictionary of distinct values) has runs
        // where its indices do.
        let compared: Vec<ArrayRef> = keys
            .iter()
            .map(|k| match k.as_dictionary_opt::<Int32Type>() {
                Some(d) => Arc::new(d.keys().clone()) as ArrayRef,
                None => k.clone(),
            })
            .collect();
        let runs = match compared.as_slice() {
            [key] if key.null_count() == 0 && key.as_primitive_opt::<Int32Type>().is_some() => {
                runs_of(key.as_primitive::<Int32Type>().values())
            }
            _ => partition(&compared)?.ranges(),
        };
        self.runs.add(runs.len());
        let starts = UInt32Array::from_iter_values(runs.iter().map(|r| r.start as u32));
        let mut columns = keys
            .iter()
            .zip(self.schema.fields())
            .map(|(k, field)| {
                let firsts = take(k.as_ref(), &starts, None)?;
                if firsts.data_type() == field.data_type() {
                    Ok(firsts)
                } else {
                    cast(&firsts, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (agg, exprs) in self.aggs.iter().zip(&self.args) {
            let args = exprs
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(rows))
                .collect::<DfResult<Vec<_>>>()?;
            if runs.len() * LONG_RUNS <= rows {
                let mut states: Vec<Vec<ScalarValue>> = vec![];
                for run in &runs {
                    let mut acc = agg.create_accumulator()?;
                    let slices: Vec<ArrayRef> =
                        args.iter().map(|a| a.slice(run.start, run.len())).collect();
                    acc.update_batch(&slices)?;
                    let state = acc.state()?;
                    states.resize_with(state.len(), || Vec::with_capacity(runs.len()));
                    for (column, value) in states.iter_mut().zip(state) {
                        column.push(value);
                    }
                }
                for column in states {
                    columns.push(ScalarValue::iter_to_array(column)?);
                }
            } else {
                let mut run_of = Vec::with_capacity(rows);
                for (i, run) in runs.iter().enumerate() {
                    run_of.extend(std::iter::repeat_n(i, run.len()));
                }
                let mut acc = agg.create_groups_accumulator()?;
                acc.update_batch(&args, &run_of, None, runs.len())?;
                columns.extend(acc.state(EmitTo::All)?);
            }
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The pending rows as one batch.
    fn flush(&mut self) -> DfResult<Option<RecordBatch>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let batch = concat_batches(&self.schema, &self.pending)?;
        self.pending.clear();
        self.pending_rows = 0;
        Ok(Some(batch))
    }
}

impl Stream for RunAggregateStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let out = match ready!(self.input.poll_next_unpin(cx)) {
                Some(Ok(batch)) if batch.num_rows() == 0 => continue,
                Some(Ok(batch)) => {
                    let timer = self.baseline.elapsed_compute().timer();
                    let partial = self.aggregate(&batch);
                    timer.done();
                    match partial {
                        Ok(partial) => {
                            self.pending_rows += partial.num_rows();
                            self.pending.push(partial);
                            if self.pending_rows < self.batch_size {
                                continue;
                            }
                            self.flush()
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(Err(e)) => Err(e),
                None => {
                    self.done = true;
                    self.flush()
                }
            };
            let out = match out {
                Ok(batch) => batch.map(Ok),
                Err(e) => {
                    self.done = true;
                    Some(Err(e))
                }
            };
            return self.baseline.record_poll(Poll::Ready(out));
        }
    }
}

impl RecordBatchStream for RunAggregateStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int32Array;

    use super::*;

    /// The chunked run finder finds what `partition` does, for runs shorter and longer
    /// than a chunk, ending on and off chunk boundaries.
    #[test]
    fn runs_of_finds_what_partition_does() {
        for lengths in [
            vec![1],
            vec![64],
            vec![63, 1, 64, 65],
            vec![1, 1, 1, 200, 3, 128, 129, 1],
            vec![1000],
            vec![5; 40],
        ] {
            let mut values = Vec::new();
            for (i, n) in lengths.iter().enumerate() {
                // Adjacent runs differ; a value comes back later.
                values.extend(std::iter::repeat_n((i % 3) as i32, *n));
            }
            let array: ArrayRef = Arc::new(Int32Array::from(values.clone()));
            let expected = partition(&[array]).unwrap().ranges();
            assert_eq!(runs_of(&values), expected, "runs of {lengths:?}");
        }
        assert!(runs_of::<i32>(&[]).is_empty());
    }
}
