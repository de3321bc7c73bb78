//! The embedded default backend: blobs and records as files under one directory.
//!
//! ```text
//!   root/blobs/<path>   data ‖ CRC32C per 64 KiB block (u32 LE each) ‖ 32-byte footer
//!   root/meta/<key>     value ‖ CRC32C(value) u32 LE ‖ b"STRMETA1"
//!   root/tmp/.tmp-<uuid> files being written; moved (blobs, `put`) or hard-linked
//!                        (`put_if_absent`) into place once complete and fsync'd
//! ```
//!
//! Blob footer: `data_len u64 LE, block_size u32 LE, n_blocks u32 LE,
//! crc32c(CRC table) u32 LE, crc32c(previous 20 footer bytes) u32 LE, b"STRBLOB1"`.
//! A ranged read checks the footer, then the CRCs of only the blocks it covers.
//!
//! Writes are crash safe: a file becomes visible by `rename` or `link` only after its
//! bytes are fsync'd, and the directory holding it is fsync'd before the call returns.
//! `put_if_absent` relies on `link(2)` failing with `EEXIST`, which is atomic across
//! processes sharing the directory (on a local file system).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::traits::{BlobMeta, BlobStore, MetaStore, check_range, validate_path, validate_prefix};

/// Bytes of blob data covered by one CRC (for blobs written now; each blob's footer
/// records its own, and blobs of 64 KiB blocks written before still read). A read
/// fetches and checks whole blocks: a point query reading one small page of each of a
/// few column chunks read twelve times the bytes it needed with 64 KiB blocks. The
/// table costs 4 bytes per block (0.05%).
const BLOCK_SIZE: u64 = 8 * 1024;
/// How much of a blob's tail a read fetches at once: the footer, and usually the CRC table.
const TAIL_READ: u64 = 64 * 1024;
const FOOTER_LEN: u64 = 32;
const BLOB_MAGIC: &[u8; 8] = b"STRBLOB1";
const RECORD_MAGIC: &[u8; 8] = b"STRMETA1";
const RECORD_TRAILER_LEN: usize = 12;
/// Files in `root/tmp` older than this are leftovers of a crashed writer.
const STALE_TMP_AGE: Duration = Duration::from_secs(60 * 60);

/// A [`BlobStore`] and [`MetaStore`] in a local directory. Cheap to clone; clones share
/// the directory. Several processes may open the same directory at once.
#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    meta: PathBuf,
    tmp: PathBuf,
    sync: bool,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes files in
    /// `root/tmp` older than an hour (younger ones may belong to a concurrent writer).
    ///
    /// This does blocking file I/O; call it outside async code or via `spawn_blocking`.
    pub fn open(root: impl AsRef<Path>) -> Result<LocalStore> {
        let root = root.as_ref().to_path_buf();
        let root_existed = root.is_dir();
        fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        if !root_existed && let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let inner = Inner {
            blobs: root.join("blobs"),
            meta: root.join("meta"),
            tmp: root.join("tmp"),
            root,
            sync: true,
        };
        for dir in [&inner.blobs, &inner.meta, &inner.tmp] {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io_err(dir, e)),
            }
        }
        sync_dir(&inner.root)?;
        remove_stale_tmp_files(&inner.tmp);
        Ok(LocalStore {
            inner: Arc::new(inner),
        })
    }

    /// Whether writes fsync files and directories (default `true`). `false` is for
    /// benchmark setup only: it gives up durability and crash safety.
    pub fn with_sync(self, sync: bool) -> Self {
        let mut inner = (*self.inner).clone();
        inner.sync = sync;
        LocalStore {
            inner: Arc::new(inner),
        }
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Backend(format!(
                "blocking file I/O task failed: {e}"
            ))),
        }
    }
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn not_found(kind: &'static str, path: &str) -> Error {
    Error::NotFound {
        kind,
        path: path.to_string(),
    }
}

fn corrupt(kind: &'static str, path: &str, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        kind,
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Errors meaning "nothing is stored at this path": missing, a parent is a file, or the
/// path is a directory (a prefix of other paths, not an entry).
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn mtime_ms(meta: &fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        },
        Err(_) => 0,
    }
}

fn remove_stale_tmp_files(tmp: &Path) {
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %tmp.display(), error = %e, "cannot scan tmp directory");
            return;
        }
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if stale {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::debug!(file = %entry.path().display(), "removed stale tmp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove stale tmp file")
                }
            }
        }
    }
}

/// A file in `root/tmp`, removed on drop unless [`TmpFile::keep`] was called.
struct TmpFile {
    path: PathBuf,
    remove: bool,
}

impl TmpFile {
    /// Creates a fresh tmp file holding `parts`, fsync'd if `sync`.
    fn write(inner: &Inner, parts: &[&[u8]]) -> Result<TmpFile> {
        let path = inner.tmp.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let tmp = TmpFile { path, remove: true };
        for part in parts {
            file.write_all(part).map_err(|e| io_err(&tmp.path, e))?;
        }
        if inner.sync {
            file.sync_all().map_err(|e| io_err(&tmp.path, e))?;
        }
        Ok(tmp)
    }

    /// The file was renamed away: nothing to remove.
    fn keep(mut self) {
        self.remove = false;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.remove
            && let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot remove tmp file");
        }
    }
}

/// Makes sure the parent directories of `base/rel` exist, creating them (and fsyncing
/// each new directory's parent) as needed. A path component that is a file is an
/// `InvalidArgument`: an entry cannot also be a prefix directory of other entries.
fn ensure_parent_dirs(base: &Path, rel: &str, sync: bool) -> Result<()> {
    let Some((parent_rel, _)) = rel.rsplit_once('/') else {
        return Ok(());
    };
    if base.join(parent_rel).is_dir() {
        return Ok(());
    }
    let mut dir = base.to_path_buf();
    for seg in parent_rel.split('/') {
        let parent = dir.clone();
        dir.push(seg);
        match fs::create_dir(&dir) {
            Ok(()) => {
                if sync {
                    sync_dir(&parent)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !dir.is_dir() {
                    return Err(parent_is_entry(rel, &dir, base));
                }
                // Another writer may have just created it and not yet made it durable.
                if sync {
                    sync_dir(&parent)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(parent_is_entry(rel, &dir, base));
            }
            Err(e) => return Err(io_err(&dir, e)),
        }
    }
    Ok(())
}

fn parent_is_entry(rel: &str, dir: &Path, base: &Path) -> Error {
    let component = dir.strip_prefix(base).unwrap_or(dir).display().to_string();
    invalid(format!(
        "invalid path {rel:?}: its parent {component:?} is an existing entry, not a directory"
    ))
}

fn is_directory_error(rel: &str) -> Error {
    invalid(format!(
        "invalid path {rel:?}: it is a directory holding other entries"
    ))
}

/// Writes `parts` to a tmp file and renames it to `base/rel`, durably.
fn write_replace(inner: &Inner, base: &Path, rel: &str, parts: &[&[u8]]) -> Result<()> {
    let dest = base.join(rel);
    if dest.is_dir() {
        return Err(is_directory_error(rel));
    }
    let tmp = TmpFile::write(inner, parts)?;
    ensure_parent_dirs(base, rel, inner.sync)?;
    match fs::rename(&tmp.path, &dest) {
        Ok(()) => tmp.keep(),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory || dest.is_dir() => {
            return Err(is_directory_error(rel));
        }
        Err(e) => return Err(io_err(&dest, e)),
    }
    if inner.sync {
        sync_dir(dest.parent().unwrap_or(base))?;
    }
    Ok(())
}

/// Removes `base/rel` durably; a missing entry is fine.
fn remove_entry(inner: &Inner, base: &Path, rel: &str) -> Result<()> {
    let path = base.join(rel);
    match fs::remove_file(&path) {
        Ok(()) => {
            if inner.sync {
                sync_dir(path.parent().unwrap_or(base))?;
            }
            Ok(())
        }
        Err(e) if is_absent(&e) => Ok(()),
        Err(e) => Err(io_err(&path, e)),
    }
}

/// Files under `base` whose relative path starts with `prefix`, unsorted, with their
/// full paths. Walks only the deepest directory the prefix fully names. Skips `.tmp*`
/// entries and names that are not valid paths.
fn walk(base: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>> {
    let start_rel = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut out = Vec::new();
    let mut stack = vec![(start_rel.to_string(), base.join(start_rel))];
    while let Some((rel_dir, dir)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(io_err(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(".tmp") {
                continue;
            }
            let rel = if rel_dir.is_empty() {
                name.to_string()
            } else {
                format!("{rel_dir}/{name}")
            };
            // Below the start directory the prefix is at most one partial segment
            // deeper, so this check on every level is exact.
            if !rel.starts_with(prefix) || validate_path(&rel).is_err() {
                continue;
            }
            let path = entry.path();
            let file_type = match entry.file_type() {
                Ok(t) if t.is_symlink() => match fs::metadata(&path) {
                    Ok(m) => m.file_type(),
                    Err(_) => continue,
                },
                Ok(t) => t,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(io_err(&path, e)),
            };
            if file_type.is_dir() {
                stack.push((rel, path));
            } else if file_type.is_file() {
                out.push((rel, path));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Blobs

/// The CRC table and footer that follow a blob's data.
fn blob_trailer(data: &[u8]) -> Vec<u8> {
    blob_trailer_with_blocks(data, BLOCK_SIZE)
}

/// [`blob_trailer`] with blocks of `block_size` bytes.
fn blob_trailer_with_blocks(data: &[u8], block_size: u64) -> Vec<u8> {
    let n_blocks = (data.len() as u64).div_ceil(block_size);
    let mut out = Vec::with_capacity(4 * n_blocks as usize + FOOTER_LEN as usize);
    for block in data.chunks(block_size as usize) {
        out.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    let table_crc = crc32c::crc32c(&out);
    let footer_start = out.len();
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&(block_size as u32).to_le_bytes());
    out.extend_from_slice(&(n_blocks as u32).to_le_bytes());
    out.extend_from_slice(&table_crc.to_le_bytes());
    let footer_crc = crc32c::crc32c(&out[footer_start..]);
    out.extend_from_slice(&footer_crc.to_le_bytes());
    out.extend_from_slice(BLOB_MAGIC);
    out
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// An open blob file whose footer has been checked.
struct BlobFile {
    file: File,
    /// The blob path (for errors).
    path: String,
    fs_path: PathBuf,
    mtime_ms: i64,
    data_len: u64,
    block_size: u64,
    /// The last bytes of the file, starting at `tail_off`.
    tail: Bytes,
    tail_off: u64,
    /// The whole CRC table, checked against its CRC, when it lay inside `tail`.
    table: Option<Bytes>,
}

impl BlobFile {
    /// Opens the blob at `fs_path`, reading up to `tail_want` bytes of its tail.
    fn open(fs_path: PathBuf, path: &str, tail_want: u64) -> Result<BlobFile> {
        let file = match File::open(&fs_path) {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Err(not_found("blob", path)),
            Err(e) => return Err(io_err(&fs_path, e)),
        };
        let meta = file.metadata().map_err(|e| io_err(&fs_path, e))?;
        if meta.is_dir() {
            return Err(not_found("blob", path));
        }
        let file_len = meta.len();
        let bad = |reason: String| corrupt("blob", path, reason);
        if file_len < FOOTER_LEN {
            return Err(bad(format!(
                "truncated: file has {file_len} bytes, less than the {FOOTER_LEN}-byte footer"
            )));
        }
        let tail_len = file_len.min(tail_want.max(FOOTER_LEN));
        let tail_off = file_len - tail_len;
        let mut tail = vec![0u8; tail_len as usize];
        read_at(&file, &mut tail, tail_off, path, &fs_path)?;
        let footer = &tail[tail.len() - FOOTER_LEN as usize..];
        if &footer[24..32] != BLOB_MAGIC {
            let reason = if (1..8).any(|k| tail.ends_with(&BLOB_MAGIC[..k])) {
                "truncated: the file ends inside the footer magic".to_string()
            } else {
                "bad footer magic (file truncated or not a Strata blob)".to_string()
            };
            return Err(bad(reason));
        }
        if crc32c::crc32c(&footer[..20]) != le_u32(&footer[20..24]) {
            return Err(bad("bad footer: checksum mismatch".to_string()));
        }
        let data_len = le_u64(&footer[0..8]);
        let block_size = u64::from(le_u32(&footer[8..12]));
        let n_blocks = u64::from(le_u32(&footer[12..16]));
        let table_crc = le_u32(&footer[16..20]);
        if block_size == 0 || data_len.div_ceil(block_size) != n_blocks {
            return Err(bad(format!(
                "bad footer: {n_blocks} blocks of {block_size} bytes cannot hold {data_len} bytes"
            )));
        }
        let expected = data_len
            .checked_add(4 * n_blocks + FOOTER_LEN)
            .ok_or_else(|| bad(format!("bad footer: data length {data_len} overflows")))?;
        if file_len < expected {
            return Err(bad(format!(
                "truncated: file has {file_len} bytes, the footer expects {expected}"
            )));
        }
        if file_len > expected {
            return Err(bad(format!(
                "bad footer: file has {file_len} bytes, the footer expects {expected}"
            )));
        }
        let tail = Bytes::from(tail);
        let table = if data_len >= tail_off {
            let start = (data_len - tail_off) as usize;
            let table = tail.slice(start..start + 4 * n_blocks as usize);
            if crc32c::crc32c(&table) != table_crc {
                return Err(bad("CRC table checksum mismatch".to_string()));
            }
            Some(table)
        } else {
            None
        };
        Ok(BlobFile {
            file,
            path: path.to_string(),
            fs_path,
            mtime_ms: mtime_ms(&meta),
            data_len,
            block_size,
            tail,
            tail_off,
            table,
        })
    }

    fn meta(&self) -> BlobMeta {
        BlobMeta {
            path: self.path.clone(),
            size: self.data_len,
            last_modified_ms: self.mtime_ms,
        }
    }

    /// Bytes `range.start..range.end` of the file, from the tail buffer where possible.
    fn read_file_range(&self, range: Range<u64>) -> Result<Bytes> {
        if range.start >= self.tail_off {
            let s = (range.start - self.tail_off) as usize;
            let e = (range.end - self.tail_off) as usize;
            return Ok(self.tail.slice(s..e));
        }
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let direct_end = range.end.min(self.tail_off);
        let direct = (direct_end - range.start) as usize;
        read_at(
            &self.file,
            &mut buf[..direct],
            range.start,
            &self.path,
            &self.fs_path,
        )?;
        if range.end > self.tail_off {
            buf[direct..].copy_from_slice(&self.tail[..(range.end - self.tail_off) as usize]);
        }
        Ok(Bytes::from(buf))
    }

    /// The data bytes `range`, after checking the CRC of every block it touches.
    fn read(&self, range: Range<u64>) -> Result<Bytes> {
        check_range(&self.path, &range, self.data_len)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let bs = self.block_size;
        let first = range.start / bs;
        let last = (range.end - 1) / bs;
        let n = (last - first + 1) as usize;
        let crcs = match &self.table {
            Some(table) => table.slice(4 * first as usize..4 * (first as usize + n)),
            None => {
                let off = self.data_len + 4 * first;
                self.read_file_range(off..off + 4 * n as u64)?
            }
        };
        let span = first * bs..((last + 1) * bs).min(self.data_len);
        let data = self.read_file_range(span.clone())?;
        for (i, (block, crc)) in data.chunks(bs as usize).zip(crcs.chunks(4)).enumerate() {
            if crc32c::crc32c(block) != le_u32(crc) {
                let b = first + i as u64;
                let start = b * bs;
                let end = start + block.len() as u64;
                return Err(corrupt(
                    "blob",
                    &self.path,
                    format!("checksum mismatch in block {b} (bytes {start}..{end})"),
                ));
            }
        }
        let s = (range.start - span.start) as usize;
        let e = (range.end - span.start) as usize;
        Ok(data.slice(s..e))
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64, path: &str, fs_path: &Path) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(
                "blob",
                path,
                "truncated: file shrank while being read".to_string(),
            )
        } else {
            io_err(fs_path, e)
        }
    })
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        validate_path(path)?;
        if (data.len() as u64).div_ceil(BLOCK_SIZE) > u64::from(u32::MAX) {
            return Err(invalid(format!(
                "blob {path:?} of {} bytes is too large",
                data.len()
            )));
        }
        let path = path.to_string();
        self.blocking(move |inner| {
            let trailer = blob_trailer(&data);
            write_replace(inner, &inner.blobs, &path, &[&data, &trailer])
        })
        .await
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        validate_path(path)?;
        let path = path.to_string();
        self.blocking(move |inner| {
            BlobFile::open(inner.blobs.join(&path), &path, TAIL_READ)?.read(range)
        })
        .await
    }

    async fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        validate_path(path)?;
        let path = path.to_string();
        let ranges = ranges.to_vec();
        self.blocking(move |inner| {
            let blob = BlobFile::open(inner.blobs.join(&path), &path, TAIL_READ)?;
            ranges.into_iter().map(|r| blob.read(r)).collect()
        })
        .await
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        validate_path(path)?;
        let path = path.to_string();
        self.blocking(move |inner| {
            let blob = BlobFile::open(inner.blobs.join(&path), &path, TAIL_READ)?;
            blob.read(0..blob.data_len)
        })
        .await
    }

    async fn head(&self, path: &str) -> Result<BlobMeta> {
        validate_path(path)?;
        let path = path.to_string();
        self.blocking(move |inner| {
            Ok(BlobFile::open(inner.blobs.join(&path), &path, FOOTER_LEN)?.meta())
        })
        .await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_path(path)?;
        let path = path.to_string();
        self.blocking(move |inner| remove_entry(inner, &inner.blobs, &path))
            .await
    }

    /// Reads each listed blob's footer for its size; a damaged footer fails the listing
    /// with [`Error::Corrupt`] naming that blob rather than reporting a wrong size.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let mut out = Vec::new();
            for (rel, fs_path) in walk(&inner.blobs, &prefix)? {
                match BlobFile::open(fs_path, &rel, FOOTER_LEN) {
                    Ok(blob) => out.push(blob.meta()),
                    // Deleted since the directory was read.
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Records

fn record_trailer(value: &[u8]) -> [u8; RECORD_TRAILER_LEN] {
    let mut t = [0u8; RECORD_TRAILER_LEN];
    t[..4].copy_from_slice(&crc32c::crc32c(value).to_le_bytes());
    t[4..].copy_from_slice(RECORD_MAGIC);
    t
}

fn decode_record(key: &str, mut file: Vec<u8>) -> Result<Bytes> {
    let bad = |reason: String| corrupt("record", key, reason);
    if file.len() < RECORD_TRAILER_LEN {
        return Err(bad(format!(
            "truncated: file has {} bytes, less than the {RECORD_TRAILER_LEN}-byte trailer",
            file.len()
        )));
    }
    let value_len = file.len() - RECORD_TRAILER_LEN;
    if &file[value_len + 4..] != RECORD_MAGIC {
        return Err(bad(
            "bad trailer magic (file truncated or not a Strata record)".to_string(),
        ));
    }
    if crc32c::crc32c(&file[..value_len]) != le_u32(&file[value_len..]) {
        return Err(bad("checksum mismatch".to_string()));
    }
    file.truncate(value_len);
    Ok(Bytes::from(file))
}

fn conflict(key: &str) -> Error {
    Error::Conflict {
        key: key.to_string(),
    }
}

fn put_record_if_absent(inner: &Inner, key: &str, value: &[u8]) -> Result<()> {
    let dest = inner.meta.join(key);
    // Fast path: an existing record is a conflict without writing anything.
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => return Err(is_directory_error(key)),
        Ok(_) => return Err(conflict(key)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // A parent component is a file; `ensure_parent_dirs` names it.
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {}
        Err(e) => return Err(io_err(&dest, e)),
    }
    let trailer = record_trailer(value);
    let tmp = TmpFile::write(inner, &[value, &trailer])?;
    ensure_parent_dirs(&inner.meta, key, inner.sync)?;
    match fs::hard_link(&tmp.path, &dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(if dest.is_dir() {
                is_directory_error(key)
            } else {
                conflict(key)
            });
        }
        Err(e) => return Err(io_err(&dest, e)),
    }
    if inner.sync {
        sync_dir(dest.parent().unwrap_or(&inner.meta))?;
    }
    // `tmp` is unlinked on drop; the record keeps the other link.
    drop(tmp);
    Ok(())
}

#[async_trait]
impl MetaStore for LocalStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        validate_path(key)?;
        let key = key.to_string();
        self.blocking(move |inner| {
            let path = inner.meta.join(&key);
            match fs::read(&path) {
                Ok(file) => decode_record(&key, file).map(Some),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(io_err(&path, e)),
            }
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, value: Bytes) -> Result<()> {
        validate_path(key)?;
        let key = key.to_string();
        self.blocking(move |inner| put_record_if_absent(inner, &key, &value))
            .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        validate_path(key)?;
        let key = key.to_string();
        self.blocking(move |inner| {
            let trailer = record_trailer(&value);
            write_replace(inner, &inner.meta, &key, &[&value, &trailer])
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_path(key)?;
        let key = key.to_string();
        self.blocking(move |inner| remove_entry(inner, &inner.meta, &key))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let mut keys: Vec<String> = walk(&inner.meta, &prefix)?
                .into_iter()
                .map(|(rel, _)| rel)
                .collect();
            keys.sort();
            Ok(keys)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_layout() {
        let data = vec![7u8; (BLOCK_SIZE + 10) as usize];
        let t = blob_trailer(&data);
        assert_eq!(t.len(), 8 + 32);
        let footer = &t[8..];
        assert_eq!(le_u64(&footer[0..8]), data.len() as u64);
        assert_eq!(u64::from(le_u32(&footer[8..12])), BLOCK_SIZE);
        assert_eq!(le_u32(&footer[12..16]), 2);
        assert_eq!(le_u32(&footer[16..20]), crc32c::crc32c(&t[..8]));
        assert_eq!(le_u32(&footer[20..24]), crc32c::crc32c(&footer[..20]));
        assert_eq!(&footer[24..], BLOB_MAGIC);
        assert_eq!(blob_trailer(&[]).len(), 32);
    }

    /// Blobs written with 64 KiB blocks, before blocks were 8 KiB, read and are checked
    /// by the blocks their footers record.
    #[tokio::test]
    async fn blobs_of_64_kib_blocks_still_read() {
        const OLD: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = data.clone();
        file.extend_from_slice(&blob_trailer_with_blocks(&data, OLD));
        let fs_path = dir.path().join("blobs/old");
        std::fs::write(&fs_path, &file).unwrap();
        assert_eq!(store.head("old").await.unwrap().size, data.len() as u64);
        let ranges = [0..10, OLD - 3..OLD + 5, 150_000..200_000];
        let got = store.get_ranges("old", &ranges).await.unwrap();
        for (r, g) in ranges.iter().zip(&got) {
            assert_eq!(&g[..], &data[r.start as usize..r.end as usize]);
        }
        // A damaged byte fails its 64 KiB block, and only reads of that block.
        file[(OLD + 40_000) as usize] ^= 1;
        std::fs::write(&fs_path, &file).unwrap();
        let err = store
            .get_range("old", OLD + 100..OLD + 101)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("block 1 "), "{err}");
        assert_eq!(
            &store.get_range("old", 0..OLD).await.unwrap()[..],
            &data[..OLD as usize]
        );
    }

    #[test]
    fn record_round_trip() {
        let mut file = b"hello".to_vec();
        file.extend_from_slice(&record_trailer(b"hello"));
        assert_eq!(decode_record("k", file.clone()).unwrap(), &b"hello"[..]);
        file[1] ^= 1;
        assert!(matches!(
            decode_record("k", file),
            Err(Error::Corrupt { .. })
        ));
    }
}
