//! The admin client: topics, their settings, consumer groups, and the cluster's state.
//!
//! Control-plane requests can go to any node (the broker forwards them to the controller), so
//! each is tried on the known nodes in turn until one answers; only an answer that says the
//! request itself failed (a topic that exists, an invalid name) stops the round early. Listing
//! groups also goes to any node (it asks the others); every other group request goes to the
//! group's coordinator, like a consumer's (see `cluster`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use tonic::transport::Channel;
use weir_proto::v1 as proto;
use weir_proto::v1::admin_client::AdminClient;

use crate::cluster::{no_node_answered, Cluster};
use crate::config::{ClientConfig, SeekTo};
use crate::consumer::list_offset;
use crate::error::{Context, Error, Result};
use crate::types::{
    ClusterMetadata, ClusterStatus, CommittedOffset, GroupDescription, GroupListing, TopicConfig, TopicDescription,
    TopicSummary,
};

/// How many partition leaders `describe_group` and `reset_offsets` ask at once.
const OFFSET_LOOKUPS_CONCURRENT_MAX: usize = 16;

/// Manages topics and reads the cluster's state.
#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Arc<Cluster>,
}

impl Admin {
    /// An admin client with its own connections.
    pub fn new(client: ClientConfig) -> Result<Self> {
        Ok(Self::with_cluster(Cluster::new(client)?))
    }

    pub(crate) fn with_cluster(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }

    /// Sends a request to the nodes in turn until one answers. A write moves on only after an
    /// error that says it was not carried out; a read (`idempotent`) also after a timeout or a
    /// lost connection.
    async fn call<T, F, Fut>(&self, context: Context<'_>, idempotent: bool, attempt: F) -> Result<T>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_any(context, idempotent, Cluster::admin, attempt).await
    }

    /// [`Admin::call`] with any service's client, made by `client`.
    async fn call_any<C, T, F, Fut>(
        &self,
        context: Context<'_>,
        idempotent: bool,
        client: fn(&Cluster, &str) -> Result<C>,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let addresses = self.cluster.addresses();
        let mut last_error = Error::Unavailable("no broker address to try".into());
        for address in &addresses {
            let client = client(&self.cluster, address)?;
            match attempt(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    let error = Error::from_status(status, &context);
                    if !(error.is_retriable() || (idempotent && error.is_outcome_unknown())) {
                        return Err(error);
                    }
                    tracing::debug!(%address, %error, "admin request failed, trying the next node");
                    last_error = error;
                }
            }
        }
        Err(no_node_answered(&addresses, last_error))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.cluster.request(message, self.cluster.config().request_timeout())
    }

    /// Creates a topic; unset settings take the broker's defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription> {
        let message = proto::CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            replication_factor,
            config: Some(config.into()),
        };
        let response = self
            .call(Context::topic(name), false, |mut client| {
                let request = self.request(message.clone());
                async move { client.create_topic(request).await }
            })
            .await?;
        let topic = response
            .topic
            .ok_or_else(|| Error::Internal("create topic answered without the topic".into()))?;
        Ok(topic.into())
    }

    /// Every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let response = self
            .call(Context::none(), true, |mut client| {
                let request = self.request(proto::ListTopicsRequest {});
                async move { client.list_topics(request).await }
            })
            .await?;
        let mut topics: Vec<TopicSummary> = response.topics.into_iter().map(Into::into).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let response = self
            .call(Context::topic(name), true, |mut client| {
                let request = self.request(proto::DescribeTopicRequest { name: name.to_owned() });
                async move { client.describe_topic(request).await }
            })
            .await?;
        Ok(response.into())
    }

    /// Replaces the settings that are set in `set`; returns the topic as it now is.
    pub async fn alter_topic_config(&self, name: &str, set: TopicConfig) -> Result<TopicDescription> {
        let set: proto::TopicConfig = set.into();
        let response = self
            .call(Context::topic(name), true, |mut client| {
                let request = self.request(proto::AlterTopicConfigRequest {
                    name: name.to_owned(),
                    set: Some(set),
                });
                async move { client.alter_topic_config(request).await }
            })
            .await?;
        Ok(response.into())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.call(Context::topic(name), false, |mut client| {
            let request = self.request(proto::DeleteTopicRequest { name: name.to_owned() });
            async move { client.delete_topic(request).await }
        })
        .await?;
        Ok(())
    }

    /// The cluster's nodes and partitions, as the first node to answer sees them.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let response = self
            .call(Context::none(), true, |mut client| {
                let request = self.request(proto::ClusterStatusRequest {});
                async move { client.cluster_status(request).await }
            })
            .await?;
        Ok(response.into())
    }

    /// Brokers, topics and partition leaders. An empty `topics` asks for every topic.
    pub async fn metadata(&self, topics: &[&str]) -> Result<ClusterMetadata> {
        let topics = topics.iter().map(|topic| (*topic).to_owned()).collect();
        self.cluster.fetch_metadata(topics).await
    }

    /// How long group requests keep retrying while the coordinator moves or
    /// `__consumer_offsets` is being created.
    fn group_retry_timeout(&self) -> Duration {
        self.cluster.config().request_timeout()
    }

    /// Runs a request against the group's coordinator (see `Cluster::with_coordinator`).
    async fn call_coordinator<T, F, Fut>(&self, group: &str, idempotent: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut(weir_proto::v1::groups_client::GroupsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.cluster
            .with_coordinator(group, self.group_retry_timeout(), idempotent, |client| {
                let answer = attempt(client);
                async move {
                    answer
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|status| Error::from_status(status, &Context::group(group)))
                }
            })
            .await
    }

    /// Every consumer group of the cluster, sorted by name, and the nodes that did not answer
    /// (their groups are missing).
    pub async fn list_groups(&self) -> Result<GroupListing> {
        let response = self
            .call_any(Context::none(), true, Cluster::groups, |mut client| {
                let request = self.request(proto::ListGroupsRequest {});
                async move { client.list_groups(request).await }
            })
            .await?;
        Ok(response.into())
    }

    /// A group's members and assignments, and per partition its committed offset, high
    /// watermark and lag. Partitions whose watermark the coordinator could not tell (it holds
    /// no replica of them) are asked of their leaders; `None` where that failed too.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let response = self
            .call_coordinator(group, true, |mut client| {
                let request = self.request(proto::DescribeGroupRequest {
                    group: group.to_owned(),
                });
                async move { client.describe_group(request).await }
            })
            .await?;
        let mut description = GroupDescription::from(response);
        let unknown: Vec<usize> = (0..description.offsets.len())
            .filter(|index| description.offsets[*index].high_watermark.is_none())
            .collect();
        let retry_timeout = self.group_retry_timeout();
        let cluster = &self.cluster;
        let offsets = &description.offsets;
        let found: Vec<(usize, Result<u64>)> = stream::iter(unknown)
            .map(|index| async move {
                let offset = &offsets[index];
                let end = list_offset(cluster, &offset.topic, offset.partition, SeekTo::End, retry_timeout).await;
                (index, end.map(|(_, watermarks)| watermarks.high_watermark))
            })
            .buffer_unordered(OFFSET_LOOKUPS_CONCURRENT_MAX)
            .collect()
            .await;
        for (index, high_watermark) in found {
            match high_watermark {
                Ok(high_watermark) => description.offsets[index].set_high_watermark(high_watermark),
                Err(error) => {
                    let offset = &description.offsets[index];
                    tracing::debug!(topic = %offset.topic, partition = offset.partition, %error, "no high watermark");
                }
            }
        }
        Ok(description)
    }

    /// The group's committed offsets, sorted by topic and partition.
    pub async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        let response = self
            .call_coordinator(group, true, |mut client| {
                let request = self.request(proto::FetchOffsetsRequest {
                    group: group.to_owned(),
                    partitions: Vec::new(),
                });
                async move { client.fetch_offsets(request).await }
            })
            .await?;
        let mut offsets: Vec<CommittedOffset> = response.offsets.into_iter().map(Into::into).collect();
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    /// Sets the group's committed offsets of `topic` (of `partitions`, or every partition) to
    /// the earliest or latest offset, the first at or after a time, or an explicit offset
    /// (clamped to what the partition holds), and returns them as (partition, offset), sorted.
    /// The offsets are looked up here and sent as explicit values. Only while the group has no
    /// members (`GroupNotEmpty` otherwise); a broker may refuse a group it does not know
    /// (`GroupNotFound`).
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: Option<&[u32]>,
        to: SeekTo,
    ) -> Result<Vec<(u32, u64)>> {
        let count = self.cluster.partition_count(topic).await?;
        let partitions: Vec<u32> = match partitions {
            Some(partitions) => {
                if let Some(&missing) = partitions.iter().find(|&&partition| partition >= count) {
                    return Err(Error::PartitionNotFound {
                        topic: topic.to_owned(),
                        partition: missing,
                    });
                }
                let mut partitions = partitions.to_vec();
                partitions.sort_unstable();
                partitions.dedup();
                partitions
            }
            None => (0..count).collect(),
        };
        let retry_timeout = self.group_retry_timeout();
        let cluster = &self.cluster;
        let mut offsets: Vec<(u32, u64)> = stream::iter(partitions)
            .map(|partition| async move {
                let (offset, watermarks) = list_offset(cluster, topic, partition, to, retry_timeout).await?;
                let offset = offset.clamp(watermarks.log_start_offset, watermarks.high_watermark);
                Ok::<_, Error>((partition, offset))
            })
            .buffer_unordered(OFFSET_LOOKUPS_CONCURRENT_MAX)
            .try_collect()
            .await?;
        offsets.sort_unstable();
        let wire: Vec<proto::CommitOffset> = offsets
            .iter()
            .map(|(partition, offset)| proto::CommitOffset {
                topic: topic.to_owned(),
                partition: *partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect();
        self.call_coordinator(group, true, |mut client| {
            let request = self.request(proto::ResetOffsetsRequest {
                group: group.to_owned(),
                offsets: wire.clone(),
            });
            async move { client.reset_offsets(request).await }
        })
        .await?;
        Ok(offsets)
    }

    /// Forgets an empty group and its committed offsets (`GroupNotEmpty` while it has
    /// members).
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.call_coordinator(group, false, |mut client| {
            let request = self.request(proto::DeleteGroupRequest {
                group: group.to_owned(),
            });
            async move { client.delete_group(request).await }
        })
        .await?;
        Ok(())
    }
}
