use strata_storage::Error as StorageError;

/// Errors of the table layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dataset {0:?} not found")]
    DatasetNotFound(String),
    #[error("dataset {0:?} already exists")]
    DatasetExists(String),
    /// The version does not exist (yet).
    #[error("dataset {dataset:?} has no version {version} (head is {head})")]
    VersionNotFound {
        dataset: String,
        version: u64,
        head: u64,
    },
    /// The version existed but vacuum removed it.
    #[error(
        "version {version} of dataset {dataset:?} was vacuumed (oldest retained version: {oldest})"
    )]
    VersionVacuumed {
        dataset: String,
        version: u64,
        oldest: u64,
    },
    /// A change feed position whose versions vacuum removed.
    #[error(
        "the changes of version {version} of dataset {dataset:?} are no longer readable (vacuumed); the oldest version whose changes are readable is {readable}"
    )]
    ChangesVacuumed {
        dataset: String,
        version: u64,
        readable: u64,
    },
    #[error("dataset {dataset:?} has no tag {tag:?}")]
    TagNotFound { dataset: String, tag: String },
    #[error("dataset {dataset:?} already has a tag {tag:?}")]
    TagExists { dataset: String, tag: String },
    #[error("dataset {dataset:?} has no version at or before timestamp {timestamp_ms} ms")]
    NoVersionAtTime { dataset: String, timestamp_ms: i64 },
    /// Rows do not match the dataset's schema: missing, extra or mistyped columns, nulls in keys.
    #[error("schema mismatch: {0}")]
    SchemaMismatch(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another writer committed first and retrying did not help (or was not safe).
    #[error("commit conflict on dataset {dataset:?}: {reason}")]
    Conflict { dataset: String, reason: String },
    /// A commit came too late: its new blobs are older than the vacuum grace period, so a
    /// vacuum may already have removed them. Nothing was committed; write again.
    #[error(
        "commit to dataset {dataset:?} abandoned: its segments were written {elapsed_ms} ms ago, longer than the vacuum grace period of {grace_ms} ms"
    )]
    TransactionExpired {
        dataset: String,
        elapsed_ms: i64,
        grace_ms: i64,
    },
    /// Another server holds the producer's unflushed batches: retry shortly.
    #[error(
        "producer {producer:?} of dataset {dataset:?} is held by server {owner}, which still has its batches to commit or a stream of it open; retry shortly"
    )]
    ProducerClaimed {
        dataset: String,
        producer: String,
        owner: String,
    },
    /// Stored metadata cannot be decoded.
    #[error("corrupt metadata {what}: {reason}")]
    CorruptMetadata { what: String, reason: String },
    /// A record written by a newer release, in a format this one does not read.
    #[error(
        "{what} is of record format {format}; this release reads formats up to {supported}: upgrade Strata"
    )]
    NewerFormat {
        what: String,
        format: u32,
        supported: u32,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Types(#[from] strata_types::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet segment {path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
}

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::CorruptMetadata {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn parquet(path: &str, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.to_string(),
            source,
        }
    }

    /// True for errors a caller may resolve by retrying the whole operation.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
            || matches!(self, Error::Storage(e) if e.is_conflict())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
