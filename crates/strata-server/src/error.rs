//! Errors of the server, and the one place where Strata errors become gRPC statuses.

use strata_ingest::Error as IngestError;
use strata_query::Error as QueryError;
use strata_storage::Error as StorageError;
use strata_table::Error as TableError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Query(#[from] QueryError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The gRPC code of a table error: client mistakes are never `Internal`.
pub fn table_code(e: &TableError) -> Code {
    match e {
        TableError::DatasetNotFound(_)
        | TableError::VersionNotFound { .. }
        | TableError::TagNotFound { .. }
        | TableError::NoVersionAtTime { .. } => Code::NotFound,
        TableError::VersionVacuumed { .. }
        | TableError::ChangesVacuumed { .. }
        | TableError::NewerFormat { .. } => Code::FailedPrecondition,
        TableError::DatasetExists(_) | TableError::TagExists { .. } => Code::AlreadyExists,
        TableError::SchemaMismatch(_) | TableError::InvalidArgument(_) | TableError::Types(_) => {
            Code::InvalidArgument
        }
        TableError::Conflict { .. } | TableError::TransactionExpired { .. } => Code::Aborted,
        // Retryable: the holder gives the producer up after its next flush.
        TableError::ProducerClaimed { .. } => Code::Unavailable,
        TableError::CorruptMetadata { .. } => Code::DataLoss,
        TableError::Storage(s) => storage_code(s),
        TableError::Arrow(_) | TableError::Parquet { .. } => Code::Internal,
    }
}

fn storage_code(e: &StorageError) -> Code {
    match e {
        StorageError::Corrupt { .. } => Code::DataLoss,
        StorageError::NotFound { .. } => Code::NotFound,
        StorageError::Conflict { .. } => Code::Aborted,
        StorageError::InvalidArgument(_) => Code::InvalidArgument,
        StorageError::Io { .. } | StorageError::Backend(_) => Code::Unavailable,
        StorageError::Locked { .. } => Code::FailedPrecondition,
    }
}

/// The gRPC code of an ingestion error.
pub fn ingest_code(e: &IngestError) -> Code {
    match e {
        IngestError::DatasetNotFound(_) => Code::NotFound,
        IngestError::InvalidProducer { .. }
        | IngestError::MalformedIpc { .. }
        | IngestError::SchemaMismatch { .. }
        | IngestError::SequenceNotIncreasing { .. } => Code::InvalidArgument,
        IngestError::SequenceOutOfRange(_) => Code::OutOfRange,
        IngestError::BatchTooLarge { .. } => Code::ResourceExhausted,
        IngestError::ShuttingDown | IngestError::Wal(_) => Code::Unavailable,
        IngestError::Locked(_) => Code::FailedPrecondition,
        IngestError::CorruptWal { .. } => Code::DataLoss,
        IngestError::Io { .. } => Code::Internal,
        IngestError::Table(t) => table_code(t),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Ingest(i) => ingest_code(i),
            Error::Table(t) => table_code(t),
            Error::Storage(s) => storage_code(s),
            Error::Query(q) => query_code(q),
            Error::Config(_) => Code::InvalidArgument,
            Error::Listen { .. } | Error::Transport(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// The gRPC code of a SQL error: the client's mistakes (bad SQL, unknown tables or
/// versions) are never `Internal`.
pub fn query_code(e: &QueryError) -> Code {
    match e {
        QueryError::Sql(_)
        | QueryError::Plan(_)
        | QueryError::Unsupported(_)
        | QueryError::TooComplex(_)
        | QueryError::Data(_) => Code::InvalidArgument,
        QueryError::Overflow(_) => Code::OutOfRange,
        QueryError::Cancelled => Code::Cancelled,
        QueryError::Table(t) => table_code(t),
        QueryError::Hook(h) => match h.downcast_ref::<IngestError>() {
            Some(i) => ingest_code(i),
            None => match h.downcast_ref::<TableError>() {
                Some(t) => table_code(t),
                None => Code::Internal,
            },
        },
        QueryError::ResourcesExhausted(_) => Code::ResourceExhausted,
        QueryError::Timeout(_) => Code::DeadlineExceeded,
        QueryError::Execution(_) => Code::Internal,
    }
}

pub fn query_status(e: QueryError) -> Status {
    Status::new(query_code(&e), e.to_string())
}

pub(crate) fn ingest_status(e: IngestError) -> Status {
    Status::new(ingest_code(&e), e.to_string())
}

pub(crate) fn table_status(e: TableError) -> Status {
    Status::new(table_code(&e), e.to_string())
}
