use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use strata_storage::{MemoryBlobStore, MemoryMetaStore};
use strata_table::{Catalog, Table, TableOptions, WriteOutcome};
use strata_types::{DatasetName, DatasetSpec};

pub fn catalog(opts: TableOptions) -> Catalog {
    Catalog::with_options(
        Arc::new(MemoryBlobStore::new()),
        Arc::new(MemoryMetaStore::new()),
        opts,
    )
}

/// `k` (utf8 partition key), `t` (int64 row key), `v` (float64).
pub fn kv_spec(name: &str, shards: u32, row_key: bool) -> DatasetSpec {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]));
    DatasetSpec::new(
        DatasetName::new(name).unwrap(),
        schema,
        vec!["k".into()],
        if row_key { vec!["t".into()] } else { vec![] },
        shards,
    )
    .unwrap()
}

pub fn kv_batch(rows: &[(&str, i64, Option<f64>)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

pub async fn put(table: &Table, rows: &[(&str, i64, Option<f64>)]) -> u64 {
    match table
        .write(&[kv_batch(rows)], BTreeMap::new())
        .await
        .unwrap()
    {
        WriteOutcome::Committed(info) => info.version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Rows of a batch with columns k, t, v as sorted tuples (v as its bits for Ord).
pub fn rows_of(batch: &RecordBatch) -> Vec<(String, i64, Option<u64>)> {
    let k = batch
        .column_by_name("k")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let t = batch
        .column_by_name("t")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let v = batch
        .column_by_name("v")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let mut out: Vec<_> = (0..batch.num_rows())
        .map(|i| {
            (
                k.value(i).to_string(),
                t.value(i),
                (!arrow::array::Array::is_null(v, i)).then(|| v.value(i).to_bits()),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn expect(rows: &[(&str, i64, Option<f64>)]) -> Vec<(String, i64, Option<u64>)> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|(k, t, v)| (k.to_string(), *t, v.map(f64::to_bits)))
        .collect();
    out.sort();
    out
}
