//! What checked integer arithmetic costs: the same queries over the same in-memory
//! table through DataFusion as it comes (wrapping `+ - *` and `sum`) and through
//! DataFusion with Strata's overflow checks installed (`strata_query::overflow`), in one
//! run, alternating, median of `--runs`.
//!
//! The table: `--rows` (10M) rows in 8,192-row batches over `target_partitions` =
//! available cores; `k` (1,000 groups), `a` and `b` random `BIGINT`s small enough that
//! nothing overflows.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::{Rng, SeedableRng};
use strata_benches::{median, ms, ratio};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 9)]
    runs: usize,
}

const QUERIES: [&str; 5] = [
    "SELECT sum(a) FROM t",
    "SELECT k, sum(a) FROM t GROUP BY k",
    "SELECT sum(a + b * 2 - k) FROM t",
    "SELECT count(*) FROM t WHERE a + b > 1000000",
    "SELECT k, sum(a * b) FROM t GROUP BY k",
];

fn table(rows: usize, partitions: usize) -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, true),
    ]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut parts = vec![Vec::new(); partitions];
    let mut start = 0;
    let mut i = 0;
    while start < rows {
        let n = 8192.min(rows - start);
        let k: Int64Array = (0..n).map(|_| rng.random_range(0..1000i64)).collect();
        let a: Int64Array = (0..n)
            .map(|_| rng.random_range(-1_000_000..1_000_000i64))
            .collect();
        let b: Int64Array = (0..n)
            .map(|j| (j % 17 != 0).then(|| rng.random_range(0..1_000_000i64)))
            .collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(a), Arc::new(b)])
                .expect("batch");
        parts[i % partitions].push(batch);
        start += n;
        i += 1;
    }
    MemTable::try_new(schema, parts).expect("table")
}

fn context(table: Arc<MemTable>, partitions: usize, checked: bool) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(partitions);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    if checked {
        strata_query::overflow::install(&mut state).expect("install");
    }
    let ctx = SessionContext::new_with_state(state);
    ctx.register_table("t", table).expect("register");
    ctx
}

async fn run(ctx: &SessionContext, sql: &str) -> (Duration, String) {
    let started = Instant::now();
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches = df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let elapsed = started.elapsed();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string();
    (elapsed, text)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let table = Arc::new(table(args.rows, partitions));
    let wrapping = context(table.clone(), partitions, false);
    let checked = context(table, partitions, true);
    println!(
        "{} rows, {} partitions, {} runs (median ms; ratio = checked / wrapping)",
        args.rows, partitions, args.runs
    );
    println!(
        "{:<48} {:>10} {:>10} {:>7}",
        "query", "wrapping", "checked", "ratio"
    );
    for sql in QUERIES {
        // Warm up, and both sides must agree (GROUP BY output order is not fixed).
        let mut a: Vec<String> = run(&wrapping, sql)
            .await
            .1
            .lines()
            .map(Into::into)
            .collect();
        let mut b: Vec<String> = run(&checked, sql).await.1.lines().map(Into::into).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{sql}: the two sides disagree");
        let (mut w, mut c) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            w.push(run(&wrapping, sql).await.0);
            c.push(run(&checked, sql).await.0);
        }
        let (w, c) = (median(&mut w), median(&mut c));
        println!("{sql:<48} {:>10} {:>10} {:>7}", ms(w), ms(c), ratio(c, w));
    }
}
