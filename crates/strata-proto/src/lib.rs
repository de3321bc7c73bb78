//! Strata's gRPC API, generated from `proto/strata/v1/*.proto` at build time.
//!
//! `v1` holds the messages, `v1::strata_client::StrataClient` and
//! `v1::strata_server::{Strata, StrataServer}`; [`FILE_DESCRIPTOR_SET`] is the encoded
//! descriptor set for gRPC server reflection.

#[allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// The encoded `FileDescriptorSet` of `proto/strata/v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strata_descriptor.bin"));
