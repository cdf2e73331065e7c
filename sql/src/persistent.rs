//! Persistent queries, ksqlDB-style: push queries the server runs on its
//! own, durably defined, writing their results to topics.
//!
//! - `CREATE STREAM out [WITH (KAFKA_TOPIC='t', PARTITIONS=n)] AS SELECT
//!   ... FROM s [WHERE ...] [EMIT CHANGES]`: every result row becomes a
//!   JSON record on topic `out`, and `out` is a stream like any other.
//! - `CREATE TABLE t [WITH (...)] AS SELECT k, COUNT(*), ... FROM s
//!   [WINDOW ...] GROUP BY k [EMIT CHANGES]`: the table is kept up to date
//!   in memory (pull queries read it: `SELECT * FROM t WHERE k = 'x'`) and
//!   its changelog (each group's new row, keyed by the group) goes to topic
//!   `t`. Windowed tables always carry `windowstart` and `windowend`.
//! - `SHOW QUERIES`, `TERMINATE <query id>`, `DROP TABLE t` / `DROP STREAM
//!   out` (which terminate the query writing them).
//!
//! Definitions live in `<data_dir>/sql/queries.json`. A persistent query
//! starts from the earliest offset. Exactly once: every
//! [`COMMIT_INTERVAL`] (or longer, when a commit is slow) it writes a
//! checkpoint (see [`crate::checkpoint`]) holding its input offsets, its
//! state and the output produced since the last one, and only then appends
//! that output, from an idempotent producer. A table's output is its
//! changelog compacted per commit: each changed key's latest row (a row
//! upserted unchanged is no change). On the query's task a commit only
//! takes the changes and copies the aggregate's state (its keys are
//! shared, not copied); the checkpoint's copy of the table is brought up
//! to date with the changes in the background. A restart (after a clean
//! stop or a crash) resumes from the checkpoint, so nothing is lost or
//! counted twice. Pull queries read the table as it is
//! maintained, ahead of its last checkpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, Header, InputOffset, PendingBatch};
use crate::push::PushQuery;
use crate::stream::{ColumnDef, StreamDef, PSEUDO_COLUMNS};
use crate::tail::QueryState;
use crate::topic_table::OffsetReset;
use crate::window::{WINDOW_END, WINDOW_START};
use crate::{Engine, Properties, SqlError};

const QUERIES_FORMAT: &str = "sediment-persistent-queries";
const QUERIES_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Stream,
    Table,
}

/// A persistent query's durable definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryDef {
    /// `CSAS_<NAME>` or `CTAS_<NAME>`.
    pub id: String,
    pub kind: Kind,
    /// The stream or table it writes.
    pub name: String,
    pub topic: String,
    pub partitions: i32,
    /// The query (no `EMIT`).
    pub sql: String,
    pub created_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct QueriesFile {
    format: String,
    version: u32,
    queries: Vec<QueryDef>,
}

/// A running persistent query.
struct Running {
    def: QueryDef,
    stop: CancellationToken,
    /// Set when the query is dropped: it stops without a last checkpoint
    /// and removes its checkpoint file.
    dropped: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    table: Option<Arc<MaterializedTable>>,
}

/// Persistent queries: definitions (durable) and the running ones.
pub struct Persistent {
    path: PathBuf,
    running: Mutex<BTreeMap<String, Running>>,
}

impl fmt::Debug for Persistent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Persistent")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Persistent {
    pub fn new(data_dir: &Path) -> Self {
        Persistent {
            path: data_dir.join("sql").join("queries.json"),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    fn load(&self) -> Result<Vec<QueryDef>, SqlError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let bad =
                    |r: String| SqlError::new("XX001", format!("{}: {r}", self.path.display()));
                let file: QueriesFile =
                    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                if file.format != QUERIES_FORMAT || file.version > QUERIES_VERSION {
                    return Err(bad(format!(
                        "format '{}' version {} is not one this build reads",
                        file.format, file.version
                    )));
                }
                Ok(file.queries)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(SqlError::new(
                "58030",
                format!("{}: {e}", self.path.display()),
            )),
        }
    }

    fn persist(&self, running: &BTreeMap<String, Running>) -> Result<(), SqlError> {
        let file = QueriesFile {
            format: QUERIES_FORMAT.into(),
            version: QUERIES_VERSION,
            queries: running.values().map(|r| r.def.clone()).collect(),
        };
        let io =
            |e: std::io::Error| SqlError::new("58030", format!("{}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| SqlError::internal(e.to_string()))?;
        sediment_log::frame::write_atomic(&self.path, &bytes).map_err(io)
    }

    /// The materialized table `name`, if a persistent query maintains it.
    pub fn table(&self, name: &str) -> Option<Arc<MaterializedTable>> {
        self.running.lock().get(name).and_then(|r| r.table.clone())
    }

    pub fn table_names(&self) -> Vec<String> {
        self.running
            .lock()
            .values()
            .filter(|r| r.def.kind == Kind::Table)
            .map(|r| r.def.name.clone())
            .collect()
    }

    pub fn definitions(&self) -> Vec<QueryDef> {
        self.running
            .lock()
            .values()
            .map(|r| r.def.clone())
            .collect()
    }

    /// Stops and forgets the query writing `name`; its definition.
    fn remove(&self, name: &str) -> Result<Option<QueryDef>, SqlError> {
        let mut running = self.running.lock();
        let Some(r) = running.remove(name) else {
            return Ok(None);
        };
        if let Err(e) = self.persist(&running) {
            running.insert(name.to_string(), r);
            return Err(e);
        }
        r.dropped.store(true, Ordering::Release);
        r.stop.cancel();
        Ok(Some(r.def))
    }

    /// Stops every running query after a last checkpoint, keeping the
    /// definitions (shutdown).
    pub async fn stop_all(&self) {
        let tasks: Vec<_> = self
            .running
            .lock()
            .values_mut()
            .filter_map(|r| {
                r.stop.cancel();
                r.task.take()
            })
            .collect();
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("a persistent query did not stop within 10 s");
            }
        }
    }

    /// Where query `def` checkpoints (its creation time in the name: a
    /// query created again under the same name starts afresh).
    fn checkpoint_path(&self, def: &QueryDef) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join("checkpoints")
            .join(format!("{}-{}.ckpt", def.id, def.created_ms))
    }

    fn by_id(&self, id: &str) -> Option<String> {
        self.running
            .lock()
            .values()
            .find(|r| r.def.id.eq_ignore_ascii_case(id))
            .map(|r| r.def.name.clone())
    }
}

/// A persistent query's statement, parsed.
#[derive(Debug, Clone)]
pub struct CreateAs {
    pub kind: Kind,
    pub name: String,
    pub topic: Option<String>,
    pub partitions: Option<i32>,
    pub query: PushQuery,
}

/// `CREATE STREAM|TABLE name [WITH (...)] AS <query>`; None for other
/// statements.
pub fn parse_create_as(sql: &str) -> Result<Option<CreateAs>, SqlError> {
    use crate::lex::{is_word, meaningful};
    use datafusion::sql::sqlparser::tokenizer::Token;
    let tokens = crate::lex::tokens(sql)?;
    let idx: Vec<usize> = (0..tokens.len())
        .filter(|&i| meaningful(&tokens[i]))
        .collect();
    let word = |k: usize, w: &str| idx.get(k).is_some_and(|&i| is_word(&tokens[i], w));
    let kind = if word(0, "CREATE") && word(1, "STREAM") {
        Kind::Stream
    } else if word(0, "CREATE") && word(1, "TABLE") {
        Kind::Table
    } else {
        return Ok(None);
    };
    let Some(Token::Word(name)) = idx.get(2).map(|&i| &tokens[i]) else {
        return Ok(None);
    };
    let name = name.value.clone();
    // Optional WITH (k = v, ...), then AS.
    let mut k = 3;
    let mut topic = None;
    let mut partitions = None;
    if word(k, "WITH") {
        let open = idx
            .get(k + 1)
            .copied()
            .filter(|&i| tokens[i] == Token::LParen);
        let Some(open) = open else {
            return Ok(None);
        };
        let close = (open..tokens.len())
            .find(|&i| tokens[i] == Token::RParen)
            .ok_or_else(|| SqlError::syntax("WITH (...): missing ')'"))?;
        let inner: Vec<&Token> = tokens[open + 1..close]
            .iter()
            .filter(|t| meaningful(t))
            .collect();
        for option in inner.split(|t| **t == Token::Comma) {
            match option {
                [Token::Word(key), Token::Eq, value] => {
                    let v = match value {
                        Token::SingleQuotedString(s) | Token::Number(s, _) => s.clone(),
                        Token::Word(w) => w.value.clone(),
                        other => other.to_string(),
                    };
                    match key.value.to_ascii_uppercase().as_str() {
                        "KAFKA_TOPIC" => topic = Some(v),
                        "PARTITIONS" => {
                            partitions = Some(v.parse::<i32>().ok().filter(|n| *n >= 1).ok_or_else(
                                || SqlError::invalid_option(format!("PARTITIONS must be a positive integer, not {v}")),
                            )?)
                        }
                        "VALUE_FORMAT" if v.eq_ignore_ascii_case("JSON") => {}
                        other => {
                            return Err(SqlError::invalid_option(format!(
                                "unknown option {other} for CREATE ... AS SELECT: use KAFKA_TOPIC, PARTITIONS or VALUE_FORMAT='JSON'"
                            )))
                        }
                    }
                }
                _ => return Err(SqlError::syntax("WITH options are KEY = 'value', ...")),
            }
        }
        k = idx.iter().position(|&i| i > close).unwrap_or(idx.len());
    }
    if !word(k, "AS") {
        // `CREATE STREAM s (cols) WITH (...)` or `CREATE TABLE t (cols)`.
        return Ok(None);
    }
    let rest = crate::lex::text(&tokens[idx[k] + 1..]);
    let rest = rest.trim();
    let query = match crate::push::parse(rest)? {
        Some(q) if q.copy.is_none() => q,
        Some(_) => return Err(SqlError::syntax("CREATE ... AS takes a query, not COPY")),
        None => PushQuery {
            sql: rest.to_string(),
            changes: true,
            emit_final: false,
            copy: None,
        },
    };
    Ok(Some(CreateAs {
        kind,
        name,
        topic,
        partitions,
        query,
    }))
}

/// A table a persistent query keeps up to date: the latest row of each key,
/// in Arrow's row format (keys and whole rows), so that upserting a batch
/// of changes and reading the table back are vectorized. Rows are shared
/// (`Arc`), so a snapshot holds the lock only to count references and
/// converts back to Arrow outside it.
pub struct MaterializedTable {
    schema: SchemaRef,
    /// Output columns that form the key.
    key_columns: Vec<usize>,
    keys: RowConverter,
    all: RowConverter,
    /// Key row -> whole row.
    rows: Mutex<Rows>,
}

/// A key of a [`MaterializedTable`], in the row format.
pub(crate) type RowKey = Arc<[u8]>;
/// A whole row of a [`MaterializedTable`], in the row format.
pub(crate) type TableRow = Arc<[u8]>;
/// A table's rows by key (hashbrown with foldhash, seeded per process).
type Rows = datafusion::common::HashMap<RowKey, TableRow>;

impl fmt::Debug for MaterializedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaterializedTable({} keys)", self.len())
    }
}

impl MaterializedTable {
    fn new(schema: SchemaRef, key_columns: Vec<usize>) -> Result<Self> {
        let field = |i: usize| SortField::new(schema.field(i).data_type().clone());
        Ok(MaterializedTable {
            keys: RowConverter::new(key_columns.iter().map(|&i| field(i)).collect())?,
            all: RowConverter::new((0..schema.fields().len()).map(field).collect())?,
            schema,
            key_columns,
            rows: Mutex::new(Rows::default()),
        })
    }

    /// Upserts the rows of one batch of changes; the rows that changed,
    /// with their keys (a row equal to the one the table has is no
    /// change).
    fn apply(&self, b: &RecordBatch) -> Result<Vec<(RowKey, TableRow)>> {
        let key_cols: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&c| b.column(c).clone())
            .collect();
        let keys = self.keys.convert_columns(&key_cols)?;
        let all = self.all.convert_columns(b.columns())?;
        let mut changed = Vec::with_capacity(b.num_rows());
        let mut rows = self.rows.lock();
        for i in 0..b.num_rows() {
            let (key, row) = (keys.row(i), all.row(i));
            match rows.get_key_value_mut(key.as_ref()) {
                Some((_, old)) if old.as_ref() == row.as_ref() => {}
                Some((k, old)) => {
                    *old = row.as_ref().into();
                    changed.push((k.clone(), old.clone()));
                }
                None => {
                    let (k, r): (RowKey, TableRow) = (key.as_ref().into(), row.as_ref().into());
                    rows.insert(k.clone(), r.clone());
                    changed.push((k, r));
                }
            }
        }
        Ok(changed)
    }

    fn snapshot(&self) -> Result<RecordBatch> {
        let rows = self.snapshot_rows();
        self.batch_of(&rows)
    }

    /// Every row as it is now (see [`MaterializedTable::batch_of`]).
    fn snapshot_rows(&self) -> Vec<TableRow> {
        self.rows.lock().values().cloned().collect()
    }

    /// Every row as it is now, by key.
    fn entries(&self) -> Rows {
        self.rows.lock().clone()
    }

    /// The row of `key`, if the table has it.
    fn row_for(&self, key: &[u8]) -> Result<RecordBatch> {
        let row = self.rows.lock().get(key).cloned();
        self.batch_of(row.as_slice())
    }

    /// `rows` as a batch in the table's schema.
    fn batch_of(&self, rows: &[TableRow]) -> Result<RecordBatch> {
        let parser = self.all.parser();
        let columns = self
            .all
            .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?)
    }

    /// Each row's key as record-key text: one key column's value, or a
    /// JSON object of several.
    fn key_text(&self, b: &RecordBatch) -> Result<Vec<String>> {
        let schema = b.schema_ref();
        let columns: Vec<(&str, &ArrayRef)> = self
            .key_columns
            .iter()
            .map(|&c| (schema.field(c).name().as_str(), b.column(c)))
            .collect();
        key_texts(&columns, b.num_rows())
    }

    /// Deletes the rows of `keys` (the key columns, in key order); the
    /// keys it had, with their record-key text.
    fn delete(&self, keys: &RecordBatch) -> Result<Vec<(RowKey, String)>> {
        let converted = self.keys.convert_columns(keys.columns())?;
        let schema = keys.schema_ref();
        let columns: Vec<(&str, &ArrayRef)> = schema
            .fields()
            .iter()
            .zip(keys.columns())
            .map(|(f, c)| (f.name().as_str(), c))
            .collect();
        let texts = key_texts(&columns, keys.num_rows())?;
        let mut gone = Vec::new();
        let mut rows = self.rows.lock();
        for (i, text) in texts.into_iter().enumerate() {
            let row = converted.row(i);
            if let Some((key, _)) = rows.remove_entry(row.as_ref()) {
                gone.push((key, text));
            }
        }
        Ok(gone)
    }

    /// The key a pull query's filters pin (`k = <literal>` on a table with
    /// one key column).
    fn lookup_key(&self, filters: &[Expr]) -> Option<Box<[u8]>> {
        use datafusion::logical_expr::{BinaryExpr, Operator};
        let [key] = self.key_columns.as_slice() else {
            return None;
        };
        let field = self.schema.field(*key);
        let value = filters.iter().find_map(|f| match f {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c))
                    if c.name == *field.name()
                        && v.data_type() == *field.data_type()
                        && !v.is_null() =>
                {
                    Some(v.clone())
                }
                _ => None,
            },
            _ => None,
        })?;
        let array = value.to_array().ok()?;
        let converted = self.keys.convert_columns(&[array]).ok()?;
        Some(converted.row(0).as_ref().into())
    }

    pub fn len(&self) -> usize {
        self.rows.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl TableProvider for MaterializedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        // A key lookup narrows the scan to one row; DataFusion still
        // applies every filter.
        Ok(vec![
            datafusion::logical_expr::TableProviderFilterPushDown::Inexact;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = match self.lookup_key(filters) {
            Some(key) => self.row_for(&key)?,
            None => self.snapshot()?,
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// Record-key text of each row: one key column's value, or a JSON object
/// of several (by column name).
fn key_texts(columns: &[(&str, &ArrayRef)], rows: usize) -> Result<Vec<String>> {
    (0..rows)
        .map(|r| {
            if let [(_, c)] = columns {
                return Ok(array_value_to_string(c, r)?);
            }
            let mut m = serde_json::Map::new();
            for (name, c) in columns {
                m.insert(
                    name.to_string(),
                    serde_json::Value::String(array_value_to_string(c, r)?),
                );
            }
            Ok(serde_json::Value::Object(m).to_string())
        })
        .collect()
}

/// Which output columns of a grouped query are its keys: those named like
/// a GROUP BY expression's output (all of them must be selected).
fn key_columns(plan: &LogicalPlan, out: &Schema) -> Result<Vec<usize>, SqlError> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut group_names: Option<Vec<String>> = None;
    let _ = plan.apply(|p| {
        if let LogicalPlan::Aggregate(a) = p {
            group_names = Some(
                (0..a.group_expr.len())
                    .map(|i| a.schema.field(i).name().clone())
                    .collect(),
            );
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let Some(names) = group_names else {
        return Err(SqlError::syntax(
            "CREATE TABLE ... AS needs GROUP BY (a table holds one row per key); use CREATE STREAM ... AS for row-by-row results",
        ));
    };
    let mut keys = Vec::new();
    for n in &names {
        match out.index_of(n) {
            Ok(i) => keys.push(i),
            Err(_) => {
                return Err(SqlError::syntax(format!(
                    "select the GROUP BY column '{n}': a table's key columns are part of its rows"
                )))
            }
        }
    }
    Ok(keys)
}

/// The column a table's query selects in place of its HAVING clause.
const KEEP: &str = "__sediment_having";

/// A table's query with its top-level HAVING clause turned into a column
/// ([`KEEP`]): a group the clause stops admitting is then deleted from the
/// table (a tombstone in its changelog), as the batch query would leave it
/// out, rather than kept as it last was. None without a HAVING clause.
fn having_as_column(sql: &str) -> Result<Option<String>, SqlError> {
    use crate::lex::{is_word, text, tokens};
    use datafusion::sql::sqlparser::tokenizer::Token;
    let all = tokens(sql)?;
    let mut depth = 0i32;
    let (mut from, mut having, mut end) = (None, None, all.len());
    for (i, t) in all.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth != 0 => {}
            _ if from.is_none() && is_word(t, "FROM") => from = Some(i),
            _ if having.is_none() && is_word(t, "HAVING") => having = Some(i),
            Token::SemiColon => {
                end = i;
                break;
            }
            _ if having.is_some() && ["EMIT", "LIMIT", "ORDER"].iter().any(|k| is_word(t, k)) => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (Some(from), Some(having)) = (from, having) else {
        return Ok(None);
    };
    let condition = text(&all[having + 1..end]);
    if condition.trim().is_empty() || having < from {
        return Err(SqlError::syntax("HAVING needs a condition, after GROUP BY"));
    }
    Ok(Some(format!(
        "{}, ({}) AS {KEEP} {}{}",
        text(&all[..from]).trim_end(),
        condition.trim(),
        text(&all[from..having]),
        text(&all[end..]),
    )))
}

/// The rows of `b` its HAVING column `keep` admits, and (if any) those it
/// refuses (false or NULL), both without that column.
fn split_admitted(b: &RecordBatch, keep: usize) -> Result<(RecordBatch, Option<RecordBatch>)> {
    use datafusion::arrow::compute::{filter_record_batch, not, prep_null_mask_filter};
    let condition = b
        .column(keep)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::BooleanArray>()
        .ok_or_else(|| {
            datafusion::common::DataFusionError::Plan("HAVING is not a condition".into())
        })?;
    let admitted = if datafusion::arrow::array::Array::null_count(condition) > 0 {
        prep_null_mask_filter(condition)
    } else {
        condition.clone()
    };
    let rows = b.project(&all_but(b.num_columns(), keep))?;
    let refused = not(&admitted)?;
    Ok((
        filter_record_batch(&rows, &admitted)?,
        (refused.true_count() > 0)
            .then(|| filter_record_batch(&rows, &refused))
            .transpose()?,
    ))
}

/// Column indices `0..n` but `skip`: a table's rows without the HAVING
/// column.
fn all_but(n: usize, skip: usize) -> Vec<usize> {
    (0..n).filter(|&c| c != skip).collect()
}

/// With a window clause (`windowed`), selects `windowstart, windowend`
/// when the query does not.
fn with_window_columns(sql: &str, windowed: bool) -> String {
    let lower = sql.to_ascii_lowercase();
    if !windowed || lower.contains(WINDOW_START) {
        return sql.to_string();
    }
    match lower.find("select") {
        Some(i) => format!(
            "{} {WINDOW_START}, {WINDOW_END},{}",
            &sql[..i + "select".len()],
            &sql[i + "select".len()..]
        ),
        None => sql.to_string(),
    }
}

impl Engine {
    /// Runs `CREATE STREAM|TABLE ... AS SELECT`: checks and plans the
    /// query, creates the topic (and, for a stream, its definition),
    /// records the definition and starts it.
    pub async fn create_as(&self, c: CreateAs) -> Result<String, SqlError> {
        let name = c.name.to_ascii_lowercase();
        if self.streams.get(&name).is_some() || self.persistent.table(&name).is_some() {
            return Err(SqlError::new("42P07", format!("'{name}' already exists")));
        }
        let prefix = match c.kind {
            Kind::Stream => "CSAS",
            Kind::Table => "CTAS",
        };
        let mut sql = c.query.sql.clone();
        if c.kind == Kind::Table {
            let windowed = crate::window::rewrite(&sql, |n| self.event_time(n))?.is_some();
            sql = with_window_columns(&sql, windowed);
        }
        let def = QueryDef {
            id: format!("{prefix}_{}", name.to_ascii_uppercase()),
            kind: c.kind,
            name: name.clone(),
            topic: c.topic.unwrap_or_else(|| name.clone()),
            partitions: c.partitions.unwrap_or(1),
            sql,
            created_ms: sediment_log::now_ms(),
        };
        self.start_persistent(def, c.query.emit_final, true).await?;
        Ok(match c.kind {
            Kind::Stream => "CREATE STREAM",
            Kind::Table => "CREATE TABLE",
        }
        .into())
    }

    /// Starts the persistent queries recorded in `<data_dir>/sql/`, each
    /// from the earliest offset. Call once, after startup.
    pub async fn start_persistent_queries(&self) -> Result<usize, SqlError> {
        let defs = self.persistent.load()?;
        let n = defs.len();
        for def in defs {
            let id = def.id.clone();
            if let Err(e) = self.start_persistent(def, false, false).await {
                tracing::error!(query = %id, error = %e.message, "persistent query did not start");
            }
        }
        Ok(n)
    }

    async fn start_persistent(
        &self,
        def: QueryDef,
        emit_final: bool,
        new: bool,
    ) -> Result<(), SqlError> {
        let query = PushQuery {
            sql: match def.kind {
                Kind::Table => having_as_column(&def.sql)?,
                Kind::Stream => None,
            }
            .unwrap_or_else(|| def.sql.clone()),
            changes: true,
            emit_final,
            copy: None,
        };
        let props = Properties {
            offset_reset: OffsetReset::Earliest,
        };
        // A checkpoint to resume from: first, the output it holds that the
        // log may not have yet.
        let path = self.persistent.checkpoint_path(&def);
        let saved = if new {
            None
        } else {
            let read = tokio::task::spawn_blocking({
                let path = path.clone();
                move || Checkpoint::read(&path)
            })
            .await
            .map_err(|e| SqlError::internal(e.to_string()))??;
            read.filter(|c| c.header.query_id == def.id && c.header.sql == def.sql)
        };
        if let Some(c) = &saved {
            append_output(&self.log, &def.topic, &c.header, &c.pending, true).await?;
        }
        let state = Arc::new(match &saved {
            Some(c) => QueryState::restored(c.resume(), c.aggregate.clone()),
            None => QueryState::default(),
        });
        if def.kind == Kind::Table {
            state.collect_retractions();
        }
        let push = self
            .push_as(&query, &props, Some(&def.id), state.clone())
            .await?;
        // A table's rows without the HAVING column, if there is one.
        let keep = push.schema.index_of(KEEP).ok();
        let schema = match keep {
            Some(i) => Arc::new(
                push.schema
                    .project(&all_but(push.schema.fields().len(), i))
                    .map_err(datafusion::common::DataFusionError::from)?,
            ),
            None => push.schema.clone(),
        };
        // The output topic.
        if self.log.topic(&def.topic).is_none() {
            let log = self.log.clone();
            let (topic, n) = (def.topic.clone(), def.partitions);
            tokio::task::spawn_blocking(move || log.create_topic(&topic, n, Default::default()))
                .await
                .map_err(|e| SqlError::internal(e.to_string()))?
                .map_err(|e| {
                    SqlError::new("58030", format!("creating topic '{}': {e}", def.topic))
                })?;
        }
        let table = match def.kind {
            Kind::Table => {
                let plan = self
                    .ctx
                    .state()
                    .create_logical_plan(
                        &crate::window::rewrite(&def.sql, |n| self.event_time(n))?
                            .map(|w| w.sql)
                            .unwrap_or_else(|| def.sql.clone()),
                    )
                    .await?;
                let keys = key_columns(&plan, &schema)?;
                Some(Arc::new(MaterializedTable::new(schema.clone(), keys)?))
            }
            Kind::Stream => {
                if new {
                    let columns: Vec<ColumnDef> = schema
                        .fields()
                        .iter()
                        .filter(|f| !PSEUDO_COLUMNS.iter().any(|(p, _)| p == f.name()))
                        .map(|f| ColumnDef {
                            name: f.name().clone(),
                            sql_type: crate::statements::sql_type_name(f.data_type()),
                        })
                        .collect();
                    let sdef = StreamDef {
                        name: def.name.clone(),
                        topic: def.topic.clone(),
                        value_format: "JSON".into(),
                        columns,
                        timestamp_column: None,
                        created_ms: def.created_ms,
                    };
                    let vschema = self.value_schema(&sdef)?;
                    self.streams
                        .create(sdef, vschema)
                        .map_err(|e| SqlError::new("58030", e.to_string()))?;
                }
                None
            }
        };
        if let (Some(t), Some(rows)) = (&table, saved.as_ref().and_then(|c| c.table.as_ref())) {
            t.apply(rows)?;
        }
        // The output: JSON records from the query's idempotent producer.
        let (sink_schema, project) = sink_layout(&schema);
        let sink = Arc::new(crate::insert::StreamSink::new(
            &def.name,
            &def.topic,
            sink_schema,
            self.log.clone(),
        ));
        let (producer_id, producer_epoch, next_sequence) = match &saved {
            Some(c) => (
                c.header.producer_id,
                c.header.producer_epoch,
                c.header.next_sequence.clone(),
            ),
            None => {
                let log = self.log.clone();
                let id = tokio::task::spawn_blocking(move || log.allocate_producer_id())
                    .await
                    .map_err(|e| SqlError::internal(e.to_string()))?
                    .map_err(|e| {
                        SqlError::new("58030", format!("allocating a producer id: {e}"))
                    })?;
                (id, 0, BTreeMap::new())
            }
        };
        let stop = CancellationToken::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let mut runner = Runner {
            header: Header {
                query_id: def.id.clone(),
                sql: def.sql.clone(),
                taken_ms: 0,
                inputs: Vec::new(),
                producer_id,
                producer_epoch,
                next_sequence,
                pending: Vec::new(),
                aggregate_bytes: 0,
                table_bytes: 0,
            },
            path,
            topic: def.topic.clone(),
            log: self.log.clone(),
            state,
            table: table.clone(),
            keep,
            sink,
            project,
            rows: Vec::new(),
            changes: Default::default(),
            checkpointed: Arc::new(Mutex::new(
                table.as_ref().map(|t| t.entries()).unwrap_or_default(),
            )),
            committed: saved.as_ref().map(Checkpoint::resume).unwrap_or_default(),
        };
        let id = def.id.clone();
        let (task_stop, task_dropped) = (stop.clone(), dropped.clone());
        let mut input = push.stream;
        let task = tokio::spawn(async move {
            let ended = runner.run(&mut input, &task_stop, &task_dropped).await;
            drop(input);
            if task_dropped.load(Ordering::Acquire) {
                let _ = std::fs::remove_file(&runner.path);
                tracing::info!(query = %id, "persistent query terminated");
                return;
            }
            match ended {
                Ok(()) => tracing::info!(query = %id, "persistent query stopped"),
                Err(e) => {
                    tracing::error!(query = %id, error = %e.message, "persistent query failed")
                }
            }
        });
        {
            let mut running = self.persistent.running.lock();
            if running.contains_key(&def.name) {
                task.abort();
                return Err(SqlError::new(
                    "42P07",
                    format!("'{}' already exists", def.name),
                ));
            }
            running.insert(
                def.name.clone(),
                Running {
                    def: def.clone(),
                    stop: stop.clone(),
                    dropped,
                    task: Some(task),
                    table,
                },
            );
            if new {
                if let Err(e) = self.persistent.persist(&running) {
                    if let Some(r) = running.remove(&def.name) {
                        r.dropped.store(true, Ordering::Release);
                        r.stop.cancel();
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!(query = %def.id, name = %def.name, topic = %def.topic, resumed = saved.is_some(), "persistent query started");
        Ok(())
    }

    /// Stops the running persistent queries, keeping their definitions
    /// (they start again with [`Engine::start_persistent_queries`]).
    pub async fn stop_persistent_queries(&self) {
        self.persistent.stop_all().await;
    }

    /// `TERMINATE id`: stops a persistent query (its table or stream stays
    /// until dropped, no longer updated; the definition is removed).
    pub fn terminate(&self, id: &str) -> Result<String, SqlError> {
        let Some(name) = self.persistent.by_id(id) else {
            return Err(
                SqlError::new("42704", format!("no persistent query '{id}'"))
                    .with_hint("SHOW QUERIES lists them"),
            );
        };
        self.persistent.remove(&name)?;
        Ok("TERMINATE".into())
    }

    /// `DROP TABLE t`: terminates the query maintaining `t`.
    pub fn drop_table(&self, name: &str, if_exists: bool) -> Result<String, SqlError> {
        match self.persistent.remove(&name.to_ascii_lowercase())? {
            Some(_) => Ok("DROP TABLE".into()),
            None if if_exists => Ok("DROP TABLE".into()),
            None => Err(SqlError::undefined_table(name)),
        }
    }

    /// Stops the query writing stream `name`, if one does (DROP STREAM).
    pub(crate) fn stop_writer(&self, name: &str) -> Result<(), SqlError> {
        self.persistent.remove(name).map(|_| ())
    }
}

/// How often a persistent query commits, at most: its output waits this
/// long at most (plus the commit) before it is appended.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Records per output batch.
const OUTPUT_BATCH_RECORDS: usize = 4096;
/// How long a commit waits for its output to be durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

type Project = Arc<dyn Fn(&RecordBatch, Option<Vec<String>>) -> Result<RecordBatch> + Send + Sync>;

/// A persistent query at work: it folds result batches into its table or
/// output and commits them (see the module docs).
struct Runner {
    /// The next checkpoint's header: producer and sequences.
    header: Header,
    path: PathBuf,
    topic: String,
    log: Arc<sediment_log::LogManager>,
    state: Arc<QueryState>,
    table: Option<Arc<MaterializedTable>>,
    /// A table's HAVING column in the query's rows (see
    /// [`having_as_column`]).
    keep: Option<usize>,
    sink: Arc<crate::insert::StreamSink>,
    project: Project,
    /// A stream's output rows since the last commit.
    rows: Vec<RecordBatch>,
    /// A table's rows changed or deleted since the last commit.
    changes: datafusion::common::HashMap<RowKey, Change>,
    /// A table's rows as of the last commit, which each commit brings up
    /// to date with its changes off the query's task, to write them all.
    checkpointed: Arc<Mutex<Rows>>,
    /// The input offsets of the last commit.
    committed: BTreeMap<(String, i32), i64>,
}

impl Runner {
    async fn run(
        &mut self,
        input: &mut datafusion::execution::SendableRecordBatchStream,
        stop: &CancellationToken,
        dropped: &AtomicBool,
    ) -> Result<(), SqlError> {
        let mut next_commit = Instant::now() + COMMIT_INTERVAL;
        // The commit being written and appended, while the query goes on.
        let mut inflight: Option<(Instant, InFlight)> = None;
        loop {
            let work = !self.rows.is_empty()
                || !self.changes.is_empty()
                || self.state.moved_from(&self.committed);
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    if let Some((_, commit)) = inflight.take() {
                        self.finish(commit.await)?;
                    }
                    return if dropped.load(Ordering::Acquire) { Ok(()) } else { self.commit().await };
                }
                done = wait(&mut inflight) => {
                    let started = inflight.take().map_or_else(Instant::now, |(s, _)| s);
                    self.finish(done)?;
                    // A slow commit (a large state) spaces the next ones, so
                    // that commits take a quarter of the time at most.
                    next_commit = started + COMMIT_INTERVAL.max(started.elapsed() * 4);
                }
                () = tokio::time::sleep_until(next_commit.into()), if work && inflight.is_none() => {
                    inflight = Some((Instant::now(), self.start_commit()?));
                }
                b = input.next() => match b {
                    Some(Ok(b)) => self.take(&b)?,
                    Some(Err(e)) => return Err(SqlError::from(e)),
                    None => {
                        if let Some((_, commit)) = inflight.take() {
                            self.finish(commit.await)?;
                        }
                        return self.commit().await;
                    }
                },
            }
        }
    }

    /// Folds one batch of results in.
    fn take(&mut self, b: &RecordBatch) -> Result<(), SqlError> {
        match self.table.clone() {
            Some(t) => {
                self.take_retractions()?;
                let (admitted, refused) = match self.keep {
                    Some(i) => split_admitted(b, i)?,
                    None => (b.clone(), None),
                };
                for (k, row) in t.apply(&admitted)? {
                    self.changes.insert(k, Change::Row(row));
                }
                if let Some(refused) = refused {
                    let keys = refused
                        .project(&t.key_columns)
                        .map_err(datafusion::common::DataFusionError::from)?;
                    for (k, text) in t.delete(&keys)? {
                        self.changes.insert(k, Change::Deleted(text));
                    }
                }
            }
            None => self.rows.push((self.project)(b, None)?),
        }
        Ok(())
    }

    /// Deletes the table rows the query retracted (sessions that grew).
    fn take_retractions(&mut self) -> Result<(), SqlError> {
        let Some(t) = self.table.clone() else {
            return Ok(());
        };
        for keys in self.state.take_retractions() {
            for (k, text) in t.delete(&keys)? {
                self.changes.insert(k, Change::Deleted(text));
            }
        }
        Ok(())
    }

    /// Writes a checkpoint with the input offsets, the state and the output
    /// since the last one, then appends that output.
    async fn commit(&mut self) -> Result<(), SqlError> {
        let commit = self.start_commit()?;
        self.finish(commit.await)
    }

    /// Takes what the next checkpoint holds (the input offsets, the state
    /// and the table as they are, the output since the last one) and
    /// writes it in the background: the encoding of the output, the
    /// checkpoint file and the appends (after the checkpoint is durable)
    /// do not hold the query up. One commit at a time, so only the last
    /// one's output can be missing after a crash.
    fn start_commit(&mut self) -> Result<InFlight, SqlError> {
        self.take_retractions()?;
        let mut rows = std::mem::take(&mut self.rows);
        // A table's changes, which bring its checkpointed rows up to date
        // in the background.
        let table = self.table.as_ref().map(|t| {
            let changes = std::mem::take(&mut self.changes);
            (t.clone(), changes, self.checkpointed.clone())
        });
        let progress = self.state.progress();
        let aggregate = self.state.aggregate().map(|a| a.copy_state()).transpose()?;
        let header = self.header.clone();
        let (log, topic, path, sink) = (
            self.log.clone(),
            self.topic.clone(),
            self.path.clone(),
            self.sink.clone(),
        );
        let project = self.project.clone();
        let written = tokio::task::spawn_blocking(move || {
            let aggregate = aggregate
                .map(crate::continuous::StateCopy::into_batch)
                .transpose()?;
            let mut deleted = Vec::new();
            let table = match table {
                Some((t, changes, checkpointed)) => {
                    let mut all = checkpointed.lock();
                    let mut changed = Vec::new();
                    for (k, change) in changes {
                        match change {
                            Change::Row(row) => {
                                changed.push(row.clone());
                                all.insert(k, row);
                            }
                            Change::Deleted(text) => {
                                all.remove(&k);
                                deleted.push(text);
                            }
                        }
                    }
                    let b = t.batch_of(&changed)?;
                    if b.num_rows() > 0 {
                        rows.push(project(&b, Some(t.key_text(&b)?))?);
                    }
                    let all: Vec<TableRow> = all.values().cloned().collect();
                    Some(t.batch_of(&all)?)
                }
                None => None,
            };
            let topic_ref = log.topic(&topic).ok_or_else(|| {
                SqlError::new("42P01", format!("output topic '{topic}' no longer exists"))
            })?;
            let now = sediment_log::now_ms();
            let (header, pending) = encode_output(
                header,
                &sink,
                &rows,
                &deleted,
                topic_ref.partitions.len(),
                now,
            )?;
            let mut checkpoint = Checkpoint {
                header: Header {
                    taken_ms: now,
                    inputs: progress
                        .iter()
                        .map(|((topic, partition), next)| InputOffset {
                            topic: topic.clone(),
                            partition: *partition,
                            next_offset: *next,
                        })
                        .collect(),
                    ..header
                },
                aggregate,
                table,
                pending,
            };
            checkpoint.write(&path)?;
            Ok::<_, SqlError>((log, topic, checkpoint, progress))
        });
        Ok(Box::pin(async move {
            let (log, topic, checkpoint, progress) = written
                .await
                .map_err(|e| SqlError::internal(e.to_string()))??;
            append_output(&log, &topic, &checkpoint.header, &checkpoint.pending, false).await?;
            Ok((checkpoint.header, progress))
        }))
    }

    /// Takes in a finished commit: its producer sequences and offsets.
    fn finish(&mut self, done: Result<Committed, SqlError>) -> Result<(), SqlError> {
        let (header, progress) = done?;
        self.header.next_sequence = header.next_sequence;
        self.committed = progress;
        Ok(())
    }
}

/// How a table's row changed since the last commit.
enum Change {
    Row(TableRow),
    /// Deleted; its record-key text, for the changelog's tombstone.
    Deleted(String),
}

/// A commit under way (see [`Runner::start_commit`]).
type InFlight =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Committed, SqlError>> + Send>>;
/// A finished commit: its header and the input offsets it covers.
type Committed = (Header, BTreeMap<(String, i32), i64>);

/// The commit under way, if any.
async fn wait(inflight: &mut Option<(Instant, InFlight)>) -> Result<Committed, SqlError> {
    match inflight {
        Some((_, commit)) => commit.await,
        None => std::future::pending().await,
    }
}

/// Encodes a commit's output (rows, then tombstones of deleted keys) as
/// Kafka batches from the query's idempotent producer; the header with the
/// next sequences and the batches' metadata, and the batches.
fn encode_output(
    mut header: Header,
    sink: &crate::insert::StreamSink,
    rows: &[RecordBatch],
    deleted: &[String],
    partitions: usize,
    now: i64,
) -> Result<(Header, Vec<Vec<u8>>), SqlError> {
    let mut records = vec![crate::insert::StreamSink::tombstones(
        deleted.iter(),
        partitions,
        now,
    )];
    for b in rows {
        records.push(sink.records(b, partitions, now)?);
    }
    let mut pending = Vec::new();
    let mut bytes = Vec::new();
    for by_partition in records {
        for (p, recs) in by_partition {
            for chunk in recs.chunks(OUTPUT_BATCH_RECORDS) {
                let first = header.next_sequence.get(&p).copied().unwrap_or(0);
                let refs: Vec<sediment_log::batch::SimpleRecord<'_>> = chunk
                    .iter()
                    .map(|(k, v, t)| (k.as_deref(), v.as_deref(), *t))
                    .collect();
                let seq = sediment_log::batch::ProducerSeq {
                    producer_id: header.producer_id,
                    epoch: header.producer_epoch,
                    base_sequence: first,
                };
                bytes.push(sediment_log::batch::encode_idempotent(&refs, seq));
                let last = wrap_sequence(i64::from(first) + chunk.len() as i64 - 1);
                pending.push(PendingBatch {
                    partition: p,
                    first_sequence: first,
                    last_sequence: last,
                    bytes: 0,
                });
                header
                    .next_sequence
                    .insert(p, wrap_sequence(i64::from(last) + 1));
            }
        }
    }
    header.pending = pending;
    Ok((header, bytes))
}

/// Sequences wrap from `i32::MAX` to 0, as Kafka's do.
fn wrap_sequence(s: i64) -> i32 {
    (s.rem_euclid(i64::from(i32::MAX) + 1)) as i32
}

/// Appends a checkpoint's pending output and waits until it is durable.
/// `recovering`: after a restart, skips what the log already has (each
/// partition remembers the producer's last batch).
async fn append_output(
    log: &Arc<sediment_log::LogManager>,
    topic_name: &str,
    header: &Header,
    batches: &[Vec<u8>],
    recovering: bool,
) -> Result<(), SqlError> {
    if batches.is_empty() {
        return Ok(());
    }
    let topic = log.topic(topic_name).ok_or_else(|| {
        SqlError::new(
            "42P01",
            format!("output topic '{topic_name}' no longer exists"),
        )
    })?;
    let io = |e: sediment_log::LogError| {
        SqlError::new("58030", format!("appending to '{topic_name}': {e}"))
    };
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut skip: BTreeMap<i32, usize> = BTreeMap::new();
    if recovering {
        for (i, meta) in header.pending.iter().enumerate() {
            let Some(partition) = topic.partition(meta.partition) else {
                continue;
            };
            let last = partition.last_producer_batch(header.producer_id);
            if last
                == Some((
                    header.producer_epoch,
                    meta.first_sequence,
                    meta.last_sequence,
                ))
            {
                // This batch is in the log, and so are those before it.
                skip.insert(meta.partition, i + 1);
            }
        }
    }
    for (i, (meta, bytes)) in header.pending.iter().zip(batches).enumerate() {
        if skip.get(&meta.partition).is_some_and(|&n| i < n) {
            continue;
        }
        let partition = topic.partition(meta.partition).cloned().ok_or_else(|| {
            SqlError::new(
                "58030",
                format!(
                    "output topic '{topic_name}' has no partition {}",
                    meta.partition
                ),
            )
        })?;
        let bytes = bytes.clone();
        let res =
            tokio::task::spawn_blocking(move || partition.append(&bytes, sediment_log::now_ms()))
                .await
                .map_err(|e| SqlError::internal(e.to_string()))?
                .map_err(io)?;
        ends.insert(meta.partition, res.end_offset);
    }
    for (p, end) in ends {
        if let Some(partition) = topic.partition(p) {
            partition
                .wait_durable(end, DURABLE_TIMEOUT)
                .await
                .map_err(io)?;
        }
    }
    Ok(())
}

/// How result batches become the sink's rows (pseudo columns first, then
/// the values); with table keys, `_key` is each row's key.
fn sink_layout(schema: &SchemaRef) -> (SchemaRef, Project) {
    let pseudo = |n: &str| schema.index_of(n).ok();
    let (t, k) = (pseudo("_timestamp"), pseudo("_key"));
    let values: Vec<usize> = (0..schema.fields().len())
        .filter(|i| {
            !PSEUDO_COLUMNS
                .iter()
                .any(|(n, _)| n == schema.field(*i).name())
        })
        .collect();
    let mut fields = vec![
        Field::new("_partition", DataType::Int32, true),
        Field::new("_offset", DataType::Int64, true),
        Field::new(
            "_timestamp",
            DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Millisecond,
                Some("UTC".into()),
            ),
            true,
        ),
        Field::new("_key", DataType::Utf8, true),
    ];
    fields.extend(
        values
            .iter()
            .map(|&i| schema.field(i).clone().with_nullable(true)),
    );
    let out = Arc::new(Schema::new(fields));
    let out2 = out.clone();
    let f = move |b: &RecordBatch, keys: Option<Vec<String>>| -> Result<RecordBatch> {
        let n = b.num_rows();
        let null = |dt: &DataType| datafusion::arrow::array::new_null_array(dt, n);
        let cast = |a: &ArrayRef, dt: &DataType| -> Result<ArrayRef> {
            Ok(datafusion::arrow::compute::cast(a, dt)?)
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(out2.fields().len());
        // Partitioned by key (a table's changelog: by its group), keyless
        // rows round robin.
        cols.push(null(&DataType::Int32));
        cols.push(null(&DataType::Int64));
        cols.push(match t {
            Some(i) => cast(b.column(i), out2.field(2).data_type())?,
            None => null(out2.field(2).data_type()),
        });
        cols.push(match (&keys, k) {
            (Some(keys), _) => Arc::new(StringArray::from_iter_values(keys.iter())),
            (None, Some(i)) => cast(b.column(i), &DataType::Utf8)?,
            (None, None) => null(&DataType::Utf8),
        });
        for &i in &values {
            cols.push(b.column(i).clone());
        }
        Ok(RecordBatch::try_new(out2.clone(), cols)?)
    };
    (out, Arc::new(f))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn having_becomes_a_column_of_a_tables_query() {
        assert_eq!(
            having_as_column(
                "SELECT k, count(*) AS n FROM s WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k \
                 HAVING count(*) > 1 AND (min(x) < 3) EMIT CHANGES;"
            )
            .unwrap()
            .unwrap(),
            "SELECT k, count(*) AS n, (count(*) > 1 AND (min(x) < 3)) AS __sediment_having \
             FROM s WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k EMIT CHANGES;"
        );
        // Only the top level's: a subquery's HAVING stays where it is.
        let nested =
            "SELECT k, count(*) FROM (SELECT k FROM s GROUP BY k HAVING count(*) > 1) GROUP BY k";
        assert_eq!(having_as_column(nested).unwrap(), None);
        assert_eq!(having_as_column("SELECT 1").unwrap(), None);
        let e = having_as_column("SELECT k FROM s GROUP BY k HAVING").unwrap_err();
        assert_eq!(e.code, "42601");
    }
}
