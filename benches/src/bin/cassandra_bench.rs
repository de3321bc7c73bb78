//! Strata on Cassandra, against its peers in the same run:
//!
//! 1. **FiloDB's headline**: N weather rows as Strata segments in Cassandra versus the
//!    same rows in a plain Cassandra table, one row per record
//!    (`PRIMARY KEY ((station), ts)`), read through the `scylla` driver. Queries: a
//!    one-column `SUM(temperature)` over everything (Strata: SQL through DataFusion;
//!    rows: `SELECT temperature FROM weather_rows`, paged, summed in the client) and one
//!    station over one day (Strata: SQL; rows: the partition slice).
//! 2. **Ingest**: `Table::write` of the N rows in `--batch-rows` batches (then compaction)
//!    on the Cassandra store and on the local store; the row table's load (prepared
//!    INSERTs, `--inflight` at a time) alongside.
//! 3. **Queries**: query-bench's analyst queries (count, sums, one station-hour,
//!    group-by top 10, minute buckets, top 10 rows, full scan) on the same rows, Strata
//!    on Cassandra against Strata on the local store; both must agree.
//! 4. **Commits**: `--commits` small appends (10 rows) per writer with 1, 2 and 4
//!    concurrent writers on one dataset, each writer its own catalog (as separate
//!    servers are): commits/s and median commit latency, Cassandra (lightweight
//!    transactions) and local store.
//!
//! The Cassandra node: `--cassandra HOST:PORT` or `STRATA_CASSANDRA` (start one with
//! `tools/cassandra/run start`). Everything goes into keyspace `strata_bench_<pid>`,
//! dropped at the end. Medians of `--runs`; the Strata and row queries alternate.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use scylla::value::CqlTimestamp;
use strata_benches::{median, ms, ratio, weather_queries};
use strata_cassandra::{CassandraConfig, CassandraStore};
use strata_datagen::{WeatherFeed, station_name, weather_spec};
use strata_storage::LocalStore;
use strata_table::Catalog;

#[derive(Parser)]
struct Args {
    /// Row counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    rows: Vec<u64>,
    /// Cassandra contact point (default: $STRATA_CASSANDRA).
    #[arg(long)]
    cassandra: Option<String>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 1_000_000)]
    batch_rows: u64,
    /// Row-table INSERTs in flight while loading.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Small commits per writer in the commit benchmark (0: skip it).
    #[arg(long, default_value_t = 50)]
    commits: usize,
}

const ROW_TABLE: &str = "CREATE TABLE IF NOT EXISTS weather_rows (
    station text, ts timestamp, temperature double, dewpoint double, pressure double,
    wind_dir int, wind_speed double, precip double, sky text,
    PRIMARY KEY ((station), ts))";

async fn connect(contact: &str, keyspace: &str) -> CassandraStore {
    let config = CassandraConfig {
        contact_points: vec![contact.to_string()],
        keyspace: keyspace.to_string(),
        ..Default::default()
    };
    CassandraStore::connect(config).await.expect("connect")
}

fn f64_col<'a>(b: &'a RecordBatch, name: &str) -> &'a Float64Array {
    b.column_by_name(name)
        .expect(name)
        .as_primitive::<Float64Type>()
}

/// Loads `batch` into the row table, `inflight` INSERTs at a time.
async fn load_rows(store: &CassandraStore, batch: &RecordBatch, inflight: usize) {
    let session = store.session();
    let insert = session
        .prepare(
            "INSERT INTO weather_rows (station, ts, temperature, dewpoint, pressure, wind_dir, \
             wind_speed, precip, sky) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .await
        .expect("prepare");
    let station = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("station");
    let ts = batch.column(1).as_primitive::<TimestampMicrosecondType>();
    let (temp, dew, pressure) = (
        f64_col(batch, "temperature"),
        f64_col(batch, "dewpoint"),
        f64_col(batch, "pressure"),
    );
    let wind_dir = batch
        .column_by_name("wind_direction")
        .expect("wind_direction")
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("int32");
    let (wind, precip) = (f64_col(batch, "wind_speed"), f64_col(batch, "precip_1h"));
    let sky = batch
        .column_by_name("sky_condition")
        .expect("sky_condition")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("sky");
    let opt = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    futures::stream::iter(0..batch.num_rows())
        .map(|i| {
            let values = (
                station.value(i).to_string(),
                CqlTimestamp(ts.value(i) / 1000),
                opt(temp, i),
                opt(dew, i),
                opt(pressure, i),
                (!wind_dir.is_null(i)).then(|| wind_dir.value(i)),
                opt(wind, i),
                opt(precip, i),
                (!sky.is_null(i)).then(|| sky.value(i).to_string()),
            );
            let insert = &insert;
            async move { session.execute_unpaged(insert, values).await.map(drop) }
        })
        .buffer_unordered(inflight)
        .try_collect::<()>()
        .await
        .expect("insert rows");
}

/// `SELECT temperature FROM weather_rows`, every page, summed here.
async fn row_sum(store: &CassandraStore) -> f64 {
    let mut q = scylla::statement::Statement::new("SELECT temperature FROM weather_rows");
    q.set_page_size(5000);
    let pager = store.session().query_iter(q, ()).await.expect("scan");
    let mut rows = pager.rows_stream::<(Option<f64>,)>().expect("typed");
    let mut sum = 0.0;
    while let Some(row) = rows.next().await {
        sum += row.expect("row").0.unwrap_or(0.0);
    }
    sum
}

async fn row_station_day(store: &CassandraStore, station: &str, from_us: i64) -> f64 {
    let q = store
        .session()
        .prepare("SELECT temperature FROM weather_rows WHERE station = ? AND ts >= ? AND ts < ?")
        .await
        .expect("prepare");
    let day = 86_400_000;
    let from = CqlTimestamp(from_us / 1000);
    let to = CqlTimestamp(from_us / 1000 + day);
    let result = store
        .session()
        .execute_unpaged(&q, (station, from, to))
        .await
        .expect("slice");
    let rows = result.into_rows_result().expect("rows");
    rows.rows::<(Option<f64>,)>()
        .expect("typed")
        .map(|r| r.expect("row").0.unwrap_or(0.0))
        .sum()
}

async fn sql_f64(ctx: &datafusion::prelude::SessionContext, sql: &str) -> f64 {
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    b.column(0).as_primitive::<Float64Type>().value(0)
}

async fn collect(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run")
}

/// A result's rows as sorted strings (floats to 9 significant digits, so summation
/// order does not matter), or only column `only`'s values in order.
fn canonical(batches: &[RecordBatch], only: Option<usize>) -> Vec<String> {
    let cell = |b: &RecordBatch, c: usize, r: usize| -> String {
        let col = b.column(c);
        if col.is_null(r) {
            return "NULL".into();
        }
        match col.as_primitive_opt::<Float64Type>() {
            Some(f) => format!("{:.8e}", f.value(r)),
            None => arrow::util::display::array_value_to_string(col, r).expect("display"),
        }
    };
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(match only {
                Some(c) => cell(b, c, r),
                None => (0..b.num_columns())
                    .map(|c| cell(b, c, r))
                    .collect::<Vec<_>>()
                    .join("|"),
            });
        }
    }
    if only.is_none() {
        rows.sort();
    }
    rows
}

async fn write_all(catalog: &Catalog, feed: &WeatherFeed, rows: u64, batch_rows: u64) -> Duration {
    let table = catalog.create_table(weather_spec()).await.expect("create");
    let started = Instant::now();
    let mut first = 0;
    while first < rows {
        let n = batch_rows.min(rows - first);
        let batch = feed.batch(first, n as usize);
        table
            .write(std::slice::from_ref(&batch), BTreeMap::new())
            .await
            .expect("write");
        first += n;
    }
    while table.compact().await.expect("compact").is_some() {}
    started.elapsed()
}

/// `writers` catalogs appending `commits` small batches each to one dataset at once:
/// (commits per second, median latency of one commit).
async fn commits(
    catalogs: &[Catalog],
    name: &str,
    feed: &WeatherFeed,
    commits: usize,
) -> (f64, Duration) {
    let started = Instant::now();
    let tasks = catalogs.iter().enumerate().map(|(w, catalog)| async move {
        let table = catalog.open_table(name).await.expect("open");
        let mut latencies = Vec::new();
        for i in 0..commits {
            let batch = feed.batch(50_000_000 + (w * commits + i) as u64 * 10, 10);
            let t = Instant::now();
            table
                .write(std::slice::from_ref(&batch), BTreeMap::new())
                .await
                .expect("commit");
            latencies.push(t.elapsed());
        }
        latencies
    });
    let mut all: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed();
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    (rate, median(&mut all))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let contact = args
        .cassandra
        .clone()
        .or_else(|| std::env::var("STRATA_CASSANDRA").ok())
        .expect("--cassandra HOST:PORT or STRATA_CASSANDRA (tools/cassandra/run start)");
    let keyspace = format!("strata_bench_{}", std::process::id());
    let feed = WeatherFeed::default();
    println!(
        "Cassandra at {contact}, keyspace {keyspace}; medians of {} runs",
        args.runs
    );

    for &rows in &args.rows {
        let store = connect(&contact, &format!("{keyspace}_{rows}")).await;
        let session = store.session();
        session
            .query_unpaged("DROP TABLE IF EXISTS weather_rows", ())
            .await
            .expect("drop");
        session
            .query_unpaged(ROW_TABLE, ())
            .await
            .expect("row table");

        // Ingest: Strata on Cassandra, Strata on the local store, the row table.
        let cassandra = Arc::new(store.clone());
        let catalog = cassandra_catalog(cassandra.clone());
        let strata_cassandra = write_all(&catalog, &feed, rows, args.batch_rows).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let local = Arc::new(LocalStore::open(dir.path()).expect("local"));
        let local_catalog = Catalog::new(local.clone(), local.clone());
        let strata_local = write_all(&local_catalog, &feed, rows, args.batch_rows).await;
        let started = Instant::now();
        let mut first = 0;
        while first < rows {
            let n = args.batch_rows.min(rows - first);
            load_rows(&store, &feed.batch(first, n as usize), args.inflight).await;
            first += n;
        }
        let row_load = started.elapsed();
        let per_s = |d: Duration| (rows as f64 / d.as_secs_f64()).round();
        println!("\n{rows} rows");
        println!(
            "ingest rows/s: strata on cassandra {} · strata on local store {} · row table {} \
             (cassandra/local {:.2}, strata/row table {:.2})",
            per_s(strata_cassandra),
            per_s(strata_local),
            per_s(row_load),
            per_s(strata_cassandra) / per_s(strata_local),
            per_s(strata_cassandra) / per_s(row_load),
        );

        let ctx = datafusion::prelude::SessionContext::new();
        strata_query::register(&ctx, &catalog)
            .await
            .expect("register");
        let station = station_name(7);
        let day_us = feed.start_us + 86_400_000_000;
        let queries: [(&str, String); 2] = [
            (
                "SUM(temperature), all rows",
                "SELECT sum(temperature) FROM weather".into(),
            ),
            (
                "one station, one day",
                format!(
                    "SELECT sum(temperature) FROM weather WHERE station = '{station}' \
                     AND ts >= to_timestamp_micros({day_us}) \
                     AND ts < to_timestamp_micros({})",
                    day_us + 86_400_000_000
                ),
            ),
        ];
        println!(
            "{:<28} {:>12} {:>12} {:>9}",
            "query", "strata ms", "rows ms", "rows/strata"
        );
        for (i, (label, sql)) in queries.iter().enumerate() {
            // Warm up, and both answers agree.
            let s = sql_f64(&ctx, sql).await;
            let r = if i == 0 {
                row_sum(&store).await
            } else {
                row_station_day(&store, &station, day_us).await
            };
            assert!(
                (s - r).abs() <= 1e-6 * s.abs().max(1.0),
                "{label}: {s} vs {r}"
            );
            let (mut st, mut rt) = (Vec::new(), Vec::new());
            for _ in 0..args.runs {
                let t = Instant::now();
                sql_f64(&ctx, sql).await;
                st.push(t.elapsed());
                let t = Instant::now();
                if i == 0 {
                    row_sum(&store).await;
                } else {
                    row_station_day(&store, &station, day_us).await;
                }
                rt.push(t.elapsed());
            }
            let (s, r) = (median(&mut st), median(&mut rt));
            println!("{label:<28} {:>12} {:>12} {:>9}", ms(s), ms(r), ratio(r, s));
        }

        // The analyst queries of query-bench: Strata on Cassandra against Strata on the
        // local store, the same rows, alternating.
        let local_ctx = datafusion::prelude::SessionContext::new();
        strata_query::register(&local_ctx, &local_catalog)
            .await
            .expect("register local");
        println!(
            "\n{:<40} {:>13} {:>10} {:>16}",
            "query (strata)", "cassandra ms", "local ms", "cassandra/local"
        );
        for q in weather_queries(&feed, rows) {
            let sql = q.sql_for("weather");
            // Top 10 by a value: ties make the other columns ambiguous.
            let only = (q.id == 6).then_some(7);
            let (c, l) = (
                canonical(&collect(&ctx, &sql).await, only),
                canonical(&collect(&local_ctx, &sql).await, only),
            );
            assert_eq!(c, l, "query {}: the stores disagree", q.id);
            let (mut ct, mut lt) = (Vec::new(), Vec::new());
            for _ in 0..args.runs {
                let t = Instant::now();
                collect(&ctx, &sql).await;
                ct.push(t.elapsed());
                let t = Instant::now();
                collect(&local_ctx, &sql).await;
                lt.push(t.elapsed());
            }
            let (c, l) = (median(&mut ct), median(&mut lt));
            println!(
                "{:<40} {:>13} {:>10} {:>16}",
                format!("{}. {}", q.id, q.label),
                ms(c),
                ms(l),
                ratio(c, l)
            );
        }
        drop_keyspace(&store).await;
    }

    if args.commits > 0 {
        println!(
            "\ncommits of 10 rows on one dataset ({} per writer)",
            args.commits
        );
        println!(
            "{:<8} {:>16} {:>14} {:>16} {:>14}",
            "writers", "cassandra c/s", "cassandra ms", "local c/s", "local ms"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let local = Arc::new(LocalStore::open(dir.path()).expect("local"));
        for writers in [1usize, 2, 4] {
            let name = format!("commits_{writers}");
            let mut spec = weather_spec();
            spec.name = strata_types::DatasetName::new(name.as_str()).expect("name");
            let mut cassandra_catalogs = Vec::new();
            for _ in 0..writers {
                let store = Arc::new(connect(&contact, &keyspace).await);
                cassandra_catalogs.push(cassandra_catalog(store));
            }
            cassandra_catalogs[0]
                .create_table(spec.clone())
                .await
                .expect("create");
            let local_catalogs: Vec<Catalog> = (0..writers)
                .map(|_| Catalog::new(local.clone(), local.clone()))
                .collect();
            local_catalogs[0].create_table(spec).await.expect("create");
            let (c_rate, c_lat) = commits(&cassandra_catalogs, &name, &feed, args.commits).await;
            let (l_rate, l_lat) = commits(&local_catalogs, &name, &feed, args.commits).await;
            println!(
                "{writers:<8} {c_rate:>16.1} {:>14} {l_rate:>16.1} {:>14}",
                ms(c_lat),
                ms(l_lat)
            );
        }

        drop_keyspace(&connect(&contact, &keyspace).await).await;
    }
}

async fn drop_keyspace(store: &CassandraStore) {
    let cql = format!("DROP KEYSPACE IF EXISTS {}", store.config().keyspace);
    store
        .session()
        .query_unpaged(cql, ())
        .await
        .expect("drop keyspace");
}

/// A catalog whose blobs, records and version log all live in one Cassandra keyspace,
/// as `strata serve --store cassandra://…` opens it.
fn cassandra_catalog(store: Arc<CassandraStore>) -> Catalog {
    Catalog::with_log(
        store.clone(),
        store.clone(),
        store,
        strata_table::TableOptions::default(),
    )
}
