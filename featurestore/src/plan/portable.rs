//! Plans another process can run (docs/scale-out.md): a Delta scan that travels as the
//! table's URL, version and data files, and the codec that carries it and
//! [`PointInTimeExec`] through DataFusion's physical plan protobuf (what a distributed
//! engine such as Ballista sends from its scheduler to its executors).
//!
//! delta-rs's own scan node holds the table's kernel state and cannot be serialised, so
//! a compiler asked for portable scans ([`super::Compiler::with_portable_scans`])
//! registers each source as a [`PortableDeltaTable`]: its scans are
//! [`DeltaFilesExec`]s, one partition per group of data files. The process that runs a
//! partition opens the table at the same version itself, with its own credentials
//! (storage options travel as written, `${ENV_VAR}` references and all, never
//! resolved secrets), and scans exactly those files through delta-rs (deletion
//! vectors, column mapping and partition values included). Filters are not pushed into
//! the scan: DataFusion applies them above it, in plain serialisable nodes.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::exec::PointInTimeExec;
use super::spec::PitSpec;
use crate::delta::{self, Location};

/// Which table a portable scan reads: enough for another process to open it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRef {
    /// The source's name: the receiving process takes the table's endpoint, proxy and
    /// credential-file options from its own configuration for this name.
    #[serde(default)]
    pub source: String,
    /// The table's URL.
    pub url: String,
    /// Its `storage_options` as written in the source (`${ENV_VAR}` for secrets),
    /// resolved against the environment of the process that opens it.
    pub options: Vec<(String, String)>,
    /// The Delta version read.
    pub version: i64,
}

impl TableRef {
    fn location(&self) -> DfResult<Location> {
        let url = url::Url::parse(&self.url).map_err(|e| {
            DataFusionError::Execution(format!("portable scan of `{}`: {e}", self.url))
        })?;
        Location::from_url(url)
            .with_received_options(
                &self.source,
                self.options.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map_err(|e| DataFusionError::Execution(format!("table {}: {e}", self.url)))
    }
}

/// A Delta table at one version whose scans can run in another process: see the
/// module docs.
#[derive(Debug)]
pub struct PortableDeltaTable {
    table: TableRef,
    schema: SchemaRef,
    files: Vec<String>,
}

impl PortableDeltaTable {
    /// `open` (a table at a fixed version) of source `source`, read from its
    /// `storage_options` as written.
    pub fn new(
        open: &delta::OpenTable,
        source: &str,
        options: Vec<(String, String)>,
    ) -> crate::Result<Self> {
        Ok(Self {
            table: TableRef {
                source: source.to_owned(),
                url: open.location.url.to_string(),
                options,
                version: open.version,
            },
            schema: open.schema.clone(),
            files: open.file_ids()?.into_iter().map(|(_, path)| path).collect(),
        })
    }
}

impl PortableDeltaTable {
    /// The same, reading only the data files `files` of the version (an incremental
    /// materialization's new files).
    pub fn with_files(mut self, files: Vec<String>) -> Self {
        self.files = files;
        self
    }
}

#[async_trait]
impl TableProvider for PortableDeltaTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(DeltaFilesExec::try_new(
            self.table.clone(),
            self.schema.clone(),
            vec![self.files.clone()],
            projection.cloned(),
        )?))
    }
}

/// Scan of the data files of a Delta table version, as **one** partition (delta-rs
/// reads its files concurrently inside it); see the module docs.
///
/// One partition by construction: Ballista runs a task over a slice of a stage's
/// partitions and restricts the leaves it knows (file scans, memory tables, shuffle
/// readers) to that slice; a leaf it does not know is left whole, and a task over the
/// slice `[1]` would execute this node's partition 0. With several partitions, a scan
/// split over two tasks read some files twice and others never (test
/// `ballista/tests/it/slicing.rs`). A leaf of one partition has no slice to get wrong.
/// The wire format keeps a list of groups (plans of earlier quiver versions); they are
/// read as one.
#[derive(Debug)]
pub struct DeltaFilesExec {
    table: TableRef,
    table_schema: SchemaRef,
    files: Vec<String>,
    projection: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
}

impl DeltaFilesExec {
    /// Scan `groups` of data files of `table` (whose schema is `table_schema`),
    /// projected to `projection`.
    pub fn try_new(
        table: TableRef,
        table_schema: SchemaRef,
        groups: Vec<Vec<String>>,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(table_schema.project(p)?),
            None => table_schema.clone(),
        };
        let files: Vec<String> = groups.into_iter().flatten().collect();
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table,
            table_schema,
            files,
            projection,
            props,
        })
    }
}

impl DisplayAs for DeltaFilesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DeltaFilesExec: table={} version={} files={}",
            delta::display_url(&url::Url::parse(&self.table.url).map_err(|_| fmt::Error)?),
            self.table.version,
            self.files.len(),
        )
    }
}

impl ExecutionPlan for DeltaFilesExec {
    fn name(&self) -> &str {
        "DeltaFilesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("DeltaFilesExec is a leaf".into()))
        }
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.props.eq_properties.schema().clone();
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DeltaFilesExec has one partition, asked for partition {partition}"
            )));
        }
        let files = self.files.clone();
        if files.is_empty() {
            // delta-rs reads every file when given none: an empty group reads nothing.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        }
        let (table, projection, out) =
            (self.table.clone(), self.projection.clone(), schema.clone());
        let stream = futures::stream::once(async move {
            let open = delta::open(table.location()?, Some(table.version))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let state = SessionStateBuilder::new()
                .with_config(ctx.session_config().clone())
                .with_runtime_env(ctx.runtime_env())
                .with_default_features()
                .build();
            let plan = open
                .scan_files(&state, files, projection.as_ref())
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let plan: Arc<dyn ExecutionPlan> = if plan.output_partitioning().partition_count() > 1 {
                Arc::new(CoalescePartitionsExec::new(plan))
            } else {
                plan
            };
            if plan.schema().fields() != out.fields() {
                return Err(DataFusionError::Execution(format!(
                    "table {} at version {} no longer has the schema it was planned with",
                    table.url, table.version
                )));
            }
            plan.execute(0, ctx)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}

/// A WebAssembly UDF travels with its module; other functions by name (nothing
/// written), found in the receiver's registry.
pub(crate) fn encode_udf(
    node: &datafusion::logical_expr::ScalarUDF,
    buf: &mut Vec<u8>,
) -> DfResult<()> {
    if let Some(bytes) = crate::udf::scalar::encode_portable(node) {
        buf.extend_from_slice(&bytes);
    }
    Ok(())
}

pub(crate) fn decode_udf(
    name: &str,
    buf: &[u8],
) -> DfResult<Arc<datafusion::logical_expr::ScalarUDF>> {
    if buf.is_empty() {
        return builtin_udf(name).ok_or_else(|| {
            DataFusionError::NotImplemented(format!("function `{name}` is not known here"))
        });
    }
    Ok(Arc::new(crate::udf::scalar::decode_portable(name, buf)?))
}

/// One of DataFusion's built-in scalar functions (all of them, nested ones such as
/// `array_to_string` included, whatever registry the receiving process was given).
pub fn builtin_udf(name: &str) -> Option<Arc<datafusion::logical_expr::ScalarUDF>> {
    static BUILTINS: std::sync::OnceLock<
        std::collections::HashMap<String, Arc<datafusion::logical_expr::ScalarUDF>>,
    > = std::sync::OnceLock::new();
    BUILTINS
        .get_or_init(|| {
            SessionStateBuilder::new()
                .with_default_features()
                .build()
                .scalar_functions()
                .clone()
        })
        .get(name)
        .cloned()
}

/// `plan` as bytes another process can run ([`from_bytes`]): DataFusion's plan
/// protobuf with [`QuiverCodec`].
pub fn to_bytes(plan: Arc<dyn ExecutionPlan>) -> DfResult<bytes::Bytes> {
    datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &QuiverCodec)
}

/// A plan from [`to_bytes`], ready to run in `ctx` (tables it scans are opened when it
/// runs, with this process's credentials).
pub fn from_bytes(bytes: &[u8], ctx: &TaskContext) -> DfResult<Arc<dyn ExecutionPlan>> {
    datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, &QuiverCodec)
}

/// What the codec writes for each node it owns.
#[derive(Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case")]
enum Wire {
    PointInTime {
        spec: PitSpec,
    },
    DeltaFiles {
        table: TableRef,
        /// The table's schema, as an Arrow IPC stream with no batches, hex.
        schema: String,
        groups: Vec<Vec<String>>,
        projection: Option<Vec<usize>>,
    },
}

fn schema_to_hex(schema: &Schema) -> DfResult<String> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
    w.finish()?;
    drop(w);
    Ok(hex::encode(buf))
}

fn schema_from_hex(text: &str) -> DfResult<SchemaRef> {
    let bytes = hex::decode(text)
        .map_err(|e| DataFusionError::Internal(format!("portable scan schema: {e}")))?;
    let (schema, _) = crate::ipc::read_stream(&bytes, "a portable scan's schema")
        .map_err(DataFusionError::Execution)?;
    Ok(schema)
}

/// The physical extension codec of quiver's nodes: [`PointInTimeExec`] and
/// [`DeltaFilesExec`]. Give it to both sides of a plan's journey (a distributed
/// engine's scheduler and executors).
#[derive(Debug, Default)]
pub struct QuiverCodec;

impl PhysicalExtensionCodec for QuiverCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wire: Wire = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("quiver plan node: {e}")))?;
        Ok(match wire {
            Wire::PointInTime { spec } => {
                let [entity, source] = inputs else {
                    return Err(DataFusionError::Internal(format!(
                        "PointInTimeExec takes 2 inputs, not {}",
                        inputs.len()
                    )));
                };
                Arc::new(PointInTimeExec::try_new(
                    entity.clone(),
                    source.clone(),
                    spec,
                )?)
            }
            Wire::DeltaFiles {
                table,
                schema,
                groups,
                projection,
            } => Arc::new(DeltaFilesExec::try_new(
                table,
                schema_from_hex(&schema)?,
                groups,
                projection,
            )?),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let wire = if let Some(pit) = node.downcast_ref::<PointInTimeExec>() {
            Wire::PointInTime {
                spec: pit.spec().clone(),
            }
        } else if let Some(scan) = node.downcast_ref::<DeltaFilesExec>() {
            Wire::DeltaFiles {
                table: scan.table.clone(),
                schema: schema_to_hex(&scan.table_schema)?,
                groups: vec![scan.files.clone()],
                projection: scan.projection.clone(),
            }
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot travel to another process (quiver plans portable only with portable scans)",
                node.name()
            )));
        };
        serde_json::to_writer(buf, &wire)
            .map_err(|e| DataFusionError::Internal(format!("quiver plan node: {e}")))
    }

    fn try_encode_udf(
        &self,
        node: &datafusion::logical_expr::ScalarUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        encode_udf(node, buf)
    }

    fn try_decode_udf(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<datafusion::logical_expr::ScalarUDF>> {
        decode_udf(name, buf)
    }
}

/// What the logical codec writes for each table it carries.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TableWire {
    Delta {
        table: TableRef,
        /// Arrow IPC stream with no batches, hex.
        schema: String,
        files: Vec<String>,
    },
    /// An in-memory table (the entity rows of a training set): Arrow IPC, hex, one
    /// stream per partition.
    Memory { partitions: Vec<String> },
}

fn batches_to_hex(schema: &SchemaRef, batches: &[arrow::array::RecordBatch]) -> DfResult<String> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(hex::encode(buf))
}

fn batches_from_hex(text: &str) -> DfResult<Vec<arrow::array::RecordBatch>> {
    let bytes = hex::decode(text)
        .map_err(|e| DataFusionError::Internal(format!("portable memory table: {e}")))?;
    // Checked before arrow decodes anything (compressed buffers declare sizes the
    // decoder would allocate): see crate::ipc.
    let (_, batches) = crate::ipc::read_stream(&bytes, "an in-memory table of a plan")
        .map_err(DataFusionError::Execution)?;
    Ok(batches)
}

/// The logical extension codec of quiver's plans: the point-in-time join node, the
/// portable Delta tables, in-memory entity tables and WebAssembly UDFs. What a
/// distributed engine's client sends its scheduler (Ballista plans there).
#[derive(Debug, Default)]
pub struct QuiverLogicalCodec;

impl datafusion_proto::logical_plan::LogicalExtensionCodec for QuiverLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[datafusion::logical_expr::LogicalPlan],
        _ctx: &TaskContext,
    ) -> DfResult<datafusion::logical_expr::Extension> {
        let wire: Wire = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("quiver plan node: {e}")))?;
        let Wire::PointInTime { spec } = wire else {
            return Err(DataFusionError::Internal(
                "not a logical quiver node".into(),
            ));
        };
        let [entity, source] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "PointInTimeJoin takes 2 inputs, not {}",
                inputs.len()
            )));
        };
        Ok(datafusion::logical_expr::Extension {
            node: Arc::new(super::PointInTimeNode::try_new(
                entity.clone(),
                source.clone(),
                spec,
            )?),
        })
    }

    fn try_encode(
        &self,
        node: &datafusion::logical_expr::Extension,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        let Some(pit) = node.node.as_any().downcast_ref::<super::PointInTimeNode>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot travel to another process",
                node.node.name()
            )));
        };
        serde_json::to_writer(
            buf,
            &Wire::PointInTime {
                spec: pit.spec().clone(),
            },
        )
        .map_err(|e| DataFusionError::Internal(format!("quiver plan node: {e}")))
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        _table_ref: &datafusion::common::TableReference,
        schema: SchemaRef,
        _ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let wire: TableWire = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("quiver table: {e}")))?;
        Ok(match wire {
            TableWire::Delta {
                table,
                schema,
                files,
            } => Arc::new(PortableDeltaTable {
                table,
                schema: schema_from_hex(&schema)?,
                files,
            }),
            TableWire::Memory { partitions } => {
                let parts = partitions
                    .iter()
                    .map(|p| batches_from_hex(p))
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(datafusion::datasource::MemTable::try_new(schema, parts)?)
            }
        })
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &datafusion::common::TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        let wire = if let Some(t) = node.downcast_ref::<PortableDeltaTable>() {
            TableWire::Delta {
                table: t.table.clone(),
                schema: schema_to_hex(&t.schema)?,
                files: t.files.clone(),
            }
        } else if let Some(m) = node.downcast_ref::<datafusion::datasource::MemTable>() {
            let schema = m.schema();
            let mut partitions = Vec::new();
            for p in &m.batches {
                let batches = p.try_read().map_err(|_| {
                    DataFusionError::Internal("an in-memory table is being written".into())
                })?;
                partitions.push(batches_to_hex(&schema, &batches)?);
            }
            TableWire::Memory { partitions }
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "table `{table_ref}` cannot travel to another process (plan with portable scans)"
            )));
        };
        serde_json::to_writer(buf, &wire)
            .map_err(|e| DataFusionError::Internal(format!("quiver table: {e}")))
    }

    fn try_encode_udf(
        &self,
        node: &datafusion::logical_expr::ScalarUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        encode_udf(node, buf)
    }

    fn try_decode_udf(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<datafusion::logical_expr::ScalarUDF>> {
        decode_udf(name, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_proto::logical_plan::LogicalExtensionCodec;

    #[test]
    fn a_plans_compressed_batch_declaring_2_pow_62_bytes_is_a_clean_error() {
        let wire = serde_json::to_vec(&TableWire::Memory {
            partitions: vec![hex::encode(crate::ipc::tests::lz4_bomb())],
        })
        .unwrap();
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "x",
            arrow::datatypes::DataType::Int64,
            true,
        )]));
        let ctx = datafusion::prelude::SessionContext::new();
        let e = QuiverLogicalCodec
            .try_decode_table_provider(&wire, &"t".into(), schema, &ctx.task_ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("compressed IPC"), "{e}");
    }
}
