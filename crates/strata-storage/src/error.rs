/// Errors of the storage backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob or record does not exist.
    #[error("{kind} {path:?} not found")]
    NotFound { kind: &'static str, path: String },
    /// A conditional write lost: the key already exists. The caller may re-read and retry.
    #[error("conflict: {key:?} already exists")]
    Conflict { key: String },
    /// Stored bytes fail their checksum, or are shorter than recorded.
    #[error("corrupt {kind} {path:?}: {reason}")]
    Corrupt {
        kind: &'static str,
        path: String,
        reason: String,
    },
    /// A key, path or range the caller passed is not acceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("I/O error on {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another handle in this one) holds the directory's lock.
    #[error("{path} is in use by {owner}: one server per data directory")]
    Locked { path: String, owner: String },
    /// The backend failed in a way that is not one of the above (network, server error).
    #[error("storage backend: {0}")]
    Backend(String),
}

impl Error {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
