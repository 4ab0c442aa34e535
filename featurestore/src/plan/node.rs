//! The logical plan node of a point-in-time join and its physical planner.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::exec::PointInTimeExec;
use super::spec::PitSpec;

/// `PointInTimeJoin`: for each row of the entity input, the features of `spec` as of
/// the row's time, computed from the source input. Output: the entity columns, then
/// the features, the view's status and value-time columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PointInTimeNode {
    entity: LogicalPlan,
    source: LogicalPlan,
    spec: PitSpec,
    schema: DFSchemaRef,
}

impl PartialOrd for PointInTimeNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.spec.partial_cmp(&other.spec) {
            Some(Ordering::Equal) if self != other => None,
            o => o,
        }
    }
}

impl PointInTimeNode {
    /// Join `entity` with `source` as `spec` says.
    pub fn try_new(entity: LogicalPlan, source: LogicalPlan, spec: PitSpec) -> Result<Self> {
        let source_schema = source.schema().as_arrow().clone();
        let added = spec.added_fields(&source_schema)?;
        let mut fields: Vec<_> = entity
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect();
        for f in added {
            if entity.schema().has_column_with_unqualified_name(f.name()) {
                return datafusion::common::plan_err!(
                    "the entity table already has a column `{}`; rename it or ask for full feature names",
                    f.name()
                );
            }
            fields.push((None, Arc::new(f)));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        Ok(Self {
            entity,
            source,
            spec,
            schema,
        })
    }

    /// Wrap as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// What it computes.
    pub fn spec(&self) -> &PitSpec {
        &self.spec
    }
}

impl UserDefinedLogicalNodeCore for PointInTimeNode {
    fn name(&self) -> &str {
        "PointInTimeJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.entity, &self.source]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PointInTimeJoin: view={} keys=[{}] t={} event_time={}",
            self.spec.view,
            self.spec.keys.join(", "),
            self.spec.entity_ts,
            self.spec.source_ts
        )?;
        if let Some(ttl) = self.spec.ttl_us {
            write!(
                f,
                " ttl={}",
                crate::spec::Duration::from_micros(ttl)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            )?;
        }
        self.spec.fmt_mode(f)
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if !exprs.is_empty() || inputs.len() != 2 {
            return internal_err!("PointInTimeJoin takes no expressions and two inputs");
        }
        let source = inputs.pop().expect("two inputs");
        let entity = inputs.pop().expect("two inputs");
        Self::try_new(entity, source, self.spec.clone())
    }
}

/// Plans [`PointInTimeNode`] into [`PointInTimeExec`].
#[derive(Debug, Default)]
struct PointInTimePlanner;

#[async_trait]
impl ExtensionPlanner for PointInTimePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<PointInTimeNode>() else {
            return Ok(None);
        };
        let [entity, source] = physical_inputs else {
            return internal_err!("PointInTimeJoin needs two physical inputs");
        };
        Ok(Some(Arc::new(PointInTimeExec::try_new(
            entity.clone(),
            source.clone(),
            node.spec.clone(),
        )?)))
    }
}

/// The default planner plus [`PointInTimePlanner`].
#[derive(Debug, Default)]
struct QuiverQueryPlanner;

#[async_trait]
impl QueryPlanner for QuiverQueryPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PointInTimePlanner)])
            .create_physical_plan(plan, state)
            .await
    }
}

/// Plans another process sent to be run here (a Ballista scheduler's clients): only
/// quiver's own tables are read, and nothing is written or declared.
#[derive(Debug)]
struct ReceivedPlanPlanner;

#[async_trait]
impl QueryPlanner for ReceivedPlanPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        check_received_plan(plan)?;
        QuiverQueryPlanner.create_physical_plan(plan, state).await
    }
}

/// Refuse a logical plan another process sent unless it reads only quiver's portable
/// Delta tables and in-memory entity tables, through DataFusion's own operators and
/// quiver's point-in-time join: no listing tables (any path or URL a client names),
/// no writes (`COPY`, `INSERT`), no DDL or statements, no other extension nodes. The
/// error names what was refused.
pub fn check_received_plan(plan: &LogicalPlan) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut refused: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        let why = match node {
            LogicalPlan::TableScan(scan) => {
                let provider = datafusion::datasource::source_as_provider(&scan.source)?;
                let ours = provider
                    .downcast_ref::<super::portable::PortableDeltaTable>()
                    .is_some()
                    || provider
                        .downcast_ref::<datafusion::datasource::MemTable>()
                        .is_some();
                (!ours).then(|| {
                    format!(
                        "table `{}` is not one of quiver's portable tables (a listing table or another provider a client declared)",
                        scan.table_name
                    )
                })
            }
            LogicalPlan::Extension(e) => (e.node.as_any().downcast_ref::<PointInTimeNode>().is_none())
                .then(|| format!("the extension node `{}`", e.node.name())),
            LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::DescribeTable(_) => {
                Some(format!("a `{}` plan", node.display()))
            }
            _ => None,
        };
        if let Some(w) = why {
            refused = Some(w);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match refused {
        Some(w) => {
            datafusion::common::plan_err!("this engine runs quiver's plans only: refusing {w}")
        }
        None => Ok(()),
    }
}

/// [`session_with_config`] for a process that runs plans others send (a Ballista
/// scheduler): every plan is checked by [`check_received_plan`] before it is planned.
pub fn received_plans_session(config: SessionConfig) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(ReceivedPlanPlanner))
        .build();
    SessionContext::new_with_state(state)
}

/// A DataFusion session that can plan point-in-time joins.
///
/// ```
/// let ctx = quiver_featurestore::plan::session();
/// assert!(ctx.state().config().target_partitions() >= 1);
/// ```
pub fn session() -> SessionContext {
    session_with_config(SessionConfig::new())
}

/// [`session`] with a given configuration.
pub fn session_with_config(config: SessionConfig) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(QuiverQueryPlanner))
        .build();
    SessionContext::new_with_state(state)
}

#[cfg(test)]
mod received {
    use super::*;

    #[tokio::test]
    async fn received_plans_read_only_quivers_tables() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("other_jobs_shuffle.csv");
        std::fs::write(&csv, "a,b\n1,2\n").unwrap();
        let ctx = received_plans_session(SessionConfig::new());
        // A client declares a table over any path: reading it is refused.
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
            csv.display()
        ))
        .await
        .unwrap();
        let e = ctx
            .sql("SELECT * FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("table `t` is not one of quiver's portable tables"),
            "{e}"
        );
        // Writing files is refused too.
        let out = dir.path().join("out");
        let e = match ctx
            .sql(&format!(
                "COPY (SELECT 1) TO '{}' STORED AS CSV",
                out.display()
            ))
            .await
        {
            Ok(df) => df.collect().await.unwrap_err(),
            Err(e) => e,
        };
        assert!(e.to_string().contains("refusing"), "{e}");
        assert!(!out.exists());
        // An in-memory table (a training set's entity rows) is read.
        let batch = arrow::array::RecordBatch::try_from_iter([(
            "x",
            Arc::new(arrow::array::Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        ctx.register_batch("m", batch).unwrap();
        let rows = ctx
            .sql("SELECT * FROM m")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows[0].num_rows(), 2);
    }
}
