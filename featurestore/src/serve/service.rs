//! [`FeatureService`]: the Arrow Flight service of `quiver serve`.
//!
//! | RPC | what it does |
//! |---|---|
//! | `GetFlightInfo` / `GetSchema` | schema (and a ticket) for an `online`, `historical` or `scan` command |
//! | `DoGet` | run a command carried in the ticket; stream Arrow batches |
//! | `DoPut` | upload an entity table (`upload` command); answers its id |
//! | `DoExchange` | `exchange` command: key batches in, online value batches out |
//! | `ListFlights` | the views the caller may read, with their schemas |
//! | `DoAction` | `list`, `plan`, `apply`, `materialize`, `health` |
//!
//! Every call needs `authorization: Bearer <token>`; a tenant reads only the views it
//! owns or that are shared with it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Tenant, Tokens};
use super::command::{Command, CommandError, ServeLimits, json_batch};
use super::metrics::Metrics;
use crate::offline::parse_feature_refs;
use crate::store::{AppliedView, FeatureStore};
use crate::{Error, delta};

type FlightStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Error to Flight status: what the caller must change decides the code.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match &e {
            Error::Spec(_) | Error::InvalidRequest(_) => Status::invalid_argument(msg),
            Error::NotFound { .. } => Status::not_found(msg),
            Error::Delta { .. } => Status::failed_precondition(msg),
            Error::Registry(quiver_registry::Error::Conflict { .. }) => Status::aborted(msg),
            Error::Registry(quiver_registry::Error::NotFound { .. }) => Status::not_found(msg),
            Error::Registry(
                quiver_registry::Error::SchemaMismatch(_)
                | quiver_registry::Error::Tampered { .. }
                | quiver_registry::Error::Untrusted(_),
            ) => Status::failed_precondition(msg),
            Error::Corrupt { .. } => Status::data_loss(msg),
            _ if e.is_user_error() => Status::invalid_argument(msg),
            _ => Status::internal(msg),
        }
    }
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(m) => Status::invalid_argument(m),
            CommandError::TooLarge(m) => Status::resource_exhausted(m),
        }
    }
}

fn flight_err(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => Status::invalid_argument(other.to_string()),
    }
}

struct Upload {
    tenant: String,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

/// State shared by every request.
pub(crate) struct Shared {
    pub(crate) store: FeatureStore,
    /// The store's online side, opened once.
    pub(crate) online: Arc<crate::online::OnlineFeatures>,
    pub(crate) tokens: Tokens,
    pub(crate) limits: ServeLimits,
    pub(crate) metrics: Arc<Metrics>,
    uploads: Mutex<(HashMap<String, Upload>, VecDeque<String>)>,
    /// `apply` and `materialize` run one at a time.
    admin: tokio::sync::Mutex<()>,
    /// Model servers by model name, created on the first `score` and kept hot-reloading.
    models: Mutex<
        HashMap<
            String,
            (
                Arc<quiver_registry::ModelServer>,
                quiver_registry::WatchHandle,
            ),
        >,
    >,
    /// Applied views decoded once per apply: (apply id, views by name).
    views: std::sync::RwLock<(u64, HashMap<String, Arc<AppliedView>>)>,
    /// Where scored rows are recorded, when auditing is on.
    pub(crate) audit: Option<crate::audit::AuditLog>,
    /// Rollout policy per model; others get the default.
    policies: std::collections::BTreeMap<String, quiver_registry::RolloutPolicy>,
}

/// `v` as an OpenMetrics label value (quoted characters escaped).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Shared {
    /// Per-version metrics of the models this server scores, in the OpenMetrics text
    /// format: rows scored, errors, p99 latency bucket, score histogram, rollbacks.
    pub(crate) fn model_metrics_text(&self) -> String {
        use std::fmt::Write;
        let servers: Vec<Arc<quiver_registry::ModelServer>> = self
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = String::new();
        let mut requests = String::new();
        let mut errors = String::new();
        let mut p99 = String::new();
        let mut scores = String::new();
        let mut rollbacks = String::new();
        let mut psi = String::new();
        let mut ks = String::new();
        let mut drifted = String::new();
        let mut drift_rows = String::new();
        // Label values are model names (validated identifiers), numbers and feature
        // columns (escaped).
        for server in &servers {
            let model = server.model();
            let d = server.deployment();
            for served in [&d.champion, &d.challenger].into_iter().flatten() {
                let m = served.metrics.snapshot();
                let labels = format!(
                    "model=\"{model}\",version=\"{}\",alias=\"{}\"",
                    served.version(),
                    served.alias
                );
                let _ = writeln!(
                    requests,
                    "quiver_model_requests_total{{{labels}}} {}",
                    m.requests
                );
                let _ = writeln!(errors, "quiver_model_errors_total{{{labels}}} {}", m.errors);
                let _ = writeln!(
                    p99,
                    "quiver_model_latency_p99_seconds{{{labels}}} {}",
                    m.p99_us as f64 / 1e6
                );
                let bins = m.score_counts.len().max(1);
                let mut cumulative = 0u64;
                for (i, c) in m.score_counts.iter().enumerate() {
                    cumulative += c;
                    let le = (i + 1) as f64 / bins as f64;
                    let _ = writeln!(
                        scores,
                        "quiver_model_score_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    scores,
                    "quiver_model_score_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
                );
                let _ = writeln!(scores, "quiver_model_score_count{{{labels}}} {cumulative}");
                for r in served.drift.report(
                    server.policy().max_feature_psi,
                    server.policy().min_requests,
                ) {
                    let l = format!("{labels},feature=\"{}\"", label_value(&r.feature));
                    let _ = writeln!(psi, "quiver_model_feature_psi{{{l}}} {}", r.psi);
                    let _ = writeln!(ks, "quiver_model_feature_ks{{{l}}} {}", r.ks);
                    let _ = writeln!(
                        drifted,
                        "quiver_model_feature_drifted{{{l}}} {}",
                        u8::from(r.drifted)
                    );
                    let _ = writeln!(
                        drift_rows,
                        "quiver_model_feature_drift_rows{{{l}}} {}",
                        r.live_count
                    );
                }
            }
            let _ = writeln!(
                rollbacks,
                "quiver_model_rollbacks_total{{model=\"{model}\"}} {}",
                server.rollbacks().len()
            );
        }
        for (name, kind, help, body) in [
            (
                "quiver_model_requests",
                "counter",
                "Rows scored by model version and alias",
                &requests,
            ),
            (
                "quiver_model_errors",
                "counter",
                "Rows that failed to score",
                &errors,
            ),
            (
                "quiver_model_latency_p99_seconds",
                "gauge",
                "Upper bound of the latency bucket holding the 99th percentile",
                &p99,
            ),
            (
                "quiver_model_score",
                "histogram",
                "Scores over 20 bins of [0, 1]",
                &scores,
            ),
            (
                "quiver_model_rollbacks",
                "counter",
                "Automatic rollbacks of the challenger",
                &rollbacks,
            ),
            (
                "quiver_model_feature_psi",
                "gauge",
                "PSI of recent served inputs against the version's training statistics",
                &psi,
            ),
            (
                "quiver_model_feature_ks",
                "gauge",
                "Kolmogorov-Smirnov statistic of recent served inputs against the training statistics",
                &ks,
            ),
            (
                "quiver_model_feature_drifted",
                "gauge",
                "1 when the feature's PSI is above the policy's max_feature_psi",
                &drifted,
            ),
            (
                "quiver_model_feature_drift_rows",
                "gauge",
                "Recent non-null values the drift measures cover",
                &drift_rows,
            ),
        ] {
            if body.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            out.push_str(body);
        }
        out
    }

    pub(crate) fn new(
        store: FeatureStore,
        tokens: Tokens,
        limits: ServeLimits,
        metrics: Arc<Metrics>,
        audit: Option<crate::audit::AuditLog>,
        policies: std::collections::BTreeMap<String, quiver_registry::RolloutPolicy>,
    ) -> crate::Result<Self> {
        Ok(Self {
            audit,
            policies,
            online: store.online()?,
            store,
            tokens,
            limits,
            metrics,
            uploads: Mutex::new((HashMap::new(), VecDeque::new())),
            admin: tokio::sync::Mutex::new(()),
            views: std::sync::RwLock::new((0, HashMap::new())),
            models: Mutex::new(HashMap::new()),
        })
    }
}

/// The Flight service over a [`FeatureStore`].
#[derive(Clone)]
pub struct FeatureService {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for FeatureService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FeatureService({})", self.shared.store.root().display())
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn encode(
    schema: SchemaRef,
    batches: BoxStream<'static, Result<RecordBatch, FlightError>>,
) -> FlightStream<FlightData> {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(flight_err),
    )
}

impl FeatureService {
    fn tenant<T>(&self, req: &Request<T>) -> Result<Tenant, Status> {
        self.shared.tokens.authenticate(req)
    }

    fn timed<T>(
        &self,
        method: &'static str,
        started: Instant,
        r: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.shared
            .metrics
            .request(method, code, started.elapsed().as_secs_f64());
        if let Err(s) = &r {
            if s.code() == tonic::Code::Internal {
                tracing::error!(method, error = %s.message(), "request failed");
            } else {
                tracing::debug!(method, code = ?s.code(), error = %s.message(), "request refused");
            }
        }
        r
    }

    /// The applied view, if `tenant` may read it. A tenant that is not an admin learns
    /// nothing about views it may not read: a missing or removed view and one it may not
    /// read get messages that name no owner, version or other view.
    fn readable(&self, tenant: &Tenant, view: &str) -> Result<Arc<AppliedView>, Status> {
        let v = match self.applied(view) {
            Ok(v) => v,
            Err(s) if !tenant.admin && s.code() == tonic::Code::NotFound => {
                return Err(Status::not_found(format!(
                    "no view `{view}` that tenant `{}` may read; `list` shows the ones it may",
                    tenant.name
                )));
            }
            Err(s) => return Err(s),
        };
        self.check_read(tenant, &v)?;
        Ok(v)
    }

    /// The view at `version` (the current one for `None`), if `tenant` may read it.
    /// Access is always decided by the **current** definition, whatever version is
    /// pinned: a tenant removed from `shared_with` (or from a view that was removed)
    /// cannot read any version of it any more; a removed view is readable by admins
    /// only.
    fn readable_at(
        &self,
        tenant: &Tenant,
        view: &str,
        version: Option<u64>,
    ) -> Result<Arc<AppliedView>, Status> {
        if !tenant.admin {
            self.readable(tenant, view)?;
        }
        match version {
            None => self.applied(view),
            Some(v) => Ok(Arc::new(self.shared.store.view(view, Some(v))?)),
        }
    }

    /// The applied version of `view`, decoded once per apply: the registry's apply id
    /// (one small read) tells whether the cached decoding is still current.
    fn applied(&self, view: &str) -> Result<Arc<AppliedView>, Status> {
        let apply_id = self
            .shared
            .store
            .registry()
            .last_apply_id()
            .map_err(Error::from)?;
        {
            let cache = self.shared.views.read().expect("view cache lock");
            if cache.0 == apply_id {
                if let Some(v) = cache.1.get(view) {
                    return Ok(v.clone());
                }
            }
        }
        let v = Arc::new(self.shared.store.view(view, None)?);
        let mut cache = self.shared.views.write().expect("view cache lock");
        if cache.0 != apply_id {
            *cache = (apply_id, HashMap::new());
        }
        cache.1.insert(view.to_owned(), v.clone());
        Ok(v)
    }

    fn check_read(&self, tenant: &Tenant, v: &AppliedView) -> Result<(), Status> {
        if tenant.admin || v.definition.view.readable_by(&tenant.name) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "tenant `{}` may not read view `{}`; ask its owner to add you to `shared_with`",
                tenant.name,
                v.definition.name(),
            )))
        }
    }

    fn online_lookup(
        &self,
        tenant: &Tenant,
        view: &str,
        features: Option<&[String]>,
        keys: &RecordBatch,
    ) -> Result<RecordBatch, Status> {
        self.readable(tenant, view)?;
        if keys.num_rows() > self.shared.limits.max_keys {
            return Err(Status::resource_exhausted(format!(
                "{} keys in one request, over the limit of {}",
                keys.num_rows(),
                self.shared.limits.max_keys
            )));
        }
        let online = &self.shared.online;
        let (batch, counts) = online.get(view, features, keys, now_us())?;
        self.shared.metrics.values(view, &counts);
        Ok(batch)
    }

    /// The hot-reloading server of `model`, created on first use.
    fn model_server(&self, model: &str) -> Result<Arc<quiver_registry::ModelServer>, Status> {
        let mut models = self.shared.models.lock().expect("model servers lock");
        if let Some((s, _)) = models.get(model) {
            return Ok(s.clone());
        }
        let registry = self.shared.store.models()?;
        if registry.model(model).map_err(Error::from)?.is_none() {
            return Err(Status::not_found(format!("no registered model `{model}`")));
        }
        let policy = self.shared.policies.get(model).cloned().unwrap_or_default();
        let server =
            quiver_registry::ModelServer::new(registry, model, policy).map_err(Error::from)?;
        let watch = server.watch();
        models.insert(model.to_owned(), (server.clone(), watch));
        Ok(server)
    }

    /// The deployment of `model` and the views its served versions read, after checking
    /// that `tenant` may read every one of them.
    fn score_deployment(
        &self,
        tenant: &Tenant,
        model: &str,
    ) -> Result<
        (
            Arc<quiver_registry::ModelServer>,
            Arc<quiver_registry::Deployment>,
            Vec<String>,
        ),
        Status,
    > {
        let server = self.model_server(model)?;
        let d = server.deployment();
        if d.champion.is_none() && d.challenger.is_none() {
            return Err(Status::from(Error::from(server.no_deployment())));
        }
        let mut views: Vec<String> = [&d.champion, &d.challenger]
            .into_iter()
            .flatten()
            .flat_map(|v| {
                v.loaded
                    .version
                    .manifest
                    .input
                    .features
                    .iter()
                    .map(|f| f.view.clone())
            })
            .collect();
        views.sort();
        views.dedup();
        for v in &views {
            self.readable(tenant, v)?;
        }
        Ok((server, d, views))
    }

    /// Schema of a `score` result for key columns `keys`.
    fn score_schema(keys: &Schema, explain: bool) -> Schema {
        use arrow::datatypes::DataType;
        let mut fields: Vec<Field> = keys.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("score", DataType::Float64, false));
        fields.push(Field::new("model_version", DataType::UInt64, false));
        fields.push(Field::new("model_alias", DataType::Utf8, false));
        fields.push(Field::new("request_id", DataType::Utf8, false));
        if explain {
            fields.push(Field::new("contributions", DataType::Utf8, true));
        }
        Schema::new(fields)
    }

    /// Online features for `keys`, scored by the model version each key routes to.
    fn score(
        &self,
        tenant: &Tenant,
        model: &str,
        keys: &RecordBatch,
        explain: bool,
    ) -> Result<(RecordBatch, Vec<crate::audit::AuditRecord>), Status> {
        use arrow::array::{Float64Array, StringArray, UInt64Array};
        use arrow::util::display::ArrayFormatter;
        if keys.num_rows() > self.shared.limits.max_keys {
            return Err(Status::resource_exhausted(format!(
                "{} keys in one request, over the limit of {}",
                keys.num_rows(),
                self.shared.limits.max_keys
            )));
        }
        let (server, d, views) = self.score_deployment(tenant, model)?;
        let mut fetched: HashMap<String, RecordBatch> = HashMap::with_capacity(views.len());
        for v in views {
            let batch = self.online_lookup(tenant, &v, None, keys)?;
            fetched.insert(v, batch);
        }
        // Each input column once as f64, and per served version the indices of its
        // inputs in model order, so the per-row loop only indexes.
        let mut columns: Vec<Vec<f64>> = Vec::new();
        let mut column_of: HashMap<(&str, &str), usize> = HashMap::new();
        let mut layout: Vec<(u64, Vec<usize>)> = Vec::new();
        for v in [&d.champion, &d.challenger].into_iter().flatten() {
            let mut idx = Vec::new();
            for f in &v.loaded.version.manifest.input.features {
                let i = match column_of.get(&(f.view.as_str(), f.feature.as_str())) {
                    Some(i) => *i,
                    None => {
                        let col = fetched[&f.view].column_by_name(&f.feature).ok_or_else(|| {
                            Status::failed_precondition(format!(
                                "{model}@{} takes `{}` from view `{}`, which the online store does not serve",
                                v.version(),
                                f.feature,
                                f.view
                            ))
                        })?;
                        columns.push(crate::models::to_f64(col.as_ref())?);
                        column_of.insert((&f.view, &f.feature), columns.len() - 1);
                        columns.len() - 1
                    }
                };
                idx.push(i);
            }
            layout.push((v.version(), idx));
        }
        let formatters = keys
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let n = keys.num_rows();
        let (mut scores, mut out_versions, mut aliases, mut explained) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut x, mut route_key) = (Vec::new(), String::new());
        let now = now_us();
        let prefix = crate::audit::new_request_prefix(now);
        let mut request_ids = Vec::with_capacity(n);
        let auditing = self.shared.audit.is_some();
        let mut audit = Vec::with_capacity(if auditing { n } else { 0 });
        let key_names: Vec<String> = keys
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let key_numeric: Vec<bool> = keys
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().is_integer())
            .collect();
        for row in 0..n {
            // The route key: the key values as text, joined; stable across servers.
            route_key.clear();
            for (i, f) in formatters.iter().enumerate() {
                if i > 0 {
                    route_key.push('\u{1f}');
                }
                route_key.push_str(&f.value(row).to_string());
            }
            let served = server
                .route(&d, route_key.as_bytes())
                .expect("a version is served");
            let idx = &layout
                .iter()
                .find(|(v, _)| *v == served.version())
                .expect("layout of every served version")
                .1;
            x.clear();
            x.extend(idx.iter().map(|i| columns[*i][row]));
            let s = server
                .score_on(&d, served, &x, explain)
                .map_err(Error::from)?;
            let names = served.loaded.model.features();
            let contributions = s.contributions.map(|c| {
                serde_json::json!({
                    "base": c.base, "residual": c.residual, "method": c.method,
                    "features": names.iter().zip(&c.values).map(|(n, v)| (n.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                })
                .to_string()
            });
            let request_id = format!("{prefix}-{row}");
            if auditing {
                // From the columns, not the route key: a string key may hold the
                // route key's separator.
                let entity: serde_json::Map<String, serde_json::Value> = formatters
                    .iter()
                    .zip(&key_names)
                    .zip(&key_numeric)
                    .map(|((f, name), numeric)| {
                        let v = f.value(row).to_string();
                        let value = match v.parse::<i64>() {
                            Ok(i) if *numeric => serde_json::json!(i),
                            _ => serde_json::json!(v),
                        };
                        (name.clone(), value)
                    })
                    .collect();
                let inputs: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(&x)
                    .map(|(n, v)| (n.clone(), serde_json::json!(v)))
                    .collect();
                audit.push(crate::audit::AuditRecord {
                    request_id: request_id.clone(),
                    time_us: now,
                    tenant: tenant.name.clone(),
                    model: model.to_owned(),
                    model_version: s.version,
                    model_alias: s.alias.to_string(),
                    entity: serde_json::Value::Object(entity).to_string(),
                    inputs: serde_json::Value::Object(inputs).to_string(),
                    score: s.score,
                    contributions: contributions.clone(),
                });
            }
            request_ids.push(request_id);
            scores.push(s.score);
            out_versions.push(s.version);
            aliases.push(s.alias);
            explained.push(contributions);
        }
        let mut out: Vec<arrow::array::ArrayRef> = keys.columns().to_vec();
        out.push(Arc::new(Float64Array::from(scores)));
        out.push(Arc::new(UInt64Array::from(out_versions)));
        out.push(Arc::new(StringArray::from(aliases)));
        out.push(Arc::new(StringArray::from(request_ids)));
        if explain {
            out.push(Arc::new(StringArray::from(explained)));
        }
        let batch =
            RecordBatch::try_new(Arc::new(Self::score_schema(&keys.schema(), explain)), out)
                .map_err(|e| Status::internal(e.to_string()))?;
        Ok((batch, audit))
    }

    fn entity_batches(
        &self,
        tenant: &Tenant,
        upload: &Option<String>,
        rows: &Option<std::collections::BTreeMap<String, Vec<serde_json::Value>>>,
    ) -> Result<Vec<RecordBatch>, Status> {
        match (upload, rows) {
            (Some(id), _) => {
                let uploads = self.shared.uploads.lock().expect("uploads lock");
                match uploads.0.get(id) {
                    Some(u) if u.tenant == tenant.name => Ok(u.batches.clone()),
                    _ => Err(Status::not_found(format!(
                        "no upload `{id}` for tenant `{}`; uploads expire when newer ones replace them",
                        tenant.name
                    ))),
                }
            }
            (None, Some(rows)) => Ok(vec![json_batch(rows)?]),
            (None, None) => Err(Status::invalid_argument("no entity rows")),
        }
    }

    async fn prepare_historical(
        &self,
        tenant: &Tenant,
        cmd: &Command,
    ) -> Result<crate::offline::PreparedTrainingSet, Status> {
        let Command::Historical {
            features,
            upload,
            rows,
            full_names,
        } = cmd
        else {
            unreachable!("historical command")
        };
        let refs = parse_feature_refs(&features.join(","))?;
        for r in &refs {
            self.readable_at(tenant, &r.view, r.version)?;
        }
        let batches = self.entity_batches(tenant, upload, rows)?;
        Ok(self
            .shared
            .store
            .historical_features()
            .with_feature_refs(refs)
            .with_full_feature_names(*full_names)
            .with_entities(batches)
            .prepare()
            .await?)
    }

    async fn scan_frame(
        &self,
        tenant: &Tenant,
        view: &str,
        delta_version: Option<i64>,
    ) -> Result<datafusion::dataframe::DataFrame, Status> {
        let v = self.readable(tenant, view)?;
        let def = &v.definition;
        let ctx = crate::plan::session();
        let store = &self.shared.store;
        for s in &def.sources {
            let url = delta::table_url(store.root(), &s.delta.value)
                .map_err(Status::failed_precondition)?;
            let table = delta::open(&url, delta_version).await?;
            table
                .register(&ctx, &s.name.value)
                .await
                .map_err(Status::from)?;
        }
        let spec = def.pit_spec(None, false, "event_timestamp");
        let df = match &def.view.body {
            crate::spec::ViewBody::Sql(body) => crate::plan::sql_frame(&ctx, &body.sql.value)
                .await
                .map_err(|e| Status::from(Error::from(e)))?,
            _ => ctx
                .table(def.sources[0].name.value.as_str())
                .await
                .map_err(|e| Status::from(Error::from(e)))?,
        };
        let mut cols = spec.keys.clone();
        cols.push(spec.source_ts.clone());
        match &spec.mode {
            crate::plan::PitMode::AsOf(c) => cols.extend(c.iter().map(|(_, s)| s.clone())),
            crate::plan::PitMode::Aggregate(a) => {
                cols.extend(a.iter().filter_map(|a| a.column.clone()))
            }
        }
        let mut seen = Vec::new();
        cols.retain(|c| {
            let new = !seen.contains(c);
            seen.push(c.clone());
            new
        });
        df.select(
            cols.iter()
                .map(|c| crate::plan::ident(c))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| Status::from(Error::from(e)))
    }

    /// Schema of a view's online lookups, from its definition and source.
    async fn view_schema(&self, v: &AppliedView) -> Result<Schema, Status> {
        let online = &self.shared.online;
        if let Ok(s) = online.schema(v.definition.name(), None) {
            return Ok(s.as_ref().clone());
        }
        // Not materialized yet: keys as the first source types them.
        let def = &v.definition;
        let url = delta::table_url(self.shared.store.root(), &def.sources[0].delta.value)
            .map_err(Status::failed_precondition)?;
        let table = delta::open(&url, None).await?;
        let mut fields: Vec<Field> = def
            .keys()
            .iter()
            .filter_map(|k| table.schema.field_with_name(k).ok().cloned())
            .collect();
        for f in &def.features {
            let dt = <arrow::datatypes::DataType as std::str::FromStr>::from_str(&f.dtype)
                .unwrap_or(arrow::datatypes::DataType::Null);
            fields.push(Field::new(&f.name, dt, true));
        }
        fields.push(Field::new(
            format!("{}{}", def.name(), crate::spec::STATUS_SUFFIX),
            arrow::datatypes::DataType::Utf8,
            false,
        ));
        fields.push(Field::new(
            format!("{}{}", def.name(), crate::spec::EVENT_TS_SUFFIX),
            crate::plan::entity_time_type(),
            true,
        ));
        Ok(Schema::new(fields))
    }

    async fn info(
        &self,
        tenant: &Tenant,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let cmd = Command::decode(&descriptor.cmd, &self.shared.limits)?;
        let (schema, records) = match &cmd {
            Command::Online {
                view,
                features,
                keys,
            } => {
                self.readable(tenant, view)?;
                let online = &self.shared.online;
                let schema = online.schema(view, features.as_deref())?;
                (
                    schema.as_ref().clone(),
                    keys.values().next().map_or(0, Vec::len) as i64,
                )
            }
            Command::Score {
                model,
                keys,
                explain,
            } => {
                // Describe without scoring: scoring here would count requests twice
                // and could trigger a rollout judgment.
                self.score_deployment(tenant, model)?;
                let keys = json_batch(keys)?;
                (
                    Self::score_schema(&keys.schema(), *explain),
                    keys.num_rows() as i64,
                )
            }
            Command::Historical { .. } => {
                let prepared = self.prepare_historical(tenant, &cmd).await?;
                let rows = prepared.lineage.entity_rows as i64;
                (prepared.schema.as_ref().clone(), rows)
            }
            Command::Scan {
                view,
                delta_version,
            } => {
                let df = self.scan_frame(tenant, view, *delta_version).await?;
                (df.schema().as_arrow().clone(), -1)
            }
            Command::Upload {} | Command::Exchange { .. } => {
                return Err(Status::invalid_argument(
                    "`upload` goes with DoPut and `exchange` with DoExchange, not GetFlightInfo",
                ));
            }
        };
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(descriptor.clone())
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(cmd.encode())))
            .with_total_records(records);
        Ok(info)
    }

    async fn get(
        &self,
        tenant: &Tenant,
        ticket: Ticket,
    ) -> Result<FlightStream<FlightData>, Status> {
        let cmd = Command::decode(&ticket.ticket, &self.shared.limits)?;
        match &cmd {
            Command::Online {
                view,
                features,
                keys,
            } => {
                let keys = json_batch(keys)?;
                let batch = self.online_lookup(tenant, view, features.as_deref(), &keys)?;
                Ok(encode(batch.schema(), stream::iter([Ok(batch)]).boxed()))
            }
            Command::Score {
                model,
                keys,
                explain,
            } => {
                let (batch, audit) = self.score(tenant, model, &json_batch(keys)?, *explain)?;
                if let Some(log) = &self.shared.audit {
                    // Queued before the answer leaves: a score the caller saw is audited.
                    log.record(audit).await.map_err(Status::from)?;
                }
                Ok(encode(batch.schema(), stream::iter([Ok(batch)]).boxed()))
            }
            Command::Historical { .. } => {
                let prepared = self.prepare_historical(tenant, &cmd).await?;
                let schema = prepared.schema.clone();
                let rows = prepared.execute_stream().await?;
                Ok(encode(
                    schema,
                    rows.map_err(|e| FlightError::ExternalError(Box::new(e)))
                        .boxed(),
                ))
            }
            Command::Scan {
                view,
                delta_version,
            } => {
                let df = self.scan_frame(tenant, view, *delta_version).await?;
                let schema = Arc::new(df.schema().as_arrow().clone());
                let rows = df
                    .execute_stream()
                    .await
                    .map_err(|e| Status::from(Error::from(e)))?;
                Ok(encode(
                    schema,
                    rows.map_err(|e| FlightError::ExternalError(Box::new(e)))
                        .boxed(),
                ))
            }
            Command::Upload {} | Command::Exchange { .. } => Err(Status::invalid_argument(
                "`upload` goes with DoPut and `exchange` with DoExchange, not DoGet",
            )),
        }
    }

    /// Read the first message of a client stream (it carries the descriptor) and give
    /// back the stream with that message in front again.
    async fn first_command(
        &self,
        mut input: Streaming<FlightData>,
    ) -> Result<(Command, BoxStream<'static, Result<FlightData, FlightError>>), Status> {
        let first = input.message().await?.ok_or_else(|| {
            Status::invalid_argument(
                "empty stream: the first message must carry a descriptor with a command",
            )
        })?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Status::invalid_argument("the first message has no flight descriptor")
        })?;
        let cmd = Command::decode(&descriptor.cmd, &self.shared.limits)?;
        // The first message may carry data too, or only the descriptor (pyarrow's
        // DoExchange); the guard drops metadata-only messages and checks every IPC
        // header (no compression, declared sizes) before arrow decodes anything.
        let rest = stream::once(async move { Ok(first) })
            .chain(input.map_err(FlightError::from))
            .boxed();
        Ok((
            cmd,
            super::ipc_guard::guarded(rest, self.shared.limits.max_upload_rows),
        ))
    }

    async fn put(
        &self,
        tenant: &Tenant,
        input: Streaming<FlightData>,
    ) -> Result<FlightStream<PutResult>, Status> {
        let (cmd, data) = self.first_command(input).await?;
        if !matches!(cmd, Command::Upload {}) {
            return Err(Status::invalid_argument("DoPut takes an `upload` command"));
        }
        let limits = &self.shared.limits;
        let mut decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let (mut rows, mut bytes) = (0usize, 0usize);
        let mut batches = Vec::new();
        while let Some(batch) = decoded.next().await {
            let batch = batch.map_err(flight_err)?;
            rows += batch.num_rows();
            bytes += batch.get_array_memory_size();
            if rows > limits.max_upload_rows || bytes > limits.max_upload_bytes {
                return Err(Status::resource_exhausted(format!(
                    "upload over the limit of {} rows or {} bytes; split the entity table",
                    limits.max_upload_rows, limits.max_upload_bytes
                )));
            }
            batches.push(batch);
        }
        if rows == 0 {
            return Err(Status::invalid_argument("the upload holds no rows"));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        {
            // Bounded per tenant in count and in bytes: the tenant's own oldest uploads
            // make room, never another tenant's. Memory is bounded by the limits times
            // the number of tenants (tokens are configured, so that is finite).
            let mut uploads = self.shared.uploads.lock().expect("uploads lock");
            let (map, order) = &mut *uploads;
            let mut mine: VecDeque<String> = order
                .iter()
                .filter(|id| map.get(*id).is_some_and(|u| u.tenant == tenant.name))
                .cloned()
                .collect();
            let mut held: usize = mine
                .iter()
                .filter_map(|id| map.get(id))
                .map(|u| u.bytes)
                .sum();
            while mine.len() >= limits.max_uploads
                || (!mine.is_empty() && held + bytes > limits.max_upload_total_bytes)
            {
                if let Some(old) = mine.pop_front() {
                    if let Some(u) = map.remove(&old) {
                        held -= u.bytes;
                    }
                    order.retain(|id| *id != old);
                }
            }
            uploads.0.insert(
                id.clone(),
                Upload {
                    tenant: tenant.name.clone(),
                    batches,
                    bytes,
                },
            );
            uploads.1.push_back(id.clone());
        }
        let meta = serde_json::json!({"upload": id, "rows": rows}).to_string();
        Ok(Box::pin(stream::iter([Ok(PutResult {
            app_metadata: Bytes::from(meta),
        })])))
    }

    async fn exchange(
        &self,
        tenant: Tenant,
        input: Streaming<FlightData>,
    ) -> Result<FlightStream<FlightData>, Status> {
        let (cmd, data) = self.first_command(input).await?;
        let Command::Exchange { view, features } = cmd else {
            return Err(Status::invalid_argument(
                "DoExchange takes an `exchange` command",
            ));
        };
        self.readable(&tenant, &view)?;
        let online = &self.shared.online;
        let schema = online.schema(&view, features.as_deref())?;
        let this = self.clone();
        let out = FlightRecordBatchStream::new_from_flight_data(data).map(move |keys| {
            let keys = keys?;
            this.online_lookup(&tenant, &view, features.as_deref(), &keys)
                .map_err(|s| FlightError::Tonic(Box::new(s)))
        });
        Ok(encode(schema, out.boxed()))
    }

    async fn action(&self, tenant: &Tenant, action: Action) -> Result<Bytes, Status> {
        let store = &self.shared.store;
        let admin = || {
            if tenant.admin {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "tenant `{}` may not run `{}`; it needs an admin token",
                    tenant.name, action.r#type
                )))
            }
        };
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        Ok(match action.r#type.as_str() {
            "health" => Bytes::from_static(b"{\"status\":\"ok\"}"),
            "list" => {
                let views: Vec<serde_json::Value> = store
                    .views()?
                    .into_iter()
                    .filter(|v| tenant.admin || v.definition.view.readable_by(&tenant.name))
                    .map(|v| {
                        let d = &v.definition;
                        serde_json::json!({
                            "view": d.name(), "version": v.version, "hash": v.hash, "entity": d.entity.name.value,
                            "keys": d.keys(), "features": d.features, "owner": d.view.owner, "form": d.view.form(),
                            "ttl": d.view.ttl.as_ref().map(|t| t.value.to_string()),
                        })
                    })
                    .collect();
                json(serde_json::json!({ "views": views }))
            }
            "model-status" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Body {
                    model: String,
                }
                if action.body.len() > self.shared.limits.max_command_bytes {
                    return Err(Status::resource_exhausted("the action body is too large"));
                }
                let body: Body = serde_json::from_slice(&action.body).map_err(|e| {
                    Status::invalid_argument(format!(
                        "model-status body: {e}; send {{\"model\": \"NAME\"}}"
                    ))
                })?;
                let (server, d, _) = self.score_deployment(tenant, &body.model)?;
                let policy = server.policy();
                let versions: Vec<serde_json::Value> = [&d.champion, &d.challenger]
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let m = s.metrics.snapshot();
                        serde_json::json!({
                            "alias": s.alias,
                            "version": s.version(),
                            "format": s.loaded.version.manifest.format,
                            "serving_seconds": s.since.elapsed().as_secs_f64(),
                            "requests": m.requests,
                            "errors": m.errors,
                            "p99_us": m.p99_us,
                            "drift": s.drift.report(policy.max_feature_psi, policy.min_requests),
                        })
                    })
                    .collect();
                json(serde_json::json!({
                    "model": server.model(),
                    "challenger_percent": d.challenger_percent,
                    "policy": policy,
                    "versions": versions,
                    "rollbacks": server.rollbacks(),
                }))
            }
            "plan" => {
                admin()?;
                json(serde_json::to_value(store.plan().await?).unwrap_or_default())
            }
            "apply" => {
                admin()?;
                let _guard = self.shared.admin.lock().await;
                json(serde_json::to_value(store.apply().await?).unwrap_or_default())
            }
            "materialize" => {
                admin()?;
                #[derive(Deserialize, Default)]
                #[serde(deny_unknown_fields)]
                struct Body {
                    #[serde(default)]
                    views: Option<Vec<String>>,
                    #[serde(default)]
                    until: Option<String>,
                    #[serde(default)]
                    full: bool,
                }
                if action.body.len() > self.shared.limits.max_command_bytes {
                    return Err(Status::resource_exhausted("the action body is too large"));
                }
                let body: Body = if action.body.is_empty() {
                    Body::default()
                } else {
                    serde_json::from_slice(&action.body).map_err(|e| Status::invalid_argument(format!("materialize body: {e}; send {{\"views\": [...], \"until\": \"RFC 3339\", \"full\": false}}")))?
                };
                let mut m = store.materialize().with_full(body.full);
                if let Some(v) = body.views {
                    m = m.with_views(v);
                }
                if let Some(u) = body.until {
                    let t = chrono::DateTime::parse_from_rfc3339(&u)
                        .map_err(|e| Status::invalid_argument(format!("`until` {u:?}: {e}")))?;
                    m = m.with_until(t.timestamp_micros());
                }
                let _guard = self.shared.admin.lock().await;
                let report = m.await?;
                for v in &report.views {
                    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&v.until) {
                        self.shared
                            .metrics
                            .lag(&v.view, (now_us() - t.timestamp_micros()) as f64 / 1e6);
                    }
                }
                json(serde_json::to_value(report).unwrap_or_default())
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action `{other}`; actions: health, list, plan, apply, materialize"
                )));
            }
        })
    }
}

const ACTIONS: [(&str, &str); 6] = [
    ("health", "Is the server up: {\"status\": \"ok\"}"),
    (
        "model-status",
        "A model's served versions, rollout policy, metrics, live feature drift and rollbacks; body {\"model\": NAME}",
    ),
    ("list", "Feature views the caller may read, as JSON"),
    ("plan", "What apply would change, as JSON (admin)"),
    ("apply", "Apply the feature repo, all or nothing (admin)"),
    (
        "materialize",
        "Materialize views into the online store; body {\"views\", \"until\", \"full\"} (admin)",
    ),
];

#[tonic::async_trait]
impl FlightService for FeatureService {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "Handshake"))]
    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: send `authorization: Bearer <token>` with every call",
        ))
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "ListFlights"))]
    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            let mut out = Vec::new();
            for v in self.shared.store.views()? {
                if !(tenant.admin || v.definition.view.readable_by(&tenant.name)) {
                    continue;
                }
                let schema = self.view_schema(&v).await?;
                let scan = Command::Scan { view: v.definition.name().to_owned(), delta_version: None };
                let meta = serde_json::json!({"view": v.definition.name(), "version": v.version, "hash": v.hash, "form": v.definition.view.form(), "owner": v.definition.view.owner});
                out.push(Ok(FlightInfo::new()
                    .try_with_schema(&schema)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .with_descriptor(FlightDescriptor::new_cmd(scan.encode()))
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(scan.encode())))
                    .with_app_metadata(meta.to_string())));
            }
            Ok::<_, Status>(Response::new(Box::pin(stream::iter(out)) as Self::ListFlightsStream))
        }
        .await;
        self.timed("ListFlights", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "GetFlightInfo"))]
    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            Ok(Response::new(
                self.info(&tenant, request.into_inner()).await?,
            ))
        }
        .await;
        self.timed("GetFlightInfo", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "PollFlightInfo"))]
    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "every query answers at once: use GetFlightInfo",
        ))
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "GetSchema"))]
    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            let info = self.info(&tenant, request.into_inner()).await?;
            Ok(Response::new(SchemaResult {
                schema: info.schema,
            }))
        }
        .await;
        self.timed("GetSchema", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "DoGet"))]
    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            Ok(Response::new(
                self.get(&tenant, request.into_inner()).await?,
            ))
        }
        .await;
        self.timed("DoGet", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "DoPut"))]
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            Ok(Response::new(
                self.put(&tenant, request.into_inner()).await?,
            ))
        }
        .await;
        self.timed("DoPut", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "DoExchange"))]
    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            Ok(Response::new(
                self.exchange(tenant, request.into_inner()).await?,
            ))
        }
        .await;
        self.timed("DoExchange", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "DoAction"))]
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let started = Instant::now();
        let r = async {
            let tenant = self.tenant(&request)?;
            let body = self.action(&tenant, request.into_inner()).await?;
            Ok(Response::new(
                Box::pin(stream::iter([Ok(arrow_flight::Result { body })])) as Self::DoActionStream,
            ))
        }
        .await;
        self.timed("DoAction", started, r)
    }

    #[tracing::instrument(name = "flight", skip_all, fields(rpc = "ListActions"))]
    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.tenant(&request)?;
        let list = ACTIONS
            .iter()
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: (*t).into(),
                    description: (*d).into(),
                })
            })
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(stream::iter(list))))
    }
}
