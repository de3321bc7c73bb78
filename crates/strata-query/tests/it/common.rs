use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use strata_storage::{BlobStore, MemoryBlobStore, MemoryMetaStore, MetaStore};
use strata_table::{Catalog, Table, WriteOutcome};
use strata_types::{DatasetName, DatasetSpec};

pub const STATIONS: usize = 10;
pub const SHARDS: u32 = 8;

pub fn memory_catalog() -> Catalog {
    let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
    Catalog::new(blobs, meta)
}

/// `station` (partition key), `ts` (row key), `temp`.
pub fn weather_spec(name: &str) -> DatasetSpec {
    let schema = Arc::new(Schema::new(vec![
        Field::new("station", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, true),
    ]));
    DatasetSpec::new(
        DatasetName::new(name).unwrap(),
        schema,
        vec!["station".into()],
        vec!["ts".into()],
        SHARDS,
    )
    .unwrap()
}

pub fn station(i: usize) -> String {
    format!("s{i}")
}

/// Every station, every `ts` in `ts`, temp = f(station, ts) + offset.
pub fn batch(ts: std::ops::Range<i64>, offset: f64) -> RecordBatch {
    let mut st = Vec::new();
    let mut t = Vec::new();
    let mut v = Vec::new();
    for s in 0..STATIONS {
        for x in ts.clone() {
            st.push(station(s));
            t.push(x);
            v.push(s as f64 * 10.0 + (x % 7) as f64 + offset);
        }
    }
    RecordBatch::try_new(
        weather_spec("x").schema,
        vec![
            Arc::new(StringArray::from(st)),
            Arc::new(Int64Array::from(t)),
            Arc::new(Float64Array::from(v)),
        ],
    )
    .unwrap()
}

pub async fn write(table: &Table, batch: RecordBatch) -> u64 {
    match table.write(&[batch], BTreeMap::new()).await.unwrap() {
        WriteOutcome::Committed(info) => info.version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Versions of the standard history, see [`weather`].
#[derive(Debug)]
pub struct History {
    pub table: Table,
    /// After ts 0..100.
    pub v_first: u64,
    /// After the upsert of ts 50..150 (temp + 1000).
    pub v_upsert: u64,
    /// After `humidity` was added.
    pub v_column: u64,
    /// Head: ts 200..250 with humidity.
    pub v_head: u64,
}

/// ts 0..100, then 100..200, then an upsert of 50..150 (temp + 1000), then a new
/// nullable column `humidity`, then ts 200..250 with humidity = ts.
pub async fn weather(catalog: &Catalog, name: &str) -> History {
    let table = catalog.create_table(weather_spec(name)).await.unwrap();
    let v_first = write(&table, batch(0..100, 0.0)).await;
    write(&table, batch(100..200, 0.0)).await;
    let v_upsert = write(&table, batch(50..150, 1000.0)).await;
    let v_column = table
        .add_column(Field::new("humidity", DataType::Float64, true))
        .await
        .unwrap()
        .version;
    let b = batch(200..250, 0.0);
    let humidity = Float64Array::from_iter_values(
        b.column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .iter()
            .map(|&t| t as f64),
    );
    let mut fields = b.schema().fields().to_vec();
    fields.push(Arc::new(Field::new("humidity", DataType::Float64, true)));
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(humidity));
    let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let v_head = write(&table, b).await;
    History {
        table,
        v_first,
        v_upsert,
        v_column,
        v_head,
    }
}
