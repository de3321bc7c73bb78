//! Strata's Apache Cassandra backend: [`CassandraStore`] is a [`BlobStore`], a
//! [`MetaStore`] and a [`VersionLog`] over one keyspace, through the `scylla` driver (token-aware, prepared
//! statements, `LOCAL_QUORUM` and `LOCAL_SERIAL` by default).
//!
//! ```text
//!  BlobStore ─ put ─▶ blob_chunks (one partition per blob write, ≤ 1 MiB rows, CRC-32C)
//!            │        then blobs (index row, in the directory's partition) ─ visible
//!            ├ get_range ─▶ blobs row ─▶ only the chunks the range covers, concurrently
//!            └ list ─▶ blob_dirs walk ─▶ one blobs partition per directory
//!  MetaStore ─ put_if_absent ─▶ records INSERT IF NOT EXISTS (Paxos: one winner)
//!            ├ put / delete ─▶ UPDATE IF EXISTS / INSERT IF NOT EXISTS / DELETE IF EXISTS
//!            ├ get ─▶ read at serial consistency
//!            └ list ─▶ record_dirs walk ─▶ one records partition per directory
//!  VersionLog ─ commit ─▶ versions INSERT IF NOT EXISTS ((table, bucket), version)
//!             ├ latest ─▶ first row of the newest bucket, one serial read
//!             └ trim ─▶ UPDATE … SET kept IF EXISTS / DELETE IF EXISTS, oldest first
//! ```
//!
//! Invariants:
//! - Every listing is a set of single-partition queries (no scan across partitions):
//!   a directory's entries share a partition, its subdirectories another.
//! - A blob is visible only once all its chunks are written (the index row is written
//!   last); a chunk that fails its checksum or length is an error, never data.
//! - Rows of `records` are only ever written by lightweight transactions; an unknown
//!   outcome (timeout) is resolved by a serial read before the call returns.
//! - Requests that may run twice (reads, chunk and index writes) are retried with
//!   backoff on failures that may pass (unavailable, timeouts, overload); others fail
//!   with [`strata_storage::Error::Backend`].
//!
//! The CQL schema is `schemas/cassandra.cql`, applied by [`CassandraStore::connect`].
//!
//! [`BlobStore`]: strata_storage::BlobStore
//! [`MetaStore`]: strata_storage::MetaStore
//! [`VersionLog`]: strata_storage::VersionLog

mod blob;
pub mod config;
pub mod error;
mod log;
mod meta;
mod store;

pub use config::{CassandraConfig, MAX_CHUNK_BYTES, replication_factor};
pub use error::{Error, Result};
pub use log::BUCKET as VERSION_BUCKET;
pub use store::{CassandraStore, SCHEMA};

#[cfg(test)]
mod tests;
