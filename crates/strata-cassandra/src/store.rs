//! The session, its prepared statements, retries and the directory layout shared by
//! blobs and records.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::statement::{Consistency, SerialConsistency};
use strata_storage::Error as StorageError;
use tracing::{debug, warn};

use crate::config::CassandraConfig;
use crate::error::{Error, Result};

/// The CQL schema, with `{keyspace}` and `{replication}` to fill in.
pub const SCHEMA: &str = include_str!("../../../schemas/cassandra.cql");

/// A blob and record store in one Cassandra keyspace. Cheap to clone; every clone
/// shares one driver session (token-aware, one connection pool per node).
#[derive(Clone)]
pub struct CassandraStore {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CassandraStore")
            .field("contact_points", &self.inner.config.contact_points)
            .field("keyspace", &self.inner.config.keyspace)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) session: Session,
    pub(crate) config: CassandraConfig,
    pub(crate) st: Statements,
    /// Directories known to be registered (skips re-inserting their rows).
    pub(crate) known_dirs: Mutex<HashSet<(Tree, String)>>,
    /// Version-log buckets this process registered (table id, bucket).
    pub(crate) known_buckets: Mutex<HashSet<(String, i64)>>,
}

/// Which directory tree: blobs or records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Tree {
    Blobs,
    Records,
}

/// Every statement the backend issues, prepared once.
pub(crate) struct Statements {
    pub(crate) blob_head: PreparedStatement,
    pub(crate) blob_put: PreparedStatement,
    pub(crate) blob_delete: PreparedStatement,
    pub(crate) blob_list: PreparedStatement,
    pub(crate) blob_list_from: PreparedStatement,
    pub(crate) chunk_put: PreparedStatement,
    pub(crate) chunk_get: PreparedStatement,
    pub(crate) chunks_delete: PreparedStatement,
    pub(crate) blob_dir_put: PreparedStatement,
    pub(crate) blob_dir_list: PreparedStatement,
    pub(crate) blob_dir_list_from: PreparedStatement,
    /// Read at the serial consistency: sees every transaction that returned.
    pub(crate) record_get: PreparedStatement,
    pub(crate) record_insert: PreparedStatement,
    pub(crate) record_update: PreparedStatement,
    pub(crate) record_delete: PreparedStatement,
    pub(crate) record_list: PreparedStatement,
    pub(crate) record_list_from: PreparedStatement,
    pub(crate) record_dir_put: PreparedStatement,
    pub(crate) record_dir_list: PreparedStatement,
    pub(crate) record_dir_list_from: PreparedStatement,
    pub(crate) log_insert: PreparedStatement,
    pub(crate) log_get: PreparedStatement,
    pub(crate) log_top: PreparedStatement,
    pub(crate) log_range: PreparedStatement,
    pub(crate) log_list: PreparedStatement,
    pub(crate) log_keep: PreparedStatement,
    pub(crate) log_delete: PreparedStatement,
    pub(crate) bucket_put: PreparedStatement,
    pub(crate) bucket_list: PreparedStatement,
    pub(crate) bucket_delete: PreparedStatement,
}

/// The rest of a listing's clustering range: names from `partial` up to the
/// character after the last one paths may use.
fn name_range(partial: &str) -> (String, String) {
    (partial.to_string(), format!("{partial}\u{7f}"))
}

/// The partition of a directory (`/` for the top level; paths never contain it alone).
pub(crate) fn dir_key(dir: &str) -> &str {
    if dir.is_empty() { "/" } else { dir }
}

/// `path` as (directory partition, name).
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("/", path),
    }
}

/// `dir` + `child` as a directory path.
pub(crate) fn join(dir: &str, child: &str) -> String {
    if dir == "/" {
        child.to_string()
    } else {
        format!("{dir}/{child}")
    }
}

/// What a failed request means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not executed, or executed without effect that matters: try again.
    Retry,
    /// The request may or may not have taken effect (a write timed out): find out.
    Unknown,
    /// Retrying will not help.
    Fatal,
}

pub(crate) fn classify(e: &ExecutionError) -> Failure {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => match db {
            DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::RateLimitReached { .. }
            | DbError::TruncateError => Failure::Retry,
            DbError::WriteTimeout { .. } | DbError::WriteFailure { .. } => Failure::Unknown,
            _ => Failure::Fatal,
        },
        ExecutionError::LastAttemptError(
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId,
        )
        | ExecutionError::RequestTimeout(_) => Failure::Unknown,
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => Failure::Retry,
        _ => Failure::Fatal,
    }
}

pub(crate) fn backend(what: &str, e: impl fmt::Display) -> StorageError {
    StorageError::Backend(format!("cassandra: {what}: {e}"))
}

impl CassandraStore {
    /// Connects, creates the keyspace and tables unless told not to, and prepares
    /// every statement.
    pub async fn connect(config: CassandraConfig) -> Result<Self> {
        crate::config::check_keyspace(&config.keyspace)?;
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency)
            .serial_consistency(Some(config.serial_consistency))
            .request_timeout(Some(config.request_timeout))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .connection_timeout(Duration::from_secs(5))
            .default_execution_profile_handle(profile.into_handle());
        if let Some(user) = &config.username {
            builder = builder.user(user, config.password.clone().unwrap_or_default());
        }
        if let Some(ca) = &config.tls_ca {
            builder = builder.tls_context(Some(tls_config(ca)?));
        }
        let session = builder.build().await.map_err(|e| {
            Error::Connect(format!(
                "no session with {}: {e}",
                config.contact_points.join(",")
            ))
        })?;
        if config.create_schema {
            apply_schema(&session, &config).await?;
        }
        session
            .use_keyspace(&config.keyspace, false)
            .await
            .map_err(|e| Error::Connect(format!("keyspace {}: {e}", config.keyspace)))?;
        let st = Statements::prepare(&session, &config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                config,
                st,
                known_dirs: Mutex::new(HashSet::new()),
                known_buckets: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub fn config(&self) -> &CassandraConfig {
        &self.inner.config
    }

    /// The driver session, for tools that issue their own statements.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// Runs `request` until it succeeds, fails for good, or has failed
    /// `config.attempts` times for reasons that may pass (backing off 50 ms, 100 ms, …
    /// up to 2 s). Only for requests that may run twice (reads, idempotent writes).
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        what: &str,
        mut request: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ExecutionError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match request().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if classify(&e) != Failure::Fatal && attempt < self.inner.config.attempts =>
                {
                    debug!(what, attempt, error = %e, "cassandra request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(e) => {
                    if classify(&e) != Failure::Fatal {
                        warn!(what, attempt, error = %e, "cassandra request failed");
                    }
                    return Err(backend(what, e));
                }
            }
        }
    }

    /// Runs an idempotent statement with retries.
    pub(crate) async fn exec(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
    ) -> Result<scylla::response::query_result::QueryResult, StorageError> {
        self.retry(what, || {
            self.inner
                .session
                .execute_unpaged(statement, values.clone())
        })
        .await
    }

    /// Every row of a single-partition query, page by page (each page retried).
    pub(crate) async fn rows<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
    ) -> Result<Vec<R>, StorageError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let mut out = Vec::new();
        let mut state = PagingState::start();
        loop {
            let (result, next) = self
                .retry(what, || {
                    self.inner
                        .session
                        .execute_single_page(statement, values.clone(), state.clone())
                })
                .await?;
            let rows = result.into_rows_result().map_err(|e| backend(what, e))?;
            for row in rows.rows::<R>().map_err(|e| backend(what, e))? {
                out.push(row.map_err(|e| backend(what, e))?);
            }
            match next {
                PagingStateResponse::HasMorePages { state: s } => state = s,
                PagingStateResponse::NoMorePages => return Ok(out),
            }
        }
    }

    /// Registers every ancestor directory of `dir` in `tree`'s directory table, top
    /// down, before the entry itself is written: a listing that finds an entry can
    /// always reach it.
    pub(crate) async fn ensure_dirs(&self, tree: Tree, dir: &str) -> Result<(), StorageError> {
        if dir == "/" {
            return Ok(());
        }
        let statement = match tree {
            Tree::Blobs => &self.inner.st.blob_dir_put,
            Tree::Records => &self.inner.st.record_dir_put,
        };
        let mut parent = "/".to_string();
        for (i, segment) in dir.split('/').enumerate() {
            let path = if i == 0 {
                segment.to_string()
            } else {
                format!("{parent}/{segment}")
            };
            let known = self
                .inner
                .known_dirs
                .lock()
                .expect("known dirs")
                .contains(&(tree, path.clone()));
            if !known {
                self.exec("register directory", statement, (parent.as_str(), segment))
                    .await?;
                let mut known = self.inner.known_dirs.lock().expect("known dirs");
                if known.len() > 100_000 {
                    known.clear();
                }
                known.insert((tree, path.clone()));
            }
            parent = path;
        }
        Ok(())
    }

    /// The rows of partition `dir` whose name starts with `partial` (all of them
    /// when it is empty): `list` takes the directory, `list_from` also the name range.
    async fn partition_rows<R>(
        &self,
        what: &str,
        (list, list_from): (&PreparedStatement, &PreparedStatement),
        dir: &str,
        partial: &str,
    ) -> Result<Vec<R>, StorageError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        if partial.is_empty() {
            self.rows(what, list, (dir,)).await
        } else {
            let (from, to) = name_range(partial);
            self.rows(what, list_from, (dir, from, to)).await
        }
    }

    /// The (directory, name prefix) pairs a listing of `prefix` reads: the directory
    /// the prefix ends in, with the rest as a name prefix, and every directory below
    /// it whose path starts with `prefix` (whole). One single-partition query each.
    async fn listing_dirs(
        &self,
        tree: Tree,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (dir, partial) = match prefix.rsplit_once('/') {
            Some((dir, partial)) => (dir.to_string(), partial.to_string()),
            None => ("/".to_string(), prefix.to_string()),
        };
        let statements = match tree {
            Tree::Blobs => (
                &self.inner.st.blob_dir_list,
                &self.inner.st.blob_dir_list_from,
            ),
            Tree::Records => (
                &self.inner.st.record_dir_list,
                &self.inner.st.record_dir_list_from,
            ),
        };
        let children: Vec<(String,)> = self
            .partition_rows("list directories", statements, &dir, &partial)
            .await?;
        let mut stack: Vec<String> = children.into_iter().map(|(c,)| join(&dir, &c)).collect();
        let mut out = vec![(dir, partial)];
        while let Some(d) = stack.pop() {
            let children: Vec<(String,)> = self
                .partition_rows("list directories", statements, &d, "")
                .await?;
            stack.extend(children.into_iter().map(|(c,)| join(&d, &c)));
            out.push((d, String::new()));
        }
        Ok(out)
    }

    /// Every entry of `tree` whose path starts with `prefix`, as (directory, row): the
    /// rows of each directory [`Self::listing_dirs`] names, read from the blob index or
    /// the records (a row starts with the entry's name).
    pub(crate) async fn list_entries<R>(
        &self,
        tree: Tree,
        prefix: &str,
    ) -> Result<Vec<(String, R)>, StorageError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let (what, statements) = match tree {
            Tree::Blobs => (
                "list blobs",
                (&self.inner.st.blob_list, &self.inner.st.blob_list_from),
            ),
            Tree::Records => (
                "list records",
                (&self.inner.st.record_list, &self.inner.st.record_list_from),
            ),
        };
        let mut out = Vec::new();
        for (dir, partial) in self.listing_dirs(tree, prefix).await? {
            let rows: Vec<R> = self
                .partition_rows(what, statements, &dir, &partial)
                .await?;
            out.extend(rows.into_iter().map(|row| (dir.clone(), row)));
        }
        Ok(out)
    }

    /// Drops this store's keyspace and everything in it (tests and benchmarks clean up
    /// with it).
    pub async fn drop_keyspace(&self) -> Result<(), StorageError> {
        let cql = format!("DROP KEYSPACE IF EXISTS {}", self.inner.config.keyspace);
        self.inner
            .session
            .query_unpaged(cql, ())
            .await
            .map_err(|e| backend("drop keyspace", e))?;
        Ok(())
    }
}

fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem =
        std::fs::read(ca).map_err(|e| Error::Config(format!("tls_ca {}: {e}", ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem)? {
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("tls_ca {}: {e}", ca.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("tls_ca: {e}")))
}

/// Creates the keyspace and tables of [`SCHEMA`] if they do not exist.
async fn apply_schema(session: &Session, config: &CassandraConfig) -> Result<()> {
    let text = SCHEMA
        .replace("{keyspace}", &config.keyspace)
        .replace("{replication}", &config.replication);
    let statements = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in statements
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let statement = statement.trim_end_matches(';');
        match session.query_unpaged(statement, ()).await {
            Ok(_) => {}
            // The coordinator applied the change; only the other nodes' agreement
            // is late (the next statement may depend on it: wait longer for it).
            Err(ExecutionError::SchemaAgreementError(e)) => {
                warn!("schema agreement after {statement:?}: {e}; waiting longer");
                await_agreement(session, &config.keyspace).await?;
            }
            Err(e) => return Err(Error::Connect(format!("schema: {e}\n{statement}"))),
        }
    }
    await_agreement(session, &config.keyspace).await
}

/// How long a schema change may wait for every node to agree.
const SCHEMA_AGREEMENT_DEADLINE: Duration = Duration::from_secs(300);

/// Awaits schema agreement, again and again up to [`SCHEMA_AGREEMENT_DEADLINE`],
/// nudging the cluster after each of the driver's waits (60 s) that ends without it.
///
/// Cassandra pushes a schema change to the nodes it sees as alive; one that missed
/// the push pulls the schema when gossip shows it a version it lacks. But a pull
/// whose answer never comes (the request expired on a busy node) leaves that version
/// marked as requested for good (`MigrationCoordinator` never hears of the failure),
/// and the node pulls again only for a version it has not seen yet: without another
/// schema change, it stays behind. The nudge is that change: a user type created and
/// dropped in the keyspace (both carry whole definitions, safe to apply on a node
/// that is behind). The node pulls the whole schema within a minute.
async fn await_agreement(session: &Session, keyspace: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SCHEMA_AGREEMENT_DEADLINE;
    loop {
        match session.await_schema_agreement().await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(
                    "schema agreement: {e}; node versions {}; nudging the cluster",
                    schema_versions(session).await
                );
                nudge_schema(session, keyspace).await;
            }
            Err(e) => {
                return Err(Error::Connect(format!(
                    "schema agreement not reached in {} s: {e}; node versions {}",
                    SCHEMA_AGREEMENT_DEADLINE.as_secs(),
                    schema_versions(session).await
                )));
            }
        }
    }
}

/// A schema change that makes every node behind pull the schema again (see
/// [`await_agreement`]). Whether both of its statements were applied; a failure is
/// logged only (it is a hint).
pub(crate) async fn nudge_schema(session: &Session, keyspace: &str) -> bool {
    let mut applied = true;
    for cql in [
        format!("CREATE TYPE IF NOT EXISTS {keyspace}.strata_schema_nudge (at bigint)"),
        format!("DROP TYPE IF EXISTS {keyspace}.strata_schema_nudge"),
    ] {
        match session.query_unpaged(cql.as_str(), ()).await {
            Ok(_) | Err(ExecutionError::SchemaAgreementError(_)) => {}
            Err(e) => {
                warn!("schema nudge {cql:?}: {e}");
                applied = false;
            }
        }
    }
    applied
}

/// Each node's own schema version, as the driver compares them (for the logs).
async fn schema_versions(session: &Session) -> String {
    let mut out = Vec::new();
    for node in session.get_cluster_state().get_nodes_info() {
        let mut statement =
            Statement::new("SELECT schema_version FROM system.local WHERE key = 'local'");
        statement.set_load_balancing_policy(Some(SingleTargetLoadBalancingPolicy::new(
            NodeIdentifier::Node(node.clone()),
            None,
        )));
        let version = match session.query_unpaged(statement, ()).await {
            Ok(r) => r
                .into_rows_result()
                .ok()
                .and_then(|rows| rows.single_row::<(uuid::Uuid,)>().ok())
                .map_or_else(|| "?".to_string(), |(v,)| v.to_string()),
            Err(e) => format!("unreachable ({e})"),
        };
        out.push(format!("{}={version}", node.address.ip()));
    }
    out.join(", ")
}

/// The serial consistency as the consistency of a read.
fn serial_as_consistency(serial: SerialConsistency) -> Consistency {
    match serial {
        SerialConsistency::Serial => Consistency::Serial,
        SerialConsistency::LocalSerial => Consistency::LocalSerial,
    }
}

impl Statements {
    async fn prepare(session: &Session, config: &CassandraConfig) -> Result<Self> {
        let serial = |mut s: PreparedStatement| {
            s.set_consistency(serial_as_consistency(config.serial_consistency));
            s
        };
        let p = |cql: &'static str, idempotent: bool| async move {
            let mut s = session
                .prepare(cql)
                .await
                .map_err(|e| Error::Connect(format!("prepare {cql}: {e}")))?;
            s.set_is_idempotent(idempotent);
            Ok::<_, Error>(s)
        };
        Ok(Self {
            blob_head: p(
                "SELECT id, size, chunk_size, created_ms FROM blobs WHERE dir = ? AND name = ?",
                true,
            )
            .await?,
            blob_put: p(
                "INSERT INTO blobs (dir, name, id, size, chunk_size, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                true,
            )
            .await?,
            blob_delete: p("DELETE FROM blobs WHERE dir = ? AND name = ?", true).await?,
            blob_list: p(
                "SELECT name, size, created_ms FROM blobs WHERE dir = ?",
                true,
            )
            .await?,
            blob_list_from: p(
                "SELECT name, size, created_ms FROM blobs WHERE dir = ? AND name >= ? AND name < ?",
                true,
            )
            .await?,
            chunk_put: p(
                "INSERT INTO blob_chunks (id, chunk, data, crc) VALUES (?, ?, ?, ?)",
                true,
            )
            .await?,
            chunk_get: p(
                "SELECT data, crc FROM blob_chunks WHERE id = ? AND chunk = ?",
                true,
            )
            .await?,
            chunks_delete: p("DELETE FROM blob_chunks WHERE id = ?", true).await?,
            blob_dir_put: p("INSERT INTO blob_dirs (dir, child) VALUES (?, ?)", true).await?,
            blob_dir_list: p("SELECT child FROM blob_dirs WHERE dir = ?", true).await?,
            blob_dir_list_from: p(
                "SELECT child FROM blob_dirs WHERE dir = ? AND child >= ? AND child < ?",
                true,
            )
            .await?,
            record_get: serial(
                p("SELECT value FROM records WHERE dir = ? AND name = ?", true).await?,
            ),
            record_insert: p(
                "INSERT INTO records (dir, name, value) VALUES (?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            record_update: p(
                "UPDATE records SET value = ? WHERE dir = ? AND name = ? IF EXISTS",
                false,
            )
            .await?,
            record_delete: p(
                "DELETE FROM records WHERE dir = ? AND name = ? IF EXISTS",
                false,
            )
            .await?,
            record_list: p("SELECT name FROM records WHERE dir = ?", true).await?,
            record_list_from: p(
                "SELECT name FROM records WHERE dir = ? AND name >= ? AND name < ?",
                true,
            )
            .await?,
            record_dir_put: p("INSERT INTO record_dirs (dir, child) VALUES (?, ?)", true).await?,
            record_dir_list: p("SELECT child FROM record_dirs WHERE dir = ?", true).await?,
            record_dir_list_from: p(
                "SELECT child FROM record_dirs WHERE dir = ? AND child >= ? AND child < ?",
                true,
            )
            .await?,
            log_insert: p(
                "INSERT INTO versions (table_id, bucket, version, record, kept) VALUES (?, ?, ?, ?, false) IF NOT EXISTS",
                false,
            )
            .await?,
            log_get: serial(
                p(
                    "SELECT record, kept FROM versions WHERE table_id = ? AND bucket = ? AND version = ?",
                    true,
                )
                .await?,
            ),
            log_top: serial(
                p(
                    "SELECT version, kept FROM versions WHERE table_id = ? AND bucket = ? LIMIT 1",
                    true,
                )
                .await?,
            ),
            log_range: p(
                "SELECT version, record, kept FROM versions WHERE table_id = ? AND bucket = ? AND version >= ? AND version <= ?",
                true,
            )
            .await?,
            log_list: p(
                "SELECT version, kept FROM versions WHERE table_id = ? AND bucket = ?",
                true,
            )
            .await?,
            log_keep: p(
                "UPDATE versions SET kept = true WHERE table_id = ? AND bucket = ? AND version = ? IF EXISTS",
                false,
            )
            .await?,
            log_delete: p(
                "DELETE FROM versions WHERE table_id = ? AND bucket = ? AND version = ? IF EXISTS",
                false,
            )
            .await?,
            bucket_put: p(
                "INSERT INTO version_buckets (table_id, bucket) VALUES (?, ?)",
                true,
            )
            .await?,
            bucket_list: p("SELECT bucket FROM version_buckets WHERE table_id = ?", true).await?,
            bucket_delete: p(
                "DELETE FROM version_buckets WHERE table_id = ? AND bucket = ?",
                true,
            )
            .await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_directories() {
        assert_eq!(split_path("a/b/c"), ("a/b", "c"));
        assert_eq!(split_path("c"), ("/", "c"));
        assert_eq!(join("/", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(dir_key(""), "/");
        let (from, to) = name_range("ab");
        assert!(from.as_str() <= "ab" && "ab-x" < to.as_str() && "ab=z" < to.as_str());
        assert!("ac" > to.as_str());
    }
}
