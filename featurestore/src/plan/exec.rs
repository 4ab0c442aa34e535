//! `PointInTimeExec`: the physical operator behind [`super::PointInTimeNode`].
//!
//! The entity input is collected (it is the small side: the rows a training set asks
//! for); every partition of the source input is streamed concurrently and each row is
//! routed to its entity group or dropped on the spot, so only the rows of asked-for keys
//! are kept. The sort and sweep then run on blocking threads (see [`super::kernel`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream, collect,
};
use futures::{StreamExt, TryStreamExt};

use super::asof;
use super::kernel::{self, Entry, KeyIndex, Mode, Queries, SourceBatch};
use super::spec::PitSpec;

/// Counts source rows read by point-in-time joins, for progress bars. Put one in the
/// session config (`SessionConfig::with_extension`) to observe a running query.
#[derive(Debug, Default)]
pub struct ScanProgress {
    rows: AtomicU64,
}

impl ScanProgress {
    /// Source rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(AtomicOrdering::Relaxed)
    }

    /// Count `n` more rows read.
    pub fn add(&self, n: u64) {
        self.rows.fetch_add(n, AtomicOrdering::Relaxed);
    }
}

/// Physical point-in-time join. See the module docs.
#[derive(Debug)]
pub struct PointInTimeExec {
    entity: Arc<dyn ExecutionPlan>,
    source: Arc<dyn ExecutionPlan>,
    spec: PitSpec,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl PointInTimeExec {
    /// A join of `entity` and `source` computing `spec`.
    pub fn try_new(
        entity: Arc<dyn ExecutionPlan>,
        source: Arc<dyn ExecutionPlan>,
        spec: PitSpec,
    ) -> Result<Self> {
        let source_schema = source.schema();
        spec.kernel_plan(&source_schema)?;
        let mut fields: Vec<_> = entity.schema().fields().iter().cloned().collect();
        fields.extend(spec.added_fields(&source_schema)?.into_iter().map(Arc::new));
        let schema = Arc::new(Schema::new(fields));
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            entity,
            source,
            spec,
            schema,
            props,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl PointInTimeExec {
    /// What the join computes.
    pub fn spec(&self) -> &PitSpec {
        &self.spec
    }
}

impl DisplayAs for PointInTimeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PointInTimeExec: view={} keys=[{}]",
            self.spec.view,
            self.spec.keys.join(", ")
        )?;
        self.spec.fmt_mode(f)
    }
}

impl ExecutionPlan for PointInTimeExec {
    fn name(&self) -> &str {
        "PointInTimeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.entity, &self.source]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 2 {
            return internal_err!("PointInTimeExec has two children");
        }
        let source = children.pop().expect("two");
        let entity = children.pop().expect("two");
        Ok(Arc::new(Self::try_new(entity, source, self.spec.clone())?))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false, true]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// Every source row of a key must reach the one task that joins it: both inputs
    /// as one partition. DataFusion merges partitioned inputs in this process; a
    /// distributed engine makes the merge a stage boundary, so the join never runs
    /// on a share of the rows it needs.
    fn required_input_distribution(&self) -> Vec<datafusion::physical_plan::Distribution> {
        vec![datafusion::physical_plan::Distribution::SinglePartition; 2]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!(
                "PointInTimeExec has one output partition, asked for {partition}"
            );
        }
        let run = Run {
            entity: self.entity.clone(),
            source: self.source.clone(),
            spec: self.spec.clone(),
            schema: self.schema.clone(),
            scanned: MetricBuilder::new(&self.metrics).counter("source_rows", partition),
            matched: MetricBuilder::new(&self.metrics).counter("source_rows_matched", partition),
            compute: MetricBuilder::new(&self.metrics).subset_time("compute_time", partition),
            output_rows: MetricBuilder::new(&self.metrics).output_rows(partition),
        };
        let schema = self.schema.clone();
        let stream = futures::stream::once(run.run(context))
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

type Counters = (Count, Count, Option<Arc<ScanProgress>>);

fn count(counters: &Counters, rows: usize, matched: usize) {
    counters.0.add(rows);
    counters.1.add(matched);
    if let Some(p) = &counters.2 {
        p.rows.fetch_add(rows as u64, AtomicOrdering::Relaxed);
    }
}

struct Run {
    entity: Arc<dyn ExecutionPlan>,
    source: Arc<dyn ExecutionPlan>,
    spec: PitSpec,
    schema: SchemaRef,
    scanned: Count,
    matched: Count,
    compute: Time,
    output_rows: Count,
}

impl Run {
    async fn run(self, context: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
        let entity_schema = self.entity.schema();
        let entity = concat_batches(
            &entity_schema,
            &collect(self.entity.clone(), context.clone()).await?,
        )?;
        let source_schema = self.source.schema();
        let (mode, layout) = self.spec.kernel_plan(&source_schema)?;

        let mut keys: Vec<ArrayRef> = Vec::with_capacity(self.spec.keys.len());
        for (k, &si) in self.spec.keys.iter().zip(&layout.keys) {
            let col = entity.column_by_name(k).ok_or_else(|| {
                DataFusionError::Plan(format!("the entity table has no join key column `{k}`"))
            })?;
            let want = source_schema.field(si).data_type();
            if col.data_type() != want {
                return exec_err!(
                    "join key `{k}` is {} in the entity table but {want} in the source of view `{}`",
                    col.data_type(),
                    self.spec.view
                );
            }
            keys.push(col.clone());
        }
        let ts_col = entity.column_by_name(&self.spec.entity_ts).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "the entity table has no `{}` column",
                self.spec.entity_ts
            ))
        })?;
        let t = kernel::query_micros(
            ts_col,
            &format!("the entity table's `{}`", self.spec.entity_ts),
        )?;
        if t.null_count() > 0 {
            let row = (0..t.len()).find(|&i| t.is_null(i)).unwrap_or(0);
            return exec_err!(
                "entity row {row} has no `{}`: every row needs the time to compute features as of",
                self.spec.entity_ts
            );
        }
        let (index, groups) = KeyIndex::build(&keys)?;
        let n_groups = index.len();
        let queries = Arc::new(Queries::new(&groups, t.values(), n_groups));
        let index = Arc::new(index);
        let layout = Arc::new(layout);
        let progress = context.session_config().get_extension::<ScanProgress>();
        let value_types: Vec<_> = self
            .spec
            .feature_fields(&source_schema)?
            .into_iter()
            .map(|f| f.data_type().clone())
            .collect();
        let threads = context.session_config().target_partitions().max(1);
        let ttl = self.spec.ttl_us;
        let timer = self.compute.clone();

        // Stream every source partition concurrently, keeping only rows of asked-for
        // keys at or before one of their query times.
        let partitions = self
            .source
            .properties()
            .output_partitioning()
            .partition_count();
        let answer = match mode {
            Mode::AsOf(cols, tie) => {
                let cols = Arc::new(cols);
                let tie = Arc::new(tie);
                let mut tasks = Vec::with_capacity(partitions);
                for p in 0..partitions {
                    let mut stream = self.source.execute(p, context.clone())?;
                    let (index, layout, tie, queries) =
                        (index.clone(), layout.clone(), tie.clone(), queries.clone());
                    let counters = (self.scanned.clone(), self.matched.clone(), progress.clone());
                    tasks.push(SpawnedTask::spawn(async move {
                        let mut part = asof::Part::new(queries.order.len());
                        let mut groups = Vec::new();
                        while let Some(batch) = stream.next().await {
                            let batch = batch?;
                            let rows = batch.num_rows();
                            let matched = asof::scan_batch(
                                &index,
                                &layout,
                                &tie,
                                &queries,
                                batch,
                                &mut groups,
                                &mut part,
                            )?;
                            count(&counters, rows, matched);
                        }
                        Ok::<_, DataFusionError>(part)
                    }));
                }
                let mut parts = Vec::with_capacity(partitions);
                for task in tasks {
                    parts.push(
                        task.join()
                            .await
                            .map_err(|e| DataFusionError::External(Box::new(e)))??,
                    );
                }
                tokio::task::spawn_blocking(move || {
                    let _guard = timer.timer();
                    asof::answer(parts, &queries, n_groups, &cols, &tie, ttl, &value_types)
                })
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??
            }
            Mode::Aggregate(aggs) => {
                let aggs = Arc::new(aggs);
                let mut tasks = Vec::with_capacity(partitions);
                for p in 0..partitions {
                    let mut stream = self.source.execute(p, context.clone())?;
                    let (index, layout, aggs) = (index.clone(), layout.clone(), aggs.clone());
                    let counters = (self.scanned.clone(), self.matched.clone(), progress.clone());
                    tasks.push(SpawnedTask::spawn(async move {
                        let mut entries: Vec<Entry> = Vec::new();
                        let mut retained: Vec<SourceBatch> = Vec::new();
                        let mut groups = Vec::new();
                        while let Some(batch) = stream.next().await {
                            let batch = batch?;
                            let rows = batch.num_rows();
                            let batch_no = retained.len() as u32;
                            let kept = kernel::scan_batch(
                                &index,
                                &layout,
                                &aggs,
                                batch,
                                batch_no,
                                &mut groups,
                                &mut entries,
                                &mut retained,
                            )?;
                            count(&counters, rows, kept);
                        }
                        Ok::<_, DataFusionError>((entries, retained))
                    }));
                }
                let mut parts = Vec::with_capacity(partitions);
                let mut batches: Vec<SourceBatch> = Vec::new();
                for task in tasks {
                    let (mut entries, retained) = task
                        .join()
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))??;
                    let offset = batches.len() as u32;
                    if offset > 0 {
                        entries.iter_mut().for_each(|e| e.batch += offset);
                    }
                    if batches.len() + retained.len() > u32::MAX as usize {
                        return exec_err!("too many source batches for one point-in-time join");
                    }
                    batches.extend(retained);
                    parts.push(entries);
                }
                tokio::task::spawn_blocking(move || {
                    let _guard = timer.timer();
                    kernel::answer(
                        parts,
                        &batches,
                        &queries,
                        n_groups,
                        &aggs,
                        ttl,
                        &value_types,
                        threads,
                    )
                })
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??
            }
        };

        let answer = if self.spec.fallback_zero {
            kernel::apply_zero_fallback(answer)?
        } else {
            answer
        };
        let mut columns: Vec<ArrayRef> = entity.columns().to_vec();
        columns.extend(answer.values);
        columns.push(Arc::new(answer.status));
        columns.push(Arc::new(answer.event_ts));
        let out = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.output_rows.add(out.num_rows());
        let size = context.session_config().batch_size().max(1);
        Ok((0..out.num_rows())
            .step_by(size)
            .map(|o| out.slice(o, size.min(out.num_rows() - o)))
            .collect())
    }
}
