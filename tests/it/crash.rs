//! Crash test of the local store: writer processes killed with SIGKILL at random points
//! while they commit, many times over one directory.
//!
//! The parent test re-runs this test binary as a child (`writer_child`, a no-op unless
//! `STRATA_CRASH_DIR` is set) that opens (or creates) one dataset and commits in a loop:
//! mostly upserts numbered by a producer sequence, now and then a compaction or a
//! rollback. After every commit that returned it prints `CRASH acked ...` on stdout. The
//! parent kills it after a random delay, then reopens the store in-process and checks:
//!
//! - the dataset opens, its versions are exactly `1..=head`, head ≥ every acked version,
//!   and at most one version (the commit in flight at the kill) was never acked;
//! - every acked version reads back with exactly the rows its history implies (the row
//!   of an acked write is there, with its value), and so does the head;
//! - every write is committed at most once: committed sequence numbers are 0, 1, 2, …
//!   in version order. Each child resumes at the sequence after the last one it was told
//!   about, so a write whose commit landed unacked is sent again and must come back as a
//!   duplicate, not as a second commit; the head's producer mark is the last sequence.
//!
//! At the end, files a killed writer left in `tmp/` must not show in any listing, every
//! listed blob and record must read whole, and once aged past the stale limit a fresh
//! `LocalStore::open` must remove them without touching the data.
//!
//! `STRATA_CRASH_TRIALS` sets the number of trials (default 30), `STRATA_CRASH_SEED` the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_storage::{BlobStore, LocalStore, MetaStore};
use strata_table::{
    Catalog, Error as TableError, Operation, Table, TableOptions, VersionSpec, WriteOutcome,
};
use strata_types::{DatasetName, DatasetSpec};

const DATASET: &str = "crash_upserts";
const PRODUCER: &str = "crash";
const CHILD_TEST: &str = "crash::writer_child";
const ENV_DIR: &str = "STRATA_CRASH_DIR";
const ENV_CHILD_SEED: &str = "STRATA_CRASH_CHILD_SEED";
const ENV_NEXT_SEQ: &str = "STRATA_CRASH_NEXT_SEQ";
const ENV_TRIALS: &str = "STRATA_CRASH_TRIALS";
const ENV_SEED: &str = "STRATA_CRASH_SEED";
const DEFAULT_TRIALS: usize = 30;
/// A child stops (and fails) after this long, should the parent die without killing it.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// How long the parent waits for a child's start or ready report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// `LocalStore::open` removes tmp files older than an hour.
const STALE_AGE: Duration = Duration::from_secs(2 * 60 * 60);
const SIGKILL: i32 = 9;

/// A small checkpoint interval, so kills also land between a commit and its checkpoint.
fn options() -> TableOptions {
    TableOptions {
        checkpoint_interval: 10,
        ..TableOptions::default()
    }
}

fn catalog(store: &LocalStore, options: TableOptions) -> Catalog {
    Catalog::with_options(Arc::new(store.clone()), Arc::new(store.clone()), options)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// Partition key `k` (derived from `t`), row key `t`: writes are upserts.
fn spec() -> DatasetSpec {
    DatasetSpec::new(
        DatasetName::new(DATASET).unwrap(),
        schema(),
        vec!["k".into()],
        vec!["t".into()],
        2,
    )
    .unwrap()
}

fn key_of(t: i64) -> String {
    format!("k{}", t % 7)
}

/// The rows `(t, v)` that write number `seq` upserts: its own row `(seq, seq)`, and every
/// fourth write also overwrites the row of write `seq - 3`, so upserts replace live rows.
fn rows_of_write(seq: u64) -> Vec<(i64, i64)> {
    let s = i64::try_from(seq).unwrap();
    let mut rows = vec![(s, s)];
    if s >= 3 && s % 4 == 3 {
        rows.push((s - 3, s));
    }
    rows
}

fn batch_of_write(seq: u64) -> RecordBatch {
    let rows = rows_of_write(seq);
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(t, _)| key_of(*t)),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(t, _)| *t))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, v)| *v))),
        ],
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// The child: a writer that runs until it is killed.

/// Runs as the writer when the crash test starts this binary with `STRATA_CRASH_DIR`;
/// in a normal test run it returns at once.
#[test]
fn writer_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    let seed = env_u64(ENV_CHILD_SEED).expect("child: no seed");
    let next_seq = env_u64(ENV_NEXT_SEQ).expect("child: no next sequence number");
    report("start");
    let store = LocalStore::open(PathBuf::from(dir)).expect("child: open store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(Box::pin(write_until_killed(store, seed, next_seq)));
    panic!("writer child ran for {CHILD_LIFETIME:?} without being killed");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|s| s.parse().expect(name))
}

/// One line on stdout, flushed at once: the parent reads it through a pipe.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("CRASH {line}\n").as_bytes())
        .and_then(|()| out.flush())
        .expect("child: write to stdout");
}

async fn open_or_create(catalog: &Catalog) -> Table {
    match catalog.open_table(DATASET).await {
        Ok(t) => t,
        Err(TableError::DatasetNotFound(_)) => match catalog.create_table(spec()).await {
            Ok(t) => t,
            // Cannot happen with one writer at a time, but is what a racing creator sees.
            Err(TableError::DatasetExists(_)) => catalog.open_table(DATASET).await.unwrap(),
            Err(e) => panic!("child: create dataset: {e}"),
        },
        Err(e) => panic!("child: open dataset: {e}"),
    }
}

async fn write_until_killed(store: LocalStore, seed: u64, mut seq: u64) {
    let catalog = catalog(&store, options());
    let table = open_or_create(&catalog).await;
    let head = table.head_version().await.expect("child: head version");
    report(&format!("ready {head}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let until = Instant::now() + CHILD_LIFETIME;
    while Instant::now() < until {
        match rng.random_range(0..100) {
            0..6 => match table.compact().await.expect("child: compact") {
                Some(info) => report(&format!("acked {} compact", info.version)),
                None => report("nocompact"),
            },
            6..12 => {
                let head = table.head_version().await.expect("child: head version");
                if head >= 3 {
                    // Back by one to three versions, never to the empty version 1.
                    let to = rng.random_range(head.saturating_sub(3).max(2)..head);
                    let info = table
                        .rollback(&VersionSpec::Version(to))
                        .await
                        .expect("child: rollback");
                    report(&format!("acked {} rollback {to}", info.version));
                }
            }
            _ => {
                let marks = BTreeMap::from([(PRODUCER.to_string(), seq)]);
                match table.write(&[batch_of_write(seq)], marks).await {
                    Ok(WriteOutcome::Committed(info)) => {
                        report(&format!("acked {} write {seq}", info.version));
                    }
                    Ok(WriteOutcome::Duplicate { head }) => report(&format!("dup {seq} {head}")),
                    Err(e) => panic!("child: write {seq}: {e}"),
                }
                seq += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent: runs children, kills them, checks the store.

/// A line a child reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Report {
    Start,
    Ready {
        head: u64,
    },
    Write {
        version: u64,
        seq: u64,
    },
    /// The write of `seq` was found already committed; `head` was the head then.
    Dup {
        seq: u64,
        head: u64,
    },
    Compact {
        version: u64,
    },
    NoCompact,
    Rollback {
        version: u64,
        to: u64,
    },
}

impl Report {
    /// The version this report acknowledges as committed.
    fn acked_version(&self) -> Option<u64> {
        match *self {
            Report::Write { version, .. }
            | Report::Compact { version }
            | Report::Rollback { version, .. } => Some(version),
            _ => None,
        }
    }
}

/// Parses one line of child output. Only whole lines (ending in `\n`) count; lines
/// without a report (the test harness's own output) give `None`.
fn parse_report(line: &str) -> Option<Report> {
    let body = line.strip_suffix('\n')?;
    // The harness may print "test crash::writer_child ... " without a newline first.
    let at = body.find("CRASH ")?;
    let words: Vec<&str> = body[at + "CRASH ".len()..].split(' ').collect();
    let num = |s: &str| -> u64 {
        s.parse()
            .unwrap_or_else(|_| panic!("bad number in report {line:?}"))
    };
    Some(match words.as_slice() {
        ["start"] => Report::Start,
        ["ready", head] => Report::Ready { head: num(head) },
        ["acked", v, "write", seq] => Report::Write {
            version: num(v),
            seq: num(seq),
        },
        ["dup", seq, head] => Report::Dup {
            seq: num(seq),
            head: num(head),
        },
        ["acked", v, "compact"] => Report::Compact { version: num(v) },
        ["nocompact"] => Report::NoCompact,
        ["acked", v, "rollback", to] => Report::Rollback {
            version: num(v),
            to: num(to),
        },
        _ => panic!("unknown report {line:?}"),
    })
}

/// When to kill a child: a delay after its `start` (so the kill may land while it opens
/// the store or creates the dataset) or after its `ready` (so it lands among commits).
#[derive(Clone, Copy, Debug)]
enum KillPlan {
    AfterStart(Duration),
    AfterReady(Duration),
}

/// Kills the child if the parent panics first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct ChildRun {
    reports: Vec<Report>,
    /// From the `start` report to the `ready` report, if the child got that far.
    startup: Option<Duration>,
    killed_after_ready: bool,
}

/// Starts a writer child, kills it as planned and returns what it reported.
fn run_child(exe: &Path, dir: &Path, seed: u64, next_seq: u64, plan: KillPlan) -> ChildRun {
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_CHILD_SEED, seed.to_string())
        .env(ENV_NEXT_SEQ, next_seq.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let out_reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (wanted, delay) = match plan {
        KillPlan::AfterStart(d) => (Report::Start, d),
        KillPlan::AfterReady(d) => (Report::Ready { head: 0 }, d),
    };
    let mut lines = Vec::new();
    let mut started = None;
    let mut ready = None;
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let r = parse_report(&line);
                lines.push(line);
                match r {
                    Some(Report::Start) => started = Some(at),
                    Some(Report::Ready { .. }) => ready = Some(at),
                    _ => {}
                }
                let reached = match wanted {
                    Report::Start => started.is_some(),
                    _ => ready.is_some(),
                };
                if reached {
                    break;
                }
            }
            Err(e) => {
                let _ = child.0.kill();
                let status = child.0.wait();
                drop(child);
                let err = err_reader.join().unwrap_or_default();
                let why = match e {
                    RecvTimeoutError::Timeout => "stalled",
                    RecvTimeoutError::Disconnected => "exited",
                };
                panic!(
                    "writer child {why} before reporting {wanted:?} ({status:?})\nstdout: {lines:?}\nstderr: {err}"
                );
            }
        }
    }
    thread::sleep(delay);
    let _ = child.0.kill();
    let status: ExitStatus = child.0.wait().expect("wait for the writer child");
    out_reader.join().expect("stdout reader");
    lines.extend(rx.try_iter().map(|(at, line)| {
        if ready.is_none() && matches!(parse_report(&line), Some(Report::Ready { .. })) {
            ready = Some(at);
        }
        line
    }));
    let err = err_reader.join().unwrap_or_default();
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "the writer child died before it was killed ({status:?})\nstdout: {lines:?}\nstderr: {err}"
    );
    ChildRun {
        reports: lines.iter().filter_map(|l| parse_report(l)).collect(),
        startup: started.zip(ready).map(|(s, r)| r - s),
        killed_after_ready: ready.is_some(),
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

/// What one version did, from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rec {
    Create,
    Write(u64),
    Compact,
    Rollback(u64),
}

/// The dataset's history as `list_versions` reports it, checked for shape on load.
struct History {
    /// Index `v` holds version `v`; index 0 is unused.
    recs: Vec<Rec>,
    /// The version that committed each write, by sequence number.
    seq_version: BTreeMap<u64, u64>,
}

impl History {
    async fn load(table: &Table, head: u64, ctx: &str) -> History {
        let infos = table
            .list_versions()
            .await
            .unwrap_or_else(|e| panic!("{ctx}: list_versions: {e}"));
        let numbers: Vec<u64> = infos.iter().map(|i| i.version).collect();
        assert!(
            numbers.iter().copied().eq(1..=head),
            "{ctx}: the versions are not exactly 1..={head}: {numbers:?}"
        );
        let mut recs = vec![Rec::Create];
        let mut seq_version = BTreeMap::new();
        let mut last_seq: Option<u64> = None;
        for info in &infos {
            let v = info.version;
            let mark = info.producers.get(PRODUCER).copied();
            let rec = match &info.operation {
                Operation::Create if v == 1 => Rec::Create,
                Operation::Upsert => {
                    let seq = mark.unwrap_or_else(|| {
                        panic!("{ctx}: upsert version {v} has no producer mark: {info:?}")
                    });
                    assert_eq!(info.producers.len(), 1, "{ctx}: version {v}: {info:?}");
                    // Writes are sent in order, each until it commits once: so committed
                    // sequence numbers are 0, 1, 2, … with no repeat and no gap.
                    let expected = last_seq.map_or(0, |s| s + 1);
                    assert_eq!(
                        seq, expected,
                        "{ctx}: version {v} commits write {seq}, but the write after {last_seq:?} \
                         is {expected}: a write was committed twice or lost"
                    );
                    assert_eq!(
                        info.rows_added,
                        rows_of_write(seq).len() as u64,
                        "{ctx}: rows added by version {v}: {info:?}"
                    );
                    last_seq = Some(seq);
                    seq_version.insert(seq, v);
                    Rec::Write(seq)
                }
                Operation::Compact { .. } => Rec::Compact,
                Operation::Rollback { to } => {
                    assert!((1..v).contains(to), "{ctx}: version {v} rolls back to {to}");
                    // A rollback restores rows, not producer marks.
                    assert_eq!(
                        mark, last_seq,
                        "{ctx}: rollback version {v} records producer mark {mark:?}, \
                         the last committed write is {last_seq:?}"
                    );
                    Rec::Rollback(*to)
                }
                other => panic!("{ctx}: version {v} has unexpected operation {other:?}"),
            };
            recs.push(rec);
        }
        History { recs, seq_version }
    }

    fn rec(&self, v: u64) -> Option<Rec> {
        self.recs.get(usize::try_from(v).unwrap()).copied()
    }

    /// The rows `t -> v` version `v` must hold: the writes of its lineage (back through
    /// rollbacks to their targets), applied in order.
    fn content(&self, v: u64) -> BTreeMap<i64, i64> {
        let mut lineage = Vec::new();
        let mut cur = v;
        loop {
            match self.rec(cur).expect("version in history") {
                Rec::Create => break,
                Rec::Write(seq) => {
                    lineage.push(seq);
                    cur -= 1;
                }
                Rec::Compact => cur -= 1,
                Rec::Rollback(to) => cur = to,
            }
        }
        let mut rows = BTreeMap::new();
        for &seq in lineage.iter().rev() {
            rows.extend(rows_of_write(seq));
        }
        rows
    }

    fn last_seq(&self) -> Option<u64> {
        self.seq_version.keys().next_back().copied()
    }
}

/// The rows `t -> v` of a version, checking every key column and that no `t` repeats.
async fn rows_at(table: &Table, at: &VersionSpec, ctx: &str) -> BTreeMap<i64, i64> {
    let snap = table
        .snapshot(at)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: snapshot at {at:?}: {e}"));
    if let VersionSpec::Version(v) = at {
        assert_eq!(snap.version(), *v, "{ctx}: snapshot version");
    }
    let batch = snap
        .read_all()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: read at {at:?} (version {}): {e}", snap.version()));
    assert_eq!(
        batch.num_rows() as u64,
        snap.num_rows(),
        "{ctx}: rows read at {at:?} differ from the manifest's count"
    );
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    let (k, t, v) = (col("k"), col("t"), col("v"));
    let k = k.as_any().downcast_ref::<StringArray>().unwrap();
    let t = t.as_any().downcast_ref::<Int64Array>().unwrap();
    let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(k.null_count() + t.null_count() + v.null_count(), 0);
    let mut rows = BTreeMap::new();
    for i in 0..batch.num_rows() {
        assert_eq!(k.value(i), key_of(t.value(i)), "{ctx}: row {i} at {at:?}");
        if let Some(old) = rows.insert(t.value(i), v.value(i)) {
            panic!(
                "{ctx}: at {at:?} (version {}) t={} appears twice (v={old} and v={})",
                snap.version(),
                t.value(i),
                v.value(i)
            );
        }
    }
    rows
}

/// Compares rows read with rows expected, naming the first differences.
fn assert_rows(got: &BTreeMap<i64, i64>, want: &BTreeMap<i64, i64>, what: &str) {
    if got == want {
        return;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(t, _)| !got.contains_key(t))
        .take(10)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(t, _)| !want.contains_key(t))
        .take(10)
        .collect();
    let wrong: Vec<_> = want
        .iter()
        .filter_map(|(t, v)| got.get(t).filter(|g| *g != v).map(|g| (t, v, g)))
        .take(10)
        .collect();
    panic!(
        "{what}: {} rows read, {} expected; missing (t, v): {missing:?}; unexpected: {extra:?}; \
         wrong values (t, expected, got): {wrong:?}",
        got.len(),
        want.len()
    );
}

fn t_of(seq: u64) -> i64 {
    i64::try_from(seq).unwrap()
}

/// What the parent knows across trials.
#[derive(Debug, Default)]
struct Known {
    /// The newest version a child acked.
    acked_version: u64,
    /// Every version a child acked.
    acked: BTreeSet<u64>,
    /// The head the last check found.
    head: u64,
    /// Where the next child starts writing: one past the last write a child acked or
    /// found already committed. A write in flight at a kill is sent again.
    next_seq: u64,
    /// The dataset existed at a check: it must from then on.
    dataset_exists: bool,
}

#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    writes: u64,
    compactions: u64,
    rollbacks: u64,
    kills_mid_commit: u64,
    kills_in_startup: u64,
    landed_unacked: u64,
    duplicates: u64,
}

/// Checks the store after one child was killed, and updates what the parent knows.
async fn check_trial(
    store: &LocalStore,
    run: &ChildRun,
    start_seq: u64,
    known: &mut Known,
    tally: &mut Tally,
    ctx: &str,
) {
    let ready = run.reports.iter().find_map(|r| match r {
        Report::Ready { head } => Some(*head),
        _ => None,
    });
    let table = match catalog(store, options()).open_table(DATASET).await {
        Ok(t) => t,
        // The child died before it had created the dataset.
        Err(TableError::DatasetNotFound(_)) if !known.dataset_exists && ready.is_none() => return,
        Err(e) => panic!("{ctx}: cannot open the dataset after the kill: {e}"),
    };
    if let Some(h) = ready {
        // Nobody wrote between the last check and the child's start.
        assert_eq!(h, known.head.max(1), "{ctx}: head the child found at start");
    }
    let head = table
        .head_version()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: head_version: {e}"));
    let acked_now = run.reports.iter().filter_map(Report::acked_version).max();
    let acked = known.acked_version.max(acked_now.unwrap_or(0));
    assert!(
        head >= acked,
        "{ctx}: head is version {head}, but version {acked} was acked"
    );
    // One commit at most was in flight when the child died.
    let seen = known
        .head
        .max(acked_now.unwrap_or(0))
        .max(ready.unwrap_or(0));
    assert!(
        head <= seen + 1,
        "{ctx}: head is version {head}, but only versions up to {seen} were acked or seen, \
         and a killed writer has one commit in flight at most"
    );
    if head > seen {
        tally.landed_unacked += 1;
    }
    let history = History::load(&table, head, ctx).await;

    let mut next_seq = known.next_seq;
    for r in &run.reports {
        match *r {
            Report::Start | Report::Ready { .. } | Report::NoCompact => {}
            Report::Write { version, seq } => {
                assert_eq!(
                    history.rec(version),
                    Some(Rec::Write(seq)),
                    "{ctx}: write {seq} was acked as version {version}"
                );
                let rows = rows_at(&table, &VersionSpec::Version(version), ctx).await;
                assert_eq!(
                    rows.get(&t_of(seq)),
                    Some(&t_of(seq)),
                    "{ctx}: acked write {seq} (version {version}) lacks its row t={seq}, v={seq}"
                );
                let what = format!("{ctx}: version {version} (acked write {seq})");
                assert_rows(&rows, &history.content(version), &what);
                tally.writes += 1;
                next_seq = seq + 1;
            }
            Report::Dup { seq, head: h } => {
                assert_eq!(
                    seq, start_seq,
                    "{ctx}: write {seq} came back as a duplicate, but only the first write of \
                     a child ({start_seq}) can have been committed before"
                );
                let v = history.seq_version.get(&seq).copied().unwrap_or_else(|| {
                    panic!(
                        "{ctx}: write {seq} came back as a duplicate (head {h}), but no version \
                         commits it: the write is lost"
                    )
                });
                assert!(
                    !known.acked.contains(&v) && v <= h,
                    "{ctx}: duplicate write {seq} is version {v}, which was acked before (or \
                     is above the head {h} the child saw)"
                );
                tally.duplicates += 1;
                next_seq = seq + 1;
            }
            Report::Compact { version } => {
                assert_eq!(
                    history.rec(version),
                    Some(Rec::Compact),
                    "{ctx}: version {version}"
                );
                let rows = rows_at(&table, &VersionSpec::Version(version), ctx).await;
                let what = format!("{ctx}: version {version} (acked compaction)");
                assert_rows(&rows, &history.content(version), &what);
                tally.compactions += 1;
            }
            Report::Rollback { version, to } => {
                assert_eq!(
                    history.rec(version),
                    Some(Rec::Rollback(to)),
                    "{ctx}: version {version}"
                );
                let rows = rows_at(&table, &VersionSpec::Version(version), ctx).await;
                let what = format!("{ctx}: version {version} (acked rollback to {to})");
                assert_rows(&rows, &history.content(version), &what);
                tally.rollbacks += 1;
            }
        }
    }

    let rows = rows_at(&table, &VersionSpec::Head, ctx).await;
    assert_rows(
        &rows,
        &history.content(head),
        &format!("{ctx}: head {head}"),
    );
    let mark = table
        .head()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: head manifest: {e}"))
        .producers
        .get(PRODUCER)
        .copied();
    assert_eq!(
        mark,
        history.last_seq(),
        "{ctx}: producer mark at head {head}"
    );
    if let Some(last) = next_seq.checked_sub(1) {
        assert!(
            mark >= Some(last),
            "{ctx}: producer mark at head is {mark:?}, but write {last} was acked"
        );
    }
    known
        .acked
        .extend(run.reports.iter().filter_map(Report::acked_version));
    known.acked_version = acked;
    known.head = head;
    known.next_seq = next_seq;
    known.dataset_exists = true;
}

struct FinalTally {
    tmp_leftovers: usize,
    /// Leftovers that were also linked as a record.
    tmp_linked: usize,
    interrupted_creations: usize,
    blobs: usize,
    records: usize,
    head: u64,
    rows: usize,
}

/// After the last kill: what killed writers left in `tmp/` is invisible, everything
/// listed reads whole, stale leftovers go at the next open, and the data reads in full.
async fn check_final(dir: &Path, known: &Known, ctx: &str) -> FinalTally {
    let tmp_dir = dir.join("tmp");
    let tmp_files = || -> Vec<PathBuf> {
        fs::read_dir(&tmp_dir)
            .expect("read tmp dir")
            .map(|e| e.expect("tmp dir entry").path())
            .collect()
    };
    let leftovers = tmp_files();
    // A kill between `link` and `unlink` in `put_if_absent` leaves the tmp name of a
    // committed record: removing it must leave the record.
    let linked = leftovers
        .iter()
        .filter(|f| fs::metadata(f).is_ok_and(|m| m.nlink() > 1))
        .count();

    let store = LocalStore::open(dir).unwrap_or_else(|e| panic!("{ctx}: open store: {e}"));
    let blobs = BlobStore::list(&store, "")
        .await
        .unwrap_or_else(|e| panic!("{ctx}: list blobs: {e}"));
    for b in &blobs {
        assert!(
            !b.path.split('/').any(|s| s.starts_with(".tmp")),
            "{ctx}: a tmp file is listed as blob {}",
            b.path
        );
        let bytes = BlobStore::get(&store, &b.path)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: listed blob {} does not read: {e}", b.path));
        assert_eq!(bytes.len() as u64, b.size, "{ctx}: size of blob {}", b.path);
    }
    let keys = MetaStore::list(&store, "")
        .await
        .unwrap_or_else(|e| panic!("{ctx}: list records: {e}"));
    for k in &keys {
        assert!(
            !k.split('/').any(|s| s.starts_with(".tmp")),
            "{ctx}: a tmp file is listed as record {k}"
        );
        let value = MetaStore::get(&store, k)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: listed record {k} does not read: {e}"));
        assert!(value.is_some(), "{ctx}: listed record {k} is missing");
    }
    // A creation killed between its version 1 and its name leaves a table id that only
    // has that version.
    let mut ids: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for k in &keys {
        if let Some((id, rest)) = k.strip_prefix("tables/").and_then(|r| r.split_once('/')) {
            ids.entry(id).or_default().push(rest);
        }
    }
    let orphans: Vec<_> = ids
        .iter()
        .filter(|(_, rest)| **rest == ["versions/00000000000000000001"])
        .collect();
    assert_eq!(
        orphans.len() + 1,
        ids.len(),
        "{ctx}: table ids in the store besides the dataset's: {:?}",
        ids.keys()
    );

    // Aged past the stale limit, leftovers go at the next open, and nothing else does
    // (a leftover may be the other link of a committed record).
    let old = SystemTime::now() - STALE_AGE;
    for f in &leftovers {
        File::options()
            .write(true)
            .open(f)
            .and_then(|file| file.set_modified(old))
            .unwrap_or_else(|e| panic!("{ctx}: age {}: {e}", f.display()));
    }
    drop(store);
    let store = LocalStore::open(dir).unwrap_or_else(|e| panic!("{ctx}: reopen store: {e}"));
    let remaining = tmp_files();
    assert!(
        remaining.is_empty(),
        "{ctx}: open left stale tmp files: {remaining:?}"
    );
    let blob_paths = |list: &[strata_storage::BlobMeta]| -> Vec<String> {
        list.iter().map(|b| b.path.clone()).collect()
    };
    assert_eq!(
        blob_paths(&BlobStore::list(&store, "").await.unwrap()),
        blob_paths(&blobs),
        "{ctx}: blobs changed when stale tmp files were removed"
    );
    assert_eq!(
        MetaStore::list(&store, "").await.unwrap(),
        keys,
        "{ctx}: records changed when stale tmp files were removed"
    );

    // A full read, with the writers' checkpoint interval and with the default one.
    let mut rows = 0;
    for opts in [options(), TableOptions::default()] {
        let interval = opts.checkpoint_interval;
        let ctx = format!("{ctx}, final read, checkpoint interval {interval}");
        let table = catalog(&store, opts)
            .open_table(DATASET)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: open dataset: {e}"));
        let head = table.head_version().await.unwrap();
        assert_eq!(head, known.head, "{ctx}: head");
        let history = History::load(&table, head, &ctx).await;
        let got = rows_at(&table, &VersionSpec::Head, &ctx).await;
        let want = history.content(head);
        assert_rows(&got, &want, &format!("{ctx}: head {head}"));
        rows = got.len();
        // Every write at most once, and each t at most once (upserts).
        let distinct: BTreeSet<i64> = got.keys().copied().collect();
        assert_eq!(distinct.len(), rows);
        let step = (head / 40).max(1);
        for v in (1..=head).step_by(usize::try_from(step).unwrap()) {
            let got = rows_at(&table, &VersionSpec::Version(v), &ctx).await;
            assert_rows(&got, &history.content(v), &format!("{ctx}: version {v}"));
        }
    }
    FinalTally {
        tmp_leftovers: leftovers.len(),
        tmp_linked: linked,
        interrupted_creations: orphans.len(),
        blobs: blobs.len(),
        records: keys.len(),
        head: known.head,
        rows,
    }
}

#[test]
fn killed_writers_leave_a_consistent_store() {
    let trials: usize = std::env::var(ENV_TRIALS)
        .ok()
        .map_or(DEFAULT_TRIALS, |s| s.parse().expect(ENV_TRIALS));
    let seed = env_u64(ENV_SEED).unwrap_or_else(|| rand::rng().random());
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut known = Known::default();
    let mut tally = Tally::default();
    // How long a child takes from start to ready; a guess until one reports.
    let mut startup = Duration::from_millis(30);
    for trial in 0..trials {
        let ctx = format!("trial {trial} (seed {seed})");
        // The first trials and some later ones kill while the child opens the store
        // (and, the first time, creates the dataset); the rest among commits.
        let plan = if trial < 3 || rng.random_bool(0.15) {
            let max = u64::try_from(startup.as_micros()).unwrap() * 5 / 4;
            KillPlan::AfterStart(Duration::from_micros(rng.random_range(0..=max)))
        } else {
            KillPlan::AfterReady(Duration::from_millis(rng.random_range(5..=150)))
        };
        let start_seq = known.next_seq;
        let run = run_child(&exe, dir.path(), rng.random(), start_seq, plan);
        if let Some(s) = run.startup {
            startup = s;
        }
        if run.killed_after_ready {
            tally.kills_mid_commit += 1;
        } else {
            tally.kills_in_startup += 1;
        }
        let store =
            LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{ctx}: open store: {e}"));
        rt.block_on(Box::pin(check_trial(
            &store, &run, start_seq, &mut known, &mut tally, &ctx,
        )));
        tally.trials += 1;
    }
    assert!(
        tally.writes > 0,
        "no write was acked in {trials} trials: the test exercised nothing"
    );
    let ctx = format!("after {trials} trials (seed {seed})");
    let fin = rt.block_on(Box::pin(check_final(dir.path(), &known, &ctx)));
    let t = &tally;
    eprintln!(
        "crash test: {} trials in {:.1}s (seed {seed}): {} commits acked ({} writes, {} \
         compactions, {} rollbacks); {} kills mid-commit, {} during startup; {} commits landed \
         unacked, {} resent writes deduplicated; {} dataset creations interrupted; {} tmp files \
         left behind ({} of them linked as records; all removed once stale); head v{}, {} rows, {} blobs, {} records",
        t.trials,
        started.elapsed().as_secs_f64(),
        t.writes + t.compactions + t.rollbacks,
        t.writes,
        t.compactions,
        t.rollbacks,
        t.kills_mid_commit,
        t.kills_in_startup,
        t.landed_unacked,
        t.duplicates,
        fin.interrupted_creations,
        fin.tmp_leftovers,
        fin.tmp_linked,
        fin.head,
        fin.rows,
        fin.blobs,
        fin.records,
    );
}
