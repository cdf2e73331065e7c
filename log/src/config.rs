//! Topic configuration with Kafka's names, defaults and validation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::LogError;

/// How `message.timestamp.type` stamps batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Effective configuration of one topic: broker defaults overlaid with the
/// topic's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub timestamp_type: TimestampType,
    pub index_interval_bytes: u64,
    /// Only `delete` today.
    pub cleanup_policy: String,
    /// `remote.storage.enable`: sealed segments are archived to the object
    /// store (when the broker runs with tiering), and then `retention.*`
    /// bounds the archive while `local.retention.*` bounds the local tier.
    pub remote_storage_enable: bool,
    /// `local.retention.ms`; -2 means "same as retention.ms".
    pub local_retention_ms: i64,
    /// `local.retention.bytes`; -2 means "same as retention.bytes".
    pub local_retention_bytes: i64,
    /// Settings given explicitly for this topic.
    pub overrides: BTreeMap<String, String>,
}

/// Names of every topic config Sediment understands, in DescribeConfigs order.
pub const CONFIG_NAMES: &[&str] = &[
    "cleanup.policy",
    "index.interval.bytes",
    "local.retention.bytes",
    "local.retention.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Largest allowed segment: index positions are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            index_interval_bytes: 4096,
            cleanup_policy: "delete".to_string(),
            remote_storage_enable: true,
            local_retention_ms: -2,
            local_retention_bytes: -2,
            overrides: BTreeMap::new(),
        }
    }
}

fn invalid(name: &str, value: &str, why: &str) -> LogError {
    LogError::InvalidConfig {
        message: format!("invalid value '{value}' for {name}: {why}"),
    }
}

fn parse_i64(name: &str, value: &str, min: i64) -> Result<i64, LogError> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(name, value, "not an integer"))?;
    if v < min {
        return Err(invalid(name, value, &format!("must be at least {min}")));
    }
    Ok(v)
}

impl TopicConfig {
    /// Applies one `name=value` setting, validating it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), LogError> {
        match name {
            "segment.bytes" => {
                let v = parse_i64(name, value, 1024)? as u64;
                if v > MAX_SEGMENT_BYTES {
                    return Err(invalid(
                        name,
                        value,
                        &format!("must be at most {MAX_SEGMENT_BYTES}"),
                    ));
                }
                self.segment_bytes = v;
            }
            "segment.ms" => self.segment_ms = parse_i64(name, value, 1)?,
            "retention.ms" => self.retention_ms = parse_i64(name, value, -1)?,
            "retention.bytes" => self.retention_bytes = parse_i64(name, value, -1)?,
            "local.retention.ms" => self.local_retention_ms = parse_i64(name, value, -2)?,
            "local.retention.bytes" => self.local_retention_bytes = parse_i64(name, value, -2)?,
            "remote.storage.enable" => {
                self.remote_storage_enable = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid(name, value, "use true or false")),
                }
            }
            "max.message.bytes" => {
                let v = parse_i64(name, value, 0)?;
                if v > i64::from(i32::MAX) {
                    return Err(invalid(name, value, "must fit in 32 bits"));
                }
                self.max_message_bytes = v as usize;
            }
            "index.interval.bytes" => self.index_interval_bytes = parse_i64(name, value, 0)? as u64,
            "message.timestamp.type" => {
                self.timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid(name, value, "use CreateTime or LogAppendTime")),
                }
            }
            "cleanup.policy" => match value {
                "delete" => self.cleanup_policy = value.to_string(),
                _ => {
                    return Err(invalid(
                        name,
                        value,
                        "only 'delete' is supported; log compaction is not implemented yet",
                    ))
                }
            },
            _ => {
                return Err(LogError::InvalidConfig {
                    message: format!("unknown topic config '{name}'"),
                })
            }
        }
        self.overrides.insert(name.to_string(), value.to_string());
        Ok(())
    }

    /// Defaults overlaid with `overrides`.
    pub fn with_overrides(
        defaults: &TopicConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, LogError> {
        let mut c = defaults.clone();
        c.overrides.clear();
        for (k, v) in overrides {
            c.set(k, v)?;
        }
        Ok(c)
    }

    /// The effective value of a named config as Kafka would print it.
    pub fn value_of(&self, name: &str) -> Option<String> {
        Some(match name {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "local.retention.ms" => self.local_retention_ms.to_string(),
            "local.retention.bytes" => self.local_retention_bytes.to_string(),
            "remote.storage.enable" => self.remote_storage_enable.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            "cleanup.policy" => self.cleanup_policy.clone(),
            _ => return None,
        })
    }

    /// The limits on the local tier: `local.retention.*`, where -2 (the
    /// default) means the matching `retention.*`, and never looser than
    /// `retention.*` (the local tier is part of the whole log). Returns
    /// (ms, bytes), -1 meaning unbounded.
    pub fn local_limits(&self) -> (i64, i64) {
        let pick = |local: i64, total: i64| match (local, total) {
            (-2, _) => total,
            (_, t) if t >= 0 && (local < 0 || local > t) => t,
            _ => local,
        };
        (
            pick(self.local_retention_ms, self.retention_ms),
            pick(self.local_retention_bytes, self.retention_bytes),
        )
    }

    pub fn segment_age(&self) -> Duration {
        Duration::from_millis(self.segment_ms.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compact_is_rejected_with_a_clear_message() {
        let mut c = TopicConfig::default();
        let e = c.set("cleanup.policy", "compact").unwrap_err().to_string();
        assert!(e.contains("not implemented"), "{e}");
    }

    #[test]
    fn unknown_and_malformed_configs_are_rejected() {
        let mut c = TopicConfig::default();
        assert!(c.set("no.such.config", "1").is_err());
        assert!(c.set("retention.ms", "soon").is_err());
        assert!(c.set("retention.ms", "-2").is_err());
        assert!(c.set("segment.bytes", "99999999999").is_err());
    }

    #[test]
    fn overrides_are_recorded_and_values_print_like_kafka() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "-1".to_string());
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let c = TopicConfig::with_overrides(&TopicConfig::default(), &o).unwrap();
        assert_eq!(c.retention_ms, -1);
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(c.overrides, o);
        assert_eq!(c.value_of("segment.bytes").unwrap(), "1073741824");
    }
}
