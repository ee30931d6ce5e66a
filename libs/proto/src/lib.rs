//! Freshet's internal gRPC API, generated from `proto/freshet/v1` at build time.
//!
//! Every service and client imports the wire types from here, and uses the
//! re-exported `tonic`/`prost` so the versions never drift apart.

pub use prost;
pub use tonic;

/// Version 1 of the internal API.
pub mod v1 {
    #![allow(clippy::derive_partial_eq_without_eq, clippy::large_enum_variant)]
    tonic::include_proto!("freshet.v1");
}
