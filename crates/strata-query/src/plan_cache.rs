//! Plans of repeated queries, kept while nothing they read has changed.
//!
//! Planning a one-table query costs more than running it once its columns are cached
//! (about 0.25 ms from SQL to logical plan and 0.45 ms from logical to physical plan,
//! through DataFusion's optimizer rules, against 0.1–0.2 ms of execution for a point
//! query). Analysts and dashboards send the same text again and again, so the physical
//! plan of a query is kept under its text and reused — re-instantiated, never shared —
//! while the catalog's change count is the one it was planned at and the column cache
//! has evicted nothing since.
//!
//! Only plans whose meaning cannot drift without a change to that count are kept:
//! - the catalog is exclusive (the server's locked local store: every commit, tag,
//!   vacuum, create or drop goes through this process and moves the count; on a shared
//!   Cassandra keyspace another server commits without moving it, so nothing is kept);
//! - every table read is a Strata dataset at its head (no `VERSION`/`TIMESTAMP AS OF`,
//!   tags, `table_changes`, `strata_cache()`, `information_schema`);
//! - every function is immutable (`now()`, `current_date`, `random()` are not: their
//!   values are fixed when a plan is optimized), and the statement has no parameters;
//! - the physical plan is built only of operators that hold no state across executions
//!   once re-instantiated, and reads only cached segments: a plan that reads Parquet is
//!   planned again, so once the background fill has decoded its segments the next plan
//!   reads them from memory. Of the operators that produce run-time filters only a
//!   TopK's is renewed (below); joins and min/max aggregates with dynamic filters are
//!   planned each time.
//!
//! Each execution takes a fresh instance of the kept plan: operators with per-run state
//! (repartitioning channels) start clean
//! ([`ExecutionPlan::reset_state`](datafusion::physical_plan::ExecutionPlan::reset_state)),
//! and each TopK gets a new dynamic filter, which the cached scans it was pushed down
//! to take in place of the old one (found by its expression id): the last run's bound
//! is strictly above the rows that run ended on, and would prune the zones that hold
//! them.
//!
//! A plan that is one row of literals — `SELECT 1`, or a `count(*)` the optimizer
//! answered from the segments' statistics — is kept as that row: a hit answers it
//! without running anything (no task on the query runtime, no channel back), which is
//! most of what such a query costs on the server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::internal_err;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use crate::cached_scan::CachedScanExec;
use crate::provider::StrataTable;

/// Plans kept at most (least recently used go first).
pub const PLANS_KEPT: usize = 256;
/// Statements longer than this are planned each time (their plans could be large).
pub const MAX_KEPT_SQL: usize = 16 * 1024;

/// Operators whose instances carry nothing from one execution to the next once
/// re-instantiated (a `SortExec` with a fetch is a TopK, `SortExec(TopK)`: its
/// dynamic filter is renewed by [`fresh_instance`]).
const REUSABLE: &[&str] = &[
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
    "SortPreservingMergeExec",
    "SortExec",
    "SortExec(TopK)",
    "AggregateExec",
    "RunAggregateExec",
    "BucketAggregateExec",
    "GlobalLimitExec",
    "LocalLimitExec",
    "UnionExec",
    "CachedScanExec",
    "PlaceholderRowExec",
    "EmptyExec",
];

struct Entry {
    /// The catalog's change count the plan was made at.
    changes: u64,
    /// The column cache's eviction count before the plan was made.
    evictions: u64,
    /// The statement's logical plan before optimization (its schema and kind).
    logical: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
    /// The row the plan produces, when it is a row of literals.
    answer: Option<RecordBatch>,
    used: u64,
}

/// What a hit gives: the statement's logical plan, and what to run.
#[derive(Debug)]
pub struct Hit {
    pub logical: LogicalPlan,
    pub run: Kept,
}

/// A kept statement's way to its result.
#[derive(Debug)]
pub enum Kept {
    /// A fresh instance of its physical plan.
    Plan(Arc<dyn ExecutionPlan>),
    /// Its result, when the plan was one row of literals.
    Answer(RecordBatch),
}

#[derive(Default)]
struct State {
    entries: HashMap<Arc<str>, Entry>,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// The kept plans of one engine.
#[derive(Default)]
pub struct PlanCache {
    state: Mutex<State>,
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock().expect("plan cache lock");
        f.debug_struct("PlanCache")
            .field("plans", &s.entries.len())
            .field("hits", &s.hits)
            .field("misses", &s.misses)
            .finish()
    }
}

impl PlanCache {
    /// The plan kept for `sql` at change count `changes`, as a fresh instance (or its
    /// answer); no plan once the column cache evicted anything since it was made (its
    /// scans read cached columns, and a missing one would be decoded whole on the
    /// query's path), while an answer reads no column and stays.
    pub fn get(&self, sql: &str, changes: u64, evictions: u64) -> Option<Hit> {
        let mut s = self.state.lock().expect("plan cache lock");
        s.clock += 1;
        let clock = s.clock;
        let found = match s.entries.get_mut(sql) {
            Some(e) if e.changes == changes && (e.answer.is_some() || e.evictions == evictions) => {
                e.used = clock;
                Some(match &e.answer {
                    Some(batch) => (e.logical.clone(), Err(batch.clone())),
                    None => (e.logical.clone(), Ok(e.physical.clone())),
                })
            }
            _ => None,
        };
        match found {
            Some(_) => s.hits += 1,
            None => s.misses += 1,
        }
        drop(s);
        let (logical, run) = found?;
        let run = match run {
            // A kept plan whose copy fails is planned again (the caller's miss path).
            Ok(physical) => Kept::Plan(fresh_instance(physical).ok()?),
            Err(batch) => Kept::Answer(batch),
        };
        Some(Hit { logical, run })
    }

    /// Keeps `physical` for `sql` when it qualifies (see the module docs); the caller
    /// checked the statement ([`reusable_statement`]).
    pub fn keep(
        &self,
        sql: Arc<str>,
        (changes, evictions): (u64, u64),
        logical: &LogicalPlan,
        physical: &Arc<dyn ExecutionPlan>,
    ) {
        if !reusable_physical(physical) {
            return;
        }
        let mut s = self.state.lock().expect("plan cache lock");
        s.clock += 1;
        let used = s.clock;
        if s.entries.len() >= PLANS_KEPT && !s.entries.contains_key(&sql) {
            let oldest = s
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                s.entries.remove(&k);
            }
        }
        s.entries.insert(
            sql,
            Entry {
                changes,
                evictions,
                logical: logical.clone(),
                physical: physical.clone(),
                answer: literal_answer(logical, physical),
                used,
            },
        );
    }

    /// (plans kept, hits, misses).
    pub fn counts(&self) -> (usize, u64, u64) {
        let s = self.state.lock().expect("plan cache lock");
        (s.entries.len(), s.hits, s.misses)
    }
}

/// True when the statement's plan may be kept (the logical half of the module docs'
/// conditions; the catalog's exclusivity is the caller's to check).
pub fn reusable_statement(sql: &str, plan: &LogicalPlan) -> bool {
    if sql.len() > MAX_KEPT_SQL {
        return false;
    }
    if matches!(
        plan,
        LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::DescribeTable(_)
    ) {
        return false;
    }
    if !plan.get_parameter_types().is_ok_and(|p| p.is_empty()) {
        return false;
    }
    let mut reusable = true;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let at_head = source_as_provider(&scan.source).is_ok_and(|p| {
                p.downcast_ref::<StrataTable>()
                    .is_some_and(StrataTable::reads_head)
            });
            if !at_head {
                reusable = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                reusable &= !matches!(e, Expr::ScalarFunction(f)
                    if f.func.signature().volatility != Volatility::Immutable);
                Ok(walk_on(reusable))
            })
        })?;
        Ok(walk_on(reusable))
    });
    walked.is_ok() && reusable
}

/// Walks on while what was seen so far keeps a plan reusable.
fn walk_on(reusable: bool) -> TreeNodeRecursion {
    if reusable {
        TreeNodeRecursion::Continue
    } else {
        TreeNodeRecursion::Stop
    }
}

/// True when every operator of `plan` is one whose instances can be re-instantiated
/// and run again with the same result, the only producers of dynamic filters are
/// TopKs whose filters only cached scans read (so [`fresh_instance`] renews them all),
/// and every leaf reads memory (cached segments, a placeholder row, nothing).
fn reusable_physical(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut produced = HashSet::new();
    let mut reusable = true;
    let walked: DfResult<_> = plan.apply(|node| {
        let dynamic = node.dynamic_expressions_produced();
        reusable &= REUSABLE.contains(&node.name())
            && (dynamic.is_empty() || node.downcast_ref::<SortExec>().is_some());
        for d in dynamic {
            // One without an id (or seen twice) could not be told where it was pushed.
            reusable &= d.expression_id().is_some_and(|id| produced.insert(id));
        }
        Ok(walk_on(reusable))
    });
    if walked.is_err() || !reusable {
        return false;
    }
    // Who reads them: a cached scan (renewed), or the TopK that makes it.
    let walked: DfResult<_> = plan.apply(|node| {
        if let Some(scan) = node.downcast_ref::<CachedScanExec>() {
            reusable &= scan
                .dynamic_filter_ids()
                .iter()
                .all(|id| id.is_some_and(|id| produced.contains(&id)));
        } else {
            let own: HashSet<u64> = node
                .dynamic_expressions_produced()
                .iter()
                .filter_map(|d| d.expression_id())
                .collect();
            node.apply_expressions(&mut |root| {
                root.apply(|e| {
                    reusable &= !e
                        .expression_id()
                        .is_some_and(|id| produced.contains(&id) && !own.contains(&id));
                    Ok(walk_on(reusable))
                })
            })?;
        }
        Ok(walk_on(reusable))
    });
    walked.is_ok() && reusable
}

/// A fresh instance of a kept plan (see the module docs): every operator's per-run
/// state reset, each TopK with a new dynamic filter, and each cached scan reading the
/// new filters in place of the ones it was planned with.
fn fresh_instance(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let mut fresh: HashMap<u64, Arc<dyn PhysicalExpr>> = HashMap::new();
    plan.transform_down(|node| {
        let renewed = match node.downcast_ref::<CachedScanExec>() {
            Some(scan) => match scan.with_fresh_filters(&fresh)? {
                Some(scan) => Arc::new(scan) as Arc<dyn ExecutionPlan>,
                None => return internal_err!("a kept scan reads a dynamic filter of no TopK"),
            },
            None => Arc::clone(&node).reset_state()?,
        };
        let old = node.dynamic_expressions_produced();
        let new = renewed.dynamic_expressions_produced();
        // (A sort without a fetch gets a filter it never updates.)
        if new.len() < old.len() {
            return internal_err!(
                "{} renewed {} dynamic filters of {}",
                node.name(),
                new.len(),
                old.len()
            );
        }
        for (old, new) in old.iter().zip(new) {
            let Some(id) = old.expression_id() else {
                return internal_err!("a dynamic filter without an id");
            };
            fresh.insert(id, new);
        }
        Ok(Transformed::yes(renewed))
    })
    .data()
}

/// The row a plan of literals over one placeholder row produces (`SELECT 1`, a count
/// answered from statistics), labelled with the schema the statement announces when
/// that admits it (as a run of the plan would be).
fn literal_answer(logical: &LogicalPlan, physical: &Arc<dyn ExecutionPlan>) -> Option<RecordBatch> {
    let projection = physical.downcast_ref::<ProjectionExec>()?;
    let row = projection.input();
    if !row.is::<PlaceholderRowExec>() || row.output_partitioning().partition_count() != 1 {
        return None;
    }
    let columns = projection
        .expr()
        .iter()
        .map(|p| {
            let literal = p.expr.downcast_ref::<Literal>()?;
            literal.value().to_array_of_size(1).ok()
        })
        .collect::<Option<Vec<ArrayRef>>>()?;
    let produced = projection.schema();
    let announced: SchemaRef = Arc::new(logical.schema().as_arrow().clone());
    let schema = if announced.contains(&produced) {
        announced
    } else {
        produced
    };
    RecordBatch::try_new(schema, columns).ok()
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Schema;
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::EmptyRelation;
    use datafusion::physical_plan::empty::EmptyExec;

    use super::*;

    fn keep(plans: &PlanCache, sql: &str, counts: (u64, u64)) {
        let logical = LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: true,
            schema: Arc::new(DFSchema::empty()),
        });
        let physical: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        plans.keep(sql.into(), counts, &logical, &physical);
    }

    #[test]
    fn a_plan_is_found_only_at_the_counts_it_was_made_at() {
        let plans = PlanCache::default();
        keep(&plans, "SELECT 1", (3, 7));
        assert!(plans.get("SELECT 1", 3, 7).is_some());
        assert!(plans.get("SELECT 1", 4, 7).is_none(), "a change since");
        assert!(plans.get("SELECT 1", 3, 8).is_none(), "an eviction since");
        assert!(plans.get("SELECT 2", 3, 7).is_none());
        assert_eq!(plans.counts(), (1, 1, 3));
    }

    #[test]
    fn a_row_of_literals_is_kept_as_its_answer() {
        use datafusion::common::ScalarValue;
        use datafusion::physical_expr::expressions::{Column, lit};

        let plans = PlanCache::default();
        let row: Arc<dyn ExecutionPlan> =
            Arc::new(PlaceholderRowExec::new(Arc::new(Schema::empty())));
        let literal: Arc<dyn ExecutionPlan> = Arc::new(
            ProjectionExec::try_new(
                vec![(lit(ScalarValue::Int64(Some(42))), "n".to_string())],
                row.clone(),
            )
            .unwrap(),
        );
        let logical = LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: true,
            schema: Arc::new(DFSchema::try_from(literal.schema().as_ref().clone()).unwrap()),
        });
        plans.keep("SELECT 42 AS n".into(), (1, 1), &logical, &literal);
        let Some(Hit {
            run: Kept::Answer(batch),
            ..
        }) = plans.get("SELECT 42 AS n", 1, 5)
        else {
            panic!("kept as its answer, and kept after evictions");
        };
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(
            ScalarValue::try_from_array(batch.column(0), 0).unwrap(),
            ScalarValue::Int64(Some(42))
        );
        assert!(
            plans.get("SELECT 42 AS n", 2, 5).is_none(),
            "a change since"
        );

        // Not answers: a column of the input, or a placeholder row per partition.
        let two_rows: Arc<dyn ExecutionPlan> =
            Arc::new(PlaceholderRowExec::new(Arc::new(Schema::empty())).with_partitions(2));
        let plans_of = [
            ProjectionExec::try_new(
                vec![(lit(ScalarValue::Int64(Some(42))), "n".to_string())],
                two_rows,
            )
            .unwrap(),
            ProjectionExec::try_new(
                vec![(Arc::new(Column::new("n", 0)) as _, "n".to_string())],
                literal.clone(),
            )
            .unwrap(),
        ];
        for (i, physical) in plans_of.into_iter().enumerate() {
            let physical: Arc<dyn ExecutionPlan> = Arc::new(physical);
            let sql = format!("q{i}");
            plans.keep(sql.as_str().into(), (1, 1), &logical, &physical);
            assert!(
                matches!(
                    plans.get(&sql, 1, 1),
                    Some(Hit {
                        run: Kept::Plan(_),
                        ..
                    })
                ),
                "{sql} is a plan"
            );
        }
    }

    #[test]
    fn the_least_recently_used_plans_go_first() {
        let plans = PlanCache::default();
        for i in 0..PLANS_KEPT {
            keep(&plans, &format!("q{i}"), (0, 0));
        }
        assert!(plans.get("q0", 0, 0).is_some()); // q0 used: q1 is now the oldest
        keep(&plans, "new", (0, 0));
        assert_eq!(plans.counts().0, PLANS_KEPT);
        assert!(plans.get("q1", 0, 0).is_none());
        assert!(plans.get("q0", 0, 0).is_some());
        assert!(plans.get("new", 0, 0).is_some());
    }
}
