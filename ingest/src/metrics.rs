//! Broker metrics in the Prometheus text exposition format, served over a
//! minimal HTTP endpoint (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Broker;
use sediment_log::Histogram;

const API_SLOTS: usize = 128;

/// Counters updated on the request path (relaxed atomics, no locks).
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; API_SLOTS],
    /// From a request's last byte read to its response's last byte written.
    request_latency: [Histogram; API_SLOTS],
    /// Produce with acks=1/all: from the append to the data being durable.
    pub produce_durable_wait: Histogram,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connections: AtomicI64,
    pub malformed_requests: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            request_latency: std::array::from_fn(|_| Histogram::default()),
            produce_durable_wait: Histogram::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections: AtomicI64::new(0),
            malformed_requests: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, api: ApiKey) {
        if let Some(c) = self.requests.get(api as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_request(&self, api: ApiKey, took: std::time::Duration) {
        if let Some(h) = self.request_latency.get(api as usize) {
            h.record(took);
        }
    }

    /// The exposition text for these counters and the log's partitions.
    pub fn render(&self, broker: &Broker) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP sediment_requests_total Kafka requests handled, by API.\n# TYPE sediment_requests_total counter");
        for api in ApiKey::iter() {
            let n = self
                .requests
                .get(api as usize)
                .map(|c| c.load(Ordering::Relaxed))
                .unwrap_or(0);
            if n > 0 {
                let _ = writeln!(out, "sediment_requests_total{{api=\"{api:?}\"}} {n}");
            }
        }
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        scalar(
            &mut out,
            "sediment_request_bytes_total",
            "counter",
            "Bytes of Kafka requests received.",
            self.bytes_in.load(Ordering::Relaxed) as i64,
        );
        scalar(
            &mut out,
            "sediment_response_bytes_total",
            "counter",
            "Bytes of Kafka responses sent.",
            self.bytes_out.load(Ordering::Relaxed) as i64,
        );
        scalar(
            &mut out,
            "sediment_connections",
            "gauge",
            "Open Kafka connections.",
            self.connections.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "sediment_malformed_requests_total",
            "counter",
            "Requests that closed their connection as malformed or unsupported.",
            self.malformed_requests.load(Ordering::Relaxed) as i64,
        );
        if let Some(archive) = broker.archive() {
            let m = &archive.metrics;
            let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 11] = [
                (
                    "sediment_archive_row_groups_loaded_total",
                    "Row groups fetched from the archive and rebuilt into batches.",
                    &m.row_groups_loaded,
                ),
                (
                    "sediment_archive_uploaded_files_total",
                    "Parquet files uploaded to the archive.",
                    &m.uploaded_files,
                ),
                (
                    "sediment_archive_uploaded_bytes_total",
                    "Bytes of Parquet uploaded to the archive.",
                    &m.uploaded_bytes,
                ),
                (
                    "sediment_archive_uploaded_segment_bytes_total",
                    "Bytes of segments archived (before conversion).",
                    &m.uploaded_segment_bytes,
                ),
                (
                    "sediment_archive_backlog_conversions_total",
                    "Conversions run at low instead of idle priority because their partition's unarchived backlog passed --tiering-idle-backlog-bytes.",
                    &m.backlog_conversions,
                ),
                (
                    "sediment_archive_conversion_wait_milliseconds_total",
                    "Time idle-priority conversions waited for the machine's cores to have idle time.",
                    &m.conversion_wait_ms,
                ),
                (
                    "sediment_archive_upload_errors_total",
                    "Failed tiering attempts (retried with backoff).",
                    &m.upload_errors,
                ),
                (
                    "sediment_archive_deleted_files_total",
                    "Archive files deleted by retention.",
                    &m.deleted_files,
                ),
                (
                    "sediment_archive_read_errors_total",
                    "Consumer reads from the archive that failed.",
                    &m.read_errors,
                ),
                (
                    "sediment_archive_cache_hits_total",
                    "Archive reads served from rebuilt batches in memory.",
                    &m.cache_hits,
                ),
                (
                    "sediment_archive_cache_misses_total",
                    "Archive reads that fetched and rebuilt a row group.",
                    &m.cache_misses,
                ),
            ];
            for (name, help, c) in counters {
                scalar(
                    &mut out,
                    name,
                    "counter",
                    help,
                    c.load(Ordering::Relaxed) as i64,
                );
            }
            scalar(
                &mut out,
                "sediment_archive_cache_bytes",
                "gauge",
                "Memory held by batches rebuilt from the archive.",
                archive.cache_bytes() as i64,
            );
        }
        let _ = writeln!(out, "# HELP sediment_request_duration_seconds Kafka requests, from the last byte of the request read to the last byte of the response written, by API.\n# TYPE sediment_request_duration_seconds histogram");
        for api in ApiKey::iter() {
            if let Some(h) = self.request_latency.get(api as usize) {
                histogram(
                    &mut out,
                    "sediment_request_duration_seconds",
                    &format!("api=\"{api:?}\""),
                    h,
                );
            }
        }
        let histograms = [
            (
                "sediment_produce_durable_wait_seconds",
                "Produce requests with acks=1/all: from the append to the data being durable (fdatasync).",
                &self.produce_durable_wait,
            ),
            (
                "sediment_flush_queue_wait_seconds",
                "From a partition's queueing for fdatasync to a flusher thread taking it.",
                broker.log().flush_queue_wait(),
            ),
            (
                "sediment_fsync_duration_seconds",
                "Duration of segment fdatasync calls.",
                broker.log().fsync_latency(),
            ),
        ];
        for (name, help, h) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram(&mut out, name, "", h);
        }
        type Getter = fn(&sediment_log::Partition) -> i64;
        let gauges: [(&str, &str, &str, Getter); 9] = [
            (
                "sediment_partition_archive_start_offset",
                "gauge",
                "First offset in the archive (-1: not known yet).",
                |p| p.archive().map_or(-1, |a| a.start_offset),
            ),
            (
                "sediment_partition_archive_bytes",
                "gauge",
                "Bytes of Parquet in the archive.",
                |p| p.archive().map_or(0, |a| a.bytes as i64),
            ),
            (
                "sediment_partition_log_start_offset",
                "gauge",
                "First offset stored.",
                |p| p.log_start_offset(),
            ),
            (
                "sediment_partition_log_end_offset",
                "gauge",
                "Offset the next record will get.",
                |p| p.log_end_offset(),
            ),
            (
                "sediment_partition_high_watermark",
                "gauge",
                "Offsets below this are durable and visible.",
                |p| p.high_watermark(),
            ),
            (
                "sediment_partition_size_bytes",
                "gauge",
                "Bytes of segment files.",
                |p| p.size_bytes() as i64,
            ),
            (
                "sediment_partition_segments",
                "gauge",
                "Segment files.",
                |p| p.segment_count() as i64,
            ),
            (
                "sediment_partition_corrupt_segments_total",
                "counter",
                "Sealed segments found corrupt at recovery.",
                |p| p.stats.corrupt_segments.load(Ordering::Relaxed) as i64,
            ),
            (
                "sediment_partition_truncated_bytes_total",
                "counter",
                "Bytes of torn or corrupt tail truncated at recovery.",
                |p| p.stats.truncated_bytes.load(Ordering::Relaxed) as i64,
            ),
        ];
        let topics = broker.log().topics();
        for (name, kind, help, get) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for t in &topics {
                for p in &t.partitions {
                    let _ = writeln!(
                        out,
                        "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                        t.meta.name,
                        p.id,
                        get(p)
                    );
                }
            }
        }
        out
    }
}

/// Serves `GET /metrics` until cancelled. One short request per connection.
pub async fn serve_metrics(listener: TcpListener, broker: Arc<Broker>, cancel: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let mut buf = [0u8; 1024];
        let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
        {
            Ok(Ok(n)) => n,
            _ => continue,
        };
        let request = String::from_utf8_lossy(&buf[..n]);
        let (status, body) = if request.starts_with("GET /metrics") {
            ("200 OK", broker.metrics().render(&broker))
        } else {
            ("404 Not Found", "try GET /metrics\n".to_string())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// Writes one histogram's samples (cumulative buckets, sum, count) under
/// `labels` (`k="v",...` or empty); nothing if it has never been recorded
/// into and has labels.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (buckets, count, sum_us) = h.snapshot();
    if count == 0 && !labels.is_empty() {
        return;
    }
    let braces = |extra: &str| {
        let all: Vec<&str> = [labels, extra]
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", all.join(","))
        }
    };
    for (bound_us, n) in buckets {
        let le = format!("le=\"{}\"", bound_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_bucket{} {n}", braces(&le));
    }
    let _ = writeln!(out, "{name}_bucket{} {count}", braces("le=\"+Inf\""));
    let _ = writeln!(out, "{name}_sum{} {}", braces(""), sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{} {count}", braces(""));
}
