//! The Rust client for Weir: produce records, consume them (alone or in consumer groups), and
//! administer topics and groups.
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
//!
//! // As a member of consumer group "billing": the group's coordinator spreads the topic's
//! // partitions over the members; consumed positions are committed every 5 s and on close.
//! let mut member = client.consumer(ConsumerConfig::default().group_id("billing").start(SeekTo::Beginning));
//! member.subscribe(&["events"])?;
//! let records = member.poll().await?;
//! member.commit().await?; // or leave it to auto-commit
//! member.close().await?;
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
//!   partition leaders), refreshed when a request finds it stale; routes requests to leaders,
//!   and group requests to their coordinator (the leader of the group's `__consumer_offsets`
//!   partition).
//! - [`producer`]: batching per partition, one batch in flight per partition, retries within a
//!   delivery timeout, a bounded buffer. [`partitioner`]: Kafka-compatible murmur2 key hashing
//!   and sticky partitioning of keyless records.
//! - [`consumer`]: manual assignment or group membership (`subscribe`), seek (offset, ends,
//!   time), long-poll fetches of every partition read at once, `poll` and `stream`, commits.
//!   Inside it, `group` carries out rebalances in `poll` (revoke before assign) and commits,
//!   and `heartbeat` is the background task that joins, heartbeats (long poll) and leaves.
//! - [`admin`]: topics, topic settings, consumer groups (list, describe with lag, reset
//!   offsets, delete), cluster status and metadata.
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
pub use config::{Acks, AssignmentStrategy, ClientConfig, ClientConfigBuilder, ConsumerConfig, ProducerConfig, SeekTo};
pub use consumer::{Consumer, GroupCommitter, RebalanceListener, Watermarks};
pub use error::{Error, Result};
pub use producer::{DeliveryFuture, Producer};
pub use record::{ConsumerRecord, Header, ProducerRecord, RecordMetadata};
pub use types::{
    BrokerInfo, ClusterMetadata, ClusterStatus, CommittedOffset, GroupDescription, GroupListing, GroupMember,
    GroupPartitionOffset, GroupState, GroupSummary, NodeStatus, PartitionDescription, PartitionMetadata,
    PartitionStatus, TopicConfig, TopicDescription, TopicMetadata, TopicPartition, TopicSummary,
};

/// Compiles the README's Rust example, so it stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
