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
