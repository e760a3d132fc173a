//! The client's one error type, and the one place where gRPC statuses become typed errors.
//!
//! The broker's conventions (see the comment at the top of `proto/weir.proto`) map to variants.
//! A request about a consumer group says so in its [`Context`] (`Context::group`), which
//! changes what NOT_FOUND and FAILED_PRECONDITION mean:
//!
//! | gRPC code                         | variant                                   |
//! |-----------------------------------|-------------------------------------------|
//! | NOT_FOUND                         | `TopicNotFound` / `PartitionNotFound`     |
//! | NOT_FOUND (group request)         | `GroupNotFound`                           |
//! | ALREADY_EXISTS                    | `AlreadyExists`                           |
//! | INVALID_ARGUMENT                  | `InvalidArgument`                         |
//! | OUT_OF_RANGE (a read)             | `OffsetOutOfRange` (range from metadata)  |
//! | OUT_OF_RANGE (no offset: too big) | `ResourceExhausted`, not retriable        |
//! | RESOURCE_EXHAUSTED                | `ResourceExhausted` (retriable if metadata |
//! |                                   | `weir-retriable` is `true`: a full queue) |
//! | FAILED_PRECONDITION               | `NotLeader` (hint from metadata)          |
//! | FAILED_PRECONDITION, metadata     | `Fenced`: the member must give up its     |
//! | `weir-fenced: true`               | partitions and join again                 |
//! | FAILED_PRECONDITION (group        | `NotLeader` with `weir-leader` (not the   |
//! | request)                          | coordinator), else `GroupNotEmpty`        |
//! | UNAVAILABLE (from the broker)     | `Unavailable`: retriable                  |
//! | ABORTED                           | `Timeout`: outcome unknown                |
//! | UNAVAILABLE (could not connect)   | `Unavailable`: the request was never sent |
//! | DEADLINE_EXCEEDED, client timeout | `Timeout`: outcome unknown                |
//! | connection lost mid-request       | `Transport`: outcome unknown              |
//! | DATA_LOSS                         | `Corrupt`                                 |
//! | anything else                     | `Internal`                                |

use std::error::Error as StdError;

use tonic::{Code, Status};
use weir_proto::batch::BatchError;

/// Metadata key marking a RESOURCE_EXHAUSTED status as retriable (a full queue).
pub const RETRIABLE_KEY: &str = "weir-retriable";
/// Metadata key of the leader's node id on a FAILED_PRECONDITION (not leader) status.
pub const LEADER_KEY: &str = "weir-leader";
/// Metadata key of the leader's address on a FAILED_PRECONDITION (not leader) status.
pub const LEADER_ADDRESS_KEY: &str = "weir-leader-address";
/// Metadata key of the log start offset on an OUT_OF_RANGE status.
pub const LOG_START_OFFSET_KEY: &str = "weir-log-start-offset";
/// Metadata key of the high watermark on an OUT_OF_RANGE status.
pub const HIGH_WATERMARK_KEY: &str = "weir-high-watermark";
/// Metadata key marking a FAILED_PRECONDITION status of a group request as "this member is
/// fenced" (`true`): unknown to the group, or its epoch is stale.
pub const FENCED_KEY: &str = "weir-fenced";

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("topic {topic:?} not found")]
    TopicNotFound { topic: String },
    #[error("partition {partition} of topic {topic:?} not found")]
    PartitionNotFound { topic: String, partition: u32 },
    /// The node asked does not lead the partition. Retriable once metadata is refreshed.
    #[error("not the partition leader (leader hint: {}): {message}", leader_hint(*.leader, .leader_address.as_deref()))]
    NotLeader {
        leader: Option<u64>,
        leader_address: Option<String>,
        message: String,
    },
    /// A fetch asked for an offset outside `[start, end]` (log start offset, high watermark).
    #[error("offset {} out of range [{}, {}]: {message}", opt(*.requested), opt(*.start), opt(*.end))]
    OffsetOutOfRange {
        requested: Option<u64>,
        start: Option<u64>,
        end: Option<u64>,
        message: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A limit was hit. `retriable` is true only for a full queue on the broker, which drains
    /// by itself; a full disk or an oversized batch does not go away by retrying.
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String, retriable: bool },
    /// The broker could not be reached, had no leader yet, or is shutting down. The request was
    /// not carried out; retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer in time. For a write the outcome is unknown: it may or may not have been applied.
    #[error("timed out (outcome unknown): {0}")]
    Timeout(String),
    /// The connection failed while the request was under way. For a write the outcome is unknown.
    #[error("transport error (outcome unknown): {0}")]
    Transport(String),
    /// Stored or received data failed its CRC or framing checks.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The consumer group does not exist (it never committed an offset, or was deleted).
    #[error("consumer group {group:?} not found")]
    GroupNotFound { group: String },
    /// The coordinator does not know this group member, or its epoch is stale (evicted after
    /// its session timed out, left, or replaced by a newer incarnation of the same static
    /// member). The member has lost its partitions and must join again; a consumer does that by
    /// itself.
    #[error("fenced from the consumer group: {0}")]
    Fenced(String),
    /// An operation that needs a group without members (reset offsets, delete, a commit from
    /// outside group management) found members.
    #[error("consumer group not empty: {0}")]
    GroupNotEmpty(String),
    /// The client was configured wrongly (for example an unparsable bootstrap address).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The producer was closed before the record could be sent.
    #[error("producer closed")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn leader_hint(leader: Option<u64>, address: Option<&str>) -> String {
    match (leader, address) {
        (Some(id), Some(address)) => format!("node {id} at {address}"),
        (Some(id), None) => format!("node {id}"),
        (None, Some(address)) => address.to_owned(),
        (None, None) => "none".to_owned(),
    }
}

impl Error {
    /// True when the request was definitely not carried out and the same request may succeed
    /// later (after a metadata refresh and a backoff): not leader, unavailable, a full queue.
    /// Writes retry only these. `Timeout` and `Transport` are not retriable for writes because
    /// the first attempt may have been applied; see [`Error::is_outcome_unknown`].
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::NotLeader { .. } | Error::Unavailable(_) => true,
            Error::ResourceExhausted { retriable, .. } => *retriable,
            _ => false,
        }
    }

    /// True when a request's outcome is unknown (it may have been applied). Reads may retry
    /// these; a write reports them to its caller.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::Timeout(_) | Error::Transport(_))
    }

    /// Converts a gRPC status into a typed error. `context` names what the request was about,
    /// so that NOT_FOUND and OUT_OF_RANGE carry the topic, partition and offset.
    pub fn from_status(status: Status, context: &Context<'_>) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => not_found(message, context),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            // Without an offset the request was not a read: the transport refused a request
            // over the broker's request_bytes_max (its message names the limit).
            Code::OutOfRange if context.offset.is_none() => Error::ResourceExhausted {
                message,
                retriable: false,
            },
            Code::OutOfRange => Error::OffsetOutOfRange {
                requested: context.offset,
                start: metadata_u64(&status, LOG_START_OFFSET_KEY),
                end: metadata_u64(&status, HIGH_WATERMARK_KEY),
                message,
            },
            Code::ResourceExhausted => Error::ResourceExhausted {
                retriable: metadata_str(&status, RETRIABLE_KEY).as_deref() == Some("true"),
                message,
            },
            Code::FailedPrecondition => failed_precondition(&status, message, context),
            Code::DeadlineExceeded | Code::Aborted => Error::Timeout(message),
            Code::DataLoss => Error::Corrupt(message),
            Code::Unavailable | Code::Cancelled | Code::Unknown => transport(status, message),
            _ => Error::Internal(format!("{:?}: {message}", status.code())),
        }
    }
}

/// What a request was about, for [`Error::from_status`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    pub topic: Option<&'a str>,
    pub partition: Option<u32>,
    pub offset: Option<u64>,
    /// The consumer group of a `Groups` request.
    pub group: Option<&'a str>,
}

impl<'a> Context<'a> {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn topic(topic: &'a str) -> Self {
        Self {
            topic: Some(topic),
            ..Self::default()
        }
    }

    pub fn partition(topic: &'a str, partition: u32) -> Self {
        Self {
            topic: Some(topic),
            partition: Some(partition),
            ..Self::default()
        }
    }

    pub fn offset(topic: &'a str, partition: u32, offset: u64) -> Self {
        Self {
            topic: Some(topic),
            partition: Some(partition),
            offset: Some(offset),
            ..Self::default()
        }
    }

    /// A request of the `Groups` service about `group`.
    pub fn group(group: &'a str) -> Self {
        Self {
            group: Some(group),
            ..Self::default()
        }
    }
}

fn not_found(message: String, context: &Context<'_>) -> Error {
    if let Some(group) = context.group {
        return Error::GroupNotFound {
            group: group.to_owned(),
        };
    }
    match (context.topic, context.partition) {
        (Some(topic), Some(partition)) if message.to_ascii_lowercase().contains("partition") => {
            Error::PartitionNotFound {
                topic: topic.to_owned(),
                partition,
            }
        }
        (Some(topic), _) => Error::TopicNotFound {
            topic: topic.to_owned(),
        },
        (None, _) => Error::TopicNotFound { topic: message },
    }
}

/// FAILED_PRECONDITION: not the leader (or coordinator), unless the status says the member is
/// fenced or, for a group request without a leader hint, that the group has members.
fn failed_precondition(status: &Status, message: String, context: &Context<'_>) -> Error {
    if metadata_str(status, FENCED_KEY).as_deref() == Some("true") {
        return Error::Fenced(message);
    }
    let leader = metadata_u64(status, LEADER_KEY);
    let leader_address = metadata_str(status, LEADER_ADDRESS_KEY);
    if context.group.is_some() && leader.is_none() && leader_address.is_none() {
        return Error::GroupNotEmpty(message);
    }
    Error::NotLeader {
        leader: leader.filter(|id| *id != 0),
        leader_address,
        message,
    }
}

/// Sorts the statuses that the client's transport produces. A status that tonic built from a
/// local error carries that error as its source; one sent by the broker has none.
fn transport(status: Status, mut message: String) -> Error {
    let mut source = status.source();
    let mut from_client = false;
    let mut kind = None;
    while let Some(error) = source {
        from_client = true;
        if error.is::<tonic::ConnectError>() {
            // The connection was never established, so the request was never sent.
            kind.get_or_insert(Error::Unavailable as fn(String) -> Error);
        }
        if error.is::<tonic::TimeoutExpired>() {
            kind.get_or_insert(Error::Timeout as fn(String) -> Error);
        }
        // The status message is terse ("tcp connect error"); the cause is further down.
        let text = error.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = error.source();
    }
    if let Some(kind) = kind {
        return kind(message);
    }
    match (status.code(), from_client) {
        (Code::Unavailable, false) => Error::Unavailable(message),
        (Code::Cancelled, false) => Error::Timeout(message),
        _ => Error::Transport(message),
    }
}

fn metadata_str(status: &Status, key: &str) -> Option<String> {
    let value = status.metadata().get(key)?.to_str().ok()?;
    (!value.is_empty()).then(|| value.to_owned())
}

fn metadata_u64(status: &Status, key: &str) -> Option<u64> {
    metadata_str(status, key)?.parse().ok()
}

impl From<BatchError> for Error {
    fn from(error: BatchError) -> Self {
        Error::Corrupt(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_metadata(code: Code, message: &str, pairs: &[(&'static str, &str)]) -> Status {
        let mut status = Status::new(code, message);
        for (key, value) in pairs {
            status
                .metadata_mut()
                .insert(*key, value.parse().expect("ascii metadata"));
        }
        status
    }

    #[test]
    fn not_leader_carries_the_hint() {
        let status = with_metadata(
            Code::FailedPrecondition,
            "not leader",
            &[(LEADER_KEY, "3"), (LEADER_ADDRESS_KEY, "10.0.0.3:9292")],
        );
        let error = Error::from_status(status, &Context::partition("t", 0));
        assert_eq!(
            error,
            Error::NotLeader {
                leader: Some(3),
                leader_address: Some("10.0.0.3:9292".into()),
                message: "not leader".into()
            }
        );
        assert!(error.is_retriable());
        let bare = Error::from_status(Status::failed_precondition("x"), &Context::none());
        assert!(matches!(
            bare,
            Error::NotLeader {
                leader: None,
                leader_address: None,
                ..
            }
        ));
    }

    #[test]
    fn oversized_request_is_resource_exhausted() {
        let status =
            Status::out_of_range("Error, decoded message length too large: found 2 bytes, the limit is: 1 bytes");
        let error = Error::from_status(status, &Context::partition("t", 0));
        assert!(
            matches!(error, Error::ResourceExhausted { retriable: false, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn out_of_range_carries_the_valid_range() {
        let status = with_metadata(
            Code::OutOfRange,
            "offset 99 beyond high watermark 10",
            &[(LOG_START_OFFSET_KEY, "2"), (HIGH_WATERMARK_KEY, "10")],
        );
        let error = Error::from_status(status, &Context::offset("t", 1, 99));
        assert_eq!(
            error,
            Error::OffsetOutOfRange {
                requested: Some(99),
                start: Some(2),
                end: Some(10),
                message: "offset 99 beyond high watermark 10".into()
            }
        );
        assert!(!error.is_retriable());
    }

    #[test]
    fn not_found_names_topic_or_partition() {
        let topic = Error::from_status(Status::not_found("no such topic"), &Context::partition("t", 4));
        assert_eq!(topic, Error::TopicNotFound { topic: "t".into() });
        let partition = Error::from_status(
            Status::not_found("partition 4 does not exist"),
            &Context::partition("t", 4),
        );
        assert_eq!(
            partition,
            Error::PartitionNotFound {
                topic: "t".into(),
                partition: 4
            }
        );
    }

    #[test]
    fn group_requests_map_not_found_and_preconditions() {
        let group = Context::group("g");
        let missing = Error::from_status(Status::not_found("unknown group 'g'"), &group);
        assert_eq!(missing, Error::GroupNotFound { group: "g".into() });
        assert!(!missing.is_retriable());

        let fenced = with_metadata(
            Code::FailedPrecondition,
            "member 'm' sent epoch 3; rejoin",
            &[(FENCED_KEY, "true")],
        );
        let fenced = Error::from_status(fenced, &group);
        assert_eq!(fenced, Error::Fenced("member 'm' sent epoch 3; rejoin".into()));
        assert!(!fenced.is_retriable() && !fenced.is_outcome_unknown());

        let moved = with_metadata(
            Code::FailedPrecondition,
            "not the coordinator",
            &[(LEADER_KEY, "2"), (LEADER_ADDRESS_KEY, "10.0.0.2:9292")],
        );
        let moved = Error::from_status(moved, &group);
        assert!(
            matches!(&moved, Error::NotLeader { leader: Some(2), leader_address: Some(address), .. } if address == "10.0.0.2:9292"),
            "{moved:?}"
        );
        assert!(moved.is_retriable());

        let busy = Error::from_status(Status::failed_precondition("the group has 2 member(s)"), &group);
        assert_eq!(busy, Error::GroupNotEmpty("the group has 2 member(s)".into()));
        assert!(!busy.is_retriable());

        // Outside a group request the same status still means "not the leader".
        let plain = Error::from_status(
            Status::failed_precondition("not the leader"),
            &Context::partition("t", 0),
        );
        assert!(matches!(plain, Error::NotLeader { leader: None, .. }), "{plain:?}");
        // A fenced flag wins even outside a group context (a commit's answer).
        let fenced = with_metadata(Code::FailedPrecondition, "stale", &[(FENCED_KEY, "true")]);
        assert!(matches!(Error::from_status(fenced, &Context::none()), Error::Fenced(_)));
    }

    #[test]
    fn retriability_follows_the_wire_contract() {
        let map = |status| Error::from_status(status, &Context::none());
        assert!(map(Status::unavailable("no leader yet")).is_retriable());
        let mut full = Status::resource_exhausted("mailbox is full; retry later");
        full.metadata_mut().insert(RETRIABLE_KEY, "true".parse().unwrap());
        assert!(map(full).is_retriable());
        let lost = map(Status::aborted("leadership changed: it may or may not be in the log"));
        assert!(lost.is_outcome_unknown() && !lost.is_retriable(), "{lost:?}");
        assert!(!map(Status::resource_exhausted("disk full")).is_retriable());
        let timeout = map(Status::deadline_exceeded("not committed in time"));
        assert!(matches!(timeout, Error::Timeout(_)));
        assert!(!timeout.is_retriable() && timeout.is_outcome_unknown());
        assert!(matches!(map(Status::data_loss("crc")), Error::Corrupt(_)));
        assert!(matches!(map(Status::already_exists("t")), Error::AlreadyExists(_)));
        assert!(matches!(
            map(Status::invalid_argument("bad")),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(map(Status::internal("boom")), Error::Internal(_)));
    }

    #[test]
    fn client_side_statuses_are_sorted_by_source() {
        let map = |status| Error::from_status(status, &Context::none());
        let connect = Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))));
        assert!(matches!(map(connect), Error::Unavailable(_)));
        let timeout = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(matches!(map(timeout), Error::Timeout(_)));
        let reset = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let reset = map(reset);
        assert!(matches!(reset, Error::Transport(_)), "{reset:?}");
        assert!(reset.is_outcome_unknown() && !reset.is_retriable());
    }
}
