//! Point-in-time training sets: [`HistoricalFeatures`].

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::prelude::SessionConfig;
use serde::Serialize;

use super::entities::{self, EntityInput};
use crate::plan::{self, Compiler, ScanProgress, TableRead};
use crate::spec::suggest;
use crate::store::{AppliedView, FeatureStore};
use crate::{Error, Result};

/// A reference to features: `view`, `view:feature`, `view@3`, `view@3:feature`.
///
/// ```
/// use quiver_featurestore::offline::FeatureRef;
/// let r: FeatureRef = "user_txn_stats@2:txn_count_7d".parse().unwrap();
/// assert_eq!((r.view.as_str(), r.version, r.feature.as_deref()), ("user_txn_stats", Some(2), Some("txn_count_7d")));
/// assert!("user_txn_stats@x".parse::<FeatureRef>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureRef {
    /// The view.
    pub view: String,
    /// A pinned version (default: the applied one).
    pub version: Option<u64>,
    /// One feature (default: all of the view's).
    pub feature: Option<String>,
}

impl FromStr for FeatureRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidRequest(format!(
                "bad feature reference `{s}`: {why}; write `VIEW`, `VIEW:FEATURE` or `VIEW@VERSION:FEATURE`"
            ))
        };
        let s = s.trim();
        if s.is_empty() || s.len() > 300 {
            return Err(bad("empty or too long"));
        }
        let (head, feature) = match s.split_once(':') {
            Some((h, f)) if !f.is_empty() && !f.contains(':') => (h, Some(f.to_owned())),
            Some(_) => return Err(bad("empty or repeated `:`")),
            None => (s, None),
        };
        let (view, version) = match head.split_once('@') {
            Some((v, n)) => (
                v,
                Some(
                    n.parse::<u64>()
                        .map_err(|_| bad("the version after `@` must be a number"))?,
                ),
            ),
            None => (head, None),
        };
        if view.is_empty() {
            return Err(bad("no view name"));
        }
        Ok(Self {
            view: view.to_owned(),
            version,
            feature,
        })
    }
}

/// Parse a comma-separated list of [`FeatureRef`]s.
pub fn parse_feature_refs(list: &str) -> Result<Vec<FeatureRef>> {
    list.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// One view version a training set used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewUse {
    /// View name.
    pub view: String,
    /// Version.
    pub version: u64,
    /// Content hash of that version.
    pub hash: String,
    /// Features taken from it.
    pub features: Vec<String>,
    /// Names of the sources it reads.
    pub sources: Vec<String>,
    /// The UDF modules its SQL calls, as `path@sha256`: the code that computed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udfs: Vec<String>,
}

/// Where a training set came from: the exact view versions and table versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lineage {
    /// Id of the training set in the lineage graph (`training_set:<id>`): the first 16
    /// hex digits of the SHA-256 of everything below.
    pub id: String,
    /// View versions used.
    pub views: Vec<ViewUse>,
    /// Delta tables read, at their versions.
    pub tables: Vec<TableRead>,
    /// Rows in the entity table.
    pub entity_rows: usize,
    /// When it was built (RFC 3339, UTC).
    pub created_at: String,
}

impl Lineage {
    fn new(
        views: Vec<ViewUse>,
        tables: Vec<TableRead>,
        entity_rows: usize,
        created_at: String,
    ) -> Self {
        let mut l = Self {
            id: String::new(),
            views,
            tables,
            entity_rows,
            created_at,
        };
        let body = serde_json::to_vec(&l).unwrap_or_default();
        l.id = quiver_registry::sha256_hex(&body)[..16].to_owned();
        l
    }

    /// Lineage nodes and edges of this training set: each Delta table version computes
    /// the views that read it, each view version feeds the training set.
    pub fn graph(&self) -> (Vec<quiver_registry::Node>, Vec<quiver_registry::Edge>) {
        use quiver_registry::{Edge, Node, NodeKind};
        let set = Node::new(NodeKind::TrainingSet, &self.id, None)
            .with_attr("entity_rows", self.entity_rows as u64)
            .with_attr("created_at", self.created_at.clone());
        let mut edges = Vec::new();
        for v in &self.views {
            let view_id = NodeKind::FeatureView.id(&v.view, Some(&v.version));
            for t in self.tables.iter().filter(|t| v.sources.contains(&t.source)) {
                edges.push(Edge {
                    from: NodeKind::DeltaTable.id(&t.location, Some(&t.version)),
                    to: view_id.clone(),
                    relation: format!("source {}", t.source),
                });
            }
            edges.push(Edge {
                from: view_id,
                to: set.id.clone(),
                relation: "reads".into(),
            });
        }
        (vec![set], edges)
    }
}

/// A point-in-time correct training set.
#[derive(Debug, Clone)]
pub struct TrainingSet {
    /// Schema: entity columns, then per view its features, `VIEW__status` and
    /// `VIEW__event_timestamp`.
    pub schema: SchemaRef,
    /// The rows, in the entity table's order.
    pub batches: Vec<RecordBatch>,
    /// What produced it.
    pub lineage: Lineage,
}

impl TrainingSet {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// All rows in one batch.
    pub fn concat(&self) -> Result<RecordBatch> {
        Ok(concat_batches(&self.schema, &self.batches)?)
    }
}

/// Builds a training set; await it to run. See [`FeatureStore::historical_features`].
#[must_use = "a builder does nothing until awaited"]
pub struct HistoricalFeatures<'a> {
    store: &'a FeatureStore,
    entities: Option<EntityInput>,
    features: Vec<FeatureRef>,
    full_names: bool,
    timestamp_column: String,
    progress: Option<Arc<ScanProgress>>,
    udfs: Option<crate::udf::UdfRuntime>,
    scope: crate::plan::SourceScope,
    portable: bool,
    engine: super::Engine,
}

impl<'a> HistoricalFeatures<'a> {
    pub(crate) fn new(store: &'a FeatureStore) -> Self {
        Self {
            store,
            entities: None,
            features: Vec::new(),
            full_names: false,
            timestamp_column: "event_timestamp".into(),
            udfs: None,
            scope: Default::default(),
            progress: None,
            portable: false,
            engine: super::Engine::Local,
        }
    }

    /// Compute on `engine` (default: this process). A Ballista engine plans the
    /// sources' scans portable and sends the plan to its scheduler; the rows are the
    /// local engine's, row for row.
    pub fn with_engine(mut self, engine: super::Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Plan the sources' scans so that the physical plan can run in other processes
    /// ([`crate::plan::portable`]; what a distributed engine needs).
    pub fn with_portable_scans(mut self, yes: bool) -> Self {
        self.portable = yes;
        self
    }

    /// Entity rows from a CSV or Parquet file, or a Delta table folder.
    pub fn with_entities_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.entities = Some(EntityInput::Path(path.into()));
        self
    }

    /// Entity rows from memory.
    pub fn with_entities(mut self, batches: Vec<RecordBatch>) -> Self {
        self.entities = Some(EntityInput::Batches(batches));
        self
    }

    /// Add features by reference (`view`, `view:feature`, comma-separated lists).
    pub fn with_features(mut self, refs: &str) -> Result<Self> {
        self.features.extend(parse_feature_refs(refs)?);
        Ok(self)
    }

    /// Add parsed feature references.
    pub fn with_feature_refs(mut self, refs: impl IntoIterator<Item = FeatureRef>) -> Self {
        self.features.extend(refs);
        self
    }

    /// Name output columns `view__feature` (needed when two views share a feature name).
    pub fn with_full_feature_names(mut self, yes: bool) -> Self {
        self.full_names = yes;
        self
    }

    /// The entity table's time column (default `event_timestamp`).
    pub fn with_timestamp_column(mut self, name: impl Into<String>) -> Self {
        self.timestamp_column = name.into();
        self
    }

    /// Count source rows read into `progress` while running.
    pub fn with_progress(mut self, progress: Arc<ScanProgress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Views and versions the request would use, and the rows their sources hold (for
    /// a progress bar's length).
    pub fn resolve_views(&self) -> Result<Vec<(AppliedView, Vec<String>)>> {
        if self.features.is_empty() {
            return Err(Error::InvalidRequest(
                "no features requested; name at least one `VIEW` or `VIEW:FEATURE`".into(),
            ));
        }
        let mut groups: BTreeMap<(String, Option<u64>), (usize, Vec<String>, bool)> =
            BTreeMap::new();
        for (i, r) in self.features.iter().enumerate() {
            let e = groups
                .entry((r.view.clone(), r.version))
                .or_insert((i, Vec::new(), false));
            match &r.feature {
                Some(f) if !e.1.contains(f) => e.1.push(f.clone()),
                Some(_) => {}
                None => e.2 = true,
            }
        }
        let mut ordered: Vec<_> = groups.into_iter().collect();
        ordered.sort_by_key(|(_, (i, _, _))| *i);
        let mut out = Vec::new();
        for ((view, version), (_, feats, all)) in ordered {
            let applied = self.store.view(&view, version)?;
            let names: Vec<&str> = applied
                .definition
                .features
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            let chosen: Vec<String> = if all {
                names.iter().map(|s| s.to_string()).collect()
            } else {
                for f in &feats {
                    if !names.contains(&f.as_str()) {
                        return Err(Error::NotFound {
                            what: format!(
                                "view `{}` has no feature `{f}`; {}",
                                applied.id(),
                                suggest(f, &names)
                            ),
                        });
                    }
                }
                // Keep the view's order.
                names
                    .iter()
                    .filter(|n| feats.iter().any(|f| f == *n))
                    .map(|s| s.to_string())
                    .collect()
            };
            out.push((applied, chosen));
        }
        Ok(out)
    }

    /// Run UDFs with `runtime` instead of the store's (the debugger replays with fuel
    /// and a recorder).
    pub fn with_udf_runtime(mut self, runtime: crate::udf::UdfRuntime) -> Self {
        self.udfs = Some(runtime);
        self
    }

    /// Read the sources as `scope` says: pinned Delta versions, one entity's rows
    /// (see [`crate::plan::SourceScope`]).
    pub fn with_source_scope(mut self, scope: crate::plan::SourceScope) -> Self {
        self.scope = scope;
        self
    }

    /// Plan the training set without computing it: its exact schema and lineage are
    /// known; [`PreparedTrainingSet::execute`] computes the rows.
    pub async fn prepare(self) -> Result<PreparedTrainingSet> {
        let views = self.resolve_views()?;
        // Output names must not collide.
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (v, feats) in &views {
            for f in feats {
                let out = if self.full_names {
                    format!("{}__{f}", v.definition.name())
                } else {
                    f.clone()
                };
                if let Some(other) = seen.insert(out.clone(), v.id()) {
                    return Err(Error::InvalidRequest(format!(
                        "feature `{out}` comes from both `{other}` and `{}`; ask for full feature names (`--full-names`) to get `VIEW__FEATURE` columns",
                        v.id()
                    )));
                }
            }
        }
        let Some(input) = self.entities else {
            return Err(Error::InvalidRequest("no entity table given; pass the rows (keys + event_timestamp) to compute features for".into()));
        };
        let mut config = SessionConfig::new();
        if let Some(p) = &self.progress {
            config = config.with_extension(p.clone());
        }
        // Entities are read here, whatever the engine: they travel inside the plan.
        let local = plan::session_with_config(config.clone());
        let batches = entities::read(&local, input, self.store.limits().max_entity_rows).await?;
        let ctx = self.engine.session(config).await?;
        let portable = self.portable || self.engine != super::Engine::Local;
        let (batch, max_t) = prepare_entities(batches, &self.timestamp_column, &views)?;
        let entity_rows = batch.num_rows();
        let mut plan = ctx.read_batch(batch)?.into_unoptimized_plan();
        let mut compiler = Compiler::new(ctx.clone(), self.store.root())
            .with_udfs(
                self.udfs
                    .clone()
                    .unwrap_or_else(|| self.store.udf_runtime().clone()),
            )
            .with_scope(self.scope.clone())
            .with_portable_scans(portable);
        let mut uses = Vec::new();
        for (applied, feats) in &views {
            let spec =
                applied
                    .definition
                    .pit_spec(Some(feats), self.full_names, &self.timestamp_column);
            plan = compiler
                .join(plan, &applied.definition, spec, max_t)
                .await?;
            uses.push(ViewUse {
                view: applied.definition.name().to_owned(),
                version: applied.version,
                hash: applied.hash.clone(),
                features: feats.clone(),
                sources: applied
                    .definition
                    .sources
                    .iter()
                    .map(|s| s.name.value.clone())
                    .collect(),
                udfs: applied
                    .definition
                    .udfs
                    .iter()
                    .map(|u| format!("{}@{}", u.path, u.sha256))
                    .collect(),
            });
        }
        let df = ctx.execute_logical_plan(plan).await?;
        Ok(PreparedTrainingSet {
            schema: Arc::new(df.schema().as_arrow().clone()),
            df,
            lineage: Lineage::new(
                uses,
                compiler.reads().to_vec(),
                entity_rows,
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        })
    }

    #[tracing::instrument(name = "training_set", skip_all)]
    async fn run(self) -> Result<TrainingSet> {
        self.prepare().await?.execute().await
    }
}

/// A planned training set: schema and lineage known, rows not computed yet.
#[derive(Debug)]
pub struct PreparedTrainingSet {
    /// The result's schema.
    pub schema: SchemaRef,
    /// What it will be built from.
    pub lineage: Lineage,
    df: datafusion::dataframe::DataFrame,
}

impl PreparedTrainingSet {
    /// The physical plan and the task context to run it in (the debugger wraps each
    /// node of it).
    pub async fn physical_plan(
        &self,
    ) -> Result<(
        Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        Arc<datafusion::execution::TaskContext>,
    )> {
        let plan = self.df.clone().create_physical_plan().await?;
        Ok((plan, Arc::new(self.df.task_ctx())))
    }

    /// Compute every row.
    pub async fn execute(self) -> Result<TrainingSet> {
        let batches = self.df.collect().await?;
        Ok(TrainingSet {
            schema: self.schema,
            batches,
            lineage: self.lineage,
        })
    }

    /// Compute the rows as a stream of batches.
    pub async fn execute_stream(
        self,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
        Ok(self.df.execute_stream().await?)
    }
}

/// One batch with the time column as UTC microseconds; checks the needed columns.
fn prepare_entities(
    batches: Vec<RecordBatch>,
    ts: &str,
    views: &[(AppliedView, Vec<String>)],
) -> Result<(RecordBatch, Option<i64>)> {
    let Some(first) = batches.first() else {
        return Err(Error::InvalidRequest("the entity table is empty".into()));
    };
    let schema = first.schema();
    let batch = concat_batches(&schema, &batches)?;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut missing = Vec::new();
    for (v, _) in views {
        for k in v.definition.keys() {
            if !names.contains(&k.as_str()) && !missing.contains(&k) {
                missing.push(k);
            }
        }
    }
    if !names.contains(&ts) {
        missing.push(ts.to_owned());
    }
    if !missing.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "the entity table lacks column(s) {} (it has: {}); it needs the join keys of every requested view and `{ts}`",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        )));
    }
    let idx = schema.index_of(ts)?;
    let col = batch.column(idx);
    // Numbers are refused: their unit (s, ms, µs) would be a guess.
    if !matches!(
        col.data_type(),
        DataType::Timestamp(..)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    ) {
        return Err(Error::InvalidRequest(format!(
            "entity column `{ts}` is {}, which is not a time; use a timestamp or date column, or text like 2024-05-01T12:00:00Z",
            col.data_type()
        )));
    }
    let t = cast(col, &plan::entity_time_type()).map_err(|e| {
        Error::InvalidRequest(format!(
            "entity column `{ts}` ({}) is not a time: {e}; write times like 2024-05-01T12:00:00Z",
            col.data_type()
        ))
    })?;
    if t.null_count() > col.null_count() {
        return Err(Error::InvalidRequest(format!(
            "entity column `{ts}` has values that are not times; write times like 2024-05-01T12:00:00Z"
        )));
    }
    let max_t = arrow::compute::max(
        t.as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .expect("cast to timestamp"),
    );
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields[idx] = Arc::new(arrow::datatypes::Field::new(
        ts,
        plan::entity_time_type(),
        col.is_nullable(),
    ));
    let mut columns = batch.columns().to_vec();
    columns[idx] = t;
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok((batch, max_t))
}

impl<'a> IntoFuture for HistoricalFeatures<'a> {
    type Output = Result<TrainingSet>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
