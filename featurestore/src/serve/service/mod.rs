//! [`FeatureService`]: the Arrow Flight service of `quiver serve`.
//!
//! | RPC | what it does |
//! |---|---|
//! | `GetFlightInfo` / `GetSchema` | schema (and a ticket) for an `online`, `historical` or `scan` command |
//! | `DoGet` | run a command carried in the ticket; stream Arrow batches |
//! | `DoPut` | upload an entity table (`upload` command); answers its id |
//! | `DoExchange` | `exchange` command: key batches in, online value batches out |
//! | `ListFlights` | the views the caller may read, with their schemas |
//! | `DoAction` | `health`, `list`, `model-status`, `explain`, `plan`, `apply`, `materialize`, `alias`; streams: `follow`, `blob` (replicas) |
//!
//! Every call needs `authorization: Bearer <token>`; a tenant reads only the views it
//! owns or that are shared with it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

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
use quiver_registry::{Deployment, ModelServer};
use tonic::{Request, Response, Status, Streaming};

use crate::Limits;
use crate::offline::parse_feature_refs;
use crate::scoring::{ScoreOptions, ScoredBatch, deployment_views, score_batch, scored_schema};
use crate::serve::auth::Tenant;
use crate::serve::command::{Command, json_batch};
use crate::serve::layers::tenant;
use crate::serve::metrics::Metrics;
use crate::serve::model_metrics::ModelServers;
use crate::serve::status::{command_status, flight_err};
use crate::serve::uploads::Uploads;
use crate::store::{AppliedView, FeatureStore};
use crate::{Error, delta};
use admin::ACTIONS;

mod admin;

pub(crate) type FlightStream<T> =
    Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// State shared by every request.
pub(crate) struct Shared {
    pub(crate) store: FeatureStore,
    /// The store's online side, opened once.
    pub(crate) online: Arc<crate::online::OnlineFeatures>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    uploads: Uploads,
    /// `apply` and `materialize` run one at a time.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Model servers by model name, created on the first `score` and kept hot-reloading.
    pub(crate) models: ModelServers,
    /// Applied views decoded once per apply: (apply id, views by name).
    pub(crate) views: std::sync::RwLock<(u64, HashMap<String, Arc<AppliedView>>)>,
    /// Where scored rows are recorded, when auditing is on.
    pub(crate) audit: Option<crate::audit::AuditLog>,
    /// Rollout policy per model; others get the default.
    policies: std::collections::BTreeMap<String, quiver_registry::RolloutPolicy>,
    /// Set when the server stops: long streams (`follow`) end on it.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// Set on a replica that follows another registry.
    pub(crate) follow: Option<crate::serve::follow::FollowState>,
    /// The key this server signs its change log with for followers (`None`: it
    /// cannot be followed).
    pub(crate) follow_key: Option<Arc<quiver_registry::SigningKey>>,
}

impl Shared {
    pub(crate) fn new(
        store: FeatureStore,
        metrics: Arc<Metrics>,
        audit: Option<crate::audit::AuditLog>,
        policies: std::collections::BTreeMap<String, quiver_registry::RolloutPolicy>,
        stopping: tokio::sync::watch::Receiver<bool>,
        follow: Option<crate::serve::follow::FollowState>,
    ) -> crate::Result<Self> {
        Ok(Self {
            audit,
            policies,
            stopping,
            follow,
            follow_key: None,
            online: store.online()?,
            limits: store.limits().clone(),
            store,
            metrics,
            uploads: Uploads::default(),
            admin: tokio::sync::Mutex::new(()),
            views: std::sync::RwLock::new((0, HashMap::new())),
            models: Arc::new(Mutex::new(HashMap::new())),
        })
    }
}

impl Shared {
    /// The online store's freshness against the applied views, now: all of them, or
    /// those `tenant` may read.
    pub(crate) fn freshness(
        &self,
        max_lag_seconds: Option<f64>,
        tenant: Option<&Tenant>,
    ) -> crate::Result<crate::online::Freshness> {
        let views =
            self.store.views()?.into_iter().filter(|v| {
                tenant.is_none_or(|t| t.admin || v.definition.view.readable_by(&t.name))
            });
        crate::online::freshness(views, &self.online, now_us(), max_lag_seconds)
    }

    /// One scheduled materialization (`--materialize-every`): incremental, under the
    /// admin lock (never concurrent with `apply` or a requested run); a failure is
    /// logged and counted, and the next tick tries again.
    pub(crate) async fn materialize_scheduled(&self) {
        let _guard = self.admin.lock().await;
        let started = std::time::Instant::now();
        match self.store.materialize().await {
            Ok(report) => {
                self.metrics.materialize_run(true);
                let changed: Vec<&str> = report
                    .views
                    .iter()
                    .filter(|v| v.mode != "up_to_date" && v.mode != "skipped")
                    .map(|v| v.view.as_str())
                    .collect();
                tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    ?changed,
                    "scheduled materialization"
                );
            }
            Err(e) => {
                self.metrics.materialize_run(false);
                tracing::warn!(
                    error = %crate::storage::redact(&e.to_string()),
                    "scheduled materialization failed; retrying on the next tick"
                );
            }
        }
    }
}

/// The Flight service over a [`FeatureStore`]. Every call reaches it through
/// [`layers`](super::layers): authenticated, counted and traced there.
#[derive(Clone)]
pub struct FeatureService {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for FeatureService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FeatureService({})", self.shared.store.root().display())
    }
}

pub(super) fn now_us() -> i64 {
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

fn too_many_keys(n: usize, limits: &Limits) -> Result<(), Status> {
    if n > limits.max_keys {
        return Err(Status::resource_exhausted(format!(
            "{n} keys in one request, over the limit of {}",
            limits.max_keys
        )));
    }
    Ok(())
}

impl FeatureService {
    /// The hot-reloading server of `model`, created on first use.
    fn model_server(&self, model: &str) -> Result<Arc<ModelServer>, Status> {
        let mut models = self.shared.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, _)) = models.get(model) {
            return Ok(s.clone());
        }
        let registry = self.shared.store.models()?;
        if registry.model(model).map_err(Error::from)?.is_none() {
            return Err(Status::not_found(format!("no registered model `{model}`")));
        }
        let policy = self.shared.policies.get(model).cloned().unwrap_or_default();
        // A follower's rollbacks go to its primary (its registry only replays the log).
        let forward = self.shared.follow.as_ref().map(|f| f.forward());
        let server =
            ModelServer::with_forward(registry, model, policy, forward).map_err(Error::from)?;
        let watch = server.watch();
        models.insert(model.to_owned(), (server.clone(), watch));
        Ok(server)
    }

    /// The deployment of `model`, after checking that `tenant` may read every view its
    /// served versions take features from.
    pub(super) fn score_deployment(
        &self,
        tenant: &Tenant,
        model: &str,
    ) -> Result<(Arc<ModelServer>, Arc<Deployment>), Status> {
        let server = self.model_server(model)?;
        let d = server.deployment();
        if d.champion.is_none() && d.challenger.is_none() {
            return Err(Status::from(Error::from(server.no_deployment())));
        }
        for v in deployment_views(&d) {
            self.readable(tenant, &v)?;
        }
        Ok((server, d))
    }

    /// Authorise, then score `keys` with the library's [`score_batch`].
    fn score(
        &self,
        tenant: &Tenant,
        model: &str,
        keys: &RecordBatch,
        explain: bool,
    ) -> Result<ScoredBatch, Status> {
        too_many_keys(keys.num_rows(), &self.shared.limits)?;
        let (server, d) = self.score_deployment(tenant, model)?;
        let opts = ScoreOptions {
            tenant: &tenant.name,
            explain,
            audit: self.shared.audit.is_some(),
            now_us: now_us(),
        };
        let scored = score_batch(&self.shared.online, &server, &d, keys, &opts)?;
        for (view, counts) in &scored.lookups {
            self.shared.metrics.values(view, counts);
        }
        Ok(scored)
    }

    fn online_lookup(
        &self,
        tenant: &Tenant,
        view: &str,
        features: Option<&[String]>,
        keys: &RecordBatch,
    ) -> Result<RecordBatch, Status> {
        self.readable(tenant, view)?;
        too_many_keys(keys.num_rows(), &self.shared.limits)?;
        let online = &self.shared.online;
        let (batch, counts) = online.get(view, features, keys, now_us())?;
        self.shared.metrics.values(view, &counts);
        Ok(batch)
    }

    fn entity_batches(
        &self,
        tenant: &Tenant,
        upload: &Option<String>,
        rows: &Option<std::collections::BTreeMap<String, Vec<serde_json::Value>>>,
    ) -> Result<Vec<RecordBatch>, Status> {
        match (upload, rows) {
            (Some(id), _) => self.shared.uploads.get(&tenant.name, id).ok_or_else(|| {
                Status::not_found(format!(
                    "no upload `{id}` for tenant `{}`; uploads expire when newer ones replace them",
                    tenant.name
                ))
            }),
            (None, Some(rows)) => Ok(vec![json_batch(rows).map_err(command_status)?]),
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
            let location = delta::Location::of_source(store.root(), s)?;
            let table = delta::open(&location, delta_version).await?;
            table
                .register(&ctx, &s.name.value)
                .await
                .map_err(Status::from)?;
        }
        store
            .udf_runtime()
            .register(&ctx, &def.udfs)
            .map_err(Status::from)?;
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
        let location = delta::Location::of_source(self.shared.store.root(), &def.sources[0])?;
        let table = delta::open(&location, None).await?;
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
        let cmd =
            Command::decode(&descriptor.cmd, &self.shared.limits.wire()).map_err(command_status)?;
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
                let keys = json_batch(keys).map_err(command_status)?;
                (
                    scored_schema(&keys.schema(), *explain),
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
        let cmd =
            Command::decode(&ticket.ticket, &self.shared.limits.wire()).map_err(command_status)?;
        match &cmd {
            Command::Online {
                view,
                features,
                keys,
            } => {
                let keys = json_batch(keys).map_err(command_status)?;
                let batch = self.online_lookup(tenant, view, features.as_deref(), &keys)?;
                Ok(encode(batch.schema(), stream::iter([Ok(batch)]).boxed()))
            }
            Command::Score {
                model,
                keys,
                explain,
            } => {
                let scored = self.score(
                    tenant,
                    model,
                    &json_batch(keys).map_err(command_status)?,
                    *explain,
                )?;
                if let Some(log) = &self.shared.audit {
                    // Queued before the answer leaves: a score the caller saw is audited.
                    log.record(scored.audit).await.map_err(Status::from)?;
                }
                let batch = scored.batch;
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
        let cmd =
            Command::decode(&descriptor.cmd, &self.shared.limits.wire()).map_err(command_status)?;
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
        let id = self
            .shared
            .uploads
            .insert(&tenant.name, batches, bytes, limits);
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
}

#[tonic::async_trait]
impl FlightService for FeatureService {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: send `authorization: Bearer <token>` with every call",
        ))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let tenant = tenant(&request)?;
        let mut out = Vec::new();
        for v in self.shared.store.views()? {
            if !(tenant.admin || v.definition.view.readable_by(&tenant.name)) {
                continue;
            }
            let schema = self.view_schema(&v).await?;
            let scan = Command::Scan {
                view: v.definition.name().to_owned(),
                delta_version: None,
            };
            let meta = serde_json::json!({"view": v.definition.name(), "version": v.version, "hash": v.hash, "form": v.definition.view.form(), "owner": v.definition.view.owner});
            out.push(Ok(FlightInfo::new()
                .try_with_schema(&schema)
                .map_err(|e| Status::internal(e.to_string()))?
                .with_descriptor(FlightDescriptor::new_cmd(scan.encode()))
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(scan.encode())))
                .with_app_metadata(meta.to_string())));
        }
        Ok::<_, Status>(Response::new(
            Box::pin(stream::iter(out)) as Self::ListFlightsStream
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(
            self.info(&tenant, request.into_inner()).await?,
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "every query answers at once: use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let tenant = tenant(&request)?;
        let info = self.info(&tenant, request.into_inner()).await?;
        Ok(Response::new(SchemaResult {
            schema: info.schema,
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(
            self.get(&tenant, request.into_inner()).await?,
        ))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(
            self.put(&tenant, request.into_inner()).await?,
        ))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(
            self.exchange(tenant, request.into_inner()).await?,
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let tenant = crate::serve::layers::tenant_or_follower(&request)?;
        let action = request.into_inner();
        if tenant.follower && !matches!(action.r#type.as_str(), "follow" | "blob" | "rollback") {
            return Err(Status::permission_denied(format!(
                "`{}` holds a replica's credential: it may run `follow`, `blob` and `rollback`, not `{}`",
                tenant.name, action.r#type
            )));
        }
        if let Some(stream) = self.streaming_action(&tenant, &action)? {
            return Ok(Response::new(stream));
        }
        let body = self.action(&tenant, action).await?;
        Ok(Response::new(
            Box::pin(stream::iter([Ok(arrow_flight::Result { body })])) as Self::DoActionStream,
        ))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        tenant(&request)?;
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
