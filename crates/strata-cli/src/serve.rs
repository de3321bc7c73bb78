//! `strata serve`: the server on the embedded local store.
//!
//! Settings come from, lowest precedence first: built-in defaults, the TOML file given
//! with `--config` (or `STRATA_CONFIG`), `STRATA_*` environment variables, and flags.

use std::path::PathBuf;

use clap::Args;
use strata_server::ServerConfig;

use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of the embedded store and the write-ahead log [default: ./strata-data].
    #[arg(long, env = "STRATA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where segments and versions live: `local` (the embedded store under the data
    /// directory) or `cassandra://HOST[,HOST…][:PORT]/KEYSPACE[?options]` [default: local].
    #[arg(long, env = "STRATA_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "STRATA_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// TOML configuration file (see the strata-server `config` docs for every key).
    #[arg(long, env = "STRATA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shards of datasets created without a shard count [default: 4].
    #[arg(long, env = "STRATA_DEFAULT_SHARDS")]
    pub default_shards: Option<u32>,
    /// Memory for acknowledged but unflushed rows, in MiB; writers wait beyond it
    /// [default: 512].
    #[arg(long, env = "STRATA_MEMORY_LIMIT_MB")]
    pub memory_limit_mb: Option<usize>,
    /// Largest accepted batch, in MiB [default: 16].
    #[arg(long, env = "STRATA_MAX_BATCH_MB")]
    pub max_batch_mb: Option<usize>,
    /// Decoded segment columns kept in memory across queries, in MiB; 0 turns the
    /// cache off [default: 1024].
    #[arg(long, env = "STRATA_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Flush memtables at least this often, in milliseconds [default: 1000].
    #[arg(long, env = "STRATA_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "STRATA_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// The server's TLS certificate chain (PEM); with --tls-key, every service on the
    /// port speaks TLS only.
    #[arg(
        long,
        env = "STRATA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "STRATA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// A TOML file of accepted tokens (`[[token]]` entries that `strata token new`
    /// prints); without tokens the server takes no credentials and serves loopback only.
    #[arg(long, env = "STRATA_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `strata_ingest=debug` [default: info].
    #[arg(long, env = "STRATA_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

impl ServeArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> Result<ServerConfig> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::from_file(path).map_err(|e| Error::Usage(e.to_string()))?,
            None => ServerConfig::default(),
        };
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &self.store {
            c.store = v.clone();
        }
        if let Some(v) = self.default_shards {
            c.default_shards = v;
        }
        if let Some(v) = self.memory_limit_mb {
            c.ingest.memory_limit_mb = v;
        }
        if let Some(v) = self.cache_mb {
            c.query.cache_mb = v;
        }
        if let Some(v) = self.max_batch_mb {
            c.ingest.max_batch_mb = v;
        }
        if let Some(v) = self.flush_interval_ms {
            c.ingest.flush_interval_ms = v;
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = Some(v.clone());
        }
        if let Some(v) = &self.tls_cert {
            c.tls.cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            c.tls.key = Some(v.clone());
        }
        if let Some(v) = &self.tokens_file {
            c.auth.tokens_file = Some(v.clone());
        }
        c.validate().map_err(|e| Error::Usage(e.to_string()))?;
        Ok(c)
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> Result<()> {
    let filter = args.log.clone().unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| Error::Usage(format!("bad --log filter {filter:?}: {e}")))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let config = args.config()?;
    strata_server::run(config)
        .await
        .map_err(|e| Error::Server(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            data_dir: None,
            store: None,
            listen: None,
            config: None,
            default_shards: None,
            memory_limit_mb: None,
            max_batch_mb: None,
            cache_mb: None,
            flush_interval_ms: None,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            tokens_file: None,
            log: None,
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strata.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\ndefault_shards = 2\n[ingest]\nflush_interval_ms = 300\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file);
        a.default_shards = Some(16);
        let c = a.config().unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.default_shards, 16);
        assert_eq!(c.ingest.flush_interval_ms, 300);
        assert_eq!(c.ingest.memory_limit_mb, 512);
    }

    #[test]
    fn bad_settings_are_usage_errors() {
        let mut a = args();
        a.listen = Some("not an address".into());
        assert!(matches!(a.config(), Err(Error::Usage(m)) if m.contains("not an address")));
        let mut a = args();
        a.config = Some(PathBuf::from("/nonexistent/strata.toml"));
        assert!(matches!(a.config(), Err(Error::Usage(_))));
    }
}
