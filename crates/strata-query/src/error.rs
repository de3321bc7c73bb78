//! Errors of the query layer, sorted by whose fault they are.
//!
//! DataFusion reports everything as a [`DataFusionError`], with Strata's own errors
//! boxed inside (`External`, `Context`, `Shared`, Arrow's `ExternalError`). [`From`]
//! digs them out again, so a missing dataset stays a [`strata_table::Error`] and a bad
//! query stays a client error: the server maps each variant to one gRPC code.

use std::sync::Arc;
use std::time::Duration;

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::hooks::HookError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not SQL Strata can parse.
    #[error("SQL parse error: {0}")]
    Sql(String),
    /// The statement parses but cannot be planned: unknown column, type mismatch,
    /// wrong arguments, a bad version clause, …
    #[error("{0}")]
    Plan(String),
    /// Valid SQL that Strata does not run.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The table layer refused (unknown dataset, version or tag, vacuumed version,
    /// schema mismatch, conflict, storage failure, …).
    #[error(transparent)]
    Table(#[from] strata_table::Error),
    /// The dataset owner (the ingester, in the server) refused.
    #[error("{0}")]
    Hook(HookError),
    /// The query needed more memory than the query memory limit allows.
    #[error("query exceeded the query memory limit: {0}")]
    ResourcesExhausted(String),
    /// The statement is too large or nests too deeply to plan safely.
    #[error("statement too complex: {0}")]
    TooComplex(String),
    /// A value the query computed is invalid: division by zero, a string that is not a
    /// number or timestamp, a failed cast (SQLSTATE class 22, "data exception").
    #[error("{0}")]
    Data(String),
    /// An arithmetic result does not fit its type (SQLSTATE 22003).
    #[error("{0}")]
    Overflow(String),
    /// The query's consumer went away (the client cancelled or disconnected).
    #[error("the query was cancelled")]
    Cancelled,
    /// The query ran longer than the query timeout.
    #[error("query cancelled after the query timeout of {0:?}")]
    Timeout(Duration),
    /// Execution failed for a reason that is not the query's fault.
    #[error("query execution failed: {0}")]
    Execution(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn plan(message: impl Into<String>) -> Self {
        Error::Plan(message.into())
    }

    /// True when the client sent something wrong (as opposed to the server failing).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::Sql(_)
                | Error::Plan(_)
                | Error::Unsupported(_)
                | Error::TooComplex(_)
                | Error::Data(_)
                | Error::Overflow(_)
        )
    }
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

impl From<strata_types::Error> for Error {
    fn from(e: strata_types::Error) -> Self {
        Error::Plan(e.to_string())
    }
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        DataFusionError::from(e).into()
    }
}

type Boxed = Box<dyn std::error::Error + Send + Sync>;

fn from_boxed(b: Boxed) -> Error {
    let b = match b.downcast::<Error>() {
        Ok(e) => return *e,
        Err(b) => b,
    };
    let b = match b.downcast::<strata_table::Error>() {
        Ok(e) => return Error::Table(*e),
        Err(b) => b,
    };
    let b = match b.downcast::<DataFusionError>() {
        Ok(e) => return (*e).into(),
        Err(b) => b,
    };
    match b.downcast::<ArrowError>() {
        Ok(e) => (*e).into(),
        Err(b) => Error::Execution(b.to_string()),
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        use DataFusionError as D;
        match e {
            D::External(b) => from_boxed(b),
            D::Context(_, inner) | D::Diagnostic(_, inner) => (*inner).into(),
            D::Shared(arc) => match Arc::try_unwrap(arc) {
                Ok(inner) => inner.into(),
                Err(arc) => shared(&arc),
            },
            D::ArrowError(a, _) => from_arrow(*a),
            D::Collection(mut errors) if !errors.is_empty() => errors.swap_remove(0).into(),
            D::SQL(p, _) => Error::Sql(p.to_string()),
            D::Plan(m) => match unknown_table(&m) {
                Some(name) => Error::Table(strata_table::Error::DatasetNotFound(name)),
                None => Error::Plan(m),
            },
            D::Configuration(m) => Error::Plan(m),
            e @ D::SchemaError(..) => Error::Plan(e.strip_backtrace()),
            D::NotImplemented(m) => Error::Unsupported(m),
            D::ResourcesExhausted(m) => Error::ResourcesExhausted(m),
            // A filter evaluated inside the Parquet reader fails with the reader's error,
            // the predicate's own inside (as text: "Error evaluating filter predicate").
            D::ParquetError(p) => match *p {
                parquet::errors::ParquetError::External(b) => from_boxed(b),
                p => Error::Execution(p.to_string()),
            },
            // DataFusion's execution errors are about the data the query met (a
            // timestamp that does not parse, a bad regular expression, an argument out
            // of a function's domain); its own bugs are `Internal`.
            D::Execution(m) => data_error(m),
            other => Error::Execution(other.strip_backtrace()),
        }
    }
}

/// Arrow's kernels report bad values (a failed cast, division by zero, overflow) as
/// errors of their own kinds; those are the query's, not the server's.
fn from_arrow(e: ArrowError) -> Error {
    match e {
        ArrowError::ExternalError(b) => from_boxed(b),
        ArrowError::DivideByZero => Error::Data("division by zero".into()),
        ArrowError::ArithmeticOverflow(m) => Error::Overflow(format!("arithmetic overflow: {m}")),
        ArrowError::CastError(m)
        | ArrowError::ParseError(m)
        | ArrowError::InvalidArgumentError(m)
        | ArrowError::ComputeError(m) => data_error(predicate_message(m)),
        other => Error::Execution(other.to_string()),
    }
}

/// The message of a filter that failed inside the Parquet reader, which reports it as
/// `Error evaluating filter predicate: ArrowError(DivideByZero, None)` (the Debug form
/// of DataFusion's error): the quoted message or the kind, without the wrapping.
fn predicate_message(m: String) -> String {
    let Some(debug) = m.strip_prefix("Error evaluating filter predicate: ") else {
        return m;
    };
    let quoted = debug.find("(\"").and_then(|start| {
        let rest = &debug[start + 2..];
        rest.find("\")")
            .map(|end| rest[..end].replace("\\\"", "\""))
    });
    match quoted {
        Some(message) => message,
        None if debug.contains("DivideByZero") => "division by zero".into(),
        None => debug.to_string(),
    }
}

fn data_error(m: String) -> Error {
    if m.contains("verflow") {
        Error::Overflow(m)
    } else {
        Error::Data(m)
    }
}

/// The dataset of DataFusion's "table 'strata.public.x@v3' not found".
fn unknown_table(message: &str) -> Option<String> {
    let name = message
        .strip_prefix("table '")?
        .strip_suffix("' not found")?;
    let table = name.rsplit('.').next()?;
    Some(table.split('@').next()?.to_string())
}

/// A shared error (one failure reported to several consumers) cannot be taken apart;
/// it keeps its class and message.
fn shared(e: &DataFusionError) -> Error {
    use DataFusionError as D;
    let root = e.find_root();
    if let D::External(b) = root
        && let Some(q) = b.downcast_ref::<Error>()
    {
        return match q {
            Error::Timeout(d) => Error::Timeout(*d),
            Error::Cancelled => Error::Cancelled,
            Error::ResourcesExhausted(m) => Error::ResourcesExhausted(m.clone()),
            Error::Data(m) => Error::Data(m.clone()),
            Error::Overflow(m) => Error::Overflow(m.clone()),
            other => Error::Execution(other.to_string()),
        };
    }
    match root {
        D::ResourcesExhausted(m) => Error::ResourcesExhausted(m.clone()),
        D::Plan(m) => Error::Plan(m.clone()),
        D::Execution(m) => data_error(m.clone()),
        D::ArrowError(a, _) => match a.as_ref() {
            ArrowError::DivideByZero => Error::Data("division by zero".into()),
            ArrowError::ArithmeticOverflow(m) => {
                Error::Overflow(format!("arithmetic overflow: {m}"))
            }
            ArrowError::CastError(m)
            | ArrowError::ParseError(m)
            | ArrowError::InvalidArgumentError(m)
            | ArrowError::ComputeError(m) => data_error(m.clone()),
            other => Error::Execution(other.to_string()),
        },
        other => Error::Execution(other.strip_backtrace()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_errors_survive_datafusion_wrapping() {
        let e = DataFusionError::from(Error::Table(strata_table::Error::DatasetNotFound(
            "nope".into(),
        )))
        .context("planning");
        let e = DataFusionError::ArrowError(Box::new(ArrowError::ExternalError(Box::new(e))), None);
        assert!(matches!(
            Error::from(e),
            Error::Table(strata_table::Error::DatasetNotFound(n)) if n == "nope"
        ));
        let m = "Error evaluating filter predicate: ArrowError(ArithmeticOverflow(\"Overflow happened on: 200 * 9223372036854775807\"), Some(\"\"))";
        let e = ArrowError::ComputeError(m.into());
        assert!(matches!(
            Error::from(e),
            Error::Overflow(m) if m == "Overflow happened on: 200 * 9223372036854775807"
        ));
        let m = "Error evaluating filter predicate: ArrowError(DivideByZero, None)";
        assert!(matches!(
            Error::from(ArrowError::ComputeError(m.into())),
            Error::Data(m) if m == "division by zero"
        ));
        let t = DataFusionError::Shared(Arc::new(Error::Timeout(Duration::from_secs(1)).into()));
        assert!(matches!(Error::from(t), Error::Timeout(_)));
        assert!(Error::from(DataFusionError::Plan("x".into())).is_client_error());
        assert!(matches!(
            Error::from(DataFusionError::ResourcesExhausted("mem".into())),
            Error::ResourcesExhausted(_)
        ));
    }
}
