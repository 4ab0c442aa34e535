//! `quiver serve`: one Arrow Flight server for online lookups, training sets, scans and
//! admin actions, plus a Prometheus `/metrics` endpoint.
//!
//! The wire format (JSON commands in tickets and descriptors) is documented for any
//! Flight client in `docs/flight-protocol.md`.
//!
//! ```no_run
//! # async fn run(store: quiver_featurestore::FeatureStore) -> quiver_featurestore::Result<()> {
//! use quiver_featurestore::serve::{ServeConfig, Tokens};
//! let tokens = Tokens::new().with("a-long-random-secret-token", "bank_a", true)?;
//! let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), tokens).spawn(store).await?;
//! println!("Flight on {}, metrics on {:?}", server.addr(), server.metrics_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod access;
mod auth;
mod command;
mod follow;
mod ipc_guard;
mod layers;
mod metrics;
mod model_metrics;
mod service;
mod status;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{Tenant, Tokens};
pub use command::Command;
pub use follow::FollowConfig;
pub use metrics::Metrics;
pub use service::FeatureService;

use crate::store::FeatureStore;
use crate::{Error, Result};

pub(crate) use quiver_flight_proto::ensure_crypto_provider;

/// TLS material for the server, PEM encoded.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificate chain.
    pub cert_pem: Vec<u8>,
    /// Private key.
    pub key_pem: Vec<u8>,
}

/// How to run the server. Build with [`ServeConfig::new`] and `with_*`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Flight address (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Prometheus address (`None`: no metrics endpoint).
    pub metrics_addr: Option<SocketAddr>,
    /// Bearer token `/metrics` requires (`None`: open). The metrics name every
    /// tenant's views and models, so bind the endpoint to a private address, or set a
    /// token, or both.
    pub metrics_token: Option<String>,
    /// Accepted bearer tokens.
    pub tokens: Tokens,
    /// TLS; plain HTTP/2 when `None`.
    pub tls: Option<TlsConfig>,
    /// Audit log of scored requests (a Delta table) and how it batches; `None`: off.
    pub audit: Option<(crate::audit::AuditTarget, crate::audit::AuditConfig)>,
    /// Rollout policy per model (canary share, rollback thresholds, drift threshold);
    /// models not listed get [`quiver_registry::RolloutPolicy::default`].
    pub policies: std::collections::BTreeMap<String, quiver_registry::RolloutPolicy>,
    /// Materialize the applied views into this server's online store on this schedule
    /// (incremental runs; `None`: only on request). Each replica keeps its own store
    /// fresh this way (docs/replicas.md).
    pub materialize_every: Option<std::time::Duration>,
    /// Follow another server's registry: its definitions, model versions and aliases
    /// (`None`: this server's registry is its own).
    pub follow: Option<FollowConfig>,
    /// The key this server signs its change log with for its followers (`None`: it
    /// cannot be followed).
    pub follow_key: Option<Arc<quiver_registry::SigningKey>>,
}

/// Read a policies file: a JSON object from model name to [`quiver_registry::RolloutPolicy`]
/// (every field optional), each checked; errors name the file, the model and the field.
///
/// ```json
/// {"fraud": {"challenger_percent": 5, "max_error_rate": 0.02, "max_p99_ms": 20,
///            "max_score_psi": 0.2, "max_feature_psi": 0.1}}
/// ```
pub fn load_policies(
    path: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, quiver_registry::RolloutPolicy>> {
    let map: std::collections::BTreeMap<String, serde_json::Value> =
        quiver_registry::read_json_config(path, 1 << 20).map_err(|e| {
            Error::InvalidRequest(format!(
                "{e}; expected {{\"MODEL\": {{\"challenger_percent\": 10, ...}}}}"
            ))
        })?;
    map.into_iter()
        .map(|(model, v)| Ok((model.clone(), load_policies_value(path, &v, &model)?)))
        .collect()
}

/// One model's policy from a policy file's JSON `value` (the object of its fields,
/// every field optional), checked; errors name the file and the field.
pub fn load_policies_value(
    path: &std::path::Path,
    value: &serde_json::Value,
    model: &str,
) -> Result<quiver_registry::RolloutPolicy> {
    let bad = |m: String| Error::InvalidRequest(format!("{}: {m}", path.display()));
    let p: quiver_registry::RolloutPolicy =
        quiver_registry::parse_json_config(value.to_string().as_bytes())
            .map_err(|e| bad(format!("model `{model}`: {e}")))?;
    p.validate()
        .map_err(|e| bad(format!("model `{model}`: {e}")))?;
    Ok(p)
}

impl ServeConfig {
    /// Serve on `addr` for `tokens`; metrics on the same host, port 0.
    pub fn new(addr: SocketAddr, tokens: Tokens) -> Self {
        let metrics_addr = Some(SocketAddr::new(addr.ip(), 0));
        Self {
            addr,
            metrics_addr,
            metrics_token: None,
            tokens,
            tls: None,
            audit: None,
            materialize_every: None,
            policies: Default::default(),
            follow: None,
            follow_key: None,
        }
    }

    /// Follow the registry of the server at `primary` (a follower `token` of it),
    /// pinning its follow key (`primary_key`, hex) and its `registry` id: this server
    /// imports its change log (definitions, model versions, aliases), each event
    /// checked against both, and never writes its own registry otherwise
    /// (docs/replicas.md). Start it on an empty repo folder.
    pub fn with_follow(
        mut self,
        primary: impl Into<String>,
        token: impl Into<String>,
        primary_key: impl Into<String>,
        registry: impl Into<String>,
    ) -> Self {
        self.follow = Some(FollowConfig {
            primary: primary.into(),
            token: token.into(),
            primary_key: primary_key.into(),
            registry: registry.into(),
            ca_pem: None,
        });
        self
    }

    /// Trust `ca_pem` (PEM) for the followed primary's TLS certificate (`https://`).
    pub fn with_follow_ca(mut self, ca_pem: Vec<u8>) -> Self {
        if let Some(f) = &mut self.follow {
            f.ca_pem = Some(ca_pem);
        }
        self
    }

    /// Let replicas follow this server: every event of its change log is signed with
    /// `key`, whose public half each replica pins.
    pub fn with_follow_signing_key(mut self, key: quiver_registry::SigningKey) -> Self {
        self.follow_key = Some(Arc::new(key));
        self
    }

    /// Judge `model`'s challenger by `policy` instead of the default.
    pub fn with_policy(mut self, model: &str, policy: quiver_registry::RolloutPolicy) -> Self {
        self.policies.insert(model.to_owned(), policy);
        self
    }

    /// Record every scored row in the Delta table at `path` (see [`crate::audit`]).
    pub fn with_audit(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.audit = Some((
            crate::audit::AuditTarget::Folder(path.into()),
            crate::audit::AuditConfig::default(),
        ));
        self
    }

    /// Record every scored row in the Delta table at `location`, local or on object
    /// storage (several replicas may append to one table: each commit is atomic).
    pub fn with_audit_location(mut self, location: crate::delta::Location) -> Self {
        self.audit = Some((
            crate::audit::AuditTarget::Table(location),
            crate::audit::AuditConfig::default(),
        ));
        self
    }

    /// Materialize incrementally every `every` while serving (at least 100 ms).
    pub fn with_materialize_every(mut self, every: std::time::Duration) -> Self {
        self.materialize_every = Some(every.max(std::time::Duration::from_millis(100)));
        self
    }

    /// Serve metrics on `addr`, or nowhere.
    pub fn with_metrics_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics_addr = addr;
        self
    }

    /// Require `Authorization: Bearer <token>` on `/metrics` (Prometheus'
    /// `authorization` / `bearer_token_file` settings send it). At least 16 characters.
    pub fn with_metrics_token(mut self, token: impl Into<String>) -> Result<Self> {
        let token = token.into();
        if token.len() < 16 || token.chars().any(char::is_whitespace) {
            return Err(Error::InvalidRequest(
                "the metrics token must be at least 16 characters without spaces".into(),
            ));
        }
        self.metrics_token = Some(token);
        Ok(self)
    }

    /// Serve over TLS.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bind, start serving in the background, and return a handle.
    pub async fn spawn(self, store: FeatureStore) -> Result<RunningServer> {
        for (model, p) in &self.policies {
            p.validate()
                .map_err(|e| Error::InvalidRequest(format!("policy of model `{model}`: {e}")))?;
        }
        if self.tokens.is_empty() {
            return Err(Error::InvalidRequest("no tokens: every request would be refused; give tokens (--tokens FILE or QUIVER_TOKENS) or run with --insecure-no-auth".into()));
        }
        // Opens the online store now: fails here, not on the first request, when another
        // process holds it.
        let metrics = Arc::new(Metrics::default());
        let (audit, audit_writer) = match &self.audit {
            Some((path, config)) => {
                let (log, writer) = crate::audit::AuditLog::start_target(path, config.clone())?;
                (Some(log), Some(writer))
            }
            None => (None, None),
        };
        // Request bounds are the store's: one `Limits` for everything read from outside.
        let max_message_bytes = store.limits().max_message_bytes;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (follow, rollbacks) = match &self.follow {
            Some(f) => {
                f.check()?;
                follow::check_can_follow(&store)?;
                // Definitions arrive from the primary: their storage options resolve
                // as received ones here (host options from this process's own
                // configuration; docs/object-storage.md).
                crate::storage::set_receiver_process();
                let (state, rx) = follow::FollowState::new(f.primary.clone());
                (Some(state), Some(rx))
            }
            None => (None, None),
        };
        let mut shared = service::Shared::new(
            store,
            metrics.clone(),
            audit,
            self.policies.clone(),
            stop_rx.clone(),
            follow,
        )?;
        shared.follow_key = self.follow_key.clone();
        if let Some(k) = &shared.follow_key {
            tracing::info!(
                follow_key = %k.public_key_hex(),
                registry = %shared.store.replication()?.id()?,
                "replicas may follow this server; they pin this key and registry id"
            );
        }
        let shared = Arc::new(shared);
        let svc = FeatureService {
            shared: shared.clone(),
        };
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| Error::io(self.addr.to_string(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io(self.addr.to_string(), e))?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            ensure_crypto_provider();
            let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| Error::InvalidRequest(format!("TLS configuration: {e}")))?;
        }
        metrics.register_collector(model_metrics::ModelMetrics(shared.models.clone()));
        let flight = tonic::service::interceptor::InterceptedService::new(
            FlightServiceServer::new(svc)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            layers::Authenticate(Arc::new(self.tokens)),
        );
        let mut rx = stop_rx.clone();
        // Small responses must not wait for Nagle's algorithm and delayed ACKs (40 ms).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = builder
            .layer(layers::RpcLayer(metrics.clone()))
            .add_service(flight)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            });
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "flight server stopped");
            }
        })];
        if let (Some(config), Some(rollbacks)) = (self.follow.clone(), rollbacks) {
            tasks.push(tokio::spawn(follow::run(shared.clone(), config, rollbacks)));
        }
        if let Some(every) = self.materialize_every {
            let (shared, mut rx) = (shared.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = rx.wait_for(|stop| *stop) => break,
                    }
                    shared.materialize_scheduled().await;
                }
            }));
        }
        let mut metrics_addr = None;
        if let Some(maddr) = self.metrics_addr {
            let listener = tokio::net::TcpListener::bind(maddr)
                .await
                .map_err(|e| Error::io(maddr.to_string(), e))?;
            metrics_addr = Some(
                listener
                    .local_addr()
                    .map_err(|e| Error::io(maddr.to_string(), e))?,
            );
            let m = metrics.clone();
            let shared_m = shared.clone();
            let shared_h = shared.clone();
            let token = self.metrics_token.clone();
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move |headers: axum::http::HeaderMap| {
                        let (m, shared, token) = (m.clone(), shared_m.clone(), token.clone());
                        async move {
                            if let Some(want) = &token {
                                let got = headers
                                    .get(axum::http::header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.strip_prefix("Bearer "))
                                    .unwrap_or("");
                                if !auth::same_secret(got, want) {
                                    return Err((
                                        axum::http::StatusCode::UNAUTHORIZED,
                                        [("www-authenticate", "Bearer")],
                                        "a bearer token is required for /metrics\n",
                                    ));
                                }
                            }
                            // Lag and versions from the watermarks, whoever materialized.
                            if let Ok(f) = shared.freshness(None, None) {
                                m.freshness(&f);
                            }
                            let text = m.encode();
                            Ok((
                                [(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                text,
                            ))
                        }
                    }),
                )
                .route(
                    "/healthz",
                    axum::routing::get(move |query: axum::extract::RawQuery| {
                        let shared = shared_h.clone();
                        async move { healthz(&shared, query.0.as_deref()) }
                    }),
                );
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }));
        }
        tracing::info!(%addr, ?metrics_addr, tls = self.tls.is_some(), "serving");
        Ok(RunningServer {
            addr,
            metrics_addr,
            stop: stop_tx,
            tasks,
            metrics,
            audit_writer,
        })
    }
}

/// `GET /healthz`: 200 `ok` while the process serves. With `?max_lag_seconds=N` (what
/// a load balancer's health check asks), 503 when an online view is behind: not
/// materialized, an older applied version, or its event-time bound more than N seconds
/// old. The body counts views but does not name them: the endpoint carries no token.
fn healthz(
    shared: &service::Shared,
    query: Option<&str>,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    String,
) {
    use axum::http::StatusCode;
    let text = [("content-type", "application/json")];
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return (
            StatusCode::OK,
            [("content-type", "text/plain")],
            "ok".into(),
        );
    };
    let max = query
        .strip_prefix("max_lag_seconds=")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0);
    let Some(max) = max else {
        return (
            StatusCode::BAD_REQUEST,
            text,
            serde_json::json!({"error": "the only parameter is max_lag_seconds=N (N >= 0)"})
                .to_string(),
        );
    };
    match shared.freshness(Some(max), None) {
        Ok(f) => {
            let behind = f.views.iter().filter(|v| v.behind).count();
            let worst = f
                .views
                .iter()
                .filter_map(|v| v.lag_seconds)
                .fold(0.0f64, f64::max);
            let body = serde_json::json!({
                "status": f.status, "views": f.views.len(), "behind": behind,
                "max_lag_seconds": max, "worst_lag_seconds": worst,
            })
            .to_string();
            let code = if f.ok() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, text, body)
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            serde_json::json!({"status": "error", "error": crate::storage::redact(&e.to_string())})
                .to_string(),
        ),
    }
}

/// A running server; dropping it stops it too.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    audit_writer: Option<crate::audit::AuditWriter>,
}

impl RunningServer {
    /// The Flight address (with the port picked when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stop accepting, let requests in flight finish, and wait (at most 10 s).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
        }
        // The service (and its audit handle) is gone with the server task: the writer
        // commits what is queued and stops.
        if let Some(w) = self.audit_writer.take() {
            w.finish(std::time::Duration::from_secs(30)).await;
        }
    }

    /// Serve until `stop` completes, then shut down gracefully.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) {
        stop.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }

    /// Wait until SIGTERM or Ctrl-C, then shut down gracefully. Register the handlers
    /// before announcing the server (see [`shutdown_signal`]) when a supervisor may
    /// signal as soon as it sees the announcement.
    pub async fn run_until_signal(self) {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = tokio::signal::ctrl_c().await;
                        return self.shutdown().await;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// A future that completes on SIGTERM or Ctrl-C. The handlers are installed when this
/// is called, not when the future is first polled.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
