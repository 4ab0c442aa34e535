//! The coordinator: serves tasks to the banks, drives each round's stages under
//! deadlines, and updates the global model from the securely aggregated sums.
//!
//! | module | owns |
//! |---|---|
//! | `config` | [`CoordinatorConfig`] and its checks |
//! | `state` | the shared state, the status document, the metrics snapshot |
//! | `handlers` | the gRPC handlers (decode, check the caller, hand out tasks, take submissions) |
//! | `round` | the round driver and model registration |
//! | `summary` | [`RoundRecord`], [`RunSummary`] |
//! | `metrics` | the Prometheus text of a state snapshot |
//! | this file | [`Coordinator`]: start, wait, finish; the gRPC and metrics servers |

mod config;
mod handlers;
mod metrics;
mod round;
mod state;
mod summary;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

pub use config::{CoordinatorConfig, Deadlines, RegisterConfig};
pub use summary::{RoundRecord, RunSummary};

use super::ServiceError;
use super::pki::TlsPem;
use super::rpc;
use crate::protocol::secagg::Roster;
use handlers::Rpc;
use round::drive;
use state::{Phase, Shared, State, lock, metrics_text, status_json};

/// A running coordinator.
pub struct Coordinator {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    driver: Option<tokio::task::JoinHandle<Result<RunSummary, ServiceError>>>,
    outcome: Option<Result<RunSummary, ServiceError>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Coordinator({})", self.addr)
    }
}

impl Coordinator {
    /// Validate `cfg`, bind, and start serving and driving the run. Relative TLS
    /// paths resolve against `base`.
    pub async fn start(
        cfg: CoordinatorConfig,
        base: &std::path::Path,
    ) -> Result<Self, ServiceError> {
        cfg.validate()?;
        let pem = cfg.tls.read(base)?;
        let names: Vec<String> = cfg.roster.iter().map(|b| b.name.clone()).collect();
        let roster = Arc::new(Roster::new(
            cfg.roster
                .iter()
                .map(|b| hex::decode(&b.public_key).expect("validated"))
                .collect(),
        )?);
        let shared = Arc::new(Shared {
            cfg,
            names,
            roster,
            state: Mutex::new(State {
                phase: Phase::Running,
                round: 0,
                stage: 0,
                tasks: BTreeMap::new(),
                server: None,
                last_seen: BTreeMap::new(),
                reports: BTreeMap::new(),
                history: Vec::new(),
                rejected: Vec::new(),
                rejected_total: 0,
                excluded: BTreeMap::new(),
                stage_seconds: Vec::new(),
                received: [0; 5],
                sent: [0; 5],
            }),
            tasks_out: Notify::new(),
            answered: Notify::new(),
            started: Instant::now(),
        });
        let (addr, stop, server) = serve(shared.clone(), &pem).await?;
        tracing::info!(%addr, banks = shared.names.len(), "coordinator listening");
        let metrics_addr = match shared.cfg.metrics_listen {
            Some(m) => Some(serve_metrics(shared.clone(), m, stop.subscribe()).await?),
            None => None,
        };
        let driver = tokio::spawn(drive(shared.clone()));
        Ok(Self {
            addr,
            metrics_addr,
            shared,
            stop,
            driver: Some(driver),
            outcome: None,
            server,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of `/metrics`, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The status document `Status` returns.
    pub fn status(&self) -> serde_json::Value {
        status_json(&self.shared)
    }

    /// Wait for the run to end; the gRPC and metrics servers keep serving until
    /// [`Coordinator::finish`].
    pub async fn wait(&mut self) -> Result<RunSummary, ServiceError> {
        if let Some(driver) = self.driver.take() {
            self.outcome = Some(match driver.await {
                Ok(r) => r,
                Err(e) => Err(ServiceError::Failed(format!("driver task: {e}"))),
            });
        }
        match self.outcome.as_ref().expect("set above") {
            Ok(s) => Ok(s.clone()),
            Err(e) => Err(ServiceError::Failed(e.to_string())),
        }
    }

    /// Wait for the run to end, keep serving a grace period so banks fetch the final
    /// model, then stop the servers.
    pub async fn finish(mut self, grace: Duration) -> Result<RunSummary, ServiceError> {
        let _ = self.wait().await;
        let out = self.outcome.take().expect("waited");
        // Let banks poll the final task, bounded by the grace period.
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let pending = {
                let st = lock(&self.shared);
                st.tasks.len()
            };
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        out
    }
}

/// Listen on `listen` (port 0 picks one); returns the bound address.
async fn bind(
    listen: SocketAddr,
    what: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr), ServiceError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServiceError::Transport(format!("bind {what} {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServiceError::Transport(e.to_string()))?;
    Ok((listener, addr))
}

async fn serve(
    shared: Arc<Shared>,
    pem: &TlsPem,
) -> Result<(SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>), ServiceError> {
    super::pki::ensure_crypto_provider();
    let (listener, addr) = bind(shared.cfg.listen, "gRPC").await?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&pem.cert, &pem.key))
        .client_ca_root(tonic::transport::Certificate::from_pem(&pem.ca));
    let mut builder = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| ServiceError::Config(format!("TLS: {e}")))?;
    let (stop, mut rx) = watch::channel(false);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let svc = rpc::server(Rpc(shared));
    let fut = builder
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.wait_for(|s| *s).await;
        });
    let handle = tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::error!(error = %e, "coordinator server stopped");
        }
    });
    Ok((addr, stop, handle))
}

/// Serve `/metrics` on plain HTTP until `stop` turns true.
async fn serve_metrics(
    shared: Arc<Shared>,
    listen: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, ServiceError> {
    let (listener, addr) = bind(listen, "metrics").await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = shared.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics_text(&shared),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%addr, "Prometheus metrics on /metrics");
    Ok(addr)
}
