//! Integration tests of the query layer: SQL through DataFusion over Strata tables.

mod cache;
mod changes;
mod common;
mod logs;
mod object_store;
mod run_aggregate;
mod sql;
