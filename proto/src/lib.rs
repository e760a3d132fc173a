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

/// The internal topic that holds consumer groups: membership records and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The partition of [`OFFSETS_TOPIC`] (of `partitions`) that holds group `group`; its leader is
/// the group's coordinator. CRC-32 of the name, so broker and clients agree without sharing
/// more than this crate.
pub fn group_partition(group: &str, partitions: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % partitions.max(1)
}
