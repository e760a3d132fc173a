//! The Rust client for Weir: produce records, consume them, and administer topics.
//!
//! ```no_run
//! # async fn example() -> weir_client::Result<()> {
//! use weir_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
//!
//! let client = Client::new(ClientConfig::new("127.0.0.1:9292")?)?;
//! let producer = client.producer(ProducerConfig::default())?;
//! let metadata = producer.send(ProducerRecord::new("events").with_value("hello")).await?;
//!
//! let mut consumer = client.consumer(ConsumerConfig::default());
//! consumer.assign("events", &[metadata.partition]).await?;
//! consumer.seek("events", metadata.partition, SeekTo::Offset(metadata.offset)).await?;
//! let records = consumer.poll().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`config`]: `ClientConfig` (bootstrap list, timeouts), `ProducerConfig`, `ConsumerConfig`,
//!   with every limit named and its unit last.
//! - [`error`]: the one `Error` enum, and the one place gRPC statuses become typed errors
//!   (`Error::from_status`); `is_retriable` / `is_outcome_unknown` tell callers what to do.
//! - `client`: [`Client`], the shared connections from which producers, consumers and admin
//!   clients are made.
//! - `cluster` (private): a tonic channel per broker address and the metadata cache (brokers,
//!   partition leaders), refreshed when a request finds it stale; routes requests to leaders.
//! - [`producer`]: batching per partition, one batch in flight per partition, retries within a
//!   delivery timeout, a bounded buffer. [`partitioner`]: Kafka-compatible murmur2 key hashing
//!   and sticky partitioning of keyless records.
//! - [`consumer`]: manual assignment, seek (offset, ends, time), long-poll fetches of every
//!   assigned partition at once, `poll` and `stream`.
//! - [`admin`]: topics, topic settings, cluster status and metadata.
//! - [`record`] and [`types`]: the domain types of the API. Wire (`weir_proto`) types stop at
//!   this crate's boundary and are converted by hand in `types`.
//! - `backoff` (private): exponential backoff with jitter.
//!
//! The client never depends on the broker crate: it speaks only the wire protocol of
//! `weir-proto`.

pub mod admin;
mod backoff;
mod client;
mod cluster;
pub mod config;
pub mod consumer;
pub mod error;
pub mod partitioner;
pub mod producer;
pub mod record;
pub mod types;

pub use admin::Admin;
pub use client::Client;
pub use config::{Acks, ClientConfig, ClientConfigBuilder, ConsumerConfig, ProducerConfig, SeekTo};
pub use consumer::{Consumer, Watermarks};
pub use error::{Error, Result};
pub use producer::{DeliveryFuture, Producer};
pub use record::{ConsumerRecord, Header, ProducerRecord, RecordMetadata};
pub use types::{
    BrokerInfo, ClusterMetadata, ClusterStatus, NodeStatus, PartitionDescription, PartitionMetadata, PartitionStatus,
    TopicConfig, TopicDescription, TopicMetadata, TopicSummary,
};

/// Compiles the README's Rust example, so it stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
