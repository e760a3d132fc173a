//! Domain errors to gRPC statuses, in one place (see the error conventions in weir.proto).

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::cluster::{ClusterError, CommandError};
use crate::group::GroupError;
use crate::log::LogError;
use crate::raft::ProposeError;
use crate::types::{NodeId, Offset};

/// Where a client should go instead: the leader's id and address when known.
pub fn not_leader(leader: Option<NodeId>, address: Option<&str>) -> Status {
    let message = match (leader, address) {
        (Some(id), Some(addr)) => format!("not the leader; the leader is node {id} at {addr}"),
        (Some(id), None) => format!("not the leader; the leader is node {id}"),
        _ => "not the leader, and no leader is known yet".to_string(),
    };
    let mut status = Status::failed_precondition(message);
    if let Some(id) = leader {
        if let Ok(value) = MetadataValue::try_from(id.0.to_string()) {
            status.metadata_mut().insert("weir-leader", value);
        }
    }
    if let Some(address) = address.and_then(|a| MetadataValue::try_from(a).ok()) {
        status.metadata_mut().insert("weir-leader-address", address);
    }
    status
}

pub fn out_of_range(requested: u64, start: Offset, high_watermark: Offset) -> Status {
    let mut status = Status::out_of_range(format!(
        "offset {requested} is out of range: valid offsets are {start}..={high_watermark} \
         (log start {start}, high watermark {high_watermark})"
    ));
    for (key, value) in [
        ("weir-log-start-offset", start),
        ("weir-high-watermark", high_watermark),
    ] {
        if let Ok(value) = MetadataValue::try_from(value.0.to_string()) {
            status.metadata_mut().insert(key, value);
        }
    }
    status
}

pub fn from_propose(error: ProposeError, leader_address: impl Fn(NodeId) -> Option<String>) -> Status {
    match error {
        // No leader known (an election is running): retriable, there is nowhere to redirect to.
        ProposeError::NotLeader { leader: None } => Status::unavailable("no leader yet; retry shortly"),
        ProposeError::NotLeader { leader } => not_leader(leader, leader.and_then(&leader_address).as_deref()),
        ProposeError::LeadershipLost { .. } => Status::aborted(error.to_string()),
        ProposeError::DiskFull(message) => Status::resource_exhausted(format!("disk full: {message}")),
        ProposeError::Busy(_) => {
            let mut status = Status::resource_exhausted(error.to_string());
            status
                .metadata_mut()
                .insert("weir-retriable", MetadataValue::from_static("true"));
            status
        }
        ProposeError::NoSuchGroup(_) => Status::not_found(error.to_string()),
        ProposeError::Failed(message) => Status::unavailable(format!("partition replica failed: {message}")),
        ProposeError::ShuttingDown => Status::unavailable(error.to_string()),
        ProposeError::Sequence(message) => Status::invalid_argument(message),
    }
}

pub fn from_log(error: LogError) -> Status {
    match error {
        LogError::Corrupt { .. } => Status::data_loss(error.to_string()),
        LogError::DiskFull { .. } => Status::resource_exhausted(error.to_string()),
        LogError::OutOfRange { .. } | LogError::Unavailable { .. } => Status::out_of_range(error.to_string()),
        LogError::InvalidBatch(_) => Status::invalid_argument(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

pub fn from_cluster(error: ClusterError) -> Status {
    match error {
        ClusterError::Command(CommandError::TopicExists(_)) => Status::already_exists(error.to_string()),
        ClusterError::Command(CommandError::UnknownTopic(_))
        | ClusterError::UnknownTopic(_)
        | ClusterError::UnknownPartition { .. } => Status::not_found(error.to_string()),
        ClusterError::Command(CommandError::Invalid(_)) => Status::invalid_argument(error.to_string()),
        ClusterError::NotReplica { .. } => Status::new(Code::FailedPrecondition, error.to_string()),
        ClusterError::Propose(propose) => from_propose(propose, |_| None),
        ClusterError::Timeout(..) => Status::deadline_exceeded(error.to_string()),
        ClusterError::Raft(_) => Status::internal(error.to_string()),
        ClusterError::ShuttingDown | ClusterError::NotReady => Status::unavailable(error.to_string()),
    }
}

/// Metadata key on a FAILED_PRECONDITION that fences a group member: it must rejoin.
pub const FENCED_KEY: &str = "weir-fenced";

pub fn from_group(error: GroupError, leader_address: impl Fn(NodeId) -> Option<String>) -> Status {
    match error {
        GroupError::InvalidArgument(message) => Status::invalid_argument(message),
        GroupError::Fenced(_) => {
            let mut status = Status::failed_precondition(error.to_string());
            status
                .metadata_mut()
                .insert(FENCED_KEY, MetadataValue::from_static("true"));
            status
        }
        GroupError::NotEmpty(message) => Status::failed_precondition(message),
        GroupError::NotFound(_) => Status::not_found(error.to_string()),
        GroupError::NotCoordinator { leader: Some(leader) } => {
            not_leader(Some(leader), leader_address(leader).as_deref())
        }
        GroupError::NotCoordinator { leader: None } => Status::unavailable(
            "this node holds no replica of the group's __consumer_offsets partition; ask its leader",
        ),
        GroupError::OffsetsTopicMissing | GroupError::Unavailable(_) => Status::unavailable(error.to_string()),
        GroupError::Propose(propose) => from_propose(propose, leader_address),
        GroupError::OutcomeUnknown(message) => Status::aborted(message),
        GroupError::Log(log) => from_log(log),
    }
}
