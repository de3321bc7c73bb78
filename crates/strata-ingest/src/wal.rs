//! The write-ahead log: one directory of numbered files, appended by one thread that
//! group-commits — it writes every entry queued while the previous `fdatasync` ran and
//! syncs once for all of them, then wakes their waiters.
//!
//! ```text
//! file  wal-<n:020>.log = header (magic "STRWAL01", n: u64 LE) entry*
//! entry = len: u32 LE | crc32c(body): u32 LE | body
//! body  = lsn: u64 | table id: u16 len + utf8 | dataset: u16 len + utf8
//!         | producer: u16 len + utf8 | sequence: u64 | Arrow IPC stream (rest)
//! ```
//!
//! Invariants:
//! - An entry's waiter is woken with `Ok` only after the file holding it was synced.
//! - After a failed write or sync the log is poisoned: every later request fails, nothing
//!   more is acknowledged (the page cache may have dropped the failed pages; retrying the
//!   sync could falsely succeed). A restart replays what is on disk. Failing to start
//!   the next file (no file descriptor free, say) poisons nothing: the current file
//!   grows and the roll is retried.
//! - A file is deleted only when every entry in it is covered by its table's committed
//!   WAL mark (or its table was dropped); the active file is deleted only at a clean close.
//! - LSNs increase across restarts: the caller raises the next LSN above every mark it
//!   knows of committed tables (`raise_next_lsn`).
//! - On open, a torn tail of the newest file (a crash mid-append) is cut off; damage
//!   anywhere else is reported as `CorruptWal` rather than skipped.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;

use bytes::{Buf, Bytes};
use strata_storage::DirLock;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"STRWAL01";
const FILE_HEADER: usize = 16;
const ENTRY_HEADER: usize = 8;
/// Entries larger than this are not accepted (the ingester's batch limit is far lower).
const MAX_ENTRY: usize = 1 << 30;
/// The writer stops gathering a group at this many bytes and syncs.
const GROUP_BYTES: usize = 32 << 20;

/// One logged write.
#[derive(Clone, Debug)]
pub struct WalEntry {
    pub lsn: u64,
    pub table_id: String,
    pub dataset: String,
    pub producer: String,
    pub sequence: u64,
    /// The batch as the client sent it: an Arrow IPC stream.
    pub payload: Bytes,
}

/// What a waiter learns: durable, or the log failed.
pub type Durable = oneshot::Receiver<Result<(), String>>;

enum Cmd {
    Append {
        table_id: String,
        lsn: u64,
        header: Vec<u8>,
        payload: Bytes,
        done: oneshot::Sender<Result<(), String>>,
    },
    Barrier(oneshot::Sender<Result<(), String>>),
    /// Every entry of the table with an LSN at or below this is committed to the table.
    Flushed {
        table_id: String,
        lsn: u64,
    },
    Close(oneshot::Sender<Result<(), String>>),
}

/// The write-ahead log. Cheap to share; all writes go through one background thread.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_lsn: AtomicU64,
    /// Held until the log is closed: one writer per directory.
    lock: Mutex<Option<DirLock>>,
    /// Durations of the writer's `fdatasync` calls.
    syncs: std::sync::Arc<crate::metrics::Histogram>,
}

/// The contents of the log found at open, in log order.
#[derive(Debug, Default)]
pub struct Replay {
    pub entries: Vec<WalEntry>,
    pub files: usize,
    pub bytes: u64,
    /// Bytes cut off the newest file's torn tail.
    pub truncated: u64,
}

impl Wal {
    /// The durations of the log's `fdatasync` calls so far.
    pub fn syncs(&self) -> crate::metrics::HistogramSnapshot {
        self.syncs.snapshot()
    }

    /// Opens (creating if needed) the log in `dir`, reads every entry in it and starts
    /// the writer on a new file. Files roll over at about `file_bytes`.
    pub fn open(dir: &Path, file_bytes: u64) -> Result<(Wal, Replay)> {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating WAL directory", dir, e))?;
        let lock = DirLock::acquire(dir).map_err(|e| Error::Locked(e.to_string()))?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("listing WAL directory", dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing WAL directory", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("wal-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut replay = Replay::default();
        let mut old_files = BTreeMap::new();
        let mut max_lsn = 0;
        for (i, n) in numbers.iter().enumerate() {
            let path = file_path(dir, *n);
            let last = i + 1 == numbers.len();
            let (entries, len, truncated) = read_file(&path, *n, last)?;
            replay.files += 1;
            replay.bytes += len;
            replay.truncated += truncated;
            let mut tables: HashMap<String, u64> = HashMap::new();
            for e in &entries {
                max_lsn = max_lsn.max(e.lsn);
                let m = tables.entry(e.table_id.clone()).or_default();
                *m = (*m).max(e.lsn);
            }
            replay.entries.extend(entries);
            old_files.insert(*n, (path, tables));
        }
        let next_file = numbers.last().map_or(1, |n| n + 1);
        let syncs = std::sync::Arc::new(crate::metrics::Histogram::default());
        let writer = Writer::start(dir, next_file, file_bytes, old_files, syncs.clone())?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("strata-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("starting WAL writer for", dir, e))?;
        if replay.files > 0 {
            info!(
                files = replay.files,
                entries = replay.entries.len(),
                bytes = replay.bytes,
                truncated = replay.truncated,
                "write-ahead log read"
            );
        }
        Ok((
            Wal {
                syncs,
                dir: dir.to_path_buf(),
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                next_lsn: AtomicU64::new(max_lsn + 1),
                lock: Mutex::new(Some(lock)),
            },
            replay,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every LSN handed out from now on greater than `lsn`.
    pub fn raise_next_lsn(&self, lsn: u64) {
        self.next_lsn.fetch_max(lsn + 1, Ordering::SeqCst);
    }

    /// Appends an entry and returns its LSN and a receiver woken once it is durable.
    /// Entries appended by one thread in order are written in that order.
    pub fn append(
        &self,
        table_id: &str,
        dataset: &str,
        producer: &str,
        sequence: u64,
        payload: Bytes,
    ) -> (u64, Durable) {
        let lsn = self.next_lsn.fetch_add(1, Ordering::SeqCst);
        let header = encode_header(lsn, table_id, dataset, producer, sequence, &payload);
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Append {
            table_id: table_id.to_string(),
            lsn,
            header,
            payload,
            done,
        });
        (lsn, rx)
    }

    /// A receiver woken once everything appended before this call is durable.
    pub fn barrier(&self) -> Durable {
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Barrier(done));
        rx
    }

    /// Tells the log that the table's entries up to `lsn` are committed to the table
    /// (`u64::MAX`: the table was dropped), so files holding only such entries can go.
    pub fn flushed(&self, table_id: &str, lsn: u64) {
        self.send(Cmd::Flushed {
            table_id: table_id.to_string(),
            lsn,
        });
    }

    /// Syncs, deletes every file whose entries are all flushed, and stops the writer.
    pub async fn close(&self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Close(done));
        self.tx.lock().expect("wal sender").take();
        let result = rx
            .await
            .unwrap_or_else(|_| Err("WAL writer stopped".into()))
            .map_err(Error::Wal);
        let thread = self.thread.lock().expect("wal thread").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // The writer is gone: another log may open the directory now.
        self.lock.lock().expect("wal lock").take();
        result
    }

    fn send(&self, cmd: Cmd) {
        let tx = self.tx.lock().expect("wal sender");
        let failed = match tx.as_ref() {
            Some(tx) => tx.send(cmd).err().map(|e| e.0),
            None => Some(cmd),
        };
        if let Some(cmd) = failed {
            let closed = Err("write-ahead log is closed".to_string());
            match cmd {
                Cmd::Append { done, .. } | Cmd::Barrier(done) | Cmd::Close(done) => {
                    let _ = done.send(closed);
                }
                Cmd::Flushed { .. } => {}
            }
        }
    }
}

/// The log files in a WAL directory (not its `LOCK`), in log order.
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn file_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:020}.log"))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("names are validated short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The entry header (length, checksum) and the body up to the payload.
fn encode_header(
    lsn: u64,
    table_id: &str,
    dataset: &str,
    producer: &str,
    sequence: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + table_id.len() + dataset.len() + producer.len());
    out.extend_from_slice(&[0; ENTRY_HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    put_str(&mut out, table_id);
    put_str(&mut out, dataset);
    put_str(&mut out, producer);
    out.extend_from_slice(&sequence.to_le_bytes());
    let body_len = out.len() - ENTRY_HEADER + payload.len();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[ENTRY_HEADER..]), payload);
    out[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

fn take_str(body: &mut Bytes) -> Option<String> {
    if body.remaining() < 2 {
        return None;
    }
    let len = body.get_u16_le() as usize;
    if body.remaining() < len {
        return None;
    }
    String::from_utf8(body.split_to(len).to_vec()).ok()
}

fn decode_body(mut body: Bytes) -> Option<WalEntry> {
    if body.remaining() < 8 {
        return None;
    }
    let lsn = body.get_u64_le();
    let table_id = take_str(&mut body)?;
    let dataset = take_str(&mut body)?;
    let producer = take_str(&mut body)?;
    if body.remaining() < 8 {
        return None;
    }
    let sequence = body.get_u64_le();
    Some(WalEntry {
        lsn,
        table_id,
        dataset,
        producer,
        sequence,
        payload: body,
    })
}

/// Reads one file. In the newest file (`last`), a torn tail is cut off; elsewhere any
/// damage is an error.
fn read_file(path: &Path, n: u64, last: bool) -> Result<(Vec<WalEntry>, u64, u64)> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| Error::io("reading WAL file", path, e))?;
    let total = data.len() as u64;
    let (entries, valid) =
        parse_file(Bytes::from(data), n, last).map_err(|(offset, reason)| Error::CorruptWal {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: reason.to_string(),
        })?;
    let cut = total - valid as u64;
    if cut > 0 {
        warn!(path = %path.display(), offset = valid, bytes = cut, "cutting torn tail off the write-ahead log");
        truncate(path, valid as u64)?;
    }
    Ok((entries, total, cut))
}

/// Parses the bytes of WAL file number `n`: its entries and the length of the valid
/// prefix (shorter than the data when the newest file, `last`, has a torn tail), or
/// the offset and nature of the damage. Public for the fuzz target.
#[doc(hidden)]
pub fn parse_file(
    data: Bytes,
    n: u64,
    last: bool,
) -> std::result::Result<(Vec<WalEntry>, usize), (usize, &'static str)> {
    if data.len() < FILE_HEADER {
        if last {
            // Created but its header never synced: nothing in it was acknowledged.
            return Ok((vec![], 0));
        }
        return Err((0, "file shorter than its header"));
    }
    if &data[..8] != MAGIC || data[8..16] != n.to_le_bytes() {
        return Err((0, "bad file header"));
    }
    let mut entries = Vec::new();
    let mut pos = FILE_HEADER;
    while pos < data.len() {
        if data.len() - pos < ENTRY_HEADER {
            if last {
                break;
            }
            return Err((pos, "truncated entry header"));
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let end = pos + ENTRY_HEADER + len;
        if len > MAX_ENTRY || end > data.len() {
            if last {
                break;
            }
            return Err((pos, "truncated entry"));
        }
        let body = data.slice(pos + ENTRY_HEADER..end);
        if crc32c::crc32c(&body) != crc {
            if last {
                break;
            }
            return Err((pos, "checksum mismatch"));
        }
        let Some(entry) = decode_body(body) else {
            return Err((pos, "undecodable entry body"));
        };
        entries.push(entry);
        pos = end;
    }
    Ok((entries, pos))
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        })
        .map_err(|e| Error::io("truncating WAL file", path, e))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    file_bytes: u64,
    file: File,
    file_no: u64,
    file_len: u64,
    /// Per table, the highest LSN in the active file.
    active: HashMap<String, u64>,
    /// Closed files: number -> (path, per table the highest LSN in it).
    closed: BTreeMap<u64, (PathBuf, HashMap<String, u64>)>,
    flushed: HashMap<String, u64>,
    poisoned: Option<String>,
    /// The last attempt to start a new file failed (warned once per streak).
    roll_failing: bool,
    /// Durations of the group commits' `fdatasync`.
    syncs: std::sync::Arc<crate::metrics::Histogram>,
}

impl Writer {
    fn start(
        dir: &Path,
        file_no: u64,
        file_bytes: u64,
        closed: BTreeMap<u64, (PathBuf, HashMap<String, u64>)>,
        syncs: std::sync::Arc<crate::metrics::Histogram>,
    ) -> Result<Self> {
        let file = create_file(dir, file_no)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file_bytes,
            file,
            file_no,
            file_len: FILE_HEADER as u64,
            active: HashMap::new(),
            closed,
            flushed: HashMap::new(),
            poisoned: None,
            roll_failing: false,
            syncs,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut bytes = 0usize;
            while bytes < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Cmd::Append {
                            header, payload, ..
                        } = &cmd
                        {
                            bytes += header.len() + payload.len();
                        }
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let mut wrote = false;
            let mut close = None;
            for cmd in group {
                match cmd {
                    Cmd::Append {
                        table_id,
                        lsn,
                        header,
                        payload,
                        done,
                    } => {
                        if self.poisoned.is_none() {
                            if let Err(e) = self
                                .file
                                .write_all(&header)
                                .and_then(|_| self.file.write_all(&payload))
                            {
                                self.poison(format!("write failed: {e}"));
                            } else {
                                self.file_len += (header.len() + payload.len()) as u64;
                                let m = self.active.entry(table_id).or_default();
                                *m = (*m).max(lsn);
                                wrote = true;
                            }
                        }
                        waiters.push(done);
                    }
                    Cmd::Barrier(done) => waiters.push(done),
                    Cmd::Flushed { table_id, lsn } => {
                        let m = self.flushed.entry(table_id).or_default();
                        *m = (*m).max(lsn);
                    }
                    Cmd::Close(done) => close = Some(done),
                }
            }
            if wrote && self.poisoned.is_none() {
                let started = std::time::Instant::now();
                let synced = self.file.sync_data();
                self.syncs.record(started.elapsed());
                if let Err(e) = synced {
                    self.poison(format!("fdatasync failed: {e}"));
                }
            }
            // A new file that cannot be made yet (out of file descriptors, say) loses
            // nothing: the current one is whole and synced, so it grows past its size
            // and the roll is tried again after the next group.
            if self.poisoned.is_none() && self.file_len >= self.file_bytes {
                match self.roll() {
                    Ok(()) => self.roll_failing = false,
                    Err(e) => {
                        if !self.roll_failing {
                            warn!(error = %e, "cannot start a new WAL file yet; the current one grows until it can");
                        }
                        self.roll_failing = true;
                    }
                }
            }
            // Trimmed before the waiters are woken, so a barrier also orders trims.
            self.trim(close.is_some());
            let result = match &self.poisoned {
                None => Ok(()),
                Some(why) => Err(why.clone()),
            };
            for w in waiters.drain(..) {
                let _ = w.send(result.clone());
            }
            if let Some(done) = close {
                let _ = done.send(result);
                return;
            }
        }
    }

    fn poison(&mut self, why: String) {
        error!(
            file_no = self.file_no,
            "write-ahead log {why}; acknowledging nothing more"
        );
        self.poisoned = Some(why);
    }

    fn roll(&mut self) -> Result<()> {
        let next = self.file_no + 1;
        let file = create_file(&self.dir, next)?;
        let old = std::mem::replace(&mut self.file, file);
        drop(old);
        let tables = std::mem::take(&mut self.active);
        self.closed
            .insert(self.file_no, (file_path(&self.dir, self.file_no), tables));
        self.file_no = next;
        self.file_len = FILE_HEADER as u64;
        Ok(())
    }

    fn covered(&self, tables: &HashMap<String, u64>) -> bool {
        tables
            .iter()
            .all(|(t, lsn)| self.flushed.get(t).is_some_and(|f| f >= lsn))
    }

    /// Deletes closed files (and at close, the active one) whose entries are all flushed.
    fn trim(&mut self, closing: bool) {
        let done: Vec<u64> = self
            .closed
            .iter()
            .filter(|(_, (_, tables))| self.covered(tables))
            .map(|(n, _)| *n)
            .collect();
        for n in done {
            let (path, _) = self.closed.remove(&n).expect("listed");
            match fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "WAL file trimmed"),
                Err(e) => warn!(path = %path.display(), error = %e, "could not remove WAL file"),
            }
        }
        if closing
            && self.poisoned.is_none()
            && self.closed.is_empty()
            && self.covered(&self.active)
        {
            let path = file_path(&self.dir, self.file_no);
            if let Err(e) = fs::remove_file(&path).and_then(|_| sync_dir(&self.dir)) {
                warn!(path = %path.display(), error = %e, "could not remove WAL file");
            }
        }
    }
}

fn create_file(dir: &Path, n: u64) -> Result<File> {
    let path = file_path(dir, n);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("creating WAL file", &path, e))?;
    let mut header = Vec::with_capacity(FILE_HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&n.to_le_bytes());
    if let Err(e) = f
        .write_all(&header)
        .and_then(|_| f.sync_all())
        .and_then(|_| sync_dir(dir))
    {
        // Not started: the next attempt creates it again.
        drop(f);
        let _ = fs::remove_file(&path);
        return Err(Error::io("creating WAL file", &path, e));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(wal: &Wal, table: &str, seq: u64, payload: &'static [u8]) -> (u64, Durable) {
        wal.append(table, "ds", "p", seq, Bytes::from_static(payload))
    }

    #[tokio::test]
    async fn entries_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert!(replay.entries.is_empty());
        let mut rxs = vec![];
        for i in 0..100u64 {
            let (lsn, rx) = append(&wal, "t1", i, b"payload");
            assert_eq!(lsn, i + 1);
            rxs.push(rx);
        }
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        drop(wal); // no clean close: like a crash after the syncs
        let (wal, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
        let seqs: Vec<u64> = replay.entries.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (0..100).collect::<Vec<_>>());
        assert!(replay.entries.iter().all(|e| &e.payload[..] == b"payload"
            && e.table_id == "t1"
            && e.dataset == "ds"
            && e.producer == "p"));
        // LSNs continue after the replayed ones.
        let (lsn, rx) = append(&wal, "t1", 100, b"x");
        assert_eq!(lsn, 101);
        rx.await.unwrap().unwrap();
        wal.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_new_file_that_cannot_be_made_yet_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Files roll after every entry; the second file's name is taken by a directory,
        // as a file that cannot be created (out of file descriptors, say).
        let (wal, _) = Wal::open(dir.path(), 1).unwrap();
        let blocker = file_path(dir.path(), 2);
        fs::create_dir(&blocker).unwrap();
        for i in 0..3 {
            append(&wal, "t", i, b"abc").1.await.unwrap().unwrap();
        }
        fs::remove_dir(&blocker).unwrap();
        for i in 3..6 {
            append(&wal, "t", i, b"abc").1.await.unwrap().unwrap();
        }
        assert!(file_path(dir.path(), 3).exists(), "rolled once it could");
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 1).unwrap();
        let seqs: Vec<u64> = replay.entries.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (0..6).collect::<Vec<_>>());
        wal.close().await.unwrap();
    }

    #[tokio::test]
    async fn torn_tail_is_cut_but_damage_elsewhere_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            append(&wal, "t", i, b"abcdef").1.await.unwrap().unwrap();
        }
        drop(wal);
        let path = file_path(dir.path(), 1);
        let len = fs::metadata(&path).unwrap().len();
        // A crash mid-append: half an entry at the end.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (wal, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(replay.entries.len(), 2);
        assert!(replay.truncated > 0);
        append(&wal, "t", 9, b"after").1.await.unwrap().unwrap();
        drop(wal);
        // Flip a byte inside the first (now older) file: not a torn tail, an error.
        let mut data = fs::read(&path).unwrap();
        data[FILE_HEADER + ENTRY_HEADER + 3] ^= 0xff;
        fs::write(&path, data).unwrap();
        let err = Wal::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, Error::CorruptWal { .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[tokio::test]
    async fn files_roll_and_are_trimmed_once_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 256).unwrap();
        let mut last = BTreeMap::new();
        for i in 0..40u64 {
            let table = if i % 2 == 0 { "a" } else { "b" };
            let (lsn, rx) = append(&wal, table, i, &[7u8; 100]);
            rx.await.unwrap().unwrap();
            last.insert(table, lsn);
        }
        let count = || log_files(dir.path()).unwrap().len();
        assert!(count() > 5, "rolled into {} files", count());
        // Only table a flushed: files holding b entries stay.
        wal.flushed("a", last["a"]);
        wal.barrier().await.unwrap().unwrap();
        assert!(count() > 5);
        wal.flushed("b", last["b"]);
        wal.barrier().await.unwrap().unwrap();
        assert_eq!(count(), 1, "only the active file is left");
        wal.close().await.unwrap();
        assert_eq!(
            count(),
            0,
            "a clean close with everything flushed leaves no log"
        );
        let (_wal, replay) = Wal::open(dir.path(), 256).unwrap();
        assert!(replay.entries.is_empty());
    }

    #[tokio::test]
    async fn appends_after_close_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.close().await.unwrap();
        let (_, rx) = append(&wal, "t", 1, b"x");
        assert!(rx.await.unwrap().is_err());
    }
}
