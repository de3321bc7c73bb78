//! Integer overflow is an error, not a wrapped value.
//!
//! DataFusion computes `+`, `-`, `*` and unary `-` on integers with Arrow's wrapping
//! kernels (and folds constants the same way while planning), and its `sum` adds with
//! wrapping arithmetic, so `SELECT 9223372036854775807 + 1` answers
//! `-9223372036854775808`. SQL says such a result is an error (SQLSTATE 22003,
//! "numeric value out of range"); Strata answers it as [`Error::Overflow`], which the
//! server sends as OUT_OF_RANGE.
//!
//! - [`CheckedArithmetic`], an analyzer rule that runs after type coercion, replaces
//!   every integer `a + b`, `a - b`, `a * b` and `-a` by a call of [`CheckedOp`], which
//!   uses Arrow's checked kernels. The call keeps the operator's column name
//!   (`t.a + Int64(1)`), so result schemas do not change. Constant folding evaluates
//!   the call too, and an overflow there leaves it to fail when the query runs.
//! - [`CheckedSum`] is DataFusion's `sum` with checked additions for `BIGINT` and
//!   `BIGINT UNSIGNED` results (smaller integers are summed as those); the other types
//!   are DataFusion's own.
//!
//! [`Error::Overflow`]: crate::Error::Overflow

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, Datum};
use arrow::compute::kernels::numeric;
use arrow::datatypes::{ArrowNativeTypeOp, DataType, FieldRef, Int64Type, UInt64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::session_state::SessionState;
use datafusion::functions_aggregate::sum::Sum;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, BinaryExpr, ColumnarValue, EmitTo, Expr,
    ExprSchemable, GroupsAccumulator, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, SetMonotonicity, Signature, StatisticsArgs, Volatility,
    utils::AggregateOrderSensitivity,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;

/// Makes `state`'s integer arithmetic and `sum` fail on overflow.
pub fn install(state: &mut SessionState) -> Result<()> {
    state.add_analyzer_rule(Arc::new(CheckedArithmetic));
    state.register_udaf(Arc::new(AggregateUDF::from(CheckedSum::default())))?;
    Ok(())
}

/// An arithmetic operation that fails on overflow instead of wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Neg,
}

impl Op {
    fn of(op: Operator) -> Option<Self> {
        match op {
            Operator::Plus => Some(Op::Add),
            Operator::Minus => Some(Op::Sub),
            Operator::Multiply => Some(Op::Mul),
            _ => None,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub | Op::Neg => "-",
            Op::Mul => "*",
        }
    }
}

/// `a op b` (or `-a`) on integers of one type, computed with Arrow's checked kernels.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedOp {
    op: Op,
    name: String,
    signature: Signature,
}

impl CheckedOp {
    pub fn new(op: Op) -> Self {
        let arity = if op == Op::Neg { 1 } else { 2 };
        Self {
            op,
            name: format!("strata_checked_{op:?}").to_lowercase(),
            signature: Signature::any(arity, Volatility::Immutable),
        }
    }

    /// The call replacing `expr`.
    fn call(op: Op, args: Vec<Expr>) -> Expr {
        Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(CheckedOp::new(op))),
            args,
        ))
    }
}

fn datum(value: &ColumnarValue) -> Result<Box<dyn Datum>> {
    Ok(match value {
        ColumnarValue::Array(a) => Box::new(a.clone()),
        ColumnarValue::Scalar(s) => Box::new(s.to_scalar()?),
    })
}

impl ScalarUDFImpl for CheckedOp {
    fn name(&self) -> &str {
        &self.name
    }

    /// The operator's own column name, so that replacing it changes no schema.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(match (self.op, args) {
            (Op::Neg, [a]) => format!("(- {})", a.schema_name()),
            (op, [a, b]) => format!("{} {} {}", a.schema_name(), op.symbol(), b.schema_name()),
            _ => return Err(arity_error(self.op, args.len())),
        })
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] | [t, _] => Ok(t.clone()),
            _ => Err(arity_error(self.op, arg_types.len())),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        let data_type = self.return_type(
            &args
                .arg_fields
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>(),
        )?;
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(arrow::datatypes::Field::new(
            self.name(),
            data_type,
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let result: ArrayRef = match (self.op, args.args.as_slice()) {
            (Op::Neg, [a]) => numeric::neg(a.to_array(1)?.as_ref())?,
            (op, [a, b]) => {
                let (a, b) = (datum(a)?, datum(b)?);
                let (a, b) = (a.as_ref(), b.as_ref());
                match op {
                    Op::Add => numeric::add(a, b)?,
                    Op::Sub => numeric::sub(a, b)?,
                    _ => numeric::mul(a, b)?,
                }
            }
            (op, args) => return Err(arity_error(op, args.len())),
        };
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

fn arity_error(op: Op, n: usize) -> DataFusionError {
    DataFusionError::Internal(format!("checked {op:?} called with {n} arguments"))
}

/// The analyzer rule that makes integer arithmetic checked (see the module docs).
#[derive(Debug, Default)]
pub struct CheckedArithmetic;

impl AnalyzerRule for CheckedArithmetic {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let schema = if plan.inputs().is_empty() {
                DFSchema::empty()
            } else {
                merge_schema(&plan.inputs())
            };
            plan.map_expressions(|e| e.transform_up(|e| checked(e, &schema)))
        })
        .data()
    }

    fn name(&self) -> &str {
        "strata_checked_arithmetic"
    }
}

/// `e` with its integer operator replaced by a checked call (`e` when it is not one).
fn checked(e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let type_of = |e: &Expr| e.get_type(schema).ok();
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match Op::of(op) {
            Some(checked_op)
                if matches!(
                    (type_of(&left), type_of(&right)),
                    (Some(l), Some(r)) if l == r && l.is_integer()
                ) =>
            {
                Ok(Transformed::yes(CheckedOp::call(
                    checked_op,
                    vec![*left, *right],
                )))
            }
            _ => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                left,
                op,
                right,
            }))),
        },
        Expr::Negative(inner) if type_of(&inner).is_some_and(|t| t.is_signed_integer()) => {
            Ok(Transformed::yes(CheckedOp::call(Op::Neg, vec![*inner])))
        }
        other => Ok(Transformed::no(other)),
    }
}

/// DataFusion's `sum`, whose `BIGINT` and `BIGINT UNSIGNED` sums fail on overflow.
#[derive(Debug, PartialEq, Eq, Hash, Default)]
pub struct CheckedSum {
    inner: Sum,
}

/// True for the result types whose sums DataFusion would wrap.
fn checked_type(t: &DataType) -> bool {
    matches!(t, DataType::Int64 | DataType::UInt64)
}

impl AggregateUDFImpl for CheckedSum {
    crate::aggregates::delegate_udaf!();

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        checked_accumulator(args, |args| self.inner.accumulator(args))
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let data_type = args.return_field.data_type().clone();
        match data_type {
            DataType::Int64 => Ok(checked_groups::<Int64Type>(&data_type)),
            DataType::UInt64 => Ok(checked_groups::<UInt64Type>(&data_type)),
            _ => self.inner.create_groups_accumulator(args),
        }
    }

    fn create_sliding_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn Accumulator>> {
        checked_accumulator(args, |args| self.inner.create_sliding_accumulator(args))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }

    /// A `DOUBLE` sum from the segments' statistics (floats do not wrap); an integer
    /// statistic, merged with wrapping additions, is not a checked sum.
    fn value_from_stats(&self, args: &StatisticsArgs<'_>) -> Option<ScalarValue> {
        if *args.return_type == DataType::Float64 {
            self.inner.value_from_stats(args)
        } else {
            None
        }
    }

    // Not delegated: `simplify_expr_op_literal` (it would rewrite `sum(a + 1)` with a
    // wrapping `+`).
}

/// The accumulator of a checked sum: DataFusion's (`inner`) for the types it does not
/// wrap; for the others its distinct accumulator summed with checks, or a [`WideSum`].
fn checked_accumulator(
    args: AccumulatorArgs<'_>,
    inner: impl FnOnce(AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>>,
) -> Result<Box<dyn Accumulator>> {
    let data_type = args.return_field.data_type().clone();
    if !checked_type(&data_type) {
        return inner(args);
    }
    if args.is_distinct {
        return Ok(Box::new(DistinctSum {
            inner: inner(args)?,
            data_type,
        }));
    }
    Ok(Box::new(WideSum::new(data_type)))
}

fn overflow(data_type: &DataType) -> DataFusionError {
    DataFusionError::ArrowError(
        Box::new(arrow::error::ArrowError::ArithmeticOverflow(format!(
            "sum out of range for {data_type}"
        ))),
        None,
    )
}

/// A 128-bit running sum of 64-bit integers, checked when it is read: the result is an
/// error only when the sum itself does not fit (not when an intermediate one did not, which
/// matters for a window frame that adds before it retracts).
#[derive(Debug)]
struct WideSum {
    sum: i128,
    count: u64,
    data_type: DataType,
}

impl WideSum {
    fn new(data_type: DataType) -> Self {
        Self {
            sum: 0,
            count: 0,
            data_type,
        }
    }

    /// Adds (or with `sign` -1 retracts) the non-null values of `values`.
    fn apply(&mut self, values: &ArrayRef, sign: i128) -> Result<()> {
        let (sum, count) = match values.data_type() {
            DataType::Int64 => wide_sum(values.as_primitive::<Int64Type>()),
            DataType::UInt64 => wide_sum(values.as_primitive::<UInt64Type>()),
            other => {
                return Err(DataFusionError::Internal(format!(
                    "checked sum of {other} values"
                )));
            }
        };
        // Fewer than 2^63 values of magnitude below 2^64 cannot leave i128.
        self.sum += sign * sum;
        self.count = if sign > 0 {
            self.count + count
        } else {
            self.count.saturating_sub(count)
        };
        Ok(())
    }

    fn value(&self) -> Result<ScalarValue> {
        if self.count == 0 {
            return ScalarValue::try_from(&self.data_type);
        }
        match self.data_type {
            DataType::Int64 => i64::try_from(self.sum)
                .map(|v| ScalarValue::Int64(Some(v)))
                .map_err(|_| overflow(&self.data_type)),
            _ => u64::try_from(self.sum)
                .map(|v| ScalarValue::UInt64(Some(v)))
                .map_err(|_| overflow(&self.data_type)),
        }
    }
}

/// A 64-bit integer as its high (signed) and low 32 bits, so that a batch's values can
/// be summed exactly in two 64-bit sums the compiler vectorizes (a batch has fewer than
/// 2^31 rows, so neither can overflow).
trait Halves: Copy {
    fn halves(self) -> (i64, u64);
}

impl Halves for i64 {
    fn halves(self) -> (i64, u64) {
        (self >> 32, self as u64 & 0xFFFF_FFFF)
    }
}

impl Halves for u64 {
    fn halves(self) -> (i64, u64) {
        ((self >> 32) as i64, self & 0xFFFF_FFFF)
    }
}

/// The exact sum and count of the non-null values.
fn wide_sum<T>(values: &arrow::array::PrimitiveArray<T>) -> (i128, u64)
where
    T: ArrowPrimitiveType,
    T::Native: Halves,
{
    let (mut high, mut low) = (0i64, 0u64);
    let count = match values.nulls().filter(|n| n.null_count() > 0) {
        None => {
            for v in values.values() {
                let (h, l) = v.halves();
                high = high.wrapping_add(h);
                low = low.wrapping_add(l);
            }
            values.len()
        }
        Some(nulls) => {
            for i in nulls.valid_indices() {
                let (h, l) = values.value(i).halves();
                high = high.wrapping_add(h);
                low = low.wrapping_add(l);
            }
            values.len() - nulls.null_count()
        }
    };
    ((i128::from(high) << 32) + i128::from(low), count as u64)
}

impl Accumulator for WideSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], 1)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], -1)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.apply(&states[0], 1)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.value()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// DataFusion's distinct-sum accumulator, whose state is the list of distinct values,
/// summed here with checked arithmetic.
#[derive(Debug)]
struct DistinctSum {
    inner: Box<dyn Accumulator>,
    data_type: DataType,
}

impl Accumulator for DistinctSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(values)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let state = self.inner.state()?;
        let mut sum = WideSum::new(self.data_type.clone());
        if let [ScalarValue::List(list)] = state.as_slice() {
            for values in list.iter().flatten() {
                let values = arrow::compute::cast(&values, &self.data_type)?;
                sum.apply(&values, 1)?;
            }
        } else {
            return Err(DataFusionError::Internal(
                "distinct sum state is not a list".into(),
            ));
        }
        sum.value()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

/// DataFusion's per-group sum with checked additions: an overflow is noted by the
/// addition and reported when the batch that caused it has been added.
struct CheckedGroups<G> {
    inner: G,
    overflowed: Arc<AtomicBool>,
    data_type: DataType,
}

impl<G> fmt::Debug for CheckedGroups<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedGroups")
            .field("data_type", &self.data_type)
            .finish()
    }
}

/// The checked per-group sum of `T`s (the addition is a closure DataFusion inlines).
fn checked_groups<T: ArrowPrimitiveType + Send>(
    data_type: &DataType,
) -> Box<dyn GroupsAccumulator> {
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    let inner =
        PrimitiveGroupsAccumulator::<T, _>::new(data_type, move |x, y| match x.add_checked(y) {
            Ok(sum) => *x = sum,
            Err(_) => flag.store(true, Ordering::Relaxed),
        });
    Box::new(CheckedGroups {
        inner,
        overflowed,
        data_type: data_type.clone(),
    })
}

impl<G> CheckedGroups<G> {
    fn check(&self) -> Result<()> {
        if self.overflowed.load(Ordering::Relaxed) {
            Err(overflow(&self.data_type))
        } else {
            Ok(())
        }
    }
}

impl<G: GroupsAccumulator> GroupsAccumulator for CheckedGroups<G> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)?;
        self.check()
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .merge_batch(values, group_indices, total_num_groups)?;
        self.check()
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.check()?;
        self.inner.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.check()?;
        self.inner.state(emit_to)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, UInt64Array};

    use super::*;

    #[test]
    fn wide_sums_are_exact() {
        let values = [
            i64::MAX,
            i64::MAX,
            i64::MIN,
            -1,
            0,
            1 << 40,
            -(1 << 33) + 5,
            i64::MIN,
        ];
        let nullable: Int64Array = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i % 3 != 1).then_some(*v))
            .collect();
        for array in [Int64Array::from(values.to_vec()), nullable] {
            let expected: i128 = array.iter().flatten().map(i128::from).sum();
            let count = array.iter().flatten().count() as u64;
            assert_eq!(wide_sum(&array), (expected, count));
        }
        let unsigned = UInt64Array::from(vec![u64::MAX, u64::MAX, 1, 1 << 63]);
        let expected: i128 = unsigned.iter().flatten().map(i128::from).sum();
        assert_eq!(wide_sum(&unsigned), (expected, 4));
    }
}
