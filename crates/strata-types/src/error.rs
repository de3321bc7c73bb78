use arrow::error::ArrowError;

/// Errors raised while validating names, schemas and values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dataset, tag or column name does not follow the naming rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A schema, key definition or schema file is not acceptable.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    /// A value could not be converted to or from Arrow.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error("schema file: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
