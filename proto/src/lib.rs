//! Weir's wire protocol.
//!
//! # Layout
//! - [`v1`]: the gRPC services and messages generated from `proto/weir.proto` by tonic/prost
//!   (compiled with protox at build time: no protoc needed).
//! - [`batch`]: the record batch codec. The batch is both the wire format for record data and
//!   the on-disk format of a partition's log, so producers, the broker's storage and consumers
//!   share this one implementation.

pub mod batch;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("weir.v1");
}
