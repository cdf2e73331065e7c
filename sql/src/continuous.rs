//! Continuous aggregation: `GROUP BY` over input that never ends.
//!
//! DataFusion's streaming planner refuses an aggregate over unbounded input
//! unless it is grouped by an ordered key (it would have to wait for the
//! end). Here the state is ours: in a push query's plan each `Aggregate`
//! becomes a [`ContinuousAggregate`] node, which plans as
//! [`ContinuousAggregateExec`]. DataFusion still evaluates the group keys,
//! aggregate arguments, filters and projections; the exec keeps one entry
//! per group (keys in Arrow's row format, aggregates in typed vectors) and
//! after each input batch emits the new value of every group the batch
//! changed (`EMIT CHANGES`), or, with `EMIT FINAL`, each window's groups
//! once when the window closes.
//!
//! Windows (see [`crate::window`]) reach the exec as group keys
//! (`windowstart`, `windowend`) plus each row's event time. Stream time is
//! the largest event time seen; a record whose window ended more than the
//! grace period before stream time is dropped and counted. Because stream
//! time is a maximum over all partitions, an idle partition never holds
//! results back. A closed window's group is freed (its id reused).
//!
//! Session windows reach the exec with each row's own time as its bounds;
//! the exec keeps each key's sessions and folds a row into those it falls
//! within the gap of, merging two when it bridges them (their
//! accumulators merge). A session closes when stream time passes its end
//! plus gap plus grace, and is freed a gap later, so that a record that
//! would have extended it is dropped as late instead of opening a new one.
//! The row sent for a session's old bounds is retracted: a persistent
//! table (which asks the [`QueryState`] to collect them) deletes it.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBufferBuilder, Float64Array, Int64Array, RecordBatch,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, DataFusionError, Result, ScalarValue};
// hashbrown with foldhash, seeded per process: group keys come from input
// records, and SipHash was a tenth of a busy query's time.
use datafusion::common::HashMap as FastMap;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::expr_to_columns;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use parking_lot::Mutex;

use crate::tail::QueryState;
use crate::window::{WindowKind, WindowSpec, EVENT_TIME, WINDOW_END, WINDOW_START};
use crate::SqlError;

/// Where a push query's continuous aggregates count the records they drop
/// for arriving after their window closed: put in the query's session
/// config, read by the planner.
#[derive(Debug, Default)]
pub struct LateRecords(pub AtomicU64);

/// How a continuous aggregate emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Emit {
    /// Each group's new value after every input batch that changed it.
    Changes,
    /// Each window's groups once, when the window closes.
    Final,
}

/// An `Aggregate` whose input never ends (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContinuousAggregate {
    input: LogicalPlan,
    group_expr: Vec<Expr>,
    aggr_expr: Vec<Expr>,
    schema: DFSchemaRef,
    window: Option<WindowSpec>,
    emit: Emit,
}

impl PartialOrd for ContinuousAggregate {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        // Only equal nodes compare (plans are not ordered).
        (self == other).then_some(CmpOrdering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for ContinuousAggregate {
    fn name(&self) -> &str {
        "ContinuousAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.group_expr
            .iter()
            .chain(&self.aggr_expr)
            .cloned()
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ContinuousAggregate: groupBy=[{}], aggr=[{}], emit={:?}",
            exprs(&self.group_expr),
            exprs(&self.aggr_expr),
            self.emit
        )
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let n = self.group_expr.len();
        let (Some(input), true) = (
            inputs.into_iter().next(),
            exprs.len() == n + self.aggr_expr.len(),
        ) else {
            return Err(DataFusionError::Internal(
                "ContinuousAggregate: wrong number of inputs or expressions".into(),
            ));
        };
        Ok(ContinuousAggregate {
            input,
            group_expr: exprs[..n].to_vec(),
            aggr_expr: exprs[n..].to_vec(),
            schema: self.schema.clone(),
            window: self.window,
            emit: self.emit,
        })
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // Every output column is kept; of the input, only what the
        // expressions read (and the event time of a window).
        let mut columns = HashSet::new();
        for e in UserDefinedLogicalNodeCore::expressions(self) {
            expr_to_columns(&e, &mut columns).ok()?;
        }
        let schema = self.input.schema();
        let mut indices: Vec<usize> = columns
            .iter()
            .map(|c| schema.maybe_index_of_column(c))
            .collect::<Option<_>>()?;
        if self.window.is_some() {
            indices.push(event_time_column(schema).ok()?.1);
        }
        indices.sort_unstable();
        indices.dedup();
        Some(vec![indices])
    }
}

fn exprs(e: &[Expr]) -> String {
    e.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn event_time_column(schema: &datafusion::common::DFSchema) -> Result<(Column, usize)> {
    let (q, f) = schema.qualified_field_with_unqualified_name(EVENT_TIME)?;
    let c = Column::from((q, f));
    let i = schema.index_of_column(&c)?;
    Ok((c, i))
}

/// Turns the `Aggregate` of a push query's plan into a continuous one.
/// One aggregation level only: an aggregate over another's changes would
/// count updates, not records.
pub fn rewrite(
    plan: LogicalPlan,
    window: Option<WindowSpec>,
    emit: Emit,
) -> Result<LogicalPlan, SqlError> {
    let mut found = 0;
    let _ = plan.apply(|p| {
        if matches!(p, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_)) {
            found += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if found > 1 {
        return Err(SqlError::unsupported(
            "more than one aggregation (or DISTINCT) in a push query",
        ));
    }
    if found == 0 {
        if window.is_some() {
            return Err(SqlError::syntax(
                "a WINDOW needs an aggregation with GROUP BY",
            ));
        }
        if emit == Emit::Final {
            return Err(SqlError::syntax(
                "EMIT FINAL needs a windowed aggregation (WINDOW ... GROUP BY)",
            ));
        }
        return Ok(plan);
    }
    if emit == Emit::Final && window.is_none() {
        return Err(SqlError::syntax(
            "EMIT FINAL needs a window: without one no group ever closes",
        ));
    }
    let rewritten = plan
        .transform_up(|p| match p {
            LogicalPlan::Aggregate(a) => {
                if a.group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)))
                {
                    return Err(DataFusionError::NotImplemented(
                        "GROUPING SETS, CUBE and ROLLUP in a push query".into(),
                    ));
                }
                let node = ContinuousAggregate {
                    input: Arc::unwrap_or_clone(a.input),
                    group_expr: a.group_expr,
                    aggr_expr: a.aggr_expr,
                    schema: a.schema,
                    window,
                    emit,
                };
                Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(node),
                })))
            }
            LogicalPlan::Distinct(_) => Err(DataFusionError::NotImplemented(
                "SELECT DISTINCT in a push query (use GROUP BY)".into(),
            )),
            other => Ok(Transformed::no(other)),
        })
        .map_err(SqlError::from)?;
    Ok(rewritten.data)
}

/// The query planner of push queries: DataFusion's, plus continuous
/// aggregates.
#[derive(Debug)]
pub struct ContinuousQueryPlanner;

#[async_trait]
impl QueryPlanner for ContinuousQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ContinuousPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

struct ContinuousPlanner;

#[async_trait]
impl ExtensionPlanner for ContinuousPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ContinuousAggregate>() else {
            return Ok(None);
        };
        let (Some(logical), Some(input)) = (logical_inputs.first(), physical_inputs.first()) else {
            return Err(DataFusionError::Internal(
                "ContinuousAggregate needs an input".into(),
            ));
        };
        let schema = logical.schema();
        let physical = |e: &Expr| planner.create_physical_expr(e, schema, session, planning_ctx);
        let groups = node
            .group_expr
            .iter()
            .map(physical)
            .collect::<Result<Vec<_>>>()?;
        let out = node.schema.as_arrow();
        let mut aggs = Vec::with_capacity(node.aggr_expr.len());
        for (i, e) in node.aggr_expr.iter().enumerate() {
            let out_type = out.field(groups.len() + i).data_type().clone();
            aggs.push(agg_spec(e, out_type, &physical)?);
        }
        let window = match node.window {
            Some(spec) => {
                // Which group keys are the window bounds.
                let group_of = |name: &str| {
                    node.group_expr
                        .iter()
                        .position(|e| matches!(e, Expr::Column(c) if c.name == name))
                        .ok_or_else(|| {
                            DataFusionError::Plan(format!(
                                "a windowed aggregation must group by {name}"
                            ))
                        })
                };
                let (start, end) = (group_of(WINDOW_START)?, group_of(WINDOW_END)?);
                let (c, _) = event_time_column(schema)?;
                Some(WindowRuntime {
                    spec,
                    start_group: start,
                    end_group: end,
                    event_time: physical(&Expr::Column(c))?,
                })
            }
            None => None,
        };
        let mut exec = ContinuousAggregateExec::new(
            input.clone(),
            groups,
            aggs,
            Arc::new(out.clone()),
            window,
            node.emit,
        );
        if let Some(late) = session.config().get_extension::<LateRecords>() {
            exec.late = late;
        }
        Ok(Some(Arc::new(exec)))
    }
}

/// What one aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggKind {
    Count,
    SumInt,
    SumFloat,
    MinMaxInt { max: bool },
    MinMaxFloat { max: bool },
    MinMaxOther { max: bool },
    Avg,
}

#[derive(Debug, Clone)]
struct AggSpec {
    kind: AggKind,
    /// None for `count(*)`.
    arg: Option<Arc<dyn PhysicalExpr>>,
    out: DataType,
    name: String,
}

fn agg_spec(
    e: &Expr,
    out: DataType,
    physical: &dyn Fn(&Expr) -> Result<Arc<dyn PhysicalExpr>>,
) -> Result<AggSpec> {
    let unsupported = |what: String| -> DataFusionError {
        DataFusionError::NotImplemented(format!(
            "{what} in a push query (COUNT, SUM, MIN, MAX and AVG are maintained)"
        ))
    };
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(f) = inner else {
        return Err(unsupported(format!("'{e}'")));
    };
    let p = &f.params;
    if p.distinct || p.filter.is_some() || !p.order_by.is_empty() {
        return Err(unsupported(format!("'{e}' (DISTINCT, FILTER or ORDER BY)")));
    }
    let name = f.func.name().to_ascii_lowercase();
    let int_like = |t: &DataType| {
        t.is_integer()
            || matches!(
                t,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            )
    };
    let float =
        |t: &DataType| matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64);
    let kind = match name.as_str() {
        "count" => AggKind::Count,
        "sum" if out == DataType::Int64 => AggKind::SumInt,
        "sum" if out == DataType::Float64 => AggKind::SumFloat,
        "avg" if out == DataType::Float64 => AggKind::Avg,
        "min" | "max" => {
            let max = name == "max";
            if int_like(&out) {
                AggKind::MinMaxInt { max }
            } else if float(&out) {
                AggKind::MinMaxFloat { max }
            } else {
                AggKind::MinMaxOther { max }
            }
        }
        "sum" | "avg" => return Err(unsupported(format!("'{e}' over {out}"))),
        other => return Err(unsupported(format!("aggregate '{other}'"))),
    };
    let arg = match (kind, p.args.as_slice()) {
        (AggKind::Count, []) => None,
        (_, [a]) => Some(physical(a)?),
        _ => {
            return Err(unsupported(format!(
                "'{e}' with {} arguments",
                p.args.len()
            )))
        }
    };
    Ok(AggSpec {
        kind,
        arg,
        out,
        name: e.schema_name().to_string(),
    })
}

#[derive(Debug, Clone)]
struct WindowRuntime {
    spec: WindowSpec,
    /// Which group keys are `windowstart` and `windowend`.
    start_group: usize,
    end_group: usize,
    event_time: Arc<dyn PhysicalExpr>,
}

/// Maintains `GROUP BY` results over an unbounded input (see the module
/// docs). One output partition.
#[derive(Debug)]
pub struct ContinuousAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    groups: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<AggSpec>,
    schema: SchemaRef,
    window: Option<WindowRuntime>,
    emit: Emit,
    /// Records dropped for arriving after their window closed.
    late: Arc<LateRecords>,
    props: Arc<PlanProperties>,
}

impl ContinuousAggregateExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        groups: Vec<Arc<dyn PhysicalExpr>>,
        aggs: Vec<AggSpec>,
        schema: SchemaRef,
        window: Option<WindowRuntime>,
        emit: Emit,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            input.properties().boundedness,
        ));
        ContinuousAggregateExec {
            input,
            groups,
            aggs,
            schema,
            window,
            emit,
            late: Arc::default(),
            props,
        }
    }

    /// Records dropped so far for arriving after their window closed.
    pub fn late_records(&self) -> u64 {
        self.late.0.load(Ordering::Relaxed)
    }
}

impl DisplayAs for ContinuousAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ContinuousAggregateExec: groups={} aggr=[{}] emit={:?}",
            self.groups.len(),
            self.aggs
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.emit
        )?;
        if let Some(w) = &self.window {
            write!(
                f,
                " window={:?} size_ms={} grace_ms={}",
                w.spec.kind, w.spec.size_ms, w.spec.grace_ms
            )?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ContinuousAggregateExec {
    fn name(&self) -> &str {
        "ContinuousAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self
            .groups
            .iter()
            .chain(self.aggs.iter().filter_map(|a| a.arg.as_ref()))
        {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = crate::topic_table::only_child(children, "ContinuousAggregateExec")?;
        Ok(Arc::new(ContinuousAggregateExec {
            input,
            groups: self.groups.clone(),
            aggs: self.aggs.clone(),
            schema: self.schema.clone(),
            window: self.window.clone(),
            emit: self.emit,
            late: self.late.clone(),
            props: self.props.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ContinuousAggregateExec has one partition, not {partition}"
            )));
        }
        let input = datafusion::physical_plan::execute_stream(self.input.clone(), context.clone())?;
        // A restored persistent query starts from its checkpoint, and its
        // checkpoints read the state as it runs.
        let query = context.session_config().get_extension::<QueryState>();
        let mut op = Operator::new(self, query.clone())?;
        if let Some(saved) = query.as_ref().and_then(|q| q.take_restore()) {
            op.restore(&saved)?;
        }
        let op = AggregateHandle(Arc::new(Mutex::new(op)));
        if let Some(q) = &query {
            q.set_aggregate(op.clone());
        }
        let stream = futures::stream::unfold((input, op), |(mut input, op)| async move {
            loop {
                match input.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (input, op))),
                    Some(Ok(batch)) => {
                        let out = op.0.lock().process(&batch);
                        match out {
                            Ok(Some(out)) => return Some((Ok(out), (input, op))),
                            Ok(None) => continue,
                            Err(e) => return Some((Err(e), (input, op))),
                        }
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// A running continuous aggregate's state, for checkpoints.
#[derive(Clone)]
pub(crate) struct AggregateHandle(Arc<Mutex<Operator>>);

impl fmt::Debug for AggregateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AggregateHandle")
    }
}

impl AggregateHandle {
    /// A copy of the state, to turn into the snapshot off the query's task.
    pub(crate) fn copy_state(&self) -> Result<StateCopy> {
        self.0.lock().copy_state()
    }
}

/// How group keys in the row format become key columns again; shared with
/// state copies converted away from the query's task.
#[derive(Clone)]
struct KeyLayout {
    converter: Arc<RowConverter>,
    schema: SchemaRef,
    /// How many group keys, and a session window's bound positions.
    groups: usize,
    session: Option<(usize, usize)>,
}

impl KeyLayout {
    /// The group key columns of `keys`, with a session's `bounds` put
    /// back in.
    fn columns<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
        bounds: &[(i64, i64)],
    ) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let mut base = self
            .converter
            .convert_rows(keys.map(|k| parser.parse(k)))?
            .into_iter();
        let Some((start, end)) = self.session else {
            return Ok(base.collect());
        };
        let fields = self.schema.fields();
        let timestamps = |pick: fn(&(i64, i64)) -> i64, at: usize| -> Result<ArrayRef> {
            let a: ArrayRef = Arc::new(
                TimestampMillisecondArray::from_iter_values(bounds.iter().map(pick))
                    .with_timezone("UTC"),
            );
            Ok(cast(&a, fields[at].data_type())?)
        };
        (0..self.groups)
            .map(|i| {
                if i == start {
                    timestamps(|b| b.0, i)
                } else if i == end {
                    timestamps(|b| b.1, i)
                } else {
                    base.next()
                        .ok_or_else(|| DataFusionError::Internal("missing key column".into()))
                }
            })
            .collect()
    }
}

/// A copy of an aggregate's state, taken on the query's task and turned
/// into a snapshot batch ([`StateCopy::into_batch`]) elsewhere.
pub(crate) struct StateCopy {
    layout: KeyLayout,
    keys: Vec<GroupKey>,
    bounds: Vec<(i64, i64)>,
    /// Aggregate state columns (name, values).
    accs: Vec<(String, ArrayRef)>,
    metadata: HashMap<String, String>,
}

impl StateCopy {
    /// The snapshot batch (see [`Operator::copy_state`]).
    pub(crate) fn into_batch(self) -> Result<RecordBatch> {
        let keys = self
            .layout
            .columns(self.keys.iter().map(|k| k.as_ref()), &self.bounds)?;
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for (i, k) in keys.into_iter().enumerate() {
            fields.push(Field::new(format!("key_{i}"), k.data_type().clone(), true));
            columns.push(k);
        }
        for (name, a) in self.accs {
            fields.push(Field::new(name, a.data_type().clone(), true));
            columns.push(a);
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, self.metadata));
        Ok(RecordBatch::try_new_with_options(
            schema,
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(self.keys.len())),
        )?)
    }
}

/// A session's row that is gone: its key (row format, without bounds) and
/// the bounds it was sent with.
type Replaced = (GroupKey, (i64, i64));

/// A group key in Arrow's row format, shared by the key index and the group
/// (and by a checkpoint's copy of the state, which so allocates nothing).
type GroupKey = Arc<[u8]>;

/// The running state of one continuous aggregate.
struct Operator {
    groups: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<AggSpec>,
    schema: SchemaRef,
    window: Option<WindowRuntime>,
    emit: Emit,
    late: Arc<LateRecords>,
    /// The persistent query this runs in, which may collect the keys a
    /// session's growth replaced.
    query: Option<Arc<QueryState>>,
    layout: KeyLayout,
    state: Groups,
}

/// The groups of a continuous aggregate. A group id indexes every vector;
/// the ids of windows that closed (and of sessions merged into others) are
/// reused.
struct Groups {
    /// Group keys in Arrow's row format: the whole key, or for session
    /// windows the key without the window bounds.
    converter: Arc<RowConverter>,
    /// Group keys to group ids (all but session windows).
    index: FastMap<GroupKey, u32>,
    /// Session windows: each key's sessions.
    sessions: FastMap<GroupKey, Vec<u32>>,
    keys: Vec<GroupKey>,
    live: Vec<bool>,
    free: Vec<u32>,
    /// Windowed: each group's window in ms, `[start, end)` of a tumbling or
    /// hopping window, `[first, last]` record of a session.
    bounds: Vec<(i64, i64)>,
    /// Session windows, `EMIT CHANGES`: the bounds each group's row was
    /// last sent with, to retract when the session grows.
    emitted: Vec<Option<(i64, i64)>>,
    accs: Vec<Acc>,
    /// Groups changed by the current batch, once each.
    touched: Vec<u32>,
    touched_mark: Vec<bool>,
    /// Stream time: the largest event time seen (windowed only).
    watermark: i64,
    /// Windowed: group ids by the stream time at which their window closes
    /// (and then, for sessions, is forgotten). A session that grew leaves a
    /// stale entry behind, skipped when it comes due.
    timers: BTreeMap<i64, Vec<u32>>,
}

impl Groups {
    fn new(converter: Arc<RowConverter>, aggs: &[AggSpec]) -> Self {
        Groups {
            converter,
            index: FastMap::default(),
            sessions: FastMap::default(),
            keys: Vec::new(),
            live: Vec::new(),
            free: Vec::new(),
            bounds: Vec::new(),
            emitted: Vec::new(),
            accs: aggs.iter().map(|a| Acc::new(a.kind)).collect(),
            touched: Vec::new(),
            touched_mark: Vec::new(),
            watermark: i64::MIN,
            timers: BTreeMap::new(),
        }
    }

    /// A new group: a free id or a new one.
    fn alloc(&mut self, key: GroupKey, bounds: (i64, i64)) -> Result<u32> {
        if let Some(g) = self.free.pop() {
            let i = g as usize;
            self.keys[i] = key;
            self.live[i] = true;
            self.bounds[i] = bounds;
            self.emitted[i] = None;
            for acc in &mut self.accs {
                acc.reset(i);
            }
            return Ok(g);
        }
        let g = u32::try_from(self.keys.len())
            .ok()
            .filter(|&g| g != u32::MAX)
            .ok_or_else(|| {
                DataFusionError::ResourcesExhausted("more than 4 billion groups".into())
            })?;
        self.keys.push(key);
        self.live.push(true);
        self.bounds.push(bounds);
        self.emitted.push(None);
        self.touched_mark.push(false);
        for acc in &mut self.accs {
            acc.grow();
        }
        Ok(g)
    }

    /// Forgets group `g`; its id is reused by a later batch (`free`).
    fn release(&mut self, g: u32, session: bool) -> GroupKey {
        let i = g as usize;
        self.live[i] = false;
        let key = std::mem::take(&mut self.keys[i]);
        if session {
            if let Some(list) = self.sessions.get_mut(&key) {
                list.retain(|&s| s != g);
                if list.is_empty() {
                    self.sessions.remove(&key);
                }
            }
        } else {
            self.index.remove(&key);
        }
        key
    }

    /// Group `g` comes due when stream time reaches `at`.
    fn schedule(&mut self, at: i64, g: u32) {
        self.timers.entry(at).or_default().push(g);
    }

    fn touch(&mut self, g: u32) {
        if !self.touched_mark[g as usize] {
            self.touched_mark[g as usize] = true;
            self.touched.push(g);
        }
    }
}

impl WindowRuntime {
    fn session(&self) -> bool {
        self.spec.kind == WindowKind::Session
    }

    /// The stream time at which a window with `bounds` closes: a record
    /// for it from then on is late. A session closes when no record within
    /// the grace period can extend it.
    fn close_at(&self, (_, end): (i64, i64)) -> i64 {
        let s = &self.spec;
        if self.session() {
            end.saturating_add(s.size_ms)
                .saturating_add(s.grace_ms)
                .saturating_add(1)
        } else {
            end.saturating_add(s.grace_ms)
        }
    }

    /// When a closed window's group is forgotten. A closed session is kept
    /// a gap longer, so that a late record that would have extended it is
    /// dropped rather than starting a new session.
    fn forget_at(&self, bounds: (i64, i64)) -> i64 {
        let close = self.close_at(bounds);
        if self.session() {
            close.saturating_add(self.spec.size_ms)
        } else {
            close
        }
    }
}

impl Operator {
    fn new(exec: &ContinuousAggregateExec, query: Option<Arc<QueryState>>) -> Result<Operator> {
        // A session window's groups are keyed without their bounds.
        let skip = exec
            .window
            .as_ref()
            .filter(|w| w.session())
            .map(|w| [w.start_group, w.end_group]);
        let sort_fields: Vec<SortField> = exec
            .schema
            .fields()
            .iter()
            .take(exec.groups.len())
            .enumerate()
            .filter(|(i, _)| !skip.is_some_and(|s| s.contains(i)))
            .map(|(_, f)| SortField::new(f.data_type().clone()))
            .collect();
        let converter = Arc::new(RowConverter::new(sort_fields)?);
        let layout = KeyLayout {
            converter: converter.clone(),
            schema: exec.schema.clone(),
            groups: exec.groups.len(),
            session: exec
                .window
                .as_ref()
                .filter(|w| w.session())
                .map(|w| (w.start_group, w.end_group)),
        };
        Ok(Operator {
            groups: exec.groups.clone(),
            aggs: exec.aggs.clone(),
            schema: exec.schema.clone(),
            window: exec.window.clone(),
            emit: exec.emit,
            late: exec.late.clone(),
            query,
            layout,
            state: Groups::new(converter, &exec.aggs),
        })
    }

    fn session(&self) -> Option<&WindowRuntime> {
        self.window.as_ref().filter(|w| w.session())
    }

    /// The group key columns without a session's bounds.
    fn base_keys(&self, keys: &[ArrayRef]) -> Vec<ArrayRef> {
        match self.session() {
            Some(w) => keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != w.start_group && *i != w.end_group)
                .map(|(_, k)| k.clone())
                .collect(),
            None => keys.to_vec(),
        }
    }

    /// Folds one input batch in; the rows to emit, if any.
    fn process(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let keys: Vec<ArrayRef> = self
            .groups
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<Result<_>>()?;
        let gids = match self.window.clone() {
            Some(w) if w.session() => self.assign_sessions(&w, batch, &keys)?,
            window => self.assign_groups(window.as_ref(), batch, &keys)?,
        };
        for (acc, spec) in self.state.accs.iter_mut().zip(&self.aggs) {
            let arg = match &spec.arg {
                Some(e) => Some(e.evaluate(batch)?.into_array(n)?),
                None => None,
            };
            acc.update(&gids, arg.as_ref())?;
        }
        let touched = std::mem::take(&mut self.state.touched);
        for &g in &touched {
            self.state.touched_mark[g as usize] = false;
        }
        let mut out = Vec::new();
        if self.emit == Emit::Changes {
            let changed: Vec<u32> = touched
                .into_iter()
                .filter(|&g| self.state.live[g as usize])
                .collect();
            if self.session().is_some() {
                // A session that grew replaces the row sent for its old
                // bounds.
                let mut gone = Vec::new();
                for &g in &changed {
                    let i = g as usize;
                    let now = self.state.bounds[i];
                    if let Some(old) = self.state.emitted[i].replace(now) {
                        if old != now {
                            gone.push((self.state.keys[i].clone(), old));
                        }
                    }
                }
                self.retract(gone)?;
            }
            if !changed.is_empty() {
                out.push(self.rows_of(&changed)?);
            }
        }
        if let Some(w) = self.window.clone() {
            let (closed, forget) = self.expire(&w);
            if self.emit == Emit::Final && !closed.is_empty() {
                out.push(self.rows_of(&closed)?);
            }
            for g in forget {
                self.state.release(g, w.session());
                self.state.free.push(g);
            }
        }
        match out.len() {
            0 => Ok(None),
            1 => Ok(out.pop()),
            _ => Ok(Some(datafusion::arrow::compute::concat_batches(
                &self.schema,
                &out,
            )?)),
        }
    }

    /// Group ids of a batch's rows, without a window or with a tumbling or
    /// hopping one (`u32::MAX`: the row does not count).
    fn assign_groups(
        &mut self,
        window: Option<&WindowRuntime>,
        batch: &RecordBatch,
        keys: &[ArrayRef],
    ) -> Result<Vec<u32>> {
        let n = batch.num_rows();
        let mut keep = BooleanBufferBuilder::new(n);
        keep.append_n(n, true);
        // Window starts (ms), cast once.
        let starts = match window {
            Some(w) => Some(as_i64(&keys[w.start_group])?),
            None => None,
        };
        if let (Some(w), Some(starts)) = (window, &starts) {
            let times = as_i64(&w.event_time.evaluate(batch)?.into_array(n)?)?;
            let mut dropped = 0;
            for i in 0..n {
                if starts.is_null(i) || times.is_null(i) {
                    keep.set_bit(i, false);
                    continue;
                }
                let end = starts.value(i).saturating_add(w.spec.size_ms);
                if w.close_at((starts.value(i), end)) <= self.state.watermark {
                    keep.set_bit(i, false);
                    dropped += 1;
                    continue;
                }
                self.state.watermark = self.state.watermark.max(times.value(i));
            }
            self.late.0.fetch_add(dropped, Ordering::Relaxed);
        }
        let keep = keep.finish();
        let rows = self.state.converter.convert_columns(keys)?;
        let mut gids = Vec::with_capacity(n);
        for i in 0..n {
            if !keep.value(i) {
                gids.push(u32::MAX);
                continue;
            }
            let row = rows.row(i);
            let g = match self.state.index.get(row.as_ref()) {
                Some(&g) => g,
                None => {
                    let key: GroupKey = row.as_ref().into();
                    let (bounds, w) = match (&starts, window) {
                        (Some(s), Some(w)) => {
                            let start = s.value(i);
                            ((start, start.saturating_add(w.spec.size_ms)), Some(w))
                        }
                        _ => ((0, 0), None),
                    };
                    let g = self.state.alloc(key.clone(), bounds)?;
                    self.state.index.insert(key, g);
                    if let Some(w) = w {
                        self.state.schedule(w.close_at(bounds), g);
                    }
                    g
                }
            };
            self.state.touch(g);
            gids.push(g);
        }
        Ok(gids)
    }

    /// Group ids of a batch's rows under a session window: each row joins
    /// the sessions of its key it falls within the gap of (merging them)
    /// or starts one.
    fn assign_sessions(
        &mut self,
        w: &WindowRuntime,
        batch: &RecordBatch,
        keys: &[ArrayRef],
    ) -> Result<Vec<u32>> {
        let n = batch.num_rows();
        let gap = w.spec.size_ms;
        let times = as_i64(&w.event_time.evaluate(batch)?.into_array(n)?)?;
        let rows = self
            .state
            .converter
            .convert_columns(&self.base_keys(keys))?;
        let mut gids = vec![u32::MAX; n];
        // Sessions merged into another during this batch, and where to.
        let mut merged: HashMap<u32, u32> = HashMap::new();
        let mut gone = Vec::new();
        let mut dropped = 0;
        let mut near: Vec<u32> = Vec::with_capacity(2);
        for (i, gid) in gids.iter_mut().enumerate() {
            if times.is_null(i) {
                continue;
            }
            let t = times.value(i);
            let row = rows.row(i);
            // A record falls within the gap of at most two sessions (they
            // are more than a gap apart).
            near.clear();
            if let Some(list) = self.state.sessions.get(row.as_ref()) {
                near.extend(list.iter().copied().filter(|&s| {
                    let (start, end) = self.state.bounds[s as usize];
                    start.saturating_sub(gap) <= t && t <= end.saturating_add(gap)
                }));
            }
            let mut bounds = (t, t);
            for &s in &near {
                let (start, end) = self.state.bounds[s as usize];
                bounds = (bounds.0.min(start), bounds.1.max(end));
            }
            let wm = self.state.watermark;
            let extends_closed = near
                .iter()
                .any(|&s| w.close_at(self.state.bounds[s as usize]) <= wm);
            if extends_closed || w.close_at(bounds) <= wm {
                dropped += 1;
                continue;
            }
            self.state.watermark = wm.max(t);
            let (g, was) = match near.as_slice() {
                [] => {
                    let key: GroupKey = row.as_ref().into();
                    let g = self.state.alloc(key.clone(), bounds)?;
                    self.state.sessions.entry(key).or_default().push(g);
                    (g, None)
                }
                [first, rest @ ..] => {
                    let was = self.state.bounds[*first as usize];
                    for &other in rest {
                        for acc in &mut self.state.accs {
                            acc.merge(other as usize, *first as usize);
                        }
                        if let Some(old) = self.state.emitted[other as usize] {
                            gone.push((self.state.keys[other as usize].clone(), old));
                        }
                        self.state.release(other, true);
                        merged.insert(other, *first);
                    }
                    (*first, Some(was))
                }
            };
            self.state.bounds[g as usize] = bounds;
            if was.is_none_or(|was| w.close_at(was) != w.close_at(bounds)) {
                self.state.schedule(w.close_at(bounds), g);
            }
            self.state.touch(g);
            *gid = g;
        }
        self.late.0.fetch_add(dropped, Ordering::Relaxed);
        // Rows of a session merged away count in the one it joined; its id
        // is free for the next batch.
        if !merged.is_empty() {
            for g in gids.iter_mut() {
                while let Some(&to) = merged.get(g) {
                    *g = to;
                }
            }
            self.state.free.extend(merged.keys());
        }
        self.retract(gone)?;
        Ok(gids)
    }

    /// Groups whose window closed as stream time passed them (emitted
    /// with `EMIT FINAL`), and groups to forget, once each. A closed
    /// session is forgotten a gap after it closes.
    fn expire(&mut self, w: &WindowRuntime) -> (Vec<u32>, Vec<u32>) {
        let later = self
            .state
            .timers
            .split_off(&self.state.watermark.saturating_add(1));
        let due = std::mem::replace(&mut self.state.timers, later);
        let (mut closed, mut forget) = (Vec::new(), Vec::new());
        for (at, mut gids) in due {
            gids.sort_unstable();
            gids.dedup();
            for g in gids {
                let i = g as usize;
                if !self.state.live[i] {
                    continue;
                }
                let bounds = self.state.bounds[i];
                let (close, forget_at) = (w.close_at(bounds), w.forget_at(bounds));
                if at == close {
                    closed.push(g);
                    if forget_at == close {
                        forget.push(g);
                    } else {
                        self.state.schedule(forget_at, g);
                    }
                } else if at == forget_at {
                    forget.push(g);
                }
            }
        }
        (closed, forget)
    }

    /// Tells the persistent query that the rows of these keys and bounds
    /// are gone (a table deletes them).
    fn retract(&self, gone: Vec<Replaced>) -> Result<()> {
        let Some(q) = self.query.as_ref().filter(|q| q.collects_retractions()) else {
            return Ok(());
        };
        if gone.is_empty() {
            return Ok(());
        }
        let bounds: Vec<(i64, i64)> = gone.iter().map(|(_, b)| *b).collect();
        let columns = self.key_columns(gone.iter().map(|(k, _)| k.as_ref()), &bounds)?;
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .take(self.groups.len())
            .map(|f| f.as_ref().clone())
            .collect();
        q.retract(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?);
        Ok(())
    }

    /// The group key columns of `keys` (row format), with a session's
    /// `bounds` put back in.
    fn key_columns<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
        bounds: &[(i64, i64)],
    ) -> Result<Vec<ArrayRef>> {
        self.layout.columns(keys, bounds)
    }

    /// The current rows of groups `gids`.
    fn rows_of(&self, gids: &[u32]) -> Result<RecordBatch> {
        let bounds: Vec<(i64, i64)> = gids
            .iter()
            .map(|&g| self.state.bounds[g as usize])
            .collect();
        let mut columns = self.key_columns(
            gids.iter().map(|&g| self.state.keys[g as usize].as_ref()),
            &bounds,
        )?;
        for (acc, spec) in self.state.accs.iter().zip(&self.aggs) {
            let a = acc.values(gids, &spec.out)?;
            columns.push(if a.data_type() == &spec.out {
                a
            } else {
                cast(&a, &spec.out)?
            });
        }
        // Group key types are the schema's (the row format round-trips).
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(gids.len())),
        )?)
    }

    fn live_groups(&self) -> Vec<u32> {
        (0..self.state.keys.len() as u32)
            .filter(|&g| self.state.live[g as usize])
            .collect()
    }
}

/// Schema metadata of a state snapshot.
const STATE_WATERMARK: &str = "sediment.watermark";
const STATE_LATE: &str = "sediment.late_records";

impl Operator {
    /// The whole state, which [`StateCopy::into_batch`] makes one batch,
    /// one row per group: the group keys
    /// (`key_<i>`, a session's bounds included) and each aggregate's state
    /// (`acc_<i>`, and for AVG `acc_<i>_sum`, `acc_<i>_count`), with stream
    /// time and late records in the metadata. Arrow columns rather than
    /// the row format, which is not stable across Arrow versions. Which
    /// windows are closed follows from their bounds and stream time.
    /// The copy holds the keys in the row format and the aggregates as
    /// columns, so taking it is cheap.
    fn copy_state(&self) -> Result<StateCopy> {
        let st = &self.state;
        let gids = self.live_groups();
        let mut accs = Vec::new();
        for (i, (acc, spec)) in st.accs.iter().zip(&self.aggs).enumerate() {
            for (suffix, a) in acc.state(&gids, &spec.out)? {
                accs.push((format!("acc_{i}{suffix}"), a));
            }
        }
        Ok(StateCopy {
            layout: self.layout.clone(),
            keys: gids.iter().map(|&g| st.keys[g as usize].clone()).collect(),
            bounds: gids.iter().map(|&g| st.bounds[g as usize]).collect(),
            accs,
            metadata: HashMap::from([
                (STATE_WATERMARK.to_string(), st.watermark.to_string()),
                (
                    STATE_LATE.to_string(),
                    self.late.0.load(Ordering::Relaxed).to_string(),
                ),
            ]),
        })
    }

    /// Loads a [`Operator::copy_state`] into this (new) operator. (Snapshots
    /// of format 1 may also have an `open` column: ignored, since which
    /// windows are open follows from stream time.)
    fn restore(&mut self, saved: &RecordBatch) -> Result<()> {
        let bad = |why: &str| {
            DataFusionError::Execution(format!(
                "the checkpointed state does not fit this aggregation ({why}): drop and recreate the query"
            ))
        };
        let n = saved.num_rows();
        let k = self.groups.len();
        if saved.num_columns() < k {
            return Err(bad("too few columns"));
        }
        let keys: Vec<ArrayRef> = saved.columns()[..k]
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    Err(bad("group key types differ"))
                }
            })
            .collect::<Result<_>>()?;
        let meta = saved.schema_ref().metadata();
        let number = |key: &str| meta.get(key).and_then(|v| v.parse::<i64>().ok());
        self.state.watermark = number(STATE_WATERMARK).unwrap_or(i64::MIN);
        self.late.0.store(
            number(STATE_LATE).map_or(0, |v| v.max(0) as u64),
            Ordering::Relaxed,
        );
        let window = self.window.clone();
        let bounds: Vec<(i64, i64)> = match &window {
            Some(w) if w.session() => {
                let (s, e) = (as_i64(&keys[w.start_group])?, as_i64(&keys[w.end_group])?);
                (0..n).map(|i| (s.value(i), e.value(i))).collect()
            }
            Some(w) => {
                let s = as_i64(&keys[w.start_group])?;
                (0..n)
                    .map(|i| (s.value(i), s.value(i).saturating_add(w.spec.size_ms)))
                    .collect()
            }
            None => vec![(0, 0); n],
        };
        let rows = self
            .state
            .converter
            .convert_columns(&self.base_keys(&keys))?;
        let session = window.as_ref().is_some_and(|w| w.session());
        let st = &mut self.state;
        for (i, &b) in bounds.iter().enumerate() {
            let key: GroupKey = rows.row(i).as_ref().into();
            let g = st.alloc(key.clone(), b)?;
            if session {
                st.sessions.entry(key).or_default().push(g);
                if self.emit == Emit::Changes {
                    st.emitted[g as usize] = Some(b);
                }
            } else {
                st.index.insert(key, g);
            }
        }
        let mut at = k;
        for (acc, spec) in st.accs.iter_mut().zip(&self.aggs) {
            let width = acc.state_width();
            let cols = saved
                .columns()
                .get(at..at + width)
                .ok_or_else(|| bad("too few aggregate columns"))?;
            acc.load(cols, &spec.out).map_err(|e| bad(&e.to_string()))?;
            at += width;
        }
        // Open windows wait for their close; closed ones (already emitted)
        // for their forgetting.
        if let Some(w) = &window {
            for (g, &b) in bounds.iter().enumerate() {
                let at = if w.close_at(b) > st.watermark {
                    w.close_at(b)
                } else {
                    w.forget_at(b)
                };
                st.schedule(at, g as u32);
            }
        }
        Ok(())
    }
}

fn as_i64(a: &ArrayRef) -> Result<Int64Array> {
    Ok(cast(a, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// One aggregate's state for every group.
enum Acc {
    Count(Vec<i64>),
    SumInt {
        sum: Vec<i64>,
        seen: Vec<bool>,
    },
    SumFloat {
        sum: Vec<f64>,
        seen: Vec<bool>,
    },
    MinMaxInt {
        v: Vec<i64>,
        seen: Vec<bool>,
        max: bool,
    },
    MinMaxFloat {
        v: Vec<f64>,
        seen: Vec<bool>,
        max: bool,
    },
    MinMaxOther {
        v: Vec<Option<ScalarValue>>,
        max: bool,
    },
    Avg {
        sum: Vec<f64>,
        count: Vec<i64>,
    },
}

impl Acc {
    fn new(kind: AggKind) -> Acc {
        match kind {
            AggKind::Count => Acc::Count(Vec::new()),
            AggKind::SumInt => Acc::SumInt {
                sum: Vec::new(),
                seen: Vec::new(),
            },
            AggKind::SumFloat => Acc::SumFloat {
                sum: Vec::new(),
                seen: Vec::new(),
            },
            AggKind::MinMaxInt { max } => Acc::MinMaxInt {
                v: Vec::new(),
                seen: Vec::new(),
                max,
            },
            AggKind::MinMaxFloat { max } => Acc::MinMaxFloat {
                v: Vec::new(),
                seen: Vec::new(),
                max,
            },
            AggKind::MinMaxOther { max } => Acc::MinMaxOther { v: Vec::new(), max },
            AggKind::Avg => Acc::Avg {
                sum: Vec::new(),
                count: Vec::new(),
            },
        }
    }

    /// Room for one more group.
    fn grow(&mut self) {
        match self {
            Acc::Count(c) => c.push(0),
            Acc::SumInt { sum, seen } => {
                sum.push(0);
                seen.push(false);
            }
            Acc::SumFloat { sum, seen } => {
                sum.push(0.0);
                seen.push(false);
            }
            Acc::MinMaxInt { v, seen, .. } => {
                v.push(0);
                seen.push(false);
            }
            Acc::MinMaxFloat { v, seen, .. } => {
                v.push(0.0);
                seen.push(false);
            }
            Acc::MinMaxOther { v, .. } => v.push(None),
            Acc::Avg { sum, count } => {
                sum.push(0.0);
                count.push(0);
            }
        }
    }

    /// Adds row `i` of `arg` to group `gids[i]` (rows with `u32::MAX`
    /// are skipped; NULL arguments are ignored, as SQL does).
    fn update(&mut self, gids: &[u32], arg: Option<&ArrayRef>) -> Result<()> {
        let rows = gids.iter().enumerate().filter(|(_, g)| **g != u32::MAX);
        match self {
            Acc::Count(c) => match arg {
                None => rows.for_each(|(_, &g)| c[g as usize] += 1),
                Some(a) => rows
                    .filter(|(i, _)| a.is_valid(*i))
                    .for_each(|(_, &g)| c[g as usize] += 1),
            },
            Acc::SumInt { sum, seen } => {
                let a = as_i64(required(arg)?)?;
                for (i, &g) in rows.filter(|(i, _)| a.is_valid(*i)) {
                    sum[g as usize] = sum[g as usize].wrapping_add(a.value(i));
                    seen[g as usize] = true;
                }
            }
            Acc::SumFloat { sum, seen } => {
                let a = as_f64(required(arg)?)?;
                for (i, &g) in rows.filter(|(i, _)| a.is_valid(*i)) {
                    sum[g as usize] += a.value(i);
                    seen[g as usize] = true;
                }
            }
            Acc::MinMaxInt { v, seen, max } => {
                let a = as_i64(required(arg)?)?;
                for (i, &g) in rows.filter(|(i, _)| a.is_valid(*i)) {
                    let (x, g) = (a.value(i), g as usize);
                    if !seen[g] || (*max && x > v[g]) || (!*max && x < v[g]) {
                        v[g] = x;
                        seen[g] = true;
                    }
                }
            }
            Acc::MinMaxFloat { v, seen, max } => {
                let a = as_f64(required(arg)?)?;
                for (i, &g) in rows.filter(|(i, _)| a.is_valid(*i)) {
                    let (x, g) = (a.value(i), g as usize);
                    let better = if *max {
                        x.total_cmp(&v[g]).is_gt()
                    } else {
                        x.total_cmp(&v[g]).is_lt()
                    };
                    if !seen[g] || better {
                        v[g] = x;
                        seen[g] = true;
                    }
                }
            }
            Acc::MinMaxOther { v, max } => {
                let a = required(arg)?;
                for (i, &g) in rows.filter(|(i, _)| a.is_valid(*i)) {
                    keep_better(&mut v[g as usize], ScalarValue::try_from_array(a, i)?, *max);
                }
            }
            Acc::Avg { sum, count } => {
                let a = as_f64(required(arg)?)?;
                for (i, &g) in rows.filter(|(i, _)| a.is_valid(*i)) {
                    sum[g as usize] += a.value(i);
                    count[g as usize] += 1;
                }
            }
        }
        Ok(())
    }

    /// The values of groups `gids` (`out`: the aggregate's type).
    fn values(&self, gids: &[u32], out: &DataType) -> Result<ArrayRef> {
        let at = |g: &u32| *g as usize;
        Ok(match self {
            Acc::Count(c) => Arc::new(Int64Array::from_iter_values(gids.iter().map(|g| c[at(g)]))),
            Acc::SumInt { sum, seen } | Acc::MinMaxInt { v: sum, seen, .. } => Arc::new(
                gids.iter()
                    .map(|g| seen[at(g)].then_some(sum[at(g)]))
                    .collect::<Int64Array>(),
            ),
            Acc::SumFloat { sum, seen } | Acc::MinMaxFloat { v: sum, seen, .. } => Arc::new(
                gids.iter()
                    .map(|g| seen[at(g)].then_some(sum[at(g)]))
                    .collect::<Float64Array>(),
            ),
            Acc::MinMaxOther { v, .. } => {
                let null = ScalarValue::try_from(out)?;
                let values: Vec<ScalarValue> = gids
                    .iter()
                    .map(|g| v[at(g)].clone().unwrap_or_else(|| null.clone()))
                    .collect();
                ScalarValue::iter_to_array(values)?
            }
            Acc::Avg { sum, count } => Arc::new(
                gids.iter()
                    .map(|g| (count[at(g)] > 0).then(|| sum[at(g)] / count[at(g)] as f64))
                    .collect::<Float64Array>(),
            ),
        })
    }
}

impl Acc {
    /// How many snapshot columns this aggregate's state takes.
    fn state_width(&self) -> usize {
        match self {
            Acc::Avg { .. } => 2,
            _ => 1,
        }
    }

    /// The state of groups `gids`, as columns (name suffix, values); a
    /// group with no value yet is NULL.
    fn state(&self, gids: &[u32], out: &DataType) -> Result<Vec<(&'static str, ArrayRef)>> {
        Ok(match self {
            Acc::Avg { sum, count } => vec![
                (
                    "_sum",
                    Arc::new(Float64Array::from_iter_values(
                        gids.iter().map(|&g| sum[g as usize]),
                    )) as ArrayRef,
                ),
                (
                    "_count",
                    Arc::new(Int64Array::from_iter_values(
                        gids.iter().map(|&g| count[g as usize]),
                    )) as ArrayRef,
                ),
            ],
            other => vec![("", other.values(gids, out)?)],
        })
    }

    /// Group `i` back to its initial state (a reused id).
    fn reset(&mut self, i: usize) {
        match self {
            Acc::Count(c) => c[i] = 0,
            Acc::SumInt { sum, seen } | Acc::MinMaxInt { v: sum, seen, .. } => {
                sum[i] = 0;
                seen[i] = false;
            }
            Acc::SumFloat { sum, seen } | Acc::MinMaxFloat { v: sum, seen, .. } => {
                sum[i] = 0.0;
                seen[i] = false;
            }
            Acc::MinMaxOther { v, .. } => v[i] = None,
            Acc::Avg { sum, count } => {
                sum[i] = 0.0;
                count[i] = 0;
            }
        }
    }

    /// Folds group `from` into group `into` (sessions merging).
    fn merge(&mut self, from: usize, into: usize) {
        match self {
            Acc::Count(c) => c[into] += c[from],
            Acc::SumInt { sum, seen } => {
                if seen[from] {
                    sum[into] = sum[into].wrapping_add(sum[from]);
                    seen[into] = true;
                }
            }
            Acc::SumFloat { sum, seen } => {
                if seen[from] {
                    sum[into] += sum[from];
                    seen[into] = true;
                }
            }
            Acc::MinMaxInt { v, seen, max } => {
                if seen[from]
                    && (!seen[into] || (*max && v[from] > v[into]) || (!*max && v[from] < v[into]))
                {
                    v[into] = v[from];
                    seen[into] = true;
                }
            }
            Acc::MinMaxFloat { v, seen, max } => {
                let better = if *max {
                    v[from].total_cmp(&v[into]).is_gt()
                } else {
                    v[from].total_cmp(&v[into]).is_lt()
                };
                if seen[from] && (!seen[into] || better) {
                    v[into] = v[from];
                    seen[into] = true;
                }
            }
            Acc::MinMaxOther { v, max } => {
                if let Some(x) = v[from].take() {
                    keep_better(&mut v[into], x, *max);
                }
            }
            Acc::Avg { sum, count } => {
                sum[into] += sum[from];
                count[into] += count[from];
            }
        }
    }

    /// Loads the columns [`Acc::state`] wrote into this (empty) state.
    fn load(&mut self, cols: &[ArrayRef], out: &DataType) -> Result<()> {
        let ints = |a: &ArrayRef| -> Result<(Vec<i64>, Vec<bool>)> {
            let a = as_i64(a)?;
            Ok((
                (0..a.len())
                    .map(|i| if a.is_valid(i) { a.value(i) } else { 0 })
                    .collect(),
                (0..a.len()).map(|i| a.is_valid(i)).collect(),
            ))
        };
        let floats = |a: &ArrayRef| -> Result<(Vec<f64>, Vec<bool>)> {
            let a = as_f64(a)?;
            Ok((
                (0..a.len())
                    .map(|i| if a.is_valid(i) { a.value(i) } else { 0.0 })
                    .collect(),
                (0..a.len()).map(|i| a.is_valid(i)).collect(),
            ))
        };
        match (self, cols) {
            (Acc::Count(c), [a]) => *c = ints(a)?.0,
            (Acc::SumInt { sum, seen } | Acc::MinMaxInt { v: sum, seen, .. }, [a]) => {
                (*sum, *seen) = ints(a)?;
            }
            (Acc::SumFloat { sum, seen } | Acc::MinMaxFloat { v: sum, seen, .. }, [a]) => {
                (*sum, *seen) = floats(a)?;
            }
            (Acc::MinMaxOther { v, .. }, [a]) => {
                if a.data_type() != out {
                    return Err(DataFusionError::Execution(format!(
                        "MIN/MAX state is {}, not {out}",
                        a.data_type()
                    )));
                }
                *v = (0..a.len())
                    .map(|i| {
                        Ok(if a.is_valid(i) {
                            Some(ScalarValue::try_from_array(a, i)?)
                        } else {
                            None
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            (Acc::Avg { sum, count }, [s, c]) => {
                *sum = floats(s)?.0;
                *count = ints(c)?.0;
            }
            _ => {
                return Err(DataFusionError::Execution(
                    "aggregate state columns do not match".into(),
                ))
            }
        }
        Ok(())
    }
}

/// Puts `x` in `slot` if it is the larger (`max`) or smaller value.
fn keep_better(slot: &mut Option<ScalarValue>, x: ScalarValue, max: bool) {
    let replace = match slot {
        None => true,
        Some(cur) => match x.partial_cmp(cur) {
            Some(CmpOrdering::Greater) => max,
            Some(CmpOrdering::Less) => !max,
            _ => false,
        },
    };
    if replace {
        *slot = Some(x);
    }
}

fn required(arg: Option<&ArrayRef>) -> Result<&ArrayRef> {
    arg.ok_or_else(|| DataFusionError::Internal("aggregate without its argument".into()))
}

fn as_f64(a: &ArrayRef) -> Result<Float64Array> {
    Ok(cast(a, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

/// DataFusion's `FilterExec` gathers its output into full batches (8192
/// rows) before passing it on: over a live input a matching row would wait
/// for thousands more. In push queries every `FilterExec` is replaced by
/// this one, which passes each filtered batch on as it is.
#[derive(Debug)]
pub struct LiveFilterExec {
    input: Arc<dyn ExecutionPlan>,
    predicate: Arc<dyn PhysicalExpr>,
    projection: Option<Vec<usize>>,
    fetch: Option<usize>,
    props: Arc<PlanProperties>,
}

impl LiveFilterExec {
    /// Replaces every `FilterExec` of `plan` (see the type's docs).
    pub fn replace_filters(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        use datafusion::physical_plan::filter::FilterExec;
        plan.transform_up(|p| {
            let Some(f) = p.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(p));
            };
            Ok(Transformed::yes(Arc::new(LiveFilterExec {
                input: f.input().clone(),
                predicate: f.predicate().clone(),
                projection: f.projection().as_ref().map(|p| p.to_vec()),
                fetch: f.fetch(),
                props: f.properties().clone(),
            }) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }
}

impl DisplayAs for LiveFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LiveFilterExec: {}", self.predicate)?;
        if let Some(p) = &self.projection {
            write!(f, ", projection={p:?}")?;
        }
        if let Some(n) = self.fetch {
            write!(f, ", fetch={n}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LiveFilterExec {
    fn name(&self) -> &str {
        "LiveFilterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.predicate)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = crate::topic_table::only_child(children, "LiveFilterExec")?;
        Ok(Arc::new(LiveFilterExec {
            input,
            predicate: self.predicate.clone(),
            projection: self.projection.clone(),
            fetch: self.fetch,
            props: self.props.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let predicate = self.predicate.clone();
        let projection = self.projection.clone();
        let left = self.fetch.unwrap_or(usize::MAX);
        let schema = self.props.eq_properties.schema().clone();
        let filter = move |b: RecordBatch| -> Result<RecordBatch> {
            let mask = predicate.evaluate(&b)?.into_array(b.num_rows())?;
            let mask = mask.as_boolean_opt().ok_or_else(|| {
                DataFusionError::Internal("a filter predicate is not boolean".into())
            })?;
            let out = datafusion::arrow::compute::filter_record_batch(&b, mask)?;
            Ok(match &projection {
                Some(p) => out.project(p)?,
                None => out,
            })
        };
        // Ends at `fetch` rows without reading further.
        let stream = futures::stream::unfold((input, left), move |(mut input, left)| {
            let filter = filter.clone();
            async move {
                if left == 0 {
                    return None;
                }
                loop {
                    let out = match input.next().await? {
                        Ok(b) => filter(b),
                        Err(e) => return Some((Err(e), (input, 0))),
                    };
                    match out {
                        Ok(out) if out.num_rows() == 0 => continue,
                        Ok(out) => {
                            let out = out.slice(0, out.num_rows().min(left));
                            let left = left - out.num_rows();
                            return Some((Ok(out), (input, left)));
                        }
                        Err(e) => return Some((Err(e), (input, 0))),
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
