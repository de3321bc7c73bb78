//! The ingester: validates batches, logs them, keeps them in memtables and flushes them
//! into table versions. See the crate documentation for the data flow and invariants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayData, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use strata_table::{Catalog, Error as TableError, Table, VacuumPolicy, WriteOutcome};

use crate::metrics::{Histogram, HistogramSnapshot};
use strata_types::DatasetSpec;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::ipc::IpcRefusal;
use crate::wal::{Durable, Wal, WalEntry};

/// The producer mark under which a flush commits the highest WAL LSN it holds. Client
/// producer ids cannot start with `$`.
pub const WAL_MARK: &str = "$wal";

/// Tunables of ingestion. The defaults suit one server on a small machine.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Where the write-ahead log lives.
    pub wal_dir: PathBuf,
    /// The name under which this ingester commits the highest WAL position a version
    /// covers ([`WAL_MARK`], or `$wal/<server id>` when several servers share a store:
    /// each replays its own log against its own mark). Starts with `$`, which producer
    /// names cannot.
    pub wal_mark: String,
    /// Set when several servers share the store: this server's id, under which it
    /// claims each producer it accepts batches from (a producer's batches go to one
    /// server at a time; see `strata_table`'s producer claims). `None`: this server is
    /// the store's only writer and claims nothing.
    pub producer_owner: Option<String>,
    /// A WAL file is closed (and can be trimmed) once it reaches this size.
    pub wal_file_bytes: u64,
    /// A batch (its Arrow IPC bytes) larger than this is refused.
    pub max_batch_bytes: usize,
    /// Acknowledged rows not yet committed are bounded by this many bytes: once it is
    /// reached, writers wait (their streams stop being read) until flushes free memory.
    pub memory_limit_bytes: usize,
    /// A dataset's memtable is flushed when it holds this many rows...
    pub flush_rows: usize,
    /// ... or this many bytes ... (one flush commits at most this many rows and bytes;
    /// a larger memtable is flushed in several versions, so the memory a flush needs
    /// while it sorts and encodes stays bounded too)
    pub flush_bytes: usize,
    /// ... or when its oldest row is this old, so rows become queryable within about this.
    pub flush_interval: Duration,
    /// Background compaction looks at the datasets this often...
    pub compaction_interval: Duration,
    /// ... and compacts a dataset once one of its shards has this many small segments.
    pub compaction_trigger: usize,
    /// Old versions removed in the background (vacuum), per dataset or by default.
    pub retention: RetentionConfig,
}

/// What background vacuum keeps: a policy per dataset, else the default; a dataset with
/// neither is left alone. Tagged versions and the head are always kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetentionConfig {
    pub default: Option<VacuumPolicy>,
    pub datasets: HashMap<String, VacuumPolicy>,
    /// How often the policies are applied.
    pub interval: Duration,
}

impl RetentionConfig {
    /// The policy of dataset `name`, if any.
    pub fn policy(&self, name: &str) -> Option<&VacuumPolicy> {
        self.datasets.get(name).or(self.default.as_ref())
    }
}

impl IngestConfig {
    pub fn new(wal_dir: impl Into<PathBuf>) -> Self {
        Self {
            wal_dir: wal_dir.into(),
            wal_mark: WAL_MARK.to_string(),
            producer_owner: None,
            wal_file_bytes: 64 << 20,
            max_batch_bytes: 16 << 20,
            memory_limit_bytes: 512 << 20,
            flush_rows: 1 << 20,
            flush_bytes: 64 << 20,
            flush_interval: Duration::from_secs(1),
            compaction_interval: Duration::from_secs(5),
            compaction_trigger: 8,
            retention: RetentionConfig {
                interval: Duration::from_secs(300),
                ..RetentionConfig::default()
            },
        }
    }
}

/// The answer to one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub sequence: u64,
    /// The batch had been applied before and was not applied again.
    pub duplicate: bool,
    pub rows: u64,
}

/// Resolves once the batch is durable.
pub type PendingAck = BoxFuture<'static, Result<Ack>>;

/// What the ingester knows of a dataset right now.
#[derive(Clone, Debug)]
pub struct DatasetStatus {
    pub table: Table,
    /// Rows acknowledged but not yet in a committed version.
    pub unflushed_rows: u64,
}

/// Figures for monitoring and benchmarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestStats {
    pub memory_used_bytes: usize,
    pub memory_peak_bytes: usize,
    pub flushes: u64,
    pub compactions: u64,
    pub rows_flushed: u64,
    /// Batches, rows and Arrow IPC bytes acknowledged (duplicates not counted).
    pub acked_batches: u64,
    pub acked_rows: u64,
    pub acked_bytes: u64,
    /// From a batch's arrival to its acknowledgement (durable in the log).
    pub ack_latency: HistogramSnapshot,
    /// The log's `fdatasync` calls.
    pub wal_syncs: HistogramSnapshot,
    /// Commits of flushed rows, and compactions.
    pub flush_durations: HistogramSnapshot,
    pub compaction_durations: HistogramSnapshot,
}

/// One logged batch waiting in memory to be committed.
struct Entry {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
    producer: String,
    sequence: u64,
    lsn: u64,
    at: Instant,
}

/// A dataset's entries waiting to be committed, in LSN order.
#[derive(Default)]
struct Memtable {
    entries: std::collections::VecDeque<Entry>,
    rows: usize,
    bytes: usize,
}

/// A prefix of a memtable, committed as one version.
struct Chunk {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
    /// Producer -> highest sequence number in the chunk.
    marks: BTreeMap<String, u64>,
    max_lsn: u64,
}

impl Memtable {
    fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.at)
    }

    /// Takes entries from the front, up to `max_bytes` and `max_rows` (at least one entry) and none with an
    /// LSN above `boundary`. Because entries are in LSN order, the chunk holds every
    /// entry of the dataset up to its highest LSN that is not already committed.
    fn take_front(&mut self, max_bytes: usize, max_rows: usize, boundary: u64) -> Option<Chunk> {
        let mut chunk = Chunk {
            batches: vec![],
            rows: 0,
            bytes: 0,
            marks: BTreeMap::new(),
            max_lsn: 0,
        };
        while let Some(front) = self.entries.front() {
            let full = chunk.bytes + front.bytes > max_bytes || chunk.rows + front.rows > max_rows;
            if front.lsn > boundary || (chunk.max_lsn > 0 && full) {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.rows -= e.rows;
            self.bytes -= e.bytes;
            chunk.rows += e.rows;
            chunk.bytes += e.bytes;
            chunk.max_lsn = e.lsn;
            if !e.producer.is_empty() {
                let m = chunk.marks.entry(e.producer).or_default();
                *m = (*m).max(e.sequence);
            }
            chunk.batches.extend(e.batches);
        }
        (chunk.max_lsn > 0).then_some(chunk)
    }
}

struct DatasetState {
    table: Table,
    schema: RwLock<SchemaRef>,
    mem: Mutex<DatasetMem>,
    /// Serialises claiming and releasing producers (with `producer_owner`).
    claims: tokio::sync::Mutex<()>,
    /// Serialises flushes: marks must commit in order.
    flush_lock: tokio::sync::Mutex<()>,
    flushing_rows: AtomicU64,
    dropped: AtomicBool,
}

struct DatasetMem {
    table: Memtable,
    /// Producer -> highest sequence number accepted (logged or committed).
    accepted: HashMap<String, u64>,
    /// Producers whose claim this server holds (with `producer_owner`).
    claimed: HashSet<String>,
    /// Producer -> streams open on this server.
    streams: HashMap<String, usize>,
}

struct Inner {
    catalog: Catalog,
    config: IngestConfig,
    wal: Wal,
    datasets: RwLock<HashMap<String, Arc<DatasetState>>>,
    /// Serialises opening datasets so each has one state.
    opening: tokio::sync::Mutex<()>,
    memory: Semaphore,
    memory_used: AtomicU64,
    memory_peak: AtomicU64,
    /// Poked when a memtable crosses a flush threshold.
    wake_flusher: Notify,
    closing: watch::Sender<bool>,
    flushes: AtomicU64,
    compactions: AtomicU64,
    rows_flushed: AtomicU64,
    acked_batches: AtomicU64,
    acked_rows: AtomicU64,
    acked_bytes: AtomicU64,
    ack_latency: Histogram,
    flush_durations: Histogram,
    compaction_durations: Histogram,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Streaming ingestion into the datasets of one catalog. Cheap to clone.
#[derive(Clone)]
pub struct Ingester {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("wal", &self.inner.wal.dir())
            .finish_non_exhaustive()
    }
}

/// One producer's stream into one dataset: checks that sequence numbers increase.
pub struct IngestStream {
    ingester: Ingester,
    state: Arc<DatasetState>,
    producer: String,
    previous: Option<u64>,
    last_sequence: u64,
}

impl Drop for IngestStream {
    fn drop(&mut self) {
        if self.producer.is_empty() {
            return;
        }
        let mut mem = self.state.mem.lock().expect("memtable");
        if let Some(n) = mem.streams.get_mut(&self.producer) {
            *n -= 1;
            if *n == 0 {
                mem.streams.remove(&self.producer);
            }
        }
    }
}

impl std::fmt::Debug for IngestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestStream")
            .field("dataset", &self.state.table.name())
            .field("producer", &self.producer)
            .field("previous", &self.previous)
            .finish()
    }
}

/// How often the compactor looks for dropped datasets whose files can go.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The largest sequence number a producer may use: `i64::MAX`, so that signed 64-bit
/// clients (the JVM's) can use the whole range, and a producer that jumps to the end
/// by mistake is refused instead of finding every later batch a "duplicate".
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Checks a producer id: empty (no exactly-once) or 1..=128 of `[A-Za-z0-9_.:-]`.
pub fn validate_producer(producer: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidProducer {
            producer: producer.to_string(),
            reason: reason.to_string(),
        })
    };
    if producer.len() > 128 {
        return bad("longer than 128 characters");
    }
    if !producer
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return bad("only letters, digits and _ . : - are allowed");
    }
    Ok(())
}

/// Bytes the batch's buffers hold (lengths, not capacities: decoded IPC batches are
/// slices of one message buffer).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    fn data_bytes(d: &ArrayData) -> usize {
        d.buffers().iter().map(|b| b.len()).sum::<usize>()
            + d.nulls().map_or(0, |n| n.buffer().len())
            + d.child_data().iter().map(data_bytes).sum::<usize>()
    }
    batch
        .columns()
        .iter()
        .map(|c| data_bytes(&c.to_data()))
        .sum()
}

/// Decodes an Arrow IPC stream into batches (zero-copy where aligned), refusing streams
/// that would decode into more than `max_bytes` (see [`crate::ipc`]).
pub fn decode_ipc(sequence: u64, payload: &Bytes, max_bytes: usize) -> Result<Vec<RecordBatch>> {
    match crate::ipc::decode_stream(payload, max_bytes) {
        Ok((_, batches)) => Ok(batches),
        Err(IpcRefusal::TooLarge { decoded, max }) => Err(Error::BatchTooLarge {
            sequence,
            bytes: usize::try_from(decoded).unwrap_or(usize::MAX),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        }),
        Err(IpcRefusal::Malformed(reason)) => Err(Error::MalformedIpc { sequence, reason }),
    }
}

impl Ingester {
    /// Opens the write-ahead log, replays it into memtables (skipping what the tables
    /// already hold) and starts the background flusher and compactor.
    pub async fn open(catalog: Catalog, config: IngestConfig) -> Result<Self> {
        let (wal, replay) = Wal::open(&config.wal_dir, config.wal_file_bytes)?;
        let (closing, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            memory: Semaphore::new(config.memory_limit_bytes),
            catalog,
            config,
            wal,
            datasets: RwLock::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            memory_used: AtomicU64::new(0),
            memory_peak: AtomicU64::new(0),
            wake_flusher: Notify::new(),
            closing,
            flushes: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            rows_flushed: AtomicU64::new(0),
            acked_batches: AtomicU64::new(0),
            acked_rows: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            ack_latency: Histogram::default(),
            flush_durations: Histogram::default(),
            compaction_durations: Histogram::default(),
            tasks: Mutex::new(Vec::new()),
        });
        let ingester = Ingester { inner };
        // LSNs must stay above every mark committed before, even if the log was trimmed.
        for name in ingester.inner.catalog.list_tables().await? {
            let state = ingester.dataset(&name).await?;
            let head = state.table.head().await?;
            if let Some(lsn) = head.producers.get(&ingester.inner.config.wal_mark) {
                ingester.inner.wal.raise_next_lsn(*lsn);
                ingester.inner.wal.flushed(state.table.id(), *lsn);
            }
        }
        // Subscribed before spawning: a task that starts after a shutdown began must
        // still see it.
        let flusher = tokio::spawn(ingester.clone().flusher(ingester.closing()));
        let compactor = tokio::spawn(ingester.clone().compactor(ingester.closing()));
        ingester
            .inner
            .tasks
            .lock()
            .expect("tasks")
            .extend([flusher, compactor]);
        ingester.replay(replay.entries).await?;
        Ok(ingester)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn config(&self) -> &IngestConfig {
        &self.inner.config
    }

    /// A receiver that turns true when the ingester starts shutting down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    pub fn stats(&self) -> IngestStats {
        IngestStats {
            memory_used_bytes: self.inner.memory_used.load(Ordering::Relaxed) as usize,
            memory_peak_bytes: self.inner.memory_peak.load(Ordering::Relaxed) as usize,
            flushes: self.inner.flushes.load(Ordering::Relaxed),
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            rows_flushed: self.inner.rows_flushed.load(Ordering::Relaxed),
            acked_batches: self.inner.acked_batches.load(Ordering::Relaxed),
            acked_rows: self.inner.acked_rows.load(Ordering::Relaxed),
            acked_bytes: self.inner.acked_bytes.load(Ordering::Relaxed),
            ack_latency: self.inner.ack_latency.snapshot(),
            wal_syncs: self.inner.wal.syncs(),
            flush_durations: self.inner.flush_durations.snapshot(),
            compaction_durations: self.inner.compaction_durations.snapshot(),
        }
    }

    async fn replay(&self, entries: Vec<WalEntry>) -> Result<()> {
        let mut applied = 0usize;
        let mut skipped = 0usize;
        for entry in entries {
            let state = match self.dataset(&entry.dataset).await {
                Ok(s) if s.table.id() == entry.table_id => s,
                // Dropped (and perhaps created again under the same name).
                Ok(_) | Err(Error::DatasetNotFound(_)) => {
                    skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let head = state.table.head().await?;
            if head
                .producers
                .get(&self.inner.config.wal_mark)
                .is_some_and(|m| *m >= entry.lsn)
            {
                skipped += 1;
                continue;
            }
            // Accepted before: the limits of the time it was written applied.
            let batches = decode_ipc(entry.sequence, &entry.payload, usize::MAX)?;
            let batches = conform_all(&state, entry.sequence, &batches)?;
            let bytes = batches
                .iter()
                .map(batch_bytes)
                .sum::<usize>()
                .min(self.max_charge());
            self.reserve(bytes).await?;
            let mut mem = state.mem.lock().expect("memtable");
            if !entry.producer.is_empty() {
                let hw = mem.accepted.entry(entry.producer.clone()).or_default();
                *hw = (*hw).max(entry.sequence);
            }
            push(
                &mut mem.table,
                &self.inner.config,
                batches,
                bytes,
                &entry.producer,
                entry.sequence,
                entry.lsn,
            );
            applied += 1;
        }
        if applied + skipped > 0 {
            info!(applied, skipped, "write-ahead log replayed");
        }
        Ok(())
    }

    /// The datasets opened so far.
    fn states(&self) -> Vec<Arc<DatasetState>> {
        let datasets = self.inner.datasets.read().expect("datasets");
        datasets.values().cloned().collect()
    }

    /// The state of a dataset, opening it on first use.
    async fn dataset(&self, name: &str) -> Result<Arc<DatasetState>> {
        if let Some(s) = self.inner.datasets.read().expect("datasets").get(name) {
            return Ok(s.clone());
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(s) = self.inner.datasets.read().expect("datasets").get(name) {
            return Ok(s.clone());
        }
        let table = match self.inner.catalog.open_table(name).await {
            Ok(t) => t,
            Err(TableError::DatasetNotFound(n)) => return Err(Error::DatasetNotFound(n)),
            Err(TableError::Types(_)) => return Err(Error::DatasetNotFound(name.to_string())),
            Err(e) => return Err(e.into()),
        };
        let head = table.head().await?;
        let accepted = head
            .producers
            .iter()
            .filter(|(p, _)| !p.starts_with('$'))
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        // Claims this server held when it stopped: released once replayed rows commit.
        let claimed = match &self.inner.config.producer_owner {
            Some(owner) => table.claimed_producers(owner).await?.into_iter().collect(),
            None => HashSet::new(),
        };
        let state = Arc::new(DatasetState {
            table,
            schema: RwLock::new(head.schema.clone()),
            claims: tokio::sync::Mutex::new(()),
            mem: Mutex::new(DatasetMem {
                table: Memtable::default(),
                accepted,
                claimed,
                streams: HashMap::new(),
            }),
            flush_lock: tokio::sync::Mutex::new(()),
            flushing_rows: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
        });
        self.inner
            .datasets
            .write()
            .expect("datasets")
            .insert(name.to_string(), state.clone());
        Ok(state)
    }

    /// Creates a dataset.
    pub async fn create_dataset(&self, spec: DatasetSpec) -> Result<Table> {
        Ok(self.inner.catalog.create_table(spec).await?)
    }

    /// Drops a dataset with its unflushed rows.
    pub async fn drop_dataset(&self, name: &str) -> Result<()> {
        let state = self.dataset(name).await?;
        let _flush = state.flush_lock.lock().await;
        self.inner
            .catalog
            .drop_table(name)
            .await
            .map_err(|e| match e {
                TableError::DatasetNotFound(n) => Error::DatasetNotFound(n),
                e => e.into(),
            })?;
        // Only now: a failed drop leaves the dataset writable. Entries pushed meanwhile
        // are discarded below (and skipped by replay: their table is gone).
        state.dropped.store(true, Ordering::SeqCst);
        self.inner.datasets.write().expect("datasets").remove(name);
        let freed = {
            let mut mem = state.mem.lock().expect("memtable");
            std::mem::take(&mut mem.table).bytes
        };
        self.release(freed);
        self.inner.wal.flushed(state.table.id(), u64::MAX);
        Ok(())
    }

    /// The dataset's table and how many acknowledged rows are not yet committed.
    pub async fn status(&self, name: &str) -> Result<DatasetStatus> {
        let state = self.dataset(name).await?;
        let unflushed = state.mem.lock().expect("memtable").table.rows as u64
            + state.flushing_rows.load(Ordering::SeqCst);
        Ok(DatasetStatus {
            table: state.table.clone(),
            unflushed_rows: unflushed,
        })
    }

    /// Opens a stream for `producer` (empty: no exactly-once) on a dataset. Its
    /// `last_sequence` is the producer's high-water mark, durable when this returns.
    pub async fn open_stream(&self, dataset: &str, producer: &str) -> Result<IngestStream> {
        validate_producer(producer)?;
        if *self.inner.closing.borrow() {
            return Err(Error::ShuttingDown);
        }
        let state = self.dataset(dataset).await?;
        if !producer.is_empty() {
            self.claim(&state, producer).await?;
        }
        let mut stream = IngestStream {
            ingester: self.clone(),
            state: state.clone(),
            producer: producer.to_string(),
            previous: None,
            last_sequence: 0,
        };
        let last_sequence = if producer.is_empty() {
            0
        } else {
            let accepted = state
                .mem
                .lock()
                .expect("memtable")
                .accepted
                .get(producer)
                .copied();
            // Whatever was accepted must be durable before it is reported.
            wait_durable(self.inner.wal.barrier()).await?;
            accepted.unwrap_or(0)
        };
        stream.last_sequence = last_sequence;
        Ok(stream)
    }

    /// Counts a stream of `producer` open on this server; with `producer_owner`, first
    /// makes sure this server holds the producer's claim, and takes in the marks other
    /// servers committed for it while it was theirs.
    async fn claim(&self, state: &Arc<DatasetState>, producer: &str) -> Result<()> {
        let Some(owner) = &self.inner.config.producer_owner else {
            *state
                .mem
                .lock()
                .expect("memtable")
                .streams
                .entry(producer.to_string())
                .or_default() += 1;
            return Ok(());
        };
        let _claims = state.claims.lock().await;
        let held = state
            .mem
            .lock()
            .expect("memtable")
            .claimed
            .contains(producer);
        let committed = if held {
            None
        } else {
            if let Err(e) = state.table.claim_producer(producer, owner).await {
                if matches!(e, TableError::ProducerClaimed { .. })
                    && let Err(r) = state.table.request_producer(producer, owner).await
                {
                    warn!(producer, error = %r, "could not ask for a producer held elsewhere");
                }
                return Err(e.into());
            }
            let head = state.table.head().await?;
            Some(head.producers.get(producer).copied().unwrap_or(0))
        };
        let mut mem = state.mem.lock().expect("memtable");
        if let Some(committed) = committed {
            mem.claimed.insert(producer.to_string());
            let hw = mem.accepted.entry(producer.to_string()).or_default();
            *hw = (*hw).max(committed);
        }
        *mem.streams.entry(producer.to_string()).or_default() += 1;
        Ok(())
    }

    /// Gives up the producers other servers asked for, once no stream of them is open
    /// here; their batches still in memory are committed first.
    async fn release_requested_producers(&self) {
        let Some(owner) = &self.inner.config.producer_owner else {
            return;
        };
        for state in self.states() {
            if state.mem.lock().expect("memtable").claimed.is_empty() {
                continue;
            }
            let requested = match state.table.requested_producers().await {
                Ok(r) => r,
                Err(e) => {
                    debug!(dataset = state.table.name(), error = %e, "cannot read producer requests");
                    continue;
                }
            };
            let idle = |mem: &DatasetMem| -> Vec<String> {
                requested
                    .iter()
                    .filter(|p| mem.claimed.contains(*p) && !mem.streams.contains_key(*p))
                    .cloned()
                    .collect()
            };
            if idle(&state.mem.lock().expect("memtable")).is_empty() {
                continue;
            }
            // Commit what the memtable holds (the requested producers' batches among
            // it), so the producer moves now rather than after the flush interval.
            if let Err(e) = self.flush_state(&state, true).await {
                debug!(dataset = state.table.name(), error = %e, "flush before a producer moves");
                continue;
            }
            // Holding the flush lock, no chunk is being committed outside the memtable;
            // holding the claims lock, no stream is opening.
            let _flush = state.flush_lock.lock().await;
            let _claims = state.claims.lock().await;
            let ready: Vec<String> = {
                let mem = state.mem.lock().expect("memtable");
                idle(&mem)
                    .into_iter()
                    .filter(|p| !mem.table.entries.iter().any(|e| &e.producer == p))
                    .collect()
            };
            for producer in ready {
                match state.table.release_producer(&producer, owner).await {
                    Ok(()) => {
                        state
                            .mem
                            .lock()
                            .expect("memtable")
                            .claimed
                            .remove(&producer);
                        info!(
                            dataset = state.table.name(),
                            producer, "producer released to another server"
                        );
                    }
                    Err(e) => warn!(
                        dataset = state.table.name(),
                        producer,
                        error = %e,
                        "could not release a producer's claim; retrying"
                    ),
                }
            }
        }
    }

    /// The most one batch is charged: a batch larger than the whole budget is charged the
    /// budget (it waits for an empty server instead of forever); the semaphore takes at
    /// most `u32::MAX` permits at once.
    fn max_charge(&self) -> usize {
        self.inner.config.memory_limit_bytes.min(u32::MAX as usize)
    }

    /// Waits for memory for `bytes` (at most `max_charge`) of unflushed rows.
    async fn reserve(&self, bytes: usize) -> Result<()> {
        let inner = &self.inner;
        let bytes = bytes.min(self.max_charge());
        if inner.memory.available_permits() < bytes {
            // Full: make sure flushes are under way, then wait for them.
            inner.wake_flusher.notify_one();
        }
        let permit = inner
            .memory
            .acquire_many(bytes as u32)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        permit.forget();
        let used = inner.memory_used.fetch_add(bytes as u64, Ordering::SeqCst) + bytes as u64;
        inner.memory_peak.fetch_max(used, Ordering::Relaxed);
        if used as usize >= inner.config.memory_limit_bytes / 2 {
            inner.wake_flusher.notify_one();
        }
        Ok(())
    }

    fn release(&self, bytes: usize) {
        self.inner
            .memory_used
            .fetch_sub(bytes as u64, Ordering::SeqCst);
        self.inner.memory.add_permits(bytes);
    }

    /// Commits the dataset's memtable now; returns the version that holds every row
    /// acknowledged before the call.
    pub async fn flush(&self, dataset: &str) -> Result<u64> {
        let state = self.dataset(dataset).await?;
        self.flush_state(&state, true).await
    }

    /// Commits what the dataset's memtable holds now: all of it (`all`), or only the
    /// first chunk of up to `flush_bytes` and `flush_rows`. Returns the version of the last commit, or the
    /// head when there was nothing to commit.
    async fn flush_state(&self, state: &Arc<DatasetState>, all: bool) -> Result<u64> {
        let _flush = state.flush_lock.lock().await;
        if state.dropped.load(Ordering::SeqCst) {
            return Err(Error::DatasetNotFound(state.table.name().to_string()));
        }
        // Entries logged after this point wait for the next flush.
        let boundary = {
            let mem = state.mem.lock().expect("memtable");
            mem.table.entries.back().map(|e| e.lsn)
        };
        let mut version = None;
        while let Some(chunk) = boundary.and_then(|b| {
            let mut mem = state.mem.lock().expect("memtable");
            let c = &self.inner.config;
            // A chunk's sort and encoding need about twice its size again: a quarter of
            // the memory budget at most keeps the whole process near the budget.
            let max_bytes = c.flush_bytes.min(c.memory_limit_bytes / 4);
            mem.table.take_front(max_bytes, c.flush_rows, b)
        }) {
            state
                .flushing_rows
                .store(chunk.rows as u64, Ordering::SeqCst);
            let started = Instant::now();
            let result = self.commit_chunk(state, &chunk).await;
            self.inner.flush_durations.record(started.elapsed());
            state.flushing_rows.store(0, Ordering::SeqCst);
            self.release(chunk.bytes);
            version = Some(result?);
            self.inner.wal.flushed(state.table.id(), chunk.max_lsn);
            self.inner.flushes.fetch_add(1, Ordering::Relaxed);
            self.inner
                .rows_flushed
                .fetch_add(chunk.rows as u64, Ordering::Relaxed);
            if !all {
                break;
            }
        }
        match version {
            Some(v) => Ok(v),
            None => Ok(state.table.head_version().await?),
        }
    }

    /// Writes a chunk as one version, retrying transient failures until it lands: its
    /// rows are acknowledged, so giving up would lose them.
    async fn commit_chunk(&self, state: &Arc<DatasetState>, mem: &Chunk) -> Result<u64> {
        let mut marks = mem.marks.clone();
        marks.insert(self.inner.config.wal_mark.clone(), mem.max_lsn);
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let head = state.table.head().await?;
                let batches = mem
                    .batches
                    .iter()
                    .map(|b| widen(&head.schema, b))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                state.table.write(&batches, marks.clone()).await
            };
            match attempt.await {
                Ok(WriteOutcome::Committed(info)) => {
                    debug!(
                        dataset = state.table.name(),
                        version = info.version,
                        rows = mem.rows,
                        "memtable flushed"
                    );
                    return Ok(info.version);
                }
                // A retry of a commit that had landed (its WAL mark is already there).
                Ok(WriteOutcome::Duplicate { head }) => return Ok(head),
                Err(_) if state.dropped.load(Ordering::SeqCst) => {
                    return Err(Error::DatasetNotFound(state.table.name().to_string()));
                }
                Err(e) => {
                    warn!(
                        dataset = state.table.name(),
                        rows = mem.rows,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "flush failed; the rows stay in memory and the WAL, retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Flushes memtables by size, age and memory pressure.
    async fn flusher(self, mut closing: watch::Receiver<bool>) {
        let tick = (self.inner.config.flush_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        // Producer requests from other servers are looked at about once a second.
        let mut requests_checked = Instant::now();
        while !*closing.borrow() {
            if requests_checked.elapsed() >= Duration::from_secs(1) {
                self.release_requested_producers().await;
                requests_checked = Instant::now();
            }
            let due = self.due_for_flush();
            if due.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = self.inner.wake_flusher.notified() => {}
                    _ = closing.changed() => return,
                }
                continue;
            }
            let flushes = due.into_iter().map(|state| {
                let this = self.clone();
                async move {
                    if let Err(e) = this.flush_state(&state, false).await
                        && !matches!(e, Error::DatasetNotFound(_))
                    {
                        warn!(dataset = state.table.name(), error = %e, "flush failed");
                    }
                }
            });
            futures::future::join_all(flushes).await;
        }
    }

    fn due_for_flush(&self) -> Vec<Arc<DatasetState>> {
        let config = &self.inner.config;
        let pressure =
            self.inner.memory_used.load(Ordering::SeqCst) as usize >= config.memory_limit_bytes / 2;
        let states = self.states();
        let mut due = Vec::new();
        let mut largest: Option<(usize, Arc<DatasetState>)> = None;
        for state in states {
            let mem = state.mem.lock().expect("memtable");
            let t = &mem.table;
            if t.entries.is_empty() {
                continue;
            }
            let old = t
                .oldest()
                .is_some_and(|o| o.elapsed() >= config.flush_interval);
            if old || t.rows >= config.flush_rows || t.bytes >= config.flush_bytes {
                due.push(state.clone());
            } else if pressure && largest.as_ref().is_none_or(|(b, _)| t.bytes > *b) {
                largest = Some((t.bytes, state.clone()));
            }
        }
        if due.is_empty() {
            due.extend(largest.map(|(_, s)| s));
        }
        due
    }

    /// Keeps the number of small segments per shard bounded, and removes the files of
    /// dropped datasets once their grace period is over.
    async fn compactor(self, mut closing: watch::Receiver<bool>) {
        let mut purged_at = Instant::now();
        let mut retained_at = Instant::now();
        while !*closing.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.compaction_interval) => {}
                _ = closing.changed() => return,
            }
            let retention = &self.inner.config.retention;
            if (retention.default.is_some() || !retention.datasets.is_empty())
                && retained_at.elapsed() >= retention.interval
            {
                retained_at = Instant::now();
                self.apply_retention().await;
            }
            if purged_at.elapsed() >= PURGE_INTERVAL {
                purged_at = Instant::now();
                if let Err(e) = self.inner.catalog.purge_dropped().await {
                    warn!(error = %e, "removing the files of dropped datasets failed; retried later");
                }
            }
            let states = self.states();
            for state in states {
                if *closing.borrow() {
                    return;
                }
                let started = Instant::now();
                let compacted = self.compact_if_needed(&state).await;
                if matches!(compacted, Ok(Some(_))) {
                    self.inner.compaction_durations.record(started.elapsed());
                }
                match compacted {
                    Ok(Some(v)) => {
                        self.inner.compactions.fetch_add(1, Ordering::Relaxed);
                        debug!(dataset = state.table.name(), version = v, "compacted");
                    }
                    Ok(None) => {}
                    Err(e) if e.is_conflict() => {
                        debug!(dataset = state.table.name(), error = %e, "compaction lost a race; later")
                    }
                    Err(e) => warn!(dataset = state.table.name(), error = %e, "compaction failed"),
                }
            }
        }
    }

    /// Vacuums every dataset that has a retention policy (see [`RetentionConfig`]).
    async fn apply_retention(&self) {
        let names = match self.inner.catalog.list_tables().await {
            Ok(names) => names,
            Err(e) => {
                warn!(error = %e, "listing datasets for retention failed; retried later");
                return;
            }
        };
        for name in names {
            let Some(policy) = self.inner.config.retention.policy(&name) else {
                continue;
            };
            let report = match self.inner.catalog.open_table(&name).await {
                Ok(table) => table.vacuum(policy).await,
                Err(e) => Err(e),
            };
            match report {
                Ok(r) if r.versions_removed > 0 || r.blobs_removed > 0 => info!(
                    dataset = name,
                    oldest_retained = r.oldest_retained,
                    versions_removed = r.versions_removed,
                    blobs_removed = r.blobs_removed,
                    bytes_removed = r.bytes_removed,
                    "retention applied"
                ),
                Ok(_) => {}
                Err(e) if e.is_conflict() => {
                    debug!(dataset = name, error = %e, "retention lost a race; later")
                }
                Err(strata_table::Error::DatasetNotFound(_)) => {}
                Err(e) => warn!(dataset = name, error = %e, "retention failed; retried later"),
            }
        }
    }

    async fn compact_if_needed(&self, state: &DatasetState) -> strata_table::Result<Option<u64>> {
        if state.dropped.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let head = state.table.head().await?;
        let small = self.inner.catalog.options().segment.target_bytes / 2;
        let mut per_shard: HashMap<u32, usize> = HashMap::new();
        for s in head.live_segments() {
            if s.meta.bytes < small {
                *per_shard.entry(s.meta.shard).or_default() += 1;
            }
        }
        if per_shard
            .values()
            .all(|n| *n < self.inner.config.compaction_trigger)
        {
            return Ok(None);
        }
        Ok(state.table.compact().await?.map(|v| v.version))
    }

    /// Stops taking writes and closes the log without flushing: what a crash leaves
    /// behind, minus the lost page cache. Acknowledged rows stay only in the log, for the
    /// next `open` to replay. For tests of recovery.
    pub async fn abandon(&self) -> Result<()> {
        self.inner.closing.send_replace(true);
        self.inner.memory.close();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks"));
        for t in tasks {
            t.abort();
        }
        self.inner.wal.close().await
    }

    /// Stops taking writes, flushes every memtable, syncs and closes the log. Nothing
    /// acknowledged is left only in the log afterwards.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.closing.send_replace(true);
        // Writers waiting for memory give up; the final flushes below free it anyway.
        self.inner.memory.close();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks"));
        for t in tasks {
            let _ = t.await;
        }
        let states = self.states();
        let mut first_error = None;
        for state in states {
            match self.flush_state(&state, true).await {
                Ok(_) | Err(Error::DatasetNotFound(_)) => {}
                Err(e) => {
                    warn!(dataset = state.table.name(), error = %e, "final flush failed; the WAL keeps the rows");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.inner.wal.close().await?;
        info!("ingester stopped");
        first_error.map_or(Ok(()), Err)
    }
}

impl IngestStream {
    /// The producer's high-water mark when the stream opened.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    pub fn dataset(&self) -> &str {
        self.state.table.name()
    }

    /// Validates and logs one batch. Returns once the batch is in the memtable and on
    /// its way to the log (after waiting for memory if the server is full); the
    /// returned future resolves when it is durable. A bad batch changes nothing.
    pub async fn submit(&mut self, sequence: u64, payload: Bytes) -> Result<PendingAck> {
        let arrived = Instant::now();
        let payload_bytes = payload.len() as u64;
        let ingester = &self.ingester;
        let inner = &ingester.inner;
        if *inner.closing.borrow() {
            return Err(Error::ShuttingDown);
        }
        if sequence > MAX_SEQUENCE {
            return Err(Error::SequenceOutOfRange(sequence));
        }
        if let Some(previous) = self.previous
            && sequence <= previous
        {
            return Err(Error::SequenceNotIncreasing { sequence, previous });
        }
        if payload.len() > inner.config.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                sequence,
                bytes: payload.len(),
                max: inner.config.max_batch_bytes,
            });
        }
        let state = &self.state;
        if state.dropped.load(Ordering::SeqCst) {
            return Err(Error::DatasetNotFound(state.table.name().to_string()));
        }
        let producer = self.producer.as_str();
        if !producer.is_empty() && self.is_duplicate(sequence) {
            self.previous = Some(sequence);
            return Ok(duplicate_ack(inner.wal.barrier(), sequence));
        }
        let batches = decode_ipc(sequence, &payload, inner.config.max_batch_bytes)?;
        let batches = conform_all(state, sequence, &batches)?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let bytes: usize = batches.iter().map(batch_bytes).sum();
        let bytes = bytes.min(ingester.max_charge());
        ingester.reserve(bytes).await?;
        if *inner.closing.borrow() {
            ingester.release(bytes);
            return Err(Error::ShuttingDown);
        }
        let durable = {
            let mut mem = state.mem.lock().expect("memtable");
            // Checked again under the lock: another stream of this producer may have
            // taken the number while this one waited for memory.
            let taken = !producer.is_empty()
                && mem.accepted.get(producer).is_some_and(|hw| *hw >= sequence);
            if taken || state.dropped.load(Ordering::SeqCst) {
                None
            } else {
                if !producer.is_empty() {
                    mem.accepted.insert(producer.to_string(), sequence);
                }
                // The LSN is taken and the entry queued under the memtable lock, so a
                // dataset's memtable and its log entries are in the same order and a
                // flush's WAL mark covers exactly the entries it holds.
                let (lsn, durable) = inner.wal.append(
                    state.table.id(),
                    state.table.name(),
                    producer,
                    sequence,
                    payload,
                );
                if push(
                    &mut mem.table,
                    &inner.config,
                    batches,
                    bytes,
                    producer,
                    sequence,
                    lsn,
                ) {
                    inner.wake_flusher.notify_one();
                }
                Some(durable)
            }
        };
        self.previous = Some(sequence);
        match durable {
            Some(durable) => {
                let inner = inner.clone();
                Ok(async move {
                    wait_durable(durable).await?;
                    inner.ack_latency.record(arrived.elapsed());
                    inner.acked_batches.fetch_add(1, Ordering::Relaxed);
                    inner.acked_rows.fetch_add(rows as u64, Ordering::Relaxed);
                    inner
                        .acked_bytes
                        .fetch_add(payload_bytes, Ordering::Relaxed);
                    Ok(Ack {
                        sequence,
                        duplicate: false,
                        rows: rows as u64,
                    })
                }
                .boxed())
            }
            None => {
                ingester.release(bytes);
                if state.dropped.load(Ordering::SeqCst) {
                    return Err(Error::DatasetNotFound(state.table.name().to_string()));
                }
                Ok(duplicate_ack(inner.wal.barrier(), sequence))
            }
        }
    }

    fn is_duplicate(&self, sequence: u64) -> bool {
        let mem = self.state.mem.lock().expect("memtable");
        mem.accepted
            .get(&self.producer)
            .is_some_and(|hw| *hw >= sequence)
    }
}

/// A duplicate is acknowledged once the original is durable: after the next sync.
fn duplicate_ack(barrier: Durable, sequence: u64) -> PendingAck {
    async move {
        wait_durable(barrier).await?;
        Ok(Ack {
            sequence,
            duplicate: true,
            rows: 0,
        })
    }
    .boxed()
}

async fn wait_durable(durable: Durable) -> Result<()> {
    durable
        .await
        .unwrap_or_else(|_| Err("WAL writer stopped".into()))
        .map_err(Error::Wal)
}

/// Adds an entry to a memtable; returns whether it is now due for a flush by size.
fn push(
    t: &mut Memtable,
    config: &IngestConfig,
    batches: Vec<RecordBatch>,
    bytes: usize,
    producer: &str,
    sequence: u64,
    lsn: u64,
) -> bool {
    let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    t.rows += rows;
    t.bytes += bytes;
    t.entries.push_back(Entry {
        batches: batches.into_iter().filter(|b| b.num_rows() > 0).collect(),
        rows,
        bytes,
        producer: producer.to_string(),
        sequence,
        lsn,
        at: Instant::now(),
    });
    t.rows >= config.flush_rows || t.bytes >= config.flush_bytes
}

/// Checks batches against the dataset's schema as this server knows it and puts their
/// columns in schema order.
fn conform_all(
    state: &DatasetState,
    sequence: u64,
    batches: &[RecordBatch],
) -> Result<Vec<RecordBatch>> {
    let schema = state.schema.read().expect("schema").clone();
    let mismatch = |e: TableError| match e {
        TableError::SchemaMismatch(reason) => Error::SchemaMismatch {
            dataset: state.table.name().to_string(),
            sequence,
            reason,
        },
        e => e.into(),
    };
    batches
        .iter()
        .map(|b| state.table.conform(&schema, b).map_err(mismatch))
        .collect()
}

/// Fills columns the schema gained since the batch was validated with nulls.
fn widen(schema: &SchemaRef, batch: &RecordBatch) -> strata_table::Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let given = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match given.index_of(f.name()) {
            Ok(i) => batch.column(i).clone(),
            Err(_) => new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl Ingester {
    /// Refreshes the cached schema of a dataset after a schema change (the server calls
    /// this after `ALTER TABLE ... ADD COLUMN`).
    pub async fn refresh_schema(&self, dataset: &str) -> Result<()> {
        let state = self.dataset(dataset).await?;
        let head = state.table.head().await?;
        *state.schema.write().expect("schema") = head.schema.clone();
        Ok(())
    }
}
