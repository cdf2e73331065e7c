//! # sediment-ingest: the Kafka front door
//!
//! A Kafka wire-protocol server over [`sediment_log`]: any unmodified Kafka
//! client (librdkafka, the Java client, kafka-python, kafkajs, franz-go)
//! produces, consumes and runs consumer groups against it.
//!
//! ```text
//!  TCP ──► server (framing, version checks, ordered pipelining)
//!              │ RequestKind (kafka-protocol)
//!              ▼
//!          broker (one handler per API) ──► sediment_log::LogManager
//!              │                        └─► group::GroupCoordinator
//!              ▼
//!          error (LogError → Kafka error code, in one place)
//! ```
//!
//! ## Invariants
//! - A Produce with acks=1/all is answered only after its batches are
//!   durable per the log's flush policy (fsync by default).
//! - Requests on one connection are handled, and answered, in order.
//! - Malformed frames, unknown APIs and unsupported versions close the
//!   connection (ApiVersions answers UNSUPPORTED_VERSION instead); frames
//!   above `max_request_bytes` are refused before any allocation.
//! - Only APIs with a handler are advertised in ApiVersions.

mod broker;
pub mod error;
pub mod group;
mod guard;
mod metrics;
mod server;

pub use broker::{supported_versions, Broker};
pub use metrics::{serve_metrics, Metrics};
pub use server::{encode_response, serve};

/// Settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Host and port clients are told to connect to (Metadata, FindCoordinator).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `auto.create.topics.enable`; off by default.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics and of
    /// CreateTopics requests that ask for the default (-1).
    pub default_partitions: i32,
    /// `socket.request.max.bytes`: largest request frame accepted.
    pub max_request_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            auto_create_topics: false,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
        }
    }
}
