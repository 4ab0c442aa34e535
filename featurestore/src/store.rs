//! [`FeatureStore`]: a feature repo folder and its registry of applied definitions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::udf::{UdfHost, UdfRuntime};
use arrow::array::RecordBatch;
use quiver_registry::{ChangeKind, ChangeSet, DefinitionRecord, MetadataStore, content_hash};
use serde::Serialize;
use serde_json::Value;

use crate::catalog::{self, ResolvedRepo, ViewDefinition};
use crate::diff::{self, PlanReport, PlannedChange};
use crate::offline::HistoricalFeatures;
use crate::online::{Materialize, OnlineFeatures, SledOnlineStore};
use crate::plan::{self, Compiler};
use crate::spec::{self, FeatureRepo, suggest};
use crate::{Error, Limits, Result};

/// Registry kind of entities.
pub const KIND_ENTITY: &str = "entity";
/// Registry kind of sources.
pub const KIND_SOURCE: &str = "source";
/// Registry kind of feature views.
pub const KIND_VIEW: &str = "feature_view";

/// One applied version of a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedView {
    /// The definition.
    pub definition: ViewDefinition,
    /// Its version (1, 2, ...).
    pub version: u64,
    /// SHA-256 of its canonical JSON.
    pub hash: String,
    /// When it was applied (ms since the epoch).
    pub applied_at_ms: i64,
}

impl AppliedView {
    fn from_record(rec: DefinitionRecord) -> Result<Self> {
        let definition = serde_json::from_value(rec.definition).map_err(|e| Error::Corrupt {
            what: format!("{}@{}", rec.name, rec.version),
            message: e.to_string(),
        })?;
        Ok(Self {
            definition,
            version: rec.version,
            hash: rec.hash,
            applied_at_ms: rec.applied_at_ms,
        })
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.definition.name(), self.version)
    }
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplyReport {
    /// The apply id (0 when nothing changed).
    pub apply_id: u64,
    /// The plan that was carried out.
    pub plan: PlanReport,
}

/// Builder of a [`FeatureStore`].
#[derive(Debug, Clone)]
pub struct FeatureStoreBuilder {
    root: PathBuf,
    registry: Option<PathBuf>,
    online: Option<PathBuf>,
    limits: Limits,
    lock_wait: std::time::Duration,
    read_only: bool,
    udf_host: Option<Arc<UdfHost>>,
    udf_modules: Option<PathBuf>,
}

impl FeatureStoreBuilder {
    /// Run WebAssembly UDFs on `host` instead of the process's shared one.
    pub fn with_udf_host(mut self, host: Arc<UdfHost>) -> Self {
        self.udf_host = Some(host);
        self
    }

    /// Keep applied UDF modules (by hash) in `path` instead of `<repo>/.quiver/udfs`.
    pub fn with_udf_modules(mut self, path: impl Into<PathBuf>) -> Self {
        self.udf_modules = Some(path.into());
        self
    }

    /// For commands that only read: when the repo has no registry yet (never
    /// applied), use an empty temporary one instead of creating it, so reading a repo
    /// changes nothing on disk.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// When another process holds the registry, retry for up to `wait` before failing
    /// with [`quiver_registry::Error::Locked`] (default: fail at once).
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Keep the registry in `path` instead of `<repo>/.quiver/registry`.
    pub fn with_registry(mut self, path: impl Into<PathBuf>) -> Self {
        self.registry = Some(path.into());
        self
    }

    /// Keep the online store in `path` instead of `<repo>/.quiver/online`.
    pub fn with_online_store(mut self, path: impl Into<PathBuf>) -> Self {
        self.online = Some(path.into());
        self
    }

    /// Use other input bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Open the registry and return the store.
    pub fn build(self) -> Result<FeatureStore> {
        // A mistyped repo path is the user's error, not a new empty repo: nothing is
        // created for it (`quiver init` makes repos).
        if !self.root.is_dir() {
            return Err(Error::NotFound {
                what: format!(
                    "no feature repo folder `{}`; check --repo (or QUIVER_REPO), or create one with `quiver init`",
                    self.root.display()
                ),
            });
        }
        let registry_path = self
            .registry
            .unwrap_or_else(|| self.root.join(".quiver").join("registry"));
        let registry = if self.read_only && !registry_path.exists() {
            MetadataStore::empty()?
        } else {
            MetadataStore::open_waiting(&registry_path, self.lock_wait)?
        };
        let online_path = self
            .online
            .unwrap_or_else(|| self.root.join(".quiver").join("online"));
        let udf_modules = self
            .udf_modules
            .unwrap_or_else(|| self.root.join(".quiver").join("udfs"));
        let udfs = UdfRuntime::new(
            self.udf_host.unwrap_or_else(UdfHost::shared),
            Some(udf_modules),
        );
        let store = FeatureStore {
            root: self.root,
            registry,
            udfs,
            limits: self.limits,
            online_path,
            online: Arc::new(Mutex::new(None)),
        };
        // A registry that follows another holds definitions written elsewhere: every
        // command on it (a replica's server, or `quiver materialize` on its folder)
        // resolves their storage options as received ones (docs/object-storage.md).
        if store
            .replication()
            .and_then(|l| Ok(l.cursor()?))
            .is_ok_and(|c| c.primary.is_some())
        {
            crate::storage::set_receiver_process();
        }
        Ok(store)
    }
}

/// A feature repo and its registry.
///
/// ```no_run
/// # async fn run() -> quiver_featurestore::Result<()> {
/// use quiver_featurestore::FeatureStore;
/// let store = FeatureStore::open("features/")?;
/// let plan = store.plan().await?;      // what apply would change; changes nothing
/// println!("{}", plan.render());
/// store.apply().await?;                 // all or nothing
/// let training = store
///     .historical_features()
///     .with_entities_file("entities.csv")
///     .with_features("user_txn_stats")?
///     .await?;
/// println!("{} rows", training.num_rows());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FeatureStore {
    root: PathBuf,
    registry: MetadataStore,
    udfs: UdfRuntime,
    limits: Limits,
    online_path: PathBuf,
    /// Opened on first use: sled holds an exclusive lock on its folder.
    online: Arc<Mutex<Option<Arc<OnlineFeatures>>>>,
}

fn to_json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Corrupt {
        what: "definition".into(),
        message: e.to_string(),
    })
}

impl FeatureStore {
    /// A builder for the repo in folder `root`.
    pub fn builder(root: impl Into<PathBuf>) -> FeatureStoreBuilder {
        FeatureStoreBuilder {
            root: root.into(),
            registry: None,
            online: None,
            limits: Limits::default(),
            lock_wait: std::time::Duration::ZERO,
            read_only: false,
            udf_host: None,
            udf_modules: None,
        }
    }

    /// Open the repo in `root` with its registry in `<root>/.quiver/registry`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::builder(root).build()
    }

    /// The repo folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The input bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The same store under other input bounds (a server started from it reads its
    /// request bounds from here).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The registry of applied definitions.
    pub fn registry(&self) -> &MetadataStore {
        &self.registry
    }

    /// Parse and check the repo's YAML (no data is read).
    pub fn load(&self) -> Result<FeatureRepo> {
        Ok(spec::load_repo(&self.root, &self.limits)?)
    }

    /// Parse the repo and check it against its Delta tables: columns, types, SQL.
    pub async fn validate(&self) -> Result<ResolvedRepo> {
        let repo = self.load()?;
        Ok(catalog::resolve(&repo, self.udfs.host()).await?)
    }

    /// How this store runs the UDF modules of applied views.
    pub fn udf_runtime(&self) -> &UdfRuntime {
        &self.udfs
    }

    /// Every definition the repo declares, as `(kind, name, canonical JSON)`.
    fn desired(resolved: &ResolvedRepo) -> Result<Vec<(&'static str, String, Value)>> {
        let mut out = Vec::new();
        for (name, e) in &resolved.repo.entities {
            out.push((KIND_ENTITY, name.clone(), to_json(e)?));
        }
        for (name, s) in &resolved.repo.sources {
            out.push((KIND_SOURCE, name.clone(), to_json(s)?));
        }
        for (name, v) in &resolved.views {
            out.push((KIND_VIEW, name.clone(), to_json(v)?));
        }
        Ok(out)
    }

    fn compute_plan(&self, resolved: &ResolvedRepo, based_on: u64) -> Result<PlanReport> {
        let desired = Self::desired(resolved)?;
        let mut changes = Vec::new();
        let mut unchanged = 0;
        for kind in [KIND_ENTITY, KIND_SOURCE, KIND_VIEW] {
            let applied = self.registry.current_all(kind)?;
            for (k, name, def) in desired.iter().filter(|d| d.0 == kind) {
                let current = applied.iter().find(|a| &a.name == name);
                match current {
                    None => changes.push(PlannedChange {
                        kind: k.to_string(),
                        name: name.clone(),
                        change: ChangeKind::Added,
                        from_version: None,
                        fields: Vec::new(),
                        schema: Vec::new(),
                        affected_models: Vec::new(),
                    }),
                    Some(cur) if cur.hash == content_hash(def) => unchanged += 1,
                    Some(cur) => {
                        let schema = if kind == KIND_VIEW {
                            let old: ViewDefinition =
                                serde_json::from_value(cur.definition.clone()).map_err(|e| {
                                    Error::Corrupt {
                                        what: format!("{name}@{}", cur.version),
                                        message: e.to_string(),
                                    }
                                })?;
                            diff::diff_schema(&old.features, &resolved.views[name].features)
                        } else {
                            Vec::new()
                        };
                        changes.push(PlannedChange {
                            kind: k.to_string(),
                            name: name.clone(),
                            change: ChangeKind::Changed,
                            from_version: Some(cur.version),
                            fields: diff::diff_values(&cur.definition, def),
                            schema,
                            affected_models: Vec::new(),
                        });
                    }
                }
            }
            for a in &applied {
                if !desired.iter().any(|(k, n, _)| *k == kind && n == &a.name) {
                    let schema = if kind == KIND_VIEW {
                        serde_json::from_value::<ViewDefinition>(a.definition.clone())
                            .map(|old| diff::diff_schema(&old.features, &[]))
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    changes.push(PlannedChange {
                        kind: kind.to_string(),
                        name: a.name.clone(),
                        change: ChangeKind::Removed,
                        from_version: Some(a.version),
                        fields: Vec::new(),
                        schema,
                        affected_models: Vec::new(),
                    });
                }
            }
        }
        // What a view change means for the models trained on it.
        let mut views = changes
            .iter_mut()
            .filter(|c| c.kind == KIND_VIEW && c.change != ChangeKind::Added)
            .peekable();
        if views.peek().is_some() {
            let reg = self.models()?;
            for c in views {
                c.affected_models = self.impact_in(&reg, &c.name)?;
            }
        }
        Ok(PlanReport {
            based_on_apply: based_on,
            changes,
            unchanged,
        })
    }

    /// What [`apply`](Self::apply) would change. Reads the data to check the repo;
    /// writes nothing.
    pub async fn plan(&self) -> Result<PlanReport> {
        let based_on = self.registry.last_apply_id()?;
        let resolved = self.validate().await?;
        self.compute_plan(&resolved, based_on)
    }

    /// Validate the whole repo against its data, then store every changed definition
    /// as a new version in one transaction. Nothing is written when anything is wrong.
    pub async fn apply(&self) -> Result<ApplyReport> {
        let based_on = self.registry.last_apply_id()?;
        let resolved = self.validate().await?;
        let plan = self.compute_plan(&resolved, based_on)?;
        if plan.is_empty() {
            return Ok(ApplyReport { apply_id: 0, plan });
        }
        // Modules first: a definition never names a module that is not stored.
        for m in resolved.udf_modules.values() {
            self.udfs.store(m)?;
        }
        let mut changes = ChangeSet::new();
        changes.based_on(based_on);
        for (kind, name, def) in Self::desired(&resolved)? {
            changes.upsert(kind, &name, def);
        }
        for c in plan
            .changes
            .iter()
            .filter(|c| c.change == ChangeKind::Removed)
        {
            changes.remove(&c.kind, &c.name);
        }
        let record = self.registry.apply(changes)?;
        Ok(ApplyReport {
            apply_id: record.id,
            plan,
        })
    }

    /// Applied views, current versions, by name.
    pub fn views(&self) -> Result<Vec<AppliedView>> {
        self.registry
            .current_all(KIND_VIEW)?
            .into_iter()
            .map(AppliedView::from_record)
            .collect()
    }

    /// One applied view: its current version, or `version`.
    pub fn view(&self, name: &str, version: Option<u64>) -> Result<AppliedView> {
        let rec = match version {
            Some(v) => self.registry.version(KIND_VIEW, name, v)?,
            None => self.registry.current(KIND_VIEW, name)?,
        };
        match rec {
            Some(r) => AppliedView::from_record(r),
            None => {
                let history = self.registry.history(KIND_VIEW, name)?;
                let what = match (version, history.is_empty()) {
                    (Some(v), false) => format!(
                        "view `{name}` has no version {v} (versions: {})",
                        history
                            .iter()
                            .map(|h| h.version.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    (None, false) => format!(
                        "view `{name}` was removed; its versions stay readable as `{name}@N`"
                    ),
                    _ => {
                        let names: Vec<String> = self
                            .registry
                            .current_all(KIND_VIEW)?
                            .into_iter()
                            .map(|r| r.name)
                            .collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        format!("no applied view `{name}`; {}", suggest(name, &refs))
                    }
                };
                Err(Error::NotFound { what })
            }
        }
    }

    /// Every applied version of a view, oldest first.
    pub fn view_history(&self, name: &str) -> Result<Vec<AppliedView>> {
        let h = self.registry.history(KIND_VIEW, name)?;
        if h.is_empty() {
            return self.view(name, None).map(|v| vec![v]);
        }
        h.into_iter().map(AppliedView::from_record).collect()
    }

    /// The online store, opened on first use.
    pub fn online(&self) -> Result<Arc<OnlineFeatures>> {
        let mut slot = self.online.lock().expect("online store lock");
        if let Some(o) = slot.as_ref() {
            return Ok(o.clone());
        }
        let store = SledOnlineStore::open(&self.online_path)?;
        let online = Arc::new(OnlineFeatures::new(Arc::new(store)));
        *slot = Some(online.clone());
        Ok(online)
    }

    /// Start building a materialization into the online store.
    pub fn materialize(&self) -> Materialize<'_> {
        Materialize::new(self)
    }

    /// Start building a point-in-time training set.
    pub fn historical_features(&self) -> HistoricalFeatures<'_> {
        HistoricalFeatures::new(self)
    }

    async fn as_of_plan(
        &self,
        view: &str,
        t: i64,
    ) -> Result<(Compiler, datafusion::logical_expr::LogicalPlan)> {
        let applied = self.view(view, None)?;
        let def = &applied.definition;
        let mut compiler = Compiler::new(plan::session(), &self.root).with_udfs(self.udfs.clone());
        let spec = def.pit_spec(None, false, "event_timestamp");
        let source = compiler.source_plan(def, &spec, Some(t)).await?;
        let keys = plan::keys_as_of(source, &spec.keys, &spec.source_ts, t)?;
        let plan = compiler.join(keys, def, spec, Some(t)).await?;
        Ok((compiler, plan))
    }

    /// The values of every key of `view` as of `t` (UTC microseconds), computed with
    /// the same point-in-time rule as training sets: what materialization writes to
    /// the online store. Columns: keys, `event_timestamp` (= `t`), features, status,
    /// value time.
    pub async fn values_as_of(&self, view: &str, t: i64) -> Result<Vec<RecordBatch>> {
        let (compiler, plan) = self.as_of_plan(view, t).await?;
        Ok(compiler
            .context()
            .execute_logical_plan(plan)
            .await?
            .collect()
            .await?)
    }

    /// The optimized logical and physical plans that compute `view`'s values as of now.
    pub async fn explain_view(&self, view: &str) -> Result<String> {
        let now = chrono::Utc::now().timestamp_micros();
        let (compiler, plan) = self.as_of_plan(view, now).await?;
        let state = compiler.context().state();
        let optimized = state.optimize(&plan)?;
        let physical = state.create_physical_plan(&optimized).await?;
        Ok(format!(
            "logical:\n{}\nphysical:\n{}",
            optimized.display_indent(),
            datafusion::physical_plan::displayable(physical.as_ref()).indent(false)
        ))
    }
}
