//! Aggregates answered from segment statistics when a whole table (or what survives
//! pruning) is aggregated without a filter on rows.
//!
//! DataFusion's `AggregateStatistics` rule replaces an aggregation by its value when
//! every aggregate can be computed from the input's exact statistics: `count` from row
//! and null counts, `min`/`max` from bounds, `sum` from sums (see
//! [`crate::overflow::CheckedSum`]). [`StatsAvg`] is DataFusion's `avg` with the same
//! ability: a `DOUBLE` average is the column's exact sum over its non-null count. The
//! statistics are exact only over segments without deleted rows; otherwise the
//! aggregate runs as usual.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::stats::Precision;
use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::session_state::SessionState;
use datafusion::functions_aggregate::average::Avg;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, StatisticsArgs,
};
use datafusion::physical_expr::expressions::Column;

/// The methods of an aggregate that wraps another (its `inner` field) and passes on
/// unchanged: name, aliases, signature, return type, state fields, group-accumulator
/// support, reverse and documentation.
macro_rules! delegate_udaf {
    () => {
        fn name(&self) -> &str {
            self.inner.name()
        }

        fn aliases(&self) -> &[String] {
            self.inner.aliases()
        }

        fn signature(&self) -> &datafusion::logical_expr::Signature {
            self.inner.signature()
        }

        fn return_type(
            &self,
            arg_types: &[arrow::datatypes::DataType],
        ) -> datafusion::error::Result<arrow::datatypes::DataType> {
            self.inner.return_type(arg_types)
        }

        fn state_fields(
            &self,
            args: datafusion::logical_expr::function::StateFieldsArgs<'_>,
        ) -> datafusion::error::Result<Vec<arrow::datatypes::FieldRef>> {
            self.inner.state_fields(args)
        }

        fn groups_accumulator_supported(
            &self,
            args: datafusion::logical_expr::function::AccumulatorArgs<'_>,
        ) -> bool {
            self.inner.groups_accumulator_supported(args)
        }

        fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
            self.inner.reverse_expr()
        }

        fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
            self.inner.documentation()
        }
    };
}
pub(crate) use delegate_udaf;

/// Registers [`StatsAvg`] in place of DataFusion's `avg`.
pub fn install(state: &mut SessionState) -> Result<()> {
    state.register_udaf(Arc::new(AggregateUDF::from(StatsAvg::default())))?;
    Ok(())
}

/// DataFusion's `avg`, answered from exact statistics for `DOUBLE` columns.
#[derive(Debug, PartialEq, Eq, Hash, Default)]
pub struct StatsAvg {
    inner: Avg,
}

impl AggregateUDFImpl for StatsAvg {
    crate::aggregates::delegate_udaf!();

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }

    /// The exact sum over the exact non-null count of a `DOUBLE` column (null when
    /// every value is null or there are no rows, as the accumulator answers).
    fn value_from_stats(&self, args: &StatisticsArgs<'_>) -> Option<ScalarValue> {
        if args.is_distinct || *args.return_type != DataType::Float64 {
            return None;
        }
        let [expr] = args.exprs else {
            return None;
        };
        let column = expr.downcast_ref::<Column>()?;
        let stats = args.statistics.column_statistics.get(column.index())?;
        let (Precision::Exact(rows), Precision::Exact(nulls)) =
            (args.statistics.num_rows, stats.null_count)
        else {
            return None;
        };
        let count = rows.checked_sub(nulls)?;
        if count == 0 {
            return Some(ScalarValue::Float64(None));
        }
        match &stats.sum_value {
            Precision::Exact(ScalarValue::Float64(Some(sum))) => {
                Some(ScalarValue::Float64(Some(sum / count as f64)))
            }
            _ => None,
        }
    }
}
