//! Freshet's internal gRPC API, generated from `proto/freshet/v1` at build time.
//!
//! Every service and client imports the wire types from here, and uses the
//! re-exported `tonic`/`prost` so the versions never drift apart.

pub use prost;
pub use tonic;

/// The encoded descriptors of every message and service in `proto/`, for
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/freshet_descriptor.bin"));

/// Version 1 of the internal API.
pub mod v1 {
    #![allow(clippy::derive_partial_eq_without_eq, clippy::large_enum_variant)]
    tonic::include_proto!("freshet.v1");
}

mod convert;
