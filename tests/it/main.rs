//! System tests: one binary for the whole suite.

mod crash;
mod model;
mod multiproc;
mod server_crash;
mod sqllogic;
