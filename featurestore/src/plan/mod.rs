//! Feature views compiled to DataFusion plans.
//!
//! ```text
//!  entity table (keys, event_timestamp) ─┐
//!                                        ├─► PointInTimeJoin(view 1) ─┐
//!  Delta scan / SQL over Delta (view 1) ─┘                            ├─► PointInTimeJoin(view 2) ─► ...
//!                         Delta scan / SQL over Delta (view 2) ───────┘
//! ```
//!
//! Each view becomes a [`PointInTimeNode`] (a DataFusion logical extension node) over
//! the entity plan and the view's source plan: a projected Delta scan for aggregate
//! and column views, the view's SQL for SQL views. The node is planned into
//! [`PointInTimeExec`]; see [`kernel`] for the semantics.

mod asof;
mod exec;
pub(crate) mod kernel;
mod keys;
mod node;
pub mod portable;
mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::{Column, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::{SQLOptions, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;
use serde::Serialize;

pub use exec::{PointInTimeExec, ScanProgress};
pub use node::{
    PointInTimeNode, check_received_plan, received_plans_session, session, session_with_config,
};
pub(crate) use spec::column_list;
pub use spec::{AggSpec, PitMode, PitSpec, aggregate_type};

use crate::definition::ViewDefinition;
use crate::delta::{self, OpenTable};
use crate::spec::{Entity, FeatureView, ViewBody};
use crate::{Error, Result};

/// The type every entity time column is cast to.
pub fn entity_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A column reference that takes the name literally (no `table.column` parsing).
pub(crate) fn ident(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The point-in-time join computing `features` of `view` (names as the view declares
/// them; SQL views: output columns), output as `view__feature` when `full_names`.
pub(crate) fn pit_spec(
    view: &FeatureView,
    entity: &Entity,
    source_ts: &str,
    source_created: Option<String>,
    features: &[String],
    full_names: bool,
    entity_ts: &str,
) -> PitSpec {
    let name = &view.name.value;
    let out = |f: &str| {
        if full_names {
            format!("{name}__{f}")
        } else {
            f.to_owned()
        }
    };
    let wanted = |f: &str| features.iter().any(|x| x == f);
    let mode = match &view.body {
        ViewBody::Columns(cols) => PitMode::AsOf(
            cols.iter()
                .filter(|c| wanted(&c.name.value))
                .map(|c| (out(&c.name.value), c.column.value.clone()))
                .collect(),
        ),
        ViewBody::Aggregates(aggs) => PitMode::Aggregate(
            aggs.iter()
                .filter(|a| wanted(&a.name.value))
                .map(|a| AggSpec {
                    output: out(&a.name.value),
                    function: a.function,
                    column: a.column.as_ref().map(|c| c.value.clone()),
                    window_us: a.window.as_ref().map(|w| w.value.as_micros()),
                })
                .collect(),
        ),
        ViewBody::Sql(_) => PitMode::AsOf(features.iter().map(|f| (out(f), f.clone())).collect()),
    };
    // Ties are broken by every column of the view, whatever is requested (callers with
    // a subset of a SQL view's features set the full list; see ViewDefinition::pit_spec).
    let tie_columns = match &view.body {
        ViewBody::Columns(cols) => cols.iter().map(|c| c.column.value.clone()).collect(),
        ViewBody::Sql(_) => features.to_vec(),
        ViewBody::Aggregates(_) => Vec::new(),
    };
    PitSpec {
        view: name.clone(),
        keys: entity.join_keys.iter().map(|k| k.value.clone()).collect(),
        entity_ts: entity_ts.to_owned(),
        source_ts: source_ts.to_owned(),
        source_created,
        ttl_us: view.ttl.as_ref().map(|t| t.value.as_micros()),
        mode,
        tie_columns,
        fallback_zero: view.fallback == crate::spec::Fallback::Zero,
    }
}

/// Output columns of a SQL view that are features: all but keys and the event time.
pub(crate) fn sql_feature_columns(schema: &Schema, keys: &[String], ts: &str) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !keys.contains(n) && n != ts)
        .collect()
}

/// Plan one SQL query: a single SELECT; no DDL, DML or other statements.
pub(crate) async fn sql_frame(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<DataFrame> {
    let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
    let statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
        .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
    if !is_single_query(&statements) {
        return Err(datafusion::error::DataFusionError::Plan(
            "a view's SQL must be exactly one SELECT query".into(),
        ));
    }
    let opts = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, opts).await
}

/// A Delta table read by a plan, for lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TableRead {
    /// Source name.
    pub source: String,
    /// Table location.
    pub location: String,
    /// Delta version read.
    pub version: i64,
}

/// Builds the plans of one request in one session, opening each Delta table once so
/// that every view of the request reads the same table version.
pub struct Compiler {
    ctx: SessionContext,
    root: std::path::PathBuf,
    tables: HashMap<String, OpenTable>,
    reads: Vec<TableRead>,
    udfs: Option<crate::udf::UdfRuntime>,
    scope: SourceScope,
    portable: bool,
}

/// What a plan reads of its sources: the Delta version of each (by source name; the
/// newest when absent) and, to replay one entity (`explain`), only that entity's rows:
/// each source that has the key columns is filtered to `key = value` (values cast to
/// the column's type) before a view's SQL or join reads it. A view's value for an
/// entity must then depend only on that entity's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceScope {
    /// Delta version by source name.
    pub versions: std::collections::BTreeMap<String, i64>,
    /// Join keys and values of the one entity read (empty: every row).
    pub only_key: Vec<(String, String)>,
}

impl Compiler {
    /// A compiler resolving relative table paths against `root`.
    pub fn new(ctx: SessionContext, root: impl Into<std::path::PathBuf>) -> Self {
        Self {
            ctx,
            root: root.into(),
            tables: HashMap::new(),
            reads: Vec::new(),
            udfs: None,
            scope: SourceScope::default(),
            portable: false,
        }
    }

    /// Scan sources with [`portable::DeltaFilesExec`] instead of delta-rs's own scan,
    /// so the physical plan can be sent to another process ([`portable::QuiverCodec`]).
    pub fn with_portable_scans(mut self, yes: bool) -> Self {
        self.portable = yes;
        self
    }

    /// Read the sources as `scope` says (default: every row at the newest version).
    pub fn with_scope(mut self, scope: SourceScope) -> Self {
        self.scope = scope;
        self
    }

    /// Run the UDF modules views call with `runtime` (without one, a view that calls
    /// UDFs cannot be planned).
    pub fn with_udfs(mut self, runtime: crate::udf::UdfRuntime) -> Self {
        self.udfs = Some(runtime);
        self
    }

    /// The session plans run in.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Tables read so far.
    pub fn reads(&self) -> &[TableRead] {
        &self.reads
    }

    /// A session sharing this one's runtime (object stores) with an empty catalog.
    fn scratch(&self) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(self.ctx.state().config().clone())
            .with_runtime_env(self.ctx.runtime_env())
            .with_default_features()
            .build();
        SessionContext::new_with_state(state)
    }

    async fn open(&mut self, source: &crate::spec::Source) -> Result<OpenTable> {
        let location = delta::Location::of_source(&self.root, source)?;
        let url = &location.url;
        if let Some(t) = self.tables.get(url.as_str()) {
            return Ok(t.clone());
        }
        let table = delta::open(
            &location,
            self.scope.versions.get(&source.name.value).copied(),
        )
        .await?;
        self.reads.push(TableRead {
            source: source.name.value.clone(),
            location: source.delta.value.clone(),
            version: table.version,
        });
        self.tables.insert(url.to_string(), table.clone());
        Ok(table)
    }

    /// The rows `def`'s point-in-time join reads: keys, event time, created time and
    /// value columns, with event time `<= max_t` when given.
    pub async fn source_plan(
        &mut self,
        def: &ViewDefinition,
        spec: &PitSpec,
        max_t: Option<i64>,
    ) -> Result<LogicalPlan> {
        let scratch = self.scratch();
        for s in &def.sources {
            let table = self.open(s).await?;
            if self.portable {
                let options = s
                    .storage_options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect();
                scratch.register_table(
                    s.name.value.as_str(),
                    Arc::new(portable::PortableDeltaTable::new(
                        &table,
                        &s.name.value,
                        options,
                    )?),
                )?;
            } else {
                // The scratch session shares the runtime, so the table's object store
                // is registered where the final plan runs too.
                table.register(&scratch, &s.name.value).await?;
            }
            let only = &self.scope.only_key;
            if !only.is_empty()
                && only
                    .iter()
                    .all(|(k, _)| table.schema.field_with_name(k).is_ok())
            {
                let name = s.name.value.as_str();
                let mut df = scratch.table(name).await?;
                for (k, v) in only {
                    let dt = table.schema.field_with_name(k)?.data_type().clone();
                    df = df.filter(ident(k).eq(cast(lit(v.clone()), dt)))?;
                }
                scratch.deregister_table(name)?;
                scratch.register_table(name, df.into_view())?;
            }
        }
        if !def.udfs.is_empty() {
            let runtime = self.udfs.as_ref().ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "view `{}` calls WebAssembly UDFs, and this plan has no UDF runtime",
                    def.name()
                ))
            })?;
            runtime.register(&scratch, &def.udfs)?;
        }
        let df = match &def.view.body {
            ViewBody::Sql(body) => sql_frame(&scratch, &body.sql.value).await?,
            _ => scratch.table(def.sources[0].name.value.as_str()).await?,
        };
        let mut cols: Vec<String> = spec.keys.clone();
        cols.push(spec.source_ts.clone());
        cols.extend(spec.source_created.clone());
        match &spec.mode {
            PitMode::AsOf(c) => cols.extend(c.iter().map(|(_, s)| s.clone())),
            PitMode::Aggregate(a) => cols.extend(a.iter().filter_map(|a| a.column.clone())),
        }
        cols.extend(spec.tie_columns.iter().cloned());
        let mut seen = Vec::new();
        cols.retain(|c| {
            let new = !seen.contains(c);
            seen.push(c.clone());
            new
        });
        let mut df = df.select(cols.iter().map(|c| ident(c)).collect::<Vec<_>>())?;
        if let Some(max_t) = max_t {
            let ts_type = df
                .schema()
                .field_with_unqualified_name(&spec.source_ts)?
                .data_type()
                .clone();
            let bound = cast(
                lit(ScalarValue::TimestampMicrosecond(
                    Some(max_t),
                    Some("UTC".into()),
                )),
                ts_type.clone(),
            );
            if matches!(ts_type, DataType::Timestamp(..)) {
                df = df.filter(ident(&spec.source_ts).lt_eq(bound))?;
            }
        }
        Ok(df.into_unoptimized_plan())
    }

    /// `entity` joined with `def` as `spec` says; entity keys are cast to the source's
    /// key types where they differ.
    pub async fn join(
        &mut self,
        entity: LogicalPlan,
        def: &ViewDefinition,
        spec: PitSpec,
        max_t: Option<i64>,
    ) -> Result<LogicalPlan> {
        let source = self.source_plan(def, &spec, max_t).await?;
        let entity = cast_keys(entity, &spec.keys, source.schema().as_arrow())?;
        Ok(PointInTimeNode::try_new(entity, source, spec)?.into_plan())
    }
}

/// Cast the key columns of `plan` to the types they have in `target`.
fn cast_keys(plan: LogicalPlan, keys: &[String], target: &Schema) -> Result<LogicalPlan> {
    let schema = plan.schema().clone();
    let mut changed = false;
    let mut exprs = Vec::new();
    for (q, f) in schema.iter() {
        let column = Expr::Column(Column::new(q.cloned(), f.name()));
        if keys.contains(f.name()) {
            let want = target.field_with_name(f.name()).map_err(|_| {
                Error::InvalidRequest(format!("the source has no join key column `{}`", f.name()))
            })?;
            if want.data_type() != f.data_type() {
                changed = true;
                exprs.push(cast(column, want.data_type().clone()).alias(f.name()));
                continue;
            }
        }
        exprs.push(column);
    }
    if !changed {
        return Ok(plan);
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// `SELECT DISTINCT keys, <t> AS event_timestamp FROM <source rows with ts <= t>`: the
/// entity table for "values as of `t`" of every key the view has seen.
pub(crate) fn keys_as_of(
    source: LogicalPlan,
    keys: &[String],
    ts: &str,
    t: i64,
) -> Result<LogicalPlan> {
    let ts_type = source
        .schema()
        .field_with_unqualified_name(ts)?
        .data_type()
        .clone();
    let bound = cast(
        lit(ScalarValue::TimestampMicrosecond(
            Some(t),
            Some("UTC".into()),
        )),
        ts_type,
    );
    let plan = LogicalPlanBuilder::from(source)
        .filter(ident(ts).lt_eq(bound))?
        .project(keys.iter().map(|k| ident(k)))?
        .distinct()?
        .project(
            keys.iter()
                .map(|k| ident(k))
                .chain([lit(ScalarValue::TimestampMicrosecond(
                    Some(t),
                    Some("UTC".into()),
                ))
                .alias("event_timestamp")]),
        )?
        .build()?;
    Ok(plan)
}

/// True when parsed SQL is exactly one query statement (a view's body may be nothing
/// else).
fn is_single_query(statements: &[Statement]) -> bool {
    statements.len() == 1 && matches!(statements[0], Statement::Query(_))
}

impl ViewDefinition {
    /// The point-in-time join computing `subset` of the features (all when `None`).
    pub fn pit_spec(
        &self,
        subset: Option<&[String]>,
        full_names: bool,
        entity_ts: &str,
    ) -> PitSpec {
        let all: Vec<String> = self.features.iter().map(|f| f.name.clone()).collect();
        let features = subset
            .map(<[String]>::to_vec)
            .unwrap_or_else(|| all.clone());
        let mut spec = pit_spec(
            &self.view,
            &self.entity,
            self.event_time_column(),
            self.created_column(),
            &features,
            full_names,
            entity_ts,
        );
        if matches!(self.view.body, ViewBody::Sql(_)) {
            // A SQL view's features are its output columns: all of them order ties.
            spec.tie_columns = all;
        }
        spec
    }
}
