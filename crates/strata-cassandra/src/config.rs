//! Where the cluster is and how to talk to it: `cassandra://h1,h2,h3:9042/KEYSPACE?…`.

use std::path::PathBuf;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

use crate::error::{Error, Result};

/// The largest chunk a blob is cut into (Cassandra handles mutations up to
/// `commitlog_segment_size / 2`, 16 MiB by default; 1 MiB rows stay far from it).
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// How to reach a Cassandra cluster and how Strata uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct CassandraConfig {
    /// `host:port` of some nodes (the driver discovers the rest).
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// The keyspace's replication, a CQL map, used when Strata creates the keyspace.
    pub replication: String,
    /// Consistency of reads and writes (`LOCAL_QUORUM` by default).
    pub consistency: Consistency,
    /// Consistency of lightweight transactions and of the reads that must see them
    /// (`LOCAL_SERIAL` by default).
    pub serial_consistency: SerialConsistency,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed the nodes' certificates: TLS when set.
    pub tls_ca: Option<PathBuf>,
    /// Blob chunk size, at most [`MAX_CHUNK_BYTES`].
    pub chunk_bytes: usize,
    /// Chunks of one blob written or read concurrently.
    pub concurrency: usize,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    /// Attempts of a request that failed for a reason that may pass (a node down, a
    /// timeout, an overloaded node), with exponential backoff from 50 ms.
    pub attempts: u32,
    /// Create the keyspace and tables if they do not exist.
    pub create_schema: bool,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "strata".into(),
            replication: replication_factor(1),
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            username: None,
            password: None,
            tls_ca: None,
            chunk_bytes: MAX_CHUNK_BYTES,
            concurrency: 8,
            request_timeout: Duration::from_secs(12),
            attempts: 6,
            create_schema: true,
        }
    }
}

/// `SimpleStrategy` with `n` replicas, as a CQL map.
pub fn replication_factor(n: u32) -> String {
    format!("{{'class': 'SimpleStrategy', 'replication_factor': {n}}}")
}

fn consistency(name: &str) -> Result<Consistency> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => return Err(Error::Config(format!("unknown consistency {other:?}"))),
    })
}

fn serial_consistency(name: &str) -> Result<SerialConsistency> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "serial" => SerialConsistency::Serial,
        "local_serial" => SerialConsistency::LocalSerial,
        other => {
            return Err(Error::Config(format!(
                "unknown serial consistency {other:?}"
            )));
        }
    })
}

/// A keyspace name Cassandra accepts unquoted.
pub fn check_keyspace(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.as_bytes()[0].is_ascii_alphabetic();
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid keyspace {name:?}: 1-48 letters, digits and _, starting with a letter"
        )))
    }
}

impl CassandraConfig {
    /// Parses `cassandra://h1,h2,h3:9042/KEYSPACE?key=value&…`. A host without a port
    /// takes the port of the last host that has one (9042 if none does). Keys:
    /// `replication_factor` (SimpleStrategy), `replication` (a CQL map),
    /// `consistency`, `serial_consistency`, `user`, `password_env` (the name of an
    /// environment variable holding the password), `tls_ca` (a PEM file),
    /// `chunk_kb`, `timeout_ms`, `create_schema` (true/false).
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("cassandra://")
            .ok_or_else(|| Error::Config(format!("{url:?} is not a cassandra:// URL")))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = location
            .split_once('/')
            .ok_or_else(|| Error::Config(format!("{url:?} names no keyspace (…/KEYSPACE)")))?;
        let mut config = CassandraConfig {
            keyspace: keyspace.to_string(),
            ..Default::default()
        };
        check_keyspace(&config.keyspace)?;
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err(Error::Config(format!("{url:?} names no host")));
        }
        let default_port = hosts
            .iter()
            .rev()
            .find_map(|h| h.rsplit_once(':').map(|(_, p)| p))
            .unwrap_or("9042");
        config.contact_points = hosts
            .iter()
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:{default_port}")
                }
            })
            .collect();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("{pair:?} is not key=value")))?;
            let number = |what: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| Error::Config(format!("{what} must be a number, not {value:?}")))
            };
            match key {
                "replication_factor" => {
                    config.replication = replication_factor(number(key)? as u32);
                }
                "replication" => config.replication = value.to_string(),
                "consistency" => config.consistency = consistency(value)?,
                "serial_consistency" => config.serial_consistency = serial_consistency(value)?,
                "user" => config.username = Some(value.to_string()),
                "password_env" => {
                    config.password = Some(std::env::var(value).map_err(|_| {
                        Error::Config(format!("password_env: ${value} is not set"))
                    })?);
                }
                "tls_ca" => config.tls_ca = Some(PathBuf::from(value)),
                "chunk_kb" => {
                    let kb = number(key)? as usize;
                    if kb == 0 || kb * 1024 > MAX_CHUNK_BYTES {
                        return Err(Error::Config(format!(
                            "chunk_kb must be 1..={}",
                            MAX_CHUNK_BYTES / 1024
                        )));
                    }
                    config.chunk_bytes = kb * 1024;
                }
                "timeout_ms" => config.request_timeout = Duration::from_millis(number(key)?),
                "create_schema" => {
                    config.create_schema = value
                        .parse()
                        .map_err(|_| Error::Config("create_schema must be true or false".into()))?;
                }
                other => return Err(Error::Config(format!("unknown option {other:?}"))),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = CassandraConfig::from_url(
            "cassandra://h1,h2,h3:9142/ks_1?replication_factor=3&consistency=quorum&chunk_kb=512",
        )
        .unwrap();
        assert_eq!(c.contact_points, ["h1:9142", "h2:9142", "h3:9142"]);
        assert_eq!(c.keyspace, "ks_1");
        assert_eq!(c.replication, replication_factor(3));
        assert_eq!(c.consistency, Consistency::Quorum);
        assert_eq!(c.chunk_bytes, 512 * 1024);
        let c = CassandraConfig::from_url("cassandra://localhost/strata").unwrap();
        assert_eq!(c.contact_points, ["localhost:9042"]);
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        for bad in [
            "http://h/ks",
            "cassandra://h1",
            "cassandra:///ks",
            "cassandra://h/1ks",
            "cassandra://h/ks-x",
            "cassandra://h/ks?chunk_kb=2048",
            "cassandra://h/ks?consistency=most",
            "cassandra://h/ks?nope=1",
        ] {
            assert!(CassandraConfig::from_url(bad).is_err(), "{bad}");
        }
    }
}
