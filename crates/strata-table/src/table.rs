//! Datasets as versioned tables: the catalog, commits, time travel, rollback, tags,
//! vacuum, compaction, upserts and deletes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute;
use arrow::datatypes::{Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use strata_storage::{BlobStore, Error as StorageError, MetaStore};
use strata_types::spec::{format_type, schema_to_defs, validate_schema};
use strata_types::{DatasetName, DatasetSpec, DatasetSpecDef, Value, validate_name};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::manifest::{
    Dv, DvUpdate, LiveSegment, Manifest, Operation, Retention, SegmentRef, VersionRecord,
    decode_checkpoint, encode_checkpoint,
};
use crate::predicate::Predicate;
use crate::segment::{
    KeyCodec, SegmentMeta, SegmentOptions, encode_segments, now_ms, put_segments, read_segment,
    shard_of_rows, sort_and_dedupe,
};

/// Tunables of the table layer. The defaults suit the embedded server.
#[derive(Clone, Debug)]
pub struct TableOptions {
    pub segment: SegmentOptions,
    /// A checkpoint (full manifest) is written every this many versions.
    pub checkpoint_interval: u64,
    /// How often a commit is retried after losing a race to another writer.
    pub max_commit_retries: u32,
    /// Vacuum deletes unreferenced blobs only once they are older than this; a commit
    /// whose blobs are older than this aborts instead. Together these make vacuum safe
    /// against writers that wrote blobs and are about to commit them.
    pub blob_grace_ms: i64,
    /// Segments read concurrently by scans and upsert resolution.
    pub read_parallelism: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            segment: SegmentOptions::default(),
            checkpoint_interval: 100,
            max_commit_retries: 32,
            blob_grace_ms: 60 * 60 * 1000,
            read_parallelism: 4,
        }
    }
}

/// Which version to read: the head, a number, the latest at or before a time, or a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSpec {
    Head,
    Version(u64),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Tag(String),
}

impl From<u64> for VersionSpec {
    fn from(v: u64) -> Self {
        VersionSpec::Version(v)
    }
}

/// What a committed version says about itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub timestamp_ms: i64,
    pub operation: Operation,
    pub rows_added: u64,
    pub rows_removed: u64,
    pub producers: BTreeMap<String, u64>,
}

impl From<&VersionRecord> for VersionInfo {
    fn from(r: &VersionRecord) -> Self {
        Self {
            version: r.version,
            timestamp_ms: r.timestamp_ms,
            operation: r.operation.clone(),
            rows_added: r.rows_added,
            rows_removed: r.rows_removed,
            producers: r.producers.clone(),
        }
    }
}

/// The result of a write.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    Committed(VersionInfo),
    /// Every producer mark was already at or above the one given: the batch was applied
    /// before, and nothing was written. `head` is the current version.
    Duplicate {
        head: u64,
    },
}

/// What vacuum keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VacuumPolicy {
    /// Keep at least the newest this many versions.
    pub keep_last: Option<u64>,
    /// Keep versions committed within this many milliseconds.
    pub keep_within_ms: Option<i64>,
}

/// What vacuum did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VacuumReport {
    /// The version vacuum committed to record its retention, if it removed versions.
    pub version: Option<u64>,
    pub oldest_retained: u64,
    pub versions_removed: u64,
    pub blobs_removed: u64,
    pub bytes_removed: u64,
}

/// A tag: a name for a version, which also protects it from vacuum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagInfo {
    pub name: String,
    pub version: u64,
    pub created_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct DatasetRecord {
    #[serde(default = "crate::manifest::format_1")]
    format: u32,
    id: String,
    spec: DatasetSpecDef,
    created_ms: i64,
}

fn dataset_key(name: &str) -> String {
    format!("datasets/{name}")
}

/// The catalog of datasets on one pair of stores.
#[derive(Clone, Debug)]
pub struct Catalog {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    options: TableOptions,
}

impl Catalog {
    pub fn new(blobs: Arc<dyn BlobStore>, meta: Arc<dyn MetaStore>) -> Self {
        Self::with_options(blobs, meta, TableOptions::default())
    }

    pub fn with_options(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        options: TableOptions,
    ) -> Self {
        Self {
            blobs,
            meta,
            options,
        }
    }

    pub fn options(&self) -> &TableOptions {
        &self.options
    }

    /// The stores the catalog keeps its datasets in.
    pub fn stores(&self) -> (Arc<dyn BlobStore>, Arc<dyn MetaStore>) {
        (self.blobs.clone(), self.meta.clone())
    }

    /// Creates a dataset; its version 1 is the empty table with `spec`'s schema.
    pub async fn create_table(&self, spec: DatasetSpec) -> Result<Table> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let create = VersionRecord {
            format: crate::manifest::FORMAT,
            version: 1,
            timestamp_ms: now,
            operation: Operation::Create,
            base: None,
            schema: Some(schema_to_defs(&spec.schema)),
            add: vec![],
            remove: vec![],
            deletes: vec![],
            producers: BTreeMap::new(),
            rows_added: 0,
            rows_removed: 0,
            retention: None,
        };
        // Version 1 first, then the name: a crash in between leaves only an unreachable record.
        let v1 = version_key(&id, 1);
        self.meta
            .put_if_absent(&v1, Bytes::from(create.encode()))
            .await?;
        let record = DatasetRecord {
            format: crate::manifest::FORMAT,
            id: id.clone(),
            spec: spec.to_def(),
            created_ms: now,
        };
        let body = serde_json::to_vec(&record).expect("dataset records serialize");
        match self
            .meta
            .put_if_absent(&dataset_key(spec.name.as_str()), Bytes::from(body))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                let _ = self.meta.delete(&v1).await;
                return Err(Error::DatasetExists(spec.name.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        info!(dataset = %spec.name, id, "created dataset");
        Ok(Table::new(self, id, spec))
    }

    pub async fn open_table(&self, name: &str) -> Result<Table> {
        let name = DatasetName::new(name)?;
        let bytes = self
            .meta
            .get(&dataset_key(name.as_str()))
            .await?
            .ok_or_else(|| Error::DatasetNotFound(name.to_string()))?;
        let what = format!("dataset record {name}");
        let record: DatasetRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&what, e))?;
        crate::manifest::check_format(&what, record.format)?;
        let spec = DatasetSpec::from_def(&record.spec).map_err(|e| Error::corrupt(&what, e))?;
        Ok(Table::new(self, record.id, spec))
    }

    pub async fn list_tables(&self) -> Result<Vec<String>> {
        Ok(self
            .meta
            .list("datasets/")
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix("datasets/").map(str::to_string))
            .collect())
    }

    /// Drops a dataset: the name disappears at once (it can be created again, as a new
    /// dataset); its records and blobs stay for `blob_grace_ms`, so queries that
    /// started before the drop finish reading it, and are removed by a later
    /// [`Catalog::purge_dropped`] (which this call also runs for earlier drops).
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let table = self.open_table(name).await?;
        let marker = DroppedRecord {
            name: name.to_string(),
            dropped_ms: now_ms(),
        };
        let body = serde_json::to_vec(&marker).expect("drop records serialize");
        match self
            .meta
            .put_if_absent(&dropped_key(&table.inner.id), Bytes::from(body))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {} // dropped before, and the name came back?
            Err(e) => return Err(e.into()),
        }
        self.meta.delete(&dataset_key(name)).await?;
        info!(dataset = name, "dropped dataset");
        if let Err(e) = self.purge_dropped().await {
            warn!(error = %e, "removing the files of dropped datasets failed; retried later");
        }
        Ok(())
    }

    /// Removes the records and blobs of datasets dropped longer than `blob_grace_ms`
    /// ago; returns how many datasets it removed.
    pub async fn purge_dropped(&self) -> Result<usize> {
        let now = now_ms();
        let mut purged = 0;
        for key in self.meta.list(DROPPED_PREFIX).await? {
            let Some(id) = key.strip_prefix(DROPPED_PREFIX) else {
                continue;
            };
            let Some(bytes) = self.meta.get(&key).await? else {
                continue;
            };
            let marker: DroppedRecord =
                serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?;
            if now - marker.dropped_ms < self.options.blob_grace_ms {
                continue;
            }
            let prefix = format!("tables/{id}/");
            for record in self.meta.list(&prefix).await? {
                self.meta.delete(&record).await?;
            }
            for blob in self.blobs.list(&prefix).await? {
                self.blobs.delete(&blob.path).await?;
            }
            self.meta.delete(&key).await?;
            info!(
                dataset = marker.name,
                id, "removed the files of a dropped dataset"
            );
            purged += 1;
        }
        Ok(purged)
    }
}

/// Where a dropped dataset waits for its files to be removed.
const DROPPED_PREFIX: &str = "dropped/";

fn dropped_key(id: &str) -> String {
    format!("{DROPPED_PREFIX}{id}")
}

/// A dropped dataset whose files are kept for readers until the grace period ends.
#[derive(Debug, Serialize, Deserialize)]
struct DroppedRecord {
    name: String,
    dropped_ms: i64,
}

fn version_key(id: &str, v: u64) -> String {
    format!("tables/{id}/versions/{v:020}")
}

/// Where vacuum keeps the records of protected (tagged) versions below the retention
/// line, so that `versions/` always holds one contiguous range ending at the head.
fn kept_key(id: &str, v: u64) -> String {
    format!("tables/{id}/kept/{v:020}")
}

/// A versioned dataset. Cheap to clone; clones share the manifest cache.
#[derive(Clone, Debug)]
pub struct Table {
    inner: Arc<TableInner>,
}

#[derive(Debug)]
struct TableInner {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    options: TableOptions,
    id: String,
    spec: DatasetSpec,
    keys: KeyCodec,
    /// The newest manifest this handle has seen.
    latest: Mutex<Option<Arc<Manifest>>>,
}

/// A change to commit, built by an operation against a base manifest.
struct Txn {
    operation: Operation,
    /// For rollback: the manifest the new version starts from.
    start: Option<Arc<Manifest>>,
    schema: Option<SchemaRef>,
    add: Vec<SegmentMeta>,
    remove: Vec<SegmentRef>,
    deletes: Vec<DvUpdate>,
    producers: BTreeMap<String, u64>,
    rows_added: u64,
    rows_removed: u64,
    retention: Option<Retention>,
    /// When the first new blob of this transaction started being written.
    blobs_since_ms: Option<i64>,
}

impl Txn {
    fn new(operation: Operation) -> Self {
        Self {
            operation,
            start: None,
            schema: None,
            add: vec![],
            remove: vec![],
            deletes: vec![],
            producers: BTreeMap::new(),
            rows_added: 0,
            rows_removed: 0,
            retention: None,
            blobs_since_ms: None,
        }
    }
}

/// New rows of one shard, sorted by primary key, and the segments holding them.
struct ShardWrite {
    shard: u32,
    batch: RecordBatch,
    segments: Vec<SegmentMeta>,
}

impl Table {
    fn new(catalog: &Catalog, id: String, spec: DatasetSpec) -> Self {
        let keys = KeyCodec::new(&spec.schema, &spec.partition_key, &spec.row_key)
            .expect("validated spec has its key columns");
        Self {
            inner: Arc::new(TableInner {
                blobs: catalog.blobs.clone(),
                meta: catalog.meta.clone(),
                options: catalog.options.clone(),
                id,
                spec,
                keys,
                latest: Mutex::new(None),
            }),
        }
    }

    /// The table's unique id: a dataset dropped and created again under the same name
    /// gets a new id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn name(&self) -> &str {
        self.inner.spec.name.as_str()
    }

    /// The spec the dataset was created with (the schema may since have gained columns).
    pub fn spec(&self) -> &DatasetSpec {
        &self.inner.spec
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    fn options(&self) -> &TableOptions {
        &self.inner.options
    }

    fn prefix(&self) -> String {
        format!("tables/{}", self.inner.id)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}/tags/{tag}", self.prefix())
    }

    fn checkpoint_path(&self, v: u64) -> String {
        format!("{}/checkpoints/{v:020}.json.zst", self.prefix())
    }

    fn cached(&self) -> Option<Arc<Manifest>> {
        self.inner.latest.lock().expect("lock poisoned").clone()
    }

    fn remember(&self, m: &Arc<Manifest>) {
        let mut latest = self.inner.latest.lock().expect("lock poisoned");
        if latest.as_ref().is_none_or(|l| l.version < m.version) {
            *latest = Some(m.clone());
        }
    }

    async fn record(&self, v: u64) -> Result<Option<VersionRecord>> {
        for key in [version_key(&self.inner.id, v), kept_key(&self.inner.id, v)] {
            if let Some(bytes) = self.inner.meta.get(&key).await? {
                return Ok(Some(VersionRecord::decode(&key, &bytes)?));
            }
        }
        Ok(None)
    }

    /// Whether `v` is in the version log (`versions/`, a contiguous range ending at head).
    async fn in_log(&self, v: u64) -> Result<bool> {
        Ok(self
            .inner
            .meta
            .get(&version_key(&self.inner.id, v))
            .await?
            .is_some())
    }

    async fn load_checkpoint(&self, v: u64) -> Result<Option<Manifest>> {
        let path = self.checkpoint_path(v);
        match self.inner.blobs.get(&path).await {
            Ok(bytes) => Ok(Some(decode_checkpoint(&path, &bytes)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_checkpoint(&self, m: &Manifest) -> Result<()> {
        let bytes = encode_checkpoint(m)?;
        self.inner
            .blobs
            .put(&self.checkpoint_path(m.version), Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// Version numbers with a record under `dir` (`versions` or `kept`), ascending.
    async fn numbers_in(&self, dir: &str) -> Result<Vec<u64>> {
        let prefix = format!("{}/{dir}/", self.prefix());
        let keys = self.inner.meta.list(&prefix).await?;
        keys.iter()
            .map(|k| {
                k[prefix.len()..]
                    .parse::<u64>()
                    .map_err(|e| Error::corrupt(k, e))
            })
            .collect()
    }

    /// All version numbers that have a record (the log and kept tagged versions), ascending.
    async fn version_numbers(&self) -> Result<Vec<u64>> {
        let mut all = self.numbers_in("versions").await?;
        all.extend(self.numbers_in("kept").await?);
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// The newest committed version. Starts from what this handle or the head hint
    /// knows and probes forward, so it costs a few record reads, not a listing.
    pub async fn head_version(&self) -> Result<u64> {
        let hint_key = format!("{}/head", self.prefix());
        let hint = match self.inner.meta.get(&hint_key).await? {
            Some(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0),
            None => 0,
        };
        let mut v = hint.max(self.cached().map_or(0, |m| m.version));
        // The log is contiguous up to the head, so probing forward from any version in it
        // finds the head. A start point vacuum removed means a listing instead.
        if v == 0 || !self.in_log(v).await? {
            v = self
                .numbers_in("versions")
                .await?
                .last()
                .copied()
                .ok_or_else(|| {
                    Error::corrupt(format!("dataset {}", self.name()), "has no versions")
                })?;
        }
        while self.in_log(v + 1).await? {
            v += 1;
        }
        Ok(v)
    }

    /// The manifest of the head version.
    pub async fn head(&self) -> Result<Arc<Manifest>> {
        let v = self.head_version().await?;
        self.manifest(v).await
    }

    /// The manifest of version `v`: the nearest checkpoint or cached manifest at or
    /// below it, plus the records after it (a rollback record jumps to its target).
    pub async fn manifest(&self, v: u64) -> Result<Arc<Manifest>> {
        let cached = self.cached();
        if let Some(c) = &cached
            && c.version == v
        {
            return Ok(c.clone());
        }
        let interval = self.options().checkpoint_interval.max(1);
        let mut chain: Vec<VersionRecord> = Vec::new();
        let mut cur = v;
        let mut base = loop {
            if let Some(c) = &cached
                && c.version == cur
            {
                break (**c).clone();
            }
            if cur.is_multiple_of(interval)
                && let Some(m) = self.load_checkpoint(cur).await?
            {
                break m;
            }
            match self.record(cur).await? {
                Some(rec) => {
                    let prev = rec.base.unwrap_or(cur - 1);
                    let first = cur == 1;
                    chain.push(rec);
                    if first {
                        break Manifest::empty(self.inner.spec.schema.clone());
                    }
                    cur = prev;
                }
                None => {
                    // `cur` was vacuumed (or never existed). Vacuum leaves a checkpoint at
                    // every retained version whose predecessor it removed.
                    if let Some(last) = chain.pop()
                        && let Some(m) = self.load_checkpoint(last.version).await?
                    {
                        break m;
                    }
                    return Err(Box::pin(self.missing_version(v)).await);
                }
            }
        };
        for rec in chain.iter().rev() {
            base.apply(rec)?;
        }
        let m = Arc::new(base);
        self.remember(&m);
        Ok(m)
    }

    async fn missing_version(&self, v: u64) -> Error {
        let head = match self.head_version().await {
            Ok(h) => h,
            Err(e) => return e,
        };
        if v == 0 || v > head {
            return Error::VersionNotFound {
                dataset: self.name().to_string(),
                version: v,
                head,
            };
        }
        let oldest = match self.manifest(head).await {
            Ok(m) => m.retention.oldest,
            Err(e) => return e,
        };
        Error::VersionVacuumed {
            dataset: self.name().to_string(),
            version: v,
            oldest,
        }
    }

    /// Resolves a version spec to a version number that exists.
    pub async fn resolve(&self, spec: &VersionSpec) -> Result<u64> {
        match spec {
            VersionSpec::Head => self.head_version().await,
            VersionSpec::Version(v) => {
                let head = self.head_version().await?;
                if *v == 0 || *v > head {
                    return Err(Error::VersionNotFound {
                        dataset: self.name().to_string(),
                        version: *v,
                        head,
                    });
                }
                let retention = self.manifest(head).await?.retention.clone();
                if !retention.retains(*v) {
                    return Err(Error::VersionVacuumed {
                        dataset: self.name().to_string(),
                        version: *v,
                        oldest: retention.oldest,
                    });
                }
                Ok(*v)
            }
            VersionSpec::Tag(tag) => {
                let key = self.tag_key(tag);
                let bytes = self
                    .inner
                    .meta
                    .get(&key)
                    .await?
                    .ok_or_else(|| Error::TagNotFound {
                        dataset: self.name().to_string(),
                        tag: tag.clone(),
                    })?;
                let info: TagInfo =
                    serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?;
                Ok(info.version)
            }
            VersionSpec::Timestamp(t) => self.version_at_time(*t).await,
        }
    }

    /// The latest retained version committed at or before `t` (ms since the epoch).
    /// Commit timestamps never decrease, so this is a binary search over records.
    async fn version_at_time(&self, t: i64) -> Result<u64> {
        let head = self.head_version().await?;
        let retention = self.manifest(head).await?.retention.clone();
        let ts = |v: u64| async move {
            self.record(v)
                .await?
                .map(|r| r.timestamp_ms)
                .ok_or_else(|| Error::corrupt(format!("version {v}"), "record missing"))
        };
        let (mut lo, mut hi) = (retention.oldest, head);
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            if ts(mid).await? <= t {
                found = Some(mid);
                lo = mid + 1;
            } else {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            }
        }
        if found.is_none() {
            for &p in retention.protected.iter().rev() {
                if ts(p).await? <= t {
                    found = Some(p);
                    break;
                }
            }
        }
        found.ok_or_else(|| Error::NoVersionAtTime {
            dataset: self.name().to_string(),
            timestamp_ms: t,
        })
    }

    /// A consistent, immutable view of one version.
    pub async fn snapshot(&self, at: &VersionSpec) -> Result<Snapshot> {
        let v = self.resolve(at).await?;
        Ok(Snapshot {
            table: self.clone(),
            manifest: self.manifest(v).await?,
        })
    }

    /// Version records, oldest first (vacuumed versions are gone).
    pub async fn list_versions(&self) -> Result<Vec<VersionInfo>> {
        let nums = self.version_numbers().await?;
        let records = futures::stream::iter(nums)
            .map(|v| async move { self.record(v).await })
            .buffered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(records.iter().flatten().map(VersionInfo::from).collect())
    }

    /// Commits `txn` as version `base.version + 1`. Fails with `Error::Conflict` when
    /// another writer took that version; the caller rebuilds the transaction and retries.
    async fn try_commit(&self, base: &Manifest, txn: Txn) -> Result<VersionInfo> {
        let v = base.version + 1;
        let now = now_ms();
        if let Some(since) = txn.blobs_since_ms
            && now - since > self.options().blob_grace_ms
        {
            return Err(Error::TransactionExpired {
                dataset: self.name().to_string(),
                elapsed_ms: now - since,
                grace_ms: self.options().blob_grace_ms,
            });
        }
        let record = VersionRecord {
            format: crate::manifest::FORMAT,
            version: v,
            timestamp_ms: now.max(base.timestamp_ms),
            operation: txn.operation,
            base: txn.start.as_ref().map(|m| m.version),
            schema: txn.schema.as_deref().map(schema_to_defs),
            add: txn.add,
            remove: txn.remove,
            deletes: txn.deletes,
            producers: txn.producers,
            rows_added: txn.rows_added,
            rows_removed: txn.rows_removed,
            retention: txn.retention,
        };
        let key = version_key(&self.inner.id, v);
        match self
            .inner
            .meta
            .put_if_absent(&key, Bytes::from(record.encode()))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                return Err(Error::Conflict {
                    dataset: self.name().to_string(),
                    reason: format!("version {v} was committed by another writer"),
                });
            }
            Err(e) => return Err(e.into()),
        }
        // A writer whose base is so stale that vacuum trimmed the log past it would have
        // just written into the trimmed range. Vacuum trims oldest-first, so in that case
        // the base record is gone too: take the record back and rebuild on the real head.
        if v > 1 && !self.in_log(v - 1).await? {
            self.inner.meta.delete(&key).await?;
            return Err(Error::Conflict {
                dataset: self.name().to_string(),
                reason: format!("version {} was vacuumed while building on it", v - 1),
            });
        }
        let mut next = match &txn.start {
            Some(start) => (**start).clone(),
            None => base.clone(),
        };
        next.apply(&record)?;
        let next = Arc::new(next);
        self.remember(&next);
        debug!(
            dataset = self.name(),
            version = v,
            op = record.operation.name(),
            "committed"
        );
        if v.is_multiple_of(32)
            && let Err(e) = self
                .inner
                .meta
                .put(
                    &format!("{}/head", self.prefix()),
                    Bytes::from(v.to_string()),
                )
                .await
        {
            warn!(dataset = self.name(), version = v, error = %e, "could not update head hint");
        }
        if v.is_multiple_of(self.options().checkpoint_interval.max(1))
            && let Err(e) = self.write_checkpoint(&next).await
        {
            warn!(dataset = self.name(), version = v, error = %e, "could not write checkpoint");
        }
        Ok(VersionInfo::from(&record))
    }

    /// Runs `build` against the head and commits its transaction, retrying on conflict.
    async fn commit_loop<F, Fut>(&self, mut build: F) -> Result<VersionInfo>
    where
        F: FnMut(Arc<Manifest>) -> Fut,
        Fut: std::future::Future<Output = Result<Txn>>,
    {
        let mut attempt = 0;
        loop {
            let base = self.head().await?;
            let txn = build(base.clone()).await?;
            match self.try_commit(&base, txn).await {
                Err(e) if e.is_conflict() && attempt < self.options().max_commit_retries => {
                    attempt += 1;
                    debug!(dataset = self.name(), attempt, "commit conflict, retrying");
                }
                other => return other,
            }
        }
    }

    /// Checks `batch` against `schema` and returns it with columns in schema order:
    /// no missing, extra or mistyped columns, no nulls in non-nullable columns.
    pub fn conform(&self, schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
        let given = batch.schema();
        let mut seen = std::collections::HashSet::with_capacity(given.fields().len());
        for f in given.fields() {
            // A name given twice would be read from its first column only, silently
            // dropping the other.
            if !seen.insert(f.name()) {
                return Err(Error::SchemaMismatch(format!(
                    "column {:?} is given more than once",
                    f.name()
                )));
            }
            if schema.field_with_name(f.name()).is_err() {
                return Err(Error::SchemaMismatch(format!(
                    "column {:?} is not in dataset {:?}",
                    f.name(),
                    self.name()
                )));
            }
        }
        let mut cols = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let idx = given.index_of(field.name()).map_err(|_| {
                Error::SchemaMismatch(format!(
                    "column {:?} of dataset {:?} is missing",
                    field.name(),
                    self.name()
                ))
            })?;
            let col = batch.column(idx);
            if col.data_type() != field.data_type() {
                return Err(Error::SchemaMismatch(format!(
                    "column {:?} has type {}, dataset {:?} expects {}",
                    field.name(),
                    col.data_type(),
                    self.name(),
                    field.data_type()
                )));
            }
            if !field.is_nullable() && col.null_count() > 0 {
                let what = if self.inner.spec.primary_key().any(|k| k == field.name()) {
                    "key column"
                } else {
                    "non-nullable column"
                };
                return Err(Error::SchemaMismatch(format!(
                    "{what} {:?} contains {} null(s)",
                    field.name(),
                    col.null_count()
                )));
            }
            cols.push(col.clone());
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }

    /// Splits rows by shard, sorts each shard by primary key (deduplicating when the
    /// dataset has a row key) and writes the segments. The CPU work (sort, Parquet
    /// encoding) runs on blocking threads, shards in parallel, so a large write neither
    /// stalls the async runtime nor uses only one core.
    async fn write_shards(&self, batches: &[RecordBatch]) -> Result<Vec<ShardWrite>> {
        let spec = &self.inner.spec;
        // Rows are gathered per shard straight from the input batches (one copy), not
        // concatenated first.
        let mut buckets: BTreeMap<u32, Vec<(usize, usize)>> = BTreeMap::new();
        for (b, batch) in batches.iter().enumerate() {
            let shards = shard_of_rows(batch, &self.inner.keys.partition_indices, spec.shards)?;
            for (row, s) in shards.iter().enumerate() {
                buckets.entry(*s).or_default().push((b, row));
            }
        }
        let dir = format!("{}/segments", self.prefix());
        let single = buckets.len() == 1;
        let tasks: Vec<_> = buckets
            .into_iter()
            .map(|(shard, rows)| {
                let inner = self.inner.clone();
                let batches = batches.to_vec();
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || -> Result<_> {
                    let part = if single && batches.len() == 1 {
                        batches[0].clone()
                    } else {
                        let refs: Vec<&RecordBatch> = batches.iter().collect();
                        compute::interleave_record_batch(&refs, &rows)?
                    };
                    let sorted = sort_and_dedupe(&inner.keys, &part, inner.spec.has_row_key())?;
                    let encoded =
                        encode_segments(&dir, shard, &inner.keys, &sorted, &inner.options.segment)?;
                    Ok((shard, sorted, encoded))
                })
            })
            .collect();
        let mut encoded = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(result) => encoded.push(result?),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => {
                    return Err(Error::Storage(StorageError::Backend(format!(
                        "segment encoding cancelled: {e}"
                    ))));
                }
            }
        }
        let mut out = Vec::with_capacity(encoded.len());
        for (shard, sorted, segments) in encoded {
            let segments = put_segments(self.inner.blobs.as_ref(), segments).await?;
            out.push(ShardWrite {
                shard,
                batch: sorted,
                segments,
            });
        }
        Ok(out)
    }

    async fn delete_blobs(&self, segments: impl IntoIterator<Item = &SegmentMeta>) {
        for s in segments {
            if let Err(e) = self.inner.blobs.delete(&s.path).await {
                warn!(path = s.path, error = %e, "could not remove unused segment; vacuum will");
            }
        }
    }

    /// Writes rows as one new version. With a row key, rows replace any live row with the
    /// same primary key (an upsert; within the batches the last row wins); without, they
    /// are appended. `producers` are exactly-once marks committed atomically with the rows:
    /// if every mark is already at or above the one given, nothing is written.
    pub async fn write(
        &self,
        batches: &[RecordBatch],
        producers: BTreeMap<String, u64>,
    ) -> Result<WriteOutcome> {
        let head = self.head().await?;
        if is_duplicate(&head, &producers) {
            return Ok(WriteOutcome::Duplicate { head: head.version });
        }
        let schema = head.schema.clone();
        let conformed = batches
            .iter()
            .map(|b| self.conform(&schema, b))
            .collect::<Result<Vec<_>>>()?;
        let since = now_ms();
        let writes = self.write_shards(&conformed).await?;
        let upsert = self.inner.spec.has_row_key();
        let new_segments: Vec<SegmentMeta> = writes
            .iter()
            .flat_map(|w| w.segments.iter().cloned())
            .collect();
        let rows_added: u64 = new_segments.iter().map(|s| s.rows).sum();
        // Set (to head + 1) when a concurrent commit turned out to hold these marks already.
        let duplicate_head = std::sync::atomic::AtomicU64::new(0);
        let result = self
            .commit_loop(|base| {
                let writes = &writes;
                let producers = &producers;
                let new_segments = &new_segments;
                let schema = &schema;
                let duplicate_head = &duplicate_head;
                async move {
                    if is_duplicate(&base, producers) {
                        duplicate_head
                            .store(base.version + 1, std::sync::atomic::Ordering::Relaxed);
                        return Err(Error::InvalidArgument("duplicate".into()));
                    }
                    if !schema_compatible(&base.schema, schema) {
                        return Err(Error::Conflict {
                            dataset: self.name().to_string(),
                            reason: "the schema changed while the rows were being written".into(),
                        });
                    }
                    let mut txn = Txn::new(if upsert {
                        Operation::Upsert
                    } else {
                        Operation::Append
                    });
                    if upsert {
                        let (deletes, remove, removed) =
                            self.resolve_upserts(&base, writes).await?;
                        txn.deletes = deletes;
                        txn.remove = remove;
                        txn.rows_removed = removed;
                    }
                    txn.add = new_segments.clone();
                    txn.rows_added = rows_added;
                    txn.producers = producers.clone();
                    txn.blobs_since_ms = Some(since);
                    Ok(txn)
                }
            })
            .await;
        let duplicate = duplicate_head.load(std::sync::atomic::Ordering::Relaxed);
        if duplicate > 0 {
            self.delete_blobs(&new_segments).await;
            return Ok(WriteOutcome::Duplicate {
                head: duplicate - 1,
            });
        }
        match result {
            Ok(info) => Ok(WriteOutcome::Committed(info)),
            Err(e) => {
                if e.is_conflict() {
                    self.delete_blobs(&new_segments).await;
                }
                Err(e)
            }
        }
    }

    /// Finds the live rows that the new rows replace. Only segments of the shards written
    /// are considered, and of those only segments whose key ranges overlap the new keys.
    async fn resolve_upserts(
        &self,
        base: &Manifest,
        writes: &[ShardWrite],
    ) -> Result<(Vec<DvUpdate>, Vec<SegmentRef>, u64)> {
        let mut deletes = Vec::new();
        let mut removes = Vec::new();
        let mut removed = 0;
        for w in writes {
            if w.batch.num_rows() == 0 {
                continue;
            }
            let rows = self.inner.keys.encode(&w.batch)?;
            let keyset: HashSet<&[u8]> = rows.iter().map(|r| r.data()).collect();
            let first = w.segments.first().expect("rows make segments");
            let last = w.segments.last().expect("rows make segments");
            let bounds = KeyBounds::new(&self.inner.spec, &first.pk_min, &last.pk_max, &w.segments);
            let candidates: Vec<&LiveSegment> = base
                .shard_segments(w.shard)
                .filter(|s| bounds.may_overlap(&s.meta))
                .collect();
            let (d, r, n) = self.mark_keys(base, &candidates, &keyset).await?;
            deletes.extend(d);
            removes.extend(r);
            removed += n;
        }
        Ok((deletes, removes, removed))
    }

    /// Marks, in `candidates`, the live rows whose primary key is in `keyset`.
    async fn mark_keys(
        &self,
        base: &Manifest,
        candidates: &[&LiveSegment],
        keyset: &HashSet<&[u8]>,
    ) -> Result<(Vec<DvUpdate>, Vec<SegmentRef>, u64)> {
        let keys = &self.inner.keys;
        let reads = read_segments(
            self.inner.blobs.clone(),
            base.schema.clone(),
            keys.pk_indices.clone(),
            candidates.iter().map(|s| (*s).clone()).collect(),
            false,
            self.options().read_parallelism,
        );
        let mut reads = std::pin::pin!(reads);
        let mut deletes = Vec::new();
        let mut removes = Vec::new();
        let mut removed = 0;
        while let Some(next) = reads.next().await {
            let (seg, batches) = next?;
            let seg = &seg;
            let mut hits = RoaringBitmap::new();
            let mut offset = 0u32;
            for b in &batches {
                let cols: Vec<ArrayRef> = b.columns().to_vec();
                let encoded = keys.encode_columns(&cols)?;
                for (i, row) in encoded.iter().enumerate() {
                    if keyset.contains(row.as_ref()) {
                        hits.insert(offset + i as u32);
                    }
                }
                offset += b.num_rows() as u32;
            }
            if let Some(d) = &seg.deleted {
                hits -= d.as_ref();
            }
            if hits.is_empty() {
                continue;
            }
            removed += hits.len();
            self.push_deletion(seg, hits, &mut deletes, &mut removes);
        }
        Ok((deletes, removes, removed))
    }

    fn push_deletion(
        &self,
        seg: &LiveSegment,
        newly: RoaringBitmap,
        deletes: &mut Vec<DvUpdate>,
        removes: &mut Vec<SegmentRef>,
    ) {
        let mut all = seg.deleted.as_deref().cloned().unwrap_or_default();
        all |= newly;
        if all.len() >= seg.meta.rows {
            removes.push(SegmentRef {
                shard: seg.meta.shard,
                id: seg.meta.id.clone(),
            });
        } else {
            deletes.push(DvUpdate {
                shard: seg.meta.shard,
                id: seg.meta.id.clone(),
                deleted: Dv(Arc::new(all)),
            });
        }
    }

    /// Deletes the rows with the given primary keys (`keys` holds the primary key
    /// columns). For a dataset without row key, the key is the partition key and every
    /// row of the partition goes. Always commits one version.
    pub async fn delete_keys(&self, keys: &RecordBatch) -> Result<VersionInfo> {
        self.delete_keys_at(keys, None).await
    }

    /// [`Self::delete_keys`] as the version right after `base`: fails with
    /// [`Error::Conflict`] (and commits nothing) when the head is no longer `base`. For
    /// keys found by reading version `base`: a row written since under one of those keys
    /// was not seen by that read and must not be deleted.
    pub async fn delete_keys_at(
        &self,
        keys: &RecordBatch,
        base_version: Option<u64>,
    ) -> Result<VersionInfo> {
        let spec = &self.inner.spec;
        let pk: Vec<String> = spec.primary_key().map(str::to_string).collect();
        let pk_schema = Arc::new(Schema::new(
            pk.iter()
                .map(|n| spec.schema.field_with_name(n).cloned())
                .collect::<std::result::Result<Vec<Field>, _>>()?,
        ));
        let keys = self.conform(&pk_schema, keys)?;
        let partition: Vec<usize> = (0..spec.partition_key.len()).collect();
        let shards = shard_of_rows(&keys, &partition, spec.shards)?;
        let encoded = self.inner.keys.encode_columns(keys.columns())?;
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, s) in shards.iter().enumerate() {
            by_shard.entry(*s).or_default().push(i);
        }
        let n = keys.num_rows();
        self.commit_loop(|base| {
            let by_shard = &by_shard;
            let encoded = &encoded;
            async move {
                if let Some(expected) = base_version
                    && base.version != expected
                {
                    return Err(Error::Conflict {
                        dataset: self.name().to_string(),
                        reason: format!(
                            "the keys to delete were found at version {expected}, the head is now {}",
                            base.version
                        ),
                    });
                }
                let mut txn = Txn::new(Operation::Delete {
                    predicate: format!("primary key in {n} key(s)"),
                });
                for (shard, rows) in by_shard {
                    let keyset: HashSet<&[u8]> =
                        rows.iter().map(|&i| encoded.row(i).data()).collect();
                    let candidates: Vec<&LiveSegment> = base.shard_segments(*shard).collect();
                    let (d, r, removed) = self.mark_keys(&base, &candidates, &keyset).await?;
                    txn.deletes.extend(d);
                    txn.remove.extend(r);
                    txn.rows_removed += removed;
                }
                Ok(txn)
            }
        })
        .await
    }

    /// Deletes every live row matching `predicate` as one new version. Segments whose
    /// statistics rule the predicate out are not read.
    pub async fn delete_where(&self, predicate: &Predicate) -> Result<VersionInfo> {
        self.commit_loop(|base| async move {
            let bound = predicate.bind(&base.schema)?;
            let columns: Vec<usize> = bound
                .columns()
                .iter()
                .map(|c| base.schema.index_of(c))
                .collect::<std::result::Result<_, _>>()?;
            let mut txn = Txn::new(Operation::Delete {
                predicate: predicate.to_string(),
            });
            let candidates: Vec<&LiveSegment> = base
                .live_segments()
                .filter(|s| bound.may_match(&|c| s.meta.column_stats(c), s.meta.rows))
                .collect();
            let reads = read_segments(
                self.inner.blobs.clone(),
                base.schema.clone(),
                columns.clone(),
                candidates.into_iter().cloned().collect(),
                false,
                self.options().read_parallelism,
            );
            let mut reads = std::pin::pin!(reads);
            while let Some(next) = reads.next().await {
                let (seg, batches) = next?;
                let mut hits = RoaringBitmap::new();
                let mut offset = 0u32;
                for b in &batches {
                    let mask = bound.evaluate(b)?;
                    for (i, m) in mask.iter().enumerate() {
                        if m == Some(true) {
                            hits.insert(offset + i as u32);
                        }
                    }
                    offset += b.num_rows() as u32;
                }
                if let Some(d) = &seg.deleted {
                    hits -= d.as_ref();
                }
                if !hits.is_empty() {
                    txn.rows_removed += hits.len();
                    self.push_deletion(&seg, hits, &mut txn.deletes, &mut txn.remove);
                }
            }
            Ok(txn)
        })
        .await
    }

    /// Makes a new version whose content (rows and schema) equals version `to`'s. History
    /// is kept, so the rollback itself can be rolled back. Costs one record write,
    /// whatever the data size.
    pub async fn rollback(&self, to: &VersionSpec) -> Result<VersionInfo> {
        let target = self.resolve(to).await?;
        let start = self.manifest(target).await?;
        self.commit_loop(|base| {
            let start = start.clone();
            async move {
                if !base.retention.retains(target) {
                    return Err(Error::VersionVacuumed {
                        dataset: self.name().to_string(),
                        version: target,
                        oldest: base.retention.oldest,
                    });
                }
                let mut txn = Txn::new(Operation::Rollback { to: target });
                let (added, removed) = diff_rows(&base, &start);
                txn.rows_added = added;
                txn.rows_removed = removed;
                txn.schema = Some(start.schema.clone());
                txn.producers = base.producers.clone();
                txn.retention = Some(base.retention.clone());
                txn.start = Some(start);
                Ok(txn)
            }
        })
        .await
    }

    /// Adds a nullable column as a new version. Segments written before read it as null.
    pub async fn add_column(&self, field: Field) -> Result<VersionInfo> {
        validate_name("column", field.name())?;
        if !field.is_nullable() {
            return Err(Error::InvalidArgument(format!(
                "added column {:?} must be nullable: existing rows have no value for it",
                field.name()
            )));
        }
        let type_name = format_type(field.data_type())?;
        self.commit_loop(|base| {
            let field = field.clone();
            let type_name = type_name.clone();
            async move {
                if base
                    .schema
                    .fields()
                    .iter()
                    .any(|f| f.name().eq_ignore_ascii_case(field.name()))
                {
                    return Err(Error::InvalidArgument(format!(
                        "dataset {:?} already has a column {:?}",
                        self.name(),
                        field.name()
                    )));
                }
                let mut fields: Vec<Field> = base
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let name = field.name().clone();
                fields.push(field);
                let schema = Schema::new(fields);
                validate_schema(&schema)?;
                let mut txn = Txn::new(Operation::AddColumn {
                    column: name,
                    data_type: type_name,
                });
                txn.schema = Some(Arc::new(schema));
                Ok(txn)
            }
        })
        .await
    }

    /// Names `version` (any spec) `tag`; tagged versions are never vacuumed.
    pub async fn create_tag(&self, tag: &str, version: &VersionSpec) -> Result<TagInfo> {
        validate_name("tag", tag)?;
        let v = self.resolve(version).await?;
        let info = TagInfo {
            name: tag.to_string(),
            version: v,
            created_ms: now_ms(),
        };
        let key = self.tag_key(tag);
        let body = serde_json::to_vec(&info).expect("tags serialize");
        match self.inner.meta.put_if_absent(&key, Bytes::from(body)).await {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                return Err(Error::TagExists {
                    dataset: self.name().to_string(),
                    tag: tag.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        // A vacuum that committed after `resolve` may have dropped the version; it lists
        // tags only after committing, so checking again after writing the tag is enough.
        let head = self.head().await?;
        if !head.retention.retains(v) {
            self.inner.meta.delete(&key).await?;
            return Err(Error::VersionVacuumed {
                dataset: self.name().to_string(),
                version: v,
                oldest: head.retention.oldest,
            });
        }
        Ok(info)
    }

    pub async fn delete_tag(&self, tag: &str) -> Result<()> {
        validate_name("tag", tag)?;
        let key = self.tag_key(tag);
        if self.inner.meta.get(&key).await?.is_none() {
            return Err(Error::TagNotFound {
                dataset: self.name().to_string(),
                tag: tag.to_string(),
            });
        }
        self.inner.meta.delete(&key).await?;
        Ok(())
    }

    pub async fn list_tags(&self) -> Result<Vec<TagInfo>> {
        let prefix = format!("{}/tags/", self.prefix());
        let mut out = Vec::new();
        for key in self.inner.meta.list(&prefix).await? {
            if let Some(bytes) = self.inner.meta.get(&key).await? {
                out.push(serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?);
            }
        }
        Ok(out)
    }

    /// Merges each shard's small segments (and those with many deleted rows) into
    /// segments of the target size, dropping deleted rows, as one version whose content
    /// is unchanged. Returns `None` when no shard needed it.
    pub async fn compact(&self) -> Result<Option<VersionInfo>> {
        let base = self.head().await?;
        let target = self.options().segment.target_bytes;
        let mut shards: BTreeMap<u32, Vec<LiveSegment>> = BTreeMap::new();
        for seg in base.live_segments() {
            let small = seg.meta.bytes < target / 2;
            let dead = seg.meta.rows - seg.live_rows();
            let sparse = dead * 5 > seg.meta.rows;
            if small || sparse {
                shards.entry(seg.meta.shard).or_default().push(seg.clone());
            }
        }
        shards.retain(|_, segs| segs.len() >= 2 || segs.iter().any(|s| s.deleted.is_some()));
        if shards.is_empty() {
            return Ok(None);
        }
        let since = now_ms();
        let all_columns: Vec<usize> = (0..base.schema.fields().len()).collect();
        let dir = format!("{}/segments", self.prefix());
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for (shard, segs) in &shards {
            let mut batches = Vec::new();
            for seg in segs {
                batches.extend(
                    read_segment(
                        self.inner.blobs.clone(),
                        &seg.meta,
                        &base.schema,
                        &all_columns,
                        seg.deleted.as_deref(),
                    )
                    .await?,
                );
                remove.push(SegmentRef {
                    shard: *shard,
                    id: seg.meta.id.clone(),
                });
            }
            let merged = compute::concat_batches(&base.schema, &batches)?;
            if merged.num_rows() == 0 {
                continue;
            }
            // CPU work off the async runtime, as in `write_shards`.
            let (inner, dir, shard) = (self.inner.clone(), dir.clone(), *shard);
            let encoded = tokio::task::spawn_blocking(move || -> Result<_> {
                let sorted = sort_and_dedupe(&inner.keys, &merged, false)?;
                encode_segments(&dir, shard, &inner.keys, &sorted, &inner.options.segment)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            add.extend(put_segments(self.inner.blobs.as_ref(), encoded).await?);
        }
        let inputs: Vec<LiveSegment> = shards.into_values().flatten().collect();
        let shard_list: Vec<u32> = inputs
            .iter()
            .map(|s| s.meta.shard)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let result = self
            .commit_loop(|head| {
                let add = add.clone();
                let remove = remove.clone();
                let inputs = &inputs;
                let base_schema = &base.schema;
                let shard_list = shard_list.clone();
                async move {
                    // Safe to rebase only if no input changed (a concurrent delete or upsert
                    // that touched an input must not be undone by dropping its rows again).
                    let unchanged = inputs.iter().all(|i| {
                        head.segment(i.meta.shard, &i.meta.id)
                            .is_some_and(|s| s.deleted == i.deleted)
                    });
                    if !unchanged || !schema_compatible(&head.schema, base_schema) {
                        return Err(Error::Conflict {
                            dataset: self.name().to_string(),
                            reason: "segments being compacted changed concurrently".into(),
                        });
                    }
                    let mut txn = Txn::new(Operation::Compact { shards: shard_list });
                    txn.add = add;
                    txn.remove = remove;
                    txn.blobs_since_ms = Some(since);
                    Ok(txn)
                }
            })
            .await;
        match result {
            Ok(info) => Ok(Some(info)),
            Err(e) => {
                self.delete_blobs(&add).await;
                Err(e)
            }
        }
    }

    /// Removes versions the policy does not keep (never the head, never a tagged
    /// version), then every blob no retained version uses and that is older than the
    /// grace period. Records its retention as a version of its own first, so a concurrent
    /// rollback or tag either lands before it (and is honoured) or sees it (and fails).
    pub async fn vacuum(&self, policy: &VacuumPolicy) -> Result<VacuumReport> {
        if policy.keep_last.is_none() && policy.keep_within_ms.is_none() {
            return Err(Error::InvalidArgument(
                "vacuum needs keep_last and/or keep_within_ms".into(),
            ));
        }
        if policy.keep_last == Some(0) {
            return Err(Error::InvalidArgument(
                "keep_last must be at least 1".into(),
            ));
        }
        let started = now_ms();
        let mut report = VacuumReport::default();
        let mut attempt = 0;
        let (head, oldest, protected) = loop {
            let base = self.head().await?;
            let h = base.version;
            let by_count = policy.keep_last.map(|n| (h + 1).saturating_sub(n).max(1));
            let by_age = match policy.keep_within_ms {
                Some(ms) => Some(match self.version_at_time(started - ms - 1).await {
                    Ok(v) => v + 1,
                    Err(Error::NoVersionAtTime { .. }) => 1,
                    Err(e) => return Err(e),
                }),
                None => None,
            };
            let wanted = match (by_count, by_age) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => unreachable!("checked above"),
            };
            let oldest = wanted.clamp(base.retention.oldest, h);
            if oldest <= base.retention.oldest {
                let (oldest, protected) = (base.retention.oldest, base.retention.protected.clone());
                break (base, oldest, protected);
            }
            // Only versions tagged now stay protected: deleting a tag releases its version.
            let protected: BTreeSet<u64> = self
                .list_tags()
                .await?
                .into_iter()
                .map(|t| t.version)
                .filter(|v| *v < oldest && base.retention.retains(*v))
                .collect();
            let mut txn = Txn::new(Operation::Vacuum {
                oldest_retained: oldest,
            });
            txn.retention = Some(Retention {
                oldest,
                protected: protected.clone(),
            });
            match self.try_commit(&base, txn).await {
                Ok(info) => {
                    report.version = Some(info.version);
                    break (self.manifest(info.version).await?, oldest, protected);
                }
                Err(e) if e.is_conflict() && attempt < self.options().max_commit_retries => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        report.oldest_retained = oldest;
        // Tags created while we committed protect their versions too.
        let mut keep: BTreeSet<u64> = protected.clone();
        keep.extend(
            self.list_tags()
                .await?
                .into_iter()
                .map(|t| t.version)
                .filter(|v| *v < oldest),
        );
        // Retained versions must stay readable without the removed records: checkpoint the
        // oldest retained version, every kept older version, and rollbacks into the removed range.
        let mut referenced: HashSet<String> = HashSet::new();
        let mut needs_checkpoint: BTreeSet<u64> = keep.clone();
        needs_checkpoint.insert(oldest);
        for v in oldest..=head.version {
            let rec = self
                .record(v)
                .await?
                .ok_or_else(|| Error::corrupt(format!("version {v}"), "record missing"))?;
            if let Some(b) = rec.base
                && b < oldest
                && !keep.contains(&b)
            {
                needs_checkpoint.insert(v);
            }
            referenced.extend(rec.add.iter().map(|s| s.path.clone()));
        }
        for &v in &needs_checkpoint {
            let m = self.manifest(v).await?;
            referenced.extend(m.live_segments().map(|s| s.meta.path.clone()));
            if self.load_checkpoint(v).await?.is_none() {
                self.write_checkpoint(&m).await?;
            }
        }
        // Version records below the retention line. Kept versions' records move out of the
        // log first, and the log is trimmed from its oldest end, so it stays contiguous.
        let id = &self.inner.id;
        for &p in &keep {
            if let Some(bytes) = self.inner.meta.get(&version_key(id, p)).await? {
                self.inner.meta.put(&kept_key(id, p), bytes).await?;
            }
        }
        for v in self.numbers_in("versions").await? {
            if v >= oldest {
                break;
            }
            self.inner.meta.delete(&version_key(id, v)).await?;
            if !keep.contains(&v) {
                report.versions_removed += 1;
            }
        }
        for v in self.numbers_in("kept").await? {
            if v < oldest && !keep.contains(&v) {
                self.inner.meta.delete(&kept_key(id, v)).await?;
                report.versions_removed += 1;
            }
        }
        if let Some(v) = report.version {
            let hint = Bytes::from(v.to_string());
            self.inner
                .meta
                .put(&format!("{}/head", self.prefix()), hint)
                .await?;
        }
        let cutoff = started - self.options().blob_grace_ms;
        let ckpt_prefix = format!("{}/checkpoints/", self.prefix());
        for blob in self.inner.blobs.list(&ckpt_prefix).await? {
            let v: Option<u64> = blob.path[ckpt_prefix.len()..]
                .split('.')
                .next()
                .and_then(|s| s.parse().ok());
            if let Some(v) = v
                && v < oldest
                && !keep.contains(&v)
            {
                self.inner.blobs.delete(&blob.path).await?;
                report.blobs_removed += 1;
                report.bytes_removed += blob.size;
            }
        }
        for blob in self
            .inner
            .blobs
            .list(&format!("{}/segments/", self.prefix()))
            .await?
        {
            if !referenced.contains(&blob.path) && blob.last_modified_ms < cutoff {
                self.inner.blobs.delete(&blob.path).await?;
                report.blobs_removed += 1;
                report.bytes_removed += blob.size;
            }
        }
        info!(dataset = self.name(), ?report, "vacuumed");
        Ok(report)
    }
}

fn is_duplicate(base: &Manifest, producers: &BTreeMap<String, u64>) -> bool {
    !producers.is_empty()
        && producers
            .iter()
            .all(|(p, seq)| base.producers.get(p).is_some_and(|m| m >= seq))
}

/// True if segments written with `written` can be committed on a head with `head`:
/// every written column exists in the head schema with the same type.
fn schema_compatible(head: &Schema, written: &Schema) -> bool {
    written.fields().iter().all(|f| {
        head.field_with_name(f.name())
            .is_ok_and(|h| h.data_type() == f.data_type())
    })
}

/// Rows live in `to` but not in `from`, and the other way round, from segment metadata
/// and deletion vectors only (no data is read).
fn diff_rows(from: &Manifest, to: &Manifest) -> (u64, u64) {
    let mut added = 0;
    let mut removed = 0;
    let empty = RoaringBitmap::new();
    for shard in from.shard_ids(to) {
        if from.shares_shard(to, shard) {
            continue;
        }
        for seg in to.shard_segments(shard) {
            match from.segment(shard, &seg.meta.id) {
                None => added += seg.live_rows(),
                Some(old) => {
                    let now = seg.deleted.as_deref().unwrap_or(&empty);
                    let before = old.deleted.as_deref().unwrap_or(&empty);
                    added += (before - now).len();
                    removed += (now - before).len();
                }
            }
        }
        for seg in from.shard_segments(shard) {
            if to.segment(shard, &seg.meta.id).is_none() {
                removed += seg.live_rows();
            }
        }
    }
    (added, removed)
}

/// Reads `columns` of each segment, up to `parallelism` at a time, in order; with
/// `apply_deletes`, deleted rows are skipped, otherwise row positions are the segment's.
/// The futures own their inputs, so the stream can move between threads.
fn read_segments(
    blobs: Arc<dyn BlobStore>,
    schema: SchemaRef,
    columns: Vec<usize>,
    segments: Vec<LiveSegment>,
    apply_deletes: bool,
    parallelism: usize,
) -> impl futures::Stream<Item = Result<(LiveSegment, Vec<RecordBatch>)>> + Send {
    let columns: Arc<[usize]> = columns.into();
    futures::stream::iter(segments)
        .map(move |seg| {
            let blobs = blobs.clone();
            let schema = schema.clone();
            let columns = columns.clone();
            async move {
                let deleted = if apply_deletes {
                    seg.deleted.as_deref()
                } else {
                    None
                };
                let batches = read_segment(blobs, &seg.meta, &schema, &columns, deleted).await?;
                Ok((seg, batches))
            }
        })
        .buffered(parallelism.max(1))
}

/// Bounds of a set of new keys, to skip segments that cannot hold any of them.
struct KeyBounds {
    pk_min: Vec<Value>,
    pk_max: Vec<Value>,
    /// Per row-key column: (name, min, max) over the new rows.
    row_key: Vec<(String, Option<Value>, Option<Value>)>,
}

impl KeyBounds {
    fn new(
        spec: &DatasetSpec,
        pk_min: &[Value],
        pk_max: &[Value],
        segments: &[SegmentMeta],
    ) -> Self {
        let row_key = spec
            .row_key
            .iter()
            .map(|c| {
                let stats: Vec<_> = segments.iter().map(|s| s.column_stats(c)).collect();
                let min = stats
                    .iter()
                    .map(|s| s.min.clone())
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().min());
                let max = stats
                    .iter()
                    .map(|s| s.max.clone())
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max());
                (c.clone(), min, max)
            })
            .collect();
        Self {
            pk_min: pk_min.to_vec(),
            pk_max: pk_max.to_vec(),
            row_key,
        }
    }

    fn may_overlap(&self, seg: &SegmentMeta) -> bool {
        if seg.pk_max < self.pk_min || seg.pk_min > self.pk_max {
            return false;
        }
        self.row_key.iter().all(|(c, min, max)| {
            let s = seg.column_stats(c);
            match (min, max, &s.min, &s.max) {
                (Some(nmin), Some(nmax), Some(smin), Some(smax)) => !(smax < nmin || smin > nmax),
                _ => true,
            }
        })
    }
}

/// An immutable view of one version.
#[derive(Clone, Debug)]
pub struct Snapshot {
    table: Table,
    manifest: Arc<Manifest>,
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub fn schema(&self) -> SchemaRef {
        self.manifest.schema.clone()
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Live rows of the version, by shard and segment; `columns` projects by name.
    pub async fn scan(&self, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
        let schema = &self.manifest.schema;
        let indices: Vec<usize> = match columns {
            Some(cols) => cols
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "column {c:?} does not exist at version {}",
                            self.version()
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            None => (0..schema.fields().len()).collect(),
        };
        let per_segment: Vec<(LiveSegment, Vec<RecordBatch>)> = read_segments(
            self.table.inner.blobs.clone(),
            schema.clone(),
            indices,
            self.manifest.live_segments().cloned().collect(),
            true,
            self.table.options().read_parallelism,
        )
        .try_collect()
        .await?;
        Ok(per_segment.into_iter().flat_map(|(_, b)| b).collect())
    }

    /// All live rows as one batch.
    pub async fn read_all(&self) -> Result<RecordBatch> {
        let batches = self.scan(None).await?;
        Ok(compute::concat_batches(&self.manifest.schema, &batches)?)
    }

    pub fn num_rows(&self) -> u64 {
        self.manifest.live_rows()
    }
}
