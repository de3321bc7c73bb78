//! Integration tests of strata-storage: one binary, so the multi-process test can
//! re-execute it.

mod conformance;
mod local;
