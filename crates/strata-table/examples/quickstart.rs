//! Strata's table core on the embedded local store: write, read, upsert, time-travel,
//! roll back, tag, compact and vacuum a weather dataset.
//!
//! ```sh
//! cargo run -p strata-table --example quickstart [-- DATA_DIR]
//! ```
//! Without DATA_DIR the store lives in a temporary directory that is removed at exit.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use strata_datagen::{WeatherFeed, station_name, weather_spec};
use strata_storage::LocalStore;
use strata_table::{Catalog, CmpOp, Predicate, VacuumPolicy, VersionSpec, WriteOutcome};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Res<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let store = Arc::new(LocalStore::open(&dir)?);
    let catalog = Catalog::new(store.clone(), store);
    println!("Strata quickstart — local store in {}\n", dir.display());

    let table = match catalog.open_table("weather").await {
        Ok(t) => t,
        Err(_) => catalog.create_table(weather_spec()).await?,
    };
    let feed = WeatherFeed {
        stations: 50,
        ..WeatherFeed::default()
    };

    // 1. Three loads of one hour each (50 stations, one reading a minute), exactly once.
    for hour in 0..3u64 {
        let rows = 50 * 60;
        let batch = feed.batch(hour * rows, rows as usize);
        let marks = BTreeMap::from([("quickstart-loader".to_string(), hour + 1)]);
        match table.write(&[batch], marks).await? {
            WriteOutcome::Committed(v) => println!(
                "load hour {hour}: version {} (+{} rows)",
                v.version, v.rows_added
            ),
            WriteOutcome::Duplicate { head } => {
                println!("load hour {hour}: already applied (head {head})")
            }
        }
    }
    // Resending a batch with a sequence number the dataset holds changes nothing.
    let again = table
        .write(
            &[feed.batch(0, 10)],
            BTreeMap::from([("quickstart-loader".to_string(), 1)]),
        )
        .await?;
    println!("resend of load 1: {again:?}");
    let good = table.head_version().await?;

    // 2. A bad load: every reading of the first hour re-sent with temperature +100 (an upsert).
    let mut bad = feed.batch(0, 50 * 60);
    let temps = arrow::compute::kernels::numeric::add(
        bad.column(2),
        &arrow::array::Scalar::new(arrow::array::Float64Array::from(vec![100.0])),
    )?;
    let mut cols = bad.columns().to_vec();
    cols[2] = temps;
    bad = arrow::array::RecordBatch::try_new(bad.schema(), cols)?;
    let bad_v = match table.write(&[bad], BTreeMap::new()).await? {
        WriteOutcome::Committed(v) => v,
        other => return Err(format!("unexpected {other:?}").into()),
    };
    println!(
        "bad load: version {} (+{} rows, {} replaced)",
        bad_v.version, bad_v.rows_added, bad_v.rows_removed
    );

    // 3. Read and time-travel.
    let station = station_name(7);
    let max_temp = |v: VersionSpec| {
        let table = table.clone();
        let station = station.clone();
        async move {
            let snap = table.snapshot(&v).await?;
            let batches = snap.scan(Some(&["station", "temperature"])).await?;
            let mut max = f64::MIN;
            for b in &batches {
                let s = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .ok_or("utf8")?;
                let t = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::Float64Array>()
                    .ok_or("f64")?;
                for i in 0..b.num_rows() {
                    if s.value(i) == station && !arrow::array::Array::is_null(t, i) {
                        max = max.max(t.value(i));
                    }
                }
            }
            Ok::<_, Box<dyn std::error::Error>>((snap.version(), snap.num_rows(), max))
        }
    };
    let (v, rows, t) = max_temp(VersionSpec::Head).await?;
    println!("head v{v}: {rows} rows, max temperature at {station}: {t:.1} (bad)");
    let (v, rows, t) = max_temp(VersionSpec::Version(good)).await?;
    println!("VERSION AS OF {v}: {rows} rows, max temperature at {station}: {t:.1}");

    // 4. Roll the bad load back, and tag the result.
    let rb = table.rollback(&VersionSpec::Version(good)).await?;
    println!(
        "rollback to {good}: version {} (+{} / -{} rows)",
        rb.version, rb.rows_added, rb.rows_removed
    );
    table.create_tag("clean", &VersionSpec::Head).await.ok();
    let (v, _, t) = max_temp(VersionSpec::Tag("clean".into())).await?;
    println!("tag 'clean' = v{v}: max temperature at {station}: {t:.1}");

    // 5. Delete by predicate, compact, vacuum.
    let del = table
        .delete_where(&Predicate::cmp("precip_1h", CmpOp::Gt, 10.0))
        .await?;
    println!(
        "delete precip_1h > 10: version {} (-{} rows)",
        del.version, del.rows_removed
    );
    if let Some(c) = table.compact().await? {
        println!("compact: version {}", c.version);
    }
    let vac = table
        .vacuum(&VacuumPolicy {
            keep_last: Some(3),
            keep_within_ms: None,
        })
        .await?;
    println!("vacuum keep_last=3: {vac:?}");
    println!("  (unreferenced segment blobs go once older than the grace period, 1 h by default)");

    println!("\nversions:");
    for v in table.list_versions().await? {
        println!(
            "  v{:<4} {:<11} +{:<6} -{:<6} {}",
            v.version,
            v.operation.name(),
            v.rows_added,
            v.rows_removed,
            serde_json::to_string(&v.operation)?
        );
    }
    let head = table.snapshot(&VersionSpec::Head).await?;
    let sample = head
        .scan(Some(&["station", "ts", "temperature", "sky_condition"]))
        .await?;
    println!(
        "\nhead v{} ({} rows), first rows:\n{}",
        head.version(),
        head.num_rows(),
        pretty_format_batches(&[sample[0].slice(0, 5)])?
    );
    Ok(())
}
