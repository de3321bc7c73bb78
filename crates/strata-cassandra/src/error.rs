//! Errors of connecting to Cassandra; once connected, the stores answer with
//! [`strata_storage::Error`] like every backend.

/// Setting up the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or an option is not acceptable.
    #[error("cassandra configuration: {0}")]
    Config(String),
    /// No session could be made, or the schema could not be applied.
    #[error("cassandra: {0}")]
    Connect(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for strata_storage::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(m) => strata_storage::Error::InvalidArgument(m),
            Error::Connect(m) => strata_storage::Error::Backend(m),
        }
    }
}
