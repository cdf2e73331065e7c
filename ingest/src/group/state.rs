//! One classic group's membership state machine, after Apache Kafka's
//! `GroupMetadata` / `GroupCoordinator` (pre-KIP-848).
//!
//! ```text
//!            join (first member)              all joined / rebalance timeout
//!   Empty ───────────────────────► Preparing ──────────────────────────────► Completing
//!     ▲                            Rebalance ◄──── join, leave, expiry ────  Rebalance
//!     │ last member gone              ▲                                        │ leader's
//!     └───────────────────────────────┤                                        │ SyncGroup
//!                                     └──────── join, leave, expiry ─── Stable ◄┘
//!   Dead: removed (deleted or idle); requests that raced with removal see it.
//! ```
//!
//! No I/O and no clock reads: every method takes `now`, so the coordinator
//! decides when time passes. Waiting JoinGroup/SyncGroup requests are
//! `oneshot` senders parked on their member and completed here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info};

use super::GroupConfig;

/// Classic group states (the strings are Kafka's, shown by tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

pub(crate) struct JoinWaiter {
    pub tx: oneshot::Sender<JoinGroupResponse>,
    pub version: i16,
}

pub(crate) struct SyncWaiter {
    pub tx: oneshot::Sender<SyncGroupResponse>,
    pub version: i16,
}

pub(crate) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub assignment: Bytes,
    pub join_waiter: Option<JoinWaiter>,
    pub sync_waiter: Option<SyncWaiter>,
    pub last_heartbeat: Instant,
    /// Joined but not yet through a completed join phase.
    pub is_new: bool,
}

impl Member {
    pub(crate) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    pub(crate) fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// A JoinGroup error response shaped for `version`.
pub(crate) fn join_error(version: i16, member_id: &str, error: ResponseError) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.error_code = error.code();
    r.generation_id = -1;
    r.member_id = StrBytes::from_string(member_id.to_string());
    r.leader = StrBytes::new();
    // ProtocolName is nullable only from v7.
    r.protocol_name = if version >= 7 {
        None
    } else {
        Some(StrBytes::new())
    };
    r
}

pub(crate) fn sync_error(error: ResponseError) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default();
    r.error_code = error.code();
    r
}

pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id -> member id.
    pub static_members: HashMap<String, String>,
    /// KIP-394: member ids handed out with MEMBER_ID_REQUIRED, with the
    /// deadline by which they must join.
    pub pending_members: HashMap<String, Instant>,
    /// Members that got a JoinGroup response but have not sent SyncGroup.
    pub pending_sync: HashSet<String>,
    join_deadline: Option<Instant>,
    /// `Some(remaining)` while the initial (empty-group) delayed join runs.
    initial_delay_remaining: Option<Duration>,
    new_member_added: bool,
    sync_deadline: Option<Instant>,
}

impl Group {
    pub(crate) fn new(id: String) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            join_deadline: None,
            initial_delay_remaining: None,
            new_member_added: false,
            sync_deadline: None,
        }
    }

    /// Empty and nobody in the middle of joining: safe to forget.
    pub(crate) fn is_idle(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending_members.is_empty()
    }

    pub(crate) fn size(&self) -> usize {
        self.members.len() + self.pending_members.len()
    }

    /// A static member's instance id is registered to another member id.
    pub(crate) fn is_static_member_fenced(
        &self,
        instance_id: Option<&str>,
        member_id: &str,
    ) -> bool {
        instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|m| m != member_id)
    }

    /// Whether a member offering `protocols` can be in this group: the type
    /// matches and some protocol is supported by every other member.
    pub(crate) fn supports_protocols(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        except_member: Option<&str>,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self
            .members
            .values()
            .filter(|m| Some(m.id.as_str()) != except_member)
            .collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            others
                .iter()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Kafka's selection: among the protocols every member supports, each
    /// member votes for its most preferred one; most votes wins. Ties go to
    /// the leader's preference order.
    pub(crate) fn select_protocol(&self) -> Option<String> {
        let first = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .or_else(|| self.members.values().next())?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for m in self.members.values() {
            if let Some(idx) = m
                .protocols
                .iter()
                .find_map(|(p, _)| candidates.iter().position(|c| *c == p))
            {
                votes[idx] += 1;
            }
        }
        let mut best: Option<usize> = None;
        for (i, v) in votes.iter().enumerate() {
            if best.is_none_or(|b| *v > votes[b]) {
                best = Some(i);
            }
        }
        best.map(|i| candidates[i].clone())
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// The response a member gets for the current generation.
    pub(crate) fn join_success(
        &self,
        member_id: &str,
        version: i16,
        skip_assignment: bool,
    ) -> JoinGroupResponse {
        let mut r = JoinGroupResponse::default();
        r.generation_id = self.generation;
        r.member_id = StrBytes::from_string(member_id.to_string());
        r.leader = StrBytes::from_string(self.leader.clone().unwrap_or_default());
        let name = self.protocol_name.clone().unwrap_or_default();
        r.protocol_name = Some(StrBytes::from_string(name.clone()));
        if version >= 7 {
            r.protocol_type = self.protocol_type.clone().map(StrBytes::from_string);
        }
        if version >= 9 {
            r.skip_assignment = skip_assignment;
        }
        if self.leader.as_deref() == Some(member_id) {
            r.members = self
                .members
                .values()
                .map(|m| {
                    let mut jm = JoinGroupResponseMember::default();
                    jm.member_id = StrBytes::from_string(m.id.clone());
                    if version >= 5 {
                        jm.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
                    }
                    jm.metadata = m.metadata_for(&name);
                    jm
                })
                .collect();
        }
        r
    }

    /// Adds a member and starts (or joins) a rebalance.
    pub(crate) fn add_member(&mut self, member: Member, now: Instant, cfg: &GroupConfig) {
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        if let Some(i) = &member.instance_id {
            self.static_members.insert(i.clone(), member.id.clone());
        }
        if self.state == GroupState::PreparingRebalance && self.initial_delay_remaining.is_some() {
            self.new_member_added = true;
        }
        self.members.insert(member.id.clone(), member);
        self.rebalance_or_complete(now, cfg, "new member joined");
    }

    /// Updates a known member's protocols/timeouts and parks its join.
    pub(crate) fn update_member(
        &mut self,
        member_id: &str,
        protocols: Vec<(String, Bytes)>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        waiter: JoinWaiter,
        now: Instant,
    ) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.protocols = protocols;
            m.session_timeout = session_timeout;
            m.rebalance_timeout = rebalance_timeout;
            m.last_heartbeat = now;
            if let Some(old) = m.join_waiter.replace(waiter) {
                // A retried JoinGroup supersedes the earlier one.
                let _ = old.tx.send(join_error(
                    old.version,
                    member_id,
                    ResponseError::RebalanceInProgress,
                ));
            }
        }
    }

    /// After a member joined/updated: start a rebalance if the group is
    /// settled, or see whether the running one can complete.
    pub(crate) fn rebalance_or_complete(&mut self, now: Instant, cfg: &GroupConfig, reason: &str) {
        match self.state {
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, cfg, reason)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Dead => {}
        }
    }

    pub(crate) fn prepare_rebalance(&mut self, now: Instant, cfg: &GroupConfig, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            // The leader's assignment for this generation will never come:
            // tell members waiting in SyncGroup to rejoin.
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.tx.send(sync_error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let delay = cfg.initial_rebalance_delay;
        if self.state == GroupState::Empty && !delay.is_zero() {
            let remaining = self.rebalance_timeout().saturating_sub(delay);
            self.initial_delay_remaining = Some(remaining);
            self.new_member_added = false;
            self.join_deadline = Some(now + delay);
        } else {
            self.initial_delay_remaining = None;
            self.join_deadline = Some(now + self.rebalance_timeout());
        }
        info!(
            group = %self.id,
            generation = self.generation,
            reason,
            "preparing to rebalance"
        );
        self.state = GroupState::PreparingRebalance;
        self.pending_sync.clear();
        self.sync_deadline = None;
        self.try_complete_join(now);
    }

    pub(crate) fn try_complete_join(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay_remaining.is_none()
            && self.all_members_joined()
        {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: drops dynamic members that did not rejoin,
    /// bumps the generation and answers every parked JoinGroup.
    fn complete_join(&mut self, now: Instant) {
        let absent: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in absent {
            info!(group = %self.id, member = %id, "removing member that did not rejoin in time");
            self.detach_member(&id);
        }
        if !self.members.is_empty() && !self.elect_joined_leader() {
            // Only static members that have not rejoined remain: wait for
            // them (or for their sessions to expire) one more round.
            self.join_deadline = Some(now + self.rebalance_timeout());
            self.initial_delay_remaining = None;
            return;
        }
        self.generation = self.generation.saturating_add(1);
        self.join_deadline = None;
        self.initial_delay_remaining = None;
        self.new_member_added = false;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = self.protocol_name.as_deref().unwrap_or(""),
            "rebalance join phase complete"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let waiter = self.members.get_mut(&id).and_then(|m| {
                m.last_heartbeat = now;
                m.is_new = false;
                m.join_waiter.take()
            });
            if let Some(w) = waiter {
                let resp = self.join_success(&id, w.version, false);
                let _ = w.tx.send(resp);
            }
            self.pending_sync.insert(id);
        }
        self.sync_deadline = Some(now + self.rebalance_timeout());
    }

    /// Keeps the leader if it rejoined, else picks a member that did.
    fn elect_joined_leader(&mut self) -> bool {
        if let Some(l) = &self.leader {
            if self.members.get(l).is_some_and(|m| m.join_waiter.is_some()) {
                return true;
            }
        }
        match self.members.values().find(|m| m.join_waiter.is_some()) {
            Some(m) => {
                self.leader = Some(m.id.clone());
                true
            }
            None => false,
        }
    }

    /// Removes a member without touching the group state; answers its
    /// parked requests with UNKNOWN_MEMBER_ID.
    fn detach_member(&mut self, id: &str) -> Option<Member> {
        let mut m = self.members.remove(id)?;
        if let Some(w) = m.join_waiter.take() {
            let _ =
                w.tx.send(join_error(w.version, id, ResponseError::UnknownMemberId));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.tx.send(sync_error(ResponseError::UnknownMemberId));
        }
        if let Some(i) = &m.instance_id {
            if self.static_members.get(i).map(String::as_str) == Some(id) {
                self.static_members.remove(i);
            }
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
        Some(m)
    }

    /// Kafka's `removeMemberAndUpdateGroup`.
    pub(crate) fn remove_member(
        &mut self,
        id: &str,
        now: Instant,
        cfg: &GroupConfig,
        reason: &str,
    ) {
        if self.detach_member(id).is_none() {
            return;
        }
        info!(group = %self.id, member = %id, reason, "member removed");
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, cfg, reason)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Gives a static member a new member id (a restarted static consumer).
    /// The old incarnation's parked requests get FENCED_INSTANCE_ID.
    pub(crate) fn replace_static_member(&mut self, instance_id: &str, old_id: &str, new_id: &str) {
        let Some(mut m) = self.members.remove(old_id) else {
            return;
        };
        if let Some(w) = m.join_waiter.take() {
            let _ = w.tx.send(join_error(
                w.version,
                old_id,
                ResponseError::FencedInstanceId,
            ));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.tx.send(sync_error(ResponseError::FencedInstanceId));
        }
        m.id = new_id.to_string();
        self.members.insert(new_id.to_string(), m);
        self.static_members
            .insert(instance_id.to_string(), new_id.to_string());
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.to_string());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
    }

    /// Leader's SyncGroup in CompletingRebalance: store and hand out the
    /// assignment, go Stable.
    pub(crate) fn apply_assignment(&mut self, mut assignment: HashMap<String, Bytes>) {
        let protocol_type = self.protocol_type.clone();
        let protocol_name = self.protocol_name.clone();
        for m in self.members.values_mut() {
            m.assignment = assignment.remove(&m.id).unwrap_or_default();
            if let Some(w) = m.sync_waiter.take() {
                let resp = sync_success(w.version, &m.assignment, &protocol_type, &protocol_name);
                let _ = w.tx.send(resp);
            }
        }
        self.state = GroupState::Stable;
        info!(group = %self.id, generation = self.generation, "group is stable");
    }

    /// Fails every parked request (coordinator shutting down).
    pub(crate) fn fail_all_waiters(&mut self, error: ResponseError) {
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.tx.send(join_error(w.version, &m.id, error));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.tx.send(sync_error(error));
            }
        }
    }

    /// Fires expired timers; returns the next deadline, if any.
    pub(crate) fn on_tick(&mut self, now: Instant, cfg: &GroupConfig) -> Option<Instant> {
        // KIP-394 pending members that never came back.
        let expired: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            debug!(group = %self.id, member = %id, "pending member did not join in time");
            self.pending_members.remove(&id);
            self.try_complete_join(now);
        }

        // Session expiry. Members parked in JoinGroup/SyncGroup are waiting
        // on us, so they are kept alive (new members only up to a bound).
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                if m.join_waiter.is_some() {
                    m.is_new && m.last_heartbeat + cfg.new_member_join_timeout <= now
                } else if m.sync_waiter.is_some() {
                    false
                } else {
                    m.last_heartbeat + m.session_timeout <= now
                }
            })
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            self.remove_member(&id, now, cfg, "session timeout expired");
        }

        if self.join_deadline.is_some_and(|d| d <= now)
            && self.state == GroupState::PreparingRebalance
        {
            match self.initial_delay_remaining {
                Some(remaining) if self.new_member_added && !remaining.is_zero() => {
                    let delay = cfg.initial_rebalance_delay.min(remaining);
                    self.initial_delay_remaining = Some(remaining - delay);
                    self.new_member_added = false;
                    self.join_deadline = Some(now + delay);
                }
                _ => self.complete_join(now),
            }
        }

        if self.sync_deadline.is_some_and(|d| d <= now) {
            self.sync_deadline = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                let late: Vec<String> = self.pending_sync.drain().collect();
                for id in &late {
                    info!(group = %self.id, member = %id, "member did not send SyncGroup in time");
                    self.detach_member(id);
                }
                self.prepare_rebalance(now, cfg, "members missed SyncGroup");
            }
        }
        self.next_deadline(cfg)
    }

    fn next_deadline(&self, cfg: &GroupConfig) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |d: Instant| {
            next = Some(next.map_or(d, |n| n.min(d)));
        };
        self.pending_members
            .values()
            .copied()
            .for_each(&mut consider);
        if let Some(d) = self.join_deadline {
            consider(d);
        }
        if let Some(d) = self.sync_deadline {
            consider(d);
        }
        for m in self.members.values() {
            if m.join_waiter.is_some() {
                if m.is_new {
                    consider(m.last_heartbeat + cfg.new_member_join_timeout);
                }
            } else if m.sync_waiter.is_none() {
                consider(m.last_heartbeat + m.session_timeout);
            }
        }
        next
    }
}

pub(crate) fn sync_success(
    version: i16,
    assignment: &Bytes,
    protocol_type: &Option<String>,
    protocol_name: &Option<String>,
) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default();
    r.assignment = assignment.clone();
    if version >= 5 {
        r.protocol_type = protocol_type.clone().map(StrBytes::from_string);
        r.protocol_name = protocol_name.clone().map(StrBytes::from_string);
    }
    r
}
