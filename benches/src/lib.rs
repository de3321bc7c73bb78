//! Helpers shared by the criterion benches in `benches/` and the scaling tools in
//! `src/bin/`: one-shard weather data, a counting [`BlobStore`] wrapper, small stats.

use std::collections::HashSet;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute;
use bytes::Bytes;
use strata_datagen::WeatherFeed;
use strata_storage::{BlobMeta, BlobStore, Result as StorageResult};
use strata_table::segment::shard_of_rows;
use strata_types::DatasetSpec;

/// Rows of the weather feed that fall in `shard` of a dataset with `spec`'s partition
/// key and shard count, in feed (time) order: the feed is generated in chunks and
/// filtered until `count` rows of the shard were found. Also returns how many feed
/// rows were consumed, so a caller can continue the feed after them.
pub fn one_shard_rows(
    feed: &WeatherFeed,
    spec: &DatasetSpec,
    shard: u32,
    first_row: u64,
    count: usize,
) -> (RecordBatch, u64) {
    const CHUNK: usize = 256 * 1024;
    let partition: Vec<usize> = spec
        .partition_key
        .iter()
        .map(|c| spec.schema.index_of(c).expect("partition key column"))
        .collect();
    let mut parts = Vec::new();
    let mut found = 0usize;
    let mut next = first_row;
    while found < count {
        let chunk = feed.batch(next, CHUNK);
        let shards = shard_of_rows(&chunk, &partition, spec.shards).expect("shardable key");
        // Stop exactly at the row that completes `count`, so `next` is the resume point.
        let mut mask = Vec::with_capacity(CHUNK);
        let mut used = CHUNK;
        for (i, s) in shards.iter().enumerate() {
            if found == count {
                used = i;
                break;
            }
            let hit = *s == shard;
            found += hit as usize;
            mask.push(hit);
        }
        let part = chunk.slice(0, used);
        let kept = compute::filter_record_batch(&part, &BooleanArray::from(mask))
            .expect("mask matches batch");
        parts.push(kept);
        next += used as u64;
    }
    let batch = compute::concat_batches(&spec.schema, &parts).expect("same schema");
    (batch, next)
}

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

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = StorageResult<T>> + Send + 'a>>;

// `BlobStore` is declared with `#[async_trait]`; these are the signatures that macro
// generates, written out so the benches need no extra dependency.
impl BlobStore for CountingBlobStore {
    fn put<'life0, 'life1, 'async_trait>(
        &'life0 self,
        path: &'life1 str,
        data: Bytes,
    ) -> BoxFut<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.puts.fetch_add(1, Ordering::SeqCst);
            self.bytes_written
                .fetch_add(data.len() as u64, Ordering::SeqCst);
            self.inner.put(path, data).await
        })
    }

    fn get_range<'life0, 'life1, 'async_trait>(
        &'life0 self,
        path: &'life1 str,
        range: Range<u64>,
    ) -> BoxFut<'async_trait, Bytes>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.get_range_calls.fetch_add(1, Ordering::SeqCst);
            self.ranges.fetch_add(1, Ordering::SeqCst);
            let out = self.inner.get_range(path, range).await?;
            self.read_from(path, out.len() as u64);
            Ok(out)
        })
    }

    fn get_ranges<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        path: &'life1 str,
        ranges: &'life2 [Range<u64>],
    ) -> BoxFut<'async_trait, Vec<Bytes>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.get_ranges_calls.fetch_add(1, Ordering::SeqCst);
            self.ranges.fetch_add(ranges.len() as u64, Ordering::SeqCst);
            let out = self.inner.get_ranges(path, ranges).await?;
            self.read_from(path, out.iter().map(|b| b.len() as u64).sum());
            Ok(out)
        })
    }

    fn get<'life0, 'life1, 'async_trait>(
        &'life0 self,
        path: &'life1 str,
    ) -> BoxFut<'async_trait, Bytes>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.get_calls.fetch_add(1, Ordering::SeqCst);
            let out = self.inner.get(path).await?;
            self.read_from(path, out.len() as u64);
            Ok(out)
        })
    }

    fn head<'life0, 'life1, 'async_trait>(
        &'life0 self,
        path: &'life1 str,
    ) -> BoxFut<'async_trait, BlobMeta>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.heads.fetch_add(1, Ordering::SeqCst);
            self.inner.head(path).await
        })
    }

    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        path: &'life1 str,
    ) -> BoxFut<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.delete(path).await })
    }

    fn list<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: &'life1 str,
    ) -> BoxFut<'async_trait, Vec<BlobMeta>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list(prefix).await
        })
    }
}

/// Makes the allocator settle the small blocks freed so far, outside a timed region.
///
/// glibc's malloc keeps freed small blocks in "fast bins" and merges them only when a
/// later request of a larger size comes (`malloc_consolidate`), so work that frees many
/// small allocations (decoding and dropping a full checkpoint, say) is partly paid by
/// whichever code allocates a large-ish block next on that thread. One allocation of
/// 64 KiB (below the mmap threshold) triggers that merge here instead.
pub fn settle_allocator() {
    let block: Vec<u8> = Vec::with_capacity(64 * 1024);
    std::hint::black_box(&block);
}

/// Median of `samples` (which it sorts).
pub fn median(samples: &mut [Duration]) -> Duration {
    assert!(!samples.is_empty(), "median of no samples");
    samples.sort();
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    }
}

/// A duration in milliseconds with three decimals, for tables and JSON.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A ratio rounded to three decimals, for tables and JSON.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    let r = a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    (r * 1000.0).round() / 1000.0
}

/// Parses a comma-separated list of numbers (`"1,16,64"`).
pub fn parse_list(s: &str) -> Result<Vec<u64>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("bad number {p:?}: {e}"))
        })
        .collect()
}

/// Escapes `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
