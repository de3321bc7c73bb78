//! Builds the data `tools/bench-queries` compares systems on: the first `--rows` rows of
//! the weather feed (`WeatherFeed::default()`) twice, as
//!
//! - `OUT/strata`: a Strata data directory (`strata serve --data-dir OUT/strata`) holding
//!   the dataset `weather` (`schemas/weather.json`: 8 shards, key `(station, ts)`),
//!   written in `--batch-rows` row commits and then compacted until compaction has
//!   nothing left to merge, as a loaded table at rest would be;
//! - `OUT/parquet/part-NNNNN.parquet`: the same rows as plain Parquet files, one per
//!   `--batch-rows` rows, in feed (time) order, zstd with page statistics;
//!
//! and `OUT/queries.json`: the analyst queries over those rows (`weather_queries`, SQL
//! with `{t}` for the table). `OUT/done` is written last, so a half-built directory is
//! never taken for a built one.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use strata_benches::{compact_all, json_str, weather_queries, write_parquet};
use strata_datagen::{WeatherFeed, weather_spec};
use strata_storage::LocalStore;
use strata_table::Catalog;

#[derive(Parser, Debug)]
#[command(name = "bench-data")]
struct Args {
    /// Rows of the weather feed.
    #[arg(long)]
    rows: u64,
    /// Directory to build in (must not exist yet, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Rows per Strata commit and per Parquet file.
    #[arg(long, default_value_t = 1_000_000)]
    batch_rows: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.rows > 0 && args.batch_rows > 0,
        "--rows and --batch-rows must be positive"
    );
    let started = Instant::now();
    let parquet_dir = args.out.join("parquet");
    std::fs::create_dir_all(&parquet_dir).expect("create the output directory");
    let store = Arc::new(LocalStore::open(args.out.join("strata").join("store")).expect("store"));
    let catalog = Catalog::new(store.clone(), store);
    let table = catalog
        .create_table(weather_spec())
        .await
        .expect("create weather");
    let feed = WeatherFeed::default();
    let mut first = 0;
    let mut files = 0;
    while first < args.rows {
        let n = args.batch_rows.min(args.rows - first);
        let batch = feed.batch(first, n as usize);
        write_parquet(
            &parquet_dir.join(format!("part-{files:05}.parquet")),
            std::slice::from_ref(&batch),
        );
        table
            .write(std::slice::from_ref(&batch), BTreeMap::new())
            .await
            .expect("write");
        first += n;
        files += 1;
        eprintln!(
            "  wrote {first} of {} rows ({:.0?})",
            args.rows,
            started.elapsed()
        );
    }
    let rounds = compact_all(&table).await;
    let head = table
        .snapshot(&strata_table::VersionSpec::Head)
        .await
        .expect("head");
    eprintln!(
        "  {rounds} compaction rounds: {} segments at version {} ({:.0?})",
        head.manifest().segment_count(),
        head.version(),
        started.elapsed()
    );
    let queries: Vec<String> = weather_queries(&feed, args.rows)
        .iter()
        .map(|q| {
            format!(
                "{{\"id\": {}, \"label\": {}, \"sql\": {}}}",
                q.id,
                json_str(q.label),
                json_str(&q.sql)
            )
        })
        .collect();
    std::fs::write(
        args.out.join("queries.json"),
        format!(
            "{{\"rows\": {}, \"queries\": [\n  {}\n]}}\n",
            args.rows,
            queries.join(",\n  ")
        ),
    )
    .expect("write queries.json");
    std::fs::write(args.out.join("done"), b"").expect("write done");
}
