//! # sediment-sql: one DataFusion engine over both tiers
//!
//! Every topic is a table in schema `topics` ([`TopicTable`]: the Parquet
//! archive and the hot segments as one table, from one snapshot), every
//! declared stream a table in the default schema `public`
//! ([`stream::StreamTable`]: typed columns decoded from JSON values), and
//! the broker's state is in schema `sediment` ([`system`]). All of them
//! live in catalog `sediment`.
//!
//! [`Engine::prepare`] recognises Sediment's own statements (`CREATE
//! STREAM`, `DROP STREAM`, `SHOW STREAMS`, `SHOW TOPICS`, `DESCRIBE`);
//! everything else is DataFusion SQL. The Postgres front door
//! (`sediment-pgwire`) and the tests drive the engine the same way.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::common::{DataFusionError, Result, SchemaError};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use sediment_log::LogManager;
use sediment_tiering::Archive;

pub mod checkpoint;
pub mod continuous;
pub mod cursor;
pub mod functions;
pub mod insert;
mod lex;
pub mod persistent;
pub mod push;
pub mod ranges;
pub mod statements;
pub mod stream;
pub mod system;
pub mod tail;
pub mod topic_table;
pub mod window;

pub use cursor::CursorStatement;
pub use push::{CopyOptions, Properties, PushQuery};
pub use statements::{split_statements, Custom, Prepared};
pub use stream::{DecodeErrors, StreamDef, StreamRegistry};
pub use system::{GroupInfo, GroupSource};
pub use topic_table::{OffsetReset, TopicTable};

/// The catalog every Sediment table lives in (psql's `dbname=sediment`).
pub const CATALOG: &str = "sediment";

pub struct Engine {
    ctx: SessionContext,
    log: Arc<LogManager>,
    archive: Arc<Archive>,
    streams: Arc<StreamRegistry>,
    decode_errors: Arc<DecodeErrors>,
    groups: OnceLock<Arc<dyn GroupSource>>,
    queries: Arc<push::Queries>,
    persistent: Arc<persistent::Persistent>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// What one statement produced.
#[derive(Debug)]
pub enum Outcome {
    Rows(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>),
    /// A command tag (`CREATE STREAM`, `INSERT 0 3`, ...).
    Command(String),
}

impl Engine {
    /// What the tierer needs to add each stream's typed columns to the
    /// topic's new archive files (`TieringConfig::value_columns`).
    pub fn value_columns(&self) -> Arc<dyn sediment_tiering::convert::ValueColumns> {
        Arc::new(stream::StreamValueColumns {
            registry: self.streams.clone(),
            errors: self.decode_errors.clone(),
        })
    }

    /// Builds the engine over a running log and archive; stream
    /// definitions are loaded from `<data_dir>/sql/`.
    pub fn new(log: Arc<LogManager>, archive: Arc<Archive>) -> Result<Arc<Engine>, SqlError> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            // VARCHAR is Utf8: what arrow-json decodes and every Postgres
            // client reads.
            .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            .set_bool("datafusion.execution.parquet.reorder_filters", true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(functions::OctetLength::udf());
        for udf in window::udfs() {
            ctx.register_udf(udf);
        }
        let url = url::Url::parse(topic_table::ARCHIVE_STORE_URL)
            .map_err(|e| SqlError::internal(e.to_string()))?;
        ctx.register_object_store(&url, archive.store().clone());

        let data_dir = log.config().data_dir.clone();
        // Stream schemas come from the planner's type mapping.
        let streams = Arc::new(
            StreamRegistry::open(&data_dir, |def| statements::plan_value_schema(&ctx, def))
                .map_err(|e| SqlError::new("58030", e.to_string()))?,
        );
        let decode_errors = Arc::new(DecodeErrors::default());
        let persistent = Arc::new(persistent::Persistent::new(&data_dir));
        let engine = Arc::new_cyclic(|weak: &Weak<Engine>| {
            let catalog = MemoryCatalogProvider::new();
            let _ = catalog.register_schema(
                "topics",
                Arc::new(TopicsSchema {
                    log: log.clone(),
                    archive: archive.clone(),
                    tail: None,
                }),
            );
            let _ = catalog.register_schema(
                "public",
                Arc::new(StreamsSchema {
                    log: log.clone(),
                    archive: archive.clone(),
                    streams: streams.clone(),
                    errors: decode_errors.clone(),
                    other: MemorySchemaProvider::new(),
                    tail: None,
                    persistent: persistent.clone(),
                }),
            );
            let _ = catalog.register_schema(
                "sediment",
                Arc::new(SystemSchema {
                    engine: weak.clone(),
                }),
            );
            ctx.register_catalog(CATALOG, Arc::new(catalog));
            Engine {
                ctx,
                log,
                archive,
                streams,
                decode_errors,
                groups: OnceLock::new(),
                queries: Arc::default(),
                persistent,
            }
        });
        Ok(engine)
    }

    /// The DataFusion context: register functions, run plans.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn log(&self) -> &Arc<LogManager> {
        &self.log
    }

    pub fn streams(&self) -> &Arc<StreamRegistry> {
        &self.streams
    }

    pub fn decode_errors(&self) -> &Arc<DecodeErrors> {
        &self.decode_errors
    }

    /// Lets `sediment.consumer_groups` and `sediment.consumer_lag` see the
    /// group coordinator. Set once, at startup.
    pub fn set_groups(&self, groups: Arc<dyn GroupSource>) {
        let _ = self.groups.set(groups);
    }

    /// Runs a query string (one or more statements) and returns the last
    /// statement's outcome: for tests and tools; the Postgres front door
    /// streams results instead.
    pub async fn execute(&self, sql: &str) -> Result<Outcome, SqlError> {
        self.execute_with(sql, &mut Properties::default()).await
    }

    /// [`Engine::execute`] with a connection's push query properties, which
    /// `SET` statements change. A push query runs until its `LIMIT`.
    pub async fn execute_with(
        &self,
        sql: &str,
        props: &mut Properties,
    ) -> Result<Outcome, SqlError> {
        let mut last = Outcome::Command("EMPTY".into());
        for statement in split_statements(sql)? {
            last = match self.prepare(&statement).await? {
                Prepared::Custom(c) => Outcome::Command(self.run(c).await?),
                Prepared::Sql(sql) => {
                    let df = self.ctx.sql(&sql).await?;
                    let schema = Arc::new(df.schema().as_arrow().clone());
                    Outcome::Rows(schema, df.collect().await?)
                }
                Prepared::Push(q) => {
                    let p = self.push(&q, props).await?;
                    let batches = datafusion::physical_plan::common::collect(p.stream).await?;
                    Outcome::Rows(p.schema, batches)
                }
                Prepared::Set(set) => {
                    props.set(&set.name, set.value.as_deref())?;
                    Outcome::Command(if set.value.is_some() { "SET" } else { "UNSET" }.into())
                }
                Prepared::Cursor(_) => {
                    return Err(SqlError::new(
                        "0A000",
                        "cursors belong to a Postgres connection: DECLARE, FETCH and CLOSE work over the Postgres protocol",
                    ))
                }
            };
        }
        Ok(last)
    }
}

/// Schema `topics`: one table per topic.
#[derive(Debug)]
struct TopicsSchema {
    log: Arc<LogManager>,
    archive: Arc<Archive>,
    /// Tables that follow the log, for push queries.
    tail: Option<OffsetReset>,
}

#[async_trait]
impl SchemaProvider for TopicsSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .log
            .topics()
            .iter()
            .map(|t| t.meta.name.clone())
            .collect();
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.log.topic(name).map(|_| {
            Arc::new(
                TopicTable::new(name, self.log.clone(), self.archive.clone()).tailing(self.tail),
            ) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.log.topic(name).is_some()
    }
}

/// Schema `public`: declared streams, and whatever DataFusion tables or
/// views a session creates (in memory, not durable).
#[derive(Debug)]
struct StreamsSchema {
    log: Arc<LogManager>,
    archive: Arc<Archive>,
    streams: Arc<StreamRegistry>,
    errors: Arc<DecodeErrors>,
    other: MemorySchemaProvider,
    /// Streams that follow the log, for push queries.
    tail: Option<OffsetReset>,
    /// Tables maintained by persistent queries.
    persistent: Arc<persistent::Persistent>,
}

#[async_trait]
impl SchemaProvider for StreamsSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.streams.names();
        names.extend(self.persistent.table_names());
        names.extend(self.other.table_names());
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some((def, value_schema)) = self.streams.get(name) {
            let topic = TopicTable::new(&def.topic, self.log.clone(), self.archive.clone())
                .tailing(self.tail);
            return Ok(Some(Arc::new(stream::StreamTable::new(
                def,
                value_schema,
                topic,
                self.errors.clone(),
            ))));
        }
        if let Some(t) = self.persistent.table(name) {
            return Ok(Some(t));
        }
        self.other.table(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.streams.get(&name).is_some() || self.persistent.table(&name).is_some() {
            return Err(DataFusionError::Plan(format!(
                "'{name}' is a stream or a table: DROP it first"
            )));
        }
        self.other.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.other.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.streams.get(name).is_some()
            || self.persistent.table(name).is_some()
            || self.other.table_exist(name)
    }
}

/// Schema `sediment`: the system tables.
#[derive(Debug)]
struct SystemSchema {
    engine: Weak<Engine>,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        system::SYSTEM_TABLES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(system::SystemTable::new(name, self.engine.clone())
            .map(|t| Arc::new(t) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        system::SYSTEM_TABLES.contains(&name)
    }
}

/// An error with its SQLSTATE and, where there is one, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for SqlError {}

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        SqlError {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn syntax(message: impl Into<String>) -> Self {
        SqlError::new("42601", message)
    }

    pub fn undefined_table(name: &str) -> Self {
        SqlError::new("42P01", format!("relation \"{name}\" does not exist")).with_hint(
            "SHOW STREAMS and SHOW TOPICS list what exists; topics are in schema topics (topics.<name>)",
        )
    }

    pub fn unsupported(what: &str) -> Self {
        SqlError::new("0A000", format!("{what} is not supported"))
    }

    pub fn invalid_option(message: String) -> Self {
        SqlError::new("22023", message)
    }

    pub fn internal(message: String) -> Self {
        SqlError::new("XX000", message)
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        sqlstate(&e)
    }
}

/// The SQLSTATE and message for a DataFusion error (Postgres' codes where
/// Postgres has one).
pub fn sqlstate(e: &DataFusionError) -> SqlError {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root {
        if let Some(s) = inner.downcast_ref::<SqlError>() {
            return s.clone();
        }
    }
    let message = root.message().to_string();
    let code = match root {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(s, _) => match s.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::Plan(m) => plan_code(m),
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            datafusion::arrow::error::ArrowError::DivideByZero => "22012",
            datafusion::arrow::error::ArrowError::CastError(_)
            | datafusion::arrow::error::ArrowError::ParseError(_) => "22P02",
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => "22003",
            _ => "XX000",
        },
        DataFusionError::Execution(m) if m.contains("Divide by zero") => "22012",
        DataFusionError::Execution(m) if m.contains("Cannot cast") => "22P02",
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => "58030",
        DataFusionError::ParquetError(_) => "XX001",
        _ => "XX000",
    };
    // Postgres' wording, which clients and people recognise.
    let message = match (code, message.split_once("table '")) {
        ("42P01", Some((_, rest))) => match rest.split_once("' not found") {
            Some((name, _)) => {
                let name = name
                    .strip_prefix("sediment.public.")
                    .or_else(|| name.strip_prefix("sediment."))
                    .unwrap_or(name);
                format!("relation \"{name}\" does not exist")
            }
            None => message,
        },
        _ => message,
    };
    let hint = match code {
        "42P01" => Some(
            "SHOW STREAMS and SHOW TOPICS list what exists; topics are in schema topics (topics.<name>)"
                .to_string(),
        ),
        "42703" => Some("DESCRIBE <name> lists a table's columns".to_string()),
        _ => None,
    };
    SqlError {
        code,
        message,
        hint,
    }
}

fn plan_code(m: &str) -> &'static str {
    if m.contains("table '") && m.contains("not found") || m.contains("does not exist") {
        "42P01"
    } else if m.contains("Invalid function") || m.contains("No function matches") {
        "42883"
    } else if m.contains("Cannot infer common argument type")
        || m.contains("Cannot coerce")
        || m.contains("type coercion")
    {
        "42804"
    } else if m.contains("already exists") {
        "42P07"
    } else {
        "42000"
    }
}

#[cfg(test)]
mod tests;
