//! Records as the application sees them: what a producer sends and a consumer receives.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One record header. Keys are UTF-8; values are optional bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

impl Header {
    pub fn new(key: impl Into<String>, value: Option<Bytes>) -> Self {
        Self { key: key.into(), value }
    }
}

/// A record to send. Build with [`ProducerRecord::new`] and the `with_*` helpers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// An explicit partition; `None` lets the producer choose (key hash, or sticky when there
    /// is no key).
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; `None` stamps the time of `send`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record for `topic` with no key, value or headers.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    pub fn with_value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(key, Some(value.into())));
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Bytes this record adds to a batch.
    pub fn encoded_len(&self) -> usize {
        weir_proto::batch::RECORD_OVERHEAD
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|header| 2 + header.key.len() + 4 + header.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::batch::BatchBuilder;

    #[test]
    fn encoded_len_matches_the_codec() {
        let record = ProducerRecord::new("t")
            .with_key("k")
            .with_value("value")
            .with_header("h", "v");
        let headers = [("h", Some(&b"v"[..]))];
        let expected = BatchBuilder::record_size(Some(b"k"), Some(b"value"), &headers);
        assert_eq!(record.encoded_len(), expected);
        assert_eq!(
            ProducerRecord::new("t").encoded_len(),
            BatchBuilder::record_size(None, None, &[])
        );
    }
}
