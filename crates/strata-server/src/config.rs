//! Server configuration: defaults, overridden by a TOML file, overridden by environment
//! variables and flags (the CLI maps `STRATA_*` variables and `--flags` onto
//! [`ServerConfig`] fields).
//!
//! ```toml
//! data_dir = "./strata-data"       # the WAL (and the embedded store) live here
//! store = "local"                  # or "cassandra://h1,h2,h3:9042/KEYSPACE?…": segments
//!                                  # and versions in Cassandra (strata-cassandra docs)
//! listen = "127.0.0.1:50051"       # one port: strata.v1, Arrow Flight, health, reflection
//! default_shards = 4               # for datasets created without a shard count
//! max_message_mb = 64              # largest gRPC message accepted
//! max_connections = 1024           # more are closed as they are accepted
//! max_streams_per_connection = 256 # concurrent requests on one connection
//! idle_timeout_s = 300             # a connection with no request open this long closes
//! handshake_timeout_s = 10         # a connection must start a request within this
//! max_prepared_per_session = 1000  # open Flight SQL prepared statements per connection
//! max_subscriptions = 256          # change feeds (Subscribe, Flight DoGet) running at once
//! metrics_listen = "127.0.0.1:9464" # Prometheus /metrics on this address (unset: off)
//! subscription_poll_ms = 200       # how often a subscription looks for commits made
//!                                  # through other servers (this one's wake it at once)
//!
//! [tls]                            # both, or neither (plaintext)
//! cert = "server.pem"              # certificate chain, PEM
//! key = "server.key"               # its private key, PEM
//!
//! [auth]                           # no tokens: no authentication, loopback only
//! tokens_file = "tokens.toml"      # [[token]] entries, as below
//! allow_unauthenticated_remote = false
//! [[auth.token]]                   # `strata token new --name NAME --role ROLE`
//! name = "loader"
//! role = "write"                   # read | write | admin
//! sha256 = "…"                     # of the token; the token itself is never stored
//!
//! [ingest]
//! memory_limit_mb = 512            # unflushed rows; writers wait beyond this
//! max_batch_mb = 16                # largest Arrow IPC batch accepted
//! flush_interval_ms = 1000         # rows are queryable within about this
//! flush_rows = 1048576
//! flush_mb = 64                  # most rows/bytes one flush commits
//! compaction_interval_ms = 5000
//! compaction_trigger = 8           # small segments per shard before compaction
//! wal_file_mb = 64
//!
//! [retention]                      # old versions vacuumed in the background (tags and
//!                                  # the head always kept); none by default
//! keep_versions = 0                # keep at least the newest N versions (0: no count rule)
//! keep_hours = 0                   # keep versions committed within N hours (0: no age rule)
//! interval_s = 300                 # how often the policies are applied
//! [retention.dataset.weather]      # a dataset's own policy, instead of the default
//! keep_versions = 100
//!
//! [query]
//! memory_limit_mb = 1024           # all running queries together; sorts, joins and
//!                                  # aggregations spill to disk beyond it
//! timeout_ms = 300000              # a statement running longer is cancelled (0: none)
//! target_partitions = 0            # scan parallelism; 0 = one per core
//! threads = 0                      # the query runtime's threads, apart from the
//!                                  # server's (ingest acks); 0 = one per core
//! cache_mb = 1024                  # decoded segment columns kept in memory across
//!                                  # queries (0: none); see strata_cache()
//! max_statement_kb = 1024          # longer statements are refused
//! max_expression_depth = 1000      # deeper nesting (a + b + …, UNION chains) refused
//! slow_query_ms = 1000             # queries taking this long are logged at info
//!                                  # (statement, rows, time); the others at debug
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use strata_ingest::IngestConfig;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Where segments and versions live: `local` (under `data_dir`) or a
    /// `cassandra://` URL.
    pub store: String,
    pub listen: String,
    pub default_shards: u32,
    pub max_message_mb: usize,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub idle_timeout_s: u64,
    pub handshake_timeout_s: u64,
    pub max_prepared_per_session: usize,
    pub max_subscriptions: usize,
    pub subscription_poll_ms: u64,
    /// Where Prometheus metrics are served (`GET /metrics`); `None`: nowhere.
    pub metrics_listen: Option<String>,
    pub tls: TlsSettings,
    pub auth: crate::auth::AuthSettings,
    pub ingest: IngestSettings,
    pub query: QuerySettings,
    pub retention: RetentionSettings,
}

/// A retention policy: versions kept by count and/or age (0: that rule is off; both 0:
/// no policy).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    pub keep_versions: u64,
    pub keep_hours: u64,
}

impl RetentionPolicy {
    fn vacuum_policy(&self) -> Option<strata_table::VacuumPolicy> {
        (self.keep_versions > 0 || self.keep_hours > 0).then(|| strata_table::VacuumPolicy {
            keep_last: (self.keep_versions > 0).then_some(self.keep_versions),
            keep_within_ms: (self.keep_hours > 0).then(|| {
                i64::try_from(self.keep_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX)
            }),
        })
    }
}

/// Background vacuum: the default policy, per-dataset ones, and how often.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    pub keep_versions: u64,
    pub keep_hours: u64,
    pub interval_s: u64,
    pub dataset: std::collections::BTreeMap<String, RetentionPolicy>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep_versions: 0,
            keep_hours: 0,
            interval_s: 300,
            dataset: Default::default(),
        }
    }
}

/// TLS for every service on the port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    /// The certificate and key, read; `None` for plaintext.
    pub fn identity(&self) -> Result<Option<tonic::transport::Identity>> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))
        };
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ))),
            _ => Err(Error::Config("tls needs both cert and key".into())),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    pub memory_limit_mb: usize,
    pub timeout_ms: u64,
    pub target_partitions: usize,
    pub threads: usize,
    pub cache_mb: usize,
    pub max_statement_kb: usize,
    pub max_expression_depth: usize,
    pub slow_query_ms: u64,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            memory_limit_mb: 1024,
            timeout_ms: 300_000,
            target_partitions: 0,
            threads: 0,
            cache_mb: 1024,
            max_statement_kb: strata_query::limits::DEFAULT_MAX_STATEMENT_BYTES >> 10,
            max_expression_depth: strata_query::limits::DEFAULT_MAX_DEPTH,
            slow_query_ms: 1000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    pub memory_limit_mb: usize,
    pub max_batch_mb: usize,
    pub flush_interval_ms: u64,
    pub flush_rows: usize,
    pub flush_mb: usize,
    pub compaction_interval_ms: u64,
    pub compaction_trigger: usize,
    pub wal_file_mb: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./strata-data"),
            store: "local".into(),
            listen: "127.0.0.1:50051".into(),
            default_shards: 4,
            max_message_mb: 64,
            max_connections: 1024,
            max_streams_per_connection: 256,
            idle_timeout_s: 300,
            handshake_timeout_s: 10,
            max_prepared_per_session: 1000,
            max_subscriptions: 256,
            subscription_poll_ms: 200,
            metrics_listen: None,
            tls: TlsSettings::default(),
            auth: crate::auth::AuthSettings::default(),
            ingest: IngestSettings::default(),
            query: QuerySettings::default(),
            retention: RetentionSettings::default(),
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        let d = IngestConfig::new("");
        Self {
            memory_limit_mb: d.memory_limit_bytes >> 20,
            max_batch_mb: d.max_batch_bytes >> 20,
            flush_interval_ms: d.flush_interval.as_millis() as u64,
            flush_rows: d.flush_rows,
            flush_mb: d.flush_bytes >> 20,
            compaction_interval_ms: d.compaction_interval.as_millis() as u64,
            compaction_trigger: d.compaction_trigger,
            wal_file_mb: d.wal_file_bytes >> 20,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file; missing keys keep their defaults, unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks the values and resolves the listen address.
    pub fn validate(&self) -> Result<SocketAddr> {
        let bad = |m: String| Err(Error::Config(m));
        if !self.local_store() && !self.store.starts_with("cassandra://") {
            return bad(format!(
                "store {:?} is neither \"local\" nor a cassandra:// URL",
                self.store
            ));
        }
        let i = &self.ingest;
        if self.default_shards == 0 || self.default_shards > strata_types::spec::MAX_SHARDS {
            return bad(format!(
                "default_shards must be 1..={}",
                strata_types::spec::MAX_SHARDS
            ));
        }
        if i.max_batch_mb == 0 || i.max_batch_mb > self.max_message_mb {
            return bad(format!(
                "ingest.max_batch_mb ({}) must be 1..=max_message_mb ({})",
                i.max_batch_mb, self.max_message_mb
            ));
        }
        if i.memory_limit_mb < 2 * i.max_batch_mb {
            return bad(format!(
                "ingest.memory_limit_mb ({}) must be at least twice ingest.max_batch_mb ({})",
                i.memory_limit_mb, i.max_batch_mb
            ));
        }
        if self.query.memory_limit_mb == 0 {
            return bad("query.memory_limit_mb must be positive".into());
        }
        if self.query.max_statement_kb == 0 || self.query.max_statement_kb > 64 << 10 {
            return bad("query.max_statement_kb must be 1..=65536".into());
        }
        if !(16..=10_000).contains(&self.query.max_expression_depth) {
            return bad("query.max_expression_depth must be 16..=10000".into());
        }
        if self.max_connections == 0
            || self.max_streams_per_connection == 0
            || self.idle_timeout_s == 0
            || self.handshake_timeout_s == 0
            || self.max_prepared_per_session == 0
        {
            return bad(
                "max_connections, max_streams_per_connection, idle_timeout_s, \
                 handshake_timeout_s and max_prepared_per_session must be positive"
                    .into(),
            );
        }
        if !(10..=60_000).contains(&self.subscription_poll_ms) {
            return bad("subscription_poll_ms must be 10..=60000".into());
        }
        if i.flush_interval_ms == 0 || i.flush_rows == 0 || i.flush_mb == 0 {
            return bad("flush_interval_ms, flush_rows and flush_mb must be positive".into());
        }
        self.listen
            .parse()
            .or_else(|_| {
                use std::net::ToSocketAddrs;
                self.listen
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or(())
            })
            .or_else(|_| bad(format!("listen address {:?} is not HOST:PORT", self.listen)))
    }

    /// The defaults with the data under `data_dir`, serving on a free loopback port
    /// (tests, the demo, benchmarks).
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:0".into(),
            ..Self::default()
        }
    }

    /// The connection limits.
    pub fn conn_limits(&self) -> crate::conn::ConnLimits {
        crate::conn::ConnLimits {
            max_connections: self.max_connections,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
        }
    }

    /// True when segments and versions live in the embedded store under `data_dir`.
    pub fn local_store(&self) -> bool {
        self.store == "local"
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The engine's settings; queries run on `runtime`.
    pub fn query_config(&self, runtime: tokio::runtime::Handle) -> strata_query::QueryConfig {
        let q = &self.query;
        strata_query::QueryConfig {
            memory_limit: Some(q.memory_limit_mb << 20),
            timeout: (q.timeout_ms > 0).then(|| Duration::from_millis(q.timeout_ms)),
            slow_query: Some(Duration::from_millis(q.slow_query_ms)),
            target_partitions: q.target_partitions,
            default_shards: self.default_shards,
            runtime: Some(runtime),
            max_statement_bytes: q.max_statement_kb << 10,
            max_expression_depth: q.max_expression_depth,
            cache_bytes: q.cache_mb << 20,
        }
    }

    /// Threads of the query runtime.
    pub fn query_threads(&self) -> usize {
        match self.query.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn ingest_config(&self) -> IngestConfig {
        let i = &self.ingest;
        let mut c = IngestConfig::new(self.wal_dir());
        c.memory_limit_bytes = i.memory_limit_mb << 20;
        c.max_batch_bytes = i.max_batch_mb << 20;
        c.flush_interval = Duration::from_millis(i.flush_interval_ms);
        c.flush_rows = i.flush_rows;
        c.flush_bytes = i.flush_mb << 20;
        c.compaction_interval = Duration::from_millis(i.compaction_interval_ms.max(1));
        c.compaction_trigger = i.compaction_trigger.max(2);
        c.wal_file_bytes = i.wal_file_mb.max(1) << 20;
        let r = &self.retention;
        c.retention = strata_ingest::RetentionConfig {
            default: RetentionPolicy {
                keep_versions: r.keep_versions,
                keep_hours: r.keep_hours,
            }
            .vacuum_policy(),
            datasets: r
                .dataset
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), p.vacuum_policy()?)))
                .collect(),
            interval: Duration::from_secs(r.interval_s.max(1)),
        };
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/configuration.md's example holds only keys the server reads, and every
    /// section of the configuration.
    #[test]
    fn the_documented_configuration_is_valid() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml").expect("a toml block") + "```toml".len();
        let end = start + doc[start..].find("```").expect("its end");
        let text = doc[start..end].replace('…', "0000");
        let c = ServerConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.retention.dataset["weather"].keep_versions, 100);
        for section in ["[tls]", "[auth]", "[ingest]", "[retention]", "[query]"] {
            assert!(text.contains(section), "{section} documented");
        }
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = ServerConfig::from_toml(
            "listen = \"0.0.0.0:6000\"\n[ingest]\nflush_interval_ms = 250\n",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:6000");
        assert_eq!(c.ingest.flush_interval_ms, 250);
        assert_eq!(c.ingest.memory_limit_mb, 512);
        assert_eq!(c.data_dir, PathBuf::from("./strata-data"));
        let e = ServerConfig::from_toml("listne = \"x\"").unwrap_err();
        assert!(e.contains("listne"), "{e}");
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let mut c = ServerConfig::default();
        assert!(c.validate().is_ok());
        c.listen = "nowhere".into();
        assert!(c.validate().unwrap_err().to_string().contains("nowhere"));
        c = ServerConfig::default();
        c.ingest.memory_limit_mb = 8;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("memory_limit_mb")
        );
    }
}
