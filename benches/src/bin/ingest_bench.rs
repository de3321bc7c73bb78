//! Streaming ingestion over loopback gRPC: Strata's `Ingest` against a Flight null sink.
//!
//! The weather feed (`schemas/weather.json`, 1,000 stations, one observation per station
//! per minute) is split among `--producers` N producers by station (producer p owns the
//! stations s with s mod N = p), so each producer sends its stations' rows in time order
//! and every (station, ts) key occurs exactly once. Each producer's rows are cut into
//! batches of `--batch-rows` rows and encoded as Arrow IPC streams (and as Flight
//! messages) before anything is timed: the clients only move bytes.
//!
//! - Run 1, Strata: a [`Server`] in this process on 127.0.0.1:0 with a fresh data dir
//!   (LocalStore, fsync on), a weather dataset with `--shards` shards, N producers
//!   (`bench-0..N-1`), each on its own connection with one `Ingest` stream and at most
//!   `--window` batches unacknowledged. Per batch: send and ack time. A poller calls
//!   `DescribeDataset` every 20 ms and notes when each producer's committed mark first
//!   covers each sequence number: ack-to-visible latency is that time minus the ack time
//!   (an upper bound, with the poll interval as resolution). Afterwards `Flush`, and
//!   `live_rows` must equal the rows sent.
//! - Run 2, the transport's own limit: a Flight service in this process whose `DoPut`
//!   decodes the record batches, drops them and answers one `PutResult` per batch,
//!   served by tonic with the settings of Strata's server and with TCP_NODELAY on the
//!   accepted sockets, as tonic's own `serve` sets it (`--null-sink-no-nodelay` leaves it
//!   off, as `strata-server`'s `serve_with_incoming` over a plain listener does; on
//!   loopback that alone costs a single stream most of its throughput: Nagle's algorithm
//!   holds the small acks and window updates). N producers, one `DoPut` each, the same
//!   batches and window.
//!
//! Throughput is rows (and payload bytes) from the first send to the last ack, over all
//! producers; for Strata also rows from the first send until every row is visible (what
//! the commit path keeps up with: in short runs acks can outrun flushes until the memory
//! limit pushes back). Both runs share one tokio runtime (one worker per core) with the
//! server.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::fmt::Display;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::utils::batches_to_flight_data;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use strata_benches::{json_str, ms};
use strata_datagen::{WeatherFeed, weather_spec};
use strata_ingest::IngestStats;
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    CreateDatasetRequest, DatasetSpec as PbSpec, DescribeDatasetRequest, FlushRequest, IngestBatch,
    IngestOpen, IngestRequest, IngestResponse, ingest_request, ingest_response,
};
use strata_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

const DATASET: &str = "weather";
/// Stations in the feed; producers split them among themselves.
const STATIONS: usize = 1000;
/// Ticks (one row per station each) generated per work unit.
const CHUNK_TICKS: usize = 64;
/// How often the visibility poller calls `DescribeDataset`.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Acknowledged rows must be visible within this after the last ack.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The rate the ingest path is meant to reach on one server.
const TARGET_ROWS_PER_S: f64 = 1_000_000.0;
/// gRPC message limit, as Strata's server is configured by default.
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug)]
struct Args {
    producers: usize,
    rows: usize,
    batch_rows: usize,
    shards: u32,
    window: usize,
    data_dir: Option<PathBuf>,
    skip_null_sink: bool,
    null_sink_no_nodelay: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: ingest-bench [--producers 4] [--rows 5000000] [--batch-rows 1000] [--shards 4]\n\
         \x20                   [--window 64] [--data-dir DIR] [--skip-null-sink]\n\
         \x20                   [--null-sink-no-nodelay]\n\
         --data-dir: where the fresh data directory of the Strata run is created (and\n\
         removed afterwards); default: the system temp dir\n\
         --null-sink-no-nodelay: the null sink's accepted sockets without TCP_NODELAY"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        producers: 4,
        rows: 5_000_000,
        batch_rows: 1000,
        shards: 4,
        window: 64,
        data_dir: None,
        skip_null_sink: false,
        null_sink_no_nodelay: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let num = |s: String| {
            s.replace('_', "")
                .parse::<usize>()
                .unwrap_or_else(|_| usage())
        };
        match flag.as_str() {
            "--producers" => args.producers = num(value()),
            "--rows" => args.rows = num(value()),
            "--batch-rows" => args.batch_rows = num(value()),
            "--shards" => args.shards = u32::try_from(num(value())).unwrap_or_else(|_| usage()),
            "--window" => args.window = num(value()),
            "--data-dir" => args.data_dir = Some(PathBuf::from(value())),
            "--skip-null-sink" => args.skip_null_sink = true,
            "--null-sink-no-nodelay" => args.null_sink_no_nodelay = true,
            _ => usage(),
        }
    }
    if args.producers == 0
        || args.producers > STATIONS
        || args.rows < args.producers
        || args.batch_rows == 0
        || args.window == 0
        || args.shards == 0
        || args.shards > strata_types::spec::MAX_SHARDS
    {
        eprintln!(
            "need 1 <= producers <= {STATIONS}, rows >= producers, batch-rows >= 1, window >= 1, \
             1 <= shards <= {}",
            strata_types::spec::MAX_SHARDS
        );
        usage();
    }
    args
}

/// Turns any error into a message naming what failed.
trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn producer_id(p: usize) -> String {
    format!("bench-{p}")
}

// ---------------------------------------------------------------------------------------
// The workload, generated and encoded before anything is timed.

/// One producer's batches, encoded both ways.
#[derive(Debug)]
struct ProducerLoad {
    /// Rows of each batch.
    rows: Vec<usize>,
    /// Each batch as a complete Arrow IPC stream (`IngestBatch.arrow_ipc`).
    ipc: Vec<Bytes>,
    /// The DoPut messages: the schema (with the descriptor), then one per batch.
    flight: Vec<FlightData>,
}

impl ProducerLoad {
    fn rows(&self) -> u64 {
        self.rows.iter().sum::<usize>() as u64
    }
}

fn encode_ipc(batch: &RecordBatch) -> Bytes {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).expect("IPC writer");
    w.write(batch).expect("IPC encode");
    w.finish().expect("IPC finish");
    drop(w);
    Bytes::from(out)
}

/// The feed's rows of producer `p`'s stations, `quota` of them in time order, as batches.
fn encode_producer(
    p: usize,
    schema: &SchemaRef,
    parts: &[RecordBatch],
    quota: usize,
    batch_rows: usize,
) -> ProducerLoad {
    let all = compute::concat_batches(schema, parts).expect("same schema");
    assert!(all.num_rows() >= quota, "generated enough rows");
    let batches: Vec<RecordBatch> = (0..quota)
        .step_by(batch_rows)
        .map(|o| all.slice(o, batch_rows.min(quota - o)))
        .collect();
    let rows = batches.iter().map(RecordBatch::num_rows).collect();
    let ipc = batches.iter().map(encode_ipc).collect();
    let mut flight = batches_to_flight_data(schema, batches).expect("Flight encode");
    flight[0].flight_descriptor = Some(FlightDescriptor::new_path(vec![
        DATASET.to_string(),
        producer_id(p),
    ]));
    ProducerLoad { rows, ipc, flight }
}

fn generate(args: &Args) -> Vec<ProducerLoad> {
    let n = args.producers;
    let schema = weather_spec().schema;
    let feed = WeatherFeed {
        stations: STATIONS,
        ..WeatherFeed::default()
    };
    let owned: Vec<Vec<usize>> = (0..n).map(|p| (p..STATIONS).step_by(n).collect()).collect();
    let quota: Vec<usize> = (0..n)
        .map(|p| args.rows / n + usize::from(p < args.rows % n))
        .collect();
    let ticks = (0..n)
        .map(|p| quota[p].div_ceil(owned[p].len()))
        .max()
        .unwrap_or(0);
    let chunks = ticks.div_ceil(CHUNK_TICKS);
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let (feed, owned) = (&feed, &owned);
    // parts[producer][chunk]: the producer's rows of that chunk of ticks.
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::with_capacity(chunks); n];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..chunks)
                        .step_by(threads)
                        .map(|c| {
                            let first = c * CHUNK_TICKS;
                            let count = CHUNK_TICKS.min(ticks - first);
                            let rows = feed.batch((first * STATIONS) as u64, count * STATIONS);
                            let mine: Vec<RecordBatch> = owned
                                .iter()
                                .map(|stations| {
                                    let idx: UInt32Array = (0..count)
                                        .flat_map(|k| {
                                            stations.iter().map(move |s| (k * STATIONS + s) as u32)
                                        })
                                        .collect();
                                    compute::take_record_batch(&rows, &idx).expect("take")
                                })
                                .collect();
                            (c, mine)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut done: Vec<(usize, Vec<RecordBatch>)> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("generator thread"))
            .collect();
        done.sort_by_key(|(c, _)| *c);
        for (_, mine) in done {
            for (p, b) in mine.into_iter().enumerate() {
                parts[p].push(b);
            }
        }
    });
    let (schema, parts, quota) = (&schema, &parts, &quota);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|p| {
                            let load =
                                encode_producer(p, schema, &parts[p], quota[p], args.batch_rows);
                            (p, load)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut loads: Vec<(usize, ProducerLoad)> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("encoder thread"))
            .collect();
        loads.sort_by_key(|(p, _)| *p);
        loads.into_iter().map(|(_, l)| l).collect()
    })
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// Send and ack time of one batch.
type Times = (Instant, Instant);

/// Sends `messages` on `tx` with at most `window` of them unacknowledged, reading one
/// ack per message from `acks` (checked by `check(index, ack)`). Returns the send and
/// ack time of every message; after the last one the call must end cleanly.
async fn pump<M, R>(
    tx: mpsc::Sender<M>,
    messages: Vec<M>,
    mut acks: Streaming<R>,
    window: usize,
    check: impl Fn(usize, R) -> Result<(), String>,
) -> Result<Vec<Times>, String>
where
    M: Send + 'static,
{
    let total = messages.len();
    let credit = Arc::new(Semaphore::new(window));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Instant>();
    let sender = tokio::spawn({
        let credit = credit.clone();
        async move {
            for m in messages {
                credit.acquire().await.expect("never closed").forget();
                let _ = sent_tx.send(Instant::now());
                if tx.send(m).await.is_err() {
                    // The call ended; the reader reports why.
                    return;
                }
            }
            // Dropping `tx` half-closes the call.
        }
    });
    let mut times = Vec::with_capacity(total);
    for i in 0..total {
        let ack = acks
            .message()
            .await
            .map_err(|s| format!("after {i} of {total} acks: {s}"))?
            .ok_or_else(|| format!("the call ended after {i} of {total} acks"))?;
        let acked = Instant::now();
        check(i, ack)?;
        let sent = sent_rx
            .recv()
            .await
            .ok_or("an ack for a batch never sent")?;
        credit.add_permits(1);
        times.push((sent, acked));
    }
    sender.await.ctx("sender task")?;
    if acks.message().await.ctx("end of the call")?.is_some() {
        return Err("more acks than batches".into());
    }
    Ok(times)
}

/// Peak resident set size of this process while it runs, sampled every 20 ms.
#[derive(Debug)]
struct RssSampler {
    base: u64,
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(rss_bytes());
                    tokio::time::sleep(POLL_EVERY).await;
                }
                peak.max(rss_bytes())
            }
        });
        Self {
            base: rss_bytes(),
            stop,
            task,
        }
    }

    /// How far the RSS rose above its value at the start.
    async fn growth(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0).saturating_sub(self.base)
    }
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Debug)]
struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            p50: pct(&samples, 0.50),
            p99: pct(&samples, 0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// What both runs measure.
#[derive(Debug)]
struct Measured {
    rows: u64,
    /// Payload bytes sent (Arrow IPC, resp. Flight header + body).
    bytes: u64,
    batches: usize,
    elapsed: Duration,
    ack: Summary,
    rss_growth: u64,
}

impl Measured {
    fn new(times: &[Vec<Times>], rows: u64, bytes: u64, rss_growth: u64) -> Self {
        let all = times.iter().flatten();
        let first = all.clone().map(|t| t.0).min().expect("batches were sent");
        let last = all.clone().map(|t| t.1).max().expect("batches were acked");
        Self {
            rows,
            bytes,
            batches: all.clone().count(),
            elapsed: last - first,
            ack: Summary::of(all.map(|(s, a)| *a - *s).collect()),
            rss_growth,
        }
    }

    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> String {
        format!(
            "\"rows\":{},\"bytes\":{},\"batches\":{},\"secs\":{:.3},\"rows_per_s\":{:.0},\"mb_per_s\":{:.2},\
             \"ack\":{},\"rss_growth_bytes\":{}",
            self.rows,
            self.bytes,
            self.batches,
            self.elapsed.as_secs_f64(),
            self.rows_per_s(),
            self.mb_per_s(),
            self.ack.json(),
            self.rss_growth
        )
    }
}

// ---------------------------------------------------------------------------------------
// Run 1: Strata.

#[derive(Debug)]
struct StrataRun {
    m: Measured,
    visible: Summary,
    /// Batches whose commit was observed before the client had read their ack.
    visible_before_ack: usize,
    polls: u64,
    stats: IngestStats,
    live_rows: u64,
    head_version: u64,
    segments: u64,
    /// From the last ack until every batch was visible.
    drain: Duration,
    /// From the first send until every batch was visible.
    end_to_end: Duration,
    shutdown: Duration,
}

/// Polls `DescribeDataset` until every producer's mark reaches `last[p]`; returns per
/// producer the (mark, time first seen) steps, and the number of polls.
async fn poll_visibility(
    mut client: StrataClient<Channel>,
    last: Vec<u64>,
) -> Result<(Vec<Vec<(u64, Instant)>>, u64), String> {
    let ids: Vec<String> = (0..last.len()).map(producer_id).collect();
    let mut seen: Vec<Vec<(u64, Instant)>> = vec![Vec::new(); last.len()];
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0;
    loop {
        tick.tick().await;
        let info = client
            .describe_dataset(DescribeDatasetRequest {
                name: DATASET.into(),
            })
            .await
            .ctx("DescribeDataset")?
            .into_inner();
        let now = Instant::now();
        polls += 1;
        let mut done = true;
        for (p, steps) in seen.iter_mut().enumerate() {
            let mark = info.producers.get(&ids[p]).copied().unwrap_or(0);
            if mark > steps.last().map_or(0, |s| s.0) {
                steps.push((mark, now));
            }
            done &= mark >= last[p];
        }
        if done {
            return Ok((seen, polls));
        }
    }
}

fn dataset_spec(shards: u32) -> PbSpec {
    strata_benches::weather_dataset(DATASET, shards)
}

async fn run_strata(args: &Args, load: &[ProducerLoad]) -> Result<StrataRun, String> {
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).ctx("creating --data-dir")?;
    let dir = tempfile::Builder::new()
        .prefix("ingest-bench-")
        .tempdir_in(&parent)
        .ctx("creating the data dir")?;
    eprintln!("strata: data dir {}", dir.path().display());
    let config = ServerConfig {
        default_shards: args.shards,
        ..ServerConfig::ephemeral(dir.path().to_path_buf())
    };
    let server = Server::start(config).await.ctx("starting the server")?;
    let url = server.url();
    let mut admin = StrataClient::connect(url.clone()).await.ctx("connecting")?;
    admin
        .create_dataset(CreateDatasetRequest {
            spec: Some(dataset_spec(args.shards)),
        })
        .await
        .ctx("CreateDataset")?;

    // Each producer: its own connection and stream, opened before the clock starts.
    let mut opened = Vec::with_capacity(load.len());
    for (p, work) in load.iter().enumerate() {
        let mut client = StrataClient::connect(url.clone()).await.ctx("connecting")?;
        let (tx, rx) = mpsc::channel(args.window + 1);
        let open = IngestRequest {
            kind: Some(ingest_request::Kind::Open(IngestOpen {
                dataset: DATASET.into(),
                producer: producer_id(p),
            })),
        };
        tx.send(open).await.ctx("queueing open")?;
        let mut acks = client
            .ingest(ReceiverStream::new(rx))
            .await
            .ctx("Ingest")?
            .into_inner();
        match acks.message().await.ctx("Ingest open")? {
            Some(IngestResponse {
                kind:
                    Some(ingest_response::Kind::Opened(strata_proto::v1::IngestOpened {
                        last_sequence: 0,
                    })),
            }) => {}
            other => {
                return Err(format!(
                    "{}: expected opened(0), got {other:?}",
                    producer_id(p)
                ));
            }
        }
        let messages: Vec<IngestRequest> = work
            .ipc
            .iter()
            .enumerate()
            .map(|(i, ipc)| IngestRequest {
                kind: Some(ingest_request::Kind::Batch(IngestBatch {
                    sequence: i as u64 + 1,
                    arrow_ipc: ipc.clone(),
                })),
            })
            .collect();
        opened.push((client, tx, acks, messages));
    }
    let last: Vec<u64> = load.iter().map(|w| w.ipc.len() as u64).collect();

    let rss = RssSampler::start();
    let mut poller = tokio::spawn(poll_visibility(admin.clone(), last));
    let producers: Vec<JoinHandle<Result<Vec<Times>, String>>> = opened
        .into_iter()
        .enumerate()
        .map(|(p, (client, tx, acks, messages))| {
            let rows: Vec<u64> = load[p].rows.iter().map(|&r| r as u64).collect();
            let window = args.window;
            tokio::spawn(async move {
                let _client = client;
                let check = move |i: usize, r: IngestResponse| match r.kind {
                    Some(ingest_response::Kind::Ack(a))
                        if a.sequence == i as u64 + 1 && !a.duplicate && a.rows == rows[i] =>
                    {
                        Ok(())
                    }
                    other => Err(format!(
                        "{}: batch {} ({} rows) answered with {other:?}",
                        producer_id(p),
                        i + 1,
                        rows[i]
                    )),
                };
                pump(tx, messages, acks, window, check).await
            })
        })
        .collect();
    let mut times = Vec::with_capacity(producers.len());
    for (p, task) in producers.into_iter().enumerate() {
        let t = task
            .await
            .ctx("producer task")?
            .map_err(|e| format!("{}: {e}", producer_id(p)))?;
        times.push(t);
    }
    let last_ack = Instant::now();
    let (steps, polls) = match tokio::time::timeout(VISIBLE_TIMEOUT, &mut poller).await {
        Ok(r) => r.ctx("poller task")??,
        Err(_) => {
            poller.abort();
            return Err(format!(
                "acknowledged batches were not all visible {VISIBLE_TIMEOUT:?} after the last ack"
            ));
        }
    };
    let drain = last_ack.elapsed();
    let first_send = times.iter().flatten().map(|t| t.0).min().expect("sent");
    let all_visible = steps
        .iter()
        .filter_map(|s| s.last())
        .map(|s| s.1)
        .max()
        .expect("seen");
    let end_to_end = all_visible - first_send;
    let rss_growth = rss.growth().await;
    let stats = server.ingester().stats();

    // Ack-to-visible: the first poll whose mark covers the sequence, minus the ack.
    let mut visible = Vec::new();
    let mut visible_before_ack = 0;
    for (t, s) in times.iter().zip(&steps) {
        let mut j = 0;
        for (i, (_, acked)) in t.iter().enumerate() {
            while s[j].0 < i as u64 + 1 {
                j += 1;
            }
            visible_before_ack += usize::from(s[j].1 < *acked);
            visible.push(s[j].1.saturating_duration_since(*acked));
        }
    }

    let rows: u64 = load.iter().map(ProducerLoad::rows).sum();
    let bytes: u64 = load
        .iter()
        .flat_map(|w| &w.ipc)
        .map(|b| b.len() as u64)
        .sum();
    let m = Measured::new(&times, rows, bytes, rss_growth);

    admin
        .flush(FlushRequest {
            dataset: DATASET.into(),
        })
        .await
        .ctx("Flush")?;
    let info = admin
        .describe_dataset(DescribeDatasetRequest {
            name: DATASET.into(),
        })
        .await
        .ctx("DescribeDataset")?
        .into_inner();
    if info.live_rows != rows || info.unflushed_rows != 0 {
        return Err(format!(
            "after Flush: live_rows {} and unflushed_rows {}, but {rows} rows with distinct keys \
             were sent and acknowledged",
            info.live_rows, info.unflushed_rows
        ));
    }
    for (p, t) in times.iter().enumerate() {
        let want = t.len() as u64;
        let got = info.producers.get(&producer_id(p)).copied().unwrap_or(0);
        if got != want {
            return Err(format!(
                "after Flush: {} has mark {got}, expected {want}",
                producer_id(p)
            ));
        }
    }
    let t = Instant::now();
    server.shutdown().await.ctx("shutting the server down")?;
    let shutdown = t.elapsed();
    drop(dir);
    Ok(StrataRun {
        m,
        visible: Summary::of(visible),
        visible_before_ack,
        polls,
        stats,
        live_rows: info.live_rows,
        head_version: info.head_version,
        segments: info.segments,
        drain,
        end_to_end,
        shutdown,
    })
}

// ---------------------------------------------------------------------------------------
// Run 2: a Flight service that decodes and discards.

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `DoPut` decodes every record batch, drops it and answers a `PutResult` holding its
/// row count; nothing else is served.
#[derive(Clone, Debug)]
struct NullSink;

#[tonic::async_trait]
impl FlightService for NullSink {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let batches = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let results = batches.map(|b| match b {
            Ok(batch) => Ok(PutResult {
                app_metadata: Bytes::from(batch.num_rows().to_string()),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(results)))
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("null sink"))
    }
}

async fn run_null_sink(args: &Args, load: &[ProducerLoad]) -> Result<Measured, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .ctx("binding 127.0.0.1:0")?;
    let addr = listener.local_addr().ctx("local address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    // Served as Strata's server serves its port, except for TCP_NODELAY on accepted
    // sockets, which tonic's own `serve` sets and which is on unless told otherwise.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(!args.null_sink_no_nodelay));
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(
                FlightServiceServer::new(NullSink)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).ctx("endpoint")?;

    let mut opened = Vec::with_capacity(load.len());
    for work in load {
        let mut client = FlightServiceClient::new(endpoint.connect().await.ctx("connecting")?);
        let (tx, rx) = mpsc::channel(args.window + 1);
        tx.send(work.flight[0].clone())
            .await
            .ctx("queueing the schema")?;
        let acks = client
            .do_put(ReceiverStream::new(rx))
            .await
            .ctx("DoPut")?
            .into_inner();
        opened.push((client, tx, acks, work.flight[1..].to_vec()));
    }

    let rss = RssSampler::start();
    let producers: Vec<JoinHandle<Result<Vec<Times>, String>>> = opened
        .into_iter()
        .enumerate()
        .map(|(p, (client, tx, acks, messages))| {
            let rows: Vec<Bytes> = load[p]
                .rows
                .iter()
                .map(|r| Bytes::from(r.to_string()))
                .collect();
            let window = args.window;
            tokio::spawn(async move {
                let _client = client;
                let check = move |i: usize, r: PutResult| {
                    if r.app_metadata == rows[i] {
                        Ok(())
                    } else {
                        Err(format!("batch {}: put result {r:?}", i + 1))
                    }
                };
                pump(tx, messages, acks, window, check).await
            })
        })
        .collect();
    let mut times = Vec::with_capacity(producers.len());
    for (p, task) in producers.into_iter().enumerate() {
        let t = task
            .await
            .ctx("producer task")?
            .map_err(|e| format!("null sink producer {p}: {e}"))?;
        times.push(t);
    }
    let rss_growth = rss.growth().await;
    let _ = stop.send(());
    serving
        .await
        .ctx("null sink task")?
        .ctx("null sink server")?;

    let rows: u64 = load.iter().map(ProducerLoad::rows).sum();
    let bytes: u64 = load
        .iter()
        .flat_map(|w| &w.flight)
        .map(|d| (d.data_header.len() + d.data_body.len()) as u64)
        .sum();
    Ok(Measured::new(&times, rows, bytes, rss_growth))
}

// ---------------------------------------------------------------------------------------
// Report.

/// `1234567` → `"1,234,567"`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn row(name: &str, m: &Measured, visible: Option<&Summary>) {
    let vis = |f: fn(&Summary) -> Duration| {
        visible.map_or("-".to_string(), |v| format!("{:.1}", ms(f(v))))
    };
    println!(
        "{:<10} {:>12} {:>8.1} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8} {:>8} {:>9.1}",
        name,
        group(m.rows_per_s().round() as u64),
        m.mb_per_s(),
        m.elapsed.as_secs_f64(),
        ms(m.ack.p50),
        ms(m.ack.p99),
        ms(m.ack.max),
        vis(|v| v.p50),
        vis(|v| v.p99),
        vis(|v| v.max),
        mb(m.rss_growth),
    );
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let t = Instant::now();
    let load = generate(&args);
    let generated = t.elapsed();
    let rows: u64 = load.iter().map(ProducerLoad::rows).sum();
    let batches: usize = load.iter().map(|w| w.ipc.len()).sum();
    let ipc_bytes: u64 = load
        .iter()
        .flat_map(|w| &w.ipc)
        .map(|b| b.len() as u64)
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
    println!(
        "ingest-bench: {} weather rows ({STATIONS} stations split among {} producers, time-ordered \
         per station, every key once) in {} batches of up to {} rows; {:.1} MB of Arrow IPC, \
         generated and encoded in {:.1} s (untimed); window {} batches per producer; {} shards; \
         {cores} cores, one tokio runtime (client and server)",
        group(rows),
        args.producers,
        group(batches as u64),
        args.batch_rows,
        mb(ipc_bytes),
        generated.as_secs_f64(),
        args.window,
        args.shards,
    );

    eprintln!("run 1: strata ...");
    let strata = match rt.block_on(run_strata(&args, &load)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ingest-bench: strata run FAILED: {e}");
            std::process::exit(1);
        }
    };
    let null = if args.skip_null_sink {
        None
    } else {
        eprintln!("run 2: flight null sink ...");
        match rt.block_on(run_null_sink(&args, &load)) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("ingest-bench: null sink run FAILED: {e}");
                std::process::exit(1);
            }
        }
    };

    println!();
    println!(
        "{:<10} {:>12} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "run",
        "rows/s",
        "MB/s",
        "secs",
        "ack p50",
        "ack p99",
        "ack max",
        "vis p50",
        "vis p99",
        "vis max",
        "RSS +MB"
    );
    row("strata", &strata.m, Some(&strata.visible));
    if let Some(n) = &null {
        let name = if args.null_sink_no_nodelay {
            "null-sink*"
        } else {
            "null-sink"
        };
        row(name, n, None);
    }
    if null.is_some() && args.null_sink_no_nodelay {
        println!("* null sink without TCP_NODELAY on its accepted sockets");
    }
    println!(
        "(latencies in ms; ack = send to ack; vis = ack to the first poll showing the batch \
         committed, polled every {} ms, {} polls; RSS +MB = process growth during the run)",
        POLL_EVERY.as_millis(),
        strata.polls
    );
    println!();
    let s = &strata.stats;
    println!(
        "strata: peak unflushed memory {:.1} MB, {} flushes ({} rows), {} compactions; all visible \
         {:.0} ms after the last ack; {} batches seen committed before their ack was read; after \
         Flush: live_rows {} (= rows sent), head version {}, {} segments; shutdown {:.0} ms",
        mb(s.memory_peak_bytes as u64),
        s.flushes,
        group(s.rows_flushed),
        s.compactions,
        ms(strata.drain),
        strata.visible_before_ack,
        group(strata.live_rows),
        strata.head_version,
        strata.segments,
        ms(strata.shutdown),
    );
    let strata_rate = strata.m.rows_per_s();
    let visible_rate = rows as f64 / strata.end_to_end.as_secs_f64().max(1e-9);
    println!(
        "strata end to end (first send to all rows visible): {:.2} s, {} rows/s ({:.2}× of target)",
        strata.end_to_end.as_secs_f64(),
        group(visible_rate.round() as u64),
        visible_rate / TARGET_ROWS_PER_S
    );
    let ratio = null.as_ref().map(|n| strata_rate / n.rows_per_s());
    if let (Some(r), Some(n)) = (ratio, &null) {
        println!(
            "strata ÷ null sink (rows/s): {r:.3}; target {} rows/s: strata {:.2}× of target, \
             null sink {:.2}× of target",
            group(TARGET_ROWS_PER_S as u64),
            strata_rate / TARGET_ROWS_PER_S,
            n.rows_per_s() / TARGET_ROWS_PER_S
        );
    } else {
        println!(
            "target {} rows/s: strata {:.2}× of target",
            group(TARGET_ROWS_PER_S as u64),
            strata_rate / TARGET_ROWS_PER_S
        );
    }

    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let json = format!(
        "{{\"tool\":\"ingest-bench\",\"producers\":{},\"rows\":{},\"batch_rows\":{},\"batches\":{},\
         \"shards\":{},\"window\":{},\"cores\":{},\"ipc_bytes\":{},\"data_dir\":{},\
         \"strata\":{{{},\"visible\":{},\"visible_before_ack\":{},\"polls\":{},\
         \"peak_unflushed_bytes\":{},\"flushes\":{},\"compactions\":{},\"live_rows\":{},\
         \"drain_ms\":{},\"end_to_end_secs\":{:.3},\"visible_rows_per_s\":{:.0},\"shutdown_ms\":{}}},\"null_sink\":{},\"null_sink_nodelay\":{},\"ratio_strata_vs_null\":{},\
         \"target_rows_per_s\":{},\"strata_x_target\":{},\"null_x_target\":{}}}",
        args.producers,
        rows,
        args.batch_rows,
        batches,
        args.shards,
        args.window,
        cores,
        ipc_bytes,
        args.data_dir
            .as_ref()
            .map_or("null".into(), |d| json_str(&d.display().to_string())),
        strata.m.json(),
        strata.visible.json(),
        strata.visible_before_ack,
        strata.polls,
        s.memory_peak_bytes,
        s.flushes,
        s.compactions,
        strata.live_rows,
        ms(strata.drain),
        strata.end_to_end.as_secs_f64(),
        visible_rate,
        ms(strata.shutdown),
        null.as_ref()
            .map_or("null".into(), |n| format!("{{{}}}", n.json())),
        !args.null_sink_no_nodelay,
        ratio.map_or("null".into(), |r| round3(r).to_string()),
        TARGET_ROWS_PER_S,
        round3(strata_rate / TARGET_ROWS_PER_S),
        null.as_ref().map_or("null".into(), |n| round3(
            n.rows_per_s() / TARGET_ROWS_PER_S
        )
        .to_string()),
    );
    println!("{json}");
}
