//! Unbounded scans for push and persistent queries, and where they are.
//!
//! A table that follows the log plans as a [`TailExec`]: one output
//! partition per Kafka partition, each that partition's history (from
//! where the query starts up to the high watermark at planning: archive
//! files in offset order, then hot segments) and then its records as they
//! are committed, from exactly that high watermark. Its rows carry their
//! offsets and timestamps to the [`TailMergeExec`] above, which runs each
//! partition's pipeline (decoding, filters, projections) in a task of its
//! own, so history is read and decoded in parallel, and merges them into
//! one stream: while partitions are in their history it takes the batch
//! with the oldest records first (so windows see history roughly in event
//! time order, whatever the number of partitions); once a partition is
//! live it is never waited for (an idle partition holds nothing back).
//!
//! The merge records, for every batch it passes on, the next offset of
//! each Kafka partition behind it: [`QueryState::progress`]. Placed right
//! under a continuous aggregate (or at the root of a plan without one),
//! that progress is exactly what the query's output and state have
//! consumed, so a persistent query checkpoints it with its state, and a
//! restored query starts each partition there ([`QueryState::resume_at`]).

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::{max, min};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef, TimestampMillisecondType};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use sediment_tiering::Archive;
use tokio::sync::mpsc;

use crate::continuous::{AggregateHandle, ContinuousAggregateExec};
use crate::topic_table::{HotRange, HotReader};

/// Batches each partition's task may run ahead of the merge.
const LOOKAHEAD: usize = 2;

/// One topic partition of a query's input.
pub type InputPartition = (String, i32);
/// Where each tail behind a batch is: its partition and next offset.
type Positions = Vec<(InputPartition, i64)>;

/// A push or persistent query's position and state, shared by its plan's
/// operators through the session config (see the module docs).
#[derive(Debug, Default)]
pub struct QueryState {
    /// Where each partition's tail starts, when the query is restored.
    resume: BTreeMap<InputPartition, i64>,
    /// The next offset of each partition whose records the query's output
    /// and state hold.
    progress: Mutex<BTreeMap<InputPartition, i64>>,
    /// Tails started by the `execute` call under way (see
    /// [`TailMergeExec`]).
    started: Mutex<Vec<Arc<TailSlot>>>,
    /// The continuous aggregate's state to restore, and its live state.
    restore: Mutex<Option<RecordBatch>>,
    aggregate: Mutex<Option<AggregateHandle>>,
    /// Group keys whose rows a session window's growth replaced, kept
    /// only for a table (see [`QueryState::collect_retractions`]).
    retractions: Mutex<Option<Vec<RecordBatch>>>,
}

impl QueryState {
    /// State for a query that starts each partition of `resume` at its
    /// offset, and its continuous aggregate (if any) from `aggregate`.
    pub fn restored(resume: BTreeMap<InputPartition, i64>, aggregate: Option<RecordBatch>) -> Self {
        QueryState {
            progress: Mutex::new(resume.clone()),
            resume,
            restore: Mutex::new(aggregate),
            ..Default::default()
        }
    }

    /// Keeps the group keys whose rows are gone (a session window grew or
    /// merged), for [`QueryState::take_retractions`]: a table deletes them.
    pub(crate) fn collect_retractions(&self) {
        *self.retractions.lock() = Some(Vec::new());
    }

    pub(crate) fn collects_retractions(&self) -> bool {
        self.retractions.lock().is_some()
    }

    pub(crate) fn retract(&self, keys: RecordBatch) {
        if let Some(r) = self.retractions.lock().as_mut() {
            r.push(keys);
        }
    }

    pub(crate) fn take_retractions(&self) -> Vec<RecordBatch> {
        self.retractions
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn resume_at(&self, topic: &str, partition: i32) -> Option<i64> {
        self.resume.get(&(topic.to_string(), partition)).copied()
    }

    /// The next offset of each input partition the query has consumed.
    pub fn progress(&self) -> BTreeMap<InputPartition, i64> {
        self.progress.lock().clone()
    }

    /// Whether the query moved on from `progress` (compared in place).
    pub fn moved_from(&self, progress: &BTreeMap<InputPartition, i64>) -> bool {
        *self.progress.lock() != *progress
    }

    fn advance(&self, positions: &[(InputPartition, i64)]) {
        let mut progress = self.progress.lock();
        for (p, next) in positions {
            let e = progress.entry(p.clone()).or_insert(*next);
            *e = (*e).max(*next);
        }
    }

    /// The aggregate state a restored query starts from (taken once).
    pub(crate) fn take_restore(&self) -> Option<RecordBatch> {
        self.restore.lock().take()
    }

    pub(crate) fn set_aggregate(&self, handle: AggregateHandle) {
        *self.aggregate.lock() = Some(handle);
    }

    /// The query's continuous aggregate, once it runs.
    pub(crate) fn aggregate(&self) -> Option<AggregateHandle> {
        self.aggregate.lock().clone()
    }
}

/// Where one running tail partition is.
#[derive(Debug)]
pub(crate) struct TailSlot {
    input: InputPartition,
    /// The next offset after the last batch it produced (or skipped).
    next: AtomicI64,
    /// The oldest timestamp of the last batch it produced.
    time: AtomicI64,
    /// Its history is read: it now waits for new records.
    live: AtomicBool,
}

impl TailSlot {
    fn position(&self) -> (InputPartition, i64) {
        (self.input.clone(), self.next.load(Ordering::Acquire))
    }
}

/// How a tail's rows are laid out: the columns read (archive-schema
/// indexes), where offset and timestamp are among them, and which of them
/// the query asked for.
#[derive(Debug, Clone)]
pub(crate) struct TailLayout {
    pub projection: Vec<usize>,
    pub offset: usize,
    pub timestamp: usize,
    pub output: Vec<usize>,
}

/// One Kafka partition of a tail: history from `from`, then the follow
/// range.
#[derive(Debug, Clone)]
pub(crate) struct TailPart {
    pub from: i64,
    pub history: Option<Arc<dyn ExecutionPlan>>,
    pub follow: HotRange,
}

/// A table that follows the log (see the module docs). One output
/// partition per Kafka partition, each in offset order.
#[derive(Debug)]
pub struct TailExec {
    topic: String,
    parts: Vec<TailPart>,
    archive: Arc<Archive>,
    schema: SchemaRef,
    layout: TailLayout,
    props: Arc<PlanProperties>,
}

impl TailExec {
    pub(crate) fn new(
        topic: String,
        parts: Vec<TailPart>,
        archive: Arc<Archive>,
        schema: SchemaRef,
        layout: TailLayout,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(parts.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Unbounded {
                requires_infinite_memory: false,
            },
        ));
        TailExec {
            topic,
            parts,
            archive,
            schema,
            layout,
            props,
        }
    }
}

impl DisplayAs for TailExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TailExec: topic={} from=[", self.topic)?;
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "p{}={}", p.follow.index, p.from)?;
            if p.from < p.follow.from {
                write!(f, " live={}", p.follow.from)?;
            }
        }
        write!(f, "]")
    }
}

/// The minimum of an int64 or timestamp column, and its maximum.
fn range_of(batch: &RecordBatch, offset: usize, timestamp: usize) -> (Option<i64>, Option<i64>) {
    let last = batch
        .column(offset)
        .as_primitive_opt::<Int64Type>()
        .and_then(max);
    let first_time = batch
        .column(timestamp)
        .as_primitive_opt::<TimestampMillisecondType>()
        .and_then(min);
    (last, first_time)
}

impl ExecutionPlan for TailExec {
    fn name(&self) -> &str {
        "TailExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.parts
            .iter()
            .filter_map(|p| p.history.as_ref())
            .collect()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut children = children.into_iter();
        let mut parts = self.parts.clone();
        for p in parts.iter_mut().filter(|p| p.history.is_some()) {
            p.history = Some(children.next().ok_or_else(|| {
                DataFusionError::Internal("TailExec takes back its own history plans".into())
            })?);
        }
        if children.next().is_some() {
            return Err(DataFusionError::Internal(
                "TailExec takes back its own history plans".into(),
            ));
        }
        Ok(Arc::new(TailExec::new(
            self.topic.clone(),
            parts,
            self.archive.clone(),
            self.schema.clone(),
            self.layout.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(part) = self.parts.get(partition).cloned() else {
            return Err(DataFusionError::Internal(format!(
                "TailExec has {} partitions, not {partition}",
                self.parts.len()
            )));
        };
        let slot = Arc::new(TailSlot {
            input: (self.topic.clone(), part.follow.index),
            next: AtomicI64::new(part.from),
            time: AtomicI64::new(i64::MIN),
            live: AtomicBool::new(part.history.is_none()),
        });
        if let Some(state) = context.session_config().get_extension::<QueryState>() {
            state.started.lock().push(slot.clone());
        }
        let layout = self.layout.clone();
        // The history's partitions one after another (archive files in
        // offset order, then the hot range), then the follow range.
        let history = match part.history {
            Some(h) => {
                let parts = h.properties().output_partitioning().partition_count();
                let context = context.clone();
                futures::stream::iter(0..parts)
                    .map(move |p| match h.execute(p, context.clone()) {
                        Ok(s) => s.boxed(),
                        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                    })
                    .flatten()
                    .boxed()
            }
            None => futures::stream::empty().boxed(),
        };
        let end_of_history = {
            let slot = slot.clone();
            let live_from = part.follow.from;
            futures::stream::once(async move {
                slot.next.fetch_max(live_from, Ordering::AcqRel);
                slot.live.store(true, Ordering::Release);
            })
            .filter_map(|()| async { None })
        };
        let (history_slot, out) = (slot.clone(), layout.clone());
        let history = history.map(move |b| {
            let b = b?;
            let (last, first_time) = range_of(&b, out.offset, out.timestamp);
            if let Some(last) = last {
                history_slot.next.fetch_max(last + 1, Ordering::AcqRel);
            }
            history_slot
                .time
                .store(first_time.unwrap_or(i64::MIN), Ordering::Release);
            Ok(b.project(&out.output)?)
        });
        let live = follow(
            HotReader {
                topic: self.topic.clone(),
                archive: self.archive.clone(),
                projection: layout.projection.clone(),
                pos: part.follow.from,
                range: part.follow,
                left: usize::MAX,
                started: false,
                follows: true,
                spans: std::collections::VecDeque::new(),
            },
            slot,
            layout,
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            history.chain(end_of_history).chain(live),
        )))
    }
}

/// One partition's records from `reader.pos` as they are committed, up to
/// the end of its range.
fn follow(
    reader: HotReader,
    slot: Arc<TailSlot>,
    layout: TailLayout,
) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
    let hw = reader.range.partition.watch_high_watermark();
    futures::stream::try_unfold((reader, hw), move |(mut r, mut hw)| {
        let (slot, layout) = (slot.clone(), layout.clone());
        async move {
            loop {
                if r.pos >= r.range.to {
                    return Ok(None);
                }
                let pos = r.pos;
                if hw.wait_for(|h| *h > pos).await.is_err() {
                    return Err(DataFusionError::Execution(format!(
                        "topic {} partition {} was closed",
                        r.topic, r.range.index
                    )));
                }
                let batch = r.next_batch().await?;
                slot.next.fetch_max(r.pos, Ordering::AcqRel);
                if let Some(b) = batch {
                    let (_, first_time) = range_of(&b, layout.offset, layout.timestamp);
                    slot.time
                        .store(first_time.unwrap_or(i64::MIN), Ordering::Release);
                    return Ok(Some((b.project(&layout.output)?, (r, hw))));
                }
            }
        }
    })
    .boxed()
}

/// What a partition's task sends the merge.
enum Msg {
    Batch {
        batch: Result<RecordBatch>,
        positions: Positions,
        time: i64,
        live: bool,
    },
    /// The pipeline waits for input: where its tails are now.
    Idle { positions: Positions, live: bool },
}

/// Merges a plan's partitions into one stream (see the module docs):
/// DataFusion's `CoalescePartitionsExec`, in history's time order, with the
/// query's progress.
#[derive(Debug)]
pub struct TailMergeExec {
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
}

impl TailMergeExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            input.properties().boundedness,
        ));
        TailMergeExec { input, props }
    }
}

impl DisplayAs for TailMergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TailMergeExec: partitions={}",
            self.input
                .properties()
                .output_partitioning()
                .partition_count()
        )
    }
}

impl ExecutionPlan for TailMergeExec {
    fn name(&self) -> &str {
        "TailMergeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(TailMergeExec::new(
            crate::topic_table::only_child(children, "TailMergeExec")?,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "TailMergeExec has one partition, not {partition}"
            )));
        }
        let state = context.session_config().get_extension::<QueryState>();
        let n = self
            .input
            .properties()
            .output_partitioning()
            .partition_count();
        let mut inputs = Vec::with_capacity(n);
        for p in 0..n {
            // The tails this partition's pipeline reads start during its
            // `execute`, which runs here, one partition at a time.
            if let Some(s) = &state {
                s.started.lock().clear();
            }
            let stream = self.input.execute(p, context.clone())?;
            let slots = match &state {
                Some(s) => std::mem::take(&mut *s.started.lock()),
                None => Vec::new(),
            };
            let live = slots.iter().all(|s| s.live.load(Ordering::Acquire));
            let (tx, rx) = mpsc::channel(LOOKAHEAD);
            let task = SpawnedTask::spawn(feed(stream, slots, tx));
            inputs.push(Input {
                rx,
                head: None,
                live,
                done: false,
                _task: task,
            });
        }
        Ok(Box::pin(Merge {
            schema: self.input.schema(),
            inputs,
            state,
        }))
    }
}

/// A partition's task: runs its pipeline and sends each batch with the
/// position of its tails; when the pipeline waits, sends where they are.
async fn feed(
    mut stream: SendableRecordBatchStream,
    slots: Vec<Arc<TailSlot>>,
    tx: mpsc::Sender<Msg>,
) {
    let positions = || slots.iter().map(|s| s.position()).collect::<Vec<_>>();
    let all_live = || slots.iter().all(|s| s.live.load(Ordering::Acquire));
    // Compared on every wake-up of the pipeline: without allocating.
    let moved = |sent: &Positions| {
        slots
            .iter()
            .zip(sent)
            .any(|(s, (_, n))| s.next.load(Ordering::Acquire) != *n)
    };
    let mut sent = positions();
    let mut sent_live = all_live();
    loop {
        let step = futures::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
            Poll::Ready(item) => Poll::Ready(Some(item)),
            // Nothing is in flight in the pipeline now: what its tails
            // skipped (filtered rows, the end of history) is consumed.
            Poll::Pending if all_live() != sent_live || moved(&sent) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        let msg = match step {
            Some(Some(batch)) => Msg::Batch {
                batch,
                positions: positions(),
                time: slots
                    .iter()
                    .map(|s| s.time.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(i64::MIN),
                live: all_live(),
            },
            Some(None) => return,
            None => Msg::Idle {
                positions: positions(),
                live: all_live(),
            },
        };
        (sent, sent_live) = match &msg {
            Msg::Batch {
                positions, live, ..
            }
            | Msg::Idle { positions, live } => (positions.clone(), *live),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

struct Input {
    rx: mpsc::Receiver<Msg>,
    /// The next batch, where it leaves its tails, and its oldest time.
    head: Option<(Result<RecordBatch>, Positions, i64)>,
    /// Its tails are all live: the merge does not wait for it.
    live: bool,
    done: bool,
    _task: SpawnedTask<()>,
}

struct Merge {
    schema: SchemaRef,
    inputs: Vec<Input>,
    state: Option<Arc<QueryState>>,
}

impl Stream for Merge {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        for input in &mut this.inputs {
            while input.head.is_none() && !input.done {
                match input.rx.poll_recv(cx) {
                    Poll::Ready(Some(Msg::Batch {
                        batch,
                        positions,
                        time,
                        live,
                    })) => {
                        input.head = Some((batch, positions, time));
                        input.live = live;
                    }
                    Poll::Ready(Some(Msg::Idle { positions, live })) => {
                        // Nothing of this input is held here: its position
                        // is the query's.
                        if let Some(s) = &this.state {
                            s.advance(&positions);
                        }
                        input.live = live;
                    }
                    Poll::Ready(None) => input.done = true,
                    Poll::Pending => break,
                }
            }
        }
        // While an input reads history and has nothing ready, its next
        // batch may be the oldest: wait for it.
        if this
            .inputs
            .iter()
            .any(|i| i.head.is_none() && !i.done && !i.live)
        {
            return Poll::Pending;
        }
        let next = this
            .inputs
            .iter_mut()
            .filter(|i| i.head.is_some())
            .min_by_key(|i| i.head.as_ref().map_or(i64::MAX, |h| h.2));
        match next.and_then(|i| i.head.take()) {
            Some((batch, positions, _)) => {
                if let Some(s) = &this.state {
                    s.advance(&positions);
                }
                Poll::Ready(Some(batch))
            }
            None if this.inputs.iter().all(|i| i.done) => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl RecordBatchStream for Merge {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Puts a [`TailMergeExec`] where a push query's plan merges partitions:
/// in place of each `CoalescePartitionsExec`, under each continuous
/// aggregate (whose state must match the progress), and, if there is none
/// yet, at the root.
pub fn add_merges(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let is_merge = |p: &Arc<dyn ExecutionPlan>| p.downcast_ref::<TailMergeExec>().is_some();
    let plan = plan
        .transform_up(|p| {
            if let Some(c) = p.downcast_ref::<CoalescePartitionsExec>() {
                let merged =
                    Arc::new(TailMergeExec::new(c.input().clone())) as Arc<dyn ExecutionPlan>;
                return Ok(Transformed::yes(match c.fetch() {
                    Some(n) => Arc::new(GlobalLimitExec::new(merged, 0, Some(n))),
                    None => merged,
                }));
            }
            if p.downcast_ref::<ContinuousAggregateExec>().is_some() && !is_merge(p.children()[0]) {
                let child = p.children()[0].clone();
                let merged = Arc::new(TailMergeExec::new(child)) as Arc<dyn ExecutionPlan>;
                return Ok(Transformed::yes(replace_children_if_necessary(
                    p,
                    vec![merged],
                )?));
            }
            Ok(Transformed::no(p))
        })?
        .data;
    let mut found = false;
    plan.apply(|p| {
        found |= is_merge(p);
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if found {
        return Ok(plan);
    }
    Ok(Arc::new(TailMergeExec::new(plan)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn progress_only_moves_forward() {
        let s = QueryState::restored(BTreeMap::from([(("t".into(), 0), 5)]), None);
        assert_eq!(s.resume_at("t", 0), Some(5));
        assert_eq!(s.resume_at("t", 1), None);
        s.advance(&[(("t".into(), 0), 3), (("t".into(), 1), 7)]);
        assert_eq!(
            s.progress(),
            BTreeMap::from([(("t".into(), 0), 5), (("t".into(), 1), 7)])
        );
        assert!(!s.moved_from(&s.progress()));
        assert!(s.moved_from(&BTreeMap::from([(("t".into(), 0), 5)])));
    }
}
