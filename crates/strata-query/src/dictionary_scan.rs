//! Reading a grouped-by string key column as a dictionary.
//!
//! Segments store a string key column dictionary-encoded: each row group holds its
//! distinct keys once and each row an index, in long runs (rows are sorted by key).
//! The engine reads strings as views, so a scan gathers a 16-byte view for every row,
//! and [`RunAggregateExec`](crate::run_aggregate::RunAggregateExec) then compares those
//! views to find the runs. It needs neither: [`read_as_dictionary`] rebuilds the
//! Parquet scan under it so that the column comes out as `Dictionary(Int32, Utf8)` — the
//! indices as decoded, with the row group's dictionary shared by its batches — and the
//! aggregation finds runs over the indices, turning only each run's first key into the
//! output's type. Only files whose footers (cached: a server reads them at start) show
//! every row group's column dictionary-encoded throughout qualify — where a writer fell
//! back to plain values (keys of many values), the reader would hash each value into a
//! dictionary. Only operators that pass the column through untouched may sit
//! between (a filter or projection not reading it, round-robin repartitioning), and
//! the scan's own predicate must not read it: everything else expects views.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use parquet::basic::Encoding;
use strata_table::SegmentMeta;

use crate::run_aggregate::{SortedFile, SortedFiles};

/// The type a string key column is read as.
pub(crate) fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `plan` with its output column `column` read as [`dictionary_type`], or `None` when
/// that is not possible (see the module docs). Every other column is unchanged.
pub(crate) fn read_as_dictionary(
    plan: &Arc<dyn ExecutionPlan>,
    column: usize,
    files: &SortedFiles,
) -> Option<Arc<dyn ExecutionPlan>> {
    if let Some(source) = plan.downcast_ref::<DataSourceExec>() {
        return dictionary_scan(source, column, files);
    }
    let input = if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let inner = match filter.projection() {
            Some(p) => *p.get(column)?,
            None => column,
        };
        if reads(filter.predicate(), inner) {
            return None;
        }
        read_as_dictionary(filter.input(), inner, files)?
    } else if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let inner = projection
            .expr()
            .get(column)?
            .expr
            .downcast_ref::<Column>()?
            .index();
        // Other outputs may repeat the column as it is, not compute with it.
        let computed = projection
            .expr()
            .iter()
            .any(|p| p.expr.downcast_ref::<Column>().is_none() && reads(&p.expr, inner));
        if computed {
            return None;
        }
        read_as_dictionary(projection.input(), inner, files)?
    } else if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
        if !matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_)) {
            return None;
        }
        read_as_dictionary(repartition.input(), column, files)?
    } else {
        return None;
    };
    // The column's type changes, so the node's schema and properties are recomputed.
    plan.clone()
        .replace_children(
            vec![input],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
        .ok()
}

/// Whether `expr` reads input column `index`.
fn reads(expr: &Arc<dyn PhysicalExpr>, index: usize) -> bool {
    collect_columns(expr).iter().any(|c| c.index() == index)
}

fn dictionary_scan(
    source: &DataSourceExec,
    column: usize,
    files: &SortedFiles,
) -> Option<Arc<dyn ExecutionPlan>> {
    let config = source.data_source().downcast_ref::<FileScanConfig>()?;
    let parquet = config.file_source.downcast_ref::<ParquetSource>()?;
    let table = parquet.table_schema();
    if !table.table_partition_cols().is_empty() {
        return None;
    }
    let projection = parquet.projection()?;
    let index = projection
        .iter()
        .nth(column)?
        .expr
        .downcast_ref::<Column>()?
        .index();
    let file_schema = table.file_schema();
    let field = file_schema.field(index);
    if !matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View) {
        return None;
    }
    let name = field.name();
    // The predicate is evaluated against the table's columns by name.
    let predicate = parquet.filter();
    if predicate
        .as_ref()
        .is_some_and(|p| collect_columns(p).iter().any(|c| c.name() == name))
    {
        return None;
    }
    // Each file is read with its own columns, the key column as a dictionary.
    let mut hints: Vec<(SchemaRef, SchemaRef)> = vec![];
    let mut groups = Vec::with_capacity(config.file_groups.len());
    for group in &config.file_groups {
        let mut out = Vec::with_capacity(group.len());
        for file in group.iter() {
            let recorded = files.get(file.object_meta.location.as_ref())?;
            // A key column that fell back to plain values would be hashed into a
            // dictionary as it is read: slower than views.
            if !dictionary_encoded(&recorded, file, name) {
                return None;
            }
            let written = written_schema(&recorded.stored, &recorded.segment)?;
            let hint = match hints.iter().find(|(w, _)| Arc::ptr_eq(w, &written)) {
                Some((_, hint)) => hint.clone(),
                None => {
                    let hint = with_dictionary(&written, name, DataType::Utf8)?;
                    hints.push((written, hint.clone()));
                    hint
                }
            };
            out.push(file.clone().with_arrow_schema(hint));
        }
        let mut rebuilt = FileGroup::new(out);
        if let Some(statistics) = group.file_statistics(None) {
            rebuilt = rebuilt.with_statistics(Arc::new(statistics.clone()));
        }
        groups.push(rebuilt);
    }
    let file_schema = with_dictionary(file_schema, name, field.data_type().clone())?;
    let mut rebuilt = ParquetSource::new(file_schema)
        .with_table_parquet_options(parquet.table_parquet_options().clone());
    if let Some(readers) = parquet.parquet_file_reader_factory() {
        rebuilt = rebuilt.with_parquet_file_reader_factory(readers.clone());
    }
    if let Some(predicate) = predicate {
        rebuilt = rebuilt.with_predicate(predicate);
    }
    let rebuilt = rebuilt.try_pushdown_projection(projection).ok()??;
    let mut config = config.clone();
    config.file_source = rebuilt;
    config.file_groups = groups;
    Some(DataSourceExec::from_data_source(config))
}

/// `schema` with its column `name` (of type `expected`) as [`dictionary_type`];
/// `schema` itself if it lacks the column (a file written before it was added reads it
/// as nulls), `None` if the column has another type.
fn with_dictionary(schema: &SchemaRef, name: &str, expected: DataType) -> Option<SchemaRef> {
    let Ok(index) = schema.index_of(name) else {
        return Some(schema.clone());
    };
    let field = schema.field(index);
    if *field.data_type() != expected {
        return None;
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[index] = field.clone().with_data_type(dictionary_type());
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// Whether every row group of `file` stores column `name` dictionary-encoded throughout
/// (no page fell back to plain values), as its footer in the metadata cache says; false
/// when the footer is not there.
fn dictionary_encoded(recorded: &SortedFile, file: &PartitionedFile, name: &str) -> bool {
    let Some(entry) = recorded.footers.get(&file.object_meta.location) else {
        return false;
    };
    let Some(footer) = entry
        .is_valid_for(&file.object_meta)
        .then(|| {
            entry
                .file_metadata
                .as_any()
                .downcast_ref::<CachedParquetMetaData>()
        })
        .flatten()
    else {
        return false;
    };
    let footer = footer.parquet_metadata();
    let columns = footer.file_metadata().schema_descr().columns();
    let Some(i) = columns.iter().position(|c| c.path().string() == name) else {
        return false;
    };
    footer.row_groups().iter().all(|rg| {
        let chunk = rg.column(i);
        chunk.dictionary_page_offset().is_some()
            && chunk.page_encoding_stats_mask().is_some_and(|mask| {
                mask.is_only(Encoding::RLE_DICTIONARY) || mask.is_only(Encoding::PLAIN_DICTIONARY)
            })
    })
}

/// The columns `segment` was written with, typed as stored: the stored schema when the
/// segment has all its columns (columns are only ever added), else the fields its
/// statistics name, in their order. `None` if one is unknown.
fn written_schema(stored: &SchemaRef, segment: &SegmentMeta) -> Option<SchemaRef> {
    let names = segment.columns.iter().map(|c| c.name.as_str());
    if names
        .clone()
        .eq(stored.fields().iter().map(|f| f.name().as_str()))
    {
        return Some(stored.clone());
    }
    let fields = names
        .map(|n| stored.field_with_name(n).ok().cloned())
        .collect::<Option<Vec<Field>>>()?;
    (!fields.is_empty())
        .then(|| Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone())))
}
