//! [`SegmentCache`]: decoded columns of segments, kept in memory across queries.
//!
//! Segments are immutable and their paths never reused, so a column decoded once is
//! valid for every later query at every version that holds the segment: an entry is
//! the whole column of one segment (every row written, deleted or not — deletion
//! vectors belong to a version and are applied per scan), in the type the table
//! presents it in (strings as views). With each column come its zone maps: min, max
//! and null count of every [`ZONE_ROWS`] rows, so a scan skips zones a filter excludes
//! without touching their values.
//!
//! The cache holds at most `capacity` bytes of arrays (Arrow's own accounting of the
//! buffers). Entries are evicted least recently used first; a column larger than the
//! whole cache is not kept. An entry in use by a running scan stays alive (it is
//! reference counted) after eviction until that scan drops it, so memory may exceed
//! the capacity by what running scans hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, UInt64Array};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion_functions_aggregate_common::min_max::{max_batch, min_batch};

use crate::cached_scan::FillJob;

/// Rows per zone of a cached column (and per batch a cached scan emits).
pub const ZONE_ROWS: usize = 8192;

/// Fill jobs that may wait for the background filler.
pub const FILL_QUEUE: usize = 64;

/// The longest a background fill waits for running queries to finish before it decodes
/// alongside them (at a lower priority).
pub const FILL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long no query must have run before a background fill starts decoding: a query
/// is planned (and queues its fill) a moment before it runs.
pub const FILL_QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// Makes the calling thread yield the CPU to the query threads (Linux: nice 10).
#[allow(
    unsafe_code,
    reason = "setpriority for one thread has no safe wrapper in libc or std"
)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id changes nothing but its priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// One segment's column, decoded, with its zone maps.
///
/// The column is kept as one array per zone (the last may be shorter), not as one
/// array sliced per batch: operators that hold on to batches (a TopK, a sort) count
/// the memory of the arrays they hold, and a slice counts its whole buffer.
#[derive(Debug)]
pub struct CachedColumn {
    zones: Vec<ArrayRef>,
    rows: usize,
    /// Per zone: the least and greatest non-null value (`None` for types without an
    /// order min/max understands), and the number of nulls.
    mins: Option<ArrayRef>,
    maxs: Option<ArrayRef>,
    null_counts: ArrayRef,
    bytes: usize,
}

impl CachedColumn {
    /// A segment's column from its zones (every one [`ZONE_ROWS`] rows but the last),
    /// with its zone maps computed.
    pub fn new(zones: Vec<ArrayRef>) -> Self {
        let mut mins = Vec::with_capacity(zones.len());
        let mut maxs = Vec::with_capacity(zones.len());
        let mut nulls = Vec::with_capacity(zones.len());
        let mut ordered = true;
        for zone in &zones {
            nulls.push(zone.null_count() as u64);
            if ordered {
                match (min_batch(zone), max_batch(zone)) {
                    (Ok(lo), Ok(hi)) => {
                        mins.push(lo);
                        maxs.push(hi);
                    }
                    _ => ordered = false,
                }
            }
        }
        let bound = |values: Vec<ScalarValue>| {
            if !ordered || values.is_empty() {
                return None;
            }
            ScalarValue::iter_to_array(values).ok()
        };
        let (mins, maxs) = (bound(mins), bound(maxs));
        let null_counts: ArrayRef = Arc::new(UInt64Array::from(nulls));
        let bytes = zones
            .iter()
            .map(|z| z.get_array_memory_size())
            .sum::<usize>()
            + mins.as_ref().map_or(0, |a| a.get_array_memory_size())
            + maxs.as_ref().map_or(0, |a| a.get_array_memory_size())
            + null_counts.get_array_memory_size();
        Self {
            rows: zones.iter().map(|z| z.len()).sum(),
            zones,
            mins,
            maxs,
            null_counts,
            bytes,
        }
    }

    /// Rows of the segment (every zone together).
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn zones(&self) -> usize {
        self.zones.len()
    }

    /// The values of zone `z`.
    pub fn zone(&self, z: usize) -> &ArrayRef {
        &self.zones[z]
    }

    /// Per zone minimums (`None` when this type has none).
    pub fn mins(&self) -> Option<&ArrayRef> {
        self.mins.as_ref()
    }

    pub fn maxs(&self) -> Option<&ArrayRef> {
        self.maxs.as_ref()
    }

    pub fn null_counts(&self) -> &ArrayRef {
        &self.null_counts
    }

    /// Memory held by the column and its zone maps.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// `parts` (one column's consecutive pieces, of any lengths) as zones of [`ZONE_ROWS`]
/// rows; a piece that is exactly one zone is kept as it is, the others are copied.
pub fn into_zones(parts: &[ArrayRef]) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    let rows: usize = parts.iter().map(|p| p.len()).sum();
    let mut zones = Vec::with_capacity(rows.div_ceil(ZONE_ROWS));
    let (mut part, mut offset) = (0, 0);
    for start in (0..rows).step_by(ZONE_ROWS) {
        let len = ZONE_ROWS.min(rows - start);
        if offset == 0 && parts[part].len() == len {
            zones.push(parts[part].clone());
            part += 1;
            continue;
        }
        let mut pieces: Vec<ArrayRef> = Vec::new();
        let mut need = len;
        while need > 0 {
            let take = need.min(parts[part].len() - offset);
            pieces.push(parts[part].slice(offset, take));
            need -= take;
            offset += take;
            if offset == parts[part].len() {
                part += 1;
                offset = 0;
            }
        }
        let refs: Vec<&dyn arrow::array::Array> = pieces.iter().map(|p| p.as_ref()).collect();
        zones.push(arrow::compute::concat(&refs)?);
    }
    Ok(zones)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    segment: Arc<str>,
    column: Arc<str>,
    data_type: DataType,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, (Arc<CachedColumn>, u64)>,
    /// Entries by last use (a tick), oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

/// What the cache holds and did since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub entries: u64,
    /// Columns of segments found in the cache, and not found.
    pub hits: u64,
    pub misses: u64,
    /// Columns decoded and kept, and the bytes they took.
    pub inserts: u64,
    pub inserted_bytes: u64,
    pub evictions: u64,
    /// Background fills queued or running, and not queued because the queue was full.
    pub fills_pending: u64,
    pub fills_dropped: u64,
}

/// Decoded columns of segments, bounded by bytes, least recently used evicted first.
#[derive(Default)]
pub struct SegmentCache {
    capacity: usize,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    inserted_bytes: AtomicU64,
    evictions: AtomicU64,
    /// The background filler's queue, started on first use.
    filler: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<FillJob>>>,
    fills_pending: AtomicU64,
    fills_dropped: AtomicU64,
    /// Queries running (see [`SegmentCache::running`]), and when one last started or
    /// ended or a fill was queued (milliseconds since `epoch`).
    running: AtomicU64,
    last_active_ms: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

/// Counts one running query for [`SegmentCache`] until dropped.
#[derive(Debug)]
pub struct Running(Arc<SegmentCache>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.touch();
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentCache {
    /// A cache of at most `capacity` bytes (0: caches nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Default::default()
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Marks a query running until the returned guard is dropped: background fills wait
    /// for the queries to finish (up to [`FILL_PATIENCE`]), so a query that finds the
    /// cache cold is not slowed by the decoding it queued.
    pub fn running(self: &Arc<Self>) -> Running {
        self.touch();
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }

    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(std::time::Instant::now);
        epoch.elapsed().as_millis() as u64
    }

    /// Notes activity: a query started or ended, or a fill was queued (by a query being
    /// planned, which runs next).
    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Waits until no query has run for [`FILL_QUIET`], or [`FILL_PATIENCE`] passed.
    pub(crate) async fn idle(&self) {
        let start = std::time::Instant::now();
        while start.elapsed() < FILL_PATIENCE {
            let quiet = self.now_ms() - self.last_active_ms.load(Ordering::Acquire);
            if self.running.load(Ordering::Acquire) == 0 && quiet >= FILL_QUIET.as_millis() as u64 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Queues `job` for the background filler: one thread of low priority that decodes
    /// columns into the cache while queries run from the segments as they are. When
    /// [`FILL_QUEUE`] jobs wait already, the job is dropped (a later query asks again).
    pub fn fill_later(self: &Arc<Self>, job: FillJob) {
        let queue = self.filler.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<FillJob>(FILL_QUEUE);
            let cache = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("strata-cache-fill".into())
                .spawn(move || {
                    lower_priority();
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    // Ends when the cache (and with it the sender) is dropped.
                    while let Ok(job) = rx.recv() {
                        let Some(cache) = cache.upgrade() else {
                            return;
                        };
                        // A fill that panics loses its job, not the filler.
                        let run =
                            std::panic::AssertUnwindSafe(|| runtime.block_on(job.run(&cache)));
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::warn!(
                                "a segment cache fill panicked; its columns stay uncached"
                            );
                        }
                        cache.fills_pending.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            started.ok().map(|_| tx)
        });
        self.touch();
        self.fills_pending.fetch_add(1, Ordering::Relaxed);
        let sent = queue.as_ref().is_some_and(|tx| tx.try_send(job).is_ok());
        if !sent {
            self.fills_pending.fetch_sub(1, Ordering::Relaxed);
            self.fills_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn key(segment: &str, column: &str, data_type: &DataType) -> Key {
        Key {
            segment: segment.into(),
            column: column.into(),
            data_type: data_type.clone(),
        }
    }

    /// The cached column `column` (as `data_type`) of the segment at `segment`.
    pub fn get(
        &self,
        segment: &str,
        column: &str,
        data_type: &DataType,
    ) -> Option<Arc<CachedColumn>> {
        if self.capacity == 0 {
            return None;
        }
        let key = Self::key(segment, column, data_type);
        let mut state = self.state.lock().expect("segment cache lock");
        let state = &mut *state;
        let Some((column, used)) = state.entries.get_mut(&key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        state.tick += 1;
        let old = std::mem::replace(used, state.tick);
        let column = column.clone();
        if let Some(k) = state.order.remove(&old) {
            state.order.insert(state.tick, k);
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(column)
    }

    /// True when the column is cached (without counting a hit or a miss).
    pub fn contains(&self, segment: &str, column: &str, data_type: &DataType) -> bool {
        let key = Self::key(segment, column, data_type);
        self.state
            .lock()
            .expect("segment cache lock")
            .entries
            .contains_key(&key)
    }

    /// True when every one of `fields` of `segment` is cached (in its type).
    pub fn contains_all<'a>(
        &self,
        segment: &str,
        fields: impl IntoIterator<Item = &'a arrow::datatypes::Field>,
    ) -> bool {
        fields
            .into_iter()
            .all(|f| self.contains(segment, f.name(), f.data_type()))
    }

    /// Keeps `value` as the column `column` of `segment`, evicting the least recently
    /// used entries to make room. A column larger than the cache is not kept.
    pub fn insert(
        &self,
        segment: &str,
        column: &str,
        data_type: &DataType,
        value: Arc<CachedColumn>,
    ) {
        let size = value.bytes();
        if size > self.capacity {
            return;
        }
        let key = Self::key(segment, column, data_type);
        let mut state = self.state.lock().expect("segment cache lock");
        let state = &mut *state;
        if let Some((old, used)) = state.entries.remove(&key) {
            state.order.remove(&used);
            state.bytes -= old.bytes();
        }
        while state.bytes + size > self.capacity {
            let Some((_, victim)) = state.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = state.entries.remove(&victim) {
                state.bytes -= old.bytes();
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.tick += 1;
        state.order.insert(state.tick, key.clone());
        state.entries.insert(key, (value, state.tick));
        state.bytes += size;
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.inserted_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
    }

    /// Columns evicted so far (a plan chosen while columns were cached may no longer
    /// find them once this moved).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> CacheStats {
        let (used, entries) = {
            let state = self.state.lock().expect("segment cache lock");
            (state.bytes, state.entries.len())
        };
        CacheStats {
            capacity_bytes: self.capacity as u64,
            used_bytes: used as u64,
            entries: entries as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            inserted_bytes: self.inserted_bytes.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            fills_pending: self.fills_pending.load(Ordering::Relaxed),
            fills_dropped: self.fills_dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array};

    use super::*;

    fn column(n: usize) -> Arc<CachedColumn> {
        let array: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
        Arc::new(CachedColumn::new(into_zones(&[array]).unwrap()))
    }

    #[test]
    fn pieces_become_zones_of_equal_rows() {
        let piece = |from: i64, n: usize| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(from..from + n as i64))
        };
        let parts = [
            piece(0, ZONE_ROWS),
            piece(ZONE_ROWS as i64, 100),
            piece(ZONE_ROWS as i64 + 100, ZONE_ROWS + 50),
        ];
        let zones = into_zones(&parts).unwrap();
        let lens: Vec<usize> = zones.iter().map(|z| z.len()).collect();
        assert_eq!(lens, vec![ZONE_ROWS, ZONE_ROWS, 150]);
        let all: Vec<i64> = zones
            .iter()
            .flat_map(|z| {
                z.as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(all, (0..(2 * ZONE_ROWS + 150) as i64).collect::<Vec<_>>());
    }

    #[test]
    fn zone_maps_cover_every_zone() {
        let values: Vec<Option<f64>> = (0..ZONE_ROWS * 2 + 10)
            .map(|i| (i % 7 != 0).then_some(i as f64))
            .collect();
        let array: ArrayRef = Arc::new(Float64Array::from(values));
        let c = CachedColumn::new(into_zones(&[array]).unwrap());
        assert_eq!(c.zones(), 3);
        let mins = c.mins().unwrap();
        let maxs = c.maxs().unwrap();
        assert_eq!(
            ScalarValue::try_from_array(mins, 0).unwrap(),
            ScalarValue::from(1.0)
        );
        assert_eq!(
            ScalarValue::try_from_array(maxs, 1).unwrap(),
            ScalarValue::from((2 * ZONE_ROWS - 1) as f64)
        );
        assert_eq!(
            ScalarValue::try_from_array(maxs, 2).unwrap(),
            ScalarValue::from((2 * ZONE_ROWS + 9) as f64)
        );
        let nulls = c
            .null_counts()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(nulls.value(2), 1); // of 16384..16394, only 16387 is a multiple of 7
    }

    #[test]
    fn least_recently_used_columns_go_first_and_bytes_stay_bounded() {
        let one = column(10_000).bytes();
        let cache = SegmentCache::new(one * 2 + one / 2);
        let dt = DataType::Int64;
        cache.insert("a", "x", &dt, column(10_000));
        cache.insert("b", "x", &dt, column(10_000));
        assert!(cache.get("a", "x", &dt).is_some()); // a is now newer than b
        cache.insert("c", "x", &dt, column(10_000));
        assert!(cache.contains("a", "x", &dt));
        assert!(!cache.contains("b", "x", &dt));
        assert!(cache.contains("c", "x", &dt));
        let stats = cache.stats();
        assert!(stats.used_bytes <= stats.capacity_bytes);
        assert_eq!((stats.entries, stats.evictions, stats.hits), (2, 1, 1));
        assert!(cache.get("b", "x", &dt).is_none());
        assert_eq!(cache.stats().misses, 1);
        // Another type of the same column is another entry.
        assert!(cache.get("a", "x", &DataType::Int32).is_none());
    }

    #[test]
    fn a_column_larger_than_the_cache_is_not_kept() {
        let cache = SegmentCache::new(1000);
        cache.insert("a", "x", &DataType::Int64, column(10_000));
        assert_eq!(cache.stats().entries, 0);
        let off = SegmentCache::new(0);
        off.insert("a", "x", &DataType::Int64, column(1));
        assert!(off.get("a", "x", &DataType::Int64).is_none());
    }
}
