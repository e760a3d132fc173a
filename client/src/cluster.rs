//! Connections and cached metadata, shared by the producer, consumer and admin clients.
//!
//! One tonic `Channel` per broker address (HTTP/2 multiplexes every request to that broker over
//! it), created lazily. Metadata (brokers, topics, partition leaders) is fetched from any reachable
//! node and cached; it is refreshed when a request shows it stale: not leader, unavailable, a topic
//! unknown to the cache. Refreshes are single-flight: callers pass the cache version they acted
//! on, and a refresh that finds a newer version already installed returns at once.
//!
//! A consumer group's requests go to its coordinator: the leader of partition
//! `group_partition(group, N)` of `__consumer_offsets`, found in metadata like any partition
//! leader, so a coordinator failover is handled by the same hints and refreshes. That topic is
//! created by the broker on the first group request: until metadata names it, group requests go
//! to any node, which answers with a leader hint or UNAVAILABLE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use weir_proto::v1 as proto;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::groups_client::GroupsClient;
use weir_proto::v1::weir_client::WeirClient;
use weir_proto::{group_partition, OFFSETS_TOPIC};

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::{Context, Error, Result};
use crate::types::{ClusterMetadata, TopicMetadata};

/// The cached view of the cluster.
#[derive(Debug, Default)]
struct MetadataCache {
    /// Bumped by every refresh and every leader hint; see the module doc.
    version: u64,
    cluster_id: String,
    brokers: HashMap<u64, String>,
    topics: HashMap<String, TopicMetadata>,
}

#[derive(Debug)]
pub(crate) struct Cluster {
    config: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
    metadata: RwLock<MetadataCache>,
    /// Held while a metadata refresh is under way, so concurrent refreshes collapse into one.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Rotates group requests over the nodes while no coordinator is known.
    next_any_node: AtomicUsize,
}

/// The error of a request that every node failed: says which were tried, keeps the last
/// error's kind (and so its retriability).
pub(crate) fn no_node_answered(addresses: &[String], last_error: Error) -> Error {
    let tried = addresses.join(", ");
    match last_error {
        Error::Unavailable(message) => Error::Unavailable(format!("no broker answered (tried {tried}): {message}")),
        Error::Timeout(message) => Error::Timeout(format!("no broker answered in time (tried {tried}): {message}")),
        Error::Transport(message) => Error::Transport(format!("no broker answered (tried {tried}): {message}")),
        other => other,
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    pub(crate) fn new(config: ClientConfig) -> Result<Arc<Self>> {
        config.validate()?;
        Ok(Arc::new(Self {
            config,
            channels: Mutex::new(HashMap::new()),
            metadata: RwLock::new(MetadataCache::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            next_any_node: AtomicUsize::new(0),
        }))
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.config.retry_backoff_ms),
            Duration::from_millis(self.config.retry_backoff_max_ms),
        )
    }

    /// Wraps a message in a request with a deadline (enforced by the channel, and sent to the
    /// broker as `grpc-timeout`).
    pub(crate) fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| Error::Config(format!("bad broker address {address:?}: {error}")))?
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    pub(crate) fn weir(&self, address: &str) -> Result<WeirClient<Channel>> {
        Ok(WeirClient::new(self.channel(address)?).max_decoding_message_size(self.config.response_bytes_max))
    }

    pub(crate) fn admin(&self, address: &str) -> Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel(address)?).max_decoding_message_size(self.config.response_bytes_max))
    }

    pub(crate) fn groups(&self, address: &str) -> Result<GroupsClient<Channel>> {
        Ok(GroupsClient::new(self.channel(address)?).max_decoding_message_size(self.config.response_bytes_max))
    }

    /// Addresses to try for a request any node can answer: brokers known from metadata first,
    /// then the bootstrap list, without repeats.
    pub(crate) fn addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = {
            let cache = self.metadata.read().unwrap_or_else(PoisonError::into_inner);
            let mut known: Vec<(u64, String)> = cache
                .brokers
                .iter()
                .map(|(id, address)| (*id, address.clone()))
                .collect();
            known.sort();
            known.into_iter().map(|(_, address)| address).collect()
        };
        for address in &self.config.bootstrap {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        }
        addresses
    }

    /// Deadline of requests that any node answers quickly (metadata): short, so that a stopped
    /// node does not hold the client up for a whole request timeout before it tries the next.
    pub(crate) fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms.min(self.config.connect_timeout_ms))
    }

    /// Asks the nodes in turn for metadata; the first answer wins.
    pub(crate) async fn fetch_metadata(&self, topics: Vec<String>) -> Result<ClusterMetadata> {
        let addresses = self.addresses();
        let mut last_error = Error::Unavailable("no broker address to try".into());
        for address in &addresses {
            let mut client = self.weir(address)?;
            let request = self.request(
                proto::MetadataRequest { topics: topics.clone() },
                self.metadata_timeout(),
            );
            match client.metadata(request).await {
                Ok(response) => return Ok(response.into_inner().into()),
                Err(status) => {
                    let error = Error::from_status(status, &Context::none());
                    tracing::debug!(%address, %error, "metadata request failed");
                    if !(error.is_retriable() || error.is_outcome_unknown()) {
                        return Err(error);
                    }
                    last_error = error;
                }
            }
        }
        Err(no_node_answered(&addresses, last_error))
    }

    pub(crate) fn version(&self) -> u64 {
        self.metadata.read().unwrap_or_else(PoisonError::into_inner).version
    }

    /// Refreshes the cache unless it changed since `seen_version`.
    pub(crate) async fn refresh(&self, seen_version: u64) -> Result<()> {
        let _guard = self.refresh_lock.lock().await;
        if self.version() > seen_version {
            return Ok(());
        }
        let metadata = self.fetch_metadata(Vec::new()).await?;
        self.install(metadata);
        Ok(())
    }

    fn install(&self, metadata: ClusterMetadata) {
        let mut cache = self.metadata.write().unwrap_or_else(PoisonError::into_inner);
        cache.version += 1;
        cache.cluster_id = metadata.cluster_id;
        cache.brokers = metadata
            .brokers
            .into_iter()
            .map(|broker| (broker.node_id, broker.address))
            .collect();
        cache.topics = metadata
            .topics
            .into_iter()
            .map(|topic| (topic.name.clone(), topic))
            .collect();
    }

    fn cached_topic<R>(&self, topic: &str, read: &impl Fn(&TopicMetadata) -> R) -> (u64, Option<R>) {
        let cache = self.metadata.read().unwrap_or_else(PoisonError::into_inner);
        (cache.version, cache.topics.get(topic).map(read))
    }

    /// The topic's metadata, refreshing (for up to `topic_wait_ms`) when the cache lacks it.
    pub(crate) async fn topic(&self, topic: &str) -> Result<TopicMetadata> {
        self.with_topic(topic, TopicMetadata::clone).await
    }

    /// Reads the topic's cached metadata in place (no copy: this runs once per produced
    /// record), refreshing (for up to `topic_wait_ms`) when the cache lacks it.
    async fn with_topic<R>(&self, topic: &str, read: impl Fn(&TopicMetadata) -> R) -> Result<R> {
        let deadline = Instant::now() + Duration::from_millis(self.config.topic_wait_ms);
        let mut backoff = self.backoff();
        loop {
            let (version, cached) = self.cached_topic(topic, &read);
            if let Some(value) = cached {
                return Ok(value);
            }
            if version > 0 && Instant::now() >= deadline {
                return Err(Error::TopicNotFound {
                    topic: topic.to_owned(),
                });
            }
            if version > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            self.refresh(version).await?;
        }
    }

    pub(crate) async fn partition_count(&self, topic: &str) -> Result<u32> {
        let count = self.with_topic(topic, |metadata| metadata.partitions.len()).await?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(Error::Unavailable(format!("topic {topic:?} has no partitions yet")));
        }
        Ok(count)
    }

    /// The address of the partition's leader according to the cache.
    pub(crate) async fn leader_address(&self, topic: &str, partition: u32) -> Result<String> {
        let metadata = self.topic(topic).await?;
        let leader = metadata
            .partitions
            .iter()
            .find(|candidate| candidate.partition == partition)
            .ok_or_else(|| Error::PartitionNotFound {
                topic: topic.to_owned(),
                partition,
            })?
            .leader
            .ok_or_else(|| Error::Unavailable(format!("partition {partition} of {topic:?} has no leader")))?;
        let cache = self.metadata.read().unwrap_or_else(PoisonError::into_inner);
        cache
            .brokers
            .get(&leader)
            .cloned()
            .ok_or_else(|| Error::Unavailable(format!("address of node {leader} is not known yet")))
    }

    /// The address of `node` if the cache says it holds a replica of the partition.
    pub(crate) async fn replica_address(&self, topic: &str, partition: u32, node: u64) -> Option<String> {
        let holds = self
            .with_topic(topic, |metadata| {
                metadata
                    .partitions
                    .iter()
                    .any(|p| p.partition == partition && p.replicas.contains(&node))
            })
            .await
            .ok()?;
        let cache = self.metadata.read().unwrap_or_else(PoisonError::into_inner);
        holds.then(|| cache.brokers.get(&node).cloned()).flatten()
    }

    /// Brings the cache up to date after `error` from a request about a partition, which was
    /// sent with the cache at `seen_version`. A leader hint is applied directly; anything else
    /// that suggests stale metadata triggers a refresh. Refresh failures are left for the
    /// caller's next attempt to meet.
    pub(crate) async fn on_error(&self, topic: &str, partition: u32, error: &Error, seen_version: u64) {
        if let Error::NotLeader {
            leader: Some(leader),
            leader_address,
            ..
        } = error
        {
            if self.apply_leader_hint(topic, partition, *leader, leader_address.as_deref()) {
                return;
            }
        }
        let stale = error.is_retriable()
            || error.is_outcome_unknown()
            || matches!(error, Error::TopicNotFound { .. } | Error::PartitionNotFound { .. });
        if stale {
            if let Err(refresh_error) = self.refresh(seen_version).await {
                tracing::debug!(%refresh_error, "metadata refresh failed");
            }
        }
    }

    /// Records that `leader` leads the partition; false if its address is still unknown.
    fn apply_leader_hint(&self, topic: &str, partition: u32, leader: u64, address: Option<&str>) -> bool {
        let mut cache = self.metadata.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(address) = address {
            cache.brokers.insert(leader, address.to_owned());
        }
        if !cache.brokers.contains_key(&leader) {
            return false;
        }
        let Some(metadata) = cache.topics.get_mut(topic) else {
            return false;
        };
        let Some(entry) = metadata
            .partitions
            .iter_mut()
            .find(|candidate| candidate.partition == partition)
        else {
            return false;
        };
        entry.leader = Some(leader);
        cache.version += 1;
        true
    }

    /// Runs `attempt` against the partition's leader, retrying retriable errors, unknown topics
    /// and (because `attempt` must be a read) errors of unknown outcome, with backoff and
    /// metadata refreshes, until `retry_timeout` has passed.
    pub(crate) async fn with_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        retry_timeout: Duration,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(WeirClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + retry_timeout;
        let mut backoff = self.backoff();
        loop {
            let version = self.version();
            // Errors from the cache (no such topic in metadata) are final; errors from a broker
            // follow the retry rules below.
            let (error, from_broker) = match self.leader_address(topic, partition).await {
                Ok(address) => match attempt(self.weir(&address)?).await {
                    Ok(value) => return Ok(value),
                    Err(error) => (error, true),
                },
                Err(error) => (error, false),
            };
            let delay = backoff.next_delay();
            // A broker that does not know a topic the metadata names (just created, or deleted
            // since) is asked again after a refresh; the cache ends that once metadata agrees.
            let not_found = matches!(error, Error::TopicNotFound { .. } | Error::PartitionNotFound { .. });
            let retry = error.is_retriable() || error.is_outcome_unknown() || (not_found && from_broker);
            if !retry || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(topic, partition, %error, "retrying");
            self.on_error(topic, partition, &error, version).await;
            tokio::time::sleep(delay).await;
        }
    }

    /// The coordinator of `group` according to the cache (refreshed once if it lacks
    /// `__consumer_offsets`); `None` while that topic does not exist yet.
    async fn coordinator_address(&self, group: &str) -> Result<Option<String>> {
        let count = |metadata: &TopicMetadata| metadata.partitions.len();
        let (version, mut partitions) = self.cached_topic(OFFSETS_TOPIC, &count);
        if partitions.is_none() {
            self.refresh(version).await?;
            partitions = self.cached_topic(OFFSETS_TOPIC, &count).1;
        }
        let Some(partitions) = partitions.filter(|count| *count > 0) else {
            return Ok(None);
        };
        let partition = group_partition(group, u32::try_from(partitions).unwrap_or(u32::MAX));
        self.leader_address(OFFSETS_TOPIC, partition).await.map(Some)
    }

    /// The `__consumer_offsets` partition of `group` if the cache knows the topic (0 otherwise:
    /// only used to place leader hints, which need the topic cached anyway).
    fn coordinator_partition(&self, group: &str) -> u32 {
        let count = self
            .cached_topic(OFFSETS_TOPIC, &|metadata| metadata.partitions.len())
            .1
            .unwrap_or(0);
        group_partition(group, u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Sends one request to the coordinator of `group`. `route` carries a leader hint from
    /// one attempt to the next (the hint may name a node metadata does not place yet). On error
    /// the cache is brought up to date for the next attempt; the caller decides whether to
    /// retry ([`group_retriable`]).
    pub(crate) async fn coordinator_attempt<T, F, Fut>(
        &self,
        group: &str,
        route: &mut CoordinatorRoute,
        attempt: F,
    ) -> Result<T>
    where
        F: FnOnce(GroupsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let version = self.version();
        let address = match route.hint.take() {
            Some(address) => Ok(address),
            None => match self.coordinator_address(group).await {
                Ok(Some(address)) => Ok(address),
                Ok(None) => {
                    let addresses = self.addresses();
                    let index = self.next_any_node.fetch_add(1, Ordering::Relaxed) % addresses.len().max(1);
                    addresses
                        .get(index)
                        .cloned()
                        .ok_or_else(|| Error::Unavailable("no broker address to try".into()))
                }
                Err(error) => Err(error),
            },
        };
        let result = match address {
            Ok(address) => attempt(self.groups(&address)?).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            if let Error::NotLeader {
                leader_address: Some(hinted),
                ..
            } = error
            {
                route.hint = Some(hinted.clone());
            }
            self.on_error(OFFSETS_TOPIC, self.coordinator_partition(group), error, version)
                .await;
        }
        result
    }

    /// Runs `attempt` against the coordinator of `group`, retrying what [`group_retriable`]
    /// allows with backoff until `retry_timeout` has passed. `idempotent`: the request may be
    /// repeated after an error of unknown outcome.
    pub(crate) async fn with_coordinator<T, F, Fut>(
        &self,
        group: &str,
        retry_timeout: Duration,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(GroupsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + retry_timeout;
        let mut backoff = self.backoff();
        let mut route = CoordinatorRoute::default();
        loop {
            let error = match self.coordinator_attempt(group, &mut route, &mut attempt).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            if !group_retriable(&error, idempotent) || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(group, %error, "retrying group request");
            // A hint names the coordinator: go there at once.
            if route.hint.is_none() {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Where the next attempt of a group request goes, when an answer said so.
#[derive(Debug, Default)]
pub(crate) struct CoordinatorRoute {
    hint: Option<String>,
}

/// Whether a group request that failed with `error` may be sent again: the retriable errors,
/// the absence of `__consumer_offsets` (the broker creates it on the first group request) and,
/// for `idempotent` requests, errors of unknown outcome.
pub(crate) fn group_retriable(error: &Error, idempotent: bool) -> bool {
    error.is_retriable()
        || (idempotent && error.is_outcome_unknown())
        || matches!(error, Error::TopicNotFound { topic } | Error::PartitionNotFound { topic, .. } if topic == OFFSETS_TOPIC)
}
