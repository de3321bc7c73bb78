//! The `strata` command-line client of Strata's gRPC API.
//!
//! ```text
//!  strata ingest DATASET FILE...  ─▶ read (CSV / Parquet / NDJSON → dataset schema,
//!                                     numbered batches) ─▶ Ingest stream (pipelined,
//!                                     exactly-once with --producer)
//!  strata datasets create|list|describe|drop ─▶ dataset RPCs
//!  strata flush DATASET           ─▶ Flush RPC
//!  strata sql [QUERY | -]         ─▶ Query RPC (Arrow IPC) ─▶ table / CSV / JSON / Arrow;
//!                                    no QUERY on a terminal: the interactive shell
//!  strata versions | tags | rollback | tag | vacuum | compact ─▶ version RPCs
//!  strata demo                    ─▶ embedded server + generated feed + the above
//!  strata serve                   ─▶ strata_server::run on the embedded local store
//! ```
//!
//! One module per command group ([`ingest`], [`datasets`], [`sql`], [`versions`],
//! [`demo`]); [`query`] runs one statement and formats its result; [`split`] cuts SQL
//! text at `;`; [`read`] turns files into batches and is free of I/O other than the
//! files; [`client`] connects. Results and human output go to stdout, progress and notes
//! to stderr; every failure is an [`error::Error`] whose message is meant for the user.

#![allow(clippy::print_stdout)]

pub mod client;
pub mod datasets;
pub mod demo;
pub mod error;
pub mod ingest;
pub mod output;
pub mod query;
pub mod read;
pub mod serve;
pub mod split;
pub mod sql;
pub mod versions;
pub mod watch;

pub use error::{Error, Result};

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod sql_tests;
#[cfg(test)]
mod stream_tests;
