use std::fmt::Debug;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// What a blob listing returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    pub path: String,
    /// Logical size in bytes (what `get` returns), not counting any framing a backend adds.
    pub size: u64,
    /// When the blob was written, in milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

/// Immutable blobs addressed by path, with ranged reads. Shaped like
/// `object_store::ObjectStore` so DataFusion's Parquet reader can run over any backend.
///
/// Guarantees every backend gives:
/// - `put` is atomic and durable: once it returns, the whole blob is readable and
///   survives a crash; before that, readers see no blob at all, never a prefix.
/// - Blobs are immutable. Writing a path twice replaces the blob atomically; Strata
///   never does so (paths carry fresh unique ids).
/// - Reads return exactly the bytes written or fail with [`Error::Corrupt`] naming the
///   blob; they never return wrong bytes.
///
/// Paths are `/`-separated, relative, of ASCII letters, digits and `._-=` (see [`validate_path`]).
#[async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    async fn put(&self, path: &str, data: Bytes) -> Result<()>;

    /// Bytes `range` of the blob. Fails with `InvalidArgument` if the range ends past the blob.
    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes>;

    /// Several ranges of one blob; backends may coalesce them.
    async fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            out.push(self.get_range(path, r.clone()).await?);
        }
        Ok(out)
    }

    /// The whole blob.
    async fn get(&self, path: &str) -> Result<Bytes> {
        let meta = self.head(path).await?;
        self.get_range(path, 0..meta.size).await
    }

    async fn head(&self, path: &str) -> Result<BlobMeta>;

    /// Removes a blob. Removing a missing blob is not an error.
    async fn delete(&self, path: &str) -> Result<()>;

    /// All blobs whose path starts with `prefix`, sorted by path.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>>;
}

/// Small records (datasets, versions, tags, hints) under `/`-separated keys, with one
/// conditional write. "Put version v+1 if absent" is Strata's whole commit protocol.
///
/// Guarantees every backend gives:
/// - `put_if_absent` is atomic and linearizable per key: of concurrent calls for one key
///   (from any thread, process or host sharing the store) exactly one succeeds, the
///   others get [`Error::Conflict`]. Once it returns `Ok`, the record is durable.
/// - `put` replaces a record atomically and durably (used for hints, never for commits).
/// - A record is read whole or not at all; damaged records give [`Error::Corrupt`].
#[async_trait]
pub trait MetaStore: Send + Sync + Debug + 'static {
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Writes `value` under `key` unless the key exists, in which case `Error::Conflict`.
    async fn put_if_absent(&self, key: &str, value: Bytes) -> Result<()>;

    /// Writes `value` under `key`, replacing any previous record.
    async fn put(&self, key: &str, value: Bytes) -> Result<()>;

    /// Removes a record. Removing a missing record is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Keys starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Checks a blob path or record key: non-empty, relative, `/`-separated segments of
/// ASCII letters, digits, `.`, `_`, `-` and `=`, no empty, `.` or `..` segment.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "invalid path {path:?}: {why}"
        )))
    };
    if path.is_empty() || path.len() > 1024 {
        return bad("must be 1..=1024 bytes");
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, '.' or '..' segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'='))
        {
            return bad("only ASCII letters, digits and ._-= are allowed");
        }
        if seg.starts_with(".tmp") {
            return bad("segments starting with .tmp are reserved");
        }
    }
    Ok(())
}

/// Validates a list prefix: empty, or a path prefix (it may end inside a segment or with `/`).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_path(prefix.trim_end_matches('/'))
}

/// Checks `range` against a blob of `size` bytes.
pub fn check_range(path: &str, range: &Range<u64>, size: u64) -> Result<()> {
    if range.start > range.end || range.end > size {
        return Err(Error::InvalidArgument(format!(
            "range {range:?} is outside blob {path:?} of {size} bytes"
        )));
    }
    Ok(())
}
