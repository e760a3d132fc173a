//! The admin client: topics, their settings, and the cluster's state.
//!
//! Control-plane requests can go to any node (the broker forwards them to the controller), so
//! each is tried on the known nodes in turn until one answers; only an answer that says the
//! request itself failed (a topic that exists, an invalid name) stops the round early.

use std::future::Future;
use std::sync::Arc;

use tonic::transport::Channel;
use weir_proto::v1 as proto;
use weir_proto::v1::admin_client::AdminClient;

use crate::cluster::{no_node_answered, Cluster};
use crate::config::ClientConfig;
use crate::error::{Context, Error, Result};
use crate::types::{ClusterMetadata, ClusterStatus, TopicConfig, TopicDescription, TopicSummary};

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
    async fn call<T, F, Fut>(&self, context: Context<'_>, idempotent: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let addresses = self.cluster.addresses();
        let mut last_error = Error::Unavailable("no broker address to try".into());
        for address in &addresses {
            let client = self.cluster.admin(address)?;
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
}
