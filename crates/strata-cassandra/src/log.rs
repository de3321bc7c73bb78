//! The version log in its own table, `versions`: partition `(table_id, bucket)` with
//! buckets of [`BUCKET`] consecutive versions, rows newest first.
//!
//! - `commit` is `INSERT … IF NOT EXISTS` of the version's row (Paxos: one winner per
//!   version across every server); before a bucket's first commit from this process the
//!   bucket is registered in `version_buckets` (a plain, idempotent insert).
//! - `latest` reads the first row of the newest bucket at serial consistency: one
//!   Paxos read, however long the history, where a MetaStore log probes forward.
//! - `range` and `list` read at the regular consistency: they are used for versions at
//!   or below a `latest` answer, which the serial read completed on that partition, and
//!   a bucket's first commit follows a serial read of the bucket before it.
//! - `trim` marks tagged versions `kept` (`UPDATE … IF EXISTS`) and deletes the rest
//!   (`DELETE … IF EXISTS`), oldest first; it unregisters the buckets it empties.
//! - Every write to `versions` is a lightweight transaction; an unknown outcome is
//!   resolved by a serial read before the call returns.

use std::collections::BTreeSet;

use async_trait::async_trait;
use bytes::Bytes;
use strata_storage::{Error, LogEntry, Result, VersionLog, validate_path};

use crate::meta::Outcome;
use crate::store::CassandraStore;

/// Versions per partition of `versions`. Part of the stored layout (see
/// `schemas/cassandra.cql`); small in unit tests so they cross buckets.
pub const BUCKET: u64 = if cfg!(test) { 16 } else { 1024 };

fn bucket_of(v: u64) -> i64 {
    (v / BUCKET) as i64
}

fn conflict(table: &str, v: u64) -> Error {
    Error::Conflict {
        key: format!("version {v} of table {table}"),
    }
}

/// A row of `versions`: its record and whether it is kept below the live range.
type Row = (Option<Vec<u8>>, Option<bool>);

impl CassandraStore {
    /// Version `v`'s row, read at serial consistency.
    async fn version_row(&self, table: &str, v: u64) -> Result<Option<Row>> {
        let rows: Vec<Row> = self
            .rows(
                "read version",
                &self.inner.st.log_get,
                (table, bucket_of(v), v as i64),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The newest row of bucket `b` at serial consistency: `(version, kept)`.
    async fn bucket_top(&self, table: &str, b: i64) -> Result<Option<(u64, bool)>> {
        let rows: Vec<(i64, Option<bool>)> = self
            .rows("read newest version", &self.inner.st.log_top, (table, b))
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(v, kept)| (v as u64, kept.unwrap_or(false))))
    }

    /// The buckets registered for `table`, newest first.
    async fn buckets(&self, table: &str) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = self
            .rows("list version buckets", &self.inner.st.bucket_list, (table,))
            .await?;
        Ok(rows.into_iter().map(|(b,)| b).collect())
    }

    /// `(version, record, kept)` of bucket `b`'s rows in `from..=to`, ascending.
    async fn bucket_rows(
        &self,
        table: &str,
        b: i64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>, bool)>> {
        let rows: Vec<(i64, Option<Vec<u8>>, Option<bool>)> = self
            .rows(
                "read versions",
                &self.inner.st.log_range,
                (
                    table,
                    b,
                    from.min(i64::MAX as u64) as i64,
                    to.min(i64::MAX as u64) as i64,
                ),
            )
            .await?;
        let mut out: Vec<_> = rows
            .into_iter()
            .map(|(v, r, k)| (v as u64, r.unwrap_or_default(), k.unwrap_or(false)))
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Registers bucket `b` of `table` before its first commit from this process.
    async fn ensure_bucket(&self, table: &str, b: i64) -> Result<()> {
        let key = (table.to_string(), b);
        if self
            .inner
            .known_buckets
            .lock()
            .expect("lock poisoned")
            .contains(&key)
        {
            return Ok(());
        }
        self.exec(
            "register version bucket",
            &self.inner.st.bucket_put,
            (table, b),
        )
        .await?;
        self.inner
            .known_buckets
            .lock()
            .expect("lock poisoned")
            .insert(key);
        Ok(())
    }

    /// Runs a lightweight transaction on version `v`'s row (`statement` takes table,
    /// bucket, version), resolving an unknown outcome by a serial read of the row:
    /// `done` says whether the row as read shows the transaction's effect.
    async fn change_version(
        &self,
        what: &str,
        statement: &scylla::statement::prepared::PreparedStatement,
        table: &str,
        v: u64,
        done: impl Fn(Option<&Row>) -> bool,
    ) -> Result<()> {
        for _ in 0..self.inner.config.attempts {
            match self
                .transact(what, statement, (table, bucket_of(v), v as i64))
                .await?
            {
                Outcome::Applied | Outcome::NotApplied => return Ok(()),
                Outcome::Unknown => {
                    if done(self.version_row(table, v).await?.as_ref()) {
                        return Ok(());
                    }
                }
            }
        }
        Err(Error::Backend(format!(
            "cassandra: {what} {v} of {table}: outcome still unknown after {} attempts",
            self.inner.config.attempts
        )))
    }

    /// Deletes version `v`'s row.
    async fn delete_version(&self, table: &str, v: u64) -> Result<()> {
        let st = &self.inner.st.log_delete;
        self.change_version("delete version", st, table, v, |row| row.is_none())
            .await
    }

    /// Marks version `v` kept.
    async fn keep_version(&self, table: &str, v: u64) -> Result<()> {
        let st = &self.inner.st.log_keep;
        self.change_version("keep version", st, table, v, |row| {
            matches!(row, None | Some((_, Some(true))))
        })
        .await
    }
}

#[async_trait]
impl VersionLog for CassandraStore {
    async fn commit(&self, table: &str, version: u64, record: Bytes) -> Result<()> {
        validate_path(table)?;
        if version == 0 || version > i64::MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "version {version} is out of range"
            )));
        }
        let b = bucket_of(version);
        self.ensure_bucket(table, b).await?;
        for _ in 0..self.inner.config.attempts {
            match self
                .transact(
                    "commit version",
                    &self.inner.st.log_insert,
                    (table, b, version as i64, record.to_vec()),
                )
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::NotApplied => return Err(conflict(table, version)),
                // Ours if the row now holds what we wrote (records carry their own
                // times, so another writer's equal bytes do not happen); absent after a
                // serial read means the transaction did not apply.
                Outcome::Unknown => match self.version_row(table, version).await? {
                    Some((Some(r), _)) if r == record => return Ok(()),
                    Some(_) => return Err(conflict(table, version)),
                    None => continue,
                },
            }
        }
        Err(Error::Backend(format!(
            "cassandra: commit version {version} of {table}: outcome still unknown after {} attempts",
            self.inner.config.attempts
        )))
    }

    async fn get(&self, table: &str, version: u64) -> Result<Option<Bytes>> {
        validate_path(table)?;
        if version > i64::MAX as u64 {
            return Ok(None);
        }
        Ok(self
            .version_row(table, version)
            .await?
            .map(|(r, _)| Bytes::from(r.unwrap_or_default())))
    }

    async fn contains(&self, table: &str, version: u64) -> Result<bool> {
        validate_path(table)?;
        if version > i64::MAX as u64 {
            return Ok(false);
        }
        Ok(matches!(
            self.version_row(table, version).await?,
            Some((_, kept)) if kept != Some(true)
        ))
    }

    async fn latest(&self, table: &str, known: u64) -> Result<Option<u64>> {
        validate_path(table)?;
        // Start in the bucket of a version the caller knows; if that bucket holds no live
        // version (vacuum trimmed it), in the newest registered bucket holding one.
        let mut at = match known {
            0 => None,
            k if k > i64::MAX as u64 => None,
            k => {
                let b = bucket_of(k);
                match self.bucket_top(table, b).await? {
                    Some((v, false)) => Some((b, v)),
                    _ => None,
                }
            }
        };
        if at.is_none() {
            for b in self.buckets(table).await? {
                if let Some((v, false)) = self.bucket_top(table, b).await? {
                    at = Some((b, v));
                    break;
                }
            }
        }
        let Some((mut b, mut v)) = at else {
            return Ok(None);
        };
        // Versions are consecutive: a full bucket's successor may hold newer ones.
        while v == (b as u64 + 1) * BUCKET - 1 {
            match self.bucket_top(table, b + 1).await? {
                Some((next, false)) => {
                    b += 1;
                    v = next;
                }
                _ => break,
            }
        }
        Ok(Some(v))
    }

    async fn range(&self, table: &str, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>> {
        validate_path(table)?;
        let to = to.min(i64::MAX as u64);
        if from > to {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for b in bucket_of(from)..=bucket_of(to) {
            for (v, record, kept) in self.bucket_rows(table, b, from, to).await? {
                if !kept {
                    out.push((v, Bytes::from(record)));
                }
            }
        }
        Ok(out)
    }

    async fn list(&self, table: &str) -> Result<Vec<LogEntry>> {
        validate_path(table)?;
        let mut out = Vec::new();
        for b in self.buckets(table).await?.into_iter().rev() {
            let rows: Vec<(i64, Option<bool>)> = self
                .rows("list versions", &self.inner.st.log_list, (table, b))
                .await?;
            out.extend(rows.into_iter().rev().map(|(v, kept)| LogEntry {
                version: v as u64,
                kept: kept.unwrap_or(false),
            }));
        }
        Ok(out)
    }

    async fn trim(&self, table: &str, oldest: u64, keep: &BTreeSet<u64>) -> Result<u64> {
        validate_path(table)?;
        if oldest == 0 {
            return Ok(0);
        }
        let mut removed = 0;
        for b in self.buckets(table).await?.into_iter().rev() {
            let first = b as u64 * BUCKET;
            if first >= oldest {
                break;
            }
            let mut kept_here = false;
            for (v, _, kept) in self.bucket_rows(table, b, first, oldest - 1).await? {
                if keep.contains(&v) {
                    if !kept {
                        self.keep_version(table, v).await?;
                    }
                    kept_here = true;
                } else {
                    self.delete_version(table, v).await?;
                    removed += 1;
                }
            }
            // A bucket wholly below the line with nothing kept is empty for good.
            if first + BUCKET <= oldest && !kept_here {
                self.exec(
                    "unregister version bucket",
                    &self.inner.st.bucket_delete,
                    (table, b),
                )
                .await?;
                self.inner
                    .known_buckets
                    .lock()
                    .expect("lock poisoned")
                    .remove(&(table.to_string(), b));
            }
        }
        Ok(removed)
    }

    async fn remove(&self, table: &str, version: u64) -> Result<()> {
        validate_path(table)?;
        if version > i64::MAX as u64 {
            return Ok(());
        }
        self.delete_version(table, version).await
    }

    async fn purge(&self, table: &str) -> Result<()> {
        validate_path(table)?;
        for b in self.buckets(table).await? {
            let rows: Vec<(i64, Option<bool>)> = self
                .rows("list versions", &self.inner.st.log_list, (table, b))
                .await?;
            for (v, _) in rows {
                self.delete_version(table, v as u64).await?;
            }
            self.exec(
                "unregister version bucket",
                &self.inner.st.bucket_delete,
                (table, b),
            )
            .await?;
        }
        self.inner
            .known_buckets
            .lock()
            .expect("lock poisoned")
            .retain(|(t, _)| t != table);
        Ok(())
    }
}
