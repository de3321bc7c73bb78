//! Crash test of the server: a server process killed with SIGKILL while producers stream
//! batches into it over gRPC, many times over one data directory.
//!
//! The parent test re-runs this test binary as a child (`server_child`, a no-op unless
//! `STRATA_SERVER_CRASH_DIR` is set) that starts a [`Server`] on a free loopback port with
//! a short flush interval, frequent compaction and small WAL files, prints
//! `LISTENING <addr>` on stdout and serves until it is killed (or, at the end, stopped with
//! SIGTERM). Meanwhile K producers in the parent stream numbered batches into one append
//! dataset (no row key, so a batch applied twice shows as duplicate rows); batch `i` of
//! producer `p` always holds the same rows `(p, i, 0..n)`. After a random delay the parent
//! kills the child — before, during or after a flush or a compaction — starts a new one on
//! the same directory (new port), and the producers reconnect. At every (re)connect a
//! producer checks and does:
//!
//! - `Opened.last_sequence` ≥ its last acked sequence (an ack is a promise) and ≤ the
//!   highest sequence it ever sent;
//! - it resends every batch it sent but saw no ack for (and now and then a few acked ones),
//!   then goes on with new batches: acks come in order, a duplicate exactly when the
//!   sequence is at or below `last_sequence` (durable before the kill), applied otherwise.
//!
//! A stream that fails while its server is up (not being killed) fails the test. At the
//! end a last server gets every outstanding batch acked, a `Flush` and a `DescribeDataset`
//! check (rows, marks), and is stopped with SIGTERM (a graceful shutdown that flushes).
//! The WAL directory must then be empty, and the store, opened in-process, must hold at
//! its head every batch sent (all were acked by then) exactly once and no other row, with
//! each producer's mark at its highest sequence.
//!
//! `STRATA_SERVER_CRASH_TRIALS` sets the number of kills (default 8),
//! `STRATA_SERVER_CRASH_PRODUCERS` the number of producers (default 3) and
//! `STRATA_SERVER_CRASH_SEED` the seed (kill delays, pacing and resends; the interleaving
//! of processes still varies from run to run).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    Column, CreateDatasetRequest, DatasetInfo, DatasetSpec as PbSpec, DescribeDatasetRequest,
    FlushRequest, IngestBatch, IngestOpen, IngestRequest, IngestResponse, ingest_request,
    ingest_response,
};
use strata_server::{Server, ServerConfig};
use strata_storage::LocalStore;
use strata_table::{Catalog, Operation, VersionSpec};
use tokio::sync::watch;

const DATASET: &str = "server_crash";
const CHILD_TEST: &str = "server_crash::server_child";
const ENV_DIR: &str = "STRATA_SERVER_CRASH_DIR";
const ENV_TRIALS: &str = "STRATA_SERVER_CRASH_TRIALS";
const ENV_PRODUCERS: &str = "STRATA_SERVER_CRASH_PRODUCERS";
const ENV_SEED: &str = "STRATA_SERVER_CRASH_SEED";
const DEFAULT_TRIALS: usize = 8;
const DEFAULT_PRODUCERS: usize = 3;
/// A child stops (and fails) after this long, should the parent die without stopping it.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
/// How long the parent waits for a child to listen (it replays the WAL first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the last server may take to ack every outstanding batch, and to stop.
const FINAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Kill delays after a server starts listening, in milliseconds.
const KILL_DELAY_MS: std::ops::RangeInclusive<u64> = 50..=1500;
/// Batches a producer has sent and not yet seen acked, at most.
const WINDOW: u64 = 16;
/// Pause between new batches of one producer, in microseconds (resends go at once).
const PACE_US: std::ops::RangeInclusive<u64> = 0..=4000;
/// New batches each producer sends to the last server, after its resends.
const FINAL_EXTRA: u64 = 5;
const SIGKILL: i32 = 9;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("producer", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

/// Partition key `producer`, no row key: writes append, so a batch applied twice
/// shows up twice.
fn spec() -> PbSpec {
    let col = |name: &str, ty: &str| Column {
        name: name.into(),
        r#type: ty.into(),
        nullable: false,
    };
    PbSpec {
        name: DATASET.into(),
        columns: vec![
            col("producer", "utf8"),
            col("seq", "uint64"),
            col("row", "uint32"),
            col("payload", "utf8"),
        ],
        partition_key: vec!["producer".into()],
        row_key: vec![],
        shards: 2,
    }
}

fn producer_name(p: usize) -> String {
    format!("producer-{p}")
}

/// Rows in batch `seq` of producer `p`: 1 to 6.
fn rows_in(p: usize, seq: u64) -> u32 {
    u32::try_from((seq * 7 + p as u64 * 3) % 6).unwrap() + 1
}

/// Rows in batches `1..=sent` of every producer: what the dataset holds once all are
/// acked.
fn rows_sent(logs: &[ProducerLog]) -> u64 {
    let mut rows = 0;
    for (p, l) in logs.iter().enumerate() {
        rows += (1..=l.sent).map(|s| u64::from(rows_in(p, s))).sum::<u64>();
    }
    rows
}

fn payload(p: usize, seq: u64, row: u32) -> String {
    let pad = usize::try_from((seq + u64::from(row)) % 40).unwrap();
    format!("{p}/{seq}/{row}/{}", "x".repeat(pad))
}

/// Batch `seq` of producer `p` as a complete Arrow IPC stream: always the same rows.
fn batch_ipc(p: usize, seq: u64) -> Bytes {
    let n = rows_in(p, seq);
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| producer_name(p)),
            )),
            Arc::new(UInt64Array::from_iter_values((0..n).map(|_| seq))),
            Arc::new(UInt32Array::from_iter_values(0..n)),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|r| payload(p, seq, r)),
            )),
        ],
    )
    .unwrap();
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    Bytes::from(out)
}

fn open_request(p: usize) -> IngestRequest {
    IngestRequest {
        kind: Some(ingest_request::Kind::Open(IngestOpen {
            dataset: DATASET.into(),
            producer: producer_name(p),
        })),
    }
}

fn batch_request(p: usize, seq: u64) -> IngestRequest {
    IngestRequest {
        kind: Some(ingest_request::Kind::Batch(IngestBatch {
            sequence: seq,
            arrow_ipc: batch_ipc(p, seq),
        })),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|s| s.parse().expect(name))
}

// ---------------------------------------------------------------------------------------
// The child: a server that runs until it is killed or stopped.

/// Runs as the server when the crash test starts this binary with
/// `STRATA_SERVER_CRASH_DIR`; in a normal test run it returns at once.
#[test]
fn server_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(Box::pin(serve_until_stopped(PathBuf::from(dir))));
}

/// One line on stdout, flushed at once: the parent reads it through a pipe.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .expect("child: write to stdout");
}

async fn serve_until_stopped(dir: PathBuf) {
    let mut config = ServerConfig::ephemeral(dir);
    // Flushes every 200 ms and compactions every 300 ms (at two small segments a shard),
    // so kills land before, during and after both; 1 MB WAL files roll over and get
    // trimmed.
    config.ingest.flush_interval_ms = 200;
    config.ingest.compaction_interval_ms = 300;
    config.ingest.compaction_trigger = 2;
    config.ingest.wal_file_mb = 1;
    // Before listening: a SIGTERM right after `LISTENING` must find the handler.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("child: listen for SIGTERM");
    let server = Server::start(config)
        .await
        .expect("child: start the server");
    report(&format!("LISTENING {}", server.addr()));
    tokio::select! {
        _ = term.recv() => {}
        () = tokio::time::sleep(CHILD_LIFETIME) => {
            panic!("server child ran for {CHILD_LIFETIME:?} without being stopped")
        }
    }
    Box::pin(server.shutdown())
        .await
        .expect("child: graceful shutdown");
    report("STOPPED");
}

// ---------------------------------------------------------------------------------------
// The parent: runs servers, kills them, streams into them.

/// A server child process. Killed if the parent panics first.
struct ServerChild {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
    out_reader: Option<thread::JoinHandle<()>>,
    err_reader: Option<thread::JoinHandle<String>>,
}

impl ServerChild {
    /// Starts a server on `dir` and waits until it listens.
    fn spawn(exe: &Path, dir: &Path, ctx: &str) -> ServerChild {
        let mut child = Command::new(exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the server child");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut server = ServerChild {
            child,
            addr: String::new(),
            lines,
            out_reader: Some(out_reader),
            err_reader: Some(err_reader),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.lines.recv_timeout(left) {
                // The harness may print "test server_crash::server_child ... " first.
                Ok(line) => {
                    if let Some(at) = line.find("LISTENING ") {
                        server.addr = line[at + "LISTENING ".len()..].trim().to_string();
                        return server;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => "stalled",
                        RecvTimeoutError::Disconnected => "exited",
                    };
                    server.fail(&format!("{ctx}: the server child {why} before listening"));
                }
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stderr(&mut self) -> String {
        self.err_reader
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }

    fn fail(mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let status = self.child.wait();
        let err = self.stderr();
        panic!("{what} ({status:?})\nstderr:\n{err}");
    }

    /// SIGKILL; the child must not have died before.
    fn kill(mut self, ctx: &str) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the server child");
        if status.signal() != Some(SIGKILL) {
            let err = self.stderr();
            panic!(
                "{ctx}: the server child died before it was killed ({status:?})\nstderr:\n{err}"
            );
        }
    }

    /// SIGTERM, then waits for a clean exit after a graceful shutdown; returns how long
    /// the shutdown took.
    fn terminate(mut self, ctx: &str) -> Duration {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "{ctx}: kill -TERM failed: {sent:?}");
        let status = loop {
            match self.child.try_wait().expect("wait for the server child") {
                Some(status) => break status,
                None if started.elapsed() > FINAL_TIMEOUT => self.fail(&format!(
                    "{ctx}: the server did not stop within {FINAL_TIMEOUT:?} of SIGTERM: a hang"
                )),
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        let took = started.elapsed();
        if let Some(t) = self.out_reader.take() {
            t.join().expect("stdout reader");
        }
        let stopped = self.lines.try_iter().any(|l| l.contains("STOPPED"));
        if !status.success() || !stopped {
            let err = self.stderr();
            panic!(
                "{ctx}: the server did not shut down cleanly on SIGTERM ({status:?}, reported \
                 stopped: {stopped})\nstderr:\n{err}"
            );
        }
        took
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which server the producers should talk to: `url` is `None` while there is none (or
/// it is being killed). `last` marks the last server, which is stopped gracefully.
#[derive(Clone, Debug)]
struct Phase {
    generation: u64,
    url: Option<String>,
    last: bool,
}

/// What one producer did and knows.
#[derive(Clone, Debug, Default)]
struct ProducerLog {
    /// The highest sequence acked (0: none).
    acked: u64,
    /// The highest sequence sent (batches 1..=sent were all sent).
    sent: u64,
    /// Streams opened.
    connects: u64,
    /// Acks of batches applied.
    applied: u64,
    /// Acks of duplicates.
    duplicates: u64,
    /// Resent batches that were sent but not acked before a kill and came back as
    /// duplicates: durable, unacked at the kill.
    durable_unacked: u64,
    /// Resent batches that were sent but not acked before a kill and were applied: not
    /// durable at the kill.
    lost_in_flight: u64,
    /// Batches acked before and resent on purpose (they must come back as duplicates).
    acked_resent: u64,
}

/// Streams batches from producer `p` to whichever server is up until the last server
/// has acked everything. Panics on a broken promise; a stream error while the server is
/// up (not being killed) fails the test too.
async fn produce(
    p: usize,
    seed: u64,
    mut phase: watch::Receiver<Phase>,
    shared: Arc<Mutex<ProducerLog>>,
    ctx: String,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = ProducerLog::default();
    let mut tried = 0;
    loop {
        let ph = phase
            .wait_for(|ph| ph.generation > tried && ph.url.is_some())
            .await
            .expect("phase sender dropped")
            .clone();
        tried = ph.generation;
        let ctx = format!("{ctx}, producer {p}, server {}", ph.generation);
        let result = session(p, &ph, &mut rng, &mut log, &shared, &ctx).await;
        *shared.lock().unwrap() = log.clone();
        match result {
            Ok(()) => return,
            Err(e) => {
                let now = phase.borrow().clone();
                assert!(
                    now.generation != ph.generation || now.url.is_none(),
                    "{ctx}: the ingest stream failed while the server was up: {e}"
                );
            }
        }
    }
}

/// One stream to one server: checks `Opened`, resends what was not acked, then streams
/// new batches (to the last server: a few, then closes and waits for every ack).
async fn session(
    p: usize,
    ph: &Phase,
    rng: &mut StdRng,
    log: &mut ProducerLog,
    shared: &Mutex<ProducerLog>,
    ctx: &str,
) -> Result<(), String> {
    let url = ph.url.clone().expect("a server");
    let mut client = StrataClient::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(open_request(p)).unwrap();
    let mut inbound = client
        .ingest(rx)
        .await
        .map_err(|s| format!("ingest: {s}"))?
        .into_inner();
    let last_sequence = match inbound.next().await {
        Some(Ok(IngestResponse {
            kind: Some(ingest_response::Kind::Opened(o)),
        })) => o.last_sequence,
        Some(Ok(other)) => panic!("{ctx}: the first answer is not `opened`: {other:?}"),
        Some(Err(s)) => return Err(format!("open: {s}")),
        None => return Err("the stream ended before `opened`".into()),
    };
    log.connects += 1;
    assert!(
        last_sequence >= log.acked,
        "{ctx}: the server reports last_sequence {last_sequence}, but batch {} was acked: \
         acked batches were lost",
        log.acked
    );
    assert!(
        last_sequence <= log.sent,
        "{ctx}: the server reports last_sequence {last_sequence}, but only batches up to {} \
         were ever sent",
        log.sent
    );
    let acked_before = log.acked;
    let sent_before = log.sent;
    // Everything not acked goes again; now and then some acked batches too.
    let back = if rng.random_bool(0.25) {
        rng.random_range(1..=3).min(log.acked)
    } else {
        0
    };
    let mut next = log.acked + 1 - back;
    let mut expect = next;
    let end = if ph.last {
        log.sent + FINAL_EXTRA
    } else {
        u64::MAX
    };
    let mut tx = Some(tx);
    let mut send_at = tokio::time::Instant::now();
    loop {
        let can_send = tx.is_some() && next <= end && next - expect < WINDOW;
        tokio::select! {
            biased;
            msg = inbound.next() => match msg {
                Some(Ok(IngestResponse { kind: Some(ingest_response::Kind::Ack(a)) })) => {
                    assert!(
                        expect < next && a.sequence == expect,
                        "{ctx}: ack for batch {} (duplicate: {}), but the next unacked batch is \
                         {expect} and the last sent {}",
                        a.sequence,
                        a.duplicate,
                        next - 1
                    );
                    assert_eq!(
                        a.duplicate,
                        expect <= last_sequence,
                        "{ctx}: batch {expect} acked with duplicate = {}, but the stream opened \
                         with last_sequence {last_sequence}",
                        a.duplicate
                    );
                    if a.duplicate {
                        log.duplicates += 1;
                        if expect <= acked_before {
                            log.acked_resent += 1;
                        } else {
                            log.durable_unacked += 1;
                        }
                    } else {
                        let n = rows_in(p, expect);
                        assert_eq!(a.rows, u64::from(n), "{ctx}: rows acked for batch {expect}");
                        log.applied += 1;
                        if expect <= sent_before {
                            log.lost_in_flight += 1;
                        }
                    }
                    log.acked = log.acked.max(expect);
                    expect += 1;
                    *shared.lock().unwrap() = log.clone();
                }
                Some(Ok(other)) => panic!("{ctx}: unexpected answer {other:?}"),
                Some(Err(s)) => return Err(s.to_string()),
                None if tx.is_none() && expect == next => return Ok(()),
                None => {
                    return Err(format!(
                        "the stream ended at batch {expect} (sent up to {})",
                        next - 1
                    ));
                }
            },
            () = tokio::time::sleep_until(send_at), if can_send => {
                if let Some(t) = &tx {
                    t.unbounded_send(batch_request(p, next))
                        .map_err(|_| "the request stream is closed".to_string())?;
                }
                log.sent = log.sent.max(next);
                next += 1;
                if next > sent_before {
                    send_at = tokio::time::Instant::now()
                        + Duration::from_micros(rng.random_range(PACE_US));
                }
                if next > end {
                    // Everything sent: close our side, the server acks and ends.
                    tx = None;
                }
            }
        }
    }
}

async fn connect(url: &str, ctx: &str) -> StrataClient<tonic::transport::Channel> {
    StrataClient::connect(url.to_string())
        .await
        .unwrap_or_else(|e| panic!("{ctx}: connect to {url}: {e}"))
}

async fn create_dataset(url: &str, ctx: &str) {
    connect(url, ctx)
        .await
        .create_dataset(CreateDatasetRequest { spec: Some(spec()) })
        .await
        .unwrap_or_else(|s| panic!("{ctx}: CreateDataset: {s}"));
}

/// Flushes on the last server and asks `DescribeDataset`: the version `Flush` returned
/// and the description.
async fn flush_and_describe(url: &str, ctx: &str) -> (u64, DatasetInfo) {
    let mut client = connect(url, ctx).await;
    let version = client
        .flush(FlushRequest {
            dataset: DATASET.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("{ctx}: Flush: {s}"))
        .into_inner()
        .version;
    let info = client
        .describe_dataset(DescribeDatasetRequest {
            name: DATASET.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("{ctx}: DescribeDataset: {s}"))
        .into_inner();
    (version, info)
}

/// Checks what `DescribeDataset` said after the last `Flush`.
fn check_described(version: u64, info: &DatasetInfo, logs: &[ProducerLog], ctx: &str) {
    assert_eq!(info.head_version, version, "{ctx}: head after Flush");
    assert_eq!(info.unflushed_rows, 0, "{ctx}: unflushed rows after Flush");
    let want_rows = rows_sent(logs);
    assert_eq!(
        info.live_rows, want_rows,
        "{ctx}: live rows after Flush (the rows of every batch sent, all acked by now)"
    );
    let want_marks: HashMap<String, u64> = logs
        .iter()
        .enumerate()
        .map(|(p, l)| (producer_name(p), l.sent))
        .collect();
    assert_eq!(
        info.producers, want_marks,
        "{ctx}: producer marks after Flush"
    );
}

/// What the store holds at the end.
struct StoreTally {
    head: u64,
    rows: usize,
    appends: usize,
    compactions: usize,
}

/// Opens the store in-process and checks the head: every batch sent (all acked by now)
/// exactly once, no other row, the producers' marks at their highest sequences.
async fn check_store(dir: &Path, logs: &[ProducerLog], ctx: &str) -> StoreTally {
    let store = LocalStore::open(dir.join("store")).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let catalog = Catalog::new(Arc::new(store.clone()), Arc::new(store));
    let table = catalog
        .open_table(DATASET)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: open dataset: {e}"));
    let head = table
        .head()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: head: {e}"));
    for (p, l) in logs.iter().enumerate() {
        assert_eq!(
            head.producers.get(&producer_name(p)),
            Some(&l.sent),
            "{ctx}: mark of producer {p} at head {} (it sent and got acked 1..={})",
            head.version,
            l.sent
        );
    }
    let batch = table
        .snapshot(&VersionSpec::Head)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: snapshot: {e}"))
        .read_all()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: read head: {e}"));
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    let (prod, seq, row, pay) = (col("producer"), col("seq"), col("row"), col("payload"));
    let prod = prod.as_any().downcast_ref::<StringArray>().unwrap();
    let seq = seq.as_any().downcast_ref::<UInt64Array>().unwrap();
    let row = row.as_any().downcast_ref::<UInt32Array>().unwrap();
    let pay = pay.as_any().downcast_ref::<StringArray>().unwrap();
    let names: HashMap<String, usize> = (0..logs.len()).map(|p| (producer_name(p), p)).collect();
    let mut count: HashMap<(usize, u64, u32), u32> = HashMap::new();
    for i in 0..batch.num_rows() {
        let p = *names
            .get(prod.value(i))
            .unwrap_or_else(|| panic!("{ctx}: row {i} of unknown producer {:?}", prod.value(i)));
        let (s, r) = (seq.value(i), row.value(i));
        assert!(
            (1..=logs[p].sent).contains(&s) && r < rows_in(p, s),
            "{ctx}: row ({p}, {s}, {r}) belongs to no batch producer {p} sent (1..={})",
            logs[p].sent
        );
        assert_eq!(
            pay.value(i),
            payload(p, s, r),
            "{ctx}: payload of ({p}, {s}, {r})"
        );
        *count.entry((p, s, r)).or_default() += 1;
    }
    let mut twice: BTreeMap<(usize, u64), u32> = BTreeMap::new();
    for (&(p, s, _), &n) in &count {
        if n > 1 {
            twice.insert((p, s), n);
        }
    }
    let mut missing: BTreeMap<(usize, u64), u32> = BTreeMap::new();
    for (p, l) in logs.iter().enumerate() {
        for s in 1..=l.sent {
            let lacking = (0..rows_in(p, s))
                .filter(|r| !count.contains_key(&(p, s, *r)))
                .count();
            if lacking > 0 {
                missing.insert((p, s), u32::try_from(lacking).unwrap());
            }
        }
    }
    let first = |m: &BTreeMap<(usize, u64), u32>| -> Vec<((usize, u64), u32)> {
        m.iter().take(20).map(|(k, v)| (*k, *v)).collect()
    };
    assert!(
        twice.is_empty() && missing.is_empty(),
        "{ctx}: at head {}: {} acked batches applied more than once ((producer, batch): \
         copies, first 20: {:?}); {} acked batches lost ((producer, batch): rows missing, \
         first 20: {:?})",
        head.version,
        twice.len(),
        first(&twice),
        missing.len(),
        first(&missing)
    );
    let want_rows = rows_sent(logs);
    assert_eq!(batch.num_rows() as u64, want_rows, "{ctx}: rows at head");
    let versions = table
        .list_versions()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: list_versions: {e}"));
    let ops = |f: fn(&Operation) -> bool| versions.iter().filter(|v| f(&v.operation)).count();
    StoreTally {
        head: head.version,
        rows: batch.num_rows(),
        appends: ops(|o| matches!(o, Operation::Append)),
        compactions: ops(|o| matches!(o, Operation::Compact { .. })),
    }
}

/// Propagates the panic of a producer that has stopped early.
fn check_producers(rt: &tokio::runtime::Runtime, handles: &mut Vec<tokio::task::JoinHandle<()>>) {
    if let Some(i) = handles
        .iter()
        .position(tokio::task::JoinHandle::is_finished)
    {
        let h = handles.swap_remove(i);
        match rt.block_on(h) {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            other => panic!("a producer stopped before the last server: {other:?}"),
        }
    }
}

#[test]
fn killed_server_loses_no_acked_batch() {
    let trials = env_u64(ENV_TRIALS).map_or(DEFAULT_TRIALS, |n| usize::try_from(n).unwrap());
    let producers =
        env_u64(ENV_PRODUCERS).map_or(DEFAULT_PRODUCERS, |n| usize::try_from(n).unwrap());
    let seed = env_u64(ENV_SEED).unwrap_or_else(|| rand::rng().random());
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (phase_tx, phase_rx) = watch::channel(Phase {
        generation: 0,
        url: None,
        last: false,
    });
    let logs: Vec<Arc<Mutex<ProducerLog>>> = (0..producers).map(|_| Arc::default()).collect();
    let snapshot =
        || -> Vec<ProducerLog> { logs.iter().map(|l| l.lock().unwrap().clone()).collect() };
    let mut handles = Vec::new();
    let start_producers = |url: &str, rng: &mut StdRng, handles: &mut Vec<_>| {
        rt.block_on(create_dataset(url, &format!("seed {seed}")));
        for (p, log) in logs.iter().enumerate() {
            handles.push(rt.spawn(produce(
                p,
                rng.random(),
                phase_rx.clone(),
                log.clone(),
                format!("seed {seed}"),
            )));
        }
    };
    let mut quiet_trials = 0;
    for trial in 0..trials {
        let ctx = format!("trial {trial} (seed {seed})");
        let server = ServerChild::spawn(&exe, dir.path(), &ctx);
        if trial == 0 {
            start_producers(&server.url(), &mut rng, &mut handles);
        }
        let acked_before: u64 = snapshot().iter().map(|l| l.applied + l.duplicates).sum();
        let generation = trial as u64 + 1;
        phase_tx.send_replace(Phase {
            generation,
            url: Some(server.url()),
            last: false,
        });
        thread::sleep(Duration::from_millis(rng.random_range(KILL_DELAY_MS)));
        phase_tx.send_replace(Phase {
            generation,
            url: None,
            last: false,
        });
        server.kill(&ctx);
        check_producers(&rt, &mut handles);
        let acked_after: u64 = snapshot().iter().map(|l| l.applied + l.duplicates).sum();
        if acked_after == acked_before {
            quiet_trials += 1;
        }
    }

    // The last server: every outstanding batch acked, a flush, a graceful stop.
    let ctx = format!("after {trials} kills (seed {seed})");
    let server = ServerChild::spawn(&exe, dir.path(), &ctx);
    if handles.is_empty() {
        start_producers(&server.url(), &mut rng, &mut handles);
    }
    phase_tx.send_replace(Phase {
        generation: trials as u64 + 1,
        url: Some(server.url()),
        last: true,
    });
    let done = rt.block_on(async {
        tokio::time::timeout(FINAL_TIMEOUT, futures::future::join_all(handles)).await
    });
    let Ok(done) = done else {
        panic!(
            "{ctx}: the producers did not get every batch acked by the last server within \
             {FINAL_TIMEOUT:?}: a hang; producers: {:#?}",
            snapshot()
        );
    };
    for r in done {
        if let Err(e) = r {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let logs = snapshot();
    let (flushed, described) = rt.block_on(flush_and_describe(&server.url(), &ctx));
    let stop = server.terminate(&ctx);
    // The store first: it names what is lost or doubled.
    let fin = rt.block_on(check_store(dir.path(), &logs, &ctx));
    check_described(flushed, &described, &logs, &ctx);
    assert!(
        fin.head >= flushed,
        "{ctx}: head {} is below the version Flush returned ({flushed})",
        fin.head
    );
    let wal =
        strata_ingest::wal::log_files(&dir.path().join("wal")).expect("read the WAL directory");
    assert!(
        wal.is_empty(),
        "{ctx}: the WAL directory is not empty after a graceful shutdown: {wal:?}"
    );

    let sum = |f: fn(&ProducerLog) -> u64| logs.iter().map(f).sum::<u64>();
    eprintln!(
        "server crash test: {trials} kills in {:.1}s (seed {seed}), {producers} producers, \
         {} streams: {} batches acked as applied, {} as duplicates after a resend ({} durable \
         but unacked at a kill, {} acked before and resent on purpose), {} resent batches \
         applied (lost in flight at a kill), {quiet_trials} trials without an ack; last server \
         stopped in {:.2}s; head v{} ({} appends, {} compactions), {} rows",
        started.elapsed().as_secs_f64(),
        sum(|l| l.connects),
        sum(|l| l.applied),
        sum(|l| l.duplicates),
        sum(|l| l.durable_unacked),
        sum(|l| l.acked_resent),
        sum(|l| l.lost_in_flight),
        stop.as_secs_f64(),
        fin.head,
        fin.appends,
        fin.compactions,
        fin.rows,
    );
}
