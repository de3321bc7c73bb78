//! `strata demo`: an embedded server, a generated weather feed streamed in over gRPC,
//! the analyst's queries, time travel, a bad load and its rollback — narrated.
//!
//! ```text
//!  Server::start(temp dir, 127.0.0.1:0)
//!  CreateDataset weather ─▶ Ingest (backfill) ─▶ Flush ─▶ Ingest (live) ─▶ Flush
//!  Query: daily precipitation, monthly high/low, windiest stations, strata_versions,
//!         VERSION AS OF n, CREATE TAG
//!  Ingest (a faulty sensor: 999 °C) ─▶ Flush ─▶ Query shows it
//!  Query: RESTORE TABLE weather TO VERSION AS OF 'before_bad_load' ─▶ Query: gone
//!  Server::shutdown (flushes, closes the WAL)
//! ```
//!
//! Deterministic: the feed is [`strata_datagen::WeatherFeed`] with a fixed seed, the
//! server commits only on the demo's explicit `Flush` calls (no timed flushes, no
//! background compaction), and aggregates over floating point are rounded, so every
//! run prints the same tables and versions; only timings, commit times and the data
//! directory differ.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float64Array, RecordBatch, UInt64Array};
use clap::Args;
use strata_datagen::{WeatherFeed, station_name, weather_spec};
use strata_proto::v1::{CreateDatasetRequest, FlushRequest};
use strata_server::{Server, ServerConfig};

use crate::client::{self, Client};
use crate::datasets::spec_to_proto;
use crate::error::{Error, Result};
use crate::ingest::{self, Source, Summary};
use crate::output::{group, per_second};
use crate::query::{self, output_error, summary_line, write_table};
use crate::read::{self, Item};

/// Stations of the demo feed.
pub const STATIONS: usize = 50;
/// One observation per station every 30 minutes: 300,000 rows span about four months.
pub const INTERVAL_US: i64 = 30 * 60 * 1_000_000;
/// Rows per Ingest batch.
pub const BATCH_ROWS: u64 = 10_000;
/// Readings of the faulty sensor's load.
pub const BAD_ROWS: u64 = 1_000;
/// The temperature the faulty sensor reports.
pub const BAD_TEMPERATURE: f64 = 999.0;
/// The tag set before the bad load, and restored after it.
pub const TAG: &str = "before_bad_load";
const DATASET: &str = "weather";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows of the generated weather feed to stream in (50 stations, one reading each
    /// per 30 minutes from 2026-01-01).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 300_000,
        value_parser = clap::value_parser!(u64).range(100..=100_000_000)
    )]
    pub rows: u64,

    /// Keep the server's data in DIR (empty or new) instead of a temporary directory
    /// removed at the end.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The numbers the demo's story rests on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Versions: the dataset's creation, the two loads, the bad load and the restore.
    pub created: u64,
    pub backfill_version: u64,
    pub live_version: u64,
    pub bad_version: u64,
    pub restored_version: u64,
    /// Rows at the backfill version, read by time travel.
    pub rows_at_backfill: u64,
    /// Rows before the bad load, with it, and after the rollback.
    pub rows_before: u64,
    pub rows_with_bad: u64,
    pub rows_after: u64,
    /// Readings above 60 °C with the bad load, and after the rollback.
    pub absurd_with_bad: u64,
    pub absurd_after: u64,
}

/// `strata demo`.
pub async fn run(args: DemoArgs) -> Result<()> {
    let mut out = std::io::stdout();
    let report = Box::pin(demo(&args, &mut out)).await?;
    if report.rows_after != report.rows_before {
        return Err(Error::Invalid(format!(
            "the rollback left {} rows where {} were expected",
            report.rows_after, report.rows_before
        )));
    }
    Ok(())
}

/// Runs the demo, writing the narrative to `out`.
pub async fn demo(args: &DemoArgs, out: &mut dyn Write) -> Result<Report> {
    let started = Instant::now();
    let temp;
    let (data_dir, kept) = match &args.data_dir {
        Some(dir) => (dir.clone(), true),
        None => {
            temp = tempfile::Builder::new()
                .prefix("strata-demo-")
                .tempdir()
                .map_err(|e| Error::Server(format!("cannot create a temporary directory: {e}")))?;
            (temp.path().to_path_buf(), false)
        }
    };
    let mut config = ServerConfig {
        default_shards: 4,
        ..ServerConfig::ephemeral(data_dir.clone())
    };
    // Commit only on the demo's Flush calls and never compact in the background: the
    // versions are then the same on every run.
    config.ingest.flush_interval_ms = 24 * 3_600_000;
    config.ingest.compaction_interval_ms = 24 * 3_600_000;

    let mut n = Narrator::new(out);
    n.line("Strata demo: a weather feed streamed in over gRPC, queried with SQL, time-travelled,")?;
    n.line("broken by a bad load and repaired by a rollback.")?;

    let step = Instant::now();
    let server = Server::start(config)
        .await
        .map_err(|e| Error::Server(format!("cannot start the demo server: {e}")))?;
    n.step(
        "Start an embedded server",
        &format!(
            "listening on {} (gRPC + Arrow Flight), data in {}{}",
            server.url(),
            data_dir.display(),
            if kept { "" } else { " (removed at the end)" }
        ),
    )?;
    n.done(step)?;

    let outcome = Box::pin(story(&server.url(), args.rows, &mut n)).await;
    let step = Instant::now();
    let stopped = server.shutdown().await;
    let report = outcome?;
    stopped.map_err(|e| Error::Server(format!("the demo server did not stop cleanly: {e}")))?;
    n.step(
        "Shut the server down",
        "flushed everything acknowledged, closed the write-ahead log",
    )?;
    n.done(step)?;

    n.line("")?;
    n.line("What happened")?;
    n.line(&format!(
        "  - {} rows streamed through the Ingest RPC and committed as versions {} and {};",
        group(args.rows),
        report.backfill_version,
        report.live_version
    ))?;
    n.line(&format!(
        "  - VERSION AS OF {} still saw the {} rows of the backfill alone;",
        report.backfill_version,
        group(report.rows_at_backfill)
    ))?;
    n.line(&format!(
        "  - a faulty sensor's {} readings of {BAD_TEMPERATURE} °C landed as version {} \
         ({} rows);",
        group(BAD_ROWS),
        report.bad_version,
        group(report.rows_with_bad)
    ))?;
    n.line(&format!(
        "  - RESTORE TO VERSION AS OF '{TAG}' made version {} equal to version {}: {} rows, \
         {} absurd readings — one small record, whatever the data size;",
        report.restored_version,
        report.live_version,
        group(report.rows_after),
        report.absurd_after
    ))?;
    n.line(&format!(
        "  - the bad load stays in history (VERSION AS OF {}) until a vacuum removes it.",
        report.bad_version
    ))?;
    n.line(&format!("Total {:.2} s.", started.elapsed().as_secs_f64()))?;
    n.line("")?;
    if kept {
        n.line(&format!(
            "The data is kept in {0}: `strata serve --data-dir {0}`, then `strata sql` to \
             explore it.",
            data_dir.display()
        ))?;
    } else {
        n.line(
            "To explore the data afterwards: `strata demo --data-dir DIR`, then \
             `strata serve --data-dir DIR` and `strata sql`.",
        )?;
    }
    Ok(report)
}

/// Everything between the server's start and its shutdown.
async fn story(url: &str, rows: u64, n: &mut Narrator<'_>) -> Result<Report> {
    let mut client = client::connect(url).await?;
    let mut report = Report::default();
    let feed = WeatherFeed {
        stations: STATIONS,
        interval_us: INTERVAL_US,
        ..WeatherFeed::default()
    };

    let step = Instant::now();
    let mut def = weather_spec().to_def();
    def.shards = 4;
    let info = client
        .create_dataset(CreateDatasetRequest {
            spec: Some(spec_to_proto(def)),
        })
        .await
        .map_err(|s| Error::status("creating the demo's weather dataset", &s))?
        .into_inner();
    report.created = info.head_version;
    n.step(
        "Create the dataset `weather` (CreateDataset RPC)",
        &format!(
            "schemas/weather.json: partition key station, row key ts, 4 shards; version {}",
            info.head_version
        ),
    )?;
    n.done(step)?;

    // The feed in two loads: a backfill, then the "live" rest.
    let backfill = rows * 2 / 3;
    let step = Instant::now();
    n.step(
        "Stream the backfill through the Ingest RPC",
        &format!(
            "{} rows of {STATIONS} stations from the generated feed, producer demo-backfill",
            group(backfill)
        ),
    )?;
    let summary = load(
        &mut client,
        "demo-backfill",
        feed_source(&feed, 0, backfill, false),
    )
    .await?;
    n.ingested(&summary)?;
    report.backfill_version = flush(&mut client).await?;
    n.line(&format!(
        "    Flush RPC: committed as version {}",
        report.backfill_version
    ))?;
    n.done(step)?;

    let step = Instant::now();
    n.step(
        "Stream the live feed",
        &format!("{} more rows, producer demo-live", group(rows - backfill)),
    )?;
    let summary = load(
        &mut client,
        "demo-live",
        feed_source(&feed, backfill, rows - backfill, false),
    )
    .await?;
    n.ingested(&summary)?;
    report.live_version = flush(&mut client).await?;
    n.line(&format!(
        "    Flush RPC: committed as version {}",
        report.live_version
    ))?;
    n.done(step)?;

    let (s0, s1) = (station_name(0), station_name(1));
    n.query(
        &mut client,
        "What is in there",
        "SELECT count(*) AS readings, count(DISTINCT station) AS stations, \
         min(ts) AS first, max(ts) AS last FROM weather",
    )
    .await?;
    n.query(
        &mut client,
        &format!("Daily precipitation at station {s0}, first week"),
        &format!(
            "SELECT station, date_trunc('day', ts) AS day, round(sum(precip_1h), 1) AS precip_mm \
             FROM weather WHERE station = '{s0}' \
             GROUP BY station, day ORDER BY day LIMIT 7"
        ),
    )
    .await?;
    n.query(
        &mut client,
        "Monthly high and low temperature of two stations",
        &format!(
            "SELECT station, date_trunc('month', ts) AS month, max(temperature) AS high_c, \
             min(temperature) AS low_c FROM weather WHERE station IN ('{s0}', '{s1}') \
             GROUP BY station, month ORDER BY station, month"
        ),
    )
    .await?;
    n.query(
        &mut client,
        "The five windiest stations",
        "SELECT station, round(avg(wind_speed), 2) AS avg_wind_mps, max(wind_speed) AS max_wind_mps \
         FROM weather GROUP BY station ORDER BY avg_wind_mps DESC, station LIMIT 5",
    )
    .await?;
    n.query(
        &mut client,
        "The version history so far",
        "SELECT version, operation, rows_added, rows_removed, tags \
         FROM strata_versions('weather') ORDER BY version",
    )
    .await?;
    let batches = n
        .query(
            &mut client,
            "Time travel: the table as the backfill left it",
            &format!(
                "SELECT count(*) AS readings FROM weather VERSION AS OF {}",
                report.backfill_version
            ),
        )
        .await?;
    report.rows_at_backfill = first_u64(&batches)?;

    n.query(
        &mut client,
        "Tag the good state before the next load",
        &format!("ALTER TABLE weather CREATE TAG {TAG}"),
    )
    .await?;

    let check = "SELECT count(*) AS readings, max(temperature) AS max_temp_c, \
                 count(*) FILTER (WHERE temperature > 60) AS absurd_readings FROM weather";
    let batches = n.query(&mut client, "Before the bad load", check).await?;
    report.rows_before = first_u64(&batches)?;

    let step = Instant::now();
    n.step(
        "A bad load: a faulty sensor feed",
        &format!(
            "{} readings, every temperature {BAD_TEMPERATURE} °C, producer faulty-sensor",
            group(BAD_ROWS)
        ),
    )?;
    let summary = load(
        &mut client,
        "faulty-sensor",
        feed_source(&feed, rows, BAD_ROWS, true),
    )
    .await?;
    n.ingested(&summary)?;
    report.bad_version = flush(&mut client).await?;
    n.line(&format!(
        "    Flush RPC: committed as version {}",
        report.bad_version
    ))?;
    n.done(step)?;

    let batches = n
        .query(&mut client, "The bad readings are visible", check)
        .await?;
    report.rows_with_bad = first_u64(&batches)?;
    report.absurd_with_bad = nth_u64(&batches, 2)?;

    let batches = n
        .query(
            &mut client,
            "Roll back to the tagged version",
            &format!("RESTORE TABLE weather TO VERSION AS OF '{TAG}'"),
        )
        .await?;
    report.restored_version = nth_u64(&batches, 2)?;

    let batches = n
        .query(&mut client, "The bad readings are gone", check)
        .await?;
    report.rows_after = first_u64(&batches)?;
    report.absurd_after = nth_u64(&batches, 2)?;

    n.query(
        &mut client,
        "History keeps the bad load, for audit",
        &format!(
            "SELECT count(*) FILTER (WHERE temperature > 60) AS absurd_readings \
             FROM weather VERSION AS OF {}",
            report.bad_version
        ),
    )
    .await?;
    n.query(
        &mut client,
        "The version history now",
        "SELECT version, operation, details, rows_added, rows_removed, tags \
         FROM strata_versions('weather') ORDER BY version",
    )
    .await?;
    Ok(report)
}

/// Feed rows `first..first + rows` in batches of [`BATCH_ROWS`], numbered from 1; with
/// `bad`, every temperature is [`BAD_TEMPERATURE`].
fn feed_source(feed: &WeatherFeed, first: u64, rows: u64, bad: bool) -> Source {
    let feed = feed.clone();
    Box::new(move |last, emit| {
        let mut sequence = 0;
        let mut at = first;
        let end = first + rows;
        while at < end {
            let count = BATCH_ROWS.min(end - at);
            sequence += 1;
            let item = if sequence <= last {
                Item::Skipped {
                    batches: 1,
                    rows: count,
                }
            } else {
                let mut batch = feed.batch(at, count as usize);
                if bad {
                    batch = with_temperature(&batch, BAD_TEMPERATURE)?;
                }
                Item::Batch {
                    sequence,
                    rows: count,
                    ipc: read::encode_ipc(&batch)?,
                }
            };
            if !emit(item) {
                break;
            }
            at += count;
        }
        Ok(sequence)
    })
}

/// `batch` with every `temperature` replaced by `value`.
fn with_temperature(batch: &RecordBatch, value: f64) -> Result<RecordBatch> {
    let index = batch.schema().index_of("temperature")?;
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(Float64Array::from(vec![value; batch.num_rows()]));
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

async fn load(client: &mut Client, producer: &str, source: Source) -> Result<Summary> {
    let (summary, outcome) = ingest::ingest_source(client, DATASET, Some(producer), source).await;
    outcome?;
    Ok(summary)
}

async fn flush(client: &mut Client) -> Result<u64> {
    Ok(client
        .flush(FlushRequest {
            dataset: DATASET.into(),
        })
        .await
        .map_err(|s| Error::status("flushing the demo's weather dataset", &s))?
        .into_inner()
        .version)
}

/// Column `column` of the first row, as an unsigned integer.
fn nth_u64(batches: &[RecordBatch], column: usize) -> Result<u64> {
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::Protocol("the query answered no row".into()))?;
    let array = batch.column(column);
    let value = arrow::compute::cast(array, &arrow::datatypes::DataType::UInt64)?;
    let value = value
        .as_any()
        .downcast_ref::<UInt64Array>()
        .filter(|a| a.is_valid(0))
        .ok_or_else(|| {
            Error::Protocol(format!(
                "expected a count in column {column}, got {}",
                array.data_type()
            ))
        })?;
    Ok(value.value(0))
}

fn first_u64(batches: &[RecordBatch]) -> Result<u64> {
    nth_u64(batches, 0)
}

/// Numbered steps with their timings.
struct Narrator<'a> {
    out: &'a mut dyn Write,
    step: usize,
}

impl<'a> Narrator<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self { out, step: 0 }
    }

    fn line(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").map_err(output_error)
    }

    fn step(&mut self, title: &str, detail: &str) -> Result<()> {
        self.step += 1;
        self.line("")?;
        self.line(&format!("[{}] {title}", self.step))?;
        if !detail.is_empty() {
            self.line(&format!("    {detail}"))?;
        }
        Ok(())
    }

    fn done(&mut self, started: Instant) -> Result<()> {
        self.line(&format!("    ({})", seconds(started.elapsed())))?;
        self.out.flush().map_err(output_error)
    }

    fn ingested(&mut self, s: &Summary) -> Result<()> {
        self.line(&format!(
            "    {} rows in {} batch{} acknowledged (durable in the WAL) in {}: {} rows/s",
            group(s.rows),
            group(s.batches),
            if s.batches == 1 { "" } else { "es" },
            seconds(s.elapsed),
            group(per_second(s.rows, s.elapsed).round() as u64)
        ))
    }

    /// Runs `sql` through the Query RPC and prints it with its result.
    async fn query(
        &mut self,
        client: &mut Client,
        title: &str,
        sql: &str,
    ) -> Result<Vec<RecordBatch>> {
        self.step(title, "")?;
        self.line(&format!("    {sql};"))?;
        let (outcome, batches) =
            query::collect(client, sql, &format!("demo query {sql:?} failed")).await?;
        let mut table = Vec::new();
        write_table(&mut table, &outcome.schema, &batches)?;
        for line in String::from_utf8_lossy(&table).lines() {
            self.line(&format!("    {line}"))?;
        }
        self.line(&format!("    ({})", summary_line(&outcome)))?;
        self.out.flush().map_err(output_error)?;
        Ok(batches)
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
