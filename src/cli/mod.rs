//! Console tools of the `sediment` binary: `topic`, `produce`, `consume`,
//! `group`.
//!
//! These talk to any Kafka-compatible broker (Sediment's own, Apache Kafka,
//! Redpanda, Tansu) over the Kafka wire protocol, like Kafka's
//! `kafka-topics.sh`, console producer/consumer and
//! `kafka-consumer-groups.sh`.
//!
//! ```text
//!  stdin lines ──► produce ──RecordBatch v2──► Produce ─┐
//!                                                       ├─► client ──TCP──► broker
//!  stdout lines ◄── consume ◄──decode batches◄── Fetch ─┘
//!                  topic ── CreateTopics / Metadata / DescribeConfigs /
//!                           ListOffsets / DeleteTopics
//!                  group ── ListGroups / FindCoordinator / DescribeGroups /
//!                           OffsetFetch / ListOffsets / OffsetCommit
//! ```
//!
//! - [`client`]: framing, ApiVersions negotiation, correlation ids, error
//!   names, routing to partition leaders.
//! - [`partitioner`]: murmur2 and the Java client's default partitioning.
//! - [`topic`], [`produce`], [`consume`], [`group`]: one clap `Args` type
//!   and one `run(args, bootstrap)` per command.
//!
//! Invariants: stdout carries only data (records, topic and group names,
//! describe output, reset plans); progress and errors go to stderr.
//! `produce` exits non-zero if any record failed; an idempotent producer
//! never has two batches of one partition in flight. `group reset` commits
//! only with `--execute` and never while the group has members.

pub mod client;
pub mod consume;
pub mod group;
pub mod partitioner;
pub mod produce;
pub mod topic;

pub use consume::ConsumeArgs;
pub use group::GroupArgs;
pub use produce::ProduceArgs;
pub use topic::TopicArgs;
