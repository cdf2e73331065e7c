//! A topic as one table over both tiers.
//!
//! A scan takes, per Kafka partition, one snapshot: the archive manifest
//! (files up to its end offset `E`) and then the high watermark `HW`. Rows
//! below `E` come from the Parquet files through DataFusion's Parquet scan
//! (row-group and page pruning with the files' statistics); rows in
//! `[E, HW)` come from the hot segments. The manifest is read before the
//! high watermark, so `E <= HW` and the two ranges meet exactly: no gap, no
//! duplicate. Should local retention delete a hot segment after the
//! snapshot (it only deletes what the archive already holds), the hot scan
//! reads those offsets back from the archive instead.
//!
//! A stream's scan ([`TopicTable::plan_scan`] with [`TypedColumns`]) reads
//! archive files that carry its typed value columns through those columns
//! (a second Parquet scan with its own file schema and filters), and
//! everything else as raw columns to be decoded.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::datatypes::{Fields, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::statistics::Statistics;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use sediment_log::keys::key_hash;
use sediment_log::{batch, records, LogError, LogManager, Partition};
use sediment_tiering::convert::{self, Columns};
use sediment_tiering::{Archive, ArchiveRead, ValueColumn};

use crate::ranges::Bounds;
use crate::tail::{QueryState, TailExec, TailLayout, TailPart};

/// The URL the archive's object store is registered under in DataFusion.
pub const ARCHIVE_STORE_URL: &str = "sediment-archive://archive/";

/// Columns of `topics.<name>`, as indexes into the archive file schema.
const TABLE_COLUMNS: [usize; 6] = [0, 1, 2, 4, 5, 6];
/// The archive file schema's `timestamp` column (and the table's).
const TIMESTAMP_COLUMN: usize = 2;
/// The table's `offset` column.
const OFFSET_COLUMN: usize = 1;
/// Raw columns a filter may prune with (names shared by table and files).
pub(crate) const PRUNING_COLUMNS: [&str; 4] = ["partition", "offset", "timestamp", "key"];

/// Bytes per hot-tier read: large enough to amortise a read, small enough
/// that a cancelled query stops promptly.
const HOT_CHUNK_BYTES: usize = 1 << 20;
/// A batch size no valid batch exceeds (the log validated every batch).
const MAX_BATCH: usize = i32::MAX as usize;

/// The schema of `topics.<name>`: partition, offset, timestamp, key, value,
/// headers.
pub fn table_schema() -> SchemaRef {
    let file = convert::schema();
    Arc::new(Schema::new(
        TABLE_COLUMNS
            .iter()
            .map(|&i| file.field(i).clone())
            .collect::<Vec<_>>(),
    ))
}

#[derive(Debug)]
pub struct TopicTable {
    topic: String,
    log: Arc<LogManager>,
    archive: Arc<Archive>,
    schema: SchemaRef,
    /// Set for push queries: the scan never ends, it follows the log.
    tail: Option<OffsetReset>,
}

/// Where a push query starts reading (ksqlDB's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// At each partition's high watermark when the query is planned.
    #[default]
    Latest,
    /// At the beginning of history (the archive included).
    Earliest,
}

impl TopicTable {
    pub fn new(topic: &str, log: Arc<LogManager>, archive: Arc<Archive>) -> Self {
        TopicTable {
            topic: topic.to_string(),
            log,
            archive,
            schema: table_schema(),
            tail: None,
        }
    }

    /// This table as an unbounded scan: from `start`, then every record as
    /// it is committed, until the query ends.
    pub fn tailing(mut self, start: Option<OffsetReset>) -> Self {
        self.tail = start;
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn log(&self) -> &Arc<LogManager> {
        &self.log
    }
}

/// Filters only on the pruning columns are pushed to the scan, inexactly:
/// they prune files, row groups, pages and segments, and DataFusion still
/// applies them to the rows.
pub(crate) fn pushdown(filters: &[&Expr], columns: &[&str]) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            let mut only_ours = true;
            let _ = f.apply(|e| {
                if let Expr::Column(c) = e {
                    if !columns.contains(&c.name.as_str()) {
                        only_ours = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            });
            if only_ours {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Unsupported
            }
        })
        .collect()
}

/// `filters` with column qualifiers removed (the scan resolves by name).
pub(crate) fn unqualified(filters: &[Expr]) -> Vec<Expr> {
    filters
        .iter()
        .filter_map(|f| {
            f.clone()
                .transform(|e| match e {
                    Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
                        Column::new_unqualified(c.name),
                    ))),
                    e => Ok(Transformed::no(e)),
                })
                .ok()
                .map(|t| t.data)
        })
        .collect()
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Bounds on partition, offset and time are applied exactly by the
        // scan (see `RowFilter::Bounds`); other filters on the pruning
        // columns prune and are applied by DataFusion.
        let mut out = pushdown(filters, &PRUNING_COLUMNS);
        for (f, p) in filters.iter().zip(out.iter_mut()) {
            if Bounds::is_exact(f) {
                *p = TableProviderFilterPushDown::Exact;
            }
        }
        Ok(out)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..TABLE_COLUMNS.len()).collect();
        let projection = projection.unwrap_or(&all);
        // DataFusion pushes the other filters into the Parquet scan itself
        // (they sit right above it): no predicate of our own for them.
        let split = self
            .plan_scan(
                state,
                projection,
                &unqualified(filters),
                RowFilter::Bounds,
                limit,
                None,
            )
            .await?;
        Ok(match split.raw {
            Some(plan) => plan,
            None => Arc::new(datafusion::physical_plan::empty::EmptyExec::new(Arc::new(
                self.schema.project(projection)?,
            ))),
        })
    }
}

/// Archive files that carry exactly these typed value columns are read
/// through them (see [`TopicTable::plan_scan`]).
pub(crate) struct TypedColumns {
    /// The columns as declared (names without the file's prefix).
    pub fields: Fields,
    /// Filters over the file's columns (raw names and `value.<name>`).
    pub filters: Vec<Expr>,
}

impl TypedColumns {
    /// The manifest's description of these columns, sorted by name.
    fn sorted(&self) -> Vec<ValueColumn> {
        sorted_columns(self.fields.iter().map(|f| ValueColumn {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        }))
    }
}

fn sorted_columns(cols: impl Iterator<Item = ValueColumn>) -> Vec<ValueColumn> {
    let mut v: Vec<ValueColumn> = cols.collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Which of a scan's filters it applies to rows itself (every filter
/// prunes files, row groups and hot ranges by its bounds).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RowFilter {
    /// Every filter, in the Parquet scan; DataFusion filters the rows
    /// again above (the filters were pushed down inexactly).
    All,
    /// Exactly the filters that are bounds ([`Bounds::is_exact`]), which
    /// DataFusion left to the scan: row groups wholly inside the bounds
    /// are read without testing a row, straddling ones through a row
    /// filter, hot rows by offset range and timestamp.
    Bounds,
}

/// A scan split by how its rows are read.
pub(crate) struct SplitScan {
    /// Raw columns (table `projection`) from archive files without the
    /// typed columns and from the hot tier.
    pub raw: Option<Arc<dyn ExecutionPlan>>,
    /// From archive files with the typed columns: partition, offset,
    /// timestamp, key, then the typed columns in declared order.
    pub typed: Option<Arc<dyn ExecutionPlan>>,
}

impl TopicTable {
    /// Plans a scan of table columns `projection` with unqualified
    /// `filters`, which prune files, row groups and hot ranges and filter
    /// rows as `row_filter` says. With `typed`, archive files carrying
    /// exactly those value columns are scanned separately, through them.
    pub(crate) async fn plan_scan(
        &self,
        state: &dyn Session,
        projection: &[usize],
        filters: &[Expr],
        row_filter: RowFilter,
        limit: Option<usize>,
        typed: Option<&TypedColumns>,
    ) -> Result<SplitScan> {
        if let Some(start) = self.tail {
            let raw = self.plan_tail(state, start, projection, filters).await?;
            return Ok(SplitScan {
                raw: Some(raw),
                typed: None,
            });
        }
        let wanted = typed.map(TypedColumns::sorted);
        let plan = ScanPlan::new(&self.log, &self.archive, &self.topic, filters, wanted)?;
        let exact = row_filter == RowFilter::Bounds;
        let files = self.row_groups(plan.files, &plan.bounds, exact).await?;
        let typed_files = self
            .row_groups(plan.typed_files, &plan.bounds, exact)
            .await?;
        let file_projection: Vec<usize> = projection.iter().map(|&i| TABLE_COLUMNS[i]).collect();
        let projected = Arc::new(self.schema.project(projection)?);
        let (all_rows, edge_rows): (Vec<Expr>, Vec<Expr>) = match row_filter {
            RowFilter::All => (filters.to_vec(), Vec::new()),
            RowFilter::Bounds => (
                Vec::new(),
                filters
                    .iter()
                    .filter(|f| Bounds::is_exact(f))
                    .cloned()
                    .collect(),
            ),
        };
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() {
            inputs.push(parquet_scan(
                state,
                convert::schema(),
                files,
                file_projection.clone(),
                &all_rows,
                &edge_rows,
                limit,
            )?);
        }
        if !plan.hot.is_empty() {
            inputs.push(Arc::new(HotScanExec::new(
                self.topic.clone(),
                plan.hot,
                self.archive.clone(),
                file_projection,
                projected,
                limit,
            )));
        }
        let raw = match inputs.len() {
            0 => None,
            1 => inputs.pop(),
            _ => Some(UnionExec::try_new(inputs)?),
        };
        let typed = match typed {
            Some(t) if !typed_files.is_empty() => {
                // partition, offset, timestamp, key, then the typed ones.
                let mut cols = vec![0, 1, 2, 4];
                cols.extend((0..t.fields.len()).map(|i| convert::RAW_COLUMNS + i));
                Some(parquet_scan(
                    state,
                    convert::schema_with(&t.fields),
                    typed_files,
                    cols,
                    &t.filters,
                    &edge_rows,
                    limit,
                )?)
            }
            _ => None,
        };
        Ok(SplitScan { raw, typed })
    }

    /// Plans this table as a tail (see [`crate::tail`]): one output
    /// partition per Kafka partition, each its history from where the query
    /// starts up to the high watermark of this moment (archive, then hot
    /// segments), then its records as they are committed.
    async fn plan_tail(
        &self,
        state: &dyn Session,
        start: OffsetReset,
        projection: &[usize],
        filters: &[Expr],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        use datafusion::logical_expr::{col, lit};
        let resume = state.config().get_extension::<QueryState>();
        let t = self.log.topic(&self.topic).ok_or_else(|| {
            DataFusionError::Plan(format!("topic '{}' does not exist", self.topic))
        })?;
        // Offsets and timestamps travel with the rows, for the query's
        // progress and to read partitions' histories in time order.
        let mut inner = projection.to_vec();
        let mut position = |column: usize| match inner.iter().position(|&c| c == column) {
            Some(i) => i,
            None => {
                inner.push(column);
                inner.len() - 1
            }
        };
        let offset = position(OFFSET_COLUMN);
        let timestamp = position(TIMESTAMP_COLUMN);
        let layout = TailLayout {
            projection: inner.iter().map(|&i| TABLE_COLUMNS[i]).collect(),
            offset,
            timestamp,
            output: (0..projection.len()).collect(),
        };
        let bounds = Bounds::from_filters(filters);
        let mut parts = Vec::new();
        for (i, p) in t.partitions.iter().enumerate() {
            let index = i32::try_from(i).unwrap_or(i32::MAX);
            if bounds.is_empty() || !bounds.has_partition(index) {
                continue;
            }
            let hw = p.high_watermark();
            let from = match (
                resume
                    .as_ref()
                    .and_then(|r| r.resume_at(&self.topic, index)),
                start,
            ) {
                (Some(offset), _) => offset,
                (None, OffsetReset::Latest) => hw,
                (None, OffsetReset::Earliest) => 0,
            }
            .max(bounds.offset_lo);
            let end = hw.min(bounds.offset_hi);
            let history = if from < end {
                let mut f = filters.to_vec();
                f.push(col("partition").eq(lit(index)));
                f.push(col("offset").gt_eq(lit(from)));
                f.push(col("offset").lt(lit(end)));
                let bounded = TopicTable::new(&self.topic, self.log.clone(), self.archive.clone());
                // (Boxed: plan_scan calls this for tails.)
                Box::pin(bounded.plan_scan(state, &inner, &f, RowFilter::All, None, None))
                    .await?
                    .raw
            } else {
                None
            };
            parts.push(TailPart {
                from,
                history,
                follow: HotRange {
                    partition: p.clone(),
                    index,
                    from: from.max(end),
                    to: bounds.offset_hi,
                    ts_lo: bounds.ts_lo,
                    ts_hi: bounds.ts_hi,
                    keys: None,
                },
            });
        }
        let schema = Arc::new(self.schema.project(projection)?);
        if parts.is_empty() {
            return Ok(Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                schema,
            )));
        }
        Ok(Arc::new(TailExec::new(
            self.topic.clone(),
            parts,
            self.archive.clone(),
            schema,
            layout,
        )))
    }

    /// Reads the footers of `files` (cached, a few at a time) and keeps the
    /// row groups whose offset and time statistics can match `bounds`;
    /// with `exact`, those that straddle a bound are set apart, to be
    /// filtered row by row.
    async fn row_groups(
        &self,
        files: Vec<(Path, u64)>,
        bounds: &Bounds,
        exact: bool,
    ) -> Result<ArchiveFiles> {
        let archive = &self.archive;
        let footers: Vec<_> = futures::stream::iter(files)
            .map(|(path, size)| async move {
                let meta = archive.footer(&path, size).await.map_err(external)?;
                Ok::<_, DataFusionError>((path, size, meta))
            })
            .buffered(FOOTER_READS)
            .try_collect()
            .await?;
        let mut out = ArchiveFiles::default();
        for (path, size, meta) in footers {
            let fits = row_group_fits(meta.metadata(), bounds);
            let total = fits.len();
            out.total_row_groups += total;
            let (mut inside, mut edge) = (Vec::new(), Vec::new());
            for (i, fit) in fits.into_iter().enumerate() {
                match fit {
                    Fit::Outside => {}
                    Fit::Edge if exact => edge.push(i),
                    Fit::Inside | Fit::Edge => inside.push(i),
                }
            }
            out.row_groups += inside.len() + edge.len();
            out.filtered_row_groups += edge.len();
            if !inside.is_empty() || !edge.is_empty() {
                out.files += 1;
            }
            for (groups, list) in [(inside, &mut out.whole), (edge, &mut out.edge)] {
                if groups.is_empty() {
                    continue;
                }
                let mut file = PartitionedFile::new(path.to_string(), size);
                if groups.len() < total {
                    let mut access = ParquetAccessPlan::new_none(total);
                    for i in groups {
                        access.scan(i);
                    }
                    file = file.with_extension(access);
                }
                list.push(file);
            }
        }
        Ok(out)
    }
}

/// Footers read at once while planning (each is one ranged read).
const FOOTER_READS: usize = 16;

/// Archive files a scan reads, with the row groups planning kept: those
/// read whole and those that straddle an exact bound (filtered by row).
#[derive(Default)]
struct ArchiveFiles {
    whole: Vec<PartitionedFile>,
    edge: Vec<PartitionedFile>,
    files: usize,
    row_groups: usize,
    filtered_row_groups: usize,
    total_row_groups: usize,
}

impl ArchiveFiles {
    fn is_empty(&self) -> bool {
        self.files == 0
    }
}

/// How a row group's rows lie against a scan's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Outside,
    Inside,
    Edge,
}

/// How each row group of an archive file lies against `bounds`, by its
/// offset and timestamp statistics (a row group without them straddles).
fn row_group_fits(meta: &ParquetMetaData, bounds: &Bounds) -> Vec<Fit> {
    let columns = meta.file_metadata().schema_descr().columns();
    let index = |name: &str| columns.iter().position(|c| c.name() == name);
    let (offset, timestamp) = (index("offset"), index("timestamp"));
    meta.row_groups()
        .iter()
        .map(|rg| {
            let range = |col: Option<usize>| match col.and_then(|c| rg.column(c).statistics()) {
                Some(Statistics::Int64(s)) => s.min_opt().copied().zip(s.max_opt().copied()),
                _ => None,
            };
            let (o, t) = (range(offset), range(timestamp));
            let (lo, hi) = o.unwrap_or((i64::MIN, i64::MAX - 1));
            let (ts_lo, ts_hi) = t.unwrap_or((i64::MIN, i64::MAX));
            if !bounds.overlaps(lo, hi.saturating_add(1), ts_lo, ts_hi) {
                Fit::Outside
            } else if o.is_some()
                && t.is_some()
                && bounds.contains(lo, hi.saturating_add(1), ts_lo, ts_hi)
            {
                Fit::Inside
            } else {
                Fit::Edge
            }
        })
        .collect()
}

/// DataFusion's Parquet scan of archive `files` with `file_schema`:
/// `filters` prune row groups and pages and are applied while decoding;
/// `edge_filters` too, but only to the row groups that straddle them.
fn parquet_scan(
    state: &dyn Session,
    file_schema: SchemaRef,
    files: ArchiveFiles,
    projection: Vec<usize>,
    filters: &[Expr],
    edge_filters: &[Expr],
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let typed = file_schema.fields().len() > convert::RAW_COLUMNS;
    let store = ObjectStoreUrl::parse(ARCHIVE_STORE_URL)?;
    let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
    let scan = |group: Vec<PartitionedFile>, filters: Vec<Expr>| -> Result<_> {
        let mut source = ParquetSource::new(file_schema.clone())
            .with_pushdown_filters(true)
            .with_reorder_filters(true)
            .with_enable_page_index(true);
        if let Some(pred) = conjunction(filters) {
            let pred: Arc<dyn PhysicalExpr> = state.create_physical_expr(pred, &df_schema)?;
            source = source.with_predicate(pred);
        }
        let config = FileScanConfigBuilder::new(store.clone(), Arc::new(source))
            .with_file_group(FileGroup::new(group))
            .with_projection_indices(Some(projection.clone()))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>)
    };
    let mut scans = Vec::new();
    if !files.whole.is_empty() {
        scans.push(scan(files.whole, filters.to_vec())?);
    }
    if !files.edge.is_empty() {
        let mut all = filters.to_vec();
        all.extend_from_slice(edge_filters);
        scans.push(scan(files.edge, all)?);
    }
    let input = match scans.len() {
        1 => scans.remove(0),
        _ => UnionExec::try_new(scans)?,
    };
    Ok(Arc::new(ArchiveScanExec {
        input,
        files: files.files,
        row_groups: files.row_groups,
        filtered_row_groups: files.filtered_row_groups,
        total_row_groups: files.total_row_groups,
        typed,
    }))
}

/// One Parquet scan of archive files, with what planning kept of them:
/// EXPLAIN shows the files and row groups it will read before running,
/// and how many of those straddle an exact bound (filtered by row).
#[derive(Debug)]
pub struct ArchiveScanExec {
    input: Arc<dyn ExecutionPlan>,
    files: usize,
    row_groups: usize,
    filtered_row_groups: usize,
    total_row_groups: usize,
    typed: bool,
}

impl DisplayAs for ArchiveScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ArchiveScanExec: files={} row_groups={} of {}",
            self.files, self.row_groups, self.total_row_groups
        )?;
        if self.filtered_row_groups > 0 {
            write!(f, " filtered_row_groups={}", self.filtered_row_groups)?;
        }
        if self.typed {
            write!(f, " columns=typed")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ArchiveScanExec {
    fn name(&self) -> &str {
        "ArchiveScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    // Transparent to filters: dynamic filters (TopK, joins) reach the scan.
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
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
        let input = only_child(children, "ArchiveScanExec")?;
        Ok(Arc::new(ArchiveScanExec {
            input,
            files: self.files,
            row_groups: self.row_groups,
            filtered_row_groups: self.filtered_row_groups,
            total_row_groups: self.total_row_groups,
            typed: self.typed,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// What one scan reads: archive files and hot ranges, from one snapshot.
pub(crate) struct ScanPlan {
    /// Archive files (path, size) the manifest's statistics keep.
    pub files: Vec<(Path, u64)>,
    /// Files whose typed value columns are exactly the wanted ones.
    pub typed_files: Vec<(Path, u64)>,
    pub hot: Vec<HotRange>,
    pub bounds: Bounds,
}

impl ScanPlan {
    fn new(
        log: &LogManager,
        archive: &Archive,
        topic: &str,
        filters: &[Expr],
        typed: Option<Vec<ValueColumn>>,
    ) -> Result<Self> {
        let t = log
            .topic(topic)
            .ok_or_else(|| DataFusionError::Plan(format!("topic '{topic}' does not exist")))?;
        let bounds = Bounds::from_filters(filters);
        let mut plan = ScanPlan {
            files: Vec::new(),
            typed_files: Vec::new(),
            hot: Vec::new(),
            bounds: bounds.clone(),
        };
        if bounds.is_empty() {
            return Ok(plan);
        }
        for (i, p) in t.partitions.iter().enumerate() {
            let index = i32::try_from(i).unwrap_or(i32::MAX);
            if !bounds.has_partition(index) {
                continue;
            }
            // Manifest first, then the high watermark: E <= HW.
            let manifest = if p.tiered() {
                archive.manifest(topic, index)
            } else {
                None
            };
            let hw = p.high_watermark();
            let mut archive_end = 0;
            if let Some(m) = &manifest {
                archive_end = m.end_offset;
                for f in &m.files {
                    if bounds.overlaps(
                        f.base_offset,
                        f.next_offset,
                        f.min_timestamp,
                        f.max_timestamp,
                    ) {
                        let file = (archive.file_path(topic, index, f), f.bytes);
                        let is_typed = typed.as_ref().is_some_and(|want| {
                            !f.value_columns.is_empty()
                                && sorted_columns(f.value_columns.iter().cloned()) == *want
                        });
                        if is_typed {
                            plan.typed_files.push(file);
                        } else {
                            plan.files.push(file);
                        }
                    }
                }
            }
            let from = archive_end.max(p.log_start_offset()).max(bounds.offset_lo);
            let to = hw.min(bounds.offset_hi);
            if from < to {
                plan.hot.push(HotRange {
                    partition: p.clone(),
                    index,
                    from,
                    to,
                    ts_lo: bounds.ts_lo,
                    ts_hi: bounds.ts_hi,
                    keys: bounds
                        .keys
                        .as_ref()
                        .map(|ks| ks.iter().map(|k| key_hash(k)).collect()),
                });
            }
        }
        Ok(plan)
    }
}

/// Offsets `[from, to)` of one partition, read from the hot segments.
#[derive(Clone)]
pub(crate) struct HotRange {
    pub(crate) partition: Arc<Partition>,
    pub(crate) index: i32,
    pub(crate) from: i64,
    pub(crate) to: i64,
    /// Only rows with timestamps in `[ts_lo, ts_hi]` are read (and rows
    /// before the first record at or after `ts_lo` are skipped).
    pub(crate) ts_lo: i64,
    pub(crate) ts_hi: i64,
    /// Only segments whose key sets hold one of these key hashes are read
    /// (`key = ...`, `key IN (...)`); rows are still filtered above.
    pub(crate) keys: Option<Vec<u64>>,
}

impl fmt::Debug for HotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}=[{},{})", self.index, self.from, self.to)?;
        if let Some(k) = &self.keys {
            write!(f, " key_filter={}", k.len())?;
        }
        Ok(())
    }
}

/// Reads hot ranges, one output partition per Kafka partition.
#[derive(Debug)]
pub struct HotScanExec {
    topic: String,
    ranges: Vec<HotRange>,
    archive: Arc<Archive>,
    /// Archive-schema column indexes to output.
    projection: Vec<usize>,
    schema: SchemaRef,
    limit: Option<usize>,
    props: Arc<PlanProperties>,
}

impl HotScanExec {
    fn new(
        topic: String,
        ranges: Vec<HotRange>,
        archive: Arc<Archive>,
        projection: Vec<usize>,
        schema: SchemaRef,
        limit: Option<usize>,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(ranges.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        HotScanExec {
            topic,
            ranges,
            archive,
            projection,
            schema,
            limit,
            props,
        }
    }
}

impl DisplayAs for HotScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HotScanExec: topic={} ranges=[", self.topic)?;
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{r:?}")?;
            let segs = r
                .partition
                .segments()
                .iter()
                .filter(|s| s.base_offset < r.to && s.next_offset > r.from)
                .count();
            write!(f, " segments={segs}")?;
        }
        write!(f, "]")?;
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for HotScanExec {
    fn name(&self) -> &str {
        "HotScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(range) = self.ranges.get(partition).cloned() else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::empty(),
            )));
        };
        let reader = HotReader {
            topic: self.topic.clone(),
            archive: self.archive.clone(),
            projection: self.projection.clone(),
            pos: range.from,
            range,
            left: self.limit.unwrap_or(usize::MAX),
            started: false,
            follows: false,
            spans: VecDeque::new(),
        };
        let stream = futures::stream::try_unfold(reader, |mut r| async move {
            let batch = r.next_batch().await?;
            Ok(batch.map(|b| (b, r)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

pub(crate) struct HotReader {
    pub(crate) topic: String,
    pub(crate) archive: Arc<Archive>,
    /// Archive-schema column indexes to output.
    pub(crate) projection: Vec<usize>,
    pub(crate) range: HotRange,
    /// The next offset to read.
    pub(crate) pos: i64,
    pub(crate) left: usize,
    pub(crate) started: bool,
    /// Part of a tail: records still to come may match the time bounds.
    pub(crate) follows: bool,
    /// With `range.keys`: the offset ranges left whose segments may hold
    /// one of the keys (see `Partition::key_ranges`).
    pub(crate) spans: VecDeque<(i64, i64)>,
}

/// The one input of a single-child plan node, given to `with_new_children`.
pub(crate) fn only_child(
    mut children: Vec<Arc<dyn ExecutionPlan>>,
    node: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    match (children.pop(), children.is_empty()) {
        (Some(child), true) => Ok(child),
        _ => Err(DataFusionError::Internal(format!("{node} needs one child"))),
    }
}

/// The rows of an archive-schema `batch` with timestamps in `[lo, hi]`.
fn within_time(batch: &RecordBatch, lo: i64, hi: i64) -> Result<RecordBatch> {
    let ts = batch
        .column(TIMESTAMP_COLUMN)
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| DataFusionError::Internal("timestamp column is not ms".into()))?;
    let keep: BooleanArray = ts
        .iter()
        .map(|t| Some(t.is_some_and(|t| t >= lo && t <= hi)))
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl HotReader {
    /// The next non-empty batch of rows, or None at the end of the range.
    pub(crate) async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if !self.started {
            self.started = true;
            if self.range.ts_lo > i64::MIN {
                // Skip what is older than the lower time bound: the time
                // index gives the first offset that can match.
                let p = self.range.partition.clone();
                let ts = self.range.ts_lo;
                let first = tokio::task::spawn_blocking(move || p.offset_for_timestamp(ts))
                    .await
                    .map_err(external)?;
                match first {
                    Ok(Some((offset, _))) => self.pos = self.pos.max(offset),
                    // Later records may still match.
                    Ok(None) if self.follows => {}
                    Ok(None) => self.pos = self.range.to,
                    // Below the local start: read from `from` as usual.
                    Err(_) => {}
                }
            }
            if let Some(keys) = self.range.keys.clone() {
                let p = self.range.partition.clone();
                let (from, to) = (self.pos, self.range.to);
                self.spans = tokio::task::spawn_blocking(move || p.key_ranges(&keys, from, to))
                    .await
                    .map_err(external)?
                    .into();
            }
        }
        while self.pos < self.range.to && self.left > 0 {
            if self.range.keys.is_some() {
                // Jump over segments whose key sets lack every key.
                while let Some(&(lo, hi)) = self.spans.front() {
                    if self.pos < hi {
                        self.pos = self.pos.max(lo);
                        break;
                    }
                    self.spans.pop_front();
                }
                if self.spans.is_empty() {
                    self.pos = self.range.to;
                    break;
                }
            }
            let bytes = self.read_chunk().await?;
            if bytes.is_empty() {
                break;
            }
            let mut cols = Columns::default();
            let mut next = self.pos;
            for (at, h) in batch::BatchIter::new(&bytes, MAX_BATCH, false) {
                if h.base_offset >= self.range.to {
                    break;
                }
                next = h.next_offset();
                if h.next_offset() <= self.pos || h.is_control() {
                    continue;
                }
                let raw = &bytes[at..at + h.size];
                let payload = records::payload(raw, &h).map_err(external)?;
                let mut recs = records::decode(&h, &payload).map_err(external)?;
                // Only the batches at the ends of the range straddle it.
                if h.base_offset < self.pos || h.next_offset() > self.range.to {
                    recs.retain(|r| r.offset >= self.pos && r.offset < self.range.to);
                }
                cols.push_batch(&h, &recs);
            }
            if next <= self.pos {
                // Nothing decodable moved us forward: stop rather than spin.
                return Err(DataFusionError::Execution(format!(
                    "topic {} partition {}: no batch at offset {}",
                    self.topic, self.range.index, self.pos
                )));
            }
            self.pos = next;
            if cols.rows() == 0 {
                continue;
            }
            let mut full = cols.finish(self.range.index).map_err(external)?;
            if self.range.ts_lo > i64::MIN || self.range.ts_hi < i64::MAX {
                full = within_time(&full, self.range.ts_lo, self.range.ts_hi)?;
                if full.num_rows() == 0 {
                    continue;
                }
            }
            let mut out = full.project(&self.projection)?;
            if out.num_rows() > self.left {
                out = out.slice(0, self.left);
            }
            self.left -= out.num_rows();
            return Ok(Some(out));
        }
        Ok(None)
    }

    /// Whole batches from `pos`: from the segments, or from the archive if
    /// local retention removed them since the scan was planned.
    async fn read_chunk(&self) -> Result<bytes::Bytes> {
        let p = self.range.partition.clone();
        let pos = self.pos;
        let local = tokio::task::spawn_blocking(move || p.read(pos, HOT_CHUNK_BYTES, true))
            .await
            .map_err(external)?;
        match local {
            Ok(r) => Ok(r.records),
            Err(LogError::OffsetOutOfRange { start, .. }) if pos < start => {
                match self
                    .archive
                    .read(&self.topic, self.range.index, pos, HOT_CHUNK_BYTES)
                    .await
                    .map_err(external)?
                {
                    ArchiveRead::Batches(b) => Ok(b),
                    ArchiveRead::NotArchived => Err(DataFusionError::Execution(format!(
                        "topic {} partition {}: offset {pos} left both tiers during the query",
                        self.topic, self.range.index
                    ))),
                }
            }
            Err(e) => Err(external(e)),
        }
    }
}
