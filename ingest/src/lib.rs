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

/// What the server does with a request body before handling it: the schema
/// guard, then kafka-protocol's decoder. `data` is `api_key (i16) |
/// api_version (i16) | body`. For fuzzers and property tests; never panics
/// and never allocates beyond a small multiple of `data.len()`.
#[doc(hidden)]
pub fn fuzz_request_body(data: &[u8]) {
    use kafka_protocol::messages::{ApiKey, RequestKind};
    if data.len() < 4 {
        return;
    }
    let Ok(api) = ApiKey::try_from(i16::from_be_bytes([data[0], data[1]])) else {
        return;
    };
    let version = i16::from_be_bytes([data[2], data[3]]);
    let Some((min, max)) = supported_versions(api) else {
        return;
    };
    if version < min || version > max {
        return;
    }
    let body = &data[4..];
    if guard::check_body(api, version, body).is_ok() {
        let mut bytes = bytes::Bytes::copy_from_slice(body);
        let _ = RequestKind::decode(api, &mut bytes, version);
    }
}

#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random request bodies for every accepted API and version go
        /// through the guard and the decoder without panicking or aborting.
        #[test]
        fn random_requests_never_panic_or_overallocate(
            api in 0i16..70,
            version in 0i16..13,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut data = api.to_be_bytes().to_vec();
            data.extend(version.to_be_bytes());
            data.extend(body);
            super::fuzz_request_body(&data);
        }

        /// Bodies made of "large count" patterns, the shape that used to
        /// make kafka-protocol try to allocate hundreds of gigabytes.
        #[test]
        fn huge_counts_are_refused(
            api in 0i16..70,
            version in 0i16..13,
            prefix in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let mut data = api.to_be_bytes().to_vec();
            data.extend(version.to_be_bytes());
            data.extend(prefix);
            data.extend([0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
            super::fuzz_request_body(&data);
        }
    }
}
