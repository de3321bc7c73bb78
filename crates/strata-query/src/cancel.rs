//! Stopping a query that computes without yielding.
//!
//! A query runs in a task of its own; dropping its result stream aborts that task, but
//! tokio aborts a task only when it yields, and DataFusion's operators are plain CPU
//! loops: a cross join under an aggregate can compute for minutes inside one poll.
//! Every operator pulls its input batch by batch, so a check on each edge of the plan
//! is reached at least once per batch, whatever the operator above does with it.
//!
//! ```text
//!  AggregateExec                     CancelExec ─ checks the token, then polls
//!    CrossJoinExec          ─▶         AggregateExec
//!      generate_series ×2                CancelExec
//!                                          CrossJoinExec
//!                                            CancelExec ─ generate_series …
//! ```
//!
//! The [`CancelToken`] trips when the statement's deadline passes or when the consumer
//! goes away (the client cancelled, its own deadline passed, it disconnected); the next
//! check on any edge then ends the stream with an error, and every operator above
//! returns it. The wrappers are added to the physical plan after the optimizer ran, so
//! plans and `EXPLAIN` are unchanged.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::NestedLoopJoinExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

use crate::error::Error;

/// Trips when a query must stop: cancelled by its consumer, or past its deadline.
#[derive(Debug)]
pub struct CancelToken {
    cancelled: AtomicBool,
    deadline: Option<(Instant, Duration)>,
}

impl CancelToken {
    /// A token with the statement's timeout counted from now.
    pub fn new(timeout: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            cancelled: AtomicBool::new(false),
            deadline: timeout.map(|t| (Instant::now() + t, t)),
        })
    }

    /// Stops the query at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Why the query must stop, if it must.
    fn check(&self) -> Option<Error> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Some(Error::Cancelled);
        }
        match self.deadline {
            Some((at, timeout)) if Instant::now() >= at => Some(Error::Timeout(timeout)),
            _ => None,
        }
    }
}

/// `plan` with a [`CancelExec`] on top of every node. `EXPLAIN ANALYZE` gets one on
/// top only, so the plan it prints stays the plan that ran.
pub fn wrap(
    plan: Arc<dyn ExecutionPlan>,
    token: &Arc<CancelToken>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if plan.name() == "AnalyzeExec" {
        return Ok(Arc::new(CancelExec::new(plan, token.clone())));
    }
    wrap_all(plan, token)
}

#[recursive::recursive]
fn wrap_all(
    plan: Arc<dyn ExecutionPlan>,
    token: &Arc<CancelToken>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let children = plan.children();
    let plan = if children.is_empty() {
        plan
    } else {
        let wrapped = children
            .into_iter()
            .map(|c| wrap_all(c.clone(), token))
            .collect::<DfResult<Vec<_>>>()?;
        // The wrappers keep their input's properties, so the node's stay valid.
        plan.replace_children(
            wrapped,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )?
    };
    let plan = guard_join_filter(plan, token)?;
    Ok(Arc::new(CancelExec::new(plan, token.clone())))
}

/// A nested loop join joins each probe batch with every buffered row inside one poll:
/// with a large build side and a filter that rarely matches, that poll computes for
/// minutes without asking its input for more. Its filter is evaluated for every
/// slice of that work, so the check goes there.
fn guard_join_filter(
    plan: Arc<dyn ExecutionPlan>,
    token: &Arc<CancelToken>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let Some(join) = plan.downcast_ref::<NestedLoopJoinExec>() else {
        return Ok(plan);
    };
    let Some(filter) = join.filter() else {
        return Ok(plan);
    };
    let guarded = JoinFilter::new(
        Arc::new(CancelExpr {
            inner: filter.expression().clone(),
            token: token.clone(),
        }),
        filter.column_indices().to_vec(),
        filter.schema().clone(),
    );
    let projection = join.projection().as_ref().map(|p| p.to_vec());
    Ok(Arc::new(NestedLoopJoinExec::try_new(
        join.left().clone(),
        join.right().clone(),
        Some(guarded),
        join.join_type(),
        projection,
    )?))
}

/// Evaluates its inner expression after checking a [`CancelToken`].
#[derive(Debug)]
struct CancelExpr {
    inner: Arc<dyn PhysicalExpr>,
    token: Arc<CancelToken>,
}

impl PartialEq for CancelExpr {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for CancelExpr {}

impl std::hash::Hash for CancelExpr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.as_ref().hash(state);
    }
}

impl fmt::Display for CancelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl PhysicalExpr for CancelExpr {
    fn data_type(&self, input_schema: &arrow::datatypes::Schema) -> DfResult<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &arrow::datatypes::Schema) -> DfResult<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &arrow::datatypes::Schema) -> DfResult<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        if let Some(e) = self.token.check() {
            return Err(e.into());
        }
        self.inner.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "CancelExpr takes one child".into(),
            ));
        }
        Ok(Arc::new(CancelExpr {
            inner: children.swap_remove(0),
            token: self.token.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// Passes its input through, checking a [`CancelToken`] before every poll.
#[derive(Debug)]
pub struct CancelExec {
    input: Arc<dyn ExecutionPlan>,
    token: Arc<CancelToken>,
}

impl CancelExec {
    fn new(input: Arc<dyn ExecutionPlan>, token: Arc<CancelToken>) -> Self {
        Self { input, token }
    }
}

impl DisplayAs for CancelExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CancelExec")
    }
}

impl ExecutionPlan for CancelExec {
    fn name(&self) -> &str {
        "CancelExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "CancelExec takes one child".into(),
            ));
        }
        Ok(Arc::new(CancelExec::new(
            children.swap_remove(0),
            self.token.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if let Some(e) = self.token.check() {
            return Err(e.into());
        }
        Ok(Box::pin(CancelStream {
            schema: self.input.schema(),
            inner: self.input.execute(partition, context)?,
            token: self.token.clone(),
            done: false,
        }))
    }
}

struct CancelStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    token: Arc<CancelToken>,
    done: bool,
}

impl Stream for CancelStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(e) = self.token.check() {
            self.done = true;
            return Poll::Ready(Some(Err(e.into())));
        }
        let next = self.inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None)) {
            self.done = true;
        }
        next
    }
}

impl RecordBatchStream for CancelStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
