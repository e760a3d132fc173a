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
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes_max: 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            delivery_timeout_ms: 30_000,
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

/// Consumer settings.
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
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_wait_ms: 500,
            fetch_bytes_max: 1024 * 1024,
            start: SeekTo::End,
            retry_timeout_ms: 30_000,
            preferred_replica: None,
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
    fn producer_limits_are_checked() {
        assert!(ProducerConfig::default().validate().is_ok());
        assert!(ProducerConfig::default().batch_bytes_max(10).validate().is_err());
        let small_buffer = ProducerConfig::default().buffer_bytes_max(1024);
        assert!(small_buffer.validate().is_err());
    }
}
