//! Push queries and result streams the Postgres front door sends as they
//! come.
//!
//! - `SELECT ... FROM s [WHERE ...] EMIT CHANGES [LIMIT n]` plans the same
//!   SQL over tables that follow the log ([`crate::tail::TailExec`]):
//!   it starts at each partition's high watermark, or at the beginning of
//!   history after `SET 'auto.offset.reset' = 'earliest'`, and runs until
//!   its `LIMIT` or until the client cancels or goes away.
//! - `COPY (query) TO STDOUT [WITH (FORMAT text|csv, HEADER)]` and `COPY
//!   name TO STDOUT` send any query's rows as COPY data, one message per
//!   row as the rows come: psql prints a push query's rows live this way.
//!   `COPY ... TO 'file'` (a file on the server) is refused.
//! - `SET 'name' = 'value'` / `UNSET 'name'` set a connection's push query
//!   properties ([`Properties`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList};
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::continuous::{self, ContinuousQueryPlanner, Emit, LateRecords, LiveFilterExec};
use crate::lex::{is_word, meaningful, text, tokens};
use crate::tail::QueryState;
use crate::topic_table::OffsetReset;
use crate::window;
use crate::{Engine, SqlError, StreamsSchema, TopicsSchema, CATALOG};

/// A query whose rows are sent as they are computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushQuery {
    /// The query, without `EMIT CHANGES` or the `COPY` around it.
    pub sql: String,
    /// `EMIT CHANGES` or `EMIT FINAL`: the query follows the log and does
    /// not end by itself.
    pub changes: bool,
    /// `EMIT FINAL`: a windowed aggregation emits each window once.
    pub emit_final: bool,
    /// Sent as COPY data rather than as rows.
    pub copy: Option<CopyOptions>,
}

/// How `COPY ... TO STDOUT` formats rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyOptions {
    /// CSV rather than Postgres' text format (tab-separated, `\N` for NULL).
    pub csv: bool,
    /// A first line with the column names (CSV only, as in Postgres).
    pub header: bool,
}

/// A connection's push query properties, set with `SET 'name' = 'value'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Properties {
    /// `auto.offset.reset`: `latest` (the default) or `earliest`.
    pub offset_reset: OffsetReset,
}

/// The properties `SET` knows.
pub const PROPERTIES: [&str; 1] = ["auto.offset.reset"];

impl Properties {
    /// Sets `name` to `value`, or back to its default when `value` is None.
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), SqlError> {
        match name.to_ascii_lowercase().as_str() {
            "auto.offset.reset" => {
                self.offset_reset = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("latest") => OffsetReset::Latest,
                    Some("earliest") => OffsetReset::Earliest,
                    Some(other) => {
                        return Err(SqlError::invalid_option(format!(
                            "auto.offset.reset must be 'earliest' or 'latest', not '{other}'"
                        )))
                    }
                };
                Ok(())
            }
            other => Err(
                SqlError::new("42704", format!("unknown property '{other}'"))
                    .with_hint(format!("properties: {}", PROPERTIES.join(", "))),
            ),
        }
    }

    /// The properties from `(name, value)` pairs, as a connection keeps
    /// them; unknown names and bad values are skipped.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut p = Properties::default();
        for (name, value) in pairs {
            let _ = p.set(name, Some(value));
        }
        p
    }
}

/// A `SET 'name' = 'value'` or `UNSET 'name'` of a push query property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetProperty {
    pub name: String,
    pub value: Option<String>,
}

/// `SET 'name' = 'value'`, `SET 'name' TO 'value'` or `UNSET 'name'` (a
/// quoted name, as in ksqlDB); None for any other statement.
pub fn parse_set(sql: &str) -> Result<Option<SetProperty>, SqlError> {
    let t: Vec<Token> = tokens(sql)?
        .into_iter()
        .filter(|t| meaningful(t) && *t != Token::SemiColon)
        .collect();
    let unset = match t.first() {
        Some(w) if is_word(w, "SET") => false,
        Some(w) if is_word(w, "UNSET") => true,
        _ => return Ok(None),
    };
    let Some(Token::SingleQuotedString(name)) = t.get(1) else {
        return Ok(None);
    };
    let value = match (unset, &t[2..]) {
        (true, []) => None,
        (false, [eq, Token::SingleQuotedString(v)]) if *eq == Token::Eq || is_word(eq, "TO") => {
            Some(v.clone())
        }
        _ => {
            return Err(SqlError::syntax(format!(
                "expected SET '{name}' = 'value' or UNSET '{name}'"
            )))
        }
    };
    Ok(Some(SetProperty {
        name: name.clone(),
        value,
    }))
}

/// A push query or a `COPY ... TO STDOUT`; None for any other statement.
pub fn parse(sql: &str) -> Result<Option<PushQuery>, SqlError> {
    let all = tokens(sql)?;
    let idx: Vec<usize> = (0..all.len()).filter(|&i| meaningful(&all[i])).collect();
    let Some(&first) = idx.first() else {
        return Ok(None);
    };
    if is_word(&all[first], "COPY") {
        return parse_copy(&all, &idx);
    }
    let (query, emit) = strip_emit(&all)?;
    Ok(emit.map(|emit_final| PushQuery {
        sql: query,
        changes: true,
        emit_final,
        copy: None,
    }))
}

/// The query without a top-level `EMIT CHANGES` or `EMIT FINAL`, and
/// which it had (`Some(true)` for FINAL).
fn strip_emit(tokens: &[Token]) -> Result<(String, Option<bool>), SqlError> {
    let mut depth = 0i32;
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut emit = None;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth == 0 && is_word(t, "EMIT") {
            let next = (i + 1..tokens.len()).find(|&j| meaningful(&tokens[j]));
            match next.map(|j| (j, &tokens[j])) {
                Some((j, w)) if is_word(w, "CHANGES") || is_word(w, "FINAL") => {
                    if emit.is_some() {
                        return Err(SqlError::syntax("EMIT is given twice"));
                    }
                    emit = Some(is_word(w, "FINAL"));
                    i = j + 1;
                    continue;
                }
                _ => {
                    return Err(SqlError::syntax(
                        "EMIT must be followed by CHANGES or FINAL",
                    ))
                }
            }
        }
        out.push(t.clone());
        i += 1;
    }
    Ok((text(&out).trim().to_string(), emit))
}

/// `COPY (query) TO STDOUT [WITH] [(options)]` or `COPY name TO STDOUT`.
fn parse_copy(all: &[Token], idx: &[usize]) -> Result<Option<PushQuery>, SqlError> {
    let at = |k: usize| idx.get(k).map(|&i| &all[i]);
    // The source: a parenthesised query, or a table name up to TO.
    let (query, changes, mut k) = if at(1) == Some(&Token::LParen) {
        let open = idx[1];
        let mut depth = 0;
        let mut close = None;
        for (i, t) in all.iter().enumerate().skip(open) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.ok_or_else(|| SqlError::syntax("COPY (query): missing ')'"))?;
        let (query, emit) = strip_emit(&all[open + 1..close])?;
        let k = idx.iter().position(|&i| i > close).unwrap_or(idx.len());
        (query, emit, k)
    } else {
        let to = (1..idx.len()).find(|&k| at(k).is_some_and(|t| is_word(t, "TO")));
        let Some(to) = to else {
            // COPY ... FROM: not ours.
            return Ok(None);
        };
        let name = text(&all[idx[1]..idx[to]]).trim().to_string();
        (format!("SELECT * FROM {name}"), None, to)
    };
    if !at(k).is_some_and(|t| is_word(t, "TO")) {
        return Err(SqlError::syntax(
            "COPY (query) must be followed by TO STDOUT",
        ));
    }
    k += 1;
    match at(k) {
        Some(t) if is_word(t, "STDOUT") => k += 1,
        Some(Token::SingleQuotedString(_)) => {
            return Err(
                SqlError::new("42501", "COPY to a file on the server is not allowed").with_hint(
                    "use COPY ... TO STDOUT (in psql, \\copy writes a file on the client)",
                ),
            )
        }
        _ => {
            return Err(SqlError::syntax(
                "COPY ... TO STDOUT is the only COPY target",
            ))
        }
    }
    let mut copy = CopyOptions::default();
    if at(k).is_some_and(|t| is_word(t, "WITH")) {
        k += 1;
    }
    // Options: `(FORMAT csv, HEADER [true])` or the old `CSV HEADER`.
    let parenthesised = at(k) == Some(&Token::LParen);
    if parenthesised {
        k += 1;
    }
    let mut expect_value = None::<String>;
    while let Some(t) = at(k) {
        k += 1;
        match t {
            Token::RParen if parenthesised => {
                if let Some(v) = expect_value.take() {
                    return Err(SqlError::syntax(format!("COPY option {v} needs a value")));
                }
                break;
            }
            Token::Comma => {}
            Token::SemiColon => break,
            Token::Word(_) | Token::SingleQuotedString(_) => {
                let v = match t {
                    Token::Word(w) => w.value.to_ascii_lowercase(),
                    Token::SingleQuotedString(w) => w.to_ascii_lowercase(),
                    _ => String::new(),
                };
                if let Some(option) = expect_value.take() {
                    match (option.as_str(), v.as_str()) {
                        ("format", "csv") => copy.csv = true,
                        ("format", "text") => copy.csv = false,
                        ("header", "true" | "on") => copy.header = true,
                        ("header", "false" | "off") => copy.header = false,
                        _ => {
                            return Err(SqlError::invalid_option(format!(
                                "COPY option {option} cannot be '{v}'"
                            )))
                        }
                    }
                    continue;
                }
                match v.as_str() {
                    "format" => expect_value = Some(v),
                    "csv" => copy.csv = true,
                    "header" => {
                        copy.header = true;
                        // `HEADER` alone, or `HEADER true|false`.
                        if let Some(Token::Word(n)) = at(k) {
                            if ["true", "false", "on", "off"]
                                .contains(&n.value.to_ascii_lowercase().as_str())
                            {
                                expect_value = Some(v);
                            }
                        }
                    }
                    other => {
                        return Err(SqlError::invalid_option(format!(
                            "COPY option {} is not supported (FORMAT text|csv and HEADER are)",
                            other.to_ascii_uppercase()
                        )))
                    }
                }
            }
            other => {
                return Err(SqlError::syntax(format!(
                    "unexpected '{other}' in COPY options"
                )))
            }
        }
    }
    if copy.header && !copy.csv {
        return Err(SqlError::invalid_option(
            "COPY HEADER is available only in CSV mode".to_string(),
        ));
    }
    Ok(Some(PushQuery {
        sql: query,
        changes: changes.is_some(),
        emit_final: changes == Some(true),
        copy: Some(copy),
    }))
}

/// A running push query or COPY: its rows' schema and the stream of them.
pub struct PushStream {
    pub schema: SchemaRef,
    pub stream: SendableRecordBatchStream,
}

/// The queries that are running (`sediment.queries`, `SHOW QUERIES`).
#[derive(Debug, Default)]
pub struct Queries {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, Arc<RunningQuery>>>,
}

/// One running query, as `sediment.queries` shows it.
#[derive(Debug)]
pub struct RunningQuery {
    pub id: String,
    pub kind: &'static str,
    pub sql: String,
    pub started_ms: i64,
    /// Rows sent so far.
    pub rows: AtomicU64,
    /// Records its windows dropped for arriving after they closed.
    pub late: Arc<LateRecords>,
}

impl Queries {
    /// The running queries, oldest first.
    pub fn list(&self) -> Vec<Arc<RunningQuery>> {
        self.running.lock().values().cloned().collect()
    }

    /// Registers a push query until the returned guard is dropped (when
    /// its stream is: the query ended, was cancelled, or lost its client).
    fn start(
        self: &Arc<Self>,
        id: Option<&str>,
        sql: &str,
        late: Arc<LateRecords>,
    ) -> (Arc<RunningQuery>, QueryGuard) {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let q = Arc::new(RunningQuery {
            id: id.map_or_else(|| format!("push_{n}"), str::to_string),
            kind: if id.is_some() { "PERSISTENT" } else { "PUSH" },
            sql: sql.to_string(),
            started_ms: sediment_log::now_ms(),
            rows: AtomicU64::new(0),
            late,
        });
        self.running.lock().insert(n, q.clone());
        (
            q,
            QueryGuard {
                queries: self.clone(),
                n,
            },
        )
    }
}

/// Removes a query from [`Queries`] when dropped.
struct QueryGuard {
    queries: Arc<Queries>,
    n: u64,
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        self.queries.running.lock().remove(&self.n);
    }
}

impl Engine {
    /// A context in which streams and topics follow the log from `start`.
    fn tail_context(
        &self,
        start: OffsetReset,
        late: Arc<LateRecords>,
        query: Arc<QueryState>,
    ) -> SessionContext {
        let mut state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .with_query_planner(Arc::new(ContinuousQueryPlanner))
            .build();
        // One live stream, kept in order: no round-robin split of it.
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_round_robin_repartition = false;
        state.config_mut().set_extension(late);
        state.config_mut().set_extension(query);
        let ctx = SessionContext::new_with_state(state);
        let catalog = MemoryCatalogProvider::new();
        let _ = catalog.register_schema(
            "topics",
            Arc::new(TopicsSchema {
                log: self.log.clone(),
                archive: self.archive.clone(),
                tail: Some(start),
            }),
        );
        let _ = catalog.register_schema(
            "public",
            Arc::new(StreamsSchema {
                log: self.log.clone(),
                archive: self.archive.clone(),
                streams: self.streams.clone(),
                errors: self.decode_errors.clone(),
                other: datafusion::catalog::MemorySchemaProvider::new(),
                tail: Some(start),
                persistent: self.persistent.clone(),
            }),
        );
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        ctx
    }

    /// Plans and starts `q`: with `EMIT CHANGES` over tables that follow
    /// the log (from where `props` says), otherwise as any query.
    pub async fn push(&self, q: &PushQuery, props: &Properties) -> Result<PushStream, SqlError> {
        self.push_as(q, props, None, Arc::default()).await
    }

    /// [`Engine::push`], listed in `sediment.queries` under `id` (a
    /// persistent query) rather than as a push query, with its position and
    /// state in `query` (see [`crate::tail`]).
    pub(crate) async fn push_as(
        &self,
        q: &PushQuery,
        props: &Properties,
        id: Option<&str>,
        query: Arc<QueryState>,
    ) -> Result<PushStream, SqlError> {
        let first = q
            .sql
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if !matches!(first.as_str(), "SELECT" | "WITH" | "VALUES" | "(") {
            return Err(SqlError::syntax(format!(
                "{} works with queries (SELECT ...), not with {first}",
                if q.changes {
                    "EMIT CHANGES"
                } else {
                    "COPY ... TO STDOUT"
                }
            )));
        }
        let windowed = window::rewrite(&q.sql, |name| self.event_time(name))?;
        let (sql, window) = match windowed {
            Some(w) if q.changes => (w.sql, Some(w.window)),
            Some(w) => (w.batch_sql, Some(w.window)),
            None => (q.sql.clone(), None),
        };
        let late = Arc::new(LateRecords::default());
        let df = if q.changes {
            let ctx = self.tail_context(props.offset_reset, late.clone(), query);
            let plan = ctx.state().create_logical_plan(&sql).await?;
            let emit = if q.emit_final {
                Emit::Final
            } else {
                Emit::Changes
            };
            let plan = continuous::rewrite(plan, window, emit)?;
            ctx.execute_logical_plan(plan).await?
        } else {
            self.ctx.sql(&sql).await?
        };
        let schema = Arc::new(df.schema().as_arrow().clone());
        let task = Arc::new(df.task_ctx());
        let planned = async {
            let plan = df.create_physical_plan().await?;
            let plan = if q.changes {
                crate::tail::add_merges(LiveFilterExec::replace_filters(plan)?)?
            } else {
                plan
            };
            datafusion::physical_plan::execute_stream(plan, task)
        };
        let mut stream = planned.await.map_err(|e| {
            let mut err = SqlError::from(e);
            if q.changes && err.message.contains("pipeline breaking") {
                // DataFusion names the operator with its whole Debug form.
                let operator = err
                    .message
                    .split("operator: ")
                    .nth(1)
                    .and_then(|o| o.split([' ', '{']).next())
                    .unwrap_or("an operator")
                    .to_string();
                err = SqlError::new(
                    "0A000",
                    format!("this push query needs {operator}, which waits for the end of its input, and a push query's input never ends"),
                )
                .with_hint("push queries filter, project and aggregate (GROUP BY, WINDOW); ORDER BY and joins over a live stream are not supported");
            }
            err
        })?;
        if q.changes {
            // Listed while it runs; each batch counts its rows.
            let (running, guard) = self.queries.start(id, &q.sql, late);
            let counted = stream.map(move |b| {
                let _held = &guard;
                if let Ok(b) = &b {
                    running
                        .rows
                        .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                }
                b
            });
            stream = Box::pin(RecordBatchStreamAdapter::new(schema.clone(), counted));
        }
        Ok(PushStream { schema, stream })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn emit_changes_is_stripped_at_the_top_level_only() {
        let q = parse("SELECT a FROM s WHERE b > 1 EMIT CHANGES LIMIT 3;")
            .unwrap()
            .unwrap();
        assert_eq!(q.sql, "SELECT a FROM s WHERE b > 1  LIMIT 3;");
        assert!(q.changes && q.copy.is_none());
        assert_eq!(parse("SELECT 'EMIT CHANGES' FROM s").unwrap(), None);
        assert_eq!(parse("SELECT \"emit\" FROM s").unwrap(), None);
        assert!(
            parse("select * from s emit final")
                .unwrap()
                .unwrap()
                .emit_final
        );
        assert_eq!(parse("select * from s emit").unwrap_err().code, "42601");
    }

    #[test]
    fn copy_to_stdout_wraps_a_query_or_a_table() {
        let q = parse("COPY (SELECT * FROM s EMIT CHANGES LIMIT 2) TO STDOUT")
            .unwrap()
            .unwrap();
        assert_eq!(q.sql, "SELECT * FROM s  LIMIT 2");
        assert!(q.changes);
        assert_eq!(q.copy, Some(CopyOptions::default()));
        let q = parse("copy (select (1)) to stdout with (format csv, header)")
            .unwrap()
            .unwrap();
        assert_eq!(q.sql, "select (1)");
        assert!(!q.changes);
        assert_eq!(
            q.copy,
            Some(CopyOptions {
                csv: true,
                header: true
            })
        );
        let q = parse("COPY topics.t TO STDOUT CSV HEADER")
            .unwrap()
            .unwrap();
        assert_eq!(q.sql, "SELECT * FROM topics.t");
        assert!(q.copy.unwrap().header);
        assert_eq!(parse("COPY t FROM STDIN").unwrap(), None);
        assert_eq!(
            parse("COPY (SELECT 1) TO '/etc/passwd'").unwrap_err().code,
            "42501"
        );
        assert_eq!(
            parse("COPY (SELECT 1) TO STDOUT (FORMAT binary)")
                .unwrap_err()
                .code,
            "22023"
        );
        assert_eq!(
            parse("COPY (SELECT 1) TO STDOUT (HEADER)")
                .unwrap_err()
                .code,
            "22023"
        );
    }

    #[test]
    fn set_and_unset_take_quoted_property_names() {
        assert_eq!(
            parse_set("SET 'auto.offset.reset' = 'earliest'").unwrap(),
            Some(SetProperty {
                name: "auto.offset.reset".into(),
                value: Some("earliest".into())
            })
        );
        assert_eq!(
            parse_set("unset 'auto.offset.reset';")
                .unwrap()
                .unwrap()
                .value,
            None
        );
        assert_eq!(parse_set("SET search_path = public").unwrap(), None);
        let mut p = Properties::default();
        p.set("auto.offset.reset", Some("EARLIEST")).unwrap();
        assert_eq!(p.offset_reset, OffsetReset::Earliest);
        assert_eq!(
            p.set("auto.offset.reset", Some("middle")).unwrap_err().code,
            "22023"
        );
        assert_eq!(p.set("nope", Some("1")).unwrap_err().code, "42704");
        assert_eq!(
            Properties::from_pairs([("auto.offset.reset", "earliest")]).offset_reset,
            OffsetReset::Earliest
        );
    }
}
