//! SQL over Strata against the same rows as plain Parquet, both through DataFusion.
//!
//! For each row count N (`--rows 10000000,50000000`) of the weather feed
//! (`WeatherFeed::default()`: 100 stations, one row per station per minute, time order):
//!
//! - Strata: a weather dataset (8 shards, key `(station, ts)`) on a LocalStore in a
//!   temporary directory (fsync on), written in `--batch-rows` (1M) row `Table::write`s,
//!   then `Table::compact` until it has nothing to do, so segments are large. That is
//!   version `V_old`. Then `--small-commits` (101) small appends of `--small-rows` (10)
//!   rows each (the next rows of the feed) and, unless `--no-compact-after`, compaction
//!   again (a background compactor would have done it): the head is at least 100
//!   commits newer than `V_old`.
//! - Plain Parquet: the same rows written by arrow-rs `ArrowWriter` into one directory,
//!   one file per `--batch-rows` batch of the feed (time order, as it arrived: no
//!   sorting, no sharding) plus one file with the rows of the small commits. Writer
//!   settings as Strata's segments apart from the sort: zstd level 1, page statistics,
//!   arrow-rs's default row group (1Mi rows) and page (20,000 rows) limits. Registered
//!   with `register_parquet` (a ListingTable), which reads strings as `Utf8View` by
//!   default (Strata's schema says `Utf8`); `--parquet-utf8` makes it read `Utf8`.
//!
//! One SessionContext (target_partitions = available cores, parquet `pushdown_filters`
//! and page index on) holds `weather` (Strata at head, via `strata_query::register`),
//! `weather_old` (Strata at `V_old`) and `weather_pq` (plain Parquet). Each query runs
//! once on each side to warm up and check that both sides agree (the run aborts if not),
//! then `--runs` times on each side, alternating; the median is reported, planning
//! included (and, apart, the median of SQL-to-physical-plan time). Query 7 (`count(*)` at `V_old`) has no plain Parquet counterpart: it is
//! compared with the same query on the plain files (which hold the head's rows).
//! Query 8 (every column aggregated) is the full scan that query 3's pruning avoids.
//!
//! Bytes read by Strata come from a `CountingBlobStore` around the LocalStore (footers
//! and page indexes included); `bytes_scanned` is DataFusion's own metric of the Parquet
//! scan, for both sides. Rollback latency is `Table::rollback` to `V_old` and back to
//! the head, alternating, on a warm table handle. Data building is not timed. The
//! output also lists each side's compressed bytes per column and, per query, the scan
//! metrics (files, row groups and pages pruned, metadata load time) of the last run;
//! `--explain` prints `EXPLAIN ANALYZE` of every query on both sides.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use bytes::Bytes;
use clap::Parser;
use datafusion::common::ScalarValue;
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::file::metadata::ParquetMetaDataReader;
use strata_benches::{
    BlobCounts, CountingBlobStore, compact_all, median, ms, weather_queries, write_parquet,
};
use strata_datagen::{WeatherFeed, weather_spec};
use strata_query::StrataTable;
use strata_storage::{BlobStore, LocalStore};
use strata_table::{Catalog, Table, VersionSpec};

const STRATA: &str = "weather";
const STRATA_OLD: &str = "weather_old";
const PARQUET: &str = "weather_pq";
/// DataSourceExec metrics shown in the diagnostics.
const SHOWN_METRICS: [&str; 10] = [
    "output_rows",
    "bytes_scanned",
    "files_ranges_pruned_statistics",
    "row_groups_pruned_statistics",
    "page_index_rows_pruned",
    "pushdown_rows_pruned",
    "metadata_load_time",
    "time_elapsed_opening",
    "time_elapsed_scanning_total",
    "time_elapsed_processing",
];

fn parse_count(s: &str) -> Result<u64, String> {
    s.trim()
        .replace('_', "")
        .parse::<u64>()
        .map_err(|e| format!("bad number {s:?}: {e}"))
        .and_then(|n| {
            if n == 0 {
                Err("must be positive".into())
            } else {
                Ok(n)
            }
        })
}

/// SQL over Strata (DataFusion TableProvider) against the same rows as plain Parquet.
#[derive(Parser, Debug)]
#[command(name = "query-bench")]
struct Args {
    /// Row counts of the feed to measure, comma separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_value = "10000000,50000000")]
    rows: Vec<u64>,
    /// Timed runs per query and side (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Rows per `Table::write` and per plain Parquet file while building.
    #[arg(long, value_parser = parse_count, default_value = "1000000")]
    batch_rows: u64,
    /// Small commits after `V_old` (at least 100, so `V_old` is 100 commits old).
    #[arg(long, default_value_t = 101)]
    small_commits: u64,
    /// Rows per small commit.
    #[arg(long, value_parser = parse_count, default_value = "10")]
    small_rows: u64,
    /// Rollbacks to `V_old` (each followed by one back to the head) timed.
    #[arg(long, default_value_t = 5)]
    rollbacks: usize,
    /// Do not compact after the small commits (the head keeps their small segments).
    #[arg(long)]
    no_compact_after: bool,
    /// Directory for the data (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print `EXPLAIN ANALYZE` of every query on both sides.
    #[arg(long)]
    explain: bool,
    /// Read the plain Parquet strings as `Utf8`, like Strata's schema, instead of
    /// DataFusion's default `Utf8View` (`schema_force_view_types = false`).
    #[arg(long)]
    parquet_utf8: bool,
}

/// How the two sides' results are compared.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// Row by row, in order (floats within a relative 1e-9).
    Ordered,
    /// As multisets of rows.
    Unordered,
    /// Only this column, in order (ties elsewhere make the rest ambiguous).
    Column(usize),
    /// Not comparable (Strata at an old version); checked against an expected count.
    OldCount,
}

#[derive(Debug)]
struct Query {
    id: usize,
    label: &'static str,
    /// SQL with `{t}` for the table.
    sql: String,
    strata_table: &'static str,
    check: Check,
}

impl Query {
    fn sql_for(&self, table: &str) -> String {
        self.sql.replace("{t}", table)
    }
}

/// The queries, for a feed of `base_rows` rows (the rows before the small commits):
/// the shared weather queries plus query 7, `count(*)` at `V_old`.
fn queries(feed: &WeatherFeed, base_rows: u64) -> Vec<Query> {
    let mut out: Vec<Query> = weather_queries(feed, base_rows)
        .into_iter()
        .map(|q| Query {
            id: q.id,
            label: q.label,
            check: match q.id {
                3 => Check::Unordered,
                6 => Check::Column(7),
                _ => Check::Ordered,
            },
            sql: q.sql,
            strata_table: STRATA,
        })
        .collect();
    out.insert(
        6,
        Query {
            id: 7,
            label: "count(*) at V_old (Parquet: same files)",
            sql: "SELECT count(*) FROM {t}".into(),
            strata_table: STRATA_OLD,
            check: Check::OldCount,
        },
    );
    out
}

/// One row count's data, on both sides.
struct Built {
    _dir: tempfile::TempDir,
    catalog: Catalog,
    table: Table,
    counting: Arc<CountingBlobStore>,
    parquet_dir: PathBuf,
    base_rows: u64,
    extra_rows: u64,
    v_old: u64,
    head: u64,
    parquet_files: usize,
    parquet_bytes: u64,
    build: Duration,
}

async fn build(feed: &WeatherFeed, rows: u64, args: &Args) -> Built {
    let started = Instant::now();
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let strata_dir = dir.path().join("strata");
    let parquet_dir = dir.path().join("parquet");
    std::fs::create_dir_all(&parquet_dir).expect("parquet dir");
    let store = LocalStore::open(&strata_dir).expect("local store");
    let counting = Arc::new(CountingBlobStore::new(Arc::new(store.clone())));
    let catalog = Catalog::new(counting.clone() as Arc<dyn BlobStore>, Arc::new(store));
    let table = catalog.create_table(weather_spec()).await.expect("create");

    let mut parquet_files = 0;
    let mut parquet_bytes = 0;
    let mut first = 0u64;
    while first < rows {
        let n = args.batch_rows.min(rows - first);
        let batch = feed.batch(first, n as usize);
        parquet_bytes += write_parquet(
            &parquet_dir.join(format!("part-{parquet_files:05}.parquet")),
            std::slice::from_ref(&batch),
        );
        parquet_files += 1;
        table
            .write(std::slice::from_ref(&batch), BTreeMap::new())
            .await
            .expect("write");
        first += n;
        eprintln!("  wrote {first} of {rows} rows ({:.0?})", started.elapsed());
    }
    let compactions = compact_all(&table).await;
    let v_old = table.head_version().await.expect("head");
    eprintln!("  {compactions} compactions; V_old = {v_old}");

    let mut small = Vec::new();
    for i in 0..args.small_commits {
        let batch = feed.batch(rows + i * args.small_rows, args.small_rows as usize);
        table
            .write(std::slice::from_ref(&batch), BTreeMap::new())
            .await
            .expect("small write");
        small.push(batch);
    }
    let extra_rows = args.small_commits * args.small_rows;
    if !small.is_empty() {
        parquet_bytes += write_parquet(&parquet_dir.join("small-commits.parquet"), &small);
        parquet_files += 1;
    }
    if !args.no_compact_after {
        compact_all(&table).await;
    }
    let head = table.head_version().await.expect("head");
    assert!(
        head >= v_old + 100,
        "V_old must be at least 100 commits old (use --small-commits >= 100)"
    );
    Built {
        _dir: dir,
        catalog,
        table,
        counting,
        parquet_dir,
        base_rows: rows,
        extra_rows,
        v_old,
        head,
        parquet_files,
        parquet_bytes,
        build: started.elapsed(),
    }
}

fn session(args: &Args) -> SessionContext {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = SessionConfig::new().with_target_partitions(cores);
    let opts = config.options_mut();
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.parquet.enable_page_index = true;
    // Only affects the ListingTable's schema: Strata's table schema is its own.
    opts.execution.parquet.schema_force_view_types = !args.parquet_utf8;
    SessionContext::new_with_config(config)
}

/// One run: (total, planning) time, the result and the physical plan.
async fn run(
    ctx: &SessionContext,
    sql: &str,
) -> (Duration, Duration, Vec<RecordBatch>, Arc<dyn ExecutionPlan>) {
    let t = Instant::now();
    let df = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("planning {sql}: {e}"));
    let plan = df
        .create_physical_plan()
        .await
        .unwrap_or_else(|e| panic!("planning {sql}: {e}"));
    let planned = t.elapsed();
    let batches = collect(plan.clone(), ctx.task_ctx())
        .await
        .unwrap_or_else(|e| panic!("running {sql}: {e}"));
    (t.elapsed(), planned, batches, plan)
}

/// What the Parquet scans of a plan did (from the last run).
#[derive(Debug, Default)]
struct ScanInfo {
    scans: usize,
    /// File ranges (a file may be split into several) and partitions (file groups).
    file_ranges: usize,
    partitions: usize,
    bytes_scanned: u64,
    metrics: BTreeMap<String, String>,
}

fn scan_info(plan: &Arc<dyn ExecutionPlan>, out: &mut ScanInfo) {
    if let Some(exec) = plan.as_ref().downcast_ref::<DataSourceExec>() {
        out.scans += 1;
        if let Some((conf, _)) = exec.downcast_to_file_source::<ParquetSource>() {
            out.partitions += conf.file_groups.len();
            out.file_ranges += conf.file_groups.iter().map(|g| g.len()).sum::<usize>();
        }
        if let Some(m) = plan.metrics() {
            let m = m.aggregate_by_name();
            for metric in m.iter() {
                let v = metric.value();
                if SHOWN_METRICS.contains(&v.name()) {
                    out.metrics.insert(v.name().to_string(), v.to_string());
                }
            }
            out.bytes_scanned += m
                .sum_by_name("bytes_scanned")
                .map_or(0, |v| v.as_usize() as u64);
        }
    }
    for child in plan.children() {
        scan_info(child, out);
    }
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<ScalarValue>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, i).expect("scalar"))
                    .collect(),
            );
        }
    }
    out
}

/// The string of a string scalar of any string type.
fn string_of(v: &ScalarValue) -> Option<&Option<String>> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => Some(s),
        _ => None,
    }
}

/// Equal values, floats within a relative 1e-9, strings whatever their Arrow type
/// (plain Parquet reads strings as `Utf8View` by default, Strata's schema says `Utf8`).
fn same_value(a: &ScalarValue, b: &ScalarValue) -> bool {
    if let (Some(x), Some(y)) = (string_of(a), string_of(b)) {
        return x == y;
    }
    match (a, b) {
        (ScalarValue::Float64(Some(x)), ScalarValue::Float64(Some(y))) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

fn same_rows(a: &[Vec<ScalarValue>], b: &[Vec<ScalarValue>]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} rows vs {} rows", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.len() != y.len() || x.iter().zip(y).any(|(p, q)| !same_value(p, q)) {
            return Err(format!("row {i} differs: {x:?} vs {y:?}"));
        }
    }
    Ok(())
}

fn count_of(batches: &[RecordBatch]) -> u64 {
    match rows_of(batches).first().and_then(|r| r.first()) {
        Some(ScalarValue::Int64(Some(n))) => *n as u64,
        other => panic!("count(*) returned {other:?}"),
    }
}

/// Aborts if the two sides disagree (or a side disagrees with what the data must give).
fn check(q: &Query, built: &Built, strata: &[RecordBatch], parquet: &[RecordBatch]) {
    let total = built.base_rows + built.extra_rows;
    let (s, p) = (rows_of(strata), rows_of(parquet));
    let result = match q.check {
        Check::Ordered => same_rows(&s, &p),
        Check::Unordered => {
            let sort = |mut r: Vec<Vec<ScalarValue>>| {
                r.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                r
            };
            same_rows(&sort(s), &sort(p))
        }
        Check::Column(c) => {
            let col = |r: &[Vec<ScalarValue>]| -> Vec<Vec<ScalarValue>> {
                r.iter().map(|row| vec![row[c].clone()]).collect()
            };
            same_rows(&col(&s), &col(&p))
        }
        Check::OldCount => {
            let (old, now) = (count_of(strata), count_of(parquet));
            if old == built.base_rows && now == total {
                Ok(())
            } else {
                Err(format!(
                    "count at V_old {old} (want {}), plain Parquet {now} (want {total})",
                    built.base_rows
                ))
            }
        }
    };
    if let Err(e) = result {
        panic!(
            "RESULTS DIFFER, query {} ({}): {e}\nStrata:\n{}\nParquet:\n{}",
            q.id,
            q.label,
            pretty_format_batches(&strata[..strata.len().min(3)]).expect("format"),
            pretty_format_batches(&parquet[..parquet.len().min(3)]).expect("format"),
        );
    }
    // Expectations independent of the other side.
    match q.id {
        1 => assert_eq!(count_of(strata), total, "count(*) at head"),
        3 => assert_eq!(
            strata.iter().map(RecordBatch::num_rows).sum::<usize>(),
            60,
            "one station, one hour: 60 rows"
        ),
        _ => {}
    }
}

#[derive(Debug)]
struct Measured {
    strata: Duration,
    parquet: Duration,
    /// Of those, SQL to physical plan (the median run's).
    strata_planning: Duration,
    parquet_planning: Duration,
    strata_scan: ScanInfo,
    parquet_scan: ScanInfo,
    /// Strata's blob store reads in the last timed run.
    blobs: BlobCounts,
    result_rows: usize,
}

async fn measure(ctx: &SessionContext, built: &Built, q: &Query, runs: usize) -> Measured {
    let (s_sql, p_sql) = (q.sql_for(q.strata_table), q.sql_for(PARQUET));
    let (_, _, s_out, _) = run(ctx, &s_sql).await;
    let (_, _, p_out, _) = run(ctx, &p_sql).await;
    check(q, built, &s_out, &p_out);
    let mut s_times = Vec::with_capacity(runs);
    let mut p_times = Vec::with_capacity(runs);
    let (mut s_plans, mut p_plans) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..runs {
        built.counting.reset();
        let (t, planned, _, s_plan) = run(ctx, &s_sql).await;
        let blobs = built.counting.snapshot();
        s_times.push(t);
        s_plans.push(planned);
        let (t, planned, _, p_plan) = run(ctx, &p_sql).await;
        p_times.push(t);
        p_plans.push(planned);
        last = Some((s_plan, p_plan, blobs));
    }
    let (s_plan, p_plan, blobs) = last.expect("at least one run");
    let mut strata_scan = ScanInfo::default();
    scan_info(&s_plan, &mut strata_scan);
    let mut parquet_scan = ScanInfo::default();
    scan_info(&p_plan, &mut parquet_scan);
    Measured {
        strata: median(&mut s_times),
        parquet: median(&mut p_times),
        strata_planning: median(&mut s_plans),
        parquet_planning: median(&mut p_plans),
        strata_scan,
        parquet_scan,
        blobs,
        result_rows: s_out.iter().map(RecordBatch::num_rows).sum(),
    }
}

async fn explain(ctx: &SessionContext, sql: &str) -> String {
    let df = ctx
        .sql(&format!("EXPLAIN ANALYZE {sql}"))
        .await
        .expect("explain");
    let batches = df.collect().await.expect("explain");
    pretty_format_batches(&batches).expect("format").to_string()
}

/// Compressed bytes per column and row groups, summed over Parquet files.
#[derive(Debug, Default)]
struct Layout {
    columns: BTreeMap<String, u64>,
    row_groups: usize,
}

impl Layout {
    fn add(&mut self, file: &Bytes) {
        let meta = ParquetMetaDataReader::new()
            .parse_and_finish(file)
            .expect("parquet footer");
        self.row_groups += meta.num_row_groups();
        for rg in meta.row_groups() {
            for c in rg.columns() {
                *self.columns.entry(c.column_path().string()).or_default() +=
                    c.compressed_size() as u64;
            }
        }
    }
}

async fn layouts(built: &Built) -> (Layout, Layout) {
    let mut strata = Layout::default();
    let head = built.table.head().await.expect("head");
    for s in head.live_segments() {
        strata.add(
            &built
                .table
                .blobs()
                .get(&s.meta.path)
                .await
                .expect("segment"),
        );
    }
    let mut plain = Layout::default();
    for entry in std::fs::read_dir(&built.parquet_dir).expect("parquet dir") {
        let path = entry.expect("dir entry").path();
        plain.add(&Bytes::from(std::fs::read(&path).expect("parquet file")));
    }
    (strata, plain)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn bench(feed: &WeatherFeed, rows: u64, args: &Args) {
    eprintln!("building {rows} rows");
    let built = build(feed, rows, args).await;
    let ctx = session(args);
    strata_query::register(&ctx, &built.catalog)
        .await
        .expect("register Strata");
    let old = StrataTable::at(&built.table, VersionSpec::Version(built.v_old))
        .await
        .expect("old version");
    let old_segments = old.snapshot().manifest().segment_count();
    ctx.register_table(STRATA_OLD, Arc::new(old))
        .expect("register old version");
    let url = format!("{}/", built.parquet_dir.display());
    ctx.register_parquet(PARQUET, &url, ParquetReadOptions::default())
        .await
        .expect("register parquet");
    let head = built.table.head().await.expect("head");
    let strata_bytes: u64 = head.live_segments().map(|s| s.meta.bytes).sum();

    println!();
    println!(
        "## {} rows (+{} rows in {} small commits)",
        thousands(rows),
        built.extra_rows,
        args.small_commits
    );
    println!();
    println!(
        "- Strata: {} segments at head ({:.1} MiB, {} shards), head = v{}; V_old = v{} ({} segments), {} commits older{}",
        head.segment_count(),
        mib(strata_bytes),
        built.table.spec().shards,
        built.head,
        built.v_old,
        old_segments,
        built.head - built.v_old,
        if args.no_compact_after {
            "; head not compacted after the small commits"
        } else {
            "; head compacted after the small commits"
        }
    );
    println!(
        "- plain Parquet: {} files ({:.1} MiB): one per {}-row batch in feed (time) order + one of the small commits' rows",
        built.parquet_files,
        mib(built.parquet_bytes),
        thousands(args.batch_rows)
    );
    println!(
        "- plain Parquet strings read as {} (Strata: Utf8)",
        if args.parquet_utf8 {
            "Utf8 (--parquet-utf8)"
        } else {
            "Utf8View (DataFusion's default)"
        }
    );
    println!(
        "- build (untimed in the results) took {:.1} s; target_partitions = {}; median of {} runs after 1 warm-up",
        built.build.as_secs_f64(),
        ctx.state().config().target_partitions(),
        args.runs
    );

    let (strata_layout, plain_layout) = layouts(&built).await;
    println!(
        "- row groups: Strata {} (head), plain Parquet {}; compressed column chunks, MiB (Strata | Parquet): {}",
        strata_layout.row_groups,
        plain_layout.row_groups,
        strata_layout
            .columns
            .iter()
            .map(|(c, b)| format!(
                "{c} {:.1} | {:.1}",
                mib(*b),
                mib(plain_layout.columns.get(c).copied().unwrap_or(0))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let qs = queries(feed, rows);
    let mut results = Vec::new();
    for q in &qs {
        eprintln!("  query {}: {}", q.id, q.label);
        results.push(measure(&ctx, &built, q, args.runs).await);
        if args.explain {
            for (side, table) in [("Strata", q.strata_table), ("Parquet", PARQUET)] {
                println!(
                    "\nEXPLAIN ANALYZE, query {} on {side}:\n{}",
                    q.id,
                    explain(&ctx, &q.sql_for(table)).await
                );
            }
        }
    }

    println!();
    println!(
        "| # | query | rows out | Strata ms | Parquet ms | Strata ÷ Parquet | planning ms S | P |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (q, m) in qs.iter().zip(&results) {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            q.id,
            q.label,
            m.result_rows,
            ms(m.strata),
            ms(m.parquet),
            m.strata.as_secs_f64() / m.parquet.as_secs_f64().max(1e-9),
            ms(m.strata_planning),
            ms(m.parquet_planning)
        );
    }

    println!();
    println!(
        "| # | Strata blob bytes read | segments read | range calls (ranges) | Strata bytes_scanned | Parquet bytes_scanned | file ranges / partitions S | P |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (q, m) in qs.iter().zip(&results) {
        println!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} / {} | {} / {} |",
            q.id,
            thousands(m.blobs.bytes_read),
            m.blobs.segments_read(),
            m.blobs.get_range_calls + m.blobs.get_ranges_calls,
            m.blobs.ranges,
            thousands(m.strata_scan.bytes_scanned),
            thousands(m.parquet_scan.bytes_scanned),
            m.strata_scan.file_ranges,
            m.strata_scan.partitions,
            m.parquet_scan.file_ranges,
            m.parquet_scan.partitions,
        );
    }
    let by_id = |id: usize| &results[qs.iter().position(|q| q.id == id).expect("query")];
    let (point, full) = (by_id(3), by_id(8));
    println!();
    println!(
        "bytes read by Strata, with pruning (query 3): {} B ({:.2} MiB, {} segments); without (query 8, every column): {} B ({:.1} MiB, {} segments): {:.3}%",
        thousands(point.blobs.bytes_read),
        mib(point.blobs.bytes_read),
        point.blobs.segments_read(),
        thousands(full.blobs.bytes_read),
        mib(full.blobs.bytes_read),
        full.blobs.segments_read(),
        100.0 * point.blobs.bytes_read as f64 / full.blobs.bytes_read.max(1) as f64
    );
    println!(
        "bytes_scanned by plain Parquet, query 3: {} B; query 8: {} B",
        thousands(point.parquet_scan.bytes_scanned),
        thousands(full.parquet_scan.bytes_scanned)
    );

    // Rollback to V_old and back, alternating, on the warm writer handle.
    let head_v = built.table.head_version().await.expect("head");
    let (mut to_old, mut to_head) = (Vec::new(), Vec::new());
    for _ in 0..args.rollbacks {
        let t = Instant::now();
        built
            .table
            .rollback(&VersionSpec::Version(built.v_old))
            .await
            .expect("rollback to V_old");
        to_old.push(t.elapsed());
        let t = Instant::now();
        built
            .table
            .rollback(&VersionSpec::Version(head_v))
            .await
            .expect("rollback to head");
        to_head.push(t.elapsed());
    }
    let after = built
        .table
        .snapshot(&VersionSpec::Head)
        .await
        .expect("head");
    assert_eq!(
        after.num_rows(),
        built.base_rows + built.extra_rows,
        "rolled back to the head's content"
    );
    if args.rollbacks > 0 {
        println!(
            "rollback latency (median of {}): to V_old (v{}, {} commits back) {:.2} ms; back to v{} {:.2} ms",
            args.rollbacks,
            built.v_old,
            head_v - built.v_old,
            ms(median(&mut to_old)),
            head_v,
            ms(median(&mut to_head))
        );
    }

    println!();
    println!("scan metrics of the last timed run (DataSourceExec, summed over partitions):");
    for (q, m) in qs.iter().zip(&results) {
        for (side, s) in [("Strata", &m.strata_scan), ("Parquet", &m.parquet_scan)] {
            let metrics: Vec<String> = SHOWN_METRICS
                .iter()
                .filter_map(|k| s.metrics.get(*k).map(|v| format!("{k}={v}")))
                .collect();
            println!(
                "- q{} {side:<7} scans={} file_ranges={} partitions={} {}",
                q.id,
                s.scans,
                s.file_ranges,
                s.partitions,
                metrics.join(" ")
            );
        }
    }
}

fn main() {
    let args = Args::parse();
    assert!(args.runs > 0, "--runs must be positive");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let feed = WeatherFeed::default();
    println!(
        "# query-bench: SQL (DataFusion) over Strata vs the same rows as plain Parquet\n\n\
         weather feed: {} stations, one row per station per minute; Strata on LocalStore (fsync on); \
         Strata ÷ Parquet < 1 means Strata is faster",
        feed.stations
    );
    for &rows in &args.rows {
        rt.block_on(bench(&feed, rows, &args));
    }
}
