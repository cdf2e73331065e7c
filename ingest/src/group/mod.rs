//! The Kafka *classic* consumer-group coordinator and the durable store of
//! committed offsets.
//!
//! Sediment is a single broker for now, so this node is the coordinator of
//! every group (FindCoordinator answers with [`GroupConfig::node_id`]).
//!
//! ```text
//!  JoinGroup / SyncGroup ──► GroupCoordinator ──► per-group state machine (state.rs)
//!  Heartbeat / LeaveGroup        │    ▲                 parked Join/Sync requests are
//!  List/DescribeGroups           │    │ timers          oneshot senders on the member
//!                                │    └── timer task (session expiry, rebalance
//!                                │        delays/timeouts), owned via TaskTracker
//!  OffsetCommit ─────────────────┼──► OffsetStore ──► writer thread: append frames,
//!  DeleteGroups (tombstones)     │        ▲            one fsync per batch (group commit),
//!  OffsetFetch ◄─────────────────┘   in-memory map     then update the map, then ack
//!                                    (read side)       └► offsets.log (+ compaction)
//! ```
//!
//! # Invariants
//!
//! - **An offset commit is acknowledged only after it is fsynced**: the
//!   response future resolves after the writer thread's `sync_data` returns,
//!   and OffsetFetch sees an offset only after that point, so a client never
//!   reads an offset that a crash could take back.
//! - Group locks are `parking_lot` mutexes held only for short, synchronous
//!   sections; no lock is held across `.await`. Waiting JoinGroup/SyncGroup
//!   calls await a `oneshot` outside any lock. Lock order: group map, then
//!   one group.
//! - File I/O never runs on the async runtime: recovery runs in
//!   `spawn_blocking`, appends and compaction on a dedicated writer thread.
//! - Membership is in memory only (members rejoin after a restart, as they
//!   would after a coordinator move in Kafka); committed offsets survive.
//!
//! # Crash-consistency contract (offsets log)
//!
//! Every record is a frame with magic, format version, bounded length and
//! a CRC32C (layout in `FORMAT-offsets.md`). On open, the log is replayed;
//! an incomplete or checksum-failing frame that runs to the end of the file
//! (or a zero-filled tail) is a torn write that was never acknowledged and
//! is truncated with a warning. A bad frame followed by more data is
//! corruption: replay stops there with an error log, the damaged file is
//! preserved as `offsets.log.corrupt-<ms>`, and the log is rewritten from
//! the offsets replayed so far (or opening fails, with
//! [`GroupConfig::fail_on_corruption`]). A frame of an unknown format version
//! fails the open rather than being guessed at. Compaction writes a snapshot
//! to a temporary file, fsyncs it, renames it over the log and fsyncs the
//! directory, so a crash leaves the old log or the new one, never a mix.
//!
//! # Types most users need
//!
//! [`GroupCoordinator`] (open it with [`GroupCoordinator::open`]),
//! [`GroupConfig`], [`GroupError`], and the `*_VERSIONS` constants that the
//! ApiVersions response should advertise.

mod coordinator;
mod offsets;
mod state;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use coordinator::{ClientInfo, CommittedOffset, GroupCoordinator, GroupOverview};
pub use offsets::store::{CorruptionReport, RecoveryReport};

/// JoinGroup versions served (min, max).
pub const JOIN_GROUP_VERSIONS: (i16, i16) = (0, 9);
/// SyncGroup versions served.
pub const SYNC_GROUP_VERSIONS: (i16, i16) = (0, 5);
/// Heartbeat versions served.
pub const HEARTBEAT_VERSIONS: (i16, i16) = (0, 4);
/// LeaveGroup versions served (v3+ batch form).
pub const LEAVE_GROUP_VERSIONS: (i16, i16) = (0, 5);
/// OffsetCommit versions served (v9's member epoch is the classic
/// generation id for classic groups).
pub const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 9);
/// OffsetFetch versions served (v8+ multi-group form).
pub const OFFSET_FETCH_VERSIONS: (i16, i16) = (1, 9);
/// ListGroups versions served (v4 states filter, v5 types filter).
pub const LIST_GROUPS_VERSIONS: (i16, i16) = (0, 5);
/// DescribeGroups versions served.
pub const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (0, 5);
/// DeleteGroups versions served.
pub const DELETE_GROUPS_VERSIONS: (i16, i16) = (0, 2);

/// Coordinator settings; defaults are Apache Kafka's.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// This broker's node id (the coordinator of every group).
    pub node_id: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an
    /// empty group waits for more members (extended while members keep
    /// arriving, up to the rebalance timeout). Zero disables the delay.
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout: Duration,
    /// `group.max.size`.
    pub max_group_size: usize,
    /// How long a new member may sit in a join phase before it is dropped
    /// (Kafka's fixed 5 minutes).
    pub new_member_join_timeout: Duration,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
    /// Compact the offsets log once it is at least this large (and at least
    /// twice the size of its last snapshot).
    pub compact_threshold_bytes: u64,
    /// Refuse to open on mid-file corruption instead of preserving the
    /// damaged file and continuing with the offsets replayed before it.
    pub fail_on_corruption: bool,
}

impl GroupConfig {
    /// Kafka's defaults for a broker with id `node_id`.
    pub fn new(node_id: i32) -> Self {
        GroupConfig {
            node_id,
            initial_rebalance_delay: Duration::from_millis(3000),
            min_session_timeout: Duration::from_millis(6000),
            max_session_timeout: Duration::from_millis(1_800_000),
            max_group_size: i32::MAX as usize,
            new_member_join_timeout: Duration::from_secs(300),
            offset_metadata_max_bytes: 4096,
            compact_threshold_bytes: 64 * 1024 * 1024,
            fail_on_corruption: false,
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig::new(0)
    }
}

/// Errors opening the coordinator (request-level failures are Kafka error
/// codes in the responses, not this type).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A filesystem operation failed.
    #[error("could not {op} ({path}): {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Mid-file corruption with `fail_on_corruption` set.
    #[error(
        "offsets log {path} is corrupt at byte {offset} ({reason}); move the file aside to start \
         with only the offsets before it, or restore it from a backup"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A checksummed frame of a newer format.
    #[error(
        "offsets log {path} has a frame of format version {version} at byte {offset}, which this \
         Sediment cannot read; run a newer Sediment"
    )]
    UnsupportedFormatVersion {
        path: PathBuf,
        offset: u64,
        version: u8,
    },
    /// The blocking recovery task could not run to completion.
    #[error("offsets recovery did not complete: {reason}")]
    Recovery { reason: String },
}
