//! One fetch from one partition: the request, and the decoding of the answer into records.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;
use weir_proto::batch::BatchReader;
use weir_proto::v1 as proto;
use weir_proto::v1::weir_client::WeirClient;

use crate::cluster::Cluster;
use crate::config::{ConsumerConfig, SeekTo};
use crate::error::{Context, Error, Result};
use crate::record::{ConsumerRecord, Header};

/// Where a fetch starts: a known offset, or one still to look up.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    At(u64),
    Resolve(SeekTo),
}

/// A fetch's answer, decoded.
#[derive(Debug)]
pub(super) struct Fetched {
    /// The offset asked for (resolved, if the fetch started from a seek).
    pub(super) offset: u64,
    /// Where the next fetch starts.
    pub(super) next_offset: u64,
    pub(super) high_watermark: u64,
    pub(super) log_start_offset: u64,
    pub(super) records: Vec<ConsumerRecord>,
}

/// A fetch's result, tagged with what it was for, so the consumer can drop stale answers.
#[derive(Debug)]
pub(super) struct FetchOutcome {
    pub(super) topic: String,
    pub(super) partition: u32,
    pub(super) epoch: u64,
    pub(super) result: Result<Fetched>,
}

/// The offsets that bound what a partition can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The oldest retained offset.
    pub log_start_offset: u64,
    /// The offset after the last committed record: what a consumer can read up to.
    pub high_watermark: u64,
}

/// Looks up an offset with ListOffsets. Also answers the partition's watermarks.
pub(crate) async fn list_offset(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    seek: SeekTo,
    retry_timeout: Duration,
) -> Result<(u64, Watermarks)> {
    let spec = match seek {
        SeekTo::Offset(offset) => {
            let (_, watermarks) = Box::pin(list_offset(cluster, topic, partition, SeekTo::End, retry_timeout)).await?;
            return Ok((offset, watermarks));
        }
        SeekTo::Beginning => proto::list_offsets_request::Spec::Earliest(true),
        SeekTo::End => proto::list_offsets_request::Spec::Latest(true),
        SeekTo::Timestamp(timestamp_ms) => proto::list_offsets_request::Spec::TimestampMs(timestamp_ms),
    };
    let timeout = cluster.config().request_timeout();
    let response = cluster
        .with_leader(topic, partition, retry_timeout, |mut client| {
            let request = cluster.request(
                proto::ListOffsetsRequest {
                    topic: topic.to_owned(),
                    partition,
                    spec: Some(spec),
                },
                timeout,
            );
            async move {
                client
                    .list_offsets(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| Error::from_status(status, &Context::partition(topic, partition)))
            }
        })
        .await?;
    let watermarks = Watermarks {
        log_start_offset: response.log_start_offset,
        high_watermark: response.high_watermark,
    };
    Ok((response.offset, watermarks))
}

/// Fetches once from `start`, long-polling up to the configured wait.
pub(super) async fn fetch(
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    topic: String,
    partition: u32,
    start: Start,
    epoch: u64,
) -> FetchOutcome {
    let result = fetch_records(&cluster, &config, &topic, partition, start).await;
    FetchOutcome {
        topic,
        partition,
        epoch,
        result,
    }
}

async fn fetch_records(
    cluster: &Cluster,
    config: &ConsumerConfig,
    topic: &str,
    partition: u32,
    start: Start,
) -> Result<Fetched> {
    let retry_timeout = Duration::from_millis(config.retry_timeout_ms);
    let offset = match start {
        Start::At(offset) => offset,
        Start::Resolve(seek) => list_offset(cluster, topic, partition, seek, retry_timeout).await?.0,
    };
    // The broker may hold the request for max_wait_ms before it answers.
    let timeout = cluster.config().request_timeout() + Duration::from_millis(u64::from(config.max_wait_ms));
    let fetch = |mut client: WeirClient<Channel>, from_replica: bool| {
        let request = cluster.request(
            proto::FetchRequest {
                topic: topic.to_owned(),
                partition,
                offset,
                max_bytes: config.fetch_bytes_max,
                max_wait_ms: config.max_wait_ms,
                from_replica,
            },
            timeout,
        );
        async move {
            client
                .fetch(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| Error::from_status(status, &Context::offset(topic, partition, offset)))
        }
    };
    let mut from_replica = None;
    if let Some(node) = config.preferred_replica {
        if let Some(address) = cluster.replica_address(topic, partition, node).await {
            match fetch(cluster.weir(&address)?, true).await {
                Ok(response) => from_replica = Some(response),
                Err(error) => {
                    tracing::debug!(topic, partition, node, %error, "preferred replica cannot serve; fetching from the leader")
                }
            }
        }
    }
    let response = match from_replica {
        Some(response) => response,
        None => {
            cluster
                .with_leader(topic, partition, retry_timeout, |client| fetch(client, false))
                .await?
        }
    };
    let had_batches = !response.batches.is_empty();
    let records = decode_records(topic, partition, response.batches, offset)?;
    let mut next_offset = offset;
    if let Some(last) = records.last() {
        next_offset = next_offset.max(last.offset + 1);
    }
    if had_batches {
        next_offset = next_offset.max(response.next_offset);
    }
    Ok(Fetched {
        offset,
        next_offset,
        high_watermark: response.high_watermark,
        log_start_offset: response.log_start_offset,
        records,
    })
}

/// Decodes concatenated batches (each CRC-checked) into the records at or after `from`: the
/// first batch of a fetch may start before the offset asked for.
pub(crate) fn decode_records(topic: &str, partition: u32, batches: Bytes, from: u64) -> Result<Vec<ConsumerRecord>> {
    let mut records = Vec::new();
    for batch in BatchReader::new(batches) {
        let batch =
            batch.map_err(|error| Error::Corrupt(format!("batch from partition {partition} of {topic:?}: {error}")))?;
        if batch.header.next_offset() <= from {
            continue;
        }
        for record in batch.records()? {
            if record.offset < from {
                continue;
            }
            records.push(ConsumerRecord {
                topic: topic.to_owned(),
                partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|header| Header {
                        key: header.key,
                        value: header.value,
                    })
                    .collect(),
            });
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::batch::{stamp, BatchBuilder};

    fn stored_batch(base_offset: u64, values: &[&str]) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for value in values {
            builder
                .push(1_000, None, Some(value.as_bytes()), &[("h", Some(b"v"))])
                .unwrap();
        }
        let mut batch = builder.finish();
        stamp(&mut batch, 1, 1, base_offset);
        batch
    }

    #[test]
    fn records_below_the_requested_offset_are_skipped() {
        let mut buffer = stored_batch(10, &["a", "b", "c"]);
        buffer.extend(stored_batch(13, &["d", "e"]));
        let records = decode_records("t", 2, Bytes::from(buffer.clone()), 12).unwrap();
        let seen: Vec<(u64, &[u8])> = records
            .iter()
            .map(|record| (record.offset, record.value.as_deref().unwrap()))
            .collect();
        assert_eq!(seen, vec![(12, &b"c"[..]), (13, b"d"), (14, b"e")]);
        assert_eq!(records[0].partition, 2);
        assert_eq!(records[0].headers[0].key, "h");
        assert_eq!(
            decode_records("t", 2, Bytes::from(buffer.clone()), 13).unwrap().len(),
            2
        );
        assert!(decode_records("t", 2, Bytes::from(buffer), 15).unwrap().is_empty());
    }

    #[test]
    fn corrupt_batches_are_an_error() {
        let mut buffer = stored_batch(0, &["a"]);
        let last = buffer.len() - 1;
        buffer[last] ^= 1;
        let error = decode_records("t", 0, Bytes::from(buffer), 0).unwrap_err();
        assert!(matches!(error, Error::Corrupt(_)), "{error:?}");
    }
}
