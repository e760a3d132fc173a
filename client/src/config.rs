//! Client, producer and consumer settings. Every limit is named with its unit last.

use std::time::Duration;

use crate::error::{Error, Result};

/// The default bootstrap address: a broker on this machine.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9292";

/// How to reach the cluster. Built with [`ClientConfig::builder`] or [`ClientConfig::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `host:port` of one or more brokers. Any one of them answers the first metadata request;
    /// after that the client talks to the brokers that metadata names.
    pub bootstrap: Vec<String>,
    /// Upper bound on one request, from sending it to its answer.
    pub request_timeout_ms: u64,
    /// Upper bound on establishing a connection to a broker.
    pub connect_timeout_ms: u64,
    /// How long a request for a topic missing from metadata keeps refreshing metadata before it
    /// fails with `TopicNotFound` (a topic just created may take a moment to reach every node).
    pub topic_wait_ms: u64,
    /// Largest response the client accepts (a fetch answers at least one whole batch, even when
    /// the batch is larger than the fetch's byte limit).
    pub response_bytes_max: usize,
    /// First pause between retries of a retriable error; doubles up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    /// Longest pause between retries: short enough that a client finds a new leader soon
    /// after its election (a failover takes 1-1.5 s with the broker's default timeouts).
    pub retry_backoff_max_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            bootstrap: vec![DEFAULT_BOOTSTRAP.to_owned()],
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            topic_wait_ms: 2_000,
            response_bytes_max: 64 * 1024 * 1024,
            retry_backoff_ms: 50,
            retry_backoff_max_ms: 250,
        }
    }
}

impl ClientConfig {
    /// A configuration with default settings for a comma-separated list of `host:port`.
    pub fn new(bootstrap: &str) -> Result<Self> {
        Self::builder().bootstrap(bootstrap).build()
    }

    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder {
            config: ClientConfig::default(),
            bootstrap: None,
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks the settings; called by the builder and by every client constructor.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap.is_empty() {
            return Err(Error::Config("no bootstrap address".into()));
        }
        for address in &self.bootstrap {
            validate_address(address)?;
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if self.retry_backoff_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_ms {
            return Err(Error::Config(
                "retry_backoff_ms must be positive and at most retry_backoff_max_ms".into(),
            ));
        }
        Ok(())
    }
}

/// Splits `"host:port,host:port"` into addresses, checking each.
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>> {
    let addresses: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect();
    if addresses.is_empty() {
        return Err(Error::Config(format!("no address in bootstrap list {list:?}")));
    }
    for address in &addresses {
        validate_address(address)?;
    }
    Ok(addresses)
}

fn validate_address(address: &str) -> Result<()> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| Error::Config(format!("address {address:?} is not host:port")))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::Config(format!("address {address:?} is not host:port")));
    }
    Ok(())
}

/// Builds a [`ClientConfig`].
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    config: ClientConfig,
    /// Kept unparsed until `build`, so that a bad list surfaces as one error there.
    bootstrap: Option<String>,
}

impl ClientConfigBuilder {
    /// Comma-separated `host:port` list.
    pub fn bootstrap(mut self, list: &str) -> Self {
        self.bootstrap = Some(list.to_owned());
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout_ms = duration_ms(timeout);
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout_ms = duration_ms(timeout);
        self
    }

    pub fn topic_wait(mut self, wait: Duration) -> Self {
        self.config.topic_wait_ms = duration_ms(wait);
        self
    }

    pub fn response_bytes_max(mut self, bytes: usize) -> Self {
        self.config.response_bytes_max = bytes;
        self
    }

    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.config.retry_backoff_ms = duration_ms(first);
        self.config.retry_backoff_max_ms = duration_ms(max);
        self
    }

    pub fn build(mut self) -> Result<ClientConfig> {
        if let Some(list) = &self.bootstrap {
            self.config.bootstrap = parse_bootstrap(list)?;
        }
        self.config.validate()?;
        Ok(self.config)
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// When the broker acknowledges a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Once the batch is committed: flushed on a majority of the replicas.
    #[default]
    All,
    /// Once the leader has flushed the batch; lost if the leader fails before replicating it.
    Leader,
}

/// Producer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// How long a partition's batch waits for more records before it is sent.
    pub linger_ms: u64,
    /// A batch is sent once it reaches this size; a record larger than this is rejected.
    pub batch_bytes_max: usize,
    /// Bytes of records accepted but not yet acknowledged; `send` waits while it is full.
    pub buffer_bytes_max: usize,
    /// How long the producer keeps retrying a batch on retriable errors, counted from when the
    /// batch was started, before it fails the batch's records.
    pub delivery_timeout_ms: u64,
    /// Idempotent produce (default on): batches carry a producer id and per-partition sequence
    /// numbers, so the producer can resend a batch whose outcome is unknown (a timeout, a cut
    /// connection, a leader change) and the broker stores it once, answering the retry with the
    /// first copy's offsets. Off: such batches fail with the unknown-outcome error instead.
    pub idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes_max: 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            delivery_timeout_ms: 30_000,
            idempotence: true,
        }
    }
}

impl ProducerConfig {
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    pub fn linger_ms(mut self, linger_ms: u64) -> Self {
        self.linger_ms = linger_ms;
        self
    }

    pub fn batch_bytes_max(mut self, bytes: usize) -> Self {
        self.batch_bytes_max = bytes;
        self
    }

    pub fn buffer_bytes_max(mut self, bytes: usize) -> Self {
        self.buffer_bytes_max = bytes;
        self
    }

    pub fn delivery_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.delivery_timeout_ms = timeout_ms;
        self
    }

    /// See [`ProducerConfig::idempotence`].
    pub fn idempotence(mut self, idempotence: bool) -> Self {
        self.idempotence = idempotence;
        self
    }

    pub fn validate(&self) -> Result<()> {
        let header = weir_proto::batch::HEADER_LEN;
        if self.batch_bytes_max <= header || self.batch_bytes_max > u32::MAX as usize {
            return Err(Error::Config(format!("batch_bytes_max must be in ({header}, 4 GiB]")));
        }
        if self.buffer_bytes_max < self.batch_bytes_max {
            return Err(Error::Config(
                "buffer_bytes_max must be at least batch_bytes_max".into(),
            ));
        }
        // Tokio semaphores hold at most usize::MAX >> 3 permits.
        if self.buffer_bytes_max > usize::MAX >> 4 {
            return Err(Error::Config("buffer_bytes_max is too large".into()));
        }
        if self.delivery_timeout_ms == 0 {
            return Err(Error::Config("delivery_timeout_ms must be positive".into()));
        }
        Ok(())
    }
}

/// Where a consumer starts reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The log start offset (the oldest record still retained).
    Beginning,
    /// The high watermark: only records produced from now on.
    End,
    /// An explicit offset.
    Offset(u64),
    /// The first record whose timestamp is at or after this many ms since the Unix epoch.
    Timestamp(i64),
}

/// How a consumer group spreads its partitions over its members. The coordinator computes the
/// assignment; the group uses the strategy of its first member, and a member asking for
/// another is refused while the group has members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum AssignmentStrategy {
    /// Keeps partitions where they are and moves as few as balance needs.
    #[default]
    Sticky,
    /// Per topic, contiguous ranges of partitions over the members in order.
    Range,
    /// All subscribed partitions dealt one by one over the members in order.
    RoundRobin,
}

impl AssignmentStrategy {
    /// The name the CLI and the broker's descriptions use: `sticky`, `range`, `round-robin`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::Sticky => "sticky",
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "round-robin",
        }
    }
}

impl std::fmt::Display for AssignmentStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AssignmentStrategy> for weir_proto::v1::AssignmentStrategy {
    fn from(strategy: AssignmentStrategy) -> Self {
        match strategy {
            AssignmentStrategy::Sticky => Self::Sticky,
            AssignmentStrategy::Range => Self::Range,
            AssignmentStrategy::RoundRobin => Self::RoundRobin,
        }
    }
}

impl From<weir_proto::v1::AssignmentStrategy> for AssignmentStrategy {
    fn from(strategy: weir_proto::v1::AssignmentStrategy) -> Self {
        match strategy {
            weir_proto::v1::AssignmentStrategy::Sticky => Self::Sticky,
            weir_proto::v1::AssignmentStrategy::Range => Self::Range,
            weir_proto::v1::AssignmentStrategy::RoundRobin => Self::RoundRobin,
        }
    }
}

/// The session timeouts a coordinator accepts (0 asks for the broker's default).
pub const SESSION_TIMEOUT_MS_MIN: u32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
/// The longest group id the broker accepts, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 249;

/// Consumer settings. The `group_*` settings and those after them matter only to a consumer
/// with a `group_id`; see [`crate::consumer`] for how group membership works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// How long one fetch waits on the broker for new records (long poll).
    pub max_wait_ms: u32,
    /// Upper bound on the bytes of batches one fetch returns (at least one batch is returned).
    pub fetch_bytes_max: u32,
    /// Where a newly assigned partition starts, until `seek` says otherwise (like Kafka's
    /// `auto.offset.reset=latest`, the default is the end).
    pub start: SeekTo,
    /// How long a fetch keeps retrying retriable errors (no leader, leader moved, broker down)
    /// before `poll` reports the error.
    pub retry_timeout_ms: u64,
    /// Read from this node when it holds a replica of the partition, even as a follower ("read
    /// from the nearest replica": the node on the consumer's host or zone). A follower serves
    /// committed records only, possibly a little behind the leader; when it cannot serve, the
    /// fetch goes to the leader. `None`: always the leader.
    pub preferred_replica: Option<u64>,
    /// The consumer group: needed by `subscribe` and by commits. Without it the consumer reads
    /// what it is assigned by hand and commits nothing.
    pub group_id: Option<String>,
    /// Static membership: a stable id for this member that survives restarts. A member that
    /// rejoins with it within the session timeout gets its partitions back without a rebalance
    /// (its previous incarnation is fenced), and `close` leaves "for a restart", keeping them.
    pub group_instance_id: Option<String>,
    /// Asked for when joining; see [`AssignmentStrategy`].
    pub assignment_strategy: AssignmentStrategy,
    /// The coordinator evicts a member it has not heard from for this long (its partitions go
    /// to others). A member that could not heartbeat for this long gives its partitions up
    /// itself. 0 = the broker's default; otherwise 1 s to 5 min.
    pub session_timeout_ms: u32,
    /// Longest time between two calls of `poll` (or `stream` items) before the member leaves
    /// the group so that its partitions go to a member that reads them; the next `poll` joins
    /// again. Also how long the member may take to give up revoked partitions (the coordinator's
    /// rebalance timeout).
    pub poll_timeout_ms: u32,
    /// How long the coordinator may hold a heartbeat when nothing changes for the member (long
    /// poll). The coordinator answers at once when the assignment changes, so this bounds only
    /// how late the member notices a lost coordinator; less than `session_timeout_ms`.
    pub heartbeat_max_wait_ms: u32,
    /// Commit the consumed positions of owned partitions every `auto_commit_interval_ms` (in
    /// `poll`), before partitions are revoked, and on `close`. The consumed position of a
    /// partition is the offset after the last record `poll` or `stream` returned.
    pub auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    /// Shown in group descriptions, to tell members apart.
    pub client_id: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_wait_ms: 500,
            fetch_bytes_max: 1024 * 1024,
            start: SeekTo::End,
            retry_timeout_ms: 30_000,
            preferred_replica: None,
            group_id: None,
            group_instance_id: None,
            assignment_strategy: AssignmentStrategy::Sticky,
            session_timeout_ms: 10_000,
            poll_timeout_ms: 300_000,
            heartbeat_max_wait_ms: 1_000,
            auto_commit: true,
            auto_commit_interval_ms: 5_000,
            client_id: "weir-client".to_owned(),
        }
    }
}

impl ConsumerConfig {
    pub fn max_wait_ms(mut self, max_wait_ms: u32) -> Self {
        self.max_wait_ms = max_wait_ms;
        self
    }

    pub fn fetch_bytes_max(mut self, bytes: u32) -> Self {
        self.fetch_bytes_max = bytes;
        self
    }

    pub fn start(mut self, start: SeekTo) -> Self {
        self.start = start;
        self
    }

    pub fn retry_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.retry_timeout_ms = timeout_ms;
        self
    }

    /// See [`ConsumerConfig::preferred_replica`].
    pub fn read_from_replica(mut self, node_id: u64) -> Self {
        self.preferred_replica = Some(node_id);
        self
    }

    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// See [`ConsumerConfig::group_instance_id`].
    pub fn group_instance_id(mut self, instance: impl Into<String>) -> Self {
        self.group_instance_id = Some(instance.into());
        self
    }

    pub fn assignment_strategy(mut self, strategy: AssignmentStrategy) -> Self {
        self.assignment_strategy = strategy;
        self
    }

    pub fn session_timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.session_timeout_ms = timeout_ms;
        self
    }

    pub fn poll_timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.poll_timeout_ms = timeout_ms;
        self
    }

    pub fn heartbeat_max_wait_ms(mut self, wait_ms: u32) -> Self {
        self.heartbeat_max_wait_ms = wait_ms;
        self
    }

    pub fn auto_commit(mut self, enabled: bool) -> Self {
        self.auto_commit = enabled;
        self
    }

    pub fn auto_commit_interval_ms(mut self, interval_ms: u64) -> Self {
        self.auto_commit_interval_ms = interval_ms;
        self
    }

    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Checks the settings; `Consumer::new`, `subscribe` and commits call it.
    pub fn validate(&self) -> Result<()> {
        if self.fetch_bytes_max == 0 {
            return Err(Error::Config("fetch_bytes_max must be positive".into()));
        }
        if let Some(group) = &self.group_id {
            validate_name("group_id", group)?;
        }
        if let Some(instance) = &self.group_instance_id {
            if self.group_id.is_none() {
                return Err(Error::Config("group_instance_id needs a group_id".into()));
            }
            validate_name("group_instance_id", instance)?;
        }
        let session = self.session_timeout_ms;
        if session != 0 && !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&session) {
            return Err(Error::Config(format!(
                "session_timeout_ms must be 0 (broker default) or {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}, \
                 not {session}"
            )));
        }
        if self.poll_timeout_ms == 0 {
            return Err(Error::Config("poll_timeout_ms must be positive".into()));
        }
        if self.heartbeat_max_wait_ms >= self.effective_session_timeout_ms() {
            return Err(Error::Config(format!(
                "heartbeat_max_wait_ms ({}) must be less than the session timeout ({} ms)",
                self.heartbeat_max_wait_ms,
                self.effective_session_timeout_ms()
            )));
        }
        if self.auto_commit && self.auto_commit_interval_ms == 0 {
            return Err(Error::Config("auto_commit_interval_ms must be positive".into()));
        }
        Ok(())
    }

    /// The session timeout in effect: the configured one, or the broker's default (10 s).
    pub(crate) fn effective_session_timeout_ms(&self) -> u32 {
        if self.session_timeout_ms == 0 {
            10_000
        } else {
            self.session_timeout_ms
        }
    }
}

/// Group and instance ids: what the broker accepts (non-empty, at most
/// [`GROUP_ID_BYTES_MAX`] bytes, no control characters).
fn validate_name(setting: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Config(format!("{setting} is empty")));
    }
    if name.len() > GROUP_ID_BYTES_MAX {
        return Err(Error::Config(format!(
            "{setting} is {} bytes long; the limit is {GROUP_ID_BYTES_MAX}",
            name.len()
        )));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(Error::Config(format!(
            "{setting} {name:?} contains the control character {bad:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_parse() {
        assert_eq!(
            parse_bootstrap("a:1, b:2,").unwrap(),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        assert!(parse_bootstrap("").is_err());
        assert!(parse_bootstrap("nohost").is_err());
        assert!(parse_bootstrap("host:notaport").is_err());
        assert!(parse_bootstrap(":9292").is_err());
        let config = ClientConfig::new("127.0.0.1:1,127.0.0.2:2").unwrap();
        assert_eq!(config.bootstrap.len(), 2);
    }

    #[test]
    fn consumer_group_settings_are_checked() {
        let config = ConsumerConfig::default();
        assert!(config.validate().is_ok(), "defaults are valid without a group");
        assert!(config.clone().group_id("g").validate().is_ok());
        let error = |config: ConsumerConfig| match config.validate() {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert!(error(config.clone().group_id("")).contains("group_id is empty"));
        assert!(error(config.clone().group_id("a\nb")).contains("control character"));
        assert!(error(config.clone().group_id("x".repeat(250))).contains("limit is 249"));
        assert!(error(config.clone().group_instance_id("i")).contains("needs a group_id"));
        assert!(config.clone().group_id("g").group_instance_id("i").validate().is_ok());
        let message = error(config.clone().group_id("g").session_timeout_ms(500));
        assert!(message.contains("session_timeout_ms"), "{message}");
        assert!(
            config.clone().session_timeout_ms(0).validate().is_ok(),
            "0 = broker default"
        );
        assert!(error(config.clone().session_timeout_ms(301_000)).contains("session_timeout_ms"));
        assert!(error(config.clone().poll_timeout_ms(0)).contains("poll_timeout_ms"));
        let message = error(config.clone().session_timeout_ms(2_000).heartbeat_max_wait_ms(2_000));
        assert!(message.contains("heartbeat_max_wait_ms"), "{message}");
        assert!(error(config.clone().auto_commit_interval_ms(0)).contains("auto_commit_interval_ms"));
        assert!(config
            .clone()
            .auto_commit(false)
            .auto_commit_interval_ms(0)
            .validate()
            .is_ok());
        assert!(error(config.fetch_bytes_max(0)).contains("fetch_bytes_max"));
    }

    #[test]
    fn strategies_convert_to_the_wire_and_back() {
        for strategy in [
            AssignmentStrategy::Sticky,
            AssignmentStrategy::Range,
            AssignmentStrategy::RoundRobin,
        ] {
            let wire: weir_proto::v1::AssignmentStrategy = strategy.into();
            assert_eq!(AssignmentStrategy::from(wire), strategy);
        }
        assert_eq!(AssignmentStrategy::default(), AssignmentStrategy::Sticky);
        assert_eq!(AssignmentStrategy::RoundRobin.to_string(), "round-robin");
    }

    #[test]
    fn producer_limits_are_checked() {
        assert!(ProducerConfig::default().validate().is_ok());
        assert!(ProducerConfig::default().batch_bytes_max(10).validate().is_err());
        let small_buffer = ProducerConfig::default().buffer_bytes_max(1024);
        assert!(small_buffer.validate().is_err());
    }
}
