//! Datasets as versioned tables: the catalog, commits, time travel, rollback, tags,
//! vacuum, compaction, upserts and deletes.

mod catalog;
mod changes;
mod commit;
mod history;
mod maintenance;
mod producers;
mod snapshot;
mod versions;
mod write;

pub use catalog::Catalog;
pub use changes::{
    CHANGE_TYPE, COMMIT_TIMESTAMP, COMMIT_VERSION, ChangeCursor, ChangeType, VersionChanges,
    changes_schema,
};
pub use snapshot::Snapshot;

use commit::{Txn, is_duplicate, schema_compatible};
use snapshot::read_segments;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute;
use arrow::datatypes::{Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use strata_storage::{BlobStore, Error as StorageError, MetaStore, VersionLog};
use strata_types::spec::{format_type, schema_to_defs, validate_schema};
use strata_types::{DatasetName, DatasetSpec, DatasetSpecDef, Value, validate_name};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::layout;
use crate::log::MetaLog;
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

#[derive(Clone, Debug)]
pub struct Table {
    inner: Arc<TableInner>,
}

#[derive(Debug)]
struct TableInner {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    log: Arc<dyn VersionLog>,
    /// The catalog's change counter.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    options: TableOptions,
    id: String,
    spec: DatasetSpec,
    keys: KeyCodec,
    /// The newest manifest this handle has seen.
    latest: Mutex<Option<Arc<Manifest>>>,
}

impl Table {
    /// Counts a change in the catalog's [`Catalog::changes`].
    pub(super) fn changed(&self) {
        self.inner.changes.send_modify(|c| *c += 1);
    }

    fn new(catalog: &Catalog, id: String, spec: DatasetSpec) -> Self {
        let keys = KeyCodec::new(&spec.schema, &spec.partition_key, &spec.row_key)
            .expect("validated spec has its key columns");
        Self {
            inner: Arc::new(TableInner {
                blobs: catalog.blobs.clone(),
                meta: catalog.meta.clone(),
                log: catalog.log.clone(),
                changes: catalog.changes.clone(),
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

    fn cached(&self) -> Option<Arc<Manifest>> {
        self.inner.latest.lock().expect("lock poisoned").clone()
    }

    fn remember(&self, m: &Arc<Manifest>) {
        let mut latest = self.inner.latest.lock().expect("lock poisoned");
        if latest.as_ref().is_none_or(|l| l.version < m.version) {
            *latest = Some(m.clone());
        }
    }
}
