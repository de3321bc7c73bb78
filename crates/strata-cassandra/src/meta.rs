//! Records: every write a lightweight transaction, reads at serial consistency.
//!
//! - `put_if_absent` is `INSERT … IF NOT EXISTS`: Paxos picks exactly one winner per key
//!   across every server sharing the keyspace (Strata's commit).
//! - `put` is `UPDATE … IF EXISTS`, else `INSERT … IF NOT EXISTS`, until one applies;
//!   `delete` is `DELETE … IF EXISTS`. Cassandra forbids mixing plain writes with LWTs
//!   on the same rows (their timestamps do not order), so no write here is plain.
//! - `get` reads at the serial consistency: it sees every transaction that returned
//!   and completes one left half-done by a failed coordinator before answering.
//! - A transaction whose outcome is unknown (the coordinator timed out, the connection
//!   broke) is resolved by such a read before anything is reported: the record holding
//!   the value written means it applied.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use strata_storage::{Error, MetaStore, Result, validate_path, validate_prefix};
use tracing::debug;

use crate::store::{CassandraStore, Failure, Tree, backend, classify, dir_key, join, split_path};

/// What a lightweight transaction did.
pub(crate) enum Outcome {
    Applied,
    NotApplied,
    /// The coordinator could not say: read to find out.
    Unknown,
}

impl CassandraStore {
    /// The record under `key`, read at serial consistency.
    async fn read_serial(&self, key: &str) -> Result<Option<Bytes>> {
        let (dir, name) = split_path(key);
        let rows: Vec<(Option<Vec<u8>>,)> = self
            .rows(
                "read record",
                &self.inner.st.record_get,
                (dir_key(dir), name),
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(v,)| Bytes::from(v.unwrap_or_default())))
    }

    /// Runs one lightweight transaction, retrying only what certainly did not apply.
    pub(crate) async fn transact(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow + Clone,
    ) -> Result<Outcome> {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=self.inner.config.attempts {
            match self
                .inner
                .session
                .execute_unpaged(statement, values.clone())
                .await
            {
                Ok(result) => return applied(what, result),
                Err(e) => match classify(&e) {
                    Failure::Retry if attempt < self.inner.config.attempts => {
                        debug!(what, attempt, error = %e, "lightweight transaction not run; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Failure::Unknown => {
                        debug!(what, error = %e, "lightweight transaction outcome unknown");
                        return Ok(Outcome::Unknown);
                    }
                    _ => return Err(backend(what, e)),
                },
            }
        }
        Err(Error::Backend(format!(
            "cassandra: {what}: no replica could run it after {} attempts",
            self.inner.config.attempts
        )))
    }
}

/// Whether a lightweight transaction applied: its first column, `[applied]` (the row
/// that prevented it follows when it did not, so the row is read untyped).
fn applied(what: &str, result: QueryResult) -> Result<Outcome> {
    let rows = result.into_rows_result().map_err(|e| backend(what, e))?;
    let row: Row = rows.first_row().map_err(|e| backend(what, e))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(true))) => Ok(Outcome::Applied),
        Some(Some(CqlValue::Boolean(false))) => Ok(Outcome::NotApplied),
        other => Err(Error::Backend(format!(
            "cassandra: {what}: no [applied] column in the answer ({other:?})"
        ))),
    }
}

#[async_trait]
impl MetaStore for CassandraStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        validate_path(key)?;
        self.read_serial(key).await
    }

    async fn put_if_absent(&self, key: &str, value: Bytes) -> Result<()> {
        validate_path(key)?;
        let (dir, name) = split_path(key);
        self.ensure_dirs(Tree::Records, dir).await?;
        for _ in 0..self.inner.config.attempts {
            let outcome = self
                .transact(
                    "put record if absent",
                    &self.inner.st.record_insert,
                    (dir_key(dir), name, value.to_vec()),
                )
                .await?;
            match outcome {
                Outcome::Applied => return Ok(()),
                Outcome::NotApplied => {
                    return Err(Error::Conflict {
                        key: key.to_string(),
                    });
                }
                // Ours if the record now holds what we wrote (records carry their own
                // ids and times, so another writer's equal bytes do not happen);
                // absent after a serial read means the transaction did not apply.
                Outcome::Unknown => match self.read_serial(key).await? {
                    Some(v) if v == value => return Ok(()),
                    Some(_) => {
                        return Err(Error::Conflict {
                            key: key.to_string(),
                        });
                    }
                    None => continue,
                },
            }
        }
        Err(Error::Backend(format!(
            "cassandra: put record if absent {key:?}: outcome still unknown after {} attempts",
            self.inner.config.attempts
        )))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        validate_path(key)?;
        let (dir, name) = split_path(key);
        self.ensure_dirs(Tree::Records, dir).await?;
        for _ in 0..self.inner.config.attempts * 2 {
            let update = self
                .transact(
                    "update record",
                    &self.inner.st.record_update,
                    (value.to_vec(), dir_key(dir), name),
                )
                .await?;
            if matches!(update, Outcome::Applied) {
                return Ok(());
            }
            let insert = self
                .transact(
                    "insert record",
                    &self.inner.st.record_insert,
                    (dir_key(dir), name, value.to_vec()),
                )
                .await?;
            if matches!(insert, Outcome::Applied) {
                return Ok(());
            }
            // Unknown outcomes, or a record that came or went between the two: a
            // serial read tells whether the value is in place.
            if self.read_serial(key).await?.as_ref() == Some(&value) {
                return Ok(());
            }
        }
        Err(Error::Backend(format!(
            "cassandra: put record {key:?}: contended or unavailable after {} attempts",
            self.inner.config.attempts * 2
        )))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_path(key)?;
        let (dir, name) = split_path(key);
        for _ in 0..self.inner.config.attempts {
            match self
                .transact(
                    "delete record",
                    &self.inner.st.record_delete,
                    (dir_key(dir), name),
                )
                .await?
            {
                Outcome::Applied | Outcome::NotApplied => return Ok(()),
                Outcome::Unknown => {
                    if self.read_serial(key).await?.is_none() {
                        return Ok(());
                    }
                }
            }
        }
        Err(Error::Backend(format!(
            "cassandra: delete record {key:?}: outcome still unknown after {} attempts",
            self.inner.config.attempts
        )))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let entries: Vec<(String, (String,))> = self.list_entries(Tree::Records, prefix).await?;
        let mut out: Vec<String> = entries
            .into_iter()
            .map(|(dir, (name,))| join(&dir, &name))
            .collect();
        out.sort();
        Ok(out)
    }
}
