//! Shared vocabulary of Strata.
//!
//! ```text
//!   schemas/*.json ──parse──▶ DatasetSpec (name, Arrow schema, partition key, row key, shards)
//!   Arrow arrays ──────────▶ Value / ColumnStats (key bounds, min/max, predicate literals)
//! ```
//!
//! Everything here is plain data with validation; no I/O. Names are validated once,
//! on construction, so the rest of the system can put them in storage keys.

pub mod error;
pub mod ipc_schema;
pub mod name;
pub mod spec;
pub mod value;

pub use error::{Error, Result};
pub use name::{DatasetName, validate_name};
pub use spec::{ColumnDef, DatasetSpec, DatasetSpecDef, format_type, parse_type};
pub use value::{ColumnStats, Value};
