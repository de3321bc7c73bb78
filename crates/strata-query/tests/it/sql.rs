//! SQL through the engine: pruning, time travel, introspection, write statements,
//! limits and errors.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StringArray, UInt64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::DataType;
use strata_query::views::plain_type;
use strata_query::{Engine, Error, QueryConfig};
use strata_storage::{BlobStore, CountingBlobStore, MemoryBlobStore, MemoryMetaStore, MetaStore};
use strata_table::Catalog;

use crate::common::{History, STATIONS, batch, weather, write};

fn engine(catalog: &Catalog) -> Engine {
    Engine::new(catalog.clone(), QueryConfig::default()).unwrap()
}

async fn rows(engine: &Engine, sql: &str) -> RecordBatch {
    let stream = engine
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let schema = stream.schema();
    let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    concat_batches(&schema, &batches).unwrap()
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let b = rows(engine, sql).await;
    assert_eq!(b.num_rows(), 1, "{sql}");
    let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

async fn err(engine: &Engine, sql: &str) -> Error {
    match engine.collect(sql).await {
        Ok(b) => panic!("{sql}: expected an error, got {b:?}"),
        Err(e) => e,
    }
}

fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    let c = arrow::compute::cast(
        b.column_by_name(col).unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let c = c.as_any().downcast_ref::<StringArray>().unwrap();
    (0..c.len()).map(|i| c.value(i).to_string()).collect()
}

async fn history() -> (Catalog, History, Engine) {
    let catalog = crate::common::memory_catalog();
    let h = weather(&catalog, "weather").await;
    let e = engine(&catalog);
    (catalog, h, e)
}

#[tokio::test]
async fn time_travel_by_version_tag_and_timestamp() {
    let (_c, h, e) = history().await;
    let n = STATIONS as i64;
    assert_eq!(count(&e, "SELECT count(*) FROM weather").await, 250 * n);
    let q = format!("SELECT count(*) FROM weather VERSION AS OF {}", h.v_first);
    assert_eq!(count(&e, &q).await, 100 * n);
    // The upsert replaced rows: no key appears twice at any version.
    let q = format!(
        "SELECT count(*) FROM (SELECT station, ts FROM weather VERSION AS OF {} GROUP BY station, ts HAVING count(*) > 1)",
        h.v_upsert
    );
    assert_eq!(count(&e, &q).await, 0);
    let q = format!(
        "SELECT count(*) FROM weather VERSION AS OF {} WHERE temp >= 1000",
        h.v_upsert
    );
    assert_eq!(count(&e, &q).await, 100 * n);
    // Tags, by string or bare name.
    h.table
        .create_tag("first", &h.v_first.into())
        .await
        .unwrap();
    assert_eq!(
        count(&e, "SELECT count(*) FROM weather VERSION AS OF 'first'").await,
        100 * n
    );
    assert_eq!(
        count(&e, "SELECT count(*) FROM weather version as of first").await,
        100 * n
    );
    // Timestamps: now is after every commit; an expression works too.
    assert_eq!(
        count(
            &e,
            "SELECT count(*) FROM weather TIMESTAMP AS OF now() + INTERVAL '1 minute'"
        )
        .await,
        250 * n
    );
    let e2 = err(
        &e,
        "SELECT * FROM weather TIMESTAMP AS OF '1999-01-01T00:00:00'",
    )
    .await;
    assert!(
        matches!(
            e2,
            Error::Table(strata_table::Error::NoVersionAtTime { .. })
        ),
        "{e2}"
    );
    // The versioned name works directly too.
    let q = format!("SELECT count(*) FROM \"weather@v{}\"", h.v_first);
    assert_eq!(count(&e, &q).await, 100 * n);
}

#[tokio::test]
async fn two_versions_of_one_table_in_one_query() {
    let (_c, h, e) = history().await;
    // Rows the upsert changed: join the version before it with the one after.
    let q = format!(
        "SELECT count(*) FROM weather VERSION AS OF {a} o JOIN weather VERSION AS OF {b} n \
         ON o.station = n.station AND o.ts = n.ts WHERE o.temp <> n.temp",
        a = h.v_upsert - 1,
        b = h.v_upsert
    );
    assert_eq!(count(&e, &q).await, 100 * STATIONS as i64);
    // Schema at each version: humidity exists only from v_column on.
    let q = format!("SELECT humidity FROM weather VERSION AS OF {}", h.v_upsert);
    assert!(err(&e, &q).await.is_client_error());
    let q = format!(
        "SELECT count(humidity), count(*) FROM weather VERSION AS OF {}",
        h.v_column
    );
    let b = rows(&e, &q).await;
    assert_eq!(b.num_rows(), 1);
    let q = format!(
        "SELECT count(humidity) FROM weather VERSION AS OF {}",
        h.v_head
    );
    assert_eq!(count(&e, &q).await, 50 * STATIONS as i64);
}

#[tokio::test]
async fn full_sql_joins_windows_subqueries() {
    let (_c, _h, e) = history().await;
    let b = rows(
        &e,
        "SELECT station, ts, rank() OVER (PARTITION BY station ORDER BY temp DESC, ts) r \
         FROM weather WHERE ts < 3 ORDER BY station, r",
    )
    .await;
    assert_eq!(b.num_rows(), 3 * STATIONS);
    let q = "SELECT count(*) FROM weather w WHERE temp > (SELECT avg(temp) FROM weather) \
             AND station IN (SELECT DISTINCT station FROM weather WHERE station < 's5')";
    assert!(count(&e, q).await > 0);
    let b = rows(
        &e,
        "SELECT station, max(temp) m FROM weather GROUP BY station ORDER BY m DESC LIMIT 3",
    )
    .await;
    assert_eq!(b.num_rows(), 3);
    let b = rows(&e, "SHOW TABLES").await;
    assert!(strings(&b, "table_name").contains(&"weather".to_string()));
}

#[tokio::test]
async fn introspection_functions() {
    let (_c, h, e) = history().await;
    h.table.create_tag("t1", &h.v_first.into()).await.unwrap();
    let b = rows(
        &e,
        "SELECT version, operation, tags, is_head FROM strata_versions('weather') ORDER BY version",
    )
    .await;
    assert_eq!(b.num_rows() as u64, h.v_head);
    let ops = strings(&b, "operation");
    assert_eq!(ops[0], "create");
    assert!(ops.contains(&"upsert".to_string()) && ops.contains(&"add_column".to_string()));
    let tags = b
        .column_by_name("tags")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone();
    assert_eq!(tags.value((h.v_first - 1) as usize), "t1");
    let segs = rows(
        &e,
        "SELECT sum(live_rows) live, sum(deleted_rows) deleted FROM strata_segments('weather')",
    )
    .await;
    let live = segs
        .column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap()
        .value(0);
    assert_eq!(live, 250 * STATIONS as u64);
    let q = format!(
        "SELECT sum(live_rows) FROM strata_segments('weather', {})",
        h.v_first
    );
    assert_eq!(count(&e, &q).await, 100 * STATIONS as i64);
    assert!(
        err(&e, "SELECT * FROM strata_versions('nope')")
            .await
            .to_string()
            .contains("nope")
    );
    assert!(
        err(&e, "SELECT * FROM strata_versions()")
            .await
            .is_client_error()
    );
}

#[tokio::test]
async fn write_statements_round_trip() {
    let catalog = crate::common::memory_catalog();
    let e = engine(&catalog);
    let b = rows(
        &e,
        "CREATE TABLE readings (station VARCHAR, ts BIGINT, temp DOUBLE, \
         PRIMARY KEY ((station), ts)) WITH (shards = 4)",
    )
    .await;
    assert_eq!(strings(&b, "operation"), vec!["CREATE TABLE"]);
    assert_eq!(
        catalog.open_table("readings").await.unwrap().spec().shards,
        4
    );
    // IF NOT EXISTS is quiet; without it the name is taken.
    rows(
        &e,
        "CREATE TABLE IF NOT EXISTS readings (a INT PRIMARY KEY)",
    )
    .await;
    assert!(matches!(
        err(&e, "CREATE TABLE readings (a INT PRIMARY KEY)").await,
        Error::Hook(_)
    ));
    let b = rows(
        &e,
        "INSERT INTO readings VALUES ('a', 1, 10.0), ('a', 2, 11.0), ('b', 1, 20.0), ('b', 2, NULL)",
    )
    .await;
    assert_eq!(count_of(&b), 4);
    // An upsert: the same key replaces the row.
    rows(&e, "INSERT INTO readings VALUES ('a', 1, 99.0)").await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 4);
    assert_eq!(
        count(
            &e,
            "SELECT CAST(temp AS BIGINT) FROM readings WHERE station = 'a' AND ts = 1"
        )
        .await,
        99
    );
    let before_delete = catalog
        .open_table("readings")
        .await
        .unwrap()
        .head_version()
        .await
        .unwrap();
    // DELETE with a predicate the table layer evaluates …
    let b = rows(
        &e,
        "DELETE FROM readings WHERE station = 'b' AND temp IS NULL",
    )
    .await;
    assert_eq!(
        b.column_by_name("rows")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .value(0),
        1
    );
    // … and one it does not (a function): found by key.
    rows(&e, "DELETE FROM readings WHERE abs(temp - 11.0) < 0.5").await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 2);
    // INSERT … SELECT from an older version restores a row.
    let q = format!(
        "INSERT INTO readings SELECT * FROM readings VERSION AS OF {before_delete} WHERE ts = 2"
    );
    rows(&e, &q).await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 4);
    // ALTER TABLE ADD COLUMN: old rows read null.
    rows(&e, "ALTER TABLE readings ADD COLUMN humidity DOUBLE").await;
    rows(
        &e,
        "INSERT INTO readings (station, ts, temp, humidity) VALUES ('c', 1, 1.0, 0.5)",
    )
    .await;
    assert_eq!(count(&e, "SELECT count(humidity) FROM readings").await, 1);
    // RESTORE to the version before the deletes, then tags.
    let q = format!("RESTORE TABLE readings TO VERSION AS OF {before_delete}");
    let b = rows(&e, &q).await;
    assert_eq!(strings(&b, "operation"), vec!["RESTORE"]);
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 4);
    assert!(
        err(&e, "SELECT humidity FROM readings")
            .await
            .is_client_error()
    );
    rows(&e, "ALTER TABLE readings CREATE TAG good").await;
    rows(&e, "DELETE FROM readings").await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 0);
    rows(&e, "RESTORE readings TO VERSION AS OF 'good'").await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 4);
    rows(&e, "ALTER TABLE readings DROP TAG good").await;
    assert!(matches!(
        err(&e, "ALTER TABLE readings DROP TAG good").await,
        Error::Table(strata_table::Error::TagNotFound { .. })
    ));
    rows(&e, "ALTER TABLE readings DROP TAG IF EXISTS good").await;
    // Past versions are read-only.
    let e2 = err(&e, "INSERT INTO \"readings@v2\" VALUES ('z', 1, 1.0)").await;
    assert!(e2.is_client_error(), "{e2}");
    rows(&e, "OPTIMIZE readings").await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 4);
    rows(&e, "VACUUM readings RETAIN 1 VERSIONS").await;
    assert_eq!(count(&e, "SELECT count(*) FROM readings").await, 4);
    assert!(matches!(
        err(&e, "SELECT * FROM readings VERSION AS OF 2").await,
        Error::Table(strata_table::Error::VersionVacuumed { .. })
    ));
    rows(&e, "DROP TABLE readings").await;
    assert!(matches!(
        err(&e, "SELECT * FROM readings").await,
        Error::Table(strata_table::Error::DatasetNotFound(_))
    ));
    rows(&e, "DROP TABLE IF EXISTS readings").await;
}

fn count_of(b: &RecordBatch) -> u64 {
    b.column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn errors_are_the_clients_when_they_should_be() {
    let (_c, h, e) = history().await;
    for sql in [
        "SELEC 1",
        "SELECT nope FROM weather",
        "SELECT * FROM weather VERSION AS OF 1.5",
        "CREATE TABLE t (a INT)",
        "UPDATE weather SET station = 'x'",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp'",
        "SELECT 1; SELECT 2",
        "",
    ] {
        let e = err(&e, sql).await;
        assert!(e.is_client_error(), "{sql}: {e:?}");
    }
    assert!(matches!(
        err(&e, "SELECT * FROM nope").await,
        Error::Table(strata_table::Error::DatasetNotFound(n)) if n == "nope"
    ));
    let q = format!("SELECT * FROM weather VERSION AS OF {}", h.v_head + 5);
    assert!(matches!(
        err(&e, &q).await,
        Error::Table(strata_table::Error::VersionNotFound { .. })
    ));
    assert!(matches!(
        err(&e, "SELECT * FROM weather VERSION AS OF 'nope'").await,
        Error::Table(strata_table::Error::TagNotFound { .. })
    ));
    // The parser's message reaches the user.
    let m = err(&e, "SELECT * FROM weather WHERE").await.to_string();
    assert!(m.contains("Expected"), "{m}");
}

/// A query on one station and a short time range reads a small fraction of the bytes a
/// full scan reads: shard pruning, segment statistics, row groups and pages.
#[tokio::test]
async fn pruning_reads_a_fraction_of_the_bytes() {
    let blobs = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
    let catalog = Catalog::new(blobs.clone() as Arc<dyn BlobStore>, meta);
    let table = catalog
        .create_table(crate::common::weather_spec("weather"))
        .await
        .unwrap();
    // 20 commits of 500 ticks each: segments cover disjoint time ranges.
    for i in 0..20 {
        write(&table, batch(i * 500..(i + 1) * 500, 0.0)).await;
    }
    let e = engine(&catalog);
    blobs.reset();
    let full = rows(&e, "SELECT * FROM weather").await;
    let full_bytes = blobs.snapshot().bytes_read;
    assert_eq!(full.num_rows(), 20 * 500 * STATIONS);
    blobs.reset();
    let one = rows(
        &e,
        "SELECT * FROM weather WHERE station = 's3' AND ts >= 7200 AND ts < 7260",
    )
    .await;
    let one_bytes = blobs.snapshot().bytes_read;
    assert_eq!(one.num_rows(), 60);
    assert!(
        one_bytes * 10 < full_bytes,
        "pruned query read {one_bytes} bytes, full scan {full_bytes}"
    );
    // EXPLAIN ANALYZE shows Strata's pruning and DataFusion's metrics.
    let b = rows(
        &e,
        "EXPLAIN ANALYZE SELECT * FROM weather WHERE station = 's3' AND ts >= 7200 AND ts < 7260",
    )
    .await;
    let text = strings(&b, "plan").join("\n");
    assert!(text.contains("after_shard_pruning="), "{text}");
    assert!(text.contains("bytes_scanned"), "{text}");
    let kinds = strings(&b, "plan_type");
    let scan = kinds.iter().position(|k| k == "strata_scan").unwrap();
    let line = &strings(&b, "plan")[scan];
    // 20 commits over the shards the 10 stations hash to; one shard holds s3, and one
    // of its segments the hour.
    assert!(line.contains("after_shard_pruning=20 "), "{line}");
    assert!(line.contains("after_stats_pruning=1,"), "{line}");
}

#[tokio::test]
async fn memory_limit_fails_the_query_not_the_engine() {
    let catalog = crate::common::memory_catalog();
    let table = catalog
        .create_table(crate::common::weather_spec("weather"))
        .await
        .unwrap();
    for i in 0..4 {
        write(&table, batch(i * 2000..(i + 1) * 2000, 0.0)).await;
    }
    let e = Engine::new(
        catalog.clone(),
        QueryConfig {
            memory_limit: Some(256 * 1024),
            ..Default::default()
        },
    )
    .unwrap();
    // A join whose build side cannot spill needs more than the limit.
    let q =
        "SELECT count(*) FROM weather a JOIN weather b ON a.ts = b.ts AND a.station <> b.station";
    let error = err(&e, q).await;
    assert!(matches!(error, Error::ResourcesExhausted(_)), "{error:?}");
    // The engine keeps serving.
    assert_eq!(
        count(&e, "SELECT count(*) FROM weather").await,
        8000 * STATIONS as i64
    );
}

/// The server's runtime has several threads; the timeout must fire even while a query
/// computes inside one long poll of a DataFusion operator (here a nested loop join whose
/// filter never matches, so it emits nothing for 125M row combinations). DataFusion
/// operators cannot be preempted: the abandoned work stops at its next yield, so the
/// query is sized to end by itself within seconds of the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancels_a_long_query() {
    let (catalog, _h, _) = history().await;
    let e = Engine::new(
        catalog,
        QueryConfig {
            timeout: Some(Duration::from_millis(200)),
            memory_limit: Some(1 << 30),
            ..Default::default()
        },
    )
    .unwrap();
    let q = "SELECT count(*) FROM weather a, weather b, weather c \
             WHERE c.station = 's1' AND c.ts < 20 AND a.temp + b.temp + c.temp = -1";
    let error = err(&e, q).await;
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    assert_eq!(
        count(&e, "SELECT count(*) FROM weather").await,
        250 * STATIONS as i64
    );
}

#[tokio::test]
async fn prepared_statements_take_parameters() {
    let (_c, _h, e) = history().await;
    let p = e
        .prepare("SELECT count(*) FROM weather WHERE station = $1 AND ts < $2")
        .await
        .unwrap();
    let params = p.parameters().unwrap();
    assert_eq!(params.len(), 2);
    assert_eq!(params[0].0, "$1");
    use strata_query::datafusion::common::ScalarValue;
    for (station, ts, expect) in [("s1", 10i64, 10i64), ("s2", 100, 100), ("zz", 100, 0)] {
        let s = p
            .execute(vec![
                ScalarValue::Utf8(Some(station.into())),
                ScalarValue::Int64(Some(ts)),
            ])
            .await
            .unwrap();
        let b: Vec<RecordBatch> = futures::TryStreamExt::try_collect(s).await.unwrap();
        let c = b[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(c, expect);
    }
    assert!(p.is_query());
    assert!(
        !e.prepare("DELETE FROM weather WHERE ts < 0")
            .await
            .unwrap()
            .is_query()
    );
}

/// The manifest's statistics answer `count(*)`, `min` and `max` without reading a
/// segment; after a delete (deletion vectors) they must not answer with deleted rows.
#[tokio::test]
async fn statistics_answers_stay_right_after_deletes() {
    let (_c, h, e) = history().await;
    let n = STATIONS as i64;
    let before = h.table.head_version().await.unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM weather").await, 250 * n);
    assert_eq!(count(&e, "SELECT max(ts) FROM weather").await, 249);
    let deleted = "SELECT sum(deleted_rows) FROM strata_segments('weather')";
    let deleted_before = count(&e, deleted).await;
    e.collect("DELETE FROM weather WHERE ts >= 240 OR ts < 5")
        .await
        .unwrap();
    // The delete marked rows in deletion vectors: segments still hold them.
    assert_eq!(count(&e, deleted).await, deleted_before + 15 * n);
    assert_eq!(count(&e, "SELECT count(*) FROM weather").await, 235 * n);
    assert_eq!(count(&e, "SELECT max(ts) FROM weather").await, 239);
    assert_eq!(count(&e, "SELECT min(ts) FROM weather").await, 5);
    assert_eq!(
        count(&e, "SELECT count(*) FROM weather WHERE station = 's1'").await,
        235
    );
    let q = format!("SELECT max(ts) FROM weather VERSION AS OF {before}");
    assert_eq!(count(&e, &q).await, 249);
    // Most rows deleted: a LIMIT must still find its rows among the few left (row
    // counts of row groups include deleted rows; the deletion vector decides).
    e.collect("DELETE FROM weather WHERE ts < 238")
        .await
        .unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM weather").await, 2 * n);
    for limit in [1, n, 2 * n] {
        let q =
            format!("SELECT count(*) FROM (SELECT ts FROM weather WHERE ts >= 0 LIMIT {limit})");
        assert_eq!(count(&e, &q).await, limit, "{q}");
        let q = format!("SELECT count(*) FROM (SELECT * FROM weather LIMIT {limit})");
        assert_eq!(count(&e, &q).await, limit, "{q}");
    }
}

/// Strings are views inside the engine, but answers (and `DESCRIBE`) carry the
/// declared types.
#[tokio::test]
async fn results_carry_the_declared_string_type() {
    let (_c, _h, e) = history().await;
    for sql in [
        "SELECT * FROM weather LIMIT 3",
        "SELECT station, count(*) FROM weather GROUP BY station",
        "SELECT w.station, v.station AS s2 FROM weather w JOIN weather v ON w.station = v.station AND w.ts = v.ts LIMIT 2",
        "SELECT array_agg(station) FROM weather WHERE ts = 0",
    ] {
        let b = rows(&e, sql).await;
        for (f, c) in b.schema().fields().iter().zip(b.columns()) {
            assert_eq!(plain_type(f.data_type()), None, "{sql}: {f:?}");
            assert_eq!(c.data_type(), f.data_type(), "{sql}");
        }
        let first = b.schema().field(0).data_type().clone();
        assert!(
            first == DataType::Utf8
                || matches!(&first, DataType::List(f) if f.data_type() == &DataType::Utf8),
            "{sql}: {first}"
        );
    }
    let d = rows(&e, "DESCRIBE weather").await;
    assert_eq!(strings(&d, "column_name")[0], "station");
    assert_eq!(strings(&d, "data_type")[0], "Utf8");
}

/// A `DELETE` whose condition the table layer cannot evaluate finds the keys with a
/// query; when nothing matches it deletes nothing, and says so.
#[tokio::test]
async fn a_key_lookup_delete_that_matches_nothing() {
    let (_c, _h, e) = history().await;
    let removed = |b: RecordBatch| {
        b.column_by_name("rows")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .value(0)
    };
    let b = rows(&e, "DELETE FROM weather WHERE abs(temp + 12345.0) < 0.5").await;
    assert_eq!(removed(b), 0);
    let b = rows(
        &e,
        "DELETE FROM weather WHERE abs(temp - 1.0) < 0.5 AND station = 's0'",
    )
    .await;
    assert!(removed(b) > 0);
    assert_eq!(
        count(
            &e,
            "SELECT count(*) FROM weather WHERE abs(temp - 1.0) < 0.5 AND station = 's0'"
        )
        .await,
        0
    );
}

/// Queries run on the runtime the config names (the server's query runtime): a long
/// query computes there, and the caller's runtime — one thread here — stays free.
#[tokio::test(flavor = "current_thread")]
async fn queries_run_on_their_own_runtime() {
    let (catalog, _h, _) = history().await;
    let queries = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let e = Engine::new(
        catalog,
        QueryConfig {
            runtime: Some(queries.handle().clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        count(&e, "SELECT count(*) FROM weather WHERE station = 's1'").await,
        250
    );
    let error = err(&e, "SELECT * FROM nope").await;
    assert!(
        matches!(error, Error::Table(_) | Error::Plan(_)),
        "{error:?}"
    );
    // The nested loop join of `timeout_cancels_a_long_query`, which computes for
    // seconds inside one poll: run inline, it would hold this thread, and the timer
    // below could not fire before it ended.
    let q = "SELECT count(*) FROM weather a, weather b, weather c \
             WHERE c.station = 's1' AND c.ts < 20 AND a.temp + b.temp + c.temp = -1";
    let stream = e.execute(q).await.unwrap();
    let mut first = futures::StreamExt::into_future(stream);
    let waited = tokio::time::timeout(Duration::from_millis(50), &mut first).await;
    assert!(
        waited.is_err(),
        "the timer fired while the query computed elsewhere"
    );
    drop(first); // aborts the query at its next yield point
    queries.shutdown_background();
}

fn int64s(b: &RecordBatch, col: usize) -> Vec<Option<i64>> {
    let c = arrow::compute::cast(b.column(col), &DataType::Int64).unwrap();
    let c = c
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    c.iter().collect()
}

/// Integer arithmetic and sums that leave their type are errors (SQLSTATE 22003), on
/// constants (folded while planning) and on columns, in every aggregation path; what
/// fits is computed as before, under the operator's own column name.
#[tokio::test]
async fn integer_overflow_is_an_error_not_a_wrapped_value() {
    let (_c, _h, e) = history().await;
    let max = i64::MAX;
    for sql in [
        format!("SELECT {max} + 1"),
        format!("SELECT -{max} - 2"),
        "SELECT 4611686018427387904 * 2".to_string(),
        format!("SELECT -(-{max} - 1)"),
        "SELECT CAST(18446744073709551615 AS BIGINT UNSIGNED) + CAST(1 AS BIGINT UNSIGNED)"
            .to_string(),
        "SELECT CAST(0 AS BIGINT UNSIGNED) - CAST(1 AS BIGINT UNSIGNED)".to_string(),
        "SELECT CAST(100 AS TINYINT) * CAST(2 AS TINYINT)".to_string(),
        format!("SELECT ts + {max} FROM weather"),
        format!("SELECT count(*) FROM weather WHERE ts * {max} > 0"),
        format!("SELECT sum(x) FROM (VALUES ({max}), (1)) AS t(x)"),
        format!("SELECT sum(DISTINCT x) FROM (VALUES ({max}), (1), (1)) AS t(x)"),
        format!("SELECT k, sum(x) FROM (VALUES (1, {max}), (1, 1), (2, 1)) AS t(k, x) GROUP BY k"),
        format!(
            "SELECT sum(x) OVER (ORDER BY k ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             FROM (VALUES (1, {max}), (2, 1)) AS t(k, x)"
        ),
        format!("SELECT sum(ts + {}) FROM weather", max / 2),
        "SELECT sum(x) FROM (VALUES (CAST(18446744073709551615 AS BIGINT UNSIGNED)), \
         (CAST(1 AS BIGINT UNSIGNED))) AS t(x)"
            .to_string(),
    ] {
        let got = err(&e, &sql).await;
        assert!(matches!(got, Error::Overflow(_)), "{sql}: {got:?}");
        assert!(got.is_client_error());
    }

    // What fits is unchanged.
    let b = rows(&e, &format!("SELECT {} + 1, -{max}, 3 * 4 - 5", max - 1)).await;
    assert_eq!(int64s(&b, 0), [Some(max)]);
    assert_eq!(int64s(&b, 1), [Some(-max)]);
    assert_eq!(int64s(&b, 2), [Some(7)]);
    // A window frame's sum may pass out of range between frames and still be right.
    let b = rows(
        &e,
        &format!(
            "SELECT sum(x) OVER (ORDER BY k ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             FROM (VALUES (1, {max}), (2, -{max}), (3, {max})) AS t(k, x) ORDER BY k"
        ),
    )
    .await;
    assert_eq!(int64s(&b, 0), [Some(max), Some(0), Some(0)]);
    let n = STATIONS as i64;
    // ts runs 0..250 for every station at the head.
    let expected: i64 = (0..250).sum::<i64>() * n;
    assert_eq!(count(&e, "SELECT sum(ts) FROM weather").await, expected);
    assert_eq!(
        count(&e, "SELECT sum(DISTINCT ts) FROM weather").await,
        (0..250).sum::<i64>()
    );
    let b = rows(
        &e,
        "SELECT station, sum(ts + 1) AS s FROM weather GROUP BY station ORDER BY station",
    )
    .await;
    assert_eq!(int64s(&b, 1), vec![Some((1..=250).sum::<i64>()); STATIONS]);
    let b = rows(
        &e,
        "SELECT NULL + 1, sum(x) FROM (VALUES (CAST(NULL AS BIGINT))) AS t(x)",
    )
    .await;
    assert_eq!(int64s(&b, 0), [None]);
    assert_eq!(int64s(&b, 1), [None]);

    // Column names are the operators' own, in results and in GROUP BY.
    let b = rows(
        &e,
        "SELECT ts + 1, -ts, count(*) FROM weather GROUP BY ts + 1, -ts ORDER BY ts + 1 LIMIT 1",
    )
    .await;
    let names: Vec<_> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["weather.ts + Int64(1)", "(- weather.ts)", "count(*)"]
    );
    assert_eq!(int64s(&b, 0), [Some(1)]);
    assert_eq!(int64s(&b, 2), [Some(n)]);
}

/// `UPDATE … SET … WHERE …`: one version, the other columns kept, keys refused, the new
/// values in the columns' types, nothing committed when nothing matches, and an update
/// on an append-only dataset refused; the change feed sees updates.
#[tokio::test]
async fn update_statements() {
    let catalog = crate::common::memory_catalog();
    let e = engine(&catalog);
    for sql in [
        "CREATE TABLE r (k VARCHAR, t BIGINT, v DOUBLE, n INT, note VARCHAR, PRIMARY KEY ((k), t))",
        "INSERT INTO r VALUES ('a', 1, 1.0, 10, 'x'), ('a', 2, 2.0, 20, 'y'), ('b', 1, 3.0, 30, 'z')",
    ] {
        e.collect(sql).await.unwrap();
    }
    let before = count(&e, "SELECT max(version) FROM strata_versions('r')").await;
    let result = rows(
        &e,
        "UPDATE r SET v = v * 10, note = upper(note) WHERE k = 'a'",
    )
    .await;
    assert_eq!(strings(&result, "operation"), ["UPDATE"]);
    assert_eq!(strings(&result, "rows"), ["2"]);
    let after = count(&e, "SELECT max(version) FROM strata_versions('r')").await;
    assert_eq!(after, before + 1, "one version");
    let b = rows(&e, "SELECT k, t, v, n, note FROM r ORDER BY k, t").await;
    assert_eq!(strings(&b, "v"), ["10.0", "20.0", "3.0"]);
    assert_eq!(
        strings(&b, "n"),
        ["10", "20", "30"],
        "columns not set are kept"
    );
    assert_eq!(strings(&b, "note"), ["X", "Y", "z"]);
    // The feed shows the update as before/after pairs.
    let changes = rows(
        &e,
        &format!("SELECT _change_type, count(*) AS n FROM table_changes('r', {after}) GROUP BY 1 ORDER BY 1"),
    )
    .await;
    assert_eq!(
        strings(&changes, "_change_type"),
        ["update_after", "update_before"]
    );
    // Without WHERE: every row; a literal of another integer type fits the column.
    let result = rows(&e, "UPDATE r SET n = 7").await;
    assert_eq!(strings(&result, "rows"), ["3"]);
    assert_eq!(count(&e, "SELECT sum(n) FROM r").await, 21);
    // Nothing matches: nothing committed.
    let head = count(&e, "SELECT max(version) FROM strata_versions('r')").await;
    let result = rows(&e, "UPDATE r SET n = 1 WHERE k = 'nope'").await;
    assert_eq!(strings(&result, "rows"), ["0"]);
    assert_eq!(
        count(&e, "SELECT max(version) FROM strata_versions('r')").await,
        head
    );
    // Refusals, with their reasons.
    for (sql, wanted) in [
        ("UPDATE r SET k = 'c'", "key column"),
        ("UPDATE r SET nope = 1", "no column"),
        ("UPDATE r SET n = 99999999999", "new values of \"n\""),
        ("UPDATE r SET n = 1, n = 2", "twice"),
        ("UPDATE nope SET n = 1", "nope"),
    ] {
        let msg = err(&e, sql).await.to_string();
        assert!(msg.contains(wanted), "{sql}: {msg}");
    }
    e.collect("CREATE TABLE log (k VARCHAR, v DOUBLE, PRIMARY KEY (k))")
        .await
        .unwrap();
    let msg = err(&e, "UPDATE log SET v = 1").await.to_string();
    assert!(msg.contains("without a row key"), "{msg}");
}

/// `MERGE INTO … USING … ON …`: every clause kind in one version, first matching clause
/// wins, a versioned source, a subquery source, `NOT MATCHED BY SOURCE`, nothing
/// committed when no clause applies, and the SQL standard's refusals.
#[tokio::test]
async fn merge_statements() {
    let catalog = crate::common::memory_catalog();
    let e = engine(&catalog);
    for sql in [
        "CREATE TABLE r (k VARCHAR, t BIGINT, v DOUBLE, note VARCHAR, PRIMARY KEY ((k), t))",
        "INSERT INTO r VALUES ('a', 1, 1.0, 'x'), ('a', 2, 2.0, 'y'), ('b', 1, 3.0, 'z'), ('c', 1, 4.0, 'w')",
        "CREATE TABLE fixes (k VARCHAR, t BIGINT, v DOUBLE, PRIMARY KEY ((k), t))",
        // a 1: updated; a 2: deleted (v is null); d 1: inserted; e 1: inserted without v.
        "INSERT INTO fixes VALUES ('a', 1, 10.0), ('a', 2, NULL), ('d', 1, 5.0), ('e', 1, -1.0)",
    ] {
        e.collect(sql).await.unwrap();
    }
    let version = |e: &Engine| {
        let e = e.clone();
        async move { count(&e, "SELECT max(version) FROM strata_versions('r')").await }
    };
    let before = version(&e).await;
    let result = rows(
        &e,
        "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t \
         WHEN MATCHED AND f.v IS NULL THEN DELETE \
         WHEN MATCHED THEN UPDATE SET v = f.v, note = r.note || '!' \
         WHEN NOT MATCHED AND f.v < 0 THEN INSERT (k, t) VALUES (f.k, f.t) \
         WHEN NOT MATCHED THEN INSERT VALUES (f.k, f.t, f.v, 'new')",
    )
    .await;
    assert_eq!(strings(&result, "operation"), ["MERGE"]);
    assert_eq!(strings(&result, "rows"), ["4"]);
    assert_eq!(version(&e).await, before + 1, "one version");
    let b = rows(&e, "SELECT k, t, v, note FROM r ORDER BY k, t").await;
    assert_eq!(strings(&b, "k"), ["a", "b", "c", "d", "e"]);
    assert_eq!(strings(&b, "v"), ["10.0", "3.0", "4.0", "5.0", ""]);
    assert_eq!(strings(&b, "note"), ["x!", "z", "w", "new", ""]);
    let ops = rows(
        &e,
        &format!(
            "SELECT operation FROM strata_versions('r') WHERE version = {}",
            before + 1
        ),
    )
    .await;
    assert_eq!(strings(&ops, "operation"), ["merge"]);
    let changes = rows(
        &e,
        &format!(
            "SELECT _change_type, count(*) AS n FROM table_changes('r', {}) GROUP BY 1 ORDER BY 1",
            before + 1
        ),
    )
    .await;
    assert_eq!(
        strings(&changes, "_change_type"),
        ["delete", "insert", "update_after", "update_before"]
    );
    assert_eq!(strings(&changes, "n"), ["1", "2", "1", "1"]);

    // A subquery source and NOT MATCHED BY SOURCE: the target becomes the source.
    let result = rows(
        &e,
        "MERGE INTO r AS t USING (SELECT k, t, v FROM fixes WHERE v > 0) AS s ON t.k = s.k AND t.t = s.t \
         WHEN MATCHED THEN UPDATE SET v = s.v \
         WHEN NOT MATCHED BY SOURCE THEN DELETE",
    )
    .await;
    assert_eq!(strings(&result, "rows"), ["5"], "2 updated, 3 deleted");
    let b = rows(&e, "SELECT k, t, v FROM r ORDER BY k, t").await;
    assert_eq!(strings(&b, "k"), ["a", "d"]);

    // A source at an older version (here the target's own): back to how it was.
    let result = rows(
        &e,
        &format!(
            "MERGE INTO r USING r VERSION AS OF {before} AS old ON r.k = old.k AND r.t = old.t \
             WHEN MATCHED THEN UPDATE SET v = old.v, note = old.note \
             WHEN NOT MATCHED THEN INSERT VALUES (old.k, old.t, old.v, old.note) \
             WHEN NOT MATCHED BY SOURCE THEN DELETE"
        ),
    )
    .await;
    assert_eq!(strings(&result, "rows"), ["5"]);
    let now = rows(&e, "SELECT * FROM r ORDER BY k, t").await;
    let then = rows(
        &e,
        &format!("SELECT * FROM r VERSION AS OF {before} ORDER BY k, t"),
    )
    .await;
    assert_eq!(now, then);

    // No clause applies: nothing committed.
    let head = version(&e).await;
    let result = rows(
        &e,
        "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN MATCHED AND f.v > 100 THEN DELETE",
    )
    .await;
    assert_eq!(strings(&result, "rows"), ["0"]);
    assert_eq!(version(&e).await, head);

    // Refusals, with their reasons; none commits anything.
    e.collect("INSERT INTO fixes VALUES ('a', 3, 1.0)")
        .await
        .unwrap();
    for (sql, wanted) in [
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k WHEN MATCHED THEN UPDATE SET v = f.v",
            "acts twice",
        ),
        (
            "MERGE INTO r USING fixes AS f ON FALSE WHEN NOT MATCHED THEN INSERT (k, t) VALUES ('z', 1)",
            "acts twice",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN MATCHED THEN UPDATE SET k = 'q'",
            "key column",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN NOT MATCHED THEN INSERT (k, v) VALUES (f.k, f.v)",
            "key column \"t\"",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN NOT MATCHED THEN DELETE",
            "not allowed",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN MATCHED THEN INSERT VALUES (1)",
            "not allowed",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN NOT MATCHED THEN INSERT VALUES (f.k)",
            "1 value(s)",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN MATCHED THEN UPDATE SET nope = 1",
            "no column",
        ),
        (
            "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t WHEN MATCHED THEN UPDATE SET v = 'text'",
            "new values of \"v\"",
        ),
        (
            "MERGE INTO r USING (SELECT * FROM fixes) ON TRUE WHEN MATCHED THEN DELETE",
            "needs an alias",
        ),
        (
            "MERGE INTO r USING r ON TRUE WHEN MATCHED THEN DELETE",
            "both called",
        ),
        (
            "MERGE INTO nope USING fixes AS f ON TRUE WHEN MATCHED THEN DELETE",
            "nope",
        ),
    ] {
        let msg = err(&e, sql).await.to_string();
        assert!(msg.contains(wanted), "{sql}: {msg}");
    }
    let many = format!(
        "MERGE INTO r USING fixes AS f ON r.k = f.k AND r.t = f.t {}",
        "WHEN MATCHED AND f.v > 1 THEN DELETE ".repeat(65)
    );
    let msg = err(&e, &many).await.to_string();
    assert!(msg.contains("at most 64 WHEN clauses"), "{msg}");
    assert_eq!(version(&e).await, head, "no refusal committed");
    e.collect("CREATE TABLE log (k VARCHAR, v DOUBLE, PRIMARY KEY (k))")
        .await
        .unwrap();
    let msg = err(
        &e,
        "MERGE INTO log USING fixes AS f ON log.k = f.k WHEN MATCHED THEN DELETE",
    )
    .await
    .to_string();
    assert!(msg.contains("without a row key"), "{msg}");
}

/// A [`MetaStore`] that counts `get` and `list` calls.
#[derive(Debug)]
struct CountingMeta {
    inner: MemoryMetaStore,
    reads: std::sync::atomic::AtomicU64,
}

impl CountingMeta {
    fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl MetaStore for CountingMeta {
    async fn get(&self, key: &str) -> strata_storage::Result<Option<bytes::Bytes>> {
        self.read();
        self.inner.get(key).await
    }
    async fn put_if_absent(&self, key: &str, value: bytes::Bytes) -> strata_storage::Result<()> {
        self.inner.put_if_absent(key, value).await
    }
    async fn put(&self, key: &str, value: bytes::Bytes) -> strata_storage::Result<()> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> strata_storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> strata_storage::Result<Vec<String>> {
        self.read();
        self.inner.list(prefix).await
    }
}

/// On an exclusive catalog (a store only this process writes) a query at an unchanged
/// head reads no metadata to find the dataset and its head; every change made through
/// the process (a commit, a drop and re-create, a rollback) is still seen at once.
#[tokio::test]
async fn an_exclusive_catalog_resolves_an_unchanged_head_from_memory() {
    let meta = Arc::new(CountingMeta {
        inner: MemoryMetaStore::new(),
        reads: Default::default(),
    });
    let counted = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let blobs: Arc<dyn BlobStore> = counted.clone();
    let catalog = Catalog::new(blobs, meta.clone()).exclusive();
    let e = engine(&catalog);
    for sql in [
        "CREATE TABLE r (k VARCHAR, v BIGINT, PRIMARY KEY (k))",
        "INSERT INTO r VALUES ('a', 1), ('b', 2)",
    ] {
        e.collect(sql).await.unwrap();
    }
    assert_eq!(count(&e, "SELECT sum(v) FROM r").await, 3);
    let before = meta.reads();
    assert_eq!(count(&e, "SELECT sum(v) FROM r").await, 3);
    assert_eq!(meta.reads(), before, "nothing read to find the head");
    e.collect("INSERT INTO r VALUES ('c', 4)").await.unwrap();
    assert_eq!(count(&e, "SELECT sum(v) FROM r").await, 7);
    e.collect("RESTORE TABLE r TO VERSION AS OF 2")
        .await
        .unwrap();
    assert_eq!(count(&e, "SELECT sum(v) FROM r").await, 3);
    e.collect("DROP TABLE r").await.unwrap();
    e.collect("CREATE TABLE r (k VARCHAR, v BIGINT, PRIMARY KEY (k))")
        .await
        .unwrap();
    e.collect("INSERT INTO r VALUES ('z', 100)").await.unwrap();
    assert_eq!(count(&e, "SELECT sum(v) FROM r").await, 100);
    // A table handle of the catalog writing directly counts as well.
    let t = catalog.open_table("r").await.unwrap();
    let schema = t.spec().schema.clone();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["y"])),
            Arc::new(arrow::array::Int64Array::from(vec![5])),
        ],
    )
    .unwrap();
    t.write(&[batch], Default::default()).await.unwrap();
    assert_eq!(count(&e, "SELECT sum(v) FROM r").await, 105);

    // A fresh engine (a restarted server) resolves the head on its first query, unless
    // it was warmed: then its first query reads nothing to find it either.
    let fresh = engine(&catalog);
    let before = meta.reads();
    assert_eq!(count(&fresh, "SELECT sum(v) FROM r").await, 105);
    assert!(meta.reads() > before, "a first query resolves the head");
    let warmed = engine(&catalog);
    counted.reset();
    assert_eq!(warmed.warm(16).await.unwrap().datasets, 1);
    // It read the segments' footers; its warm-up statement was planned and run, and
    // queued no fill.
    assert!(counted.snapshot().segments_read() > 0, "footers read");
    let stats = warmed.cache().stats();
    assert_eq!((stats.fills_pending, stats.inserts), (0, 0));
    let planned = "SELECT plan_misses FROM strata_cache()";
    assert!(count(&warmed, planned).await > count(&engine(&catalog), planned).await);
    let before = meta.reads();
    assert_eq!(count(&warmed, "SELECT sum(v) FROM r").await, 105);
    assert_eq!(
        meta.reads(),
        before,
        "warmed: nothing read to find the head"
    );
    assert_eq!(warmed.warm(0).await.unwrap().datasets, 0);
    // A warmed engine's first scan reads no footer or page index: fewer ranges than the
    // same first scan of an engine that was not warmed.
    let values: Vec<String> = (0..2000).map(|i| format!("('k{i:04}', {i})")).collect();
    e.collect(&format!("INSERT INTO r VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let scan = "SELECT sum(v) FROM r WHERE k > 'k1500'";
    counted.reset();
    let want = count(&engine(&catalog), scan).await;
    let unwarmed = counted.snapshot();
    let warmed = engine(&catalog);
    warmed.warm(16).await.unwrap();
    counted.reset();
    assert_eq!(count(&warmed, scan).await, want);
    let first = counted.snapshot();
    assert!(first.segments_read() > 0, "{first:?}");
    assert!(
        first.get_range_calls + first.ranges < unwarmed.get_range_calls + unwarmed.ranges,
        "warmed {first:?}, not warmed {unwarmed:?}"
    );
}

/// A starting server's warm-up also reads a dataset's first row through the Parquet
/// reader and looks that row up by its key (so a first query does not run that code
/// for the first time), and keeps nothing: with a segment cache configured, nothing is
/// inserted or queued to fill, and it reads a few pages, not the dataset.
#[tokio::test]
async fn warming_reads_one_row_and_fills_no_cache() {
    let counted = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
    let catalog = Catalog::new(counted.clone() as Arc<dyn BlobStore>, meta).exclusive();
    let e = engine(&catalog);
    e.collect(
        "CREATE TABLE r (k VARCHAR, t TIMESTAMP, v BIGINT, PRIMARY KEY ((k), t)) \
         WITH (shards = 1)",
    )
    .await
    .unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    // Twelve small segments (one page per column): the warm-up reads every footer and
    // the pages of at most three of them.
    for s in 0..12 {
        let values: Vec<String> = (0..4000)
            .map(|i| {
                let t = start + chrono::Duration::seconds(i);
                format!("('k{s:02}{i:04}', '{t}', {})", i * 7919 % 100_003)
            })
            .collect();
        e.collect(&format!("INSERT INTO r VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
    let written = counted.snapshot().bytes_written;
    let cached = || {
        Engine::new(
            catalog.clone(),
            QueryConfig {
                cache_bytes: 64 << 20,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let warmed = cached();
    counted.reset();
    let done = warmed.warm(16).await.unwrap();
    assert_eq!(done.datasets, 1);
    let rows: usize = done.rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "{:?}", done.rows);
    assert_eq!(done.rows[0].num_columns(), 3);
    // Then a point lookup of that row's key (`k` equal, `t` in a range), which finds it.
    assert_eq!(done.looked_up, 1);
    let read = counted.snapshot();
    assert_eq!(read.segments_read(), 12, "every footer: {read:?}");
    assert!(
        read.bytes_read < written / 2,
        "a few pages: {} of {written} bytes",
        read.bytes_read
    );
    let stats = warmed.cache().stats();
    assert_eq!(
        (stats.inserts, stats.fills_pending, stats.used_bytes),
        (0, 0, 0)
    );
    // The first query is answered as by an engine not warmed, and is the one that
    // queues the fill.
    let scan = "SELECT count(*) FROM r WHERE v >= 1000";
    let expected = 12 * (0..4000).filter(|i| i * 7919 % 100_003 >= 1000).count() as i64;
    assert_eq!(count(&warmed, scan).await, expected);
    assert_eq!(count(&cached(), scan).await, expected);
    let stats = warmed.cache().stats();
    assert!(stats.fills_pending + stats.inserts > 0, "{stats:?}");
}

/// `sum`, `avg` and `count` of `DOUBLE` columns over whole segments come from the
/// segments' statistics, reading no segment; with deleted rows, a filter or a
/// grouping they are computed from the rows, and every way gives the same answers.
#[tokio::test]
async fn whole_table_aggregates_come_from_segment_statistics() {
    let blobs = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
    let catalog = Catalog::new(blobs.clone() as Arc<dyn BlobStore>, meta);
    let e = engine(&catalog);
    for sql in [
        "CREATE TABLE r (k VARCHAR, t BIGINT, v DOUBLE, w DOUBLE, PRIMARY KEY ((k), t)) WITH (shards = 2)",
        "INSERT INTO r VALUES ('a', 1, 1.5, NULL), ('a', 2, 2.5, NULL), ('b', 1, NULL, NULL)",
        "INSERT INTO r VALUES ('c', 1, 4.0, NULL), ('d', 1, -3.0, NULL)",
    ] {
        e.collect(sql).await.unwrap();
    }
    let sql = "SELECT sum(v) AS s, avg(v) AS a, count(v) AS n, count(*) AS c, avg(w) AS aw FROM r";
    blobs.reset();
    let b = rows(&e, sql).await;
    assert_eq!(
        blobs.snapshot().segments_read(),
        0,
        "answered from statistics"
    );
    assert_eq!(strings(&b, "s"), ["5.0"]);
    assert_eq!(strings(&b, "a"), ["1.25"]);
    assert_eq!(strings(&b, "n"), ["4"]);
    assert_eq!(strings(&b, "c"), ["5"]);
    assert_eq!(strings(&b, "aw"), [""], "the average of nothing is null");
    // The rows come in the schema announced when the statement was planned (Flight SQL
    // clients check them against it), though the values are now literals.
    let prepared = e.prepare(sql).await.unwrap();
    let stream = prepared.execute(vec![]).await.unwrap();
    assert_eq!(stream.schema(), prepared.schema());
    let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await.unwrap();
    assert!(batches.iter().all(|b| b.schema() == prepared.schema()));
    // The same from the rows: a filter that keeps every row.
    let scanned = rows(&e, &sql.replace("FROM r", "FROM r WHERE t > 0")).await;
    for c in ["s", "a", "n", "c", "aw"] {
        assert_eq!(strings(&scanned, c), strings(&b, c), "{c}");
    }
    // Deleted rows: the statistics no longer describe the live rows.
    e.collect("DELETE FROM r WHERE k = 'a' AND t = 1")
        .await
        .unwrap();
    blobs.reset();
    let b = rows(&e, "SELECT sum(v) AS s, avg(v) AS a FROM r").await;
    assert!(blobs.snapshot().segments_read() > 0);
    assert_eq!(strings(&b, "s"), ["3.5"]);
    assert_eq!(strings(&b, "a"), ["1.1666666666666667"]);
    let grouped = rows(&e, "SELECT k, avg(v) AS a FROM r GROUP BY k ORDER BY k").await;
    assert_eq!(strings(&grouped, "a"), ["2.5", "", "4.0", "-3.0"]);
}
