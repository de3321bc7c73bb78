//! The CLI's one error type. Every variant renders as a complete, user-facing sentence:
//! `main` prints `error: <message>` and exits with status 1.

use std::fmt::Write as _;
use std::path::PathBuf;

use arrow::error::ArrowError;
use parquet::errors::ParquetError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached (or the URL is unusable).
    #[error(
        "cannot connect to the Strata server at {url}: {reason}\n\
         (is the server running? pick another one with --server or STRATA_SERVER)"
    )]
    Connect { url: String, reason: String },

    /// An RPC failed with a status.
    #[error("{context}: {}: {message}", code_name(*.code))]
    Status {
        context: String,
        code: tonic::Code,
        message: String,
    },

    /// The server answered something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A local file could not be opened or read.
    #[error("{}: {source}", shown(.path))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A local file does not fit the dataset, or could not be decoded.
    #[error("{}: {message}", shown(.path))]
    File { path: PathBuf, message: String },

    #[error(transparent)]
    Arrow(#[from] ArrowError),

    #[error(transparent)]
    Parquet(#[from] ParquetError),

    /// Bad input that clap could not catch (a spec file, a flag combination, ...).
    #[error("{0}")]
    Invalid(String),

    /// An ingest stream ended early; the message says what is durable and how to resume.
    #[error("{0}")]
    Ingest(String),

    /// A bad setting of `strata serve`.
    #[error("{0}")]
    Usage(String),

    /// The server failed to start or stopped with an error.
    #[error("{0}")]
    Server(String),

    /// Writing the output failed (stdout closed, disk full, ...).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl Error {
    /// Wraps a failed RPC's status with what was being attempted.
    pub fn status(context: impl Into<String>, status: &tonic::Status) -> Self {
        Self::Status {
            context: context.into(),
            code: status.code(),
            message: status_message(status),
        }
    }

    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the output's reader went away (`strata sql … | head`): not worth a
    /// message.
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            Self::Output(e) => Some(e),
            Self::Arrow(ArrowError::IoError(_, e)) => Some(e),
            _ => None,
        };
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// The canonical gRPC name of a status code (`NOT_FOUND`, `UNAVAILABLE`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `err` followed by its chain of sources, `": "`-separated, skipping repeats (transport
/// errors often say the same thing at two levels).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = e.source();
    }
    out
}

/// A status's message followed by its source's chain: transport failures carry the
/// useful part ("connection refused", "broken pipe") in the source.
pub fn status_message(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let text = chain(source);
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// A path as errors name it (`-` is standard input).
fn shown(path: &std::path::Path) -> String {
    if crate::read::is_stdin(path) {
        "standard input".to_string()
    } else {
        path.display().to_string()
    }
}
