//! Behaviour tests of the coordinator through its public API. Every
//! response is also encoded at its request version, which proves we never
//! set a field the version does not have.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio_util::sync::CancellationToken;

use super::*;

const REBALANCE: i16 = ResponseError::RebalanceInProgress.code();
const UNKNOWN_MEMBER: i16 = ResponseError::UnknownMemberId.code();
const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn config(initial_delay_ms: u64) -> GroupConfig {
    let mut c = GroupConfig::new(1);
    c.initial_rebalance_delay = ms(initial_delay_ms);
    c.min_session_timeout = ms(10);
    c
}

async fn open(dir: &Path, c: GroupConfig) -> Arc<GroupCoordinator> {
    GroupCoordinator::open(dir, c, CancellationToken::new())
        .await
        .unwrap()
}

#[track_caller]
fn encodes<T: Encodable>(msg: &T, version: i16) {
    let mut buf = BytesMut::new();
    if let Err(e) = msg.encode(&mut buf, version) {
        panic!("response does not encode at v{version}: {e}");
    }
}

fn join_req(group: &str, member: &str, session_ms: i32, protocols: &[&str]) -> JoinGroupRequest {
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(s(group));
    r.member_id = s(member);
    r.session_timeout_ms = session_ms;
    r.rebalance_timeout_ms = 5000;
    r.protocol_type = s("consumer");
    r.protocols = protocols
        .iter()
        .map(|name| {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = s(name);
            p.metadata = Bytes::from(format!("meta-{name}"));
            p
        })
        .collect();
    r
}

/// JoinGroup including KIP-394's MEMBER_ID_REQUIRED round trip.
async fn join(c: &GroupCoordinator, mut req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
    let resp = c.join_group(req.clone(), version).await;
    encodes(&resp, version);
    if resp.error_code != ResponseError::MemberIdRequired.code() {
        return resp;
    }
    assert!(
        version >= 4,
        "MEMBER_ID_REQUIRED sent to a v{version} client"
    );
    assert!(!resp.member_id.is_empty());
    req.member_id = resp.member_id;
    let resp = c.join_group(req, version).await;
    encodes(&resp, version);
    resp
}

fn spawn_join(
    c: &Arc<GroupCoordinator>,
    req: JoinGroupRequest,
    version: i16,
) -> tokio::task::JoinHandle<JoinGroupResponse> {
    let c = Arc::clone(c);
    tokio::spawn(async move { join(&c, req, version).await })
}

/// `n` members join concurrently (lands in one rebalance thanks to the
/// initial delay).
async fn form_group(
    c: &Arc<GroupCoordinator>,
    group: &str,
    n: usize,
    session_ms: i32,
    version: i16,
) -> Vec<JoinGroupResponse> {
    let handles: Vec<_> = (0..n)
        .map(|_| spawn_join(c, join_req(group, "", session_ms, &["range"]), version))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn sync_req(group: &str, j: &JoinGroupResponse) -> SyncGroupRequest {
    let mut r = SyncGroupRequest::default();
    r.group_id = GroupId(s(group));
    r.generation_id = j.generation_id;
    r.member_id = j.member_id.clone();
    // The leader assigns each member its own id as the assignment bytes.
    r.assignments = j
        .members
        .iter()
        .map(|m| {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = m.member_id.clone();
            a.assignment = Bytes::from(format!("assigned-{}", m.member_id.as_str()));
            a
        })
        .collect();
    r
}

/// Every member sends SyncGroup concurrently (followers first).
async fn sync_all(
    c: &Arc<GroupCoordinator>,
    group: &str,
    joins: &[JoinGroupResponse],
    version: i16,
) -> Vec<SyncGroupResponse> {
    let mut order: Vec<&JoinGroupResponse> = joins.iter().collect();
    order.sort_by_key(|j| j.leader == j.member_id);
    let handles: Vec<_> = order
        .iter()
        .map(|j| {
            let c = Arc::clone(c);
            let req = sync_req(group, j);
            tokio::spawn(async move { c.sync_group(req, version).await })
        })
        .collect();
    let mut by_member = Vec::new();
    for (h, j) in handles.into_iter().zip(order) {
        let r = h.await.unwrap();
        encodes(&r, version);
        by_member.push((j.member_id.clone(), r));
    }
    joins
        .iter()
        .map(|j| {
            by_member
                .iter()
                .find(|(m, _)| *m == j.member_id)
                .map(|(_, r)| r.clone())
                .unwrap()
        })
        .collect()
}

async fn heartbeat(c: &GroupCoordinator, group: &str, j: &JoinGroupResponse, version: i16) -> i16 {
    let mut r = HeartbeatRequest::default();
    r.group_id = GroupId(s(group));
    r.generation_id = j.generation_id;
    r.member_id = j.member_id.clone();
    let resp = c.heartbeat(r, version).await;
    encodes(&resp, version);
    resp.error_code
}

/// Polls heartbeats until one answers `code`.
async fn heartbeat_until(c: &GroupCoordinator, group: &str, j: &JoinGroupResponse, code: i16) {
    for _ in 0..200 {
        if heartbeat(c, group, j, 4).await == code {
            return;
        }
        tokio::time::sleep(ms(25)).await;
    }
    panic!("heartbeat never returned {code}");
}

fn rejoin_req(group: &str, j: &JoinGroupResponse, session_ms: i32) -> JoinGroupRequest {
    join_req(group, j.member_id.as_str(), session_ms, &["range"])
}

fn leader_of(joins: &[JoinGroupResponse]) -> &JoinGroupResponse {
    joins.iter().find(|j| j.leader == j.member_id).unwrap()
}

fn commit_req(
    group: &str,
    generation: i32,
    member: &str,
    offsets: &[(&str, i32, i64)],
) -> OffsetCommitRequest {
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(s(group));
    r.generation_id_or_member_epoch = generation;
    r.member_id = s(member);
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = *partition;
        p.committed_offset = *offset;
        p.committed_metadata = Some(s(&format!("m{offset}")));
        match topics.iter_mut().find(|t| t.name.as_str() == *topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(s(topic));
                t.partitions.push(p);
                topics.push(t);
            }
        }
    }
    r.topics = topics;
    r
}

fn topics_exist(topic: &str, partition: i32) -> bool {
    matches!(topic, "orders" | "clicks") && (0..4).contains(&partition)
}

async fn commit(
    c: &GroupCoordinator,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let resp = c.offset_commit(req, version, &topics_exist).await;
    encodes(&resp, version);
    resp
}

fn commit_codes(resp: &OffsetCommitResponse) -> Vec<i16> {
    resp.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

fn fetch_v7(group: &str, topics: Option<&[(&str, &[i32])]>) -> OffsetFetchRequest {
    let mut r = OffsetFetchRequest::default();
    r.group_id = GroupId(s(group));
    r.topics = topics.map(|ts| {
        ts.iter()
            .map(|(name, parts)| {
                let mut t = OffsetFetchRequestTopic::default();
                t.name = TopicName(s(name));
                t.partition_indexes = parts.to_vec();
                t
            })
            .collect()
    });
    r
}

/// (topic, partition, offset) triples of a v1-7 response.
fn fetched(c: &GroupCoordinator, req: OffsetFetchRequest, version: i16) -> Vec<(String, i32, i64)> {
    let resp = c.offset_fetch(req, version);
    encodes(&resp, version);
    assert_eq!(resp.error_code, 0);
    resp.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.as_str().to_string(),
                    p.partition_index,
                    p.committed_offset,
                )
            })
        })
        .collect()
}

fn triple(t: &str, p: i32, o: i64) -> (String, i32, i64) {
    (t.to_string(), p, o)
}

// ---------------------------------------------------------------- membership

#[tokio::test]
async fn two_members_join_one_rebalance_leader_gets_both_and_sync_distributes() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(300)).await;
    let joins = form_group(&c, "g", 2, 10_000, 5).await;
    for j in &joins {
        assert_eq!(j.error_code, 0);
        assert_eq!(j.generation_id, 1);
        assert_eq!(j.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    }
    assert_eq!(joins[0].leader, joins[1].leader);
    let leader = leader_of(&joins);
    let follower = joins.iter().find(|j| j.leader != j.member_id).unwrap();
    assert_eq!(leader.members.len(), 2);
    assert!(follower.members.is_empty());
    assert!(leader
        .members
        .iter()
        .all(|m| m.metadata == Bytes::from_static(b"meta-range")));

    let syncs = sync_all(&c, "g", &joins, 3).await;
    for (j, sresp) in joins.iter().zip(&syncs) {
        assert_eq!(sresp.error_code, 0);
        assert_eq!(
            sresp.assignment,
            Bytes::from(format!("assigned-{}", j.member_id.as_str()))
        );
        assert_eq!(heartbeat(&c, "g", j, 4).await, 0);
    }
    let mut d = DescribeGroupsRequest::default();
    d.groups = vec![GroupId(s("g"))];
    let desc = c.describe_groups(d, 5);
    encodes(&desc, 5);
    assert_eq!(desc.groups[0].group_state.as_str(), "Stable");
    assert_eq!(desc.groups[0].members.len(), 2);
    c.shutdown().await;
}

#[tokio::test]
async fn third_member_joining_triggers_a_rebalance_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(200)).await;
    let joins = form_group(&c, "g", 2, 10_000, 7).await;
    sync_all(&c, "g", &joins, 5).await;

    let third = spawn_join(&c, join_req("g", "", 10_000, &["range"]), 7);
    heartbeat_until(&c, "g", &joins[0], REBALANCE).await;
    assert_eq!(heartbeat(&c, "g", &joins[1], 4).await, REBALANCE);
    let a = spawn_join(&c, rejoin_req("g", &joins[0], 10_000), 7);
    let b = spawn_join(&c, rejoin_req("g", &joins[1], 10_000), 7);
    let gen2 = vec![a.await.unwrap(), b.await.unwrap(), third.await.unwrap()];
    for j in &gen2 {
        assert_eq!(j.error_code, 0);
        assert_eq!(j.generation_id, 2);
    }
    assert_eq!(gen2[0].member_id, joins[0].member_id, "member ids are kept");
    assert_eq!(leader_of(&gen2).members.len(), 3);
    // The old generation is now illegal.
    assert_eq!(heartbeat(&c, "g", &joins[0], 4).await, ILLEGAL_GENERATION);
    let syncs = sync_all(&c, "g", &gen2, 5).await;
    assert!(syncs.iter().all(|r| r.error_code == 0));
    c.shutdown().await;
}

#[tokio::test]
async fn leaving_member_triggers_rebalance_and_remaining_member_gets_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(200)).await;
    let joins = form_group(&c, "g", 2, 10_000, 4).await;
    sync_all(&c, "g", &joins, 4).await;

    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s("g"));
    let mut who = MemberIdentity::default();
    who.member_id = joins[1].member_id.clone();
    leave.members = vec![who];
    let resp = c.leave_group(leave, 3).await;
    encodes(&resp, 3);
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.members[0].error_code, 0);

    assert_eq!(heartbeat(&c, "g", &joins[0], 4).await, REBALANCE);
    let j = join(&c, rejoin_req("g", &joins[0], 10_000), 4).await;
    assert_eq!(j.error_code, 0);
    assert_eq!(j.generation_id, 2);
    assert_eq!(j.leader, j.member_id);
    assert_eq!(j.members.len(), 1);
    let s2 = sync_all(&c, "g", std::slice::from_ref(&j), 4).await;
    assert_eq!(s2[0].error_code, 0);

    // v0-2 form: the single member's error is the top-level error.
    let mut old = LeaveGroupRequest::default();
    old.group_id = GroupId(s("g"));
    old.member_id = joins[1].member_id.clone();
    let resp = c.leave_group(old, 1).await;
    encodes(&resp, 1);
    assert_eq!(resp.error_code, UNKNOWN_MEMBER);
    c.shutdown().await;
}

#[tokio::test]
async fn session_timeout_expires_a_silent_member() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(200)).await;
    let joins = form_group(&c, "g", 2, 400, 5).await;
    sync_all(&c, "g", &joins, 5).await;
    // Member 0 keeps heartbeating; member 1 goes silent.
    heartbeat_until(&c, "g", &joins[0], REBALANCE).await;
    let j = join(&c, rejoin_req("g", &joins[0], 400), 5).await;
    assert_eq!(j.generation_id, 2);
    assert_eq!(j.members.len(), 1);
    assert_eq!(heartbeat(&c, "g", &joins[1], 4).await, UNKNOWN_MEMBER);
    c.shutdown().await;
}

#[tokio::test]
async fn heartbeat_reports_unknown_member_illegal_generation_and_invalid_group() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let j = join(&c, join_req("g", "", 10_000, &["range"]), 3).await;
    assert_eq!(
        j.generation_id, 1,
        "a v3 member gets its id without MEMBER_ID_REQUIRED"
    );
    sync_all(&c, "g", std::slice::from_ref(&j), 3).await;

    assert_eq!(heartbeat(&c, "g", &j, 0).await, 0);
    let mut stale = j.clone();
    stale.generation_id = 7;
    assert_eq!(heartbeat(&c, "g", &stale, 1).await, ILLEGAL_GENERATION);
    let mut stranger = j.clone();
    stranger.member_id = s("nobody");
    assert_eq!(heartbeat(&c, "g", &stranger, 2).await, UNKNOWN_MEMBER);
    assert_eq!(heartbeat(&c, "no-such-group", &j, 3).await, UNKNOWN_MEMBER);
    assert_eq!(
        heartbeat(&c, "", &j, 4).await,
        ResponseError::InvalidGroupId.code()
    );
    // SyncGroup sees the same checks.
    let mut bad = sync_req("g", &j);
    bad.generation_id = 9;
    assert_eq!(c.sync_group(bad, 2).await.error_code, ILLEGAL_GENERATION);
    c.shutdown().await;
}

#[tokio::test]
async fn join_rejects_bad_session_timeout_and_inconsistent_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(0);
    cfg.min_session_timeout = ms(6000);
    let c = open(dir.path(), cfg).await;
    let r = join(&c, join_req("g", "", 100, &["range"]), 9).await;
    assert_eq!(r.error_code, ResponseError::InvalidSessionTimeout.code());
    let r = join(&c, join_req("", "", 10_000, &["range"]), 9).await;
    assert_eq!(r.error_code, ResponseError::InvalidGroupId.code());

    let first = join(&c, join_req("g", "", 10_000, &["range"]), 9).await;
    assert_eq!(first.error_code, 0);
    let r = join(&c, join_req("g", "", 10_000, &["sticky"]), 9).await;
    assert_eq!(
        r.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let mut other_type = join_req("g", "", 10_000, &["range"]);
    other_type.protocol_type = s("connect");
    let r = join(&c, other_type, 9).await;
    assert_eq!(
        r.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    c.shutdown().await;
}

#[tokio::test]
async fn protocol_with_most_votes_among_common_protocols_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(300)).await;
    let prefs: [&[&str]; 3] = [
        &["sticky", "range", "roundrobin"],
        &["roundrobin", "range"],
        &["range", "roundrobin"],
    ];
    let handles: Vec<_> = prefs
        .iter()
        .map(|p| spawn_join(&c, join_req("g", "", 10_000, p), 6))
        .collect();
    for h in handles {
        let j = h.await.unwrap();
        assert_eq!(j.error_code, 0);
        // "sticky" is not common; "range" has two first-choice votes.
        assert_eq!(j.protocol_name.unwrap().as_str(), "range");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn static_member_restart_takes_over_without_rebalance_and_fences_old_id() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let leader = join(&c, join_req("g", "", 10_000, &["range"]), 5).await;
    sync_all(&c, "g", std::slice::from_ref(&leader), 5).await;

    let mut static_req = join_req("g", "", 10_000, &["range"]);
    static_req.group_instance_id = Some(s("instance-a"));
    let pending = spawn_join(&c, static_req.clone(), 5);
    heartbeat_until(&c, "g", &leader, REBALANCE).await;
    let leader = join(&c, rejoin_req("g", &leader, 10_000), 5).await;
    let member = pending.await.unwrap();
    assert_eq!(
        member.error_code, 0,
        "static members skip MEMBER_ID_REQUIRED"
    );
    assert_eq!(member.generation_id, 2);
    assert!(member.member_id.as_str().starts_with("instance-a-"));
    let syncs = sync_all(&c, "g", &[leader.clone(), member.clone()], 5).await;
    let assignment = syncs[1].assignment.clone();

    // The static consumer restarts: same instance id, no member id.
    let restarted = join(&c, static_req, 5).await;
    assert_eq!(restarted.error_code, 0);
    assert_eq!(restarted.generation_id, 2, "no rebalance");
    assert_ne!(restarted.member_id, member.member_id);
    let s2 = c.sync_group(sync_req("g", &restarted), 5).await;
    assert_eq!(s2.assignment, assignment, "keeps its assignment");
    assert_eq!(heartbeat(&c, "g", &leader, 4).await, 0);

    let mut old = HeartbeatRequest::default();
    old.group_id = GroupId(s("g"));
    old.generation_id = 2;
    old.member_id = member.member_id.clone();
    old.group_instance_id = Some(s("instance-a"));
    let r = c.heartbeat(old, 4).await;
    assert_eq!(r.error_code, ResponseError::FencedInstanceId.code());
    c.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_parked_joins_and_refuses_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let first = join(&c, join_req("g", "", 10_000, &["range"]), 5).await;
    sync_all(&c, "g", std::slice::from_ref(&first), 5).await;
    // A second member joins and waits for the first to rejoin.
    let parked = spawn_join(&c, join_req("g", "", 10_000, &["range"]), 5);
    heartbeat_until(&c, "g", &first, REBALANCE).await;
    c.shutdown().await;
    let r = parked.await.unwrap();
    assert_eq!(r.error_code, ResponseError::CoordinatorNotAvailable.code());
    let resp = commit(&c, commit_req("x", -1, "", &[("orders", 0, 1)]), 8).await;
    assert_eq!(
        commit_codes(&resp),
        vec![ResponseError::CoordinatorNotAvailable.code()]
    );
}

// ---------------------------------------------------------------- offsets

#[tokio::test]
async fn offsets_commit_and_fetch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let resp = commit(
        &c,
        commit_req(
            "simple",
            -1,
            "",
            &[
                ("orders", 0, 10),
                ("orders", 1, 20),
                ("missing", 0, 5),
                ("orders", 9, 1),
            ],
        ),
        8,
    )
    .await;
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    assert_eq!(commit_codes(&resp), vec![0, 0, unknown, unknown]);

    let wanted: &[(&str, &[i32])] = &[("orders", &[0, 1, 2])];
    for v in 1..=7 {
        assert_eq!(
            fetched(&c, fetch_v7("simple", Some(wanted)), v),
            vec![
                triple("orders", 0, 10),
                triple("orders", 1, 20),
                triple("orders", 2, -1)
            ],
            "OffsetFetch v{v}"
        );
    }
    // Null topics (v2+) means every committed partition of the group.
    assert_eq!(
        fetched(&c, fetch_v7("simple", None), 2),
        vec![triple("orders", 0, 10), triple("orders", 1, 20)]
    );
    // An unknown group has no offsets, not an error.
    assert_eq!(
        fetched(&c, fetch_v7("nobody", Some(wanted)), 6),
        vec![
            triple("orders", 0, -1),
            triple("orders", 1, -1),
            triple("orders", 2, -1)
        ]
    );
    let resp = c.offset_fetch(fetch_v7("simple", Some(wanted)), 6);
    assert_eq!(
        resp.topics[0].partitions[0]
            .metadata
            .as_ref()
            .unwrap()
            .as_str(),
        "m10"
    );

    // A later commit wins; leader epoch is kept from v6.
    let mut req = commit_req("simple", -1, "", &[("orders", 0, 11)]);
    req.topics[0].partitions[0].committed_leader_epoch = 3;
    commit(&c, req, 6).await;
    let resp = c.offset_fetch(fetch_v7("simple", Some(wanted)), 5);
    assert_eq!(resp.topics[0].partitions[0].committed_offset, 11);
    assert_eq!(resp.topics[0].partitions[0].committed_leader_epoch, 3);
    assert_eq!(
        c.committed_offsets()
            .iter()
            .map(|o| (o.group.as_str(), o.topic.as_str(), o.partition, o.offset))
            .collect::<Vec<_>>(),
        vec![("simple", "orders", 0, 11), ("simple", "orders", 1, 20)]
    );
    c.shutdown().await;
}

#[tokio::test]
async fn committed_offsets_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    commit(
        &c,
        commit_req("g1", -1, "", &[("orders", 0, 100), ("clicks", 3, 7)]),
        8,
    )
    .await;
    commit(&c, commit_req("g2", -1, "", &[("orders", 0, 5)]), 2).await;
    commit(&c, commit_req("g1", -1, "", &[("orders", 0, 101)]), 4).await;
    let before = c.committed_offsets();
    c.shutdown().await;
    drop(c);

    let c = open(dir.path(), config(0)).await;
    assert_eq!(c.recovery_report().records_replayed, 3);
    assert_eq!(c.committed_offsets(), before);
    assert_eq!(
        fetched(&c, fetch_v7("g1", None), 7),
        vec![triple("clicks", 3, 7), triple("orders", 0, 101)]
    );
    // Groups known only by their offsets are listed as Empty.
    let resp = c.list_groups(ListGroupsRequest::default(), 4);
    encodes(&resp, 4);
    let listed: Vec<_> = resp
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.as_str().to_string(),
                g.group_state.as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("g1".to_string(), "Empty".to_string()),
            ("g2".to_string(), "Empty".to_string())
        ]
    );
    c.shutdown().await;
}

#[tokio::test]
async fn torn_tail_after_last_commit_is_truncated_on_reopen_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    commit(&c, commit_req("g", -1, "", &[("orders", 0, 1)]), 8).await;
    c.shutdown().await;
    drop(c);
    let log = dir.path().join("offsets.log");
    let good = std::fs::read(&log).unwrap();
    let c = open(dir.path(), config(0)).await;
    commit(
        &c,
        commit_req("g", -1, "", &[("orders", 0, 2), ("orders", 1, 3)]),
        8,
    )
    .await;
    c.shutdown().await;
    drop(c);
    let full = std::fs::read(&log).unwrap();
    for cut in good.len()..full.len() {
        std::fs::write(&log, &full[..cut]).unwrap();
        let c = open(dir.path(), config(0)).await;
        assert_eq!(
            c.recovery_report().bytes_truncated,
            (cut - good.len()) as u64
        );
        assert_eq!(
            fetched(&c, fetch_v7("g", None), 7),
            vec![triple("orders", 0, 1)],
            "cut at byte {cut}"
        );
        c.shutdown().await;
        assert_eq!(std::fs::read(&log).unwrap(), good);
    }
}

#[tokio::test]
async fn mid_file_corruption_is_reported_and_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    commit(&c, commit_req("g", -1, "", &[("orders", 0, 1)]), 8).await;
    c.shutdown().await;
    drop(c);
    let log = dir.path().join("offsets.log");
    let first_len = std::fs::read(&log).unwrap().len();
    let c = open(dir.path(), config(0)).await;
    commit(&c, commit_req("g", -1, "", &[("orders", 1, 2)]), 8).await;
    commit(&c, commit_req("g", -1, "", &[("orders", 2, 3)]), 8).await;
    c.shutdown().await;
    drop(c);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[first_len + 20] ^= 0xA5;
    std::fs::write(&log, &bytes).unwrap();

    let c = open(dir.path(), config(0)).await;
    let corruption = c.recovery_report().corruption.clone().unwrap();
    assert_eq!(corruption.offset, first_len as u64);
    assert!(corruption.quarantined_to.exists());
    assert_eq!(
        fetched(&c, fetch_v7("g", None), 7),
        vec![triple("orders", 0, 1)]
    );
    c.shutdown().await;
    drop(c);

    let mut strict = config(0);
    strict.fail_on_corruption = true;
    std::fs::write(&log, &bytes).unwrap();
    let err = GroupCoordinator::open(dir.path(), strict, CancellationToken::new()).await;
    assert!(matches!(err, Err(GroupError::Corrupt { .. })));
}

#[tokio::test]
async fn offset_fetch_v8_serves_several_groups_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    commit(
        &c,
        commit_req("a", -1, "", &[("orders", 0, 1), ("orders", 1, 2)]),
        8,
    )
    .await;
    commit(&c, commit_req("b", -1, "", &[("clicks", 2, 30)]), 8).await;

    let group = |id: &str, topics: Option<&[(&str, &[i32])]>| {
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = GroupId(s(id));
        g.topics = topics.map(|ts| {
            ts.iter()
                .map(|(n, ps)| {
                    let mut t = OffsetFetchRequestTopics::default();
                    t.name = TopicName(s(n));
                    t.partition_indexes = ps.to_vec();
                    t
                })
                .collect()
        });
        g
    };
    let mut req = OffsetFetchRequest::default();
    req.groups = vec![
        group("a", Some(&[("orders", &[1, 3])])),
        group("b", None),
        group("c", None),
    ];
    for version in [8, 9] {
        let resp = c.offset_fetch(req.clone(), version);
        encodes(&resp, version);
        let flat: Vec<(String, String, i32, i64)> = resp
            .groups
            .iter()
            .flat_map(|g| {
                assert_eq!(g.error_code, 0);
                g.topics.iter().flat_map(move |t| {
                    t.partitions.iter().map(move |p| {
                        (
                            g.group_id.as_str().to_string(),
                            t.name.as_str().to_string(),
                            p.partition_index,
                            p.committed_offset,
                        )
                    })
                })
            })
            .collect();
        assert_eq!(
            flat,
            vec![
                ("a".into(), "orders".into(), 1, 2),
                ("a".into(), "orders".into(), 3, -1),
                ("b".into(), "clicks".into(), 2, 30),
            ]
        );
        assert_eq!(resp.groups.len(), 3);
        assert!(resp.groups[2].topics.is_empty());
    }
    c.shutdown().await;
}

#[tokio::test]
async fn member_commits_are_checked_against_membership_and_generation() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let j = join(&c, join_req("g", "", 10_000, &["range"]), 5).await;
    // Between JoinGroup and SyncGroup the group is CompletingRebalance.
    let r = commit(
        &c,
        commit_req("g", 1, j.member_id.as_str(), &[("orders", 0, 1)]),
        7,
    )
    .await;
    assert_eq!(commit_codes(&r), vec![REBALANCE]);
    sync_all(&c, "g", std::slice::from_ref(&j), 5).await;

    let ok = commit(
        &c,
        commit_req("g", 1, j.member_id.as_str(), &[("orders", 0, 5)]),
        7,
    )
    .await;
    assert_eq!(commit_codes(&ok), vec![0]);
    let stale = commit(
        &c,
        commit_req("g", 0, j.member_id.as_str(), &[("orders", 0, 6)]),
        7,
    )
    .await;
    assert_eq!(commit_codes(&stale), vec![ILLEGAL_GENERATION]);
    let stranger = commit(&c, commit_req("g", 1, "someone", &[("orders", 0, 6)]), 7).await;
    assert_eq!(commit_codes(&stranger), vec![UNKNOWN_MEMBER]);
    // Manual assignment into a group with live members is refused...
    let simple = commit(&c, commit_req("g", -1, "", &[("orders", 0, 6)]), 7).await;
    assert_eq!(commit_codes(&simple), vec![UNKNOWN_MEMBER]);
    // ...and a generation for a group that does not exist is illegal.
    let ghost = commit(&c, commit_req("ghost", 3, "m", &[("orders", 0, 6)]), 7).await;
    assert_eq!(commit_codes(&ghost), vec![ILLEGAL_GENERATION]);
    let too_big = {
        let mut r = commit_req("free", -1, "", &[("orders", 0, 6)]);
        r.topics[0].partitions[0].committed_metadata = Some(s(&"x".repeat(5000)));
        commit(&c, r, 7).await
    };
    assert_eq!(
        commit_codes(&too_big),
        vec![ResponseError::OffsetMetadataTooLarge.code()]
    );
    assert_eq!(
        fetched(&c, fetch_v7("g", None), 7),
        vec![triple("orders", 0, 5)]
    );
    c.shutdown().await;
}

#[tokio::test]
async fn list_and_describe_groups_filter_by_state_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let j = join(&c, join_req("active", "", 10_000, &["range"]), 5).await;
    sync_all(&c, "active", std::slice::from_ref(&j), 5).await;
    commit(&c, commit_req("idle", -1, "", &[("orders", 0, 1)]), 8).await;

    let names = |resp: &kafka_protocol::messages::ListGroupsResponse| {
        resp.groups
            .iter()
            .map(|g| g.group_id.as_str().to_string())
            .collect::<Vec<_>>()
    };
    let all = c.list_groups(ListGroupsRequest::default(), 0);
    encodes(&all, 0);
    assert_eq!(names(&all), vec!["active", "idle"]);
    let mut stable = ListGroupsRequest::default();
    stable.states_filter = vec![s("stable")];
    let r = c.list_groups(stable, 4);
    encodes(&r, 4);
    assert_eq!(names(&r), vec!["active"]);
    assert_eq!(r.groups[0].protocol_type.as_str(), "consumer");
    let mut consumer = ListGroupsRequest::default();
    consumer.types_filter = vec![s("consumer")];
    assert!(c.list_groups(consumer, 5).groups.is_empty());
    let mut classic = ListGroupsRequest::default();
    classic.types_filter = vec![s("Classic")];
    let r = c.list_groups(classic, 5);
    encodes(&r, 5);
    assert_eq!(names(&r), vec!["active", "idle"]);

    let mut d = DescribeGroupsRequest::default();
    d.groups = vec![GroupId(s("active")), GroupId(s("idle")), GroupId(s("nope"))];
    d.include_authorized_operations = true;
    let resp = c.describe_groups(d, 5);
    encodes(&resp, 5);
    let states: Vec<_> = resp.groups.iter().map(|g| g.group_state.as_str()).collect();
    assert_eq!(states, vec!["Stable", "Empty", "Dead"]);
    let active = &resp.groups[0];
    assert_eq!(active.protocol_data.as_str(), "range");
    assert_eq!(
        active.members[0].member_assignment,
        Bytes::from(format!("assigned-{}", j.member_id.as_str()))
    );
    c.shutdown().await;
}

#[tokio::test]
async fn delete_groups_removes_empty_groups_and_their_offsets_durably() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    let j = join(&c, join_req("busy", "", 10_000, &["range"]), 5).await;
    sync_all(&c, "busy", std::slice::from_ref(&j), 5).await;
    commit(&c, commit_req("done", -1, "", &[("orders", 0, 9)]), 8).await;
    commit(&c, commit_req("kept", -1, "", &[("orders", 0, 4)]), 8).await;

    let mut req = DeleteGroupsRequest::default();
    req.groups_names = vec![GroupId(s("busy")), GroupId(s("done")), GroupId(s("never"))];
    let resp = c.delete_groups(req, 2).await;
    encodes(&resp, 2);
    let codes: Vec<_> = resp.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            ResponseError::NonEmptyGroup.code(),
            0,
            ResponseError::GroupIdNotFound.code()
        ]
    );
    c.shutdown().await;
    drop(c);
    let c = open(dir.path(), config(0)).await;
    let groups: Vec<_> = c.committed_offsets().into_iter().map(|o| o.group).collect();
    assert_eq!(groups, vec!["kept"]);
    c.shutdown().await;
}

#[tokio::test]
async fn every_supported_version_produces_encodable_responses() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(0)).await;
    for v in JOIN_GROUP_VERSIONS.0..=JOIN_GROUP_VERSIONS.1 {
        let group = format!("g{v}");
        let j = join(&c, join_req(&group, "", 10_000, &["range"]), v).await;
        assert_eq!(j.error_code, 0, "JoinGroup v{v}");
        let sv = v.min(SYNC_GROUP_VERSIONS.1);
        let sr = sync_all(&c, &group, std::slice::from_ref(&j), sv).await;
        assert_eq!(sr[0].error_code, 0, "SyncGroup v{sv}");
        assert_eq!(
            heartbeat(&c, &group, &j, v.min(HEARTBEAT_VERSIONS.1)).await,
            0
        );
        let cv = v.clamp(OFFSET_COMMIT_VERSIONS.0, OFFSET_COMMIT_VERSIONS.1);
        let r = commit(
            &c,
            commit_req(
                &group,
                j.generation_id,
                j.member_id.as_str(),
                &[("orders", 0, 1)],
            ),
            cv,
        )
        .await;
        assert_eq!(commit_codes(&r), vec![0], "OffsetCommit v{cv}");
        let lv = v.min(LEAVE_GROUP_VERSIONS.1);
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(s(&group));
        if lv <= 2 {
            leave.member_id = j.member_id.clone();
        } else {
            let mut m = MemberIdentity::default();
            m.member_id = j.member_id.clone();
            leave.members = vec![m];
        }
        let r = c.leave_group(leave, lv).await;
        encodes(&r, lv);
        assert_eq!(r.error_code, 0, "LeaveGroup v{lv}");
    }
    for v in OFFSET_FETCH_VERSIONS.0..=7 {
        encodes(
            &c.offset_fetch(fetch_v7("g0", Some(&[("orders", &[0, 1])])), v),
            v,
        );
    }
    for v in LIST_GROUPS_VERSIONS.0..=LIST_GROUPS_VERSIONS.1 {
        encodes(&c.list_groups(ListGroupsRequest::default(), v), v);
    }
    for v in DESCRIBE_GROUPS_VERSIONS.0..=DESCRIBE_GROUPS_VERSIONS.1 {
        let mut d = DescribeGroupsRequest::default();
        d.groups = vec![GroupId(s("g5")), GroupId(s("missing"))];
        encodes(&c.describe_groups(d, v), v);
    }
    c.shutdown().await;
}

#[tokio::test]
async fn leader_that_never_syncs_is_removed_and_followers_are_told_to_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), config(200)).await;
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let mut req = join_req("g", "", 10_000, &["range"]);
            req.rebalance_timeout_ms = 300;
            spawn_join(&c, req, 5)
        })
        .collect();
    let mut joins = Vec::new();
    for h in handles {
        joins.push(h.await.unwrap());
    }
    let follower = joins.iter().find(|j| j.leader != j.member_id).unwrap();
    let leader = leader_of(&joins);
    // Only the follower syncs; it waits, then learns the round failed.
    let r = c.sync_group(sync_req("g", follower), 5).await;
    assert_eq!(r.error_code, REBALANCE);
    assert_eq!(heartbeat(&c, "g", leader, 4).await, UNKNOWN_MEMBER);
    let j = join(&c, rejoin_req("g", follower, 10_000), 5).await;
    assert_eq!(j.generation_id, 2);
    assert_eq!(j.members.len(), 1);
    c.shutdown().await;
}
