//! The `sediment` binary: the broker (`serve`) and the console tools
//! (`topic`, `produce`, `consume`, `group`) that talk to it over the Kafka
//! protocol.

mod cli;
mod config;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::{ServeArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "sediment",
    version,
    about = "A Kafka-compatible streaming log with SQL over hot segments and a Parquet archive"
)]
struct Cli {
    /// Broker the console tools talk to (host:port).
    #[arg(
        long = "bootstrap-server",
        alias = "bootstrap",
        env = "SEDIMENT_BOOTSTRAP_SERVER",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap_server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create, list, describe or delete topics.
    Topic(cli::TopicArgs),
    /// Produce lines from stdin as records.
    Produce(cli::ProduceArgs),
    /// Print records to stdout.
    Consume(cli::ConsumeArgs),
    /// List, describe or reset consumer groups.
    Group(cli::GroupArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEDIMENT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            let default = if matches!(cli.command, Command::Serve(_)) {
                "info"
            } else {
                "warn"
            };
            tracing_subscriber::EnvFilter::new(default)
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Topic(a) => cli::topic::run(a, &cli.bootstrap_server).await,
            Command::Produce(a) => cli::produce::run(a, &cli.bootstrap_server).await,
            Command::Consume(a) => cli::consume::run(a, &cli.bootstrap_server).await,
            Command::Group(a) => cli::group::run(a, &cli.bootstrap_server).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let settings = Settings::resolve(&args)?;
    let started = std::time::Instant::now();
    let mut log_config = sediment_log::LogConfig::new(&settings.data_dir);
    log_config.flush_policy = settings.flush;
    if let Some(n) = settings.flush_threads {
        log_config.flush_threads = n;
    }
    log_config.topic_defaults = sediment_log::TopicConfig::with_overrides(
        &sediment_log::TopicConfig::default(),
        &settings.topic_defaults,
    )
    .context("invalid --topic-default")?;
    log_config.topic_defaults.overrides.clear();
    log_config.tiering = true;
    let archive =
        sediment_tiering::Archive::open(&settings.object_store, settings.archive_cache_bytes)
            .with_context(|| format!("opening the archive {}", settings.object_store))?;
    let log = tokio::task::spawn_blocking(move || sediment_log::LogManager::open(log_config))
        .await
        .context("opening the log")?
        .with_context(|| format!("opening data directory {}", settings.data_dir.display()))?;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut group_config = sediment_ingest::group::GroupConfig::new(log.node_id());
    group_config.initial_rebalance_delay =
        Duration::from_millis(settings.group_initial_rebalance_delay_ms);
    let groups = sediment_ingest::group::GroupCoordinator::open(
        &settings.data_dir.join("groups"),
        group_config,
        cancel.clone(),
    )
    .await
    .context("opening consumer-group offsets")?;

    let listener = tokio::net::TcpListener::bind(settings.kafka_addr)
        .await
        .with_context(|| format!("binding the Kafka listener on {}", settings.kafka_addr))?;
    let bound = listener.local_addr()?;
    let ingest = sediment_ingest::IngestConfig {
        advertised_host: settings.advertised_host.clone(),
        advertised_port: bound.port(),
        auto_create_topics: settings.auto_create_topics,
        default_partitions: settings.default_partitions,
        max_request_bytes: settings.max_request_bytes,
    };
    let broker = Arc::new(
        sediment_ingest::Broker::new(log.clone(), groups.clone(), ingest)
            .with_archive(archive.clone()),
    );
    let engine = sediment_sql::Engine::new(log.clone(), archive.clone())
        .map_err(|e| anyhow::anyhow!("starting the SQL engine: {e}"))?;
    let mut tiering = sediment_tiering::TieringConfig::new(&settings.data_dir);
    tiering.value_columns = Some(engine.value_columns());
    tiering.interval = Duration::from_millis(settings.tiering_interval_ms);
    tiering.max_bytes_per_second = settings.tiering_max_bytes_per_second;
    if let Some(p) = settings.tiering_priority {
        tiering.priority = p;
    }
    if let Some(b) = settings.tiering_idle_backlog_bytes {
        tiering.idle_backlog_bytes = b;
    }
    let tierer = sediment_tiering::Tierer::new(archive.clone(), log.clone(), tiering)
        .context("starting the tierer")?;
    tracker.spawn(tierer.run(cancel.clone()));
    if let Some(addr) = settings.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        tracing::info!(metrics = %l.local_addr()?, "serving Prometheus metrics at /metrics");
        tracker.spawn(sediment_ingest::serve_metrics(
            l,
            broker.clone(),
            cancel.clone(),
        ));
    }
    tracker.spawn(sediment_ingest::serve(
        listener,
        broker,
        cancel.clone(),
        tracker.clone(),
    ));
    engine.set_groups(Arc::new(Groups(groups.clone())));
    sediment_pgwire::install_pg_catalog(&engine)
        .map_err(|e| anyhow::anyhow!("setting up pg_catalog: {e}"))?;
    let restarted = engine
        .start_persistent_queries()
        .await
        .map_err(|e| anyhow::anyhow!("starting persistent queries: {}", e.message))?;
    if restarted > 0 {
        tracing::info!(
            queries = restarted,
            "persistent queries restarted from their checkpoints"
        );
    }
    let pg_listener = tokio::net::TcpListener::bind(settings.pg_addr)
        .await
        .with_context(|| format!("binding the Postgres listener on {}", settings.pg_addr))?;
    let pg_bound = pg_listener.local_addr()?;
    tracker.spawn(sediment_pgwire::serve(
        pg_listener,
        engine.clone(),
        cancel.clone(),
    ));
    tracker.spawn(retention_loop(
        log.clone(),
        Duration::from_millis(settings.retention_check_interval_ms),
        cancel.clone(),
    ));
    tracing::info!(
        kafka = %bound,
        postgres = %pg_bound,
        data_dir = %settings.data_dir.display(),
        clean_start = log.recovered_clean(),
        startup_ms = started.elapsed().as_millis() as u64,
        "sediment ready"
    );
    tracing::info!(archive = %settings.object_store, "archiving sealed segments of topics with remote.storage.enable");

    wait_for_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within 10 s; closing the log anyway");
    }
    // Persistent queries checkpoint where they are, to resume there.
    engine.stop_persistent_queries().await;
    groups.shutdown().await;
    tokio::task::spawn_blocking(move || log.shutdown())
        .await
        .context("closing the log")?
        .context("closing the log")?;
    tracing::info!("sediment stopped cleanly");
    Ok(())
}

/// The group coordinator as the SQL engine's `sediment.consumer_*` tables
/// see it.
struct Groups(Arc<sediment_ingest::group::GroupCoordinator>);

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Groups")
    }
}

impl sediment_sql::GroupSource for Groups {
    fn groups(&self) -> Vec<sediment_sql::GroupInfo> {
        self.0
            .overview()
            .into_iter()
            .map(|g| sediment_sql::GroupInfo {
                group_id: g.group_id,
                state: g.state,
                protocol_type: g.protocol_type,
                protocol: g.protocol,
                members: i32::try_from(g.members).unwrap_or(i32::MAX),
            })
            .collect()
    }

    fn committed(&self) -> Vec<(String, String, i32, i64)> {
        self.0
            .committed_offsets()
            .into_iter()
            .map(|c| (c.group, c.topic, c.partition, c.offset))
            .collect()
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Periodic retention and segment.ms rolls, until cancelled.
async fn retention_loop(
    log: Arc<sediment_log::LogManager>,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let l = log.clone();
        match tokio::task::spawn_blocking(move || l.enforce_retention()).await {
            Ok(n) if n > 0 => tracing::info!(segments = n, "retention deleted segments"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
    }
}
