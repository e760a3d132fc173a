//! `cancel-probe BOOTSTRAP TOPIC TRIALS`: does a heartbeat cancelled while its membership
//! change is being written lose the wake-up of the other members' long polls?
//!
//! Raw `Heartbeat` requests, two members per trial (a fresh group each time):
//! 1. A joins and gets every partition; B joins and gets none (A holds them all).
//! 2. A heartbeats with what it owns: told to give half up (epoch changes).
//! 3. B sends a long-polled heartbeat (1 s) and waits on the coordinator.
//! 4. A heartbeats reporting it released the half. Variant `cancel-US`: that request is
//!    dropped (the client's RST_STREAM) US microseconds after it was sent; variant `wait`:
//!    it is left to run.
//! 5. Time from A's release to B's answer carrying the partitions. With a working wake-up it is
//!    the time of one membership write; a lost wake-up shows as B's whole long poll (1 s).
//!
//! Prints one line per trial: `probe VARIANT TRIAL B_WAIT_MS B_PARTITIONS`.

use std::time::{Duration, Instant};

use weir_client::{Admin, ClientConfig};
use weir_proto::v1 as proto;

use super::{emit, fail};

fn request(group: &str, member: &str, epoch: i64, topic: &str, owned: &[u32]) -> proto::GroupHeartbeatRequest {
    proto::GroupHeartbeatRequest {
        group: group.to_string(),
        member_id: member.to_string(),
        member_epoch: epoch,
        topics: if epoch == 0 {
            vec![topic.to_string()]
        } else {
            Vec::new()
        },
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 60_000,
        owned: if owned.is_empty() {
            Vec::new()
        } else {
            vec![proto::TopicPartitions {
                topic: topic.to_string(),
                partitions: owned.to_vec(),
            }]
        },
        max_wait_ms: 1_000,
        client_id: "probe".into(),
        ..Default::default()
    }
}

fn partitions(response: &proto::GroupHeartbeatResponse) -> Vec<u32> {
    response
        .assignment
        .iter()
        .flat_map(|tp| tp.partitions.clone())
        .collect()
}

pub async fn run(bootstrap: &str, topic: &str, trials: u32) {
    let admin = ClientConfig::new(bootstrap)
        .and_then(Admin::new)
        .unwrap_or_else(|e| fail("admin", e));
    let metadata = admin.metadata(&[]).await.unwrap_or_else(|e| fail("metadata", e));
    let addresses: Vec<String> = metadata.brokers.iter().map(|b| b.address.clone()).collect();
    let variants = ["wait", "cancel-300", "cancel-1000", "cancel-2000", "cancel-4000"];
    for trial in 1..=trials {
        for variant in variants {
            let group = format!("probe-{}-{trial}-{variant}", std::process::id());
            // The node that accepts the join is the coordinator.
            let mut joined = None;
            for address in addresses.iter().cycle().take(50 * addresses.len()) {
                let Ok(mut client) = proto::groups_client::GroupsClient::connect(format!("http://{address}")).await
                else {
                    continue;
                };
                if let Ok(answer) = client.heartbeat(request(&group, "", 0, topic, &[])).await {
                    joined = Some((client, answer.into_inner()));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (mut a_client, a) = joined.unwrap_or_else(|| fail("probe", "no node accepted the join"));
            let b = a_client
                .heartbeat(request(&group, "", 0, topic, &[]))
                .await
                .unwrap_or_else(|e| fail("join", e))
                .into_inner();
            let owned = partitions(&a);
            let told = a_client
                .heartbeat(request(&group, &a.member_id, a.member_epoch, topic, &owned))
                .await
                .unwrap_or_else(|e| fail("heartbeat", e))
                .into_inner();
            let kept = partitions(&told);
            // B waits on the coordinator.
            let mut b_client = a_client.clone();
            let b_request = request(&group, &b.member_id, b.member_epoch, topic, &[]);
            let b_wait = tokio::spawn(async move {
                let answer = b_client.heartbeat(b_request).await;
                (Instant::now(), answer.map(|a| partitions(&a.into_inner())))
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let release = request(&group, &a.member_id, told.member_epoch, topic, &kept);
            let released_at = Instant::now();
            let mut a_release = a_client.clone();
            match variant.strip_prefix("cancel-").and_then(|us| us.parse::<u64>().ok()) {
                Some(us) => {
                    let _ = tokio::time::timeout(Duration::from_micros(us), a_release.heartbeat(release)).await;
                }
                None => {
                    tokio::spawn(async move {
                        let _ = a_release.heartbeat(release).await;
                    });
                }
            }
            let (answered_at, gained) = b_wait.await.unwrap_or_else(|e| fail("probe", e));
            let gained = gained.map_or_else(|e| format!("error {}", e.message()), |p| format!("{p:?}"));
            emit(&format!(
                "probe {variant} {trial} {:.1} {gained}",
                answered_at.duration_since(released_at).as_secs_f64() * 1e3
            ));
            // Leave, so the group's sessions do not linger.
            for member in [&a.member_id, &b.member_id] {
                let _ = a_client.heartbeat(request(&group, member, -1, topic, &[])).await;
            }
        }
    }
}
