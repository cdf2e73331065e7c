//! `sediment group list|describe|reset`: consumer groups, like Kafka's
//! `kafka-consumer-groups.sh`.
//!
//! ```text
//!  list      ListGroups to every broker ──► group ids
//!  describe  FindCoordinator ─► DescribeGroups (state, members, assignments)
//!            OffsetFetch (all committed offsets) ─► ListOffsets (log end)
//!            ──► state table + per-partition offsets, log end offset, lag
//!  reset     the same lookups ─► new offsets from ListOffsets (earliest,
//!            latest, by time) or from the committed ones (--to-offset,
//!            --shift-by, clamped to the log) ─► plan ─► OffsetCommit
//!            (only with --execute)
//! ```
//!
//! A reset commits the way Kafka's admin tool does for an inactive group:
//! generation id -1 and an empty member id. It refuses, dry run included,
//! while the group has members (any state but `Empty` or `Dead`): they
//! would overwrite the new offsets with their next commit. If a consumer
//! joins between that check and the commit, the coordinator rejects the
//! commit (UNKNOWN_MEMBER_ID), and that is reported the same way.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, ensure, Result};
use clap::{ArgGroup, Args, Subcommand};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::client::{check, error_name, Client, PartitionInfo};
use super::consume::parse_time;

/// `sediment group ...`
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// List consumer group ids, one per line.
    List,
    /// Show a group's state and, per partition, its committed offset, the
    /// log end offset and the lag.
    Describe(DescribeArgs),
    /// Move a group's committed offsets: prints the plan, and commits it
    /// with --execute. The group must have no active members.
    Reset(ResetArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Group id.
    pub group: String,
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["topics", "all_topics"])))]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// Topic to reset: all its partitions (`orders`) or some (`orders:0,2`).
    /// Repeatable.
    #[arg(long = "topic", value_name = "TOPIC[:P,...]", value_parser = parse_topic_spec)]
    pub topics: Vec<TopicSpec>,
    /// Reset every partition the group has a committed offset for (as
    /// Kafka's `--all-topics`).
    #[arg(long)]
    pub all_topics: bool,
    #[command(flatten)]
    pub to: ResetTo,
    /// Commit the new offsets. Without it, only print the plan.
    #[arg(long)]
    pub execute: bool,
    /// Only print the plan (the default).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
}

/// Where to move the offsets; exactly one.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// To the first record at or after this time (RFC 3339, e.g.
    /// `2024-05-01T12:00:00Z`, or epoch milliseconds); to the log end if
    /// there is none.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to_time: Option<i64>,
    /// To the log start offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the log end offset.
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (clamped to the log's range).
    #[arg(long, value_name = "OFFSET", value_parser = clap::value_parser!(i64).range(0..))]
    pub to_offset: Option<i64>,
    /// By N from the committed offset, back if negative (clamped to the
    /// log's range).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
}

/// A `--topic` argument: a topic and, optionally, some of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: String,
    /// `None`: all partitions.
    pub partitions: Option<Vec<i32>>,
}

/// Parses `TOPIC` or `TOPIC:P[,P...]`.
pub fn parse_topic_spec(s: &str) -> Result<TopicSpec, String> {
    let (topic, partitions) = match s.split_once(':') {
        None => (s, None),
        Some((t, ps)) => {
            let parsed = ps
                .split(',')
                .map(|p| match p.trim().parse::<i32>() {
                    Ok(n) if n >= 0 => Ok(n),
                    _ => Err(format!(
                        "'{p}' in '{s}' is not a partition number (expected TOPIC:P[,P...])"
                    )),
                })
                .collect::<Result<Vec<i32>, String>>()?;
            (t, Some(parsed))
        }
    };
    if topic.trim().is_empty() {
        return Err(format!("'{s}' names no topic (expected TOPIC[:P,...])"));
    }
    Ok(TopicSpec {
        topic: topic.to_owned(),
        partitions,
    })
}

/// What to move the offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Time(i64),
    Earliest,
    Latest,
    Offset(i64),
    ShiftBy(i64),
}

impl ResetTo {
    fn target(&self) -> Result<Target> {
        let mut chosen = Vec::new();
        if let Some(t) = self.to_time {
            chosen.push(Target::Time(t));
        }
        if self.to_earliest {
            chosen.push(Target::Earliest);
        }
        if self.to_latest {
            chosen.push(Target::Latest);
        }
        if let Some(o) = self.to_offset {
            chosen.push(Target::Offset(o));
        }
        if let Some(n) = self.shift_by {
            chosen.push(Target::ShiftBy(n));
        }
        match chosen.as_slice() {
            [one] => Ok(*one),
            _ => bail!(
                "give exactly one of --to-time, --to-earliest, --to-latest, --to-offset, --shift-by"
            ),
        }
    }
}

/// Runs a `group` subcommand against the broker at `bootstrap`.
pub async fn run(args: GroupArgs, bootstrap: &str) -> Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    match args.command {
        GroupCommand::List => list(&mut client).await,
        GroupCommand::Describe(a) => describe(&mut client, &a.group).await,
        GroupCommand::Reset(a) => reset(&mut client, a).await,
    }
}

fn group_id(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_owned()))
}

/// ListGroups to every broker in the cluster (each lists the groups it
/// coordinates), merged and sorted.
async fn list(client: &mut Client) -> Result<()> {
    let no_topics: &[String] = &[];
    let metadata = client.metadata(Some(no_topics)).await?;
    let mut nodes: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    if nodes.is_empty() {
        // No broker list: the bootstrap broker is all we know.
        nodes.push(-1);
    }
    let mut ids = BTreeSet::new();
    for node in nodes {
        let response = client
            .broker(node)
            .await?
            .send(&ListGroupsRequest::default())
            .await?;
        check(response.error_code, None, "ListGroups")?;
        ids.extend(
            response
                .groups
                .into_iter()
                .map(|g| g.group_id.0.to_string()),
        );
    }
    let mut out = String::new();
    for id in ids {
        out.push_str(&id);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// What the coordinator knows about a group.
struct GroupView {
    coordinator: (i32, String),
    described: DescribedGroup,
    /// Committed offsets by (topic, partition); partitions without a commit
    /// are absent.
    committed: BTreeMap<(String, i32), i64>,
}

impl GroupView {
    fn state(&self) -> &str {
        self.described.group_state.as_str()
    }

    /// A group that exists neither as members nor as committed offsets.
    fn is_missing(&self) -> bool {
        self.state() == "Dead" && self.committed.is_empty()
    }
}

async fn look_up(client: &mut Client, group: &str) -> Result<GroupView> {
    let coordinator = client.find_coordinator(group).await?;
    let described = describe_group(client, &coordinator, group).await?;
    let committed = committed_offsets(client, &coordinator, group).await?;
    Ok(GroupView {
        coordinator,
        described,
        committed,
    })
}

async fn describe_group(
    client: &mut Client,
    (node, addr): &(i32, String),
    group: &str,
) -> Result<DescribedGroup> {
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let response = client
        .connection_to(*node, addr)
        .await?
        .send(&request)
        .await?;
    let d = response
        .groups
        .into_iter()
        .find(|g| g.group_id.0.as_str() == group)
        .ok_or_else(|| anyhow!("DescribeGroups response does not mention group '{group}'"))?;
    // DescribeGroups v6+ reports an unknown group as an error; older
    // versions (and Kafka's tool) call it Dead.
    if d.error_code == ResponseError::GroupIdNotFound.code() {
        return Ok(DescribedGroup::default()
            .with_group_id(group_id(group))
            .with_group_state(StrBytes::from_static_str("Dead")));
    }
    check(
        d.error_code,
        d.error_message.as_ref(),
        format_args!("DescribeGroups for group '{group}'"),
    )?;
    Ok(d)
}

/// All of `group`'s committed offsets (OffsetFetch with no topic list).
async fn committed_offsets(
    client: &mut Client,
    (node, addr): &(i32, String),
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>> {
    let conn = client.connection_to(*node, addr).await?;
    let version = conn.version_for::<OffsetFetchRequest>()?;
    ensure!(
        version >= 2,
        "the coordinator at {addr} speaks OffsetFetch only up to v{version}; \
         listing all of a group's offsets needs v2"
    );
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let response = conn.send_version(&request, version).await?;
    check(
        response.error_code,
        None,
        format_args!("OffsetFetch for group '{group}'"),
    )?;
    let mut out = BTreeMap::new();
    for t in response.topics {
        let topic = t.name.0.to_string();
        for p in t.partitions {
            check(
                p.error_code,
                None,
                format_args!(
                    "OffsetFetch for group '{group}', {topic}-{}",
                    p.partition_index
                ),
            )?;
            if p.committed_offset >= 0 {
                out.insert((topic.clone(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// The partitions a consumer-protocol member is assigned, from the
/// assignment bytes DescribeGroups returns (Kafka's `ConsumerProtocol`
/// layout: a version, then `[topic [partition]] user_data`; versions 0 to
/// 3 share it, and newer ones are read as 3, as Kafka does). Every array
/// length is checked against the bytes left before anything is allocated.
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<(String, i32)>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8]> {
            ensure!(self.0.len() >= n, "assignment is truncated");
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn i16(&mut self) -> Result<i16> {
            let b = self.take(2)?;
            Ok(i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Result<i32> {
            let b = self.take(4)?;
            Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        /// An array length whose `min_entry_bytes`-byte entries fit in what
        /// is left.
        fn count(&mut self, min_entry_bytes: usize) -> Result<usize> {
            let n = self.i32()?;
            let n = usize::try_from(n).map_err(|_| anyhow!("negative array length {n}"))?;
            ensure!(
                n.saturating_mul(min_entry_bytes) <= self.0.len(),
                "array of {n} entries does not fit in {} bytes",
                self.0.len()
            );
            Ok(n)
        }
    }
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader(bytes);
    let version = r.i16()?;
    ensure!(version >= 0, "assignment has negative version {version}");
    let mut out = Vec::new();
    // Each topic entry: a string length (2) and a partition count (4).
    for _ in 0..r.count(6)? {
        let len = r.i16()?;
        let len = usize::try_from(len).map_err(|_| anyhow!("null topic name"))?;
        let topic = std::str::from_utf8(r.take(len)?)
            .map_err(|_| anyhow!("topic name is not UTF-8"))?
            .to_owned();
        for _ in 0..r.count(4)? {
            out.push((topic.clone(), r.i32()?));
        }
    }
    Ok(out)
}

/// Log end offsets of every partition of `topic`.
async fn log_end(client: &mut Client, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let infos = client.topic_partitions(topic).await?;
    client.list_offsets(topic, &infos, -1).await
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            if let Some(w) = widths.get(i) {
                l.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.len())));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn or_dash(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn non_empty_or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

async fn describe(client: &mut Client, group: &str) -> Result<()> {
    let view = look_up(client, group).await?;
    ensure!(
        !view.is_missing(),
        "consumer group '{group}' does not exist"
    );
    let d = &view.described;

    // Who consumes what, for groups using the consumer protocol.
    let mut owners: BTreeMap<(String, i32), usize> = BTreeMap::new();
    if d.protocol_type.as_str() == "consumer" {
        for (i, m) in d.members.iter().enumerate() {
            match decode_assignment(&m.member_assignment) {
                Ok(parts) => owners.extend(parts.into_iter().map(|tp| (tp, i))),
                Err(e) => tracing::debug!(
                    member = m.member_id.as_str(),
                    "unreadable assignment: {e:#}"
                ),
            }
        }
    }
    let mut keys: BTreeSet<(String, i32)> = view.committed.keys().cloned().collect();
    keys.extend(owners.keys().cloned());

    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for topic in keys.iter().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>() {
        match log_end(client, &topic).await {
            Ok(latest) => {
                ends.insert(topic, latest);
            }
            Err(e) => eprintln!("warning: no log end offsets for topic '{topic}': {e:#}"),
        }
    }

    let (node, addr) = &view.coordinator;
    let mut out = render_table(
        &[
            "GROUP",
            "COORDINATOR (ID)",
            "ASSIGNMENT-STRATEGY",
            "STATE",
            "#MEMBERS",
        ],
        &[vec![
            group.to_owned(),
            format!("{addr} ({node})"),
            non_empty_or_dash(d.protocol_data.as_str()),
            view.state().to_owned(),
            d.members.len().to_string(),
        ]],
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key @ (topic, partition)| {
            let committed = view.committed.get(key).copied();
            let end = ends.get(topic).and_then(|m| m.get(partition)).copied();
            let lag = committed.zip(end).map(|(c, e)| e.saturating_sub(c).max(0));
            let member = owners.get(key).and_then(|&i| d.members.get(i));
            let field = |f: fn(&DescribedGroupMember) -> &StrBytes| {
                member.map_or_else(|| "-".to_owned(), |m| non_empty_or_dash(f(m).as_str()))
            };
            vec![
                group.to_owned(),
                topic.clone(),
                partition.to_string(),
                or_dash(committed),
                or_dash(end),
                or_dash(lag),
                field(|m| &m.member_id),
                field(|m| &m.client_host),
                field(|m| &m.client_id),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &rows,
    ));
    print!("{out}");
    if d.members.is_empty() {
        eprintln!("Consumer group '{group}' has no active members.");
    }
    Ok(())
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    topic: String,
    partition: i32,
    current: Option<i64>,
    new: i64,
}

/// `offset` clamped to `[earliest, latest]`, warning on stderr when it moves.
fn clamp(topic: &str, partition: i32, offset: i64, earliest: i64, latest: i64) -> i64 {
    if offset < earliest {
        eprintln!(
            "warning: {topic}-{partition}: offset {offset} is below the log start offset \
             {earliest}; using {earliest}"
        );
        earliest
    } else if offset > latest {
        eprintln!(
            "warning: {topic}-{partition}: offset {offset} is past the log end offset \
             {latest}; using {latest}"
        );
        latest
    } else {
        offset
    }
}

/// The partitions to reset, by topic.
async fn selected_partitions(
    client: &mut Client,
    args: &ResetArgs,
    view: &GroupView,
) -> Result<BTreeMap<String, Vec<PartitionInfo>>> {
    let mut wanted: BTreeMap<String, Option<BTreeSet<i32>>> = BTreeMap::new();
    if args.all_topics {
        ensure!(
            !view.committed.is_empty(),
            "consumer group '{}' has no committed offsets; name topics with --topic",
            args.group
        );
        for (t, p) in view.committed.keys() {
            if let Some(set) = wanted.entry(t.clone()).or_insert(Some(BTreeSet::new())) {
                set.insert(*p);
            }
        }
    }
    for spec in &args.topics {
        let entry = wanted
            .entry(spec.topic.clone())
            .or_insert(Some(BTreeSet::new()));
        match (entry, &spec.partitions) {
            (Some(set), Some(ps)) => set.extend(ps.iter().copied()),
            (e, _) => *e = None,
        }
    }
    let mut out = BTreeMap::new();
    for (topic, parts) in wanted {
        let infos = client.topic_partitions(&topic).await?;
        let chosen: Vec<PartitionInfo> = match parts {
            None => infos,
            Some(ps) => {
                let mut chosen = Vec::new();
                for p in ps {
                    let info = infos.iter().find(|i| i.partition == p).ok_or_else(|| {
                        anyhow!(
                            "topic '{topic}' has no partition {p} (it has {})",
                            infos.len()
                        )
                    })?;
                    chosen.push(*info);
                }
                chosen
            }
        };
        out.insert(topic, chosen);
    }
    Ok(out)
}

/// New offsets for `partitions` of `topic`.
async fn plan_topic(
    client: &mut Client,
    topic: &str,
    partitions: &[PartitionInfo],
    target: Target,
    committed: &BTreeMap<(String, i32), i64>,
) -> Result<Vec<Move>> {
    let earliest = client.list_offsets(topic, partitions, -2).await?;
    let latest = client.list_offsets(topic, partitions, -1).await?;
    let by_time = match target {
        Target::Time(t) => Some(client.list_offsets(topic, partitions, t).await?),
        _ => None,
    };
    let mut moves = Vec::with_capacity(partitions.len());
    for info in partitions {
        let p = info.partition;
        let current = committed.get(&(topic.to_owned(), p)).copied();
        let lo = earliest.get(&p).copied().unwrap_or(0);
        let hi = latest.get(&p).copied().unwrap_or(lo);
        let new = match target {
            Target::Earliest => lo,
            Target::Latest => hi,
            // No record at or after the time: the log end, as Kafka does.
            Target::Time(_) => match by_time.as_ref().and_then(|m| m.get(&p)) {
                Some(&o) if o >= 0 => o,
                _ => hi,
            },
            Target::Offset(o) => clamp(topic, p, o, lo, hi),
            Target::ShiftBy(n) => {
                let Some(c) = current else {
                    bail!(
                        "cannot shift {topic}-{p}: the group has no committed offset there \
                         (use --to-earliest, --to-latest, --to-offset or --to-time)"
                    );
                };
                clamp(topic, p, c.saturating_add(n), lo, hi)
            }
        };
        moves.push(Move {
            topic: topic.to_owned(),
            partition: p,
            current,
            new,
        });
    }
    Ok(moves)
}

/// Error codes with which a coordinator refuses an admin commit because
/// the group has (gained) members.
fn means_group_active(code: i16) -> bool {
    [
        ResponseError::UnknownMemberId,
        ResponseError::IllegalGeneration,
        ResponseError::RebalanceInProgress,
    ]
    .iter()
    .any(|e| e.code() == code)
}

async fn commit(client: &mut Client, view: &GroupView, group: &str, moves: &[Move]) -> Result<()> {
    let mut by_topic: BTreeMap<&str, Vec<&Move>> = BTreeMap::new();
    for m in moves {
        by_topic.entry(m.topic.as_str()).or_default().push(m);
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_group_instance_id(None)
        .with_retention_time_ms(-1)
        .with_topics(
            by_topic
                .iter()
                .map(|(topic, ms)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string((*topic).to_owned())))
                        .with_partitions(
                            ms.iter()
                                .map(|m| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(m.partition)
                                        .with_committed_offset(m.new)
                                        .with_committed_leader_epoch(-1)
                                        .with_committed_metadata(Some(StrBytes::from_static_str(
                                            "",
                                        )))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let (node, addr) = &view.coordinator;
    let response = client
        .connection_to(*node, addr)
        .await?
        .send(&request)
        .await?;
    let mut acknowledged = BTreeSet::new();
    for t in &response.topics {
        for p in &t.partitions {
            if means_group_active(p.error_code) {
                bail!(
                    "consumer group '{group}' became active during the reset ({}); \
                     stop its consumers and run the reset again",
                    error_name(p.error_code)
                );
            }
            check(
                p.error_code,
                None,
                format_args!(
                    "OffsetCommit for group '{group}', {}-{}",
                    t.name.0.as_str(),
                    p.partition_index
                ),
            )?;
            acknowledged.insert((t.name.0.as_str(), p.partition_index));
        }
    }
    for m in moves {
        ensure!(
            acknowledged.contains(&(m.topic.as_str(), m.partition)),
            "OffsetCommit response lacks {}-{}",
            m.topic,
            m.partition
        );
    }
    Ok(())
}

async fn reset(client: &mut Client, args: ResetArgs) -> Result<()> {
    let target = args.to.target()?;
    let group = args.group.as_str();
    let view = look_up(client, group).await?;
    let state = view.state();
    if state != "Empty" && state != "Dead" {
        bail!(
            "consumer group '{group}' is active (state {state}, {} member(s)): offsets can only \
             be reset while it has no members; stop its consumers first",
            view.described.members.len()
        );
    }
    let selected = selected_partitions(client, &args, &view).await?;
    let mut moves = Vec::new();
    for (topic, partitions) in &selected {
        moves.extend(plan_topic(client, topic, partitions, target, &view.committed).await?);
    }
    ensure!(!moves.is_empty(), "no partitions to reset");
    if args.execute {
        commit(client, &view, group, &moves).await?;
    }
    let rows: Vec<Vec<String>> = moves
        .iter()
        .map(|m| {
            vec![
                group.to_owned(),
                m.topic.clone(),
                m.partition.to_string(),
                or_dash(m.current),
                m.new.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &[
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "NEW-OFFSET"
            ],
            &rows
        )
    );
    if !args.execute {
        eprintln!("Dry run: nothing was committed. Add --execute to commit these offsets.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bytes::BytesMut;
    use clap::Parser;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Encodable;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        group: GroupCommand,
    }

    fn reset_args(args: &[&str]) -> Result<ResetArgs, clap::Error> {
        let mut all = vec!["x", "reset"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.group {
            GroupCommand::Reset(r) => Ok(r),
            other => panic!("expected reset, got {other:?}"),
        }
    }

    #[test]
    fn topic_specs_parse_partitions() {
        assert_eq!(
            parse_topic_spec("orders").unwrap(),
            TopicSpec {
                topic: "orders".into(),
                partitions: None
            }
        );
        assert_eq!(
            parse_topic_spec("orders:0,2").unwrap().partitions,
            Some(vec![0, 2])
        );
        assert!(parse_topic_spec(":1").is_err());
        assert!(parse_topic_spec("t:").is_err());
        assert!(parse_topic_spec("t:-1").is_err());
        assert!(parse_topic_spec("t:a").is_err());
    }

    #[test]
    fn reset_takes_exactly_one_target_and_one_scope() {
        let r = reset_args(&["g", "--topic", "t:1", "--topic", "u", "--to-earliest"]).unwrap();
        assert_eq!(r.group, "g");
        assert_eq!(r.topics.len(), 2);
        assert_eq!(r.to.target().unwrap(), Target::Earliest);
        assert!(!r.execute);

        let r = reset_args(&["g", "--all-topics", "--shift-by", "-3", "--execute"]).unwrap();
        assert!(r.all_topics && r.execute);
        assert_eq!(r.to.target().unwrap(), Target::ShiftBy(-3));

        let r = reset_args(&["g", "--all-topics", "--to-time", "1970-01-01T00:00:01Z"]).unwrap();
        assert_eq!(r.to.target().unwrap(), Target::Time(1000));
        let r = reset_args(&["g", "--all-topics", "--to-offset", "7"]).unwrap();
        assert_eq!(r.to.target().unwrap(), Target::Offset(7));

        // no target, two targets, no scope, both scopes
        assert!(reset_args(&["g", "--all-topics"]).is_err());
        assert!(reset_args(&["g", "--all-topics", "--to-earliest", "--to-latest"]).is_err());
        assert!(reset_args(&["g", "--to-earliest"]).is_err());
        assert!(reset_args(&["g", "--all-topics", "--topic", "t", "--to-latest"]).is_err());
        assert!(reset_args(&["g", "--all-topics", "--to-offset", "-1"]).is_err());
        assert!(reset_args(&["g", "--all-topics", "--to-time", "soon"]).is_err());
        assert!(
            reset_args(&["g", "--all-topics", "--to-latest", "--execute", "--dry-run"]).is_err()
        );
    }

    #[test]
    fn list_and_describe_parse() {
        assert!(matches!(
            Cli::try_parse_from(["x", "list"]).unwrap().group,
            GroupCommand::List
        ));
        let GroupCommand::Describe(d) = Cli::try_parse_from(["x", "describe", "g"]).unwrap().group
        else {
            panic!("expected describe");
        };
        assert_eq!(d.group, "g");
        assert!(Cli::try_parse_from(["x", "describe"]).is_err());
    }

    fn encoded_assignment(version: i16, a: &ConsumerProtocolAssignment) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&version.to_be_bytes());
        a.encode(&mut buf, version.min(3)).unwrap();
        buf.to_vec()
    }

    #[test]
    fn assignments_decode_like_kafka_writes_them() {
        let a = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![0, 2]),
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_static_str("b")))
                    .with_partitions(vec![5]),
            ])
            .with_user_data(Some(bytes::Bytes::from_static(b"ud")));
        let want = vec![
            ("orders".to_owned(), 0),
            ("orders".to_owned(), 2),
            ("b".to_owned(), 5),
        ];
        for version in [0, 1, 3, 7] {
            let bytes = encoded_assignment(version, &a);
            assert_eq!(decode_assignment(&bytes).unwrap(), want, "v{version}");
        }
        assert!(decode_assignment(&[]).unwrap().is_empty());
    }

    #[test]
    fn corrupt_assignments_are_errors_not_allocations() {
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![0, 1, 2]),
        ]);
        let bytes = encoded_assignment(0, &a);
        for cut in 1..bytes.len() - 4 {
            assert!(decode_assignment(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // a huge topic count, a huge partition count, a negative version
        assert!(decode_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 1, 0, 1, b't', 0x7f, 0, 0, 0]).is_err());
        assert!(decode_assignment(&[0xff, 0xff, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn tables_align_columns() {
        let t = render_table(
            &["GROUP", "TOPIC", "LAG"],
            &[
                vec!["g".into(), "orders-long-name".into(), "5".into()],
                vec!["g".into(), "o".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "GROUP  TOPIC             LAG");
        assert_eq!(lines[1], "g      orders-long-name  5");
        assert_eq!(lines[2], "g      o                 -");
        let col = lines[0].find("LAG").unwrap();
        assert!(lines.iter().all(|l| l.len() > col));
    }

    #[test]
    fn offsets_clamp_to_the_log() {
        assert_eq!(clamp("t", 0, 5, 2, 10), 5);
        assert_eq!(clamp("t", 0, 1, 2, 10), 2);
        assert_eq!(clamp("t", 0, 11, 2, 10), 10);
        assert!(means_group_active(ResponseError::UnknownMemberId.code()));
        assert!(!means_group_active(
            ResponseError::UnknownTopicOrPartition.code()
        ));
    }
}
