//! [`GroupCoordinator`]: request handlers over the group state machines and
//! the offsets store, plus the timer task that drives expiry and delays.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::offsets::codec::{EntryRecord, Record};
use super::offsets::store::{self, OffsetStore, OffsetsMap, RecoveryReport, StoreConfig};
use super::state::{
    join_error, sync_error, sync_success, Group, GroupState, JoinWaiter, Member, SyncWaiter,
};
use super::{
    GroupConfig, GroupError, DELETE_GROUPS_VERSIONS, DESCRIBE_GROUPS_VERSIONS, HEARTBEAT_VERSIONS,
    JOIN_GROUP_VERSIONS, LEAVE_GROUP_VERSIONS, LIST_GROUPS_VERSIONS, OFFSET_COMMIT_VERSIONS,
    OFFSET_FETCH_VERSIONS, SYNC_GROUP_VERSIONS,
};

/// The timer task wakes at least this often, even with nothing scheduled.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// READ | DELETE | DESCRIBE (no ACLs yet: everything is authorized).
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);
/// The `group_type` ListGroups v5 reports for these groups.
const CLASSIC: &str = "classic";

/// Who sent a JoinGroup (from the request header and the connection); used
/// for member ids and DescribeGroups.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_host: String,
}

/// A group as [`GroupCoordinator::overview`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: usize,
}

/// What [`GroupCoordinator::group_summaries`] knows of one group.
struct GroupSummary {
    protocol_type: String,
    protocol: String,
    state: GroupState,
    members: usize,
}

/// One committed offset, for system tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// -1 when the client did not send one.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// The classic group coordinator of this broker. Cheap to share (`Arc`).
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: RwLock<HashMap<String, Arc<Mutex<Group>>>>,
    store: OffsetStore,
    recovery: RecoveryReport,
    timer: Arc<Notify>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    closed: AtomicBool,
}

fn in_range(version: i16, range: (i16, i16)) -> bool {
    version >= range.0 && version <= range.1
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The request's `group.instance.id`, for versions that carry it.
fn instance_id<S: std::ops::Deref<Target = str>>(
    id: &Option<S>,
    version: i16,
    since: i16,
) -> Option<&str> {
    id.as_deref().filter(|_| version >= since)
}

fn duration_ms(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl GroupCoordinator {
    /// Recovers the offsets log in `dir` (off the runtime), then starts the
    /// timer task, which stops when `cancel` (or [`Self::shutdown`]) fires.
    pub async fn open(
        dir: &Path,
        config: GroupConfig,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, GroupError> {
        let store_cfg = StoreConfig {
            compact_threshold_bytes: config.compact_threshold_bytes,
            fail_on_corruption: config.fail_on_corruption,
        };
        let d = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || OffsetStore::open(&d, store_cfg))
            .await
            .map_err(|e| GroupError::Recovery {
                reason: e.to_string(),
            })??;
        let coordinator = Arc::new(GroupCoordinator {
            config,
            groups: RwLock::new(HashMap::new()),
            store: opened.store,
            recovery: opened.report,
            timer: Arc::new(Notify::new()),
            tracker: TaskTracker::new(),
            cancel: cancel.child_token(),
            closed: AtomicBool::new(false),
        });
        coordinator.tracker.spawn(run_timers(
            Arc::downgrade(&coordinator),
            Arc::clone(&coordinator.timer),
            coordinator.cancel.clone(),
            opened.writer_exited,
        ));
        Ok(coordinator)
    }

    /// Stops the timer task, answers parked requests with
    /// COORDINATOR_NOT_AVAILABLE, and waits until queued offset writes are
    /// on disk and the writer has exited.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The tracker of this coordinator's background task.
    pub fn task_tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// What recovery of the offsets log found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The coordinator node id to return from FindCoordinator.
    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Marks the coordinator closed, fails parked requests, stops the writer.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let groups: Vec<_> = self.groups.read().values().cloned().collect();
        for g in groups {
            g.lock()
                .fail_all_waiters(ResponseError::CoordinatorNotAvailable);
        }
        self.store.close();
    }

    fn get_group(&self, id: &str) -> Option<Arc<Mutex<Group>>> {
        self.groups.read().get(id).cloned()
    }

    fn get_or_create_group(&self, id: &str) -> Arc<Mutex<Group>> {
        if let Some(g) = self.get_group(id) {
            return g;
        }
        let mut map = self.groups.write();
        Arc::clone(
            map.entry(id.to_string())
                .or_insert_with(|| Arc::new(Mutex::new(Group::new(id.to_string())))),
        )
    }

    /// Runs expired timers of all groups, forgets idle groups, and returns
    /// the earliest pending deadline.
    fn tick(&self, now: Instant) -> Option<Instant> {
        let groups: Vec<(String, Arc<Mutex<Group>>)> = self
            .groups
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let mut next: Option<Instant> = None;
        let mut idle = Vec::new();
        for (id, g) in groups {
            let mut g = g.lock();
            if let Some(d) = g.on_tick(now, &self.config) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            if g.is_idle() {
                idle.push(id);
            }
        }
        if !idle.is_empty() {
            let mut map = self.groups.write();
            for id in idle {
                if let Some(arc) = map.get(&id).cloned() {
                    let mut g = arc.lock();
                    if g.is_idle() {
                        g.state = GroupState::Dead;
                        drop(g);
                        map.remove(&id);
                        debug!(group = %id, "forgot idle empty group");
                    }
                }
            }
        }
        next
    }

    // ---------------------------------------------------------------- JoinGroup

    /// JoinGroup without client details (member ids are prefixed "member").
    pub async fn join_group(&self, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
        self.join_group_with_client(req, version, ClientInfo::default())
            .await
    }

    /// JoinGroup. Resolves when the join phase of the rebalance completes
    /// (or at once for errors and KIP-394's MEMBER_ID_REQUIRED).
    pub async fn join_group_with_client(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client: ClientInfo,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.as_str().to_string();
        let (tx, rx) = oneshot::channel();
        self.join_inner(req, version, client, tx);
        self.timer.notify_one();
        match rx.await {
            Ok(r) => r,
            Err(_) => join_error(version, &member_id, ResponseError::CoordinatorNotAvailable),
        }
    }

    fn join_inner(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client: ClientInfo,
        tx: oneshot::Sender<JoinGroupResponse>,
    ) {
        let member_id = req.member_id.as_str().to_string();
        let fail = |tx: oneshot::Sender<JoinGroupResponse>, e: ResponseError| {
            let _ = tx.send(join_error(version, &member_id, e));
        };
        if !in_range(version, JOIN_GROUP_VERSIONS) {
            return fail(tx, ResponseError::UnsupportedVersion);
        }
        let group_id = req.group_id.as_str().to_string();
        if group_id.is_empty() {
            return fail(tx, ResponseError::InvalidGroupId);
        }
        let session = duration_ms(req.session_timeout_ms);
        if req.session_timeout_ms < 0
            || session < self.config.min_session_timeout
            || session > self.config.max_session_timeout
        {
            return fail(tx, ResponseError::InvalidSessionTimeout);
        }
        let rebalance = if version == 0 || req.rebalance_timeout_ms < 0 {
            session
        } else {
            duration_ms(req.rebalance_timeout_ms)
        };
        let join = JoinParams {
            version,
            protocol_type: req.protocol_type.as_str().to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.as_str().to_string(), p.metadata.clone()))
                .collect(),
            instance_id: if version >= 5 {
                req.group_instance_id
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .filter(|s| !s.is_empty())
            } else {
                None
            },
            session,
            rebalance,
            client,
            now: Instant::now(),
        };

        if member_id.is_empty() {
            // A group removed as idle between lookup and lock is Dead: retry.
            for _ in 0..3 {
                let arc = self.get_or_create_group(&group_id);
                let mut g = arc.lock();
                if g.state == GroupState::Dead {
                    continue;
                }
                if self.is_closed() {
                    return fail(tx, ResponseError::CoordinatorNotAvailable);
                }
                return self.join_new_member(&mut g, join, tx);
            }
            return fail(tx, ResponseError::CoordinatorNotAvailable);
        }

        let Some(arc) = self.get_group(&group_id) else {
            return fail(tx, ResponseError::UnknownMemberId);
        };
        let mut g = arc.lock();
        if g.state == GroupState::Dead || self.is_closed() {
            return fail(tx, ResponseError::CoordinatorNotAvailable);
        }
        self.join_known_member(&mut g, member_id.clone(), join, tx);
    }

    fn new_member(&self, id: String, p: &JoinParams) -> Member {
        Member {
            id,
            instance_id: p.instance_id.clone(),
            client_id: p.client.client_id.clone(),
            client_host: p.client.client_host.clone(),
            protocol_type: p.protocol_type.clone(),
            protocols: p.protocols.clone(),
            session_timeout: p.session,
            rebalance_timeout: p.rebalance,
            assignment: Bytes::new(),
            join_waiter: None,
            sync_waiter: None,
            last_heartbeat: p.now,
            is_new: true,
        }
    }

    fn join_new_member(
        &self,
        g: &mut Group,
        p: JoinParams,
        tx: oneshot::Sender<JoinGroupResponse>,
    ) {
        let fail = |tx: oneshot::Sender<JoinGroupResponse>, e: ResponseError| {
            let _ = tx.send(join_error(p.version, "", e));
        };
        if !g.supports_protocols(&p.protocol_type, &p.protocols, None) {
            return fail(tx, ResponseError::InconsistentGroupProtocol);
        }
        let prefix = p
            .instance_id
            .clone()
            .or_else(|| Some(p.client.client_id.clone()).filter(|c| !c.is_empty()))
            .unwrap_or_else(|| "member".to_string());
        let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());

        if let Some(instance) = p.instance_id.clone() {
            if let Some(old_id) = g.static_members.get(&instance).cloned() {
                return self.rejoin_static_member(g, &instance, &old_id, new_id, p, tx);
            }
        }
        if g.size() >= self.config.max_group_size {
            return fail(tx, ResponseError::GroupMaxSizeReached);
        }
        if p.instance_id.is_none() && p.version >= 4 {
            // KIP-394: hand out the id; the member must come back with it.
            g.pending_members.insert(new_id.clone(), p.now + p.session);
            let _ = tx.send(join_error(
                p.version,
                &new_id,
                ResponseError::MemberIdRequired,
            ));
            return;
        }
        let mut m = self.new_member(new_id, &p);
        m.join_waiter = Some(JoinWaiter {
            tx,
            version: p.version,
        });
        g.add_member(m, p.now, &self.config);
    }

    /// A static member restarted: same instance id, new member id.
    fn rejoin_static_member(
        &self,
        g: &mut Group,
        instance: &str,
        old_id: &str,
        new_id: String,
        p: JoinParams,
        tx: oneshot::Sender<JoinGroupResponse>,
    ) {
        g.replace_static_member(instance, old_id, &new_id);
        let waiter = JoinWaiter {
            tx,
            version: p.version,
        };
        g.update_member(&new_id, p.protocols, p.session, p.rebalance, waiter, p.now);
        match g.state {
            GroupState::Stable => {
                let unchanged = g.select_protocol() == g.protocol_name;
                let is_leader = g.leader.as_deref() == Some(new_id.as_str());
                // KIP-814: a v9+ leader can be told to skip the assignment;
                // an older one must compute a fresh one, so rebalance.
                if unchanged && (!is_leader || p.version >= 9) {
                    let resp = g.join_success(&new_id, p.version, is_leader);
                    if let Some(m) = g.members.get_mut(&new_id) {
                        m.is_new = false;
                        if let Some(w) = m.join_waiter.take() {
                            let _ = w.tx.send(resp);
                        }
                    }
                } else {
                    g.prepare_rebalance(p.now, &self.config, "static member rejoined");
                }
            }
            GroupState::CompletingRebalance => {
                g.prepare_rebalance(p.now, &self.config, "static member rejoined")
            }
            _ => g.rebalance_or_complete(p.now, &self.config, "static member rejoined"),
        }
    }

    fn join_known_member(
        &self,
        g: &mut Group,
        member_id: String,
        p: JoinParams,
        tx: oneshot::Sender<JoinGroupResponse>,
    ) {
        let fail = |tx: oneshot::Sender<JoinGroupResponse>, e: ResponseError| {
            let _ = tx.send(join_error(p.version, &member_id, e));
        };
        if g.pending_members.contains_key(&member_id) {
            if !g.supports_protocols(&p.protocol_type, &p.protocols, None) {
                return fail(tx, ResponseError::InconsistentGroupProtocol);
            }
            g.pending_members.remove(&member_id);
            let mut m = self.new_member(member_id.clone(), &p);
            m.join_waiter = Some(JoinWaiter {
                tx,
                version: p.version,
            });
            g.add_member(m, p.now, &self.config);
            return;
        }
        if g.is_static_member_fenced(p.instance_id.as_deref(), &member_id) {
            return fail(tx, ResponseError::FencedInstanceId);
        }
        let Some(member) = g.members.get(&member_id) else {
            return fail(tx, ResponseError::UnknownMemberId);
        };
        if !g.supports_protocols(&p.protocol_type, &p.protocols, Some(&member_id)) {
            return fail(tx, ResponseError::InconsistentGroupProtocol);
        }
        let unchanged = member.matches(&p.protocols);
        let is_leader = g.leader.as_deref() == Some(member_id.as_str());
        let respond_now = match g.state {
            GroupState::CompletingRebalance => unchanged,
            GroupState::Stable => unchanged && !is_leader,
            GroupState::PreparingRebalance => false,
            GroupState::Empty | GroupState::Dead => {
                return fail(tx, ResponseError::UnknownMemberId);
            }
        };
        if respond_now {
            // Same metadata: the member lost our response; resend it.
            let resp = g.join_success(&member_id, p.version, false);
            if let Some(m) = g.members.get_mut(&member_id) {
                m.last_heartbeat = p.now;
            }
            let _ = tx.send(resp);
            return;
        }
        let waiter = JoinWaiter {
            tx,
            version: p.version,
        };
        g.update_member(
            &member_id,
            p.protocols,
            p.session,
            p.rebalance,
            waiter,
            p.now,
        );
        g.rebalance_or_complete(p.now, &self.config, "member rejoined");
    }

    // ---------------------------------------------------------------- SyncGroup

    /// SyncGroup. Followers wait until the leader's assignment arrives.
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let (tx, rx) = oneshot::channel();
        self.sync_inner(req, version, tx);
        self.timer.notify_one();
        rx.await
            .unwrap_or_else(|_| sync_error(ResponseError::CoordinatorNotAvailable))
    }

    fn sync_inner(
        &self,
        req: SyncGroupRequest,
        version: i16,
        tx: oneshot::Sender<SyncGroupResponse>,
    ) {
        let fail = |tx: oneshot::Sender<SyncGroupResponse>, e: ResponseError| {
            let _ = tx.send(sync_error(e));
        };
        if !in_range(version, SYNC_GROUP_VERSIONS) {
            return fail(tx, ResponseError::UnsupportedVersion);
        }
        let group_id = req.group_id.as_str();
        if group_id.is_empty() {
            return fail(tx, ResponseError::InvalidGroupId);
        }
        let Some(arc) = self.get_group(group_id) else {
            return fail(tx, ResponseError::UnknownMemberId);
        };
        let mut g = arc.lock();
        if g.state == GroupState::Dead || self.is_closed() {
            return fail(tx, ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let instance = instance_id(&req.group_instance_id, version, 3);
        if g.is_static_member_fenced(instance, member_id) {
            return fail(tx, ResponseError::FencedInstanceId);
        }
        if !g.members.contains_key(member_id) {
            return fail(tx, ResponseError::UnknownMemberId);
        }
        if req.generation_id != g.generation {
            return fail(tx, ResponseError::IllegalGeneration);
        }
        if let Some(t) = &req.protocol_type {
            if g.protocol_type.as_deref() != Some(t.as_str()) {
                return fail(tx, ResponseError::InconsistentGroupProtocol);
            }
        }
        if let Some(n) = &req.protocol_name {
            if g.protocol_name.as_deref() != Some(n.as_str()) {
                return fail(tx, ResponseError::InconsistentGroupProtocol);
            }
        }
        let now = Instant::now();
        match g.state {
            GroupState::Empty | GroupState::Dead => fail(tx, ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(tx, ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                g.pending_sync.remove(member_id);
                if let Some(m) = g.members.get_mut(member_id) {
                    m.last_heartbeat = now;
                    let old = m.sync_waiter.replace(SyncWaiter { tx, version });
                    if let Some(old) = old {
                        let _ = old.tx.send(sync_error(ResponseError::RebalanceInProgress));
                    }
                }
                if g.leader.as_deref() == Some(member_id) {
                    let assignment: HashMap<String, Bytes> = req
                        .assignments
                        .into_iter()
                        .map(|a| (a.member_id.as_str().to_string(), a.assignment))
                        .collect();
                    g.apply_assignment(assignment);
                }
            }
            GroupState::Stable => {
                g.pending_sync.remove(member_id);
                let (pt, pn) = (g.protocol_type.clone(), g.protocol_name.clone());
                if let Some(m) = g.members.get_mut(member_id) {
                    m.last_heartbeat = now;
                    let _ = tx.send(sync_success(version, &m.assignment, &pt, &pn));
                }
            }
        }
    }

    // ---------------------------------------------------------------- Heartbeat

    /// Heartbeat: keeps the session alive; REBALANCE_IN_PROGRESS tells the
    /// member to rejoin.
    pub async fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        let mut resp = HeartbeatResponse::default();
        resp.error_code = self.heartbeat_error(&req, version).map_or(0, |e| e.code());
        resp
    }

    fn heartbeat_error(&self, req: &HeartbeatRequest, version: i16) -> Option<ResponseError> {
        if !in_range(version, HEARTBEAT_VERSIONS) {
            return Some(ResponseError::UnsupportedVersion);
        }
        if req.group_id.is_empty() {
            return Some(ResponseError::InvalidGroupId);
        }
        let Some(arc) = self.get_group(req.group_id.as_str()) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let mut g = arc.lock();
        if g.state == GroupState::Dead || self.is_closed() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let instance = instance_id(&req.group_instance_id, version, 3);
        if g.is_static_member_fenced(instance, member_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        if !g.members.contains_key(member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        if req.generation_id != g.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        let state = g.state;
        if state == GroupState::Empty {
            return Some(ResponseError::UnknownMemberId);
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_heartbeat = Instant::now();
        }
        match state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    // ---------------------------------------------------------------- LeaveGroup

    /// LeaveGroup: v0-2 one member by id, v3+ a batch by id or instance id.
    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let mut resp = LeaveGroupResponse::default();
        let top = |mut resp: LeaveGroupResponse, e: ResponseError| {
            resp.error_code = e.code();
            resp
        };
        if !in_range(version, LEAVE_GROUP_VERSIONS) {
            return top(resp, ResponseError::UnsupportedVersion);
        }
        if req.group_id.is_empty() {
            return top(resp, ResponseError::InvalidGroupId);
        }
        let leaving: Vec<(String, Option<String>)> = if version <= 2 {
            vec![(req.member_id.as_str().to_string(), None)]
        } else {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.as_str().to_string(),
                        m.group_instance_id.as_ref().map(|s| s.as_str().to_string()),
                    )
                })
                .collect()
        };
        let mut results: Vec<(String, Option<String>, Option<ResponseError>)> = Vec::new();
        match self.get_group(req.group_id.as_str()) {
            None => {
                for (m, i) in leaving {
                    results.push((m, i, Some(ResponseError::UnknownMemberId)));
                }
            }
            Some(arc) => {
                let mut g = arc.lock();
                if g.state == GroupState::Dead || self.is_closed() {
                    return top(resp, ResponseError::CoordinatorNotAvailable);
                }
                let now = Instant::now();
                for (member_id, instance) in leaving {
                    let err = self.leave_one(&mut g, &member_id, instance.as_deref(), now);
                    results.push((member_id, instance, err));
                }
            }
        }
        self.timer.notify_one();
        if version <= 2 {
            let err = results.first().and_then(|r| r.2);
            resp.error_code = err.map_or(0, |e| e.code());
        } else {
            resp.members = results
                .into_iter()
                .map(|(m, i, e)| {
                    let mut r = MemberResponse::default();
                    r.member_id = s(&m);
                    r.group_instance_id = i.map(StrBytes::from_string);
                    r.error_code = e.map_or(0, |e| e.code());
                    r
                })
                .collect();
        }
        resp
    }

    fn leave_one(
        &self,
        g: &mut Group,
        member_id: &str,
        instance: Option<&str>,
        now: Instant,
    ) -> Option<ResponseError> {
        if member_id.is_empty() {
            // v3+: a static member removed by its instance id (admin API).
            let Some(id) = instance.and_then(|i| g.static_members.get(i).cloned()) else {
                return Some(ResponseError::UnknownMemberId);
            };
            g.remove_member(&id, now, &self.config, "static member left");
            return None;
        }
        if g.is_static_member_fenced(instance, member_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        if g.pending_members.remove(member_id).is_some() {
            g.try_complete_join(now);
            return None;
        }
        if !g.members.contains_key(member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        g.remove_member(member_id, now, &self.config, "member left the group");
        None
    }

    // ---------------------------------------------------------------- OffsetCommit

    /// OffsetCommit. Validation happens now; the returned future resolves
    /// after the offsets are fsynced (it does not borrow `self` or
    /// `topic_exists`, so it can be awaited anywhere).
    pub fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        version: i16,
        topic_exists: &dyn Fn(&str, i32) -> bool,
    ) -> impl Future<Output = OffsetCommitResponse> + Send + 'static {
        let mut resp = OffsetCommitResponse::default();
        let group_error = self.commit_group_error(&req, version);
        let mut entries = Vec::new();
        // (topic index, partition index) of each entry being written.
        let mut written = Vec::new();
        let ts = now_ms();
        for (ti, topic) in req.topics.iter().enumerate() {
            let mut rt = OffsetCommitResponseTopic::default();
            rt.name = topic.name.clone();
            for (pi, p) in topic.partitions.iter().enumerate() {
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default();
                let err = if let Some(e) = group_error {
                    Some(e)
                } else if !topic_exists(topic.name.as_str(), p.partition_index) {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else if metadata.len() > self.config.offset_metadata_max_bytes {
                    Some(ResponseError::OffsetMetadataTooLarge)
                } else {
                    None
                };
                if err.is_none() {
                    entries.push(EntryRecord {
                        topic: topic.name.as_str().to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: if version >= 6 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        commit_timestamp_ms: ts,
                        metadata,
                    });
                    written.push((ti, pi));
                }
                let mut rp = OffsetCommitResponsePartition::default();
                rp.partition_index = p.partition_index;
                rp.error_code = err.map_or(0, |e| e.code());
                rt.partitions.push(rp);
            }
            resp.topics.push(rt);
        }
        let pending = if entries.is_empty() {
            None
        } else {
            Some(
                self.store
                    .append(store::commit_records(req.group_id.as_str(), entries)),
            )
        };
        async move {
            if let Some(rx) = pending {
                let failure = match rx.await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("offsets writer exited".to_string()),
                };
                if let Some(reason) = failure {
                    warn!(%reason, "offset commit was not made durable");
                    let code = ResponseError::CoordinatorNotAvailable.code();
                    for (ti, pi) in written {
                        if let Some(p) = resp
                            .topics
                            .get_mut(ti)
                            .and_then(|t| t.partitions.get_mut(pi))
                        {
                            p.error_code = code;
                        }
                    }
                }
            }
            resp
        }
    }

    /// Kafka's group-level checks for a commit (`doCommitOffsets`).
    fn commit_group_error(&self, req: &OffsetCommitRequest, version: i16) -> Option<ResponseError> {
        if !in_range(version, OFFSET_COMMIT_VERSIONS) {
            return Some(ResponseError::UnsupportedVersion);
        }
        if self.is_closed() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let generation = req.generation_id_or_member_epoch;
        let Some(arc) = self.get_group(req.group_id.as_str()) else {
            // No group management: a simple consumer storing offsets.
            return (generation >= 0).then_some(ResponseError::IllegalGeneration);
        };
        let mut g = arc.lock();
        if g.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let instance = instance_id(&req.group_instance_id, version, 7);
        if g.is_static_member_fenced(instance, member_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        if generation < 0 && g.state == GroupState::Empty {
            return None;
        }
        if !g.members.contains_key(member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        match g.state {
            GroupState::CompletingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => {
                if let Some(m) = g.members.get_mut(member_id) {
                    m.last_heartbeat = Instant::now();
                }
                None
            }
        }
    }

    // ---------------------------------------------------------------- OffsetFetch

    /// OffsetFetch: v1-7 one group (`topics` null = all, v2+), v8+ the
    /// `groups` array. Partitions without a commit report offset -1.
    pub fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let mut resp = OffsetFetchResponse::default();
        if !in_range(version, OFFSET_FETCH_VERSIONS) {
            if (2..=7).contains(&version) {
                resp.error_code = ResponseError::UnsupportedVersion.code();
            }
            return resp;
        }
        let closed = self.is_closed();
        if version <= 7 {
            if closed {
                if version >= 2 {
                    resp.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
                return resp;
            }
            let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.as_str().to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let found = self.fetch_group(req.group_id.as_str(), wanted);
            resp.topics = found
                .into_iter()
                .map(|(topic, parts)| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = TopicName(s(&topic));
                    t.partitions = parts
                        .into_iter()
                        .map(|(partition, v)| {
                            let mut p = OffsetFetchResponsePartition::default();
                            p.partition_index = partition;
                            p.committed_offset = v.as_ref().map_or(-1, |v| v.offset);
                            if version >= 5 {
                                p.committed_leader_epoch =
                                    v.as_ref().map_or(-1, |v| v.leader_epoch);
                            }
                            p.metadata = Some(s(v.as_ref().map_or("", |v| v.metadata.as_str())));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
            return resp;
        }
        resp.groups = req
            .groups
            .iter()
            .map(|rg| {
                let mut g = OffsetFetchResponseGroup::default();
                g.group_id = rg.group_id.clone();
                if closed {
                    g.error_code = ResponseError::CoordinatorNotAvailable.code();
                    return g;
                }
                let wanted = rg.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.as_str().to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                g.topics = self
                    .fetch_group(rg.group_id.as_str(), wanted)
                    .into_iter()
                    .map(|(topic, parts)| {
                        let mut t = OffsetFetchResponseTopics::default();
                        t.name = TopicName(s(&topic));
                        t.partitions = parts
                            .into_iter()
                            .map(|(partition, v)| {
                                let mut p = OffsetFetchResponsePartitions::default();
                                p.partition_index = partition;
                                p.committed_offset = v.as_ref().map_or(-1, |v| v.offset);
                                p.committed_leader_epoch =
                                    v.as_ref().map_or(-1, |v| v.leader_epoch);
                                p.metadata =
                                    Some(s(v.as_ref().map_or("", |v| v.metadata.as_str())));
                                p
                            })
                            .collect();
                        t
                    })
                    .collect();
                g
            })
            .collect();
        resp
    }

    /// Looks up `wanted` partitions (or everything, for `None`).
    #[allow(clippy::type_complexity)]
    fn fetch_group(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<(i32, Option<store::OffsetValue>)>)> {
        self.store.read(|map: &OffsetsMap| {
            let parts = map.get(group);
            match wanted {
                Some(topics) => topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let found = partitions
                            .into_iter()
                            .map(|p| {
                                let v = parts.and_then(|m| m.get(&(topic.clone(), p))).cloned();
                                (p, v)
                            })
                            .collect();
                        (topic, found)
                    })
                    .collect(),
                None => {
                    let mut by_topic: BTreeMap<String, Vec<(i32, Option<store::OffsetValue>)>> =
                        BTreeMap::new();
                    for ((topic, p), v) in parts.into_iter().flatten() {
                        by_topic
                            .entry(topic.clone())
                            .or_default()
                            .push((*p, Some(v.clone())));
                    }
                    by_topic.into_iter().collect()
                }
            }
        })
    }

    /// Every committed offset, sorted by group, topic, partition.
    pub fn committed_offsets(&self) -> Vec<CommittedOffset> {
        let mut out: Vec<CommittedOffset> = self.store.read(|map| {
            map.iter()
                .flat_map(|(group, parts)| {
                    parts
                        .iter()
                        .map(move |((topic, partition), v)| CommittedOffset {
                            group: group.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                            offset: v.offset,
                            leader_epoch: v.leader_epoch,
                            metadata: v.metadata.clone(),
                            commit_timestamp_ms: v.commit_timestamp_ms,
                        })
                })
                .collect()
        });
        out.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        out
    }

    /// Every known group for tools and system tables, sorted by id.
    pub fn overview(&self) -> Vec<GroupOverview> {
        self.group_summaries()
            .into_iter()
            .map(|(group_id, g)| GroupOverview {
                group_id,
                state: g.state.as_str().to_string(),
                protocol_type: g.protocol_type,
                protocol: g.protocol,
                members: g.members,
            })
            .collect()
    }

    // ---------------------------------------------------------------- List/Describe

    /// Live groups, plus groups known only by their committed offsets
    /// (reported Empty, like Kafka after a restart).
    fn group_summaries(&self) -> BTreeMap<String, GroupSummary> {
        let mut out = BTreeMap::new();
        let groups: Vec<_> = self.groups.read().values().cloned().collect();
        for g in groups {
            let g = g.lock();
            if g.state != GroupState::Dead {
                out.insert(
                    g.id.clone(),
                    GroupSummary {
                        protocol_type: g.protocol_type.clone().unwrap_or_default(),
                        protocol: g.protocol_name.clone().unwrap_or_default(),
                        state: g.state,
                        members: g.members.len(),
                    },
                );
            }
        }
        self.store.read(|map| {
            for (id, parts) in map {
                if !parts.is_empty() {
                    out.entry(id.clone()).or_insert(GroupSummary {
                        protocol_type: String::new(),
                        protocol: String::new(),
                        state: GroupState::Empty,
                        members: 0,
                    });
                }
            }
        });
        out
    }

    /// ListGroups (v4+ states filter, v5+ types filter).
    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let mut resp = ListGroupsResponse::default();
        if !in_range(version, LIST_GROUPS_VERSIONS) {
            resp.error_code = ResponseError::UnsupportedVersion.code();
            return resp;
        }
        if self.is_closed() {
            resp.error_code = ResponseError::CoordinatorNotAvailable.code();
            return resp;
        }
        let states: Vec<String> = if version >= 4 {
            req.states_filter
                .iter()
                .map(|s| s.as_str().to_ascii_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        if version >= 5
            && !req.types_filter.is_empty()
            && !req
                .types_filter
                .iter()
                .any(|t| t.as_str().eq_ignore_ascii_case(CLASSIC))
        {
            return resp;
        }
        resp.groups = self
            .group_summaries()
            .into_iter()
            .filter(|(_, g)| {
                states.is_empty() || states.contains(&g.state.as_str().to_ascii_lowercase())
            })
            .map(
                |(
                    id,
                    GroupSummary {
                        protocol_type,
                        state: st,
                        ..
                    },
                )| {
                    let mut lg = ListedGroup::default();
                    lg.group_id = GroupId(s(&id));
                    lg.protocol_type = s(&protocol_type);
                    if version >= 4 {
                        lg.group_state = s(st.as_str());
                    }
                    if version >= 5 {
                        lg.group_type = s(CLASSIC);
                    }
                    lg
                },
            )
            .collect();
        resp
    }

    /// DescribeGroups. Unknown groups are reported as `Dead` with no error,
    /// as Kafka does before v6.
    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let mut resp = DescribeGroupsResponse::default();
        let supported = in_range(version, DESCRIBE_GROUPS_VERSIONS);
        let closed = self.is_closed();
        resp.groups = req
            .groups
            .iter()
            .map(|id| {
                let mut d = DescribedGroup::default();
                d.group_id = id.clone();
                if !supported || closed {
                    d.error_code = if supported {
                        ResponseError::CoordinatorNotAvailable.code()
                    } else {
                        ResponseError::UnsupportedVersion.code()
                    };
                    return d;
                }
                if version >= 3 && req.include_authorized_operations {
                    d.authorized_operations = GROUP_AUTHORIZED_OPERATIONS;
                }
                let live = self.get_group(id.as_str());
                let described = live.is_some_and(|arc| {
                    let g = arc.lock();
                    if g.state == GroupState::Dead {
                        return false;
                    }
                    self.describe_live(&g, version, &mut d);
                    true
                });
                if !described {
                    let has_offsets = self
                        .store
                        .read(|m| m.get(id.as_str()).is_some_and(|p| !p.is_empty()));
                    d.group_state = s(if has_offsets { "Empty" } else { "Dead" });
                }
                d
            })
            .collect();
        resp
    }

    fn describe_live(&self, g: &Group, version: i16, d: &mut DescribedGroup) {
        let stable = g.state == GroupState::Stable;
        d.group_state = s(g.state.as_str());
        d.protocol_type = s(g.protocol_type.as_deref().unwrap_or(""));
        let protocol = if stable {
            g.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        d.protocol_data = s(&protocol);
        d.members = g
            .members
            .values()
            .map(|m| {
                let mut dm = DescribedGroupMember::default();
                dm.member_id = s(&m.id);
                if version >= 4 {
                    dm.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
                }
                dm.client_id = s(&m.client_id);
                dm.client_host = s(&m.client_host);
                if stable {
                    dm.member_metadata = m.metadata_for(&protocol);
                    dm.member_assignment = m.assignment.clone();
                }
                dm
            })
            .collect();
    }

    // ---------------------------------------------------------------- DeleteGroups

    /// DeleteGroups: only Empty groups; their offsets are removed by a
    /// durable tombstone before the future resolves.
    pub fn delete_groups(
        &self,
        req: DeleteGroupsRequest,
        version: i16,
    ) -> impl Future<Output = DeleteGroupsResponse> + Send + 'static {
        let mut resp = DeleteGroupsResponse::default();
        let supported = in_range(version, DELETE_GROUPS_VERSIONS);
        let mut tombstones = Vec::new();
        let mut deleted = Vec::new();
        for id in &req.groups_names {
            let mut r = DeletableGroupResult::default();
            r.group_id = id.clone();
            let err = if !supported {
                Some(ResponseError::UnsupportedVersion)
            } else if self.is_closed() {
                Some(ResponseError::CoordinatorNotAvailable)
            } else {
                self.delete_one(id.as_str())
            };
            r.error_code = err.map_or(0, |e| e.code());
            if err.is_none() {
                tombstones.push(Record::Tombstone {
                    group: id.as_str().to_string(),
                });
                deleted.push(resp.results.len());
            }
            resp.results.push(r);
        }
        let pending = (!tombstones.is_empty()).then(|| self.store.append(tombstones));
        async move {
            if let Some(rx) = pending {
                if !matches!(rx.await, Ok(Ok(()))) {
                    for i in deleted {
                        if let Some(r) = resp.results.get_mut(i) {
                            r.error_code = ResponseError::CoordinatorNotAvailable.code();
                        }
                    }
                }
            }
            resp
        }
    }

    fn delete_one(&self, id: &str) -> Option<ResponseError> {
        let mut map = self.groups.write();
        if let Some(arc) = map.get(id).cloned() {
            let mut g = arc.lock();
            match g.state {
                GroupState::Dead => return Some(ResponseError::GroupIdNotFound),
                _ if !g.is_idle() => return Some(ResponseError::NonEmptyGroup),
                _ => {
                    g.state = GroupState::Dead;
                    drop(g);
                    map.remove(id);
                    return None;
                }
            }
        }
        drop(map);
        let has_offsets = self.store.read(|m| m.contains_key(id));
        if has_offsets {
            None
        } else {
            Some(ResponseError::GroupIdNotFound)
        }
    }
}

struct JoinParams {
    version: i16,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    instance_id: Option<String>,
    session: Duration,
    rebalance: Duration,
    client: ClientInfo,
    now: Instant,
}

/// The coordinator's background task: fires group timers at their
/// deadlines, and on cancellation (or when the coordinator is dropped)
/// fails parked requests and waits for the offsets writer to drain.
async fn run_timers(
    coordinator: Weak<GroupCoordinator>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
    writer_exited: oneshot::Receiver<()>,
) {
    loop {
        let next = {
            let Some(c) = coordinator.upgrade() else {
                break;
            };
            c.tick(Instant::now())
        };
        let idle = Instant::now() + IDLE_TICK;
        let until = next.map_or(idle, |n| n.min(idle));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
    if let Some(c) = coordinator.upgrade() {
        c.close();
    }
    let _ = writer_exited.await;
}
