use std::path::PathBuf;

/// Errors of the ingestion layer. Every variant names what was wrong; the server maps
/// them to gRPC status codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dataset {0:?} not found")]
    DatasetNotFound(String),
    #[error("invalid producer id {producer:?}: {reason}")]
    InvalidProducer { producer: String, reason: String },
    #[error("malformed Arrow IPC in batch {sequence}: {reason}")]
    MalformedIpc { sequence: u64, reason: String },
    #[error("batch {sequence} does not match dataset {dataset:?}: {reason}")]
    SchemaMismatch {
        dataset: String,
        sequence: u64,
        reason: String,
    },
    #[error(
        "batch {sequence} holds {bytes} bytes (compressed buffers counted uncompressed), over \
         the limit of {max} bytes per batch"
    )]
    BatchTooLarge {
        sequence: u64,
        bytes: usize,
        max: usize,
    },
    #[error(
        "sequence number {sequence} is not greater than the previous one on this stream ({previous})"
    )]
    SequenceNotIncreasing { sequence: u64, previous: u64 },
    #[error(
        "sequence number {0} is out of range: a producer's sequence numbers must be below 2^63 \
         (a larger one would leave no room for the batches after it)"
    )]
    SequenceOutOfRange(u64),
    #[error("the server is shutting down; resume after the last acknowledged batch")]
    ShuttingDown,
    /// Writing or syncing the WAL failed. Nothing after the failure is acknowledged;
    /// the server must restart (and replay) before it takes writes again.
    #[error("write-ahead log failed: {0}")]
    Wal(String),
    /// The WAL directory is locked by another process (or another ingester).
    #[error("write-ahead log: {0}")]
    Locked(String),
    #[error("write-ahead log {path}: corrupt at byte {offset}: {reason}")]
    CorruptWal {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Table(#[from] strata_table::Error),
}

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
