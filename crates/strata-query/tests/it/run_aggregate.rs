//! Aggregations by the leading key columns run by runs of equal keys
//! (`RunAggregateExec`) and answer exactly as hash aggregation does: long runs (a
//! station's thousands of rows in a segment) and short ones (a key of many values),
//! nulls, filters, deletions and upserts, over Parquet and over cached columns.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use strata_query::Engine;
use strata_table::{Catalog, Table};
use strata_types::{DatasetName, DatasetSpec};

use crate::cache::{answer, engine, settle};
use crate::common::{memory_catalog, write};

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("station", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("sky", DataType::Utf8, true),
    ]))
}

/// `stations` stations × `per_station` times from `first_ts`; some values null.
fn rows(stations: std::ops::Range<usize>, first_ts: i64, per_station: i64) -> RecordBatch {
    let (mut st, mut ts, mut temp, mut n, mut sky) = (vec![], vec![], vec![], vec![], vec![]);
    for s in stations {
        for t in first_ts..first_ts + per_station {
            st.push(format!("s{s:03}"));
            ts.push(t);
            temp.push((t % 11 != 0).then_some((s as f64) * 0.5 + (t % 13) as f64));
            n.push((t % 7 != 0).then_some(t * 3 - s as i64));
            sky.push((t % 5 != 0).then(|| ["clear", "rain", "fog"][(t % 3) as usize]));
        }
    }
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(st)),
            Arc::new(Int64Array::from(ts)),
            Arc::new(Float64Array::from(temp)),
            Arc::new(Int64Array::from(n)),
            Arc::new(StringArray::from(sky)),
        ],
    )
    .unwrap()
}

async fn physical_plan(engine: &Engine, sql: &str) -> String {
    answer(engine, &format!("EXPLAIN {sql}")).await.join("\n")
}

/// Table `w` of [`schema`], keyed by `(station, ts)`, in two shards.
async fn stations(catalog: &Catalog) -> Table {
    let spec = DatasetSpec::new(
        DatasetName::new("w").unwrap(),
        schema(),
        vec!["station".into()],
        vec!["ts".into()],
        2,
    )
    .unwrap();
    catalog.create_table(spec).await.unwrap()
}

/// Aggregates and the same grouped by an expression of the key (hash aggregation).
const AGGREGATES: &str = "count(*), count(temp), sum(n), avg(temp), min(sky), max(n), \
                          min(temp), max(sky)";

#[tokio::test]
async fn aggregations_by_key_runs_answer_as_hashing_does() {
    let catalog = memory_catalog();
    let table = stations(&catalog).await;
    // Long runs: 6 stations × 3000 times; short ones: 400 stations × 2 times; an
    // upsert over part of the first and deletions.
    write(&table, rows(0..6, 0, 3000)).await;
    write(&table, rows(100..500, 0, 2)).await;
    write(&table, rows(2..4, 1000, 500)).await;
    let plain = engine(&catalog, 0);
    plain
        .collect("DELETE FROM w WHERE station = 's001' AND ts % 4 = 0 OR station = 's250'")
        .await
        .unwrap();
    let cached = engine(&catalog.clone().exclusive(), 64 << 20);

    let cases = [
        (format!("SELECT station, {AGGREGATES} FROM w GROUP BY station"), 
         format!("SELECT station || '' AS station, {AGGREGATES} FROM w GROUP BY station || ''")),
        (format!("SELECT station, {AGGREGATES} FROM w WHERE temp > 3 AND sky <> 'fog' GROUP BY station"),
         format!("SELECT station || '' AS station, {AGGREGATES} FROM w WHERE temp > 3 AND sky <> 'fog' GROUP BY station || ''")),
        (format!("SELECT ts, station, {AGGREGATES} FROM w WHERE ts < 40 GROUP BY station, ts"),
         format!("SELECT ts + 0 AS ts, station || '' AS station, {AGGREGATES} FROM w WHERE ts < 40 GROUP BY station || '', ts + 0")),
        ("SELECT station, avg(temp) a FROM w GROUP BY station ORDER BY a DESC, station LIMIT 3".to_string(),
         "SELECT station || '' AS station, avg(temp) a FROM w GROUP BY station || '' ORDER BY a DESC, station LIMIT 3".to_string()),
    ];
    for (sql, hashed) in &cases {
        let want = answer(&plain, hashed).await;
        assert!(!want.is_empty());
        for plan in [
            physical_plan(&plain, sql).await,
            physical_plan(&cached, sql).await,
        ] {
            assert!(plan.contains("RunAggregateExec"), "{sql}:\n{plan}");
        }
        assert!(
            !physical_plan(&plain, hashed)
                .await
                .contains("RunAggregateExec")
        );
        assert_eq!(answer(&plain, sql).await, want, "Parquet: {sql}");
        assert_eq!(answer(&cached, sql).await, want, "cold: {sql}");
        settle(&cached).await;
        assert_eq!(answer(&cached, sql).await, want, "cached: {sql}");
        assert_eq!(answer(&cached, sql).await, want, "kept plan: {sql}");
    }
    let plan = answer(&cached, &format!("EXPLAIN ANALYZE {}", cases[0].0))
        .await
        .join("\n");
    assert!(
        plan.contains("StrataCachedScan") && plan.contains("runs="),
        "{plan}"
    );

    // Not by runs: a column that is not the key's first, or not a key column.
    for sql in [
        "SELECT ts, count(*) FROM w GROUP BY ts",
        "SELECT sky, count(*) FROM w GROUP BY sky",
        "SELECT station, sky, count(*) FROM w GROUP BY station, sky",
        "SELECT station, count(DISTINCT sky) FROM w GROUP BY station",
    ] {
        let plan = physical_plan(&plain, sql).await;
        assert!(!plan.contains("RunAggregateExec"), "{sql}:\n{plan}");
    }
}

/// Over Parquet, a string key grouped by is read as a dictionary (its runs found over
/// the indices) where nothing between the scan and the aggregation reads it, and the
/// answers stay those of hashing — also over segments written before a column was
/// added, each read with its own columns.
#[tokio::test]
async fn string_keys_grouped_by_are_read_as_dictionaries() {
    let catalog = memory_catalog();
    let table = stations(&catalog).await;
    write(&table, rows(0..6, 0, 3000)).await;
    write(&table, rows(100..300, 0, 3)).await;
    let plain = engine(&catalog, 0);
    plain
        .collect("DELETE FROM w WHERE station = 's001' AND ts % 4 = 0")
        .await
        .unwrap();

    // (query, the same grouped by an expression: hashed, read as a dictionary?)
    let check = async |sql: &str, dictionary: bool| {
        let hashed = sql
            .replacen("SELECT station,", "SELECT station || '' AS station,", 1)
            .replace("GROUP BY station", "GROUP BY station || ''");
        // Hashed first: its scan reads the footers the choice looks at.
        let want = answer(&plain, &hashed).await;
        assert!(!want.is_empty(), "{hashed}");
        let plan = physical_plan(&plain, sql).await;
        assert!(plan.contains("RunAggregateExec"), "{sql}:\n{plan}");
        assert_eq!(
            plan.contains("dictionary=[station]"),
            dictionary,
            "{sql}:\n{plan}"
        );
        assert_eq!(answer(&plain, sql).await, want, "{sql}");
    };
    check(
        &format!("SELECT station, {AGGREGATES} FROM w GROUP BY station"),
        true,
    )
    .await;
    check(
        "SELECT station, avg(temp), count(*) FROM w WHERE temp > 3 AND sky <> 'fog' GROUP BY station",
        true,
    )
    .await;
    check(
        "SELECT station, avg(temp) a FROM w GROUP BY station ORDER BY a DESC, station LIMIT 3",
        true,
    )
    .await;
    // Read by a filter or an aggregate: views, as everything else expects.
    check(
        "SELECT station, count(*) FROM w WHERE station > 's003' GROUP BY station",
        false,
    )
    .await;
    check(
        "SELECT station, max(station), count(*) FROM w GROUP BY station",
        false,
    )
    .await;

    // A column added later: older segments lack it.
    table
        .add_column(Field::new("extra", DataType::Float64, true))
        .await
        .unwrap();
    let more = rows(3..9, 5000, 100);
    let extra = Float64Array::from_iter((0..more.num_rows()).map(|i| Some(i as f64 / 4.0)));
    let mut columns = more.columns().to_vec();
    columns.push(Arc::new(extra));
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("extra", DataType::Float64, true));
    write(
        &table,
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap(),
    )
    .await;
    check(
        "SELECT station, count(*), count(extra), sum(extra), avg(temp) FROM w GROUP BY station",
        true,
    )
    .await;

    // Keys of many long values overflow a row group's dictionary and fall back to
    // plain values: read as views (a dictionary would hash every value).
    plain.collect("DELETE FROM w").await.unwrap();
    let mut many = rows(0..1, 0, 80_000);
    let long: Vec<String> = (0..80_000)
        .map(|i| format!("station-{i:08}-of-a-long-name-{}", i % 7))
        .collect();
    let mut columns = many.columns().to_vec();
    columns[0] = Arc::new(StringArray::from(long));
    columns.push(Arc::new(Float64Array::from(vec![None::<f64>; 80_000])));
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("extra", DataType::Float64, true));
    many = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    write(&table, many).await;
    check(
        "SELECT station, count(*), avg(temp) FROM w GROUP BY station",
        false,
    )
    .await;
}

/// `GROUP BY date_bin(<fixed interval>, ts)` aggregates by arithmetic on the buckets
/// (`BucketAggregateExec`) and answers as hashing does: with a filter, a nullable
/// timestamp (its null group), an origin off the minute, over Parquet and cached
/// columns; a month's buckets are not evenly spaced and stay hashed.
#[tokio::test]
async fn time_buckets_aggregate_as_hashing_does() {
    let catalog = memory_catalog();
    let plain = engine(&catalog, 0);
    plain
        .collect(
            "CREATE TABLE m (k VARCHAR, ts TIMESTAMP, t2 TIMESTAMP, v DOUBLE, \
             PRIMARY KEY ((k), ts)) WITH (shards = 2)",
        )
        .await
        .unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 31)
        .unwrap()
        .and_hms_opt(23, 30, 0)
        .unwrap();
    for part in 0..2 {
        let mut values = vec![];
        for k in 0..5 {
            for i in (part * 300)..(part * 300 + 300) {
                let ts = start + chrono::Duration::seconds(7 * i + k);
                let t2 = if i % 5 == 0 {
                    "NULL".to_string()
                } else {
                    format!("'{}'", ts + chrono::Duration::seconds(13))
                };
                values.push(format!("('s{k}', '{ts}', {t2}, {})", (i * 7 + k) % 23));
            }
        }
        plain
            .collect(&format!("INSERT INTO m VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
    let cached = engine(&catalog.clone().exclusive(), 64 << 20);
    let aggregates = "count(*) AS n, avg(v) AS a, sum(v) AS s, min(v) AS lo";
    let cases = [
        ("date_bin(INTERVAL '1 minute', ts)", "", true),
        ("date_bin(INTERVAL '1 minute', ts)", "WHERE v > 3", true),
        ("date_bin(INTERVAL '90 seconds', t2)", "", true),
        (
            "date_bin(INTERVAL '1 minute', ts, TIMESTAMP '2026-01-01 00:00:07')",
            "",
            true,
        ),
        ("date_bin(INTERVAL '1 month', ts)", "", false),
    ];
    for (bucket, filter, by_buckets) in cases {
        let sql = format!(
            "SELECT CAST({bucket} AS VARCHAR) AS b, {aggregates} FROM m {filter} GROUP BY {bucket}"
        );
        let hashed = format!(
            "SELECT CAST({bucket} AS VARCHAR) AS b, {aggregates} FROM m {filter} \
             GROUP BY CAST({bucket} AS VARCHAR)"
        );
        let want = answer(&plain, &hashed).await;
        assert!(want.len() > 1, "{hashed}: {want:?}");
        assert!(
            !physical_plan(&plain, &hashed)
                .await
                .contains("BucketAggregateExec")
        );
        for e in [&plain, &cached] {
            let plan = physical_plan(e, &sql).await;
            assert_eq!(
                plan.contains("BucketAggregateExec"),
                by_buckets,
                "{sql}:\n{plan}"
            );
        }
        assert_eq!(answer(&plain, &sql).await, want, "Parquet: {sql}");
        assert_eq!(answer(&cached, &sql).await, want, "cold: {sql}");
        settle(&cached).await;
        assert_eq!(answer(&cached, &sql).await, want, "cached: {sql}");
        assert_eq!(answer(&cached, &sql).await, want, "kept plan: {sql}");
    }
}
