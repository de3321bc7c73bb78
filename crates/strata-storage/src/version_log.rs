//! The version log: each table's numbered version records, appended by "put version
//! v + 1 if absent", Strata's whole commit protocol.
//!
//! A backend keeps, per table id, a *live range* of consecutive versions ending at the
//! head, plus *kept* records below it (tagged versions vacuum retains). Vacuum trims the
//! live range from its oldest end ([`VersionLog::trim`]), moving the records it keeps to
//! the kept set, so the live range stays contiguous.
//!
//! Two implementations: one over any [`MetaStore`](crate::MetaStore) (in `strata-table`,
//! which owns its keys) and one on Cassandra, whose clustering order answers "newest
//! version" in one read.

use std::collections::BTreeSet;
use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// One record of a log listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogEntry {
    pub version: u64,
    /// Kept below the live range (a tagged version vacuum retained).
    pub kept: bool,
}

/// Each table's version records. Tables are named by their id (letters, digits, `-_`).
///
/// Guarantees every backend gives:
/// - `commit` is atomic and linearizable per (table, version): of concurrent commits of
///   one version, from any process or host sharing the store, exactly one returns `Ok`;
///   the others get [`Error::Conflict`](crate::Error::Conflict). Once it returns `Ok`
///   the record is durable. An outcome the backend could not learn (a timeout) is
///   resolved before the call returns.
/// - `latest` returns a version at least as new as every commit that returned before it
///   was called.
/// - Versions at or below a version `latest` returned are readable by `get` and
///   `range`, until `remove`d.
#[async_trait]
pub trait VersionLog: Send + Sync + Debug + 'static {
    /// Writes `record` as `version` unless that version exists (then `Error::Conflict`).
    async fn commit(&self, table: &str, version: u64, record: Bytes) -> Result<()>;

    /// The record of `version`, live or kept.
    async fn get(&self, table: &str, version: u64) -> Result<Option<Bytes>>;

    /// Whether `version` is in the live range (committed, not trimmed, not only kept).
    async fn contains(&self, table: &str, version: u64) -> Result<bool>;

    /// The newest version, `None` for a table with no log. `known` is a version the
    /// caller knows was committed (0 for none): a backend may start looking there.
    async fn latest(&self, table: &str, known: u64) -> Result<Option<u64>>;

    /// The live records with versions in `from..=to`, ascending.
    async fn range(&self, table: &str, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>>;

    /// Every version with a record, live or kept, ascending.
    async fn list(&self, table: &str) -> Result<Vec<LogEntry>>;

    /// Vacuum's trim: every record below `oldest` is removed, except those of versions
    /// in `keep`, which move to the kept set (`get` still finds them, `contains` no
    /// longer does). Kept records below `oldest` not in `keep` are removed too. The live
    /// range is trimmed from its oldest end, so it stays contiguous throughout. Returns
    /// how many versions' records were removed.
    async fn trim(&self, table: &str, oldest: u64, keep: &BTreeSet<u64>) -> Result<u64>;

    /// Removes `version`'s record, live or kept (a commit taken back). Removing a
    /// missing one is not an error.
    async fn remove(&self, table: &str, version: u64) -> Result<()>;

    /// Removes a table's whole log (a dropped dataset's).
    async fn purge(&self, table: &str) -> Result<()>;
}
