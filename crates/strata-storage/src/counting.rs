//! A [`BlobStore`] wrapper that counts what passes through it: tests and benchmarks use it
//! to show how many bytes and which blobs a read touched.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::traits::{BlobMeta, BlobStore};

/// Counters of a [`CountingBlobStore`], read with [`CountingBlobStore::snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobCounts {
    /// `get_range` calls (including those `get_ranges`' default would make: none here,
    /// `get_ranges` is forwarded whole).
    pub get_range_calls: u64,
    pub get_ranges_calls: u64,
    /// Ranges asked for by `get_range` and `get_ranges` together.
    pub ranges: u64,
    /// `get` calls (whole blobs: checkpoints, for example).
    pub get_calls: u64,
    pub bytes_read: u64,
    pub puts: u64,
    pub bytes_written: u64,
    pub heads: u64,
    pub lists: u64,
    /// Distinct blob paths read from (`get_range`, `get_ranges`, `get`).
    pub paths_read: Vec<String>,
}

impl BlobCounts {
    /// Distinct segment blobs read (paths under a `segments/` directory).
    pub fn segments_read(&self) -> usize {
        self.paths_read
            .iter()
            .filter(|p| p.contains("/segments/"))
            .count()
    }

    /// Distinct checkpoint blobs read.
    pub fn checkpoints_read(&self) -> usize {
        self.paths_read
            .iter()
            .filter(|p| p.contains("/checkpoints/"))
            .count()
    }
}

/// A [`BlobStore`] that forwards every call to `inner` and counts reads and writes.
#[derive(Debug)]
pub struct CountingBlobStore {
    inner: Arc<dyn BlobStore>,
    get_range_calls: AtomicU64,
    get_ranges_calls: AtomicU64,
    ranges: AtomicU64,
    get_calls: AtomicU64,
    bytes_read: AtomicU64,
    puts: AtomicU64,
    bytes_written: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    paths_read: Mutex<HashSet<String>>,
}

impl CountingBlobStore {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        Self {
            inner,
            get_range_calls: AtomicU64::new(0),
            get_ranges_calls: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            get_calls: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            heads: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            paths_read: Mutex::new(HashSet::new()),
        }
    }

    pub fn reset(&self) {
        for c in [
            &self.get_range_calls,
            &self.get_ranges_calls,
            &self.ranges,
            &self.get_calls,
            &self.bytes_read,
            &self.puts,
            &self.bytes_written,
            &self.heads,
            &self.lists,
        ] {
            c.store(0, Ordering::SeqCst);
        }
        self.paths_read.lock().expect("lock poisoned").clear();
    }

    pub fn snapshot(&self) -> BlobCounts {
        let mut paths: Vec<String> = self
            .paths_read
            .lock()
            .expect("lock poisoned")
            .iter()
            .cloned()
            .collect();
        paths.sort();
        BlobCounts {
            get_range_calls: self.get_range_calls.load(Ordering::SeqCst),
            get_ranges_calls: self.get_ranges_calls.load(Ordering::SeqCst),
            ranges: self.ranges.load(Ordering::SeqCst),
            get_calls: self.get_calls.load(Ordering::SeqCst),
            bytes_read: self.bytes_read.load(Ordering::SeqCst),
            puts: self.puts.load(Ordering::SeqCst),
            bytes_written: self.bytes_written.load(Ordering::SeqCst),
            heads: self.heads.load(Ordering::SeqCst),
            lists: self.lists.load(Ordering::SeqCst),
            paths_read: paths,
        }
    }

    fn read_from(&self, path: &str, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::SeqCst);
        let mut paths = self.paths_read.lock().expect("lock poisoned");
        if !paths.contains(path) {
            paths.insert(path.to_string());
        }
    }
}

#[async_trait]
impl BlobStore for CountingBlobStore {
    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.bytes_written
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        self.inner.put(path, data).await
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        self.get_range_calls.fetch_add(1, Ordering::SeqCst);
        self.ranges.fetch_add(1, Ordering::SeqCst);
        let out = self.inner.get_range(path, range).await?;
        self.read_from(path, out.len() as u64);
        Ok(out)
    }

    async fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.get_ranges_calls.fetch_add(1, Ordering::SeqCst);
        self.ranges.fetch_add(ranges.len() as u64, Ordering::SeqCst);
        let out = self.inner.get_ranges(path, ranges).await?;
        self.read_from(path, out.iter().map(|b| b.len() as u64).sum());
        Ok(out)
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        let out = self.inner.get(path).await?;
        self.read_from(path, out.len() as u64);
        Ok(out)
    }

    async fn head(&self, path: &str) -> Result<BlobMeta> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(path).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
}
