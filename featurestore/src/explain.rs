//! Replaying one entity's feature value at one time, step by step, with every version
//! pinned: the engine behind `quiver-debug trace` and the server's `explain` action.
//!
//! The replay is the real training-set plan for a one-row entity table (the same
//! compiler, point-in-time operator and UDFs), with three changes that make it a
//! trace: the sources are read at pinned Delta versions and only for the entity's key,
//! every physical plan node is wrapped in a pass-through tap that keeps the entity's
//! rows it emits, and UDFs run on fuel with a recorder. The result is compared with the
//! online store's value for a verdict.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use arrow::util::display::array_value_to_string;
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream, displayable,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::cli::format_time;
use crate::plan::TableRead;
use crate::spec::ViewBody;
use crate::udf::{Budget, CallRecord};
use crate::{Error, FeatureStore, Result};

/// The trace format's name and version, written in every `trace.json`.
pub const TRACE_FORMAT: &str = "quiver-trace";
/// See [`TRACE_FORMAT`]; bumped when a field changes meaning or disappears.
pub const TRACE_VERSION: u32 = 1;

/// What to replay.
///
/// ```
/// let req = quiver_featurestore::explain::ExplainRequest::new("user_txn_stats", [("user_id", "42")], 1_704_067_200_000_000);
/// assert_eq!(req.max_rows_per_step, 1_000);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExplainRequest {
    /// The view, `NAME` (current version) or `NAME@VERSION`.
    pub view: String,
    /// The entity's join keys and values, in the entity's key order.
    pub entity: Vec<(String, String)>,
    /// The as-of time, UTC microseconds.
    pub at_us: i64,
    /// Delta versions to read, by source name (default: the newest).
    pub table_versions: BTreeMap<String, i64>,
    /// Most rows kept per step (more are counted, not kept).
    pub max_rows_per_step: usize,
    /// Fuel of each UDF call.
    pub fuel: u64,
    /// How the repo is named in the reproducing command.
    pub repo_display: String,
    /// Which steps the trace keeps ([`TraceScope::ViewOutput`] unless set).
    pub scope: TraceScope,
}

/// Which steps a trace keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceScope {
    /// Only what the view itself exposes: the windows and TTL decision (counts), the
    /// value (the view's own output rows for the entity) and the online value. Source
    /// rows, plan stages and UDF inputs and outputs are withheld, and so are the
    /// physical plan text and the tables' locations: a pooled source holds other
    /// tenants' rows and columns the view does not expose, and old Delta versions
    /// hold rows since deleted. The default, and what a server gives every tenant
    /// that is not an admin.
    #[default]
    ViewOutput,
    /// Every step, raw source rows included: for whoever holds the repo and its
    /// storage anyway (the local `quiver-debug trace --repo`, a server's admins).
    All,
}

impl ExplainRequest {
    /// Replay `view` for `entity` as of `at_us`.
    pub fn new<K: Into<String>, V: Into<String>>(
        view: impl Into<String>,
        entity: impl IntoIterator<Item = (K, V)>,
        at_us: i64,
    ) -> Self {
        Self {
            view: view.into(),
            entity: entity
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            at_us,
            table_versions: BTreeMap::new(),
            max_rows_per_step: 1_000,
            fuel: crate::udf::HostConfig::default().fuel,
            repo_display: ".".into(),
            scope: TraceScope::ViewOutput,
        }
    }

    /// Keep every step, raw source rows included ([`TraceScope::All`]).
    pub fn with_all_steps(mut self) -> Self {
        self.scope = TraceScope::All;
        self
    }
}

/// How the online value compares with the replayed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Same status and values.
    Match,
    /// Both have a value and they differ.
    ValueDiff,
    /// The replay has a value; the online store has none.
    Missing,
    /// The online store was materialized from an older view version, or before rows of
    /// this entity that the replay reads.
    Stale,
    /// One side is past the view's TTL and the other is not.
    ExpiredByTtl,
    /// The online value comes from a row newer than the as-of time.
    CreatedAfterAsOf,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// What a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Source rows of the entity, at the pinned version.
    Source,
    /// One physical plan node's output rows for the entity.
    Stage,
    /// One UDF call: input, output, fuel, logs.
    UdfCall,
    /// Window and TTL decisions.
    Decision,
    /// The replayed value.
    Value,
    /// The online store's value beside it.
    Online,
}

/// One step of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Position, from 0.
    pub index: usize,
    /// What it is.
    pub kind: StepKind,
    /// One line.
    pub title: String,
    /// Details, by kind (plan node, fuel, logs, windows, ...).
    pub detail: serde_json::Value,
    /// Rows it saw for the entity.
    pub rows: usize,
    /// Rows kept (at most `max_rows_per_step`).
    pub kept: usize,
    /// Its rows as an Arrow IPC file in the trace folder, when it has rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// UDF calls: the output, as a second file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    /// The rows (not in `trace.json`; written to `file`).
    #[serde(skip)]
    pub batch: Option<RecordBatch>,
    /// UDF calls: the output rows (written to `output_file`).
    #[serde(skip)]
    pub output: Option<RecordBatch>,
}

/// A value with its status and time, as one side of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueSide {
    /// `PRESENT`, `EXPIRED`, `NOT_FOUND` or `FALLBACK`.
    pub status: String,
    /// Event time of the row the value comes from (RFC 3339), if any.
    pub event_time: Option<String>,
    /// Feature values by name (JSON numbers, strings, booleans or null).
    pub values: BTreeMap<String, serde_json::Value>,
}

/// The online side, with what the store was materialized from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineSide {
    /// The value served at the as-of time.
    pub value: Option<ValueSide>,
    /// View version the store holds.
    pub view_version: Option<u64>,
    /// Materialized up to (RFC 3339).
    pub until: Option<String>,
    /// When materialization ran.
    pub materialized_at: Option<String>,
    /// Why there is no value, when there is none.
    pub note: Option<String>,
}

/// A replay of one entity's view at one time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    /// [`TRACE_FORMAT`].
    pub format: String,
    /// [`TRACE_VERSION`].
    pub version: u32,
    /// View name.
    pub view: String,
    /// Its version replayed.
    pub view_version: u64,
    /// Its definition hash (covers the entity, sources, SQL and UDF module hashes).
    pub view_hash: String,
    /// `columns`, `aggregates` or `sql`.
    pub view_kind: String,
    /// Time to live, as written (`45d`).
    pub ttl: Option<String>,
    /// The entity's key values.
    pub entity: Vec<(String, String)>,
    /// As-of time (RFC 3339).
    pub at: String,
    /// As-of time, UTC microseconds.
    pub at_us: i64,
    /// Delta tables read, at their versions.
    pub tables: Vec<TableRead>,
    /// UDF modules, `path@sha256`.
    pub udfs: Vec<String>,
    /// The view's SQL, for SQL views.
    pub sql: Option<String>,
    /// The physical plan replayed.
    pub plan: String,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The replayed value.
    pub computed: ValueSide,
    /// The online store's.
    pub online: OnlineSide,
    /// The comparison.
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
    /// A command that replays exactly this trace: built by [`Trace::reproduce`] from
    /// the structured fields above and [`Trace::origin`], every argument shell-quoted.
    /// Readers rebuild it rather than trust the text (a trace folder or a server's
    /// answer could carry any string here).
    pub command: String,
    /// Where the trace was replayed, as the reproducing command names it:
    /// `["--repo", PATH]` or `["--server", URL]`.
    #[serde(default)]
    pub origin: Vec<String>,
    /// Wall time of the replay, milliseconds.
    pub elapsed_ms: f64,
}

/// `s` as one shell word: unchanged when it holds only characters no POSIX shell
/// treats specially, else in single quotes (each `'` written `'\''`).
///
/// ```
/// use quiver_featurestore::explain::shell_quote;
/// assert_eq!(shell_quote("user_id=42"), "user_id=42");
/// assert_eq!(shell_quote("a b;rm -rf ~"), "'a b;rm -rf ~'");
/// assert_eq!(shell_quote("it's"), "'it'\\''s'");
/// assert_eq!(shell_quote(""), "''");
/// ```
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@,+%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Trace {
    /// The command that replays exactly this trace, from its structured fields: view
    /// and version, as-of time, entity keys and every table version, after
    /// [`Trace::origin`] (`--repo .` when it is empty). Every argument is
    /// shell-quoted, so whatever the fields hold, pasting the command runs
    /// `quiver-debug trace` with exactly these arguments and nothing else.
    pub fn reproduce(&self) -> String {
        let mut args: Vec<String> = vec!["quiver-debug".into(), "trace".into()];
        match self.origin.as_slice() {
            [flag, value] if flag == "--repo" || flag == "--server" => {
                args.push(flag.clone());
                args.push(value.clone());
            }
            _ => args.extend(["--repo".to_string(), ".".to_string()]),
        }
        args.push(format!("{}@{}", self.view, self.view_version));
        args.push("--at".into());
        args.push(self.at.clone());
        for (k, v) in &self.entity {
            args.push("--entity".into());
            args.push(format!("{k}={v}"));
        }
        for t in &self.tables {
            args.push("--table-version".into());
            args.push(format!("{}={}", t.source, t.version));
        }
        args.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Keep only the steps that show what the view exposes ([`TraceScope::ViewOutput`]):
    /// source, plan-stage and UDF-call steps go (their rows with them), as do the plan
    /// text and table locations; one note says what was withheld.
    pub fn withhold_raw_steps(&mut self) {
        let before = self.steps.len();
        self.steps.retain(|s| {
            matches!(
                s.kind,
                StepKind::Decision | StepKind::Value | StepKind::Online
            )
        });
        for (i, s) in self.steps.iter_mut().enumerate() {
            s.index = i;
        }
        self.plan = format!(
            "(withheld: {} source, plan-stage and UDF steps; a trace for a tenant shows what the view exposes, its raw steps are for admins)",
            before - self.steps.len()
        );
        for t in &mut self.tables {
            t.location = String::new();
        }
    }

    /// Each step's rows as Arrow IPC files (`steps/NNN.arrow`, and `steps/NNN-out.arrow`
    /// for a UDF call's output), naming them in the steps: what a trace folder holds
    /// beside `trace.json`, and what the `explain` action sends.
    pub fn step_files(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let ipc = |b: &RecordBatch| -> Result<Vec<u8>> {
            let mut buf = Vec::new();
            let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &b.schema())?;
            w.write(b)?;
            w.finish()?;
            drop(w);
            Ok(buf)
        };
        for step in &mut self.steps {
            if let Some(b) = &step.batch {
                let rel = format!("steps/{:03}.arrow", step.index);
                out.push((rel.clone(), ipc(b)?));
                step.file = Some(rel);
            }
            if let Some(b) = &step.output {
                let rel = format!("steps/{:03}-out.arrow", step.index);
                out.push((rel.clone(), ipc(b)?));
                step.output_file = Some(rel);
            }
        }
        Ok(out)
    }
}

fn push(
    steps: &mut Vec<Step>,
    kind: StepKind,
    title: String,
    detail: serde_json::Value,
    batch: Option<RecordBatch>,
    rows: usize,
) {
    let kept = batch.as_ref().map_or(0, RecordBatch::num_rows);
    steps.push(Step {
        index: steps.len(),
        kind,
        title,
        detail,
        rows,
        kept,
        file: None,
        output_file: None,
        batch,
        output: None,
    });
}

/// Rows of `batch` whose key columns equal the entity's values (as text); the batch
/// unchanged when it lacks a key column.
fn entity_rows(batch: &RecordBatch, entity: &[(String, String)]) -> DfResult<RecordBatch> {
    let mut mask: Option<BooleanArray> = None;
    for (k, v) in entity {
        let Some(col) = batch.column_by_name(k) else {
            return Ok(batch.clone());
        };
        let text = cast(col, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let eq = BooleanArray::from_iter(text.iter().map(|t| Some(t == Some(v.as_str()))));
        mask = Some(match mask {
            None => eq,
            Some(m) => arrow::compute::and(&m, &eq)?,
        });
    }
    match mask {
        Some(m) => Ok(filter_record_batch(batch, &m)?),
        None => Ok(batch.clone()),
    }
}

#[derive(Debug, Default)]
struct Tapped {
    rows: usize,
    kept: Vec<RecordBatch>,
    kept_rows: usize,
}

type Taps = Arc<Mutex<BTreeMap<usize, Tapped>>>;

/// A pass-through node: its input's batches, unchanged, with the entity's rows kept.
#[derive(Debug)]
struct TapExec {
    input: Arc<dyn ExecutionPlan>,
    id: usize,
    taps: Taps,
    entity: Arc<Vec<(String, String)>>,
    max_rows: usize,
}

impl DisplayAs for TapExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TapExec: step={}", self.id)
    }
}

impl ExecutionPlan for TapExec {
    fn name(&self) -> &str {
        "TapExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            input: children.pop().expect("one child"),
            id: self.id,
            taps: self.taps.clone(),
            entity: self.entity.clone(),
            max_rows: self.max_rows,
        }))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema: SchemaRef = stream.schema();
        let (taps, id, entity, max_rows) = (
            self.taps.clone(),
            self.id,
            self.entity.clone(),
            self.max_rows,
        );
        let mapped = stream.map(move |b| {
            let b = b?;
            let mine = entity_rows(&b, &entity)?;
            if let Ok(mut t) = taps.lock() {
                let t = t.entry(id).or_default();
                t.rows += mine.num_rows();
                let room = max_rows.saturating_sub(t.kept_rows);
                if room > 0 && mine.num_rows() > 0 {
                    let keep = mine.slice(0, mine.num_rows().min(room));
                    t.kept_rows += keep.num_rows();
                    t.kept.push(keep);
                }
            }
            Ok(b)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, mapped)))
    }
}

/// Wrap every node of `plan` in a tap, leaves first; the node lines by tap id.
fn tap_all(
    plan: Arc<dyn ExecutionPlan>,
    taps: &Taps,
    entity: &Arc<Vec<(String, String)>>,
    max_rows: usize,
    nodes: &mut Vec<String>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let children: Vec<Arc<dyn ExecutionPlan>> = plan
        .children()
        .into_iter()
        .map(|c| tap_all(c.clone(), taps, entity, max_rows, nodes))
        .collect::<DfResult<_>>()?;
    let line = displayable(plan.as_ref()).one_line().to_string();
    #[allow(deprecated)]
    let plan = if children.is_empty() {
        plan
    } else {
        datafusion::physical_plan::with_new_children_if_necessary(plan, children)?
    };
    let id = nodes.len();
    nodes.push(line.trim().to_owned());
    Ok(Arc::new(TapExec {
        input: plan,
        id,
        taps: taps.clone(),
        entity: entity.clone(),
        max_rows,
    }))
}

fn json_value(col: &ArrayRef, row: usize) -> serde_json::Value {
    if col.is_null(row) {
        return serde_json::Value::Null;
    }
    match col.data_type() {
        DataType::Boolean => col.as_boolean().value(row).into(),
        dt if dt.is_integer() => cast(col, &DataType::Int64)
            .map(|c| {
                c.as_primitive::<arrow::datatypes::Int64Type>()
                    .value(row)
                    .into()
            })
            .unwrap_or(serde_json::Value::Null),
        dt if dt.is_floating() || matches!(dt, DataType::Decimal128(..)) => {
            cast(col, &DataType::Float64)
                .ok()
                .and_then(|c| {
                    serde_json::Number::from_f64(c.as_primitive::<Float64Type>().value(row))
                })
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| array_value_to_string(col, row).unwrap_or_default().into())
        }
        _ => array_value_to_string(col, row).unwrap_or_default().into(),
    }
}

fn side(batch: &RecordBatch, view: &str, features: &[String], full: bool) -> ValueSide {
    let col = |name: &str| batch.column_by_name(name);
    let status = col(&format!("{view}{}", crate::spec::STATUS_SUFFIX))
        .filter(|c| !c.is_empty())
        .map(|c| array_value_to_string(c, 0).unwrap_or_default())
        .unwrap_or_else(|| "NOT_FOUND".into());
    let event_time = col(&format!("{view}{}", crate::spec::EVENT_TS_SUFFIX))
        .filter(|c| !c.is_empty() && c.is_valid(0))
        .and_then(|c| cast(c, &DataType::Int64).ok())
        .map(|c| format_time(c.as_primitive::<arrow::datatypes::Int64Type>().value(0)));
    let values = features
        .iter()
        .map(|f| {
            let name = if full {
                format!("{view}__{f}")
            } else {
                f.clone()
            };
            let v = col(&name)
                .filter(|c| !c.is_empty())
                .map(|c| json_value(c, 0))
                .unwrap_or(serde_json::Value::Null);
            (f.clone(), v)
        })
        .collect();
    ValueSide {
        status,
        event_time,
        values,
    }
}

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => a == b,
    }
}

fn parse_us(s: &Option<String>) -> Option<i64> {
    s.as_ref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros())
}

/// Replay `req` against `store`.
pub async fn explain(store: &FeatureStore, req: &ExplainRequest) -> Result<Trace> {
    let started = std::time::Instant::now();
    let (name, version) = match req.view.split_once('@') {
        Some((n, v)) => (
            n.to_owned(),
            Some(v.parse::<u64>().map_err(|_| {
                Error::InvalidRequest(format!("`{}`: a view version is a number", req.view))
            })?),
        ),
        None => (req.view.clone(), None),
    };
    let applied = store.view(&name, version)?;
    let def = &applied.definition;
    let keys = def.keys();
    let given: Vec<&str> = req.entity.iter().map(|(k, _)| k.as_str()).collect();
    if given != keys.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(Error::InvalidRequest(format!(
            "view `{name}` is keyed by {}; give each once, in that order (`--entity {}=...`)",
            keys.join(", "),
            keys.join("=... --entity ")
        )));
    }
    let entity = Arc::new(req.entity.clone());
    let mut steps: Vec<Step> = Vec::new();
    // 1. Source rows of the entity, at the versions read.
    let mut tables = Vec::new();
    let mut source_rows: Vec<(String, RecordBatch)> = Vec::new();
    for s in &def.sources {
        let location = crate::delta::Location::of_source(store.root(), s)?;
        let pinned = req.table_versions.get(&s.name.value).copied();
        let table = crate::delta::open(&location, pinned).await?;
        tables.push(TableRead {
            source: s.name.value.clone(),
            location: s.delta.value.clone(),
            version: table.version,
        });
        let ctx = crate::plan::session();
        table.register(&ctx, "src").await?;
        let mut df = ctx.table("src").await?;
        let has_keys = keys.iter().all(|k| table.schema.field_with_name(k).is_ok());
        if has_keys {
            for (k, v) in entity.iter() {
                let dt = table.schema.field_with_name(k)?.data_type().clone();
                df = df.filter(crate::plan::ident(k).eq(datafusion::logical_expr::cast(
                    datafusion::logical_expr::lit(v.clone()),
                    dt,
                )))?;
            }
        }
        let ts = s.timestamp.value.clone();
        df = df.sort(vec![crate::plan::ident(&ts).sort(true, true)])?;
        let batches = df.collect().await?;
        let all =
            arrow::compute::concat_batches(&Arc::new(table.schema.as_ref().clone()), &batches)?;
        let rows = all.num_rows();
        let after = cast(
            all.column_by_name(&ts).expect("time column"),
            &DataType::Int64,
        )?
        .as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .filter(|t| t.is_some_and(|t| t > req.at_us))
        .count();
        let kept = all.slice(0, rows.min(req.max_rows_per_step));
        push(
            &mut steps,
            StepKind::Source,
            format!(
                "source `{}`: {rows} row(s) of this entity at Delta version {}",
                s.name.value, table.version
            ),
            serde_json::json!({
                "source": s.name.value,
                "location": s.delta.value,
                "delta_version": table.version,
                "time_column": ts,
                "rows_after_as_of": after,
                "filtered_by_key": has_keys,
            }),
            Some(kept),
            rows,
        );
        source_rows.push((ts, all));
    }

    // 2. The training-set plan for one entity row, tapped, UDFs on fuel.
    let recorder: crate::udf::Recorder = Arc::new(Mutex::new(Vec::new()));
    let runtime = store
        .udf_runtime()
        .clone()
        .with_budget(Budget::Fuel(req.fuel))
        .with_recorder(recorder.clone());
    let entity_batch = {
        let mut cols: Vec<(String, ArrayRef)> = entity
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Arc::new(StringArray::from(vec![v.clone()])) as ArrayRef,
                )
            })
            .collect();
        cols.push((
            "event_timestamp".into(),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![req.at_us]).with_timezone("UTC"),
            ),
        ));
        RecordBatch::try_from_iter(cols)?
    };
    let scope = crate::plan::SourceScope {
        versions: tables
            .iter()
            .map(|t| (t.source.clone(), t.version))
            .collect(),
        only_key: req.entity.clone(),
    };
    let prepared = store
        .historical_features()
        .with_entities(vec![entity_batch])
        .with_features(&format!("{name}@{}", applied.version))?
        .with_full_feature_names(true)
        .with_udf_runtime(runtime)
        .with_source_scope(scope)
        .prepare()
        .await?;
    let (physical, task) = prepared.physical_plan().await?;
    let plan_text = displayable(physical.as_ref()).indent(false).to_string();
    let taps: Taps = Arc::new(Mutex::new(BTreeMap::new()));
    let mut nodes = Vec::new();
    let tapped = tap_all(physical, &taps, &entity, req.max_rows_per_step, &mut nodes)?;
    let out = datafusion::physical_plan::collect(tapped, task).await?;
    let result = arrow::compute::concat_batches(&prepared.schema, &out)?;
    let taps = std::mem::take(&mut *taps.lock().expect("taps"));
    for (id, line) in nodes.iter().enumerate() {
        let t = taps.get(&id);
        let batch = t.and_then(|t| {
            t.kept
                .first()
                .map(|f| arrow::compute::concat_batches(&f.schema(), &t.kept))
        });
        let batch = batch.transpose()?;
        let node = line.split(':').next().unwrap_or(line).to_owned();
        push(
            &mut steps,
            StepKind::Stage,
            format!(
                "stage {id}: {node}, {} row(s) of this entity",
                t.map_or(0, |t| t.rows)
            ),
            serde_json::json!({ "node": line }),
            batch,
            t.map_or(0, |t| t.rows),
        );
    }

    // 3. Each UDF call.
    let calls: Vec<CallRecord> = std::mem::take(&mut *recorder.lock().expect("recorder"));
    for c in calls {
        let rows = c.input.num_rows();
        let (output, error) = match c.output {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        steps.push(Step {
            index: steps.len(),
            kind: StepKind::UdfCall,
            title: format!(
                "UDF `{}` ({}): {rows} row(s), {} fuel",
                c.function,
                c.module,
                c.fuel_used.map_or("?".into(), |f| f.to_string())
            ),
            detail: serde_json::json!({
                "module": c.module, "sha256": c.sha256, "function": c.function,
                "fuel": c.fuel_used, "logs": c.logs, "micros": c.micros, "error": error,
            }),
            rows,
            kept: rows,
            file: None,
            output_file: None,
            batch: Some(c.input),
            output,
        });
    }

    // 4. Window and TTL decisions.
    let features: Vec<String> = def.features.iter().map(|f| f.name.clone()).collect();
    let computed = side(&result, &name, &features, true);
    let ttl_us = def.view.ttl.as_ref().map(|t| t.value.as_micros());
    let event_us = parse_us(&computed.event_time);
    let mut decisions = serde_json::Map::new();
    let age = event_us.map(|e| req.at_us - e);
    let ttl_line = match (age, ttl_us) {
        (None, _) => "no row of this entity at or before the as-of time".to_owned(),
        (Some(a), Some(t)) if a > t => format!(
            "newest row is {} old, past the TTL of {}: EXPIRED",
            crate::spec::Duration::from_micros(a).map_or(a.to_string(), |d| d.to_string()),
            crate::spec::Duration::from_micros(t).map_or(t.to_string(), |d| d.to_string())
        ),
        (Some(a), Some(t)) => format!(
            "newest row is {} old, within the TTL of {}",
            crate::spec::Duration::from_micros(a).map_or(a.to_string(), |d| d.to_string()),
            crate::spec::Duration::from_micros(t).map_or(t.to_string(), |d| d.to_string())
        ),
        (Some(_), None) => "no TTL".to_owned(),
    };
    decisions.insert("ttl".into(), ttl_line.clone().into());
    if let ViewBody::Aggregates(aggs) = &def.view.body
        && let Some((ts, rows)) = source_rows.first()
    {
        let times: Vec<i64> = cast(rows.column_by_name(ts).expect("time"), &DataType::Int64)?
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .flatten()
            .collect();
        for a in aggs {
            let lo = a.window.as_ref().map(|w| req.at_us - w.value.as_micros());
            let n = times
                .iter()
                .filter(|&&t| t <= req.at_us && lo.is_none_or(|lo| t > lo))
                .count();
            let text = match (&a.window, lo) {
                (Some(w), Some(lo)) => format!(
                    "{n} row(s) in ({}, {}] (window {})",
                    format_time(lo),
                    format_time(req.at_us),
                    w.value
                ),
                _ => format!("{n} row(s) up to {} (all history)", format_time(req.at_us)),
            };
            decisions.insert(a.name.value.clone(), text.into());
        }
    }
    push(
        &mut steps,
        StepKind::Decision,
        format!("windows and TTL: {ttl_line}"),
        serde_json::Value::Object(decisions),
        None,
        0,
    );
    push(
        &mut steps,
        StepKind::Value,
        format!("value: status {}", computed.status),
        serde_json::to_value(&computed).unwrap_or_default(),
        Some(result.clone()),
        result.num_rows(),
    );

    // 5. The online store's value beside it.
    let mut online = OnlineSide {
        value: None,
        view_version: None,
        until: None,
        materialized_at: None,
        note: None,
    };
    let mut online_hash = None;
    match store.online().and_then(|o| {
        let wm = o.watermark(&name)?;
        let key_batch = RecordBatch::try_from_iter(entity.iter().map(|(k, v)| {
            (
                k.clone(),
                Arc::new(StringArray::from(vec![v.clone()])) as ArrayRef,
            )
        }))?;
        let (b, _) = o.get(&name, None, &key_batch, req.at_us)?;
        Ok((wm, b))
    }) {
        Ok((wm, b)) => {
            online.view_version = Some(wm.view_version);
            online.until = Some(format_time(wm.until_us));
            online.materialized_at = Some(wm.materialized_at.clone());
            online_hash = Some((wm.view_hash.clone(), wm.until_us));
            online.value = Some(side(&b, &name, &features, false));
            push(
                &mut steps,
                StepKind::Online,
                format!(
                    "online: status {}, view v{}, materialized until {}",
                    online.value.as_ref().map_or("-", |v| v.status.as_str()),
                    wm.view_version,
                    format_time(wm.until_us)
                ),
                serde_json::to_value(&online).unwrap_or_default(),
                Some(b),
                1,
            );
        }
        Err(e) => {
            online.note = Some(e.to_string());
            push(
                &mut steps,
                StepKind::Online,
                format!("online: no value ({e})"),
                serde_json::to_value(&online).unwrap_or_default(),
                None,
                0,
            );
        }
    }

    // 6. The verdict.
    let newer_rows: usize = match &online_hash {
        Some((_, until)) => source_rows
            .iter()
            .map(|(ts, b)| {
                cast(b.column_by_name(ts).expect("time"), &DataType::Int64)
                    .map(|c| {
                        c.as_primitive::<arrow::datatypes::Int64Type>()
                            .iter()
                            .flatten()
                            .filter(|&t| t > *until && t <= req.at_us)
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum(),
        None => 0,
    };
    // The trace carries statuses as the names clients see; compared as the type.
    let status = crate::agg::Status::from_name;
    let found = |s: &str| status(s).is_some_and(crate::agg::Status::found);
    let expired = |s: &str| status(s) == Some(crate::agg::Status::Expired);
    let (verdict, reason) = match (&online.value, &online_hash) {
        (None, _) | (_, None) => (
            Verdict::Missing,
            format!(
                "the online store has nothing for view `{name}`: {}",
                online.note.clone().unwrap_or_default()
            ),
        ),
        (Some(_), Some((hash, _))) if *hash != applied.hash => (
            Verdict::Stale,
            format!(
                "the online store holds view version {} and the trace replays version {}; materialize again",
                online.view_version.unwrap_or(0),
                applied.version
            ),
        ),
        (Some(_), Some((_, until))) if *until < req.at_us && newer_rows > 0 => (
            Verdict::Stale,
            format!(
                "materialized until {}; {newer_rows} source row(s) of this entity came after it, up to the as-of time",
                format_time(*until)
            ),
        ),
        (Some(o), _) if !found(&o.status) && found(&computed.status) => (
            Verdict::Missing,
            format!(
                "the replay finds a value (status {}); the online store answers {}",
                computed.status, o.status
            ),
        ),
        (Some(o), _) if parse_us(&o.event_time).is_some_and(|t| t > req.at_us) => (
            Verdict::CreatedAfterAsOf,
            format!(
                "the online value comes from a row at {}, after the as-of time {}",
                o.event_time.clone().unwrap_or_default(),
                format_time(req.at_us)
            ),
        ),
        (Some(o), _) if expired(&o.status) != expired(&computed.status) => (
            Verdict::ExpiredByTtl,
            format!(
                "online status {}, replayed status {}: {ttl_line}",
                o.status, computed.status
            ),
        ),
        (Some(o), _) => match features.iter().find(|f| {
            !same(
                computed.values.get(*f).unwrap_or(&serde_json::Value::Null),
                o.values.get(*f).unwrap_or(&serde_json::Value::Null),
            )
        }) {
            Some(f) => (
                Verdict::ValueDiff,
                format!(
                    "feature `{f}`: replayed {}, online {}",
                    computed.values.get(f).cloned().unwrap_or_default(),
                    o.values.get(f).cloned().unwrap_or_default()
                ),
            ),
            None => (
                Verdict::Match,
                format!(
                    "online and replayed values agree on all {} feature(s) (status {})",
                    features.len(),
                    o.status
                ),
            ),
        },
    };

    let mut trace = Trace {
        format: TRACE_FORMAT.into(),
        version: TRACE_VERSION,
        view: name,
        view_version: applied.version,
        view_hash: applied.hash.clone(),
        view_kind: def.view.form().to_owned(),
        ttl: def.view.ttl.as_ref().map(|t| t.value.to_string()),
        entity: req.entity.clone(),
        at: format_time(req.at_us),
        at_us: req.at_us,
        tables,
        udfs: def
            .udfs
            .iter()
            .map(|u| format!("{}@{}", u.path, u.sha256))
            .collect(),
        sql: match &def.view.body {
            ViewBody::Sql(b) => Some(b.sql.value.clone()),
            _ => None,
        },
        plan: plan_text,
        steps,
        computed,
        online,
        verdict,
        reason,
        command: String::new(),
        origin: vec!["--repo".into(), req.repo_display.clone()],
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    trace.command = trace.reproduce();
    if req.scope == TraceScope::ViewOutput {
        trace.withhold_raw_steps();
    }
    Ok(trace)
}
