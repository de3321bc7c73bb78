//! `strata ingest` (files → the `Ingest` stream) and `strata flush`.
//!
//! ```text
//!  DescribeDataset ─▶ schema ─▶ check every file's columns (nothing sent yet)
//!  Ingest stream:  open(dataset, producer) ─▶ opened(last_sequence)
//!                  reader thread: files ─▶ batches 1, 2, 3, … ─▶ skip ≤ last_sequence
//!                      │ bounded channel
//!                      ▼
//!                  send batch ──▶ … up to WINDOW unacknowledged … ◀── ack (in order)
//!                  half-close ─▶ the server ends the call with its status
//! ```
//!
//! Exactly-once: with `--producer ID` the server reports the producer's highest durable
//! sequence when the stream opens, and the batches at or below it are neither sent nor
//! (for Parquet) read. Batch numbering is deterministic (see [`crate::read`]), so running
//! the same command again after a failure resumes where the durable data ends.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use strata_proto::v1::{
    DatasetInfo, DescribeDatasetRequest, FlushRequest, IngestBatch, IngestOpen, IngestRequest,
    IngestResponse, ingest_request, ingest_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{self, Client};
use crate::error::{Error, Result, code_name, status_message};
use crate::output::{group, megabytes, per_second};
use crate::read::{self, Format, InputFile, Item, ReadOptions};

/// Batches sent but not yet acknowledged, at most.
pub const WINDOW: usize = 16;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Dataset to write into.
    pub dataset: String,

    /// Files to read, in this order: CSV, Parquet or newline-delimited JSON (text ones
    /// optionally .gz); `-` reads CSV or NDJSON from standard input (with --format).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Producer id for exactly-once delivery ([A-Za-z0-9_.:-], up to 128 characters).
    /// Re-running the same command with the same producer, files, order and --batch-rows
    /// resumes after the batches already durable, without duplicates.
    #[arg(long, value_name = "ID", value_parser = parse_producer)]
    pub producer: Option<String>,

    /// Rows per batch (each file's last batch may be shorter).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8192,
        value_parser = clap::value_parser!(u64).range(1..=100_000_000)
    )]
    pub batch_rows: u64,

    /// Input format [default: from each file's extension: .csv, .parquet, .json/.ndjson/.jsonl].
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Do not show the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// CSV files have no header line: their columns are the dataset's, in its order.
    #[arg(long)]
    pub csv_no_header: bool,

    /// CSV field delimiter: one ASCII character, or `tab` / `\t`.
    #[arg(long, value_name = "C", default_value = ",", value_parser = parse_delimiter)]
    pub csv_delimiter: u8,

    /// Create the dataset first if it does not exist, with the columns of the first file
    /// (as `datasets create --from`); needs --partition-key.
    #[arg(long, requires = "partition_key")]
    pub create: bool,

    /// With --create: the partition key columns (comma-separated).
    #[arg(
        long,
        value_name = "COL,...",
        value_delimiter = ',',
        requires = "create"
    )]
    pub partition_key: Option<Vec<String>>,

    /// With --create: the row key columns (comma-separated; none: append-only).
    #[arg(
        long,
        value_name = "COL,...",
        value_delimiter = ',',
        requires = "create"
    )]
    pub row_key: Option<Vec<String>>,

    /// Write rows of CSV or Parquet files that lack some of the dataset's columns: on a
    /// dataset with a row key such a row replaces the existing one, the missing columns
    /// with nulls. Without it, those files are refused.
    #[arg(long)]
    pub missing_as_null: bool,

    /// Return once the rows are durable (acknowledged), without committing them: they
    /// become queryable at the server's next flush (within its flush interval, 1 s by
    /// default). Without it, ingest commits them and prints the version that holds them.
    #[arg(long)]
    pub no_wait: bool,

    /// A CSV field that means null, matched whole (repeat for several; replaces the
    /// default set: the empty field, NA and NULL, as R, pandas and SQL exports write).
    #[arg(long = "null", value_name = "STRING")]
    pub csv_nulls: Vec<String>,
}

impl IngestArgs {
    /// `strata ingest DATASET FILES…` with every option at its default.
    pub fn new(dataset: impl Into<String>, files: Vec<PathBuf>) -> Self {
        Self {
            dataset: dataset.into(),
            files,
            producer: None,
            batch_rows: 8192,
            format: None,
            no_progress: false,
            csv_no_header: false,
            csv_delimiter: b',',
            csv_nulls: vec![],
            no_wait: false,
            missing_as_null: false,
            create: false,
            partition_key: None,
            row_key: None,
        }
    }
}

/// Checks a producer id the way the server does (1 to 128 characters of [A-Za-z0-9_.:-]).
pub fn parse_producer(id: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
    if id.is_empty() || id.len() > 128 || !id.chars().all(ok_char) {
        return Err(format!(
            "{id:?} is not a producer id: use 1 to 128 characters of [A-Za-z0-9_.:-]"
        ));
    }
    Ok(id.to_string())
}

/// Parses `--csv-delimiter`: one ASCII character other than a quote or line break, or
/// `tab` / `\t`.
pub fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "tab" | "\\t" | "\t" => return Ok(b'\t'),
        _ => {}
    }
    match text.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(format!(
            "{text:?} is not a delimiter: use one ASCII character (or `tab`)"
        )),
    }
}

/// What an ingest run did; printed at the end, complete or not.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub dataset: String,
    pub producer: Option<String>,
    pub files: usize,
    /// Batches sent and acknowledged (duplicates included).
    pub batches: u64,
    /// Acknowledged batches the server had already applied.
    pub duplicates: u64,
    /// Rows in the acknowledged batches.
    pub rows: u64,
    /// Arrow IPC bytes of the acknowledged batches.
    pub bytes: u64,
    /// Batches at or below the producer's last sequence, not sent.
    pub skipped_batches: u64,
    pub skipped_rows: u64,
    /// The producer's last durable sequence when the stream opened.
    pub opened_sequence: u64,
    /// The producer's last durable sequence now.
    pub last_sequence: u64,
    /// Batches in the whole input, once it has all been read.
    pub input_batches: Option<u64>,
    pub elapsed: Duration,
}

impl Summary {
    /// Prints the summary on stdout.
    pub fn print(&self, complete: bool) {
        let state = if complete { "done" } else { "stopped" };
        let secs = self.elapsed.as_secs_f64();
        println!("ingest into {}: {state}", self.dataset);
        println!("  files          {}", self.files);
        println!(
            "  batches sent   {} ({} duplicate{})",
            group(self.batches),
            group(self.duplicates),
            if self.duplicates == 1 { "" } else { "s" }
        );
        if self.skipped_batches > 0 {
            println!(
                "  skipped        {} batches, {} rows (already ingested)",
                group(self.skipped_batches),
                group(self.skipped_rows)
            );
        }
        println!("  rows           {}", group(self.rows));
        println!("  bytes          {} (Arrow IPC)", megabytes(self.bytes));
        println!("  elapsed        {secs:.2} s");
        println!(
            "  throughput     {} rows/s, {:.2} MB/s",
            group(per_second(self.rows, self.elapsed).round() as u64),
            per_second(self.bytes, self.elapsed) / 1e6
        );
        match &self.producer {
            Some(p) => println!("  producer       {p}, last sequence {}", self.last_sequence),
            None => println!("  producer       (none: no exactly-once resume)"),
        }
    }

    /// What is durable and how to continue, for the message of a failed run.
    pub fn resume_hint(&self) -> String {
        match &self.producer {
            Some(p) => format!(
                "Batches through sequence {} are durable. Re-running the same command \
                 (same files in the same order, same --batch-rows, --producer {p}) resumes \
                 after them without duplicates.",
                self.last_sequence
            ),
            None => format!(
                "{} acknowledged batch(es) are durable. This run had no --producer, so \
                 running it again would write them again; use --producer ID for \
                 exactly-once resumes.",
                self.batches
            ),
        }
    }
}

/// `strata ingest`: streams the files into the dataset and prints a summary (also when
/// the stream fails part-way).
pub async fn run(server: &str, args: IngestArgs) -> Result<()> {
    if args.create {
        create_if_missing(server, &args).await?;
    }
    let progress = !args.no_progress && std::io::stderr().is_terminal();
    let (summary, outcome) = ingest(server, &args, progress).await?;
    summary.print(outcome.is_ok());
    if outcome.is_ok() {
        if args.no_wait {
            println!("  visible        at the server's next flush (--no-wait: not committed yet)");
        } else {
            let version = commit(server, &args.dataset).await?;
            println!("  visible        in version {version} (committed: queryable now)");
        }
    }
    if let (Some(total), Some(_)) = (summary.input_batches, &summary.producer)
        && summary.opened_sequence > total
    {
        eprintln!(
            "note: the producer's last sequence ({}) is beyond the {total} batches of this \
             input; did the files, their order or --batch-rows change?",
            summary.opened_sequence
        );
    }
    outcome
}

/// Streams `args.files` into `args.dataset` through the server at `server`, with a
/// progress line on stderr when `progress`. Failures before the stream opens (connection,
/// unknown dataset, a file that does not fit the schema) are the outer error; once the
/// stream is open, the summary comes back with the stream's outcome.
pub async fn ingest(
    server: &str,
    args: &IngestArgs,
    progress: bool,
) -> Result<(Summary, Result<()>)> {
    let files = args
        .files
        .iter()
        .map(|p| InputFile::new(p, args.format))
        .collect::<Result<Vec<_>>>()?;
    let opts = ReadOptions {
        batch_rows: usize::try_from(args.batch_rows)
            .map_err(|_| Error::Invalid("--batch-rows is too large".into()))?,
        csv_header: !args.csv_no_header,
        csv_delimiter: args.csv_delimiter,
        csv_nulls: if args.csv_nulls.is_empty() {
            crate::read::DEFAULT_CSV_NULLS.map(String::from).to_vec()
        } else {
            args.csv_nulls.clone()
        },
        refuse_missing: false,
    };

    let mut client = client::connect(server).await?;
    let info = client
        .describe_dataset(DescribeDatasetRequest {
            name: args.dataset.clone(),
        })
        .await
        .map_err(|s| Error::status(format!("looking up dataset {}", args.dataset), &s))?
        .into_inner();
    let schema = dataset_schema(&info)?;
    let keyed = info
        .spec
        .as_ref()
        .is_some_and(|spec| !spec.row_key.is_empty());
    let opts = ReadOptions {
        refuse_missing: keyed && !args.missing_as_null,
        ..opts
    };
    read::check_files(&files, &schema, &opts)?;

    let mut summary = Summary {
        dataset: args.dataset.clone(),
        producer: args.producer.clone(),
        files: files.len(),
        ..Summary::default()
    };
    let progress = Progress::new(progress);
    let started = Instant::now();
    let source: Source =
        Box::new(move |last, emit| read::produce(&files, &schema, &opts, last, emit));
    let outcome = stream(&mut client, source, &mut summary, &progress).await;
    summary.elapsed = started.elapsed();
    progress.finish();
    Ok((summary, outcome))
}

/// Where an ingest stream's batches come from: called on a blocking thread with the
/// producer's last durable sequence, it numbers its batches 1, 2, 3, … and hands each
/// to `emit` (those at or below the last sequence as [`Item::Skipped`]), stopping
/// early when `emit` returns false. Returns the number of batches numbered.
pub type Source = Box<dyn FnOnce(u64, &mut dyn FnMut(Item) -> bool) -> Result<u64> + Send>;

/// Streams the batches of `source` into `dataset` through the `Ingest` RPC, as
/// `producer` (exactly-once) or anonymously. Failures are in the outcome, with the
/// summary of what was acknowledged.
pub async fn ingest_source(
    client: &mut Client,
    dataset: &str,
    producer: Option<&str>,
    source: Source,
) -> (Summary, Result<()>) {
    let mut summary = Summary {
        dataset: dataset.to_string(),
        producer: producer.map(str::to_string),
        ..Summary::default()
    };
    let progress = Progress::new(false);
    let started = Instant::now();
    let outcome = stream(client, source, &mut summary, &progress).await;
    summary.elapsed = started.elapsed();
    (summary, outcome)
}

/// The dataset's Arrow schema: `arrow_schema`, or built from the spec's columns when the
/// server sent none.
fn dataset_schema(info: &DatasetInfo) -> Result<SchemaRef> {
    if !info.arrow_schema.is_empty() {
        return read::decode_schema(&info.arrow_schema).map_err(Error::Protocol);
    }
    let columns = info
        .spec
        .as_ref()
        .map(|s| {
            s.columns
                .iter()
                .map(|c| strata_types::ColumnDef {
                    name: c.name.clone(),
                    data_type: c.r#type.clone(),
                    nullable: c.nullable,
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    strata_types::spec::schema_from_defs(&columns)
        .map_err(|e| Error::Protocol(format!("the server sent no usable schema: {e}")))
}

/// Runs one Ingest stream, keeping `summary` current. On error, `summary` says what is
/// durable.
async fn stream(
    client: &mut Client,
    source: Source,
    summary: &mut Summary,
    progress: &Progress,
) -> Result<()> {
    let (req_tx, req_rx) = mpsc::channel::<IngestRequest>(WINDOW + 1);
    let open = IngestOpen {
        dataset: summary.dataset.clone(),
        producer: summary.producer.clone().unwrap_or_default(),
    };
    // Cannot fail: the receiver is alive and the channel empty.
    let _ = req_tx
        .send(IngestRequest {
            kind: Some(ingest_request::Kind::Open(open)),
        })
        .await;
    let mut responses = client
        .ingest(ReceiverStream::new(req_rx))
        .await
        .map_err(|s| stream_failed(&s, summary))?
        .into_inner();

    let opened = match responses.message().await {
        Ok(Some(IngestResponse {
            kind: Some(ingest_response::Kind::Opened(opened)),
        })) => opened.last_sequence,
        Ok(Some(other)) => {
            return Err(Error::Protocol(format!(
                "expected `opened` first, got {other:?}"
            )));
        }
        Ok(None) => {
            return Err(Error::Protocol(
                "the server ended the stream before opening it".into(),
            ));
        }
        Err(status) => return Err(stream_failed(&status, summary)),
    };
    // Without a producer nothing is tracked, so nothing can be skipped.
    let last = if summary.producer.is_some() {
        opened
    } else {
        0
    };
    summary.opened_sequence = last;
    summary.last_sequence = last;

    let (item_tx, mut item_rx) = mpsc::channel::<Item>(WINDOW);
    let mut reader = Some(tokio::task::spawn_blocking(move || {
        source(last, &mut |item| item_tx.blocking_send(item).is_ok())
    }));

    // (sequence, IPC bytes) of the batches awaiting their ack, oldest first.
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut reading = true;
    let mut sending = true;
    let mut read_error = None;
    let mut stream_error = None;
    loop {
        let pull = reading && sending && in_flight.len() < WINDOW;
        if !pull && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            item = item_rx.recv(), if pull => match item {
                Some(Item::Skipped { batches, rows }) => {
                    summary.skipped_batches += batches;
                    summary.skipped_rows += rows;
                    progress.update(summary);
                }
                Some(Item::Batch { sequence, ipc, .. }) => {
                    let bytes = ipc.len() as u64;
                    let batch = IngestBatch { sequence, arrow_ipc: ipc.into() };
                    let request = IngestRequest { kind: Some(ingest_request::Kind::Batch(batch)) };
                    if req_tx.send(request).await.is_ok() {
                        in_flight.push_back((sequence, bytes));
                    } else {
                        // The call is over; its status follows on the response stream.
                        sending = false;
                    }
                }
                None => {
                    reading = false;
                    if let Some(handle) = reader.take() {
                        match handle.await {
                            Ok(Ok(total)) => summary.input_batches = Some(total),
                            Ok(Err(e)) => read_error = Some(e),
                            Err(e) => read_error = Some(Error::Invalid(format!("the batch reader failed: {e}"))),
                        }
                    }
                }
            },
            response = responses.message() => match response {
                Ok(Some(IngestResponse { kind: Some(ingest_response::Kind::Ack(ack)) })) => {
                    let Some((sequence, bytes)) = in_flight.pop_front() else {
                        return Err(Error::Protocol(format!(
                            "ack for sequence {} with no batch outstanding", ack.sequence
                        )));
                    };
                    if ack.sequence != sequence {
                        return Err(Error::Protocol(format!(
                            "ack for sequence {} where {sequence} was expected", ack.sequence
                        )));
                    }
                    summary.batches += 1;
                    summary.duplicates += u64::from(ack.duplicate);
                    summary.rows += ack.rows;
                    summary.bytes += bytes;
                    summary.last_sequence = summary.last_sequence.max(sequence);
                    progress.update(summary);
                }
                Ok(Some(other)) => {
                    return Err(Error::Protocol(format!("expected an ack, got {other:?}")));
                }
                Ok(None) => {
                    let waiting = in_flight.front().map(|(s, _)| *s);
                    return Err(Error::Ingest(format!(
                        "the server ended the ingest stream early{}.\n{}",
                        waiting.map(|s| format!(" without acknowledging sequence {s}")).unwrap_or_default(),
                        summary.resume_hint()
                    )));
                }
                Err(status) => {
                    stream_error = Some(status);
                    break;
                }
            }
        }
    }

    // Half-close; the server then ends the call and its status says whether all went well.
    drop(req_tx);
    drop(item_rx);
    if stream_error.is_none() {
        match responses.message().await {
            Ok(None) => {}
            Ok(Some(other)) => {
                return Err(Error::Protocol(format!(
                    "unexpected message after the last ack: {other:?}"
                )));
            }
            Err(status) => stream_error = Some(status),
        }
    }
    if let Some(status) = stream_error {
        return Err(stream_failed(&status, summary));
    }
    if let Some(e) = read_error {
        return Err(Error::Ingest(format!("{e}\n{}", summary.resume_hint())));
    }
    Ok(())
}

fn stream_failed(status: &tonic::Status, summary: &Summary) -> Error {
    Error::Ingest(format!(
        "the ingest stream failed: {}: {}\n{}",
        code_name(status.code()),
        status_message(status),
        summary.resume_hint()
    ))
}

/// The progress line on stderr: rows, bytes and rates of the acknowledged batches.
struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    fn new(visible: bool) -> Self {
        let bar = if visible {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise}  {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&self, s: &Summary) {
        if self.bar.is_hidden() {
            return;
        }
        let elapsed = self.started.elapsed();
        let mut msg = format!(
            "{} rows  {}  {} rows/s  {:.1} MB/s",
            group(s.rows),
            megabytes(s.bytes),
            group(per_second(s.rows, elapsed).round() as u64),
            per_second(s.bytes, elapsed) / 1e6
        );
        if s.skipped_batches > 0 {
            msg.push_str(&format!(
                "  ({} batches already ingested, skipped)",
                group(s.skipped_batches)
            ));
        }
        self.bar.set_message(msg);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

/// `--create`: makes the dataset from the first file's columns unless it exists.
async fn create_if_missing(server: &str, args: &IngestArgs) -> Result<()> {
    let mut client = client::connect(server).await?;
    match client
        .describe_dataset(DescribeDatasetRequest {
            name: args.dataset.clone(),
        })
        .await
    {
        Ok(_) => return Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => {
            return Err(Error::status(
                format!("looking up dataset {}", args.dataset),
                &s,
            ));
        }
    }
    let first = args
        .files
        .first()
        .ok_or_else(|| Error::Invalid("--create needs a file to take the columns from".into()))?;
    crate::datasets::run(
        server,
        crate::datasets::DatasetsCommand::Create(crate::datasets::CreateArgs {
            name: args.dataset.clone(),
            schema: None,
            from: Some(first.clone()),
            columns: vec![],
            partition_key: args.partition_key.clone(),
            row_key: args.row_key.clone(),
            shards: None,
        }),
    )
    .await
}

/// Commits the dataset's unflushed rows now; the version that holds them.
async fn commit(server: &str, dataset: &str) -> Result<u64> {
    let mut client = client::connect(server).await?;
    Ok(client
        .flush(FlushRequest {
            dataset: dataset.to_string(),
        })
        .await
        .map_err(|s| Error::status(format!("flushing dataset {dataset}"), &s))?
        .into_inner()
        .version)
}

/// `strata flush`: commits the dataset's unflushed rows and prints the version.
pub async fn flush(server: &str, dataset: &str) -> Result<()> {
    let version = commit(server, dataset).await?;
    println!("flushed {dataset}: version {version}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids() {
        assert_eq!(parse_producer("feed-1.a:b_c").unwrap(), "feed-1.a:b_c");
        assert!(parse_producer("").is_err());
        assert!(parse_producer("has space").is_err());
        assert!(parse_producer("é").is_err());
        assert!(parse_producer(&"x".repeat(128)).is_ok());
        assert!(parse_producer(&"x".repeat(129)).is_err());
    }

    #[test]
    fn delimiters() {
        assert_eq!(parse_delimiter(",").unwrap(), b',');
        assert_eq!(parse_delimiter(";").unwrap(), b';');
        assert_eq!(parse_delimiter("|").unwrap(), b'|');
        assert_eq!(parse_delimiter("tab").unwrap(), b'\t');
        assert_eq!(parse_delimiter("\\t").unwrap(), b'\t');
        assert!(parse_delimiter("").is_err());
        assert!(parse_delimiter(";;").is_err());
        assert!(parse_delimiter("\"").is_err());
        assert!(parse_delimiter("é").is_err());
    }

    #[test]
    fn resume_hints() {
        let mut s = Summary {
            producer: Some("feed-1".into()),
            last_sequence: 41,
            batches: 3,
            ..Summary::default()
        };
        let hint = s.resume_hint();
        assert!(hint.contains("through sequence 41"), "{hint}");
        assert!(hint.contains("--producer feed-1"), "{hint}");
        s.producer = None;
        let hint = s.resume_hint();
        assert!(hint.contains("no --producer"), "{hint}");
    }
}
