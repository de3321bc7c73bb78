//! String and binary columns are queried as Arrow view types, stored and answered as
//! plain ones.
//!
//! Inside the engine a dataset's `Utf8` columns are `Utf8View` and its `Binary` columns
//! `BinaryView`, as DataFusion's own Parquet tables do (`schema_force_view_types`): the
//! Parquet reader decodes straight into views, short strings sit inline in the view
//! and hash and compare without a pointer chase (grouping by a station code is ~1.5×
//! faster than over `Utf8`). Segments keep the plain types, and results leave the
//! engine with them, so clients see the dataset's declared types whatever ran inside.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast as cast_expr};

/// The type a stored column has inside the engine.
pub fn view_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Utf8 => DataType::Utf8View,
        DataType::Binary => DataType::BinaryView,
        other => other.clone(),
    }
}

/// A dataset's schema as the engine sees it.
pub fn view_schema(schema: &Schema) -> SchemaRef {
    map_types(schema, |dt| Some(view_type(dt)).filter(|v| v != dt))
}

/// `schema` with the types `f` changes (`None`: unchanged).
fn map_types(schema: &Schema, f: impl Fn(&DataType) -> Option<DataType>) -> SchemaRef {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|field| match f(field.data_type()) {
            Some(dt) => Arc::new(field.as_ref().clone().with_data_type(dt)),
            None => field.clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The type a value of `dt` is answered (or stored) as: views become the plain types,
/// inside lists and structs too. `None` when `dt` holds no view.
pub fn plain_type(dt: &DataType) -> Option<DataType> {
    let field =
        |f: &FieldRef| plain_type(f.data_type()).map(|t| f.as_ref().clone().with_data_type(t));
    match dt {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        DataType::List(f) => field(f).map(|f| DataType::List(Arc::new(f))),
        DataType::LargeList(f) => field(f).map(|f| DataType::LargeList(Arc::new(f))),
        DataType::FixedSizeList(f, n) => field(f).map(|f| DataType::FixedSizeList(Arc::new(f), *n)),
        DataType::Struct(fields) => {
            let changed: Vec<Option<Field>> = fields.iter().map(field).collect();
            changed.iter().any(Option::is_some).then(|| {
                DataType::Struct(
                    fields
                        .iter()
                        .zip(changed)
                        .map(|(f, c)| c.map_or_else(|| f.clone(), Arc::new))
                        .collect(),
                )
            })
        }
        _ => None,
    }
}

/// `schema` with its view types replaced by the plain ones.
pub fn plain_schema(schema: &Schema) -> SchemaRef {
    map_types(schema, plain_type)
}

/// `batch` with its view columns cast to the plain types (for the table layer, which
/// stores and checks the declared types).
pub fn plain_batch(batch: &RecordBatch) -> DfResult<RecordBatch> {
    let plain = plain_schema(&batch.schema());
    if plain == batch.schema() {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(plain.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(plain, columns)?)
}

/// A query plan whose output holds views, under a projection casting them to the
/// plain types; any other plan as it is.
pub fn plain_output(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    if let LogicalPlan::DescribeTable(mut d) = plan {
        // `DESCRIBE t` lists the declared types.
        d.schema = plain_schema(&d.schema);
        return Ok(LogicalPlan::DescribeTable(d));
    }
    if matches!(
        plan,
        LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
    ) {
        return Ok(plan);
    }
    let schema: &DFSchema = plan.schema();
    if schema
        .fields()
        .iter()
        .all(|f| plain_type(f.data_type()).is_none())
    {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = schema
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column((qualifier, field).into());
            match plain_type(field.data_type()) {
                Some(dt) => cast_expr(column, dt).alias_qualified(qualifier.cloned(), field.name()),
                None => column,
            }
        })
        .collect();
    LogicalPlanBuilder::from(plan).project(exprs)?.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, StringViewArray};

    #[test]
    fn views_map_back_to_the_declared_types() {
        let stored = Schema::new(vec![
            Field::new("s", DataType::Utf8, false),
            Field::new("b", DataType::Binary, true),
            Field::new("n", DataType::Int32, true),
        ]);
        let viewed = view_schema(&stored);
        assert_eq!(viewed.field(0).data_type(), &DataType::Utf8View);
        assert_eq!(viewed.field(1).data_type(), &DataType::BinaryView);
        assert_eq!(viewed.field(2).data_type(), &DataType::Int32);
        for (v, s) in viewed.fields().iter().zip(stored.fields()) {
            let back = plain_type(v.data_type()).unwrap_or_else(|| v.data_type().clone());
            assert_eq!(&back, s.data_type());
        }
        let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true)));
        assert_eq!(
            plain_type(&list),
            Some(DataType::List(Arc::new(Field::new(
                "item",
                DataType::Utf8,
                true
            ))))
        );
    }

    #[test]
    fn batches_leave_with_plain_types() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringViewArray::from(vec![
                    "a",
                    "a string longer than twelve",
                ])) as ArrayRef,
            ),
            ("n", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
        ])
        .unwrap();
        let plain = plain_batch(&batch).unwrap();
        assert_eq!(plain.schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(plain.schema().field(1).data_type(), &DataType::Int32);
        let s = plain
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(s.value(1), "a string longer than twelve");
    }
}
