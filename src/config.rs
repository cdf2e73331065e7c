//! Broker settings: built-in defaults < TOML file (`--config`) < environment
//! (`SEDIMENT_*`) < command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `sediment serve` flags; every one also reads a `SEDIMENT_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flag names with '_' for '-').
    #[arg(long, env = "SEDIMENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where partitions, offsets and metadata live [default: ./data].
    #[arg(long, env = "SEDIMENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka protocol listener [default: 127.0.0.1:9092].
    #[arg(long, env = "SEDIMENT_KAFKA_ADDR")]
    pub kafka_addr: Option<String>,
    /// Host clients are told to connect to [default: the listener's host].
    #[arg(long, env = "SEDIMENT_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Postgres protocol listener [default: 127.0.0.1:5433] (served once SQL lands).
    #[arg(long, env = "SEDIMENT_PG_ADDR")]
    pub pg_addr: Option<String>,
    /// Prometheus metrics endpoint (GET /metrics), e.g. 127.0.0.1:9644 [default: off].
    #[arg(long, env = "SEDIMENT_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Archive location: file:///path or s3://bucket/prefix [default: <data-dir>/archive].
    #[arg(long, env = "SEDIMENT_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// When appends are fsynced: `fsync` (before every ack, group commit) or
    /// `interval` (every --flush-interval-ms; faster, a power loss can lose
    /// the last interval) [default: fsync].
    #[arg(long, env = "SEDIMENT_FLUSH_POLICY")]
    pub flush_policy: Option<String>,
    /// Flush interval for `--flush-policy interval` [default: 1000].
    #[arg(long, env = "SEDIMENT_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Threads running fdatasync: the partitions of one produce request
    /// are synced in parallel up to this many [default: 4].
    #[arg(long, env = "SEDIMENT_FLUSH_THREADS")]
    pub flush_threads: Option<usize>,
    /// Create topics on first produce or metadata request (auto.create.topics.enable).
    #[arg(long, env = "SEDIMENT_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics (num.partitions) [default: 1].
    #[arg(long, env = "SEDIMENT_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,
    /// How often retention and segment.ms are checked [default: 30000].
    #[arg(long, env = "SEDIMENT_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// How often sealed segments are looked for and uploaded to the
    /// archive, and archive retention applied [default: 1000].
    #[arg(long, env = "SEDIMENT_TIERING_INTERVAL_MS")]
    pub tiering_interval_ms: Option<u64>,
    /// Cap on segment bytes converted to Parquet per second, all
    /// partitions together (Kafka's
    /// remote.log.manager.copy.max.bytes.per.second) [default: unlimited].
    #[arg(long, env = "SEDIMENT_TIERING_MAX_BYTES_PER_SECOND")]
    pub tiering_max_bytes_per_second: Option<u64>,
    /// CPU and disk priority of Parquet conversion: `idle` (only CPU time
    /// nothing else wants, until a partition's unarchived backlog passes
    /// --tiering-idle-backlog-bytes) or `low` (nice 10) [default: idle].
    #[arg(long, env = "SEDIMENT_TIERING_PRIORITY")]
    pub tiering_priority: Option<String>,
    /// Sealed, not yet archived bytes of one partition above which its
    /// conversions stop waiting for idle CPU [default: 1073741824].
    #[arg(long, env = "SEDIMENT_TIERING_IDLE_BACKLOG_BYTES")]
    pub tiering_idle_backlog_bytes: Option<u64>,
    /// Memory for batches rebuilt from the archive for consumers
    /// [default: 134217728].
    #[arg(long, env = "SEDIMENT_ARCHIVE_CACHE_BYTES")]
    pub archive_cache_bytes: Option<usize>,
    /// group.initial.rebalance.delay.ms [default: 3000].
    #[arg(long, env = "SEDIMENT_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Largest request frame accepted (socket.request.max.bytes) [default: 104857600].
    #[arg(long, env = "SEDIMENT_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Broker-wide default for a topic config, e.g. --topic-default retention.ms=86400000.
    #[arg(
        long = "topic-default",
        value_name = "KEY=VALUE",
        env = "SEDIMENT_TOPIC_DEFAULTS",
        value_delimiter = ','
    )]
    pub topic_defaults: Vec<String>,
}

/// The same settings as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    kafka_addr: Option<String>,
    advertised_host: Option<String>,
    pg_addr: Option<String>,
    metrics_addr: Option<String>,
    object_store: Option<String>,
    flush_policy: Option<String>,
    flush_interval_ms: Option<u64>,
    flush_threads: Option<usize>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    retention_check_interval_ms: Option<u64>,
    tiering_interval_ms: Option<u64>,
    tiering_max_bytes_per_second: Option<u64>,
    tiering_priority: Option<String>,
    tiering_idle_backlog_bytes: Option<u64>,
    archive_cache_bytes: Option<usize>,
    group_initial_rebalance_delay_ms: Option<u64>,
    max_request_bytes: Option<usize>,
    #[serde(default)]
    topic_defaults: BTreeMap<String, toml::Value>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    pub advertised_host: String,
    pub pg_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub object_store: String,
    pub flush: sediment_log::FlushPolicy,
    /// `None`: the log's default (`LogConfig::new`).
    pub flush_threads: Option<usize>,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub retention_check_interval_ms: u64,
    pub tiering_interval_ms: u64,
    pub tiering_max_bytes_per_second: Option<u64>,
    pub tiering_priority: Option<sediment_tiering::ConversionPriority>,
    pub tiering_idle_backlog_bytes: Option<u64>,
    pub archive_cache_bytes: usize,
    pub group_initial_rebalance_delay_ms: u64,
    pub max_request_bytes: usize,
    pub topic_defaults: BTreeMap<String, String>,
}

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("{what} '{s}' is not a host:port address"))?
        .next()
        .with_context(|| format!("{what} '{s}' resolved to no address"))
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> Result<Settings> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let kafka = args
            .kafka_addr
            .clone()
            .or(file.kafka_addr)
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let kafka_addr = parse_addr("kafka address", &kafka)?;
        let advertised_host = args
            .advertised_host
            .clone()
            .or(file.advertised_host)
            .unwrap_or_else(|| {
                if kafka_addr.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    kafka_addr.ip().to_string()
                }
            });
        let pg = args
            .pg_addr
            .clone()
            .or(file.pg_addr)
            .unwrap_or_else(|| "127.0.0.1:5433".into());
        let pg_addr = parse_addr("postgres address", &pg)?;
        let metrics_addr = match args.metrics_addr.clone().or(file.metrics_addr) {
            Some(a) => Some(parse_addr("metrics address", &a)?),
            None => None,
        };
        let object_store = args
            .object_store
            .clone()
            .or(file.object_store)
            .unwrap_or_else(|| {
                format!(
                    "file://{}",
                    std::path::absolute(data_dir.join("archive"))
                        .unwrap_or_else(|_| data_dir.join("archive"))
                        .display()
                )
            });
        if !(object_store.starts_with("file://") || object_store.starts_with("s3://")) {
            bail!("object store '{object_store}' must be a file:// or s3:// URL");
        }
        let policy = args
            .flush_policy
            .clone()
            .or(file.flush_policy)
            .unwrap_or_else(|| "fsync".into());
        let interval = args
            .flush_interval_ms
            .or(file.flush_interval_ms)
            .unwrap_or(1000);
        let flush = match policy.as_str() {
            "fsync" => sediment_log::FlushPolicy::Fsync,
            "interval" => sediment_log::FlushPolicy::Interval(std::time::Duration::from_millis(
                interval.max(1),
            )),
            other => bail!("flush policy '{other}' is not 'fsync' or 'interval'"),
        };
        let flush_threads = args.flush_threads.or(file.flush_threads);
        if flush_threads.is_some_and(|n| !(1..=64).contains(&n)) {
            bail!("flush threads must be between 1 and 64");
        }
        let tiering_priority = args
            .tiering_priority
            .clone()
            .or(file.tiering_priority)
            .map(|p| p.parse::<sediment_tiering::ConversionPriority>())
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let mut topic_defaults: BTreeMap<String, String> = file
            .topic_defaults
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        for kv in &args.topic_defaults {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--topic-default '{kv}' is not KEY=VALUE"))?;
            topic_defaults.insert(k.trim().to_string(), v.trim().to_string());
        }
        let default_partitions = args
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if !(1..=10_000).contains(&default_partitions) {
            bail!("default partitions must be between 1 and 10000");
        }
        Ok(Settings {
            data_dir,
            kafka_addr,
            advertised_host,
            pg_addr,
            metrics_addr,
            object_store,
            flush,
            flush_threads,
            auto_create_topics: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(false),
            default_partitions,
            retention_check_interval_ms: args
                .retention_check_interval_ms
                .or(file.retention_check_interval_ms)
                .unwrap_or(30_000)
                .max(10),
            tiering_interval_ms: args
                .tiering_interval_ms
                .or(file.tiering_interval_ms)
                .unwrap_or(1_000)
                .max(10),
            tiering_max_bytes_per_second: args
                .tiering_max_bytes_per_second
                .or(file.tiering_max_bytes_per_second)
                .filter(|&r| r > 0),
            tiering_priority,
            tiering_idle_backlog_bytes: args
                .tiering_idle_backlog_bytes
                .or(file.tiering_idle_backlog_bytes),
            archive_cache_bytes: args
                .archive_cache_bytes
                .or(file.archive_cache_bytes)
                .unwrap_or(128 << 20),
            group_initial_rebalance_delay_ms: args
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(3000),
            max_request_bytes: args
                .max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(100 * 1024 * 1024),
            topic_defaults,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_the_embedded_setup() {
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.kafka_addr.to_string(), "127.0.0.1:9092");
        assert_eq!(s.pg_addr.to_string(), "127.0.0.1:5433");
        assert_eq!(s.flush, sediment_log::FlushPolicy::Fsync);
        assert!(!s.auto_create_topics);
        assert!(s.object_store.starts_with("file://"));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "kafka_addr = \"127.0.0.1:19092\"\nflush_policy = \"interval\"\n[topic_defaults]\n\"retention.ms\" = 1000\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            kafka_addr: Some("127.0.0.1:29092".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.kafka_addr.port(), 29092);
        assert!(matches!(s.flush, sediment_log::FlushPolicy::Interval(_)));
        assert_eq!(s.topic_defaults["retention.ms"], "1000");
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let args = ServeArgs {
            flush_policy: Some("sometimes".into()),
            ..Default::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
        let args = ServeArgs {
            tiering_priority: Some("high".into()),
            ..Default::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("`idle` or `low`") && e.contains("high"), "{e}");
        let args = ServeArgs {
            object_store: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&args).is_err());
    }
}
