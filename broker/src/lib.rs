//! The Weir broker: a persistent, partitioned, replicated message broker.
//!
//! # Layout
//! Layers, each a module, dependencies pointing one way only:
//! `server -> group, cluster -> raft -> log`.
//! - [`server`]: gRPC services (the only module that knows tonic and the wire types), limits,
//!   error-to-status mapping; the HTTP endpoint (Prometheus `/metrics`, `/healthz`, `/readyz`).
//! - [`group`]: consumer groups: the coordinator on `__consumer_offsets`, incremental
//!   assignment, committed offsets.
//! - [`cluster`]: the controller's replicated state machine (topics, partition replica sets,
//!   configs) and the reconciler that runs this node's partition replicas.
//! - [`raft`]: multi-Raft over raft-rs: a fixed set of raft threads, one RawNode per group,
//!   batched ready handling with one flush per dirty log per round.
//! - [`log`]: storage. Segmented, memory-mapped partition logs that are also the Raft logs;
//!   indexes, recovery, retention. Knows nothing of Raft, tokio or gRPC.
//! - [`node`]: one broker process wiring the layers together; [`config`]: its settings.
//! - [`types`]: id and position newtypes shared by every layer.

pub mod cluster;
pub mod config;
pub mod group;
pub mod log;
pub mod node;
pub mod raft;
pub mod server;
pub mod types;
