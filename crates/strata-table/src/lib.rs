//! Strata's versioned table core.
//!
//! ```text
//!  write(batches) ─▶ conform to schema ─▶ split by shard (xxh3 of partition key)
//!     ─▶ per shard: sort by primary key, last duplicate wins ─▶ Parquet segments ─▶ BlobStore
//!     ─▶ upserts: older live rows with the same key, found only among the same shard's
//!        segments whose key ranges overlap ─▶ roaring deletion vectors
//!     ─▶ commit: VersionLog.commit(v+1) if absent  ── lost the race? rebuild, retry
//!
//!  read(version) ─▶ nearest checkpoint ≤ v (every 100 versions) + replay ≤ 99 records
//!     ─▶ Manifest { schema, live segments + deletion vectors, producer marks, retention }
//!     ─▶ Snapshot.scan: projected column ranges only, deletion vectors as row selections
//! ```
//!
//! Invariants:
//! - A version is one record written with put-if-absent: it is visible whole or not at
//!   all, and of two writers exactly one gets each version.
//! - Segments are immutable; a version changes only which segments are live and their
//!   deletion vectors. Reads at any version never show two rows with one primary key.
//! - Rollback, tags and vacuum never rewrite history; vacuum removes only versions its
//!   policy drops (never the head or a tagged version) and blobs no retained version uses.
//! - Producer sequence marks commit atomically with the rows they cover.

pub mod conformance;
pub mod error;
pub mod layout;
pub mod log;
pub mod manifest;
pub mod predicate;
pub mod segment;
pub mod table;

pub use error::{Error, Result};
pub use log::MetaLog;
pub use manifest::{LiveSegment, Manifest, Operation};
pub use predicate::{CmpOp, Predicate};
pub use segment::{SegmentMeta, SegmentOptions};
pub use table::{
    CHANGE_TYPE, COMMIT_TIMESTAMP, COMMIT_VERSION, ChangeCursor, ChangeType, VersionChanges,
    changes_schema,
};
pub use table::{
    Catalog, Snapshot, Table, TableOptions, TagInfo, VacuumPolicy, VacuumReport, VersionInfo,
    VersionSpec, WriteOutcome,
};
