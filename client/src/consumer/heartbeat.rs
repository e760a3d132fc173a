//! The heartbeat task of a subscribed consumer: joins the group, then heartbeats without pause.
//!
//! Each heartbeat is a long poll: the coordinator holds it up to `heartbeat_max_wait_ms` and
//! answers at once when the member's assignment changes, so the next heartbeat goes out as soon
//! as an answer arrives (after an answer that came early with nothing new, the task waits out
//! the rest of that time, so a coordinator that does not hold heartbeats is not flooded). When
//! `poll` changes what the consumer owns, the outstanding heartbeat is dropped (its answer
//! ignored: the coordinator accepts any epoch of this member's incarnation, so nothing is lost)
//! and a new one reports the owned set at once. Errors back off.
//!
//! Liveness, checked before every heartbeat:
//! - `poll` not called for `poll_timeout_ms`: the member leaves (epoch -1) so that its
//!   partitions go to members that read; its partitions count as lost, and the next `poll`
//!   joins again.
//! - no heartbeat answered for the session timeout: the coordinator has evicted the member, so
//!   its partitions are lost and it joins again.
//! - fenced: lost, join again.
//!
//! On close (or when the consumer is dropped) the member leaves: epoch -1, or -2 for a static
//! member, which keeps its partitions until it rejoins or its session times out.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::time::Instant;
use weir_proto::v1 as proto;

use super::group::{MemberState, Shared};
use crate::backoff::Backoff;
use crate::cluster::{group_retriable, Cluster, CoordinatorRoute};
use crate::config::ConsumerConfig;
use crate::error::{Context, Error, Result};
use crate::types::{from_wire_partitions, to_wire_partitions};

/// `member_epoch` of a heartbeat that leaves the group.
const LEAVE: i64 = -1;
/// `member_epoch` of a static member leaving for a restart (it keeps its partitions).
const LEAVE_FOR_RESTART: i64 = -2;
/// Upper bound on a leave when closing, so that `close` and drop do not hang on a lost
/// coordinator (the session timeout evicts the member anyway).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The task's settings, fixed at subscribe.
struct Heartbeater {
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    group: String,
    instance_id: String,
    client_id: String,
    strategy: proto::AssignmentStrategy,
    session_timeout_ms: u32,
    poll_timeout_ms: u32,
    max_wait_ms: u32,
    /// The session timeout in effect (the broker's default for 0).
    session: Duration,
    poll_timeout: Duration,
}

/// What to do next, decided from the shared state.
enum Step {
    Heartbeat(proto::GroupHeartbeatRequest),
    /// Left for being idle: wait until `poll` is called.
    WaitForPoll,
    /// `poll` has not been called for `poll_timeout_ms`: leave.
    LeaveIdle {
        member_id: String,
    },
    Close {
        leave: Option<(String, i64)>,
    },
}

/// Runs until the consumer closes (or is dropped).
pub(super) async fn run(cluster: Arc<Cluster>, config: ConsumerConfig, shared: Arc<Shared>) {
    let heartbeater = Heartbeater {
        group: config.group_id.clone().unwrap_or_default(),
        instance_id: config.group_instance_id.clone().unwrap_or_default(),
        client_id: config.client_id.clone(),
        strategy: config.assignment_strategy.into(),
        session_timeout_ms: config.session_timeout_ms,
        poll_timeout_ms: config.poll_timeout_ms,
        max_wait_ms: config.heartbeat_max_wait_ms,
        session: Duration::from_millis(u64::from(config.effective_session_timeout_ms())),
        poll_timeout: Duration::from_millis(u64::from(config.poll_timeout_ms)),
        cluster,
        shared,
    };
    heartbeater.run().await;
}

impl Heartbeater {
    async fn run(&self) {
        let mut route = CoordinatorRoute::default();
        let mut backoff = self.cluster.backoff();
        let mut last_answer = Instant::now();
        loop {
            // A wake-up that arrived before this point is answered by the request built now
            // from the current state.
            let _ = self.shared.to_task.notified().now_or_never();
            match self.next_step(last_answer) {
                Step::Close { leave } => {
                    if let Some((member_id, epoch)) = leave {
                        self.leave(&mut route, member_id, epoch).await;
                    }
                    return;
                }
                Step::WaitForPoll => self.shared.to_task.notified().await,
                Step::LeaveIdle { member_id } => {
                    tracing::warn!(group = %self.group, poll_timeout_ms = self.poll_timeout_ms,
                        "poll was not called within poll_timeout_ms; leaving the group until the next poll");
                    self.leave(&mut route, member_id, LEAVE).await;
                }
                Step::Heartbeat(request) => {
                    let joining = request.member_epoch == 0;
                    let started = Instant::now();
                    let lost_version = self.shared.lock().lost_version;
                    let deadline = self.attempt_deadline(joining, last_answer, started);
                    let attempt = tokio::time::timeout_at(deadline, self.send(&mut route, request.clone()));
                    let result = if joining {
                        // A join is never dropped: its answer names the member the coordinator made.
                        Some(attempt.await)
                    } else {
                        tokio::select! {
                            result = attempt => Some(result),
                            () = self.shared.to_task.notified() => None,
                        }
                    };
                    let Some(result) = result else {
                        continue; // the owned set changed (or close): heartbeat again at once
                    };
                    let result = result.unwrap_or_else(|_| {
                        Err(Error::Timeout("no heartbeat answer within the session timeout".into()))
                    });
                    match result {
                        Ok(response) => {
                            last_answer = Instant::now();
                            backoff = self.cluster.backoff();
                            let news = self.apply(&request, response.clone(), lost_version);
                            if !news {
                                self.pace(started, response.heartbeat_interval_ms).await;
                            }
                        }
                        Err(error) => self.on_error(error, lost_version, &mut backoff).await,
                    }
                }
            }
        }
    }

    /// Decides the next step from the shared state; declares the partitions lost when the
    /// session ran out.
    fn next_step(&self, last_answer: Instant) -> Step {
        let mut state = self.shared.lock();
        let joined = state.member_epoch > 0;
        if state.closing {
            let epoch = if self.instance_id.is_empty() {
                LEAVE
            } else {
                LEAVE_FOR_RESTART
            };
            return Step::Close {
                leave: joined.then(|| (state.member_id.clone(), epoch)),
            };
        }
        if state.left_idle {
            return Step::WaitForPoll;
        }
        if joined && !state.polling && state.last_poll.elapsed() >= self.poll_timeout {
            let member_id = state.member_id.clone();
            state.left_idle = true;
            self.shared.lose(&mut state, "poll timeout");
            return Step::LeaveIdle { member_id };
        }
        if joined && last_answer.elapsed() >= self.session {
            self.shared
                .lose(&mut state, "no heartbeat answered within the session timeout");
        }
        Step::Heartbeat(self.request(&state))
    }

    fn request(&self, state: &MemberState) -> proto::GroupHeartbeatRequest {
        let joining = state.member_epoch <= 0;
        proto::GroupHeartbeatRequest {
            group: self.group.clone(),
            member_id: state.member_id.clone(),
            member_epoch: state.member_epoch.max(0),
            instance_id: self.instance_id.clone(),
            client_id: self.client_id.clone(),
            topics: if joining || state.topics_changed {
                state.topics.clone()
            } else {
                Vec::new()
            },
            strategy: self.strategy as i32,
            session_timeout_ms: self.session_timeout_ms,
            rebalance_timeout_ms: self.poll_timeout_ms,
            owned: to_wire_partitions(&state.owned),
            max_wait_ms: self.max_wait_ms,
        }
    }

    /// How long one heartbeat may take: a joined member gives up when its session runs out
    /// (the coordinator has evicted it by then); a join, after a request timeout.
    fn attempt_deadline(&self, joining: bool, last_answer: Instant, started: Instant) -> Instant {
        let request = started + self.cluster.config().request_timeout() + self.max_wait();
        if joining {
            request
        } else {
            request.min(last_answer + self.session)
        }
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.max_wait_ms))
    }

    async fn send(
        &self,
        route: &mut CoordinatorRoute,
        request: proto::GroupHeartbeatRequest,
    ) -> Result<proto::GroupHeartbeatResponse> {
        let timeout = self.cluster.config().request_timeout() + self.max_wait();
        let group = self.group.as_str();
        self.cluster
            .coordinator_attempt(group, route, |mut client| {
                let request = self.cluster.request(request, timeout);
                async move {
                    client
                        .heartbeat(request)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|status| Error::from_status(status, &Context::group(group)))
                }
            })
            .await
    }

    /// Records an answer; true if it brought news (a new epoch or assignment) or the owned
    /// set changed since the request, so the next heartbeat should go at once.
    fn apply(
        &self,
        request: &proto::GroupHeartbeatRequest,
        response: proto::GroupHeartbeatResponse,
        lost_version: u64,
    ) -> bool {
        let mut state = self.shared.lock();
        if state.lost_version != lost_version {
            return true; // an answer to a member that has been declared lost since
        }
        if !request.topics.is_empty() && request.topics == state.topics {
            state.topics_changed = false;
        }
        let assignment = from_wire_partitions(response.assignment);
        let news = state.member_epoch != response.member_epoch || state.assignment != assignment;
        if state.member_epoch <= 0 {
            tracing::info!(group = %self.group, member = %response.member_id, epoch = response.member_epoch, "joined the consumer group");
        }
        state.member_id = response.member_id;
        state.member_epoch = response.member_epoch;
        if state.assignment != assignment {
            state.assignment = assignment;
            state.assignment_version += 1;
            self.shared.to_consumer.notify_one();
        }
        news || to_wire_partitions(&state.owned) != request.owned
    }

    /// After an answer with nothing new that came before the long poll's time was up: wait
    /// out the rest of it (or until the owned set changes).
    async fn pace(&self, started: Instant, heartbeat_interval_ms: u32) {
        let mut wait = self.max_wait();
        if heartbeat_interval_ms > 0 {
            wait = wait.min(Duration::from_millis(u64::from(heartbeat_interval_ms)));
        }
        tokio::select! {
            () = tokio::time::sleep_until(started + wait) => {}
            () = self.shared.to_task.notified() => {}
        }
    }

    async fn on_error(&self, error: Error, lost_version: u64, backoff: &mut Backoff) {
        {
            let mut state = self.shared.lock();
            if state.lost_version != lost_version {
                return; // declared lost meanwhile: rejoin at once
            }
            if let Error::Fenced(reason) = &error {
                self.shared.lose(&mut state, reason);
                return;
            }
            if !group_retriable(&error, true) {
                // Refused (an invalid subscription, another strategy than the group's): poll
                // reports it; keep trying, as the cause may be fixed on the other side.
                tracing::warn!(group = %self.group, %error, "heartbeat refused");
                state.error = Some(error);
                self.shared.to_consumer.notify_one();
            } else {
                tracing::debug!(group = %self.group, %error, "heartbeat failed; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = self.shared.to_task.notified() => {}
        }
    }

    /// Leaves the group, best effort: a few attempts within [`LEAVE_TIMEOUT`].
    async fn leave(&self, route: &mut CoordinatorRoute, member_id: String, epoch: i64) {
        let request = proto::GroupHeartbeatRequest {
            group: self.group.clone(),
            member_id,
            member_epoch: epoch,
            instance_id: self.instance_id.clone(),
            client_id: self.client_id.clone(),
            ..Default::default()
        };
        let mut backoff = self.cluster.backoff();
        let attempts = async {
            loop {
                match self.send(route, request.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(error) if group_retriable(&error, true) => {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        match tokio::time::timeout(LEAVE_TIMEOUT, attempts).await {
            Ok(Ok(())) => tracing::info!(group = %self.group, epoch, "left the consumer group"),
            Ok(Err(Error::Fenced(_))) => {} // not a member anyway
            Ok(Err(error)) => tracing::warn!(group = %self.group, %error, "leaving the group failed"),
            Err(_) => {
                tracing::warn!(group = %self.group, "leaving the group timed out; the session timeout will evict the member")
            }
        }
    }
}
