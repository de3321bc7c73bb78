//! The `strata` command-line client of Strata's gRPC API.
//!
//! ```text
//!  strata ingest DATASET FILE...  ─▶ read (CSV / Parquet / NDJSON → dataset schema,
//!                                     numbered batches) ─▶ Ingest stream (pipelined,
//!                                     exactly-once with --producer)
//!  strata datasets create|list|describe|drop ─▶ dataset RPCs
//!  strata flush DATASET           ─▶ Flush RPC
//!  strata serve                   ─▶ strata_server::run on the embedded local store
//! ```
//!
//! One module per command group ([`ingest`], [`datasets`]); [`read`] turns files into
//! batches and is free of I/O other than the files; [`client`] connects. Human output goes
//! to stdout, progress and notes to stderr; every failure is an [`error::Error`] whose
//! message is meant for the user.

#![allow(clippy::print_stdout)]

pub mod client;
pub mod datasets;
pub mod error;
pub mod ingest;
pub mod output;
pub mod read;
pub mod serve;

pub use error::{Error, Result};

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod stream_tests;
