//! Partial aggregation by time buckets without hashing.
//!
//! `GROUP BY date_bin(INTERVAL '1 minute', ts)` is the time series query: DataFusion's
//! partial aggregation hashes every row's bucket into its group table (on 10M weather
//! rows, a third of the query's CPU). Buckets of a fixed width are evenly spaced
//! numbers, so [`BucketAggregateExec`] finds a bucket's group by arithmetic instead: its
//! distance from the first bucket seen, in widths, indexes a dense table of group
//! numbers that grows as buckets appear on either side. Values that do not fall on the
//! grid, or would stretch the table past [`MAX_SLOTS`], go to a hash map — the answer
//! never depends on the grid, only the speed. The buckets themselves come from
//! DataFusion's own `date_bin` (its rounding, origin and overflow rules), and the
//! aggregates are DataFusion's group accumulators; the operator emits partial state at
//! the end — or early, when its groups outgrow what the query's memory pool grants or
//! [`MAX_GROUPS`] — which the final aggregation above merges as it merges any partial
//! state.
//!
//! [`TimeBuckets`] puts it in place of a partial `AggregateExec` grouping by one
//! `date_bin` of a fixed interval (days, hours, … — not months) over a timestamp, with
//! no grouping sets, filters, `DISTINCT`, ordered aggregates or limit.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    RecordBatchStream, SendableRecordBatchStream, apply_expression_roots,
};
use futures::{Stream, StreamExt};

use crate::run_aggregate::plain_partial;

/// Slots of the dense table at most (4 MiB of group numbers): a wider spread of buckets
/// hashes the rest.
const MAX_SLOTS: usize = 1 << 20;
/// Groups held at most before their partial state is emitted and the operator starts
/// afresh (also when the query's memory pool refuses what they take).
const MAX_GROUPS: usize = 1 << 22;
/// An empty slot of the dense table.
const EMPTY: u32 = u32::MAX;

/// The physical optimizer rule that puts [`BucketAggregateExec`] where it applies (see
/// the module docs).
#[derive(Debug, Default)]
pub struct TimeBuckets;

impl PhysicalOptimizerRule for TimeBuckets {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(agg) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some((key, width)) = bucket_key(agg) else {
                return Ok(Transformed::no(node));
            };
            Ok(Transformed::yes(Arc::new(BucketAggregateExec::new(
                agg.input().clone(),
                key,
                width,
                agg.aggr_expr().to_vec(),
                node.schema(),
            )) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "strata_time_buckets"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The bucket expression of `agg` and the buckets' width in its output's unit, when
/// `agg` is a plain partial aggregation by one fixed-width `date_bin`.
fn bucket_key(agg: &AggregateExec) -> Option<(Arc<dyn PhysicalExpr>, i64)> {
    let [(key, _)] = agg.group_expr().expr() else {
        return None;
    };
    if !plain_partial(agg) {
        return None;
    }
    let function = key.downcast_ref::<ScalarFunctionExpr>()?;
    if function.fun().name() != "date_bin" {
        return None;
    }
    let DataType::Timestamp(unit, _) = function.return_type() else {
        return None;
    };
    let interval = function.args().first()?.downcast_ref::<Literal>()?;
    let nanos: i64 = match interval.value() {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => (v.days as i64)
            .checked_mul(86_400_000_000_000)?
            .checked_add(v.nanoseconds)?,
        ScalarValue::IntervalDayTime(Some(v)) => (v.days as i64)
            .checked_mul(86_400_000)?
            .checked_add(v.milliseconds as i64)?
            .checked_mul(1_000_000)?,
        _ => return None,
    };
    let per_unit = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    (nanos > 0 && nanos % per_unit == 0).then(|| (key.clone(), nanos / per_unit))
}

/// A partial aggregation by evenly spaced keys: group numbers by arithmetic, not
/// hashing (see the module docs). Same output as the `AggregateExec` it replaces.
#[derive(Debug)]
pub struct BucketAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    /// The distance between neighbouring keys.
    width: i64,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BucketAggregateExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        key: Arc<dyn PhysicalExpr>,
        width: i64,
        aggs: Vec<Arc<AggregateFunctionExpr>>,
        schema: SchemaRef,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            key,
            width,
            aggs,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for BucketAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aggs: Vec<&str> = self.aggs.iter().map(|a| a.name()).collect();
        write!(
            f,
            "BucketAggregateExec: gby=[{}], aggr=[{}]",
            self.key,
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for BucketAggregateExec {
    fn name(&self) -> &str {
        "BucketAggregateExec"
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
        apply_expression_roots(
            std::iter::once(self.key.clone()).chain(self.aggs.iter().flat_map(|a| a.expressions())),
            f,
        )
    }

    #[allow(deprecated, reason = "required by the trait until it is removed")]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("BucketAggregateExec has one child".into()))?;
        Ok(Arc::new(Self::new(
            input,
            self.key.clone(),
            self.width,
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
        let reservation = MemoryConsumer::new(format!("BucketAggregateExec[{partition}]"))
            .register(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        let accumulators = self
            .aggs
            .iter()
            .map(|a| a.create_groups_accumulator())
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Box::pin(BucketAggregateStream {
            input,
            key: self.key.clone(),
            args: self.aggs.iter().map(|a| a.expressions()).collect(),
            accumulators,
            groups: Groups::new(self.width),
            reservation,
            schema: self.schema.clone(),
            batch_size,
            out: vec![],
            done: false,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            hashed_rows: MetricBuilder::new(&self.metrics).counter("hashed_rows", partition),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Group numbers of evenly spaced keys.
#[derive(Debug)]
struct Groups {
    width: i64,
    /// The first key seen: slot 0.
    base: Option<i64>,
    /// The slot `slots[0]` stands for (slots below the base are negative).
    first_slot: i64,
    /// Group number of each slot, [`EMPTY`] if none yet.
    slots: Vec<u32>,
    /// Groups of keys off the grid or beyond [`MAX_SLOTS`].
    hashed: HashMap<i64, u32>,
    null: Option<u32>,
    /// Each group's key (`None`: the null group).
    keys: Vec<Option<i64>>,
}

impl Groups {
    fn new(width: i64) -> Self {
        Self {
            width,
            base: None,
            first_slot: 0,
            slots: vec![],
            hashed: HashMap::new(),
            null: None,
            keys: vec![],
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes held.
    fn size(&self) -> usize {
        self.slots.capacity() * size_of::<u32>()
            + self.keys.capacity() * size_of::<Option<i64>>()
            + self.hashed.capacity() * (size_of::<(i64, u32)>() + 1)
    }

    /// Group number of `key`, and whether it came from the hash map.
    fn group(&mut self, key: Option<i64>) -> (usize, bool) {
        let Some(key) = key else {
            let next = self.keys.len() as u32;
            let g = *self.null.get_or_insert(next);
            if g == next {
                self.keys.push(None);
            }
            return (g as usize, false);
        };
        if let Some(i) = self.slot_index(key) {
            if self.slots[i] == EMPTY {
                self.slots[i] = self.keys.len() as u32;
                self.keys.push(Some(key));
            }
            return (self.slots[i] as usize, false);
        }
        let next = self.keys.len() as u32;
        let g = *self.hashed.entry(key).or_insert(next);
        if g == next {
            self.keys.push(Some(key));
        }
        (g as usize, true)
    }

    /// Index of `key`'s slot in `slots`, growing the table to hold it; `None` when the
    /// key is off the grid or the table would grow past [`MAX_SLOTS`].
    fn slot_index(&mut self, key: i64) -> Option<usize> {
        let base = *self.base.get_or_insert(key);
        let distance = key.checked_sub(base)?;
        if distance % self.width != 0 {
            return None;
        }
        let slot = distance / self.width;
        let len = self.slots.len() as i64;
        let at = slot - self.first_slot;
        if (0..len).contains(&at) {
            return Some(at as usize);
        }
        // Grow towards the slot, at least doubling (buckets arrive on either side).
        if at < 0 {
            let need = (len - at).max(2 * len).max(64);
            if need as usize > MAX_SLOTS {
                return None;
            }
            let added = (need - len) as usize;
            self.slots.splice(0..0, std::iter::repeat_n(EMPTY, added));
            self.first_slot -= added as i64;
            Some((slot - self.first_slot) as usize)
        } else {
            let need = (at + 1).max(2 * len).max(64);
            if need as usize > MAX_SLOTS {
                return None;
            }
            self.slots.resize(need as usize, EMPTY);
            Some(at as usize)
        }
    }

    /// The groups' keys, emptying the table.
    fn take_keys(&mut self) -> Int64Array {
        let keys = Int64Array::from(std::mem::take(&mut self.keys));
        *self = Self::new(self.width);
        keys
    }
}

struct BucketAggregateStream {
    input: SendableRecordBatchStream,
    key: Arc<dyn PhysicalExpr>,
    /// Each aggregate's argument expressions.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    groups: Groups,
    /// What the groups and their accumulators take, granted by the memory pool.
    reservation: MemoryReservation,
    schema: SchemaRef,
    batch_size: usize,
    /// Emitted partial state not sent yet, last batch first.
    out: Vec<RecordBatch>,
    done: bool,
    baseline: BaselineMetrics,
    hashed_rows: Count,
}

impl BucketAggregateStream {
    fn aggregate(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let rows = batch.num_rows();
        let keys = self.key.evaluate(batch)?.into_array(rows)?;
        let keys = cast(&keys, &DataType::Int64)?;
        let keys = keys.as_primitive::<Int64Type>();
        let mut indices = Vec::with_capacity(rows);
        let mut hashed = 0;
        for key in keys.iter() {
            let (group, off_grid) = self.groups.group(key);
            indices.push(group);
            hashed += usize::from(off_grid);
        }
        self.hashed_rows.add(hashed);
        let total = self.groups.len();
        for (acc, exprs) in self.accumulators.iter_mut().zip(&self.args) {
            let args = exprs
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(rows))
                .collect::<DfResult<Vec<_>>>()?;
            acc.update_batch(&args, &indices, None, total)?;
        }
        let size = self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>();
        if total >= MAX_GROUPS || self.reservation.try_resize(size).is_err() {
            self.emit()?;
        }
        Ok(())
    }

    /// Queues the partial state of every group and starts afresh.
    fn emit(&mut self) -> DfResult<()> {
        if self.groups.len() == 0 {
            return Ok(());
        }
        let keys: ArrayRef = Arc::new(self.groups.take_keys());
        let mut columns = vec![cast(&keys, self.schema.field(0).data_type())?];
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.reservation.free();
        let mut offset = batch.num_rows();
        while offset > 0 {
            let start = offset.saturating_sub(self.batch_size);
            self.out.push(batch.slice(start, offset - start));
            offset = start;
        }
        Ok(())
    }
}

impl Stream for BucketAggregateStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(batch) = self.out.pop() {
                return self.baseline.record_poll(Poll::Ready(Some(Ok(batch))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let step = match ready!(self.input.poll_next_unpin(cx)) {
                Some(Ok(batch)) => {
                    let elapsed = self.baseline.elapsed_compute().clone();
                    let timer = elapsed.timer();
                    let r = self.aggregate(&batch);
                    timer.done();
                    r
                }
                Some(Err(e)) => Err(e),
                None => {
                    self.done = true;
                    let elapsed = self.baseline.elapsed_compute().clone();
                    let timer = elapsed.timer();
                    let r = self.emit();
                    timer.done();
                    r
                }
            };
            if let Err(e) = step {
                self.done = true;
                self.out.clear();
                return Poll::Ready(Some(Err(e)));
            }
        }
    }
}

impl RecordBatchStream for BucketAggregateStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// The `BucketAggregateExec` in `plan`.
    fn find(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.downcast_ref::<BucketAggregateExec>().is_some() {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(find)
    }

    #[tokio::test]
    async fn groups_the_memory_pool_refuses_are_emitted_early() {
        let rows = 20_000;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        )]));
        // Each batch holds all of 2,000 one-second buckets.
        let ts =
            TimestampMicrosecondArray::from_iter_values((0..rows).map(|i| (i % 2_000) * 1_000_000));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ts)]).unwrap();
        let batches: Vec<RecordBatch> = (0..10).map(|i| batch.slice(i * 2_000, 2_000)).collect();
        let count_rows = async |limit: usize| {
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_limit(limit, 1.0)
                .build_arc()
                .unwrap();
            let state = SessionStateBuilder::new()
                .with_config(SessionConfig::new().with_target_partitions(2))
                .with_runtime_env(runtime)
                .with_default_features()
                .with_physical_optimizer_rule(Arc::new(TimeBuckets))
                .build();
            let ctx = SessionContext::new_with_state(state);
            let table = MemTable::try_new(schema.clone(), vec![batches.clone()]).unwrap();
            ctx.register_table("t", Arc::new(table)).unwrap();
            let plan = ctx
                .sql("SELECT date_bin(INTERVAL '1 second', ts) b, count(*) n FROM t GROUP BY b")
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let partial = find(&plan).expect("a BucketAggregateExec");
            let out = collect(partial, ctx.task_ctx()).await.unwrap();
            let counted: i64 = out
                .iter()
                .map(|b| arrow::compute::sum(b.column(1).as_primitive::<Int64Type>()).unwrap_or(0))
                .sum();
            assert_eq!(counted, rows);
            out.iter().map(|b| b.num_rows()).sum::<usize>()
        };
        // Room for every group: one partial row per bucket and partition.
        assert_eq!(count_rows(64 << 20).await, 2 * 2_000);
        // Not: partial state leaves early, a bucket in more rows.
        assert!(count_rows(16 << 10).await > 2 * 2_000);
    }

    #[test]
    fn keys_on_the_grid_index_a_table_that_grows_both_ways() {
        let mut g = Groups::new(60);
        assert_eq!(g.group(Some(6_000)), (0, false));
        assert_eq!(g.group(Some(6_060)), (1, false));
        assert_eq!(g.group(Some(6_000)), (0, false));
        // Below the first key seen, and far above it.
        assert_eq!(g.group(Some(0)), (2, false));
        assert_eq!(g.group(Some(6_000 + 60 * 500)), (3, false));
        assert_eq!(g.group(Some(6_060)), (1, false));
        assert_eq!(g.group(Some(0)), (2, false));
        assert_eq!(g.group(None), (4, false));
        assert_eq!(g.group(None), (4, false));
        // Off the grid, and too far for the table: hashed, still one group each.
        assert_eq!(g.group(Some(6_001)), (5, true));
        assert_eq!(g.group(Some(6_001)), (5, true));
        let far = 6_000 + 60 * (MAX_SLOTS as i64 + 1);
        assert_eq!(g.group(Some(far)), (6, true));
        assert_eq!(g.group(Some(i64::MIN)), (7, true));
        assert_eq!(g.len(), 8);
        let keys = g.take_keys();
        assert_eq!(
            keys.iter().collect::<Vec<_>>(),
            [
                Some(6_000),
                Some(6_060),
                Some(0),
                Some(36_000),
                None,
                Some(6_001),
                Some(far),
                Some(i64::MIN)
            ]
        );
        // Taken: the table starts afresh.
        assert_eq!(g.len(), 0);
        assert_eq!(g.group(Some(6_060)), (0, false));
    }
}
