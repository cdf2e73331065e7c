//! `sediment topic create|list|describe|delete`.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::describe_log_dirs_response::DescribeLogDirsResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, DescribeLogDirsRequest,
    ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;

use super::client::{check, describe_error, Client};

/// Broker-side timeout for topic creation and deletion.
const ADMIN_TIMEOUT_MS: i32 = 30_000;
/// DescribeConfigs resource type for topics.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// DescribeConfigs config source for a per-topic override.
const SOURCE_DYNAMIC_TOPIC_CONFIG: i8 = 1;

/// `sediment topic ...`
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topic names, one per line.
    List,
    /// Show a topic's partitions, offsets and configs.
    Describe(DescribeArgs),
    /// Delete a topic.
    Delete(DeleteArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Replication factor (default: the broker's default).
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: Option<i16>,
    /// Topic config override, `key=value`; repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Topic name.
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Topic name.
    pub name: String,
}

/// Parses `key=value` (the value may contain `=`).
pub fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// Runs a `topic` subcommand against the broker at `bootstrap`.
pub async fn run(args: TopicArgs, bootstrap: &str) -> Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    match args.command {
        TopicCommand::Create(a) => create(&mut client, a).await,
        TopicCommand::List => list(&mut client).await,
        TopicCommand::Describe(a) => describe(&mut client, &a.name).await,
        TopicCommand::Delete(a) => delete(&mut client, &a.name).await,
    }
}

async fn create(client: &mut Client, args: CreateArgs) -> Result<()> {
    let conn = client.bootstrap();
    let version = conn.version_for::<CreateTopicsRequest>()?;
    // -1 ("broker default") needs CreateTopics v4+.
    let replication = match args.replication_factor {
        Some(r) => r,
        None if version >= 4 => -1,
        None => 1,
    };
    let topic = CreatableTopic::default()
        .with_name(topic_name(&args.name))
        .with_num_partitions(args.partitions)
        .with_replication_factor(replication)
        .with_configs(
            args.configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect(),
        );
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let response = conn.send_version(&request, version).await?;
    let result = response
        .topics
        .iter()
        .find(|t| t.name.0.as_str() == args.name)
        .ok_or_else(|| anyhow!("CreateTopics response does not mention '{}'", args.name))?;
    check(
        result.error_code,
        result.error_message.as_ref(),
        format_args!("creating topic '{}'", args.name),
    )?;
    let partitions = if result.num_partitions > 0 {
        result.num_partitions
    } else {
        args.partitions
    };
    println!(
        "Created topic {} with {partitions} partition{}.",
        args.name,
        if partitions == 1 { "" } else { "s" }
    );
    Ok(())
}

async fn list(client: &mut Client) -> Result<()> {
    let response = client.metadata(None).await?;
    let mut names: Vec<String> = response
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    names.sort();
    let mut out = String::new();
    for n in names {
        out.push_str(&n);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

fn join_ids(ids: &[kafka_protocol::messages::BrokerId]) -> String {
    ids.iter()
        .map(|b| b.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Per-partition extent of the two tiers, where the broker reports them
/// (ListOffsets v9: earliest local, latest tiered; DescribeLogDirs: bytes).
struct Tiers {
    earliest_local: BTreeMap<i32, i64>,
    latest_tiered: BTreeMap<i32, i64>,
    local_bytes: BTreeMap<i32, i64>,
    archive_bytes: BTreeMap<i32, i64>,
}

async fn tiers(
    client: &mut Client,
    name: &str,
    infos: &[super::client::PartitionInfo],
) -> Result<Option<Tiers>> {
    let conn = client.bootstrap();
    if conn.version_for::<ListOffsetsRequest>().unwrap_or(0) < 9
        || !conn.supports::<DescribeLogDirsRequest>()
    {
        return Ok(None);
    }
    let request =
        DescribeLogDirsRequest::default()
            .with_topics(Some(vec![DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_string(name.to_owned())))
                .with_partitions(infos.iter().map(|p| p.partition).collect())]));
    let dirs = conn
        .send(&request)
        .await
        .context("DescribeLogDirs request")?;
    let bytes_in = |dir: Option<&DescribeLogDirsResult>| -> BTreeMap<i32, i64> {
        dir.into_iter()
            .flat_map(|d| d.topics.iter())
            .filter(|t| t.name.0.as_str() == name)
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.partition_index, p.partition_size))
            .collect()
    };
    // The broker lists its data directory first, then the archive.
    let local_bytes = bytes_in(dirs.results.first());
    let archive_bytes = bytes_in(dirs.results.get(1));
    Ok(Some(Tiers {
        earliest_local: client.list_offsets(name, infos, -4).await?,
        latest_tiered: client.list_offsets(name, infos, -5).await?,
        local_bytes,
        archive_bytes,
    }))
}

async fn describe(client: &mut Client, name: &str) -> Result<()> {
    let metadata = client.metadata(Some(&[name.to_owned()])).await?;
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
        .ok_or_else(|| anyhow!("broker returned no metadata for topic '{name}'"))?;
    check(
        topic.error_code,
        None,
        format_args!("describing topic '{name}'"),
    )?;
    let mut partitions = topic.partitions.clone();
    partitions.sort_by_key(|p| p.partition_index);
    let infos = client.topic_partitions(name).await?;
    let earliest = client.list_offsets(name, &infos, -2).await?;
    let latest = client.list_offsets(name, &infos, -1).await?;
    let tiers = tiers(client, name, &infos).await?;

    let replication = partitions
        .first()
        .map(|p| p.replica_nodes.len())
        .unwrap_or(0);
    let mut out = format!(
        "Topic: {name}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {replication}\n",
        topic.topic_id,
        partitions.len()
    );
    for p in &partitions {
        let i = p.partition_index;
        let offset = |m: &std::collections::BTreeMap<i32, i64>| {
            m.get(&i).map_or_else(|| "?".to_owned(), |o| o.to_string())
        };
        out.push_str(&format!(
            "\tPartition: {i}\tLeader: {}\tReplicas: {}\tIsr: {}\tLogStartOffset: {}\tHighWatermark: {}",
            p.leader_id.0,
            join_ids(&p.replica_nodes),
            join_ids(&p.isr_nodes),
            offset(&earliest),
            offset(&latest),
        ));
        if let (Some(t), Some(&hw)) = (&tiers, latest.get(&i)) {
            let range = |first: Option<i64>, last: i64, bytes: Option<&i64>| match first {
                Some(first) if last >= first => {
                    format!("{first}-{last} ({} bytes)", bytes.copied().unwrap_or(0))
                }
                _ => "none".to_owned(),
            };
            let archive_last = t.latest_tiered.get(&i).copied().unwrap_or(-1);
            out.push_str(&format!(
                "\tArchive: {}\tLocal: {}",
                range(
                    (archive_last >= 0)
                        .then(|| earliest.get(&i).copied())
                        .flatten(),
                    archive_last,
                    t.archive_bytes.get(&i)
                ),
                range(
                    t.earliest_local.get(&i).copied(),
                    hw - 1,
                    t.local_bytes.get(&i)
                ),
            ));
        }
        if let Some(e) = describe_error(p.error_code, None) {
            out.push_str(&format!("\tError: {e}"));
        }
        out.push('\n');
    }

    let conn = client.bootstrap();
    if conn.supports::<DescribeConfigsRequest>() {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(StrBytes::from_string(name.to_owned()))
                .with_configuration_keys(None),
        ]);
        let response = conn
            .send(&request)
            .await
            .context("DescribeConfigs request")?;
        out.push_str("Configs:\n");
        for result in response.results {
            check(
                result.error_code,
                result.error_message.as_ref(),
                format_args!("DescribeConfigs for topic '{name}'"),
            )?;
            let mut configs = result.configs;
            configs.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
            for c in configs {
                let value = if c.is_sensitive {
                    "[hidden]".to_owned()
                } else {
                    c.value.as_ref().map_or("null", |v| v.as_str()).to_owned()
                };
                let origin = if c.config_source == SOURCE_DYNAMIC_TOPIC_CONFIG {
                    ""
                } else {
                    "\t(default)"
                };
                out.push_str(&format!("\t{}={value}{origin}\n", c.name.as_str()));
            }
        }
    }
    print!("{out}");
    Ok(())
}

async fn delete(client: &mut Client, name: &str) -> Result<()> {
    let conn = client.bootstrap();
    let version = conn.version_for::<DeleteTopicsRequest>()?;
    let mut request = DeleteTopicsRequest::default().with_timeout_ms(ADMIN_TIMEOUT_MS);
    if version >= 6 {
        request.topics = vec![DeleteTopicState::default().with_name(Some(topic_name(name)))];
    } else {
        request.topic_names = vec![topic_name(name)];
    }
    let response = conn.send_version(&request, version).await?;
    let Some(result) = response.responses.first() else {
        bail!("DeleteTopics response is empty");
    };
    check(
        result.error_code,
        result.error_message.as_ref(),
        format_args!("deleting topic '{name}'"),
    )?;
    println!("Deleted topic {name}.");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        topic: TopicCommand,
    }

    #[test]
    fn create_parses_partitions_and_repeated_configs() {
        let cli = Cli::try_parse_from([
            "x",
            "create",
            "events",
            "--partitions",
            "6",
            "--config",
            "retention.ms=1000",
            "--config",
            "a=b=c",
        ])
        .unwrap();
        let TopicCommand::Create(c) = cli.topic else {
            panic!("expected create");
        };
        assert_eq!(c.name, "events");
        assert_eq!(c.partitions, 6);
        assert_eq!(c.replication_factor, None);
        assert_eq!(
            c.configs,
            vec![
                ("retention.ms".to_owned(), "1000".to_owned()),
                ("a".to_owned(), "b=c".to_owned())
            ]
        );
    }

    #[test]
    fn create_defaults_to_one_partition_and_rejects_bad_input() {
        let cli = Cli::try_parse_from(["x", "create", "t"]).unwrap();
        let TopicCommand::Create(c) = cli.topic else {
            panic!("expected create");
        };
        assert_eq!(c.partitions, 1);
        assert!(Cli::try_parse_from(["x", "create", "t", "--partitions", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "create", "t", "--config", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["x", "create", "t", "--config", "=v"]).is_err());
    }

    #[test]
    fn list_describe_delete_parse() {
        assert!(matches!(
            Cli::try_parse_from(["x", "list"]).unwrap().topic,
            TopicCommand::List
        ));
        let TopicCommand::Describe(d) = Cli::try_parse_from(["x", "describe", "t"]).unwrap().topic
        else {
            panic!("expected describe");
        };
        assert_eq!(d.name, "t");
        assert!(Cli::try_parse_from(["x", "delete"]).is_err());
    }
}
