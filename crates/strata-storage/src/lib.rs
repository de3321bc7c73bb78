//! Strata's storage layer: two small traits and their backends.
//!
//! ```text
//!   strata-table ──segments (Parquet), checkpoints──▶ BlobStore  (immutable, ranged reads)
//!                ──datasets, tags, hints──────────▶ MetaStore  (small records, put-if-absent)
//!                ──version records────────────────▶ VersionLog (commit v+1 if absent, newest, ranges)
//!
//!   backends:  memory (tests) · local (embedded default: a directory) · cassandra (strata-cassandra)
//! ```
//!
//! Invariants every backend keeps (each trait's docs state them in full):
//! - a blob or record is visible whole or not at all, and durable once the call returns;
//! - `MetaStore::put_if_absent` has exactly one winner per key, across processes;
//! - damaged bytes are reported as [`Error::Corrupt`] naming the blob, never returned.
//!
//! [`LocalStore`] is the embedded default: blobs and records as checksummed files under
//! one directory, crash safe, with `put_if_absent` atomic across processes.
//!
//! [`conformance`] holds one test suite per trait; every backend runs it.

pub mod conformance;
pub mod counting;
pub mod error;
pub mod local;
pub mod lock;
pub mod memory;
pub mod traits;
pub mod version_log;

pub use counting::{BlobCounts, CountingBlobStore};
pub use error::{Error, Result};
pub use local::LocalStore;
pub use lock::DirLock;
pub use memory::{MemoryBlobStore, MemoryMetaStore};
pub use traits::{BlobMeta, BlobStore, MetaStore, check_range, validate_path, validate_prefix};
pub use version_log::{LogEntry, VersionLog};
