//! Sediment's own statements, recognised before DataFusion sees the SQL.
//!
//! - `CREATE STREAM [IF NOT EXISTS] name (col TYPE, ...) WITH (KAFKA_TOPIC='t',
//!   VALUE_FORMAT='JSON' [, PARTITIONS=n] [, TIMESTAMP='col'])`
//! - `DROP STREAM [IF EXISTS] name [DELETE TOPIC]`
//! - `SHOW STREAMS`, `SHOW TOPICS` and `DESCRIBE name` are rewritten into
//!   queries (over `sediment.streams`, `sediment.topics`, and a `VALUES`
//!   list), so they work on every protocol path with parameters and types.
//!
//! Everything else goes to DataFusion unchanged.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, SqlOption, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::push::{self, PushQuery, SetProperty};
use crate::stream::{ColumnDef, StreamDef, PSEUDO_COLUMNS};
use crate::{Engine, SqlError};

/// A statement Sediment runs itself.
#[derive(Debug, Clone)]
pub enum Custom {
    CreateStream {
        def: StreamDef,
        if_not_exists: bool,
        partitions: Option<i32>,
    },
    DropStream {
        name: String,
        if_exists: bool,
        delete_topic: bool,
    },
    /// `CREATE STREAM|TABLE ... AS SELECT` (a persistent query).
    CreateAs(crate::persistent::CreateAs),
    /// `TERMINATE <query id>`.
    Terminate(String),
    /// `DROP TABLE [IF EXISTS] t` of a table a persistent query maintains.
    DropTable { name: String, if_exists: bool },
}

/// What to do with one statement.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Hand this SQL to DataFusion.
    Sql(String),
    Custom(Custom),
    /// A push query or `COPY ... TO STDOUT`: rows are sent as they come
    /// ([`Engine::push`]).
    Push(PushQuery),
    /// A connection's push query property (`SET 'name' = 'value'`).
    Set(SetProperty),
    /// `DECLARE`, `FETCH` or `CLOSE` (run by the Postgres server, which
    /// holds the connection's cursors).
    Cursor(crate::cursor::CursorStatement),
}

/// Splits a query string into statements at top-level semicolons (not
/// inside strings, identifiers or comments). Empty statements are dropped.
pub fn split_statements(sql: &str) -> Result<Vec<String>, SqlError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| SqlError::syntax(e.to_string()))?;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut meaningful = false;
    for t in tokens {
        if t == Token::SemiColon {
            if meaningful {
                out.push(std::mem::take(&mut current).trim().to_string());
            }
            current.clear();
            meaningful = false;
            continue;
        }
        if !matches!(t, Token::Whitespace(_)) {
            meaningful = true;
        }
        current.push_str(&t.to_string());
    }
    if meaningful {
        out.push(current.trim().to_string());
    }
    Ok(out)
}

/// The leading words of a statement, uppercased (comments skipped).
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(n)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

/// Whether `sql` (one statement) is one Sediment runs itself (push
/// queries aside: see [`push::parse`]).
pub fn is_custom(sql: &str) -> bool {
    let w = leading_words(sql, 2);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["CREATE", "STREAM"] | ["DROP", "STREAM"] | ["TERMINATE", _]
    ) || push::parse_set(sql).is_ok_and(|s| s.is_some())
        || crate::persistent::parse_create_as(sql).is_ok_and(|c| c.is_some())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn syntax(e: impl std::fmt::Display) -> SqlError {
    SqlError::syntax(e.to_string())
}

fn expect_end(p: &mut Parser<'_>) -> Result<(), SqlError> {
    while p.consume_token(&Token::SemiColon) {}
    let t = p.peek_token();
    if t.token != Token::EOF {
        return Err(SqlError::syntax(format!(
            "unexpected '{}' at {}",
            t.token, t.span.start
        )));
    }
    Ok(())
}

impl Engine {
    /// Decides what one statement is: ours, a rewrite, or DataFusion's.
    pub async fn prepare(&self, sql: &str) -> Result<Prepared, SqlError> {
        if let Some(set) = push::parse_set(sql)? {
            return Ok(Prepared::Set(set));
        }
        if let Some(c) = crate::cursor::parse(sql)? {
            return Ok(Prepared::Cursor(c));
        }
        if let Some(c) = crate::persistent::parse_create_as(sql)? {
            return Ok(Prepared::Custom(Custom::CreateAs(c)));
        }
        if let Some(q) = push::parse(sql)? {
            return Ok(Prepared::Push(q));
        }
        let words = leading_words(sql, 5);
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["TERMINATE", id] => Ok(Prepared::Custom(Custom::Terminate(id.to_string()))),
            ["DROP", "TABLE", "IF", "EXISTS", name]
                if self.persistent.table(&name.to_ascii_lowercase()).is_some() =>
            {
                Ok(Prepared::Custom(Custom::DropTable {
                    name: name.to_string(),
                    if_exists: true,
                }))
            }
            ["DROP", "TABLE", name]
                if self.persistent.table(&name.to_ascii_lowercase()).is_some() =>
            {
                Ok(Prepared::Custom(Custom::DropTable {
                    name: name.to_string(),
                    if_exists: false,
                }))
            }
            ["CREATE", "STREAM", ..] => self.parse_create_stream(sql).map(Prepared::Custom),
            ["DROP", "STREAM", ..] => parse_drop_stream(sql).map(Prepared::Custom),
            ["SHOW", "STREAMS"] => Ok(Prepared::Sql(
                "SELECT name, topic, value_format, columns, timestamp_column \
                 FROM sediment.sediment.streams ORDER BY name"
                    .into(),
            )),
            ["SHOW", "TOPICS"] => Ok(Prepared::Sql(
                "SELECT name, partitions, remote_storage, stream \
                 FROM sediment.sediment.topics ORDER BY name"
                    .into(),
            )),
            ["SHOW", "QUERIES"] => Ok(Prepared::Sql(
                "SELECT query_id, kind, sql, started, rows, late_records \
                 FROM sediment.sediment.queries ORDER BY started, query_id"
                    .into(),
            )),
            ["DESCRIBE", ..] | ["DESC", ..] => self.describe(sql).await.map(Prepared::Sql),
            // A WINDOW clause over history: the batch form of a windowed
            // aggregation.
            _ => match crate::window::rewrite(sql, |name| self.event_time(name))? {
                Some(w) => Ok(Prepared::Sql(w.batch_sql)),
                None => Ok(Prepared::Sql(sql.to_string())),
            },
        }
    }

    /// `DESCRIBE name` as a `VALUES` query listing columns with SQL types.
    async fn describe(&self, sql: &str) -> Result<String, SqlError> {
        let name = describe_target(sql)?;
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.to_string().trim_matches('"').to_string())
            .collect();
        let (schema, table) = match parts.as_slice() {
            [t] => (None, t.clone()),
            [s, t] => (Some(s.clone()), t.clone()),
            _ => return Err(SqlError::undefined_table(&name.to_string())),
        };
        let rows: Vec<(String, String, bool)> =
            if schema.is_none() || schema.as_deref() == Some("public") {
                if let Some((def, _)) = self.streams.get(&table) {
                    let mut rows: Vec<(String, String, bool)> = vec![
                        ("_partition".into(), "INTEGER".into(), false),
                        ("_offset".into(), "BIGINT".into(), false),
                        (
                            "_timestamp".into(),
                            "TIMESTAMP WITH TIME ZONE".into(),
                            false,
                        ),
                        ("_key".into(), "VARCHAR".into(), true),
                    ];
                    rows.extend(
                        def.columns
                            .iter()
                            .map(|c| (c.name.clone(), c.sql_type.clone(), true)),
                    );
                    rows
                } else {
                    self.schema_rows(schema.as_deref().unwrap_or("public"), &table)
                        .await?
                }
            } else {
                self.schema_rows(schema.as_deref().unwrap_or("public"), &table)
                    .await?
            };
        let values: Vec<String> = rows
            .iter()
            .map(|(n, t, null)| {
                format!(
                    "({}, {}, {})",
                    quote_literal(n),
                    quote_literal(t),
                    quote_literal(if *null { "YES" } else { "NO" })
                )
            })
            .collect();
        Ok(format!(
            "SELECT column1 AS column_name, column2 AS data_type, column3 AS is_nullable \
             FROM (VALUES {})",
            values.join(", ")
        ))
    }

    async fn schema_rows(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Vec<(String, String, bool)>, SqlError> {
        let reference = datafusion::common::TableReference::partial(schema, table);
        let provider = self
            .ctx
            .table_provider(reference)
            .await
            .map_err(|_| SqlError::undefined_table(&format!("{schema}.{table}")))?;
        Ok(provider
            .schema()
            .fields()
            .iter()
            .map(|f| {
                (
                    f.name().clone(),
                    sql_type_name(f.data_type()),
                    f.is_nullable(),
                )
            })
            .collect())
    }

    fn parse_create_stream(&self, sql: &str) -> Result<Custom, SqlError> {
        let dialect = PostgreSqlDialect {};
        let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
        p.expect_keyword(Keyword::CREATE).map_err(syntax)?;
        p.expect_keyword(Keyword::STREAM).map_err(syntax)?;
        let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = p.parse_identifier().map_err(syntax)?.value;
        let (columns, constraints) = p.parse_columns().map_err(syntax)?;
        if !constraints.is_empty() {
            return Err(SqlError::unsupported("constraints on a stream's columns"));
        }
        if columns.is_empty() {
            return Err(SqlError::syntax(format!(
                "stream '{name}' declares no columns: list them, e.g. CREATE STREAM {name} (id VARCHAR, amount DOUBLE) WITH (...)"
            )));
        }
        let options = if p.peek_keyword(Keyword::WITH) {
            p.parse_options(Keyword::WITH).map_err(syntax)?
        } else {
            Vec::new()
        };
        expect_end(&mut p)?;

        let mut topic = None;
        let mut value_format = None;
        let mut partitions = None;
        let mut timestamp_column = None;
        for o in options {
            let SqlOption::KeyValue { key, value } = o else {
                return Err(SqlError::invalid_option(format!("unsupported option {o}")));
            };
            let k = key.value.to_ascii_uppercase();
            match k.as_str() {
                "KAFKA_TOPIC" => topic = Some(string_option(&k, &value)?),
                "VALUE_FORMAT" => value_format = Some(string_option(&k, &value)?.to_ascii_uppercase()),
                "PARTITIONS" => partitions = Some(int_option(&k, &value)?),
                "TIMESTAMP" => timestamp_column = Some(string_option(&k, &value)?.to_ascii_lowercase()),
                "REPLICAS" => {
                    if int_option(&k, &value)? != 1 {
                        return Err(SqlError::invalid_option("REPLICAS must be 1 (replication is not built yet)".to_string()));
                    }
                }
                "KEY_FORMAT" => {
                    let f = string_option(&k, &value)?.to_ascii_uppercase();
                    if f != "KAFKA" {
                        return Err(SqlError::invalid_option(format!(
                            "KEY_FORMAT '{f}' is not supported: keys are read as text (KEY_FORMAT='KAFKA')"
                        )));
                    }
                }
                _ => {
                    return Err(SqlError::invalid_option(format!(
                        "unknown option {k}: use KAFKA_TOPIC, VALUE_FORMAT, PARTITIONS, TIMESTAMP, KEY_FORMAT or REPLICAS"
                    )))
                }
            }
        }
        let topic = topic.ok_or_else(|| {
            SqlError::invalid_option(format!(
                "missing KAFKA_TOPIC: CREATE STREAM {name} (...) WITH (KAFKA_TOPIC='{name}', VALUE_FORMAT='JSON')"
            ))
        })?;
        let value_format = value_format.unwrap_or_else(|| "JSON".to_string());
        if value_format != "JSON" {
            return Err(SqlError::unsupported(&format!(
                "VALUE_FORMAT '{value_format}' (only 'JSON' is supported)"
            )));
        }
        if let Some(n) = partitions {
            if n < 1 {
                return Err(SqlError::invalid_option(format!(
                    "PARTITIONS must be at least 1, not {n}"
                )));
            }
        }
        let mut defs = Vec::with_capacity(columns.len());
        for c in &columns {
            let cname = c.name.value.clone();
            if PSEUDO_COLUMNS
                .iter()
                .any(|(p, _)| p.eq_ignore_ascii_case(&cname))
            {
                return Err(SqlError::new(
                    "42701",
                    format!("column '{cname}' is reserved: every stream has _partition, _offset, _timestamp and _key"),
                ));
            }
            if defs.iter().any(|d: &ColumnDef| d.name == cname) {
                return Err(SqlError::new(
                    "42701",
                    format!("column '{cname}' is declared twice"),
                ));
            }
            defs.push(ColumnDef {
                name: cname,
                sql_type: c.data_type.to_string(),
            });
        }
        let def = StreamDef {
            name,
            topic,
            value_format,
            columns: defs,
            timestamp_column,
            created_ms: sediment_log::now_ms(),
        };
        let schema = self.value_schema(&def).map_err(SqlError::from)?;
        if let Some(ts) = &def.timestamp_column {
            match schema.field_with_name(ts) {
                Ok(f) if matches!(f.data_type(), DataType::Timestamp(..) | DataType::Int64) => {}
                Ok(f) => {
                    return Err(SqlError::new(
                        "42804",
                        format!("TIMESTAMP column '{ts}' is {}, not a TIMESTAMP or BIGINT (ms since the epoch)", f.data_type()),
                    ))
                }
                Err(_) => {
                    return Err(SqlError::new("42703", format!("TIMESTAMP column '{ts}' is not a declared column")))
                }
            }
        }
        Ok(Custom::CreateStream {
            def,
            if_not_exists,
            partitions,
        })
    }

    /// The event-time expression of a source named as after FROM: the
    /// stream's TIMESTAMP column, else the record timestamp.
    pub(crate) fn event_time(&self, source: &str) -> String {
        let unquoted: Vec<String> = source
            .split('.')
            .map(|p| p.trim_matches('"').to_string())
            .collect();
        match unquoted.as_slice() {
            [schema, _] if schema == "topics" => "\"timestamp\"".into(),
            [name] | [_, name] => match self.streams.get(name) {
                Some((def, _)) => match def.timestamp_column {
                    Some(c) => format!("\"{}\"", c.replace('"', "\"\"")),
                    None => "_timestamp".into(),
                },
                None => "_timestamp".into(),
            },
            _ => "_timestamp".into(),
        }
    }

    pub(crate) fn value_schema(&self, def: &StreamDef) -> datafusion::common::Result<SchemaRef> {
        plan_value_schema(&self.ctx, def)
    }

    /// Runs one of Sediment's statements; the command tag for the client.
    pub async fn run(&self, c: Custom) -> Result<String, SqlError> {
        match c {
            Custom::CreateAs(c) => self.create_as(c).await,
            Custom::Terminate(id) => self.terminate(&id),
            Custom::DropTable { name, if_exists } => self.drop_table(&name, if_exists),
            Custom::CreateStream {
                def,
                if_not_exists,
                partitions,
            } => {
                if self.streams.get(&def.name).is_some() {
                    if if_not_exists {
                        return Ok("CREATE STREAM".into());
                    }
                    return Err(SqlError::new(
                        "42P07",
                        format!("stream '{}' already exists (DROP STREAM {} first, or CREATE STREAM IF NOT EXISTS)", def.name, def.name),
                    ));
                }
                match (self.log.topic(&def.topic), partitions) {
                    (Some(t), Some(n)) if t.meta.partitions != n => {
                        return Err(SqlError::invalid_option(format!(
                            "topic '{}' exists with {} partitions, not {n}: leave PARTITIONS out to use it as it is",
                            def.topic, t.meta.partitions
                        )))
                    }
                    (Some(_), _) => {}
                    (None, Some(n)) => {
                        let log = self.log.clone();
                        let topic = def.topic.clone();
                        tokio::task::spawn_blocking(move || {
                            log.create_topic(&topic, n, Default::default())
                        })
                        .await
                        .map_err(|e| SqlError::internal(e.to_string()))?
                        .map_err(|e| SqlError::new("58030", format!("creating topic '{}': {e}", def.topic)))?;
                    }
                    (None, None) => {
                        return Err(SqlError::new(
                            "42P01",
                            format!(
                                "topic '{}' does not exist: create it, or add PARTITIONS=n to the WITH clause",
                                def.topic
                            ),
                        ))
                    }
                }
                let schema = self.value_schema(&def).map_err(SqlError::from)?;
                let created = self
                    .streams
                    .create(def.clone(), schema)
                    .map_err(|e| SqlError::new("58030", e.to_string()))?;
                if !created && !if_not_exists {
                    return Err(SqlError::new(
                        "42P07",
                        format!("stream '{}' already exists", def.name),
                    ));
                }
                tracing::info!(stream = %def.name, topic = %def.topic, "stream created");
                Ok("CREATE STREAM".into())
            }
            Custom::DropStream {
                name,
                if_exists,
                delete_topic,
            } => {
                // A stream a persistent query writes: stop the query first.
                self.stop_writer(&name)?;
                let dropped = self
                    .streams
                    .drop_stream(&name)
                    .map_err(|e| SqlError::new("58030", e.to_string()))?;
                let Some(def) = dropped else {
                    if if_exists {
                        return Ok("DROP STREAM".into());
                    }
                    return Err(SqlError::undefined_table(&name));
                };
                if delete_topic && self.log.topic(&def.topic).is_some() {
                    let log = self.log.clone();
                    let topic = def.topic.clone();
                    tokio::task::spawn_blocking(move || log.delete_topic(&topic))
                        .await
                        .map_err(|e| SqlError::internal(e.to_string()))?
                        .map_err(|e| {
                            SqlError::new("58030", format!("deleting topic '{}': {e}", def.topic))
                        })?;
                }
                tracing::info!(stream = %name, delete_topic, "stream dropped");
                Ok("DROP STREAM".into())
            }
        }
    }
}

/// The Arrow schema of a stream's declared columns, from the SQL planner's
/// own type mapping (a `CREATE TABLE` planned, not run).
pub(crate) fn plan_value_schema(
    ctx: &datafusion::prelude::SessionContext,
    def: &StreamDef,
) -> datafusion::common::Result<SchemaRef> {
    let cols: Vec<String> = def
        .columns
        .iter()
        .map(|c| format!("\"{}\" {}", c.name.replace('"', "\"\""), c.sql_type))
        .collect();
    let sql = format!("CREATE TABLE sediment_stream_columns ({})", cols.join(", "));
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(&sql, &dialect)?;
    // Planning a CREATE TABLE resolves no tables: nothing here waits.
    let plan = futures::executor::block_on(state.statement_to_plan(statement))?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t)) => {
            Ok(Arc::new(t.input.schema().as_arrow().clone()))
        }
        other => Err(datafusion::error::DataFusionError::Internal(format!(
            "planning stream columns gave {}",
            other.display()
        ))),
    }
}

/// The table named by `DESCRIBE name` (the sqlparser parser is not Send:
/// it must not live across an await).
fn describe_target(sql: &str) -> Result<datafusion::sql::sqlparser::ast::ObjectName, SqlError> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    p.next_token(); // DESCRIBE / DESC
    let name = p.parse_object_name(false).map_err(syntax)?;
    expect_end(&mut p)?;
    Ok(name)
}

fn parse_drop_stream(sql: &str) -> Result<Custom, SqlError> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    p.expect_keyword(Keyword::DROP).map_err(syntax)?;
    p.expect_keyword(Keyword::STREAM).map_err(syntax)?;
    let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = p.parse_identifier().map_err(syntax)?.value;
    let delete_topic = if p.parse_keyword(Keyword::DELETE) {
        let t = p.next_token();
        if !crate::lex::is_word(&t.token, "topic") {
            return Err(SqlError::syntax(format!(
                "expected TOPIC after DELETE, found '{}'",
                t.token
            )));
        }
        true
    } else {
        false
    };
    expect_end(&mut p)?;
    Ok(Custom::DropStream {
        name,
        if_exists,
        delete_topic,
    })
}

fn string_option(key: &str, v: &SqlExpr) -> Result<String, SqlError> {
    match v {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
            other => Err(SqlError::invalid_option(format!(
                "{key} must be a quoted string, not {other}"
            ))),
        },
        SqlExpr::Identifier(i) => Ok(i.value.clone()),
        other => Err(SqlError::invalid_option(format!(
            "{key} must be a quoted string, not {other}"
        ))),
    }
}

fn int_option(key: &str, v: &SqlExpr) -> Result<i32, SqlError> {
    let text = match v {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    text.parse()
        .map_err(|_| SqlError::invalid_option(format!("{key} must be an integer, not {text}")))
}

/// A SQL name for an Arrow type, as `DESCRIBE` shows it.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt16 => "INTEGER".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", sql_type_name(f.data_type())),
        DataType::Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let s = split_statements("SELECT ';' ; -- a; comment\n SELECT \"a;b\" FROM t;;").unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0], "SELECT ';'");
        assert!(s[1].ends_with("SELECT \"a;b\" FROM t"), "{s:?}");
        assert!(split_statements("  ; ").unwrap().is_empty());
    }

    #[test]
    fn custom_statements_are_recognised_by_their_leading_words() {
        assert!(is_custom("create stream s (a int) with (kafka_topic='t')"));
        assert!(is_custom("/* c */ DROP   STREAM s"));
        assert!(!is_custom("CREATE TABLE s (a int)"));
        assert!(!is_custom("SELECT * FROM stream"));
    }

    #[test]
    fn drop_stream_parses_its_options() {
        let Custom::DropStream {
            name,
            if_exists,
            delete_topic,
        } = parse_drop_stream("DROP STREAM IF EXISTS s DELETE TOPIC;").unwrap()
        else {
            panic!()
        };
        assert_eq!((name.as_str(), if_exists, delete_topic), ("s", true, true));
        let e = parse_drop_stream("DROP STREAM s DELETE everything").unwrap_err();
        assert_eq!(e.code, "42601");
    }
}
