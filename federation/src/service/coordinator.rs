//! The coordinator: serves tasks to the banks, drives each round's stages under
//! deadlines, and updates the global model from the securely aggregated sums.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::pki::{RosterEntry, TlsFiles, TlsPem};
use super::rpc::{self, Ack, PollRequest, StatusReply, StatusRequest, Submission, Task, task_kind};
use super::{BankReport, RoundKind, RoundPlan, ServiceError};
use crate::aggregate::{
    BankDp, BankDpEncoding, FeatureMoments, ServerOptimizer, Strategy, UpdateEncoding,
};
use crate::dp::{Budget, RdpAccountant};
use crate::protocol::ProtocolError;
use crate::protocol::secagg::{
    AdvertiseKeys, ConsistencySig, MaskedInput, Params, Roster, RoundId, Server, ShareKeys,
    UnmaskResponse,
};
use crate::train::{Architecture, LocalConfig, Standardizer};
use crate::wire::Wire;

/// Stage deadlines, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    /// Stage 0 of each round, which includes local training.
    pub train_s: f64,
    /// Each later stage.
    pub stage_s: f64,
    /// How long to wait for banks before round 0.
    pub join_s: f64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            train_s: 300.0,
            stage_s: 30.0,
            join_s: 120.0,
        }
    }
}

/// Where and how to register the final model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Feature repo whose registry takes the model (its views resolve the inputs).
    pub repo: PathBuf,
    /// Model name.
    pub model: String,
    /// Feature references (`view:feature`), in the model's input order.
    pub features: Vec<String>,
    /// Ed25519 signing key of the registrar (as `quiver registry keygen` writes).
    pub key: PathBuf,
    /// Signer name (trusted in that registry).
    pub signer: String,
}

/// The coordinator's configuration (`quiver-fed coordinator --config FILE`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC address (port 0 picks one).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` over plain HTTP (port 0 picks one); none by default.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS: the CA that signed the banks' client certificates, and this server's.
    pub tls: TlsFiles,
    /// The banks, in client-id order.
    pub roster: Vec<RosterEntry>,
    /// Model inputs (training-set columns), in order.
    pub features: Vec<String>,
    /// Label column (0/1 or boolean).
    pub label: String,
    /// Model family.
    pub architecture: Architecture,
    /// Training rounds.
    pub rounds: u64,
    /// SecAgg threshold: shares of a bank's secrets needed to rebuild them; a round
    /// goes on with `threshold + 1` banks. Default: the smallest that withstands the
    /// coordinator colluding with fewer than a third of the banks (`2t > neighbours +
    /// colluders`, docs/federation.md). Each bank refuses plans below its own policy.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// SecAgg+ neighbours (default: all, plain SecAgg).
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Aggregation strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Local training, including DP-SGD.
    #[serde(default)]
    pub local: LocalConfig,
    /// Update clip per value.
    #[serde(default = "default_update_clip")]
    pub update_clip: f64,
    /// Largest rows per bank.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Run-wide budget: training stops before any bank would pass it (record-level
    /// ε as the banks report it, and bank-level ε when `bank_dp` is set).
    #[serde(default)]
    pub budget: Budget,
    /// Bank-level DP on the aggregate (distributed Skellam noise), on top of or
    /// instead of DP-SGD.
    #[serde(default)]
    pub bank_dp: Option<BankDp>,
    /// Stage deadlines.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Seed of the initial model.
    #[serde(default)]
    pub seed: u64,
    /// Register the final model here.
    #[serde(default)]
    pub register: Option<RegisterConfig>,
    /// Write the final model artifact and the run summary into this folder.
    #[serde(default)]
    pub output: Option<PathBuf>,
}

fn default_update_clip() -> f64 {
    1.0
}

fn default_max_rows() -> u64 {
    10_000_000
}

impl CoordinatorConfig {
    /// Check everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |m: String| Err(ServiceError::Config(m));
        let n = self.roster.len();
        let mut names = BTreeSet::new();
        for b in &self.roster {
            super::check_bank_name(&b.name)?;
            if !names.insert(&b.name) {
                return bad(format!("bank `{}` is listed twice in roster", b.name));
            }
            let key = hex::decode(&b.public_key).unwrap_or_default();
            if key.len() != 32 {
                return bad(format!(
                    "roster: bank `{}` public_key must be 64 hex digits (Ed25519)",
                    b.name
                ));
            }
        }
        self.params(1)?.validate()?;
        if self.features.is_empty() {
            return bad("features: at least one".into());
        }
        self.architecture
            .validate(self.features.len())
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        if !(1..=10_000).contains(&self.rounds) {
            return bad(format!("rounds {}; 1 to 10000", self.rounds));
        }
        self.strategy.validate().map_err(ServiceError::Config)?;
        self.local
            .validate()
            .map_err(|e| ServiceError::Config(format!("local: {e}")))?;
        if self.local.prox_mu != self.strategy.prox_mu() {
            return bad(format!(
                "local.prox_mu {} must equal the strategy's mu {}",
                self.local.prox_mu,
                self.strategy.prox_mu()
            ));
        }
        if !(self.update_clip.is_finite() && self.update_clip > 0.0) {
            return bad(format!("update_clip {} must be positive", self.update_clip));
        }
        if self.max_rows == 0 || self.max_rows >= 1 << 24 {
            return bad(format!(
                "max_rows {}; 1 to 16777215 (counts need headroom for {n} banks)",
                self.max_rows
            ));
        }
        self.budget.validate()?;
        if let Some(dp) = self.bank_dp {
            let np = self.architecture.num_params(self.features.len());
            BankDpEncoding::new(np, dp, self.params(1)?.threshold, n)?;
        }
        let d = &self.deadlines;
        for (name, v) in [
            ("train_s", d.train_s),
            ("stage_s", d.stage_s),
            ("join_s", d.join_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return bad(format!("deadlines.{name} {v}; 0 to 86400 seconds"));
            }
        }
        Ok(())
    }

    fn params(&self, len: usize) -> Result<Params, ServiceError> {
        let n = self.roster.len();
        let neighbours = self.neighbours.unwrap_or(n.saturating_sub(1));
        let threshold = self.threshold.unwrap_or_else(|| {
            crate::protocol::secagg::default_threshold(
                neighbours,
                crate::protocol::secagg::default_colluders(n),
            )
        });
        Ok(Params {
            clients: n,
            threshold,
            neighbours,
            len,
        })
    }
}

/// One finished round, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round (0: feature statistics).
    pub round: u64,
    /// Banks whose input is in the sum.
    pub contributors: Vec<String>,
    /// Banks that dropped or were excluded.
    pub dropped: Vec<String>,
    /// Rows over the contributors.
    pub rows: u64,
    /// Row-weighted log-loss of the global model before the round (train rounds).
    pub loss_before: Option<f64>,
    /// Largest ε spent by any bank after the round.
    pub epsilon: f64,
    /// Bank-level ε after the round (with `bank_dp`).
    #[serde(default)]
    pub bank_epsilon: Option<f64>,
    /// Update values clipped by the quantizer.
    pub clipped_values: u64,
    /// Examples whose gradient DP-SGD clipped.
    pub clipped_examples: u64,
    /// Wall time.
    pub seconds: f64,
    /// Wall time of each protocol stage: keys (includes the banks' local work),
    /// shares, masked input, consistency, unmasking.
    #[serde(default)]
    pub stage_seconds: Vec<f64>,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub session: String,
    /// Training rounds completed.
    pub rounds: u64,
    /// Why it stopped: `rounds`, `budget`, or an error.
    pub stopped: String,
    /// Largest ε spent by any bank, and δ.
    pub epsilon: f64,
    /// δ of the budget.
    pub delta: f64,
    /// Bank-level ε spent (with `bank_dp`), at the same δ.
    #[serde(default)]
    pub bank_epsilon: Option<f64>,
    /// Every round.
    pub history: Vec<RoundRecord>,
    /// The final model (registry JSON artifact).
    pub model: serde_json::Value,
    /// Model family.
    pub architecture: Architecture,
    /// Model inputs, in order.
    pub features: Vec<String>,
    /// Parameters of the final model (standardized space).
    pub params: Vec<f32>,
    /// The global standardization.
    pub standardizer: Option<Standardizer>,
    /// Where the model was registered (`model@version`).
    pub registered: Option<String>,
    /// Training sets and views the banks reported.
    pub lineage: BTreeMap<String, BankReport>,
}

impl RunSummary {
    /// The rounds as a text table: round, banks in the sum, rows, loss before the
    /// round (`stats` for round 0), ε after it (and bank-level ε with `bank_dp`),
    /// seconds, dropped banks. Under bank-level DP rows and loss are not released and
    /// show as `-`.
    pub fn history_table(&self) -> String {
        let bank = self.history.iter().any(|h| h.bank_epsilon.is_some());
        let mut t = format!(
            "{:>5} {:>6} {:>8} {:>9} {:>7}{} {:>8}  dropped\n",
            "round",
            "banks",
            "rows",
            "loss",
            "ε",
            if bank {
                format!(" {:>7}", "bank ε")
            } else {
                String::new()
            },
            "seconds"
        );
        for h in &self.history {
            let rows = if h.round > 0 && h.rows == 0 {
                "-".to_string()
            } else {
                h.rows.to_string()
            };
            let loss = match (h.round, h.loss_before) {
                (0, _) => "stats".to_string(),
                (_, Some(l)) => format!("{l:.4}"),
                (_, None) => "-".to_string(),
            };
            let bank_col = match (bank, h.bank_epsilon) {
                (false, _) => String::new(),
                (true, Some(e)) => format!(" {e:>7.3}"),
                (true, None) => format!(" {:>7}", "-"),
            };
            t += &format!(
                "{:>5} {:>6} {:>8} {:>9} {:>7.3}{} {:>8.2}  {}\n",
                h.round,
                h.contributors.len(),
                rows,
                loss,
                h.epsilon,
                bank_col,
                h.seconds,
                h.dropped.join(",")
            );
        }
        t
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Running,
    Done(Box<RunSummary>),
    Failed(String),
}

struct State {
    phase: Phase,
    round: u64,
    stage: u32,
    plan_json: String,
    /// Per client: the current stage's input; removed once it answered.
    tasks: BTreeMap<u32, Vec<u8>>,
    server: Option<Server>,
    last_seen: BTreeMap<u32, f64>,
    reports: BTreeMap<u32, BankReport>,
    history: Vec<RoundRecord>,
    rejected: Vec<String>,
    rejected_total: u64,
    /// The current round's stage wall times so far.
    stage_seconds: Vec<f64>,
    /// Protocol payload bytes per stage, received and sent.
    received: [u64; 5],
    sent: [u64; 5],
}

struct Shared {
    cfg: CoordinatorConfig,
    names: Vec<String>,
    roster: Arc<Roster>,
    state: Mutex<State>,
    /// Woken when new tasks are out (pollers) or a submission came in (the driver).
    tasks_out: Notify,
    answered: Notify,
    started: Instant,
}

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

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
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
                plan_json: String::new(),
                tasks: BTreeMap::new(),
                server: None,
                last_seen: BTreeMap::new(),
                reports: BTreeMap::new(),
                history: Vec::new(),
                rejected: Vec::new(),
                rejected_total: 0,
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
    let svc = rpc::CoordinatorServer::new(Arc::new(Rpc(shared)));
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

fn metrics_text(s: &Shared) -> String {
    let st = lock(s);
    let now = s.started.elapsed().as_secs_f64();
    let snapshot = super::metrics::Snapshot {
        state: match st.phase {
            Phase::Running => "running",
            Phase::Done(_) => "done",
            Phase::Failed(_) => "failed",
        },
        round: st.round,
        stage: st.stage,
        history: &st.history,
        banks: s
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), st.last_seen.get(&(i as u32)).map(|t| now - t)))
            .collect(),
        epsilon: st.history.iter().map(|h| h.epsilon).fold(0.0, f64::max),
        bank_epsilon: st
            .history
            .iter()
            .filter_map(|h| h.bank_epsilon)
            .reduce(f64::max),
        rejected: st.rejected_total,
        received: st.received,
        sent: st.sent,
    };
    super::metrics::render(&snapshot)
}

fn status_json(s: &Shared) -> serde_json::Value {
    let st = lock(s);
    let now = s.started.elapsed().as_secs_f64();
    let (state, message) = match &st.phase {
        Phase::Running => ("running", None),
        Phase::Done(sum) => ("done", Some(sum.stopped.clone())),
        Phase::Failed(m) => ("failed", Some(m.clone())),
    };
    let banks: Vec<_> = s
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let id = i as u32;
            serde_json::json!({
                "bank": n,
                "seconds_since_seen": st.last_seen.get(&id).map(|t| now - t),
                "epsilon": st.reports.get(&id).map(|r| r.epsilon),
                "waiting_on": st.tasks.contains_key(&id),
            })
        })
        .collect();
    serde_json::json!({
        "state": state,
        "message": message,
        "round": st.round,
        "rounds": s.cfg.rounds,
        "stage": st.stage,
        "budget": s.cfg.budget,
        "banks": banks,
        "history": st.history,
        "rejected": st.rejected,
    })
}

struct Rpc(Arc<Shared>);

impl Rpc {
    /// The client id of the bank named in a request, checked against the TLS client
    /// certificate's common name.
    fn caller<T>(&self, req: &tonic::Request<T>, bank: &str) -> Result<u32, tonic::Status> {
        let id = self.0.names.iter().position(|n| n == bank).ok_or_else(|| {
            tonic::Status::permission_denied(format!("`{bank}` is not in the roster"))
        })?;
        let certs = req
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        let cn = certs.first().and_then(|c| super::pki::common_name(c));
        if cn.as_deref() != Some(bank) {
            return Err(tonic::Status::permission_denied(format!(
                "the client certificate is for {:?}, not `{bank}`",
                cn.unwrap_or_default()
            )));
        }
        Ok(id as u32)
    }
}

#[tonic::async_trait]
impl rpc::CoordinatorRpc for Rpc {
    async fn poll(
        &self,
        req: tonic::Request<PollRequest>,
    ) -> Result<tonic::Response<Task>, tonic::Status> {
        let id = self.caller(&req, &req.get_ref().bank)?;
        let wait = Duration::from_millis(u64::from(req.get_ref().wait_ms.min(10_000)));
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.0.tasks_out.notified();
            {
                let mut st = lock(&self.0);
                st.last_seen
                    .insert(id, self.0.started.elapsed().as_secs_f64());
                match &st.phase {
                    Phase::Failed(m) => {
                        return Ok(tonic::Response::new(Task {
                            kind: task_kind::FAILED,
                            message: m.clone(),
                            ..Default::default()
                        }));
                    }
                    Phase::Done(sum) => {
                        let task = Task {
                            kind: task_kind::DONE,
                            round: sum.rounds,
                            plan_json: serde_json::to_string(&**sum).unwrap_or_default(),
                            ..Default::default()
                        };
                        st.tasks.remove(&id);
                        return Ok(tonic::Response::new(task));
                    }
                    Phase::Running => {
                        if let Some(p) = st.tasks.get(&id).cloned() {
                            let (stage, n) = (st.stage as usize, p.len() as u64);
                            if let Some(b) = st.sent.get_mut(stage) {
                                *b += n;
                            }
                            return Ok(tonic::Response::new(Task {
                                kind: task_kind::STAGE,
                                round: st.round,
                                stage: st.stage,
                                payload: p,
                                plan_json: if st.stage == 0 {
                                    st.plan_json.clone()
                                } else {
                                    String::new()
                                },
                                message: String::new(),
                            }));
                        }
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Ok(tonic::Response::new(Task {
                    kind: task_kind::WAIT,
                    ..Default::default()
                }));
            }
        }
    }

    async fn submit(
        &self,
        req: tonic::Request<Submission>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        let id = self.caller(&req, &req.get_ref().bank)?;
        let sub = req.into_inner();
        let mut st = lock(&self.0);
        if let Some(b) = st.received.get_mut(sub.stage as usize) {
            *b += sub.payload.len() as u64;
        }
        let refuse = |st: &mut State, reason: String| {
            tracing::warn!(bank = %sub.bank, round = sub.round, stage = sub.stage, %reason, "submission rejected");
            st.rejected_total += 1;
            if st.rejected.len() < 1000 {
                st.rejected.push(format!(
                    "{} round {} stage {}: {reason}",
                    sub.bank, sub.round, sub.stage
                ));
            }
            Ok(tonic::Response::new(Ack {
                accepted: false,
                reason,
            }))
        };
        if st.phase != Phase::Running || sub.round != st.round || sub.stage != st.stage {
            let r = format!(
                "the coordinator is at round {} stage {}, not round {} stage {}",
                st.round, st.stage, sub.round, sub.stage
            );
            return refuse(&mut st, r);
        }
        if !st.tasks.contains_key(&id) {
            return refuse(
                &mut st,
                "no task of this stage is open for this bank".into(),
            );
        }
        if sub.stage == 0 && sub.payload.is_empty() {
            // A bank sitting the round out, saying why (its budget): public facts only.
            return match serde_json::from_str::<BankReport>(&sub.report_json) {
                Ok(r) if r.refused.is_some() && sub.report_json.len() <= 64 << 10 => {
                    tracing::warn!(bank = %sub.bank, reason = ?r.refused, "bank sits this round out");
                    st.reports.insert(id, r);
                    st.tasks.remove(&id);
                    self.0.answered.notify_one();
                    Ok(tonic::Response::new(Ack {
                        accepted: true,
                        reason: String::new(),
                    }))
                }
                _ => refuse(
                    &mut st,
                    "an empty stage-0 message must carry a refusal report".into(),
                ),
            };
        }
        let result: Result<(), String> = (|| {
            let server = st.server.as_mut().ok_or("no round is open")?;
            let e = |e: crate::wire::WireError| e.to_string();
            let p = |e: ProtocolError| e.to_string();
            match sub.stage {
                0 => server
                    .receive_keys(AdvertiseKeys::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                1 => server
                    .receive_shares(ShareKeys::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                2 => server
                    .receive_masked(MaskedInput::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                3 => server
                    .receive_consistency(ConsistencySig::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                4 => server
                    .receive_unmask(UnmaskResponse::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                s => Err(format!("stage {s} does not exist")),
            }
        })();
        if let Err(reason) = result {
            // The sender is treated as dropped for this round.
            st.tasks.remove(&id);
            self.0.answered.notify_one();
            return refuse(&mut st, reason);
        }
        if sub.stage == 0 && !sub.report_json.is_empty() {
            if sub.report_json.len() > 64 << 10 {
                return refuse(&mut st, "report over 64 KiB".into());
            }
            match serde_json::from_str::<BankReport>(&sub.report_json) {
                Ok(r) => {
                    st.reports.insert(id, r);
                }
                Err(e) => return refuse(&mut st, format!("report: {e}")),
            }
        }
        st.tasks.remove(&id);
        self.0.answered.notify_one();
        Ok(tonic::Response::new(Ack {
            accepted: true,
            reason: String::new(),
        }))
    }

    async fn status(
        &self,
        _req: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusReply>, tonic::Status> {
        Ok(tonic::Response::new(StatusReply {
            json: status_json(&self.0).to_string(),
        }))
    }
}

/// Open a stage: hand out `inputs` and wait until every bank answered or the
/// deadline passed.
async fn run_stage(s: &Shared, stage: u32, inputs: BTreeMap<u32, Vec<u8>>, deadline: Duration) {
    {
        let mut st = lock(s);
        st.stage = stage;
        st.tasks = inputs;
    }
    s.tasks_out.notify_waiters();
    let started = Instant::now();
    let end = started + deadline;
    loop {
        let answered = s.answered.notified();
        {
            // Done when every open task belongs to a bank that never connected.
            let st = lock(s);
            if st.tasks.keys().all(|i| !st.last_seen.contains_key(i)) {
                break;
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let late: Vec<String> = lock(s)
                .tasks
                .keys()
                .map(|i| s.names[*i as usize].clone())
                .collect();
            tracing::warn!(
                stage,
                ?late,
                "stage deadline passed; late banks drop out of this round"
            );
            break;
        }
        let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), answered).await;
    }
    let mut st = lock(s);
    st.tasks.clear();
    st.stage_seconds.push(started.elapsed().as_secs_f64());
}

fn encode_map<T: Wire>(m: BTreeMap<u32, T>) -> BTreeMap<u32, Vec<u8>> {
    m.into_iter().map(|(k, v)| (k, v.encode())).collect()
}

/// One secure aggregation; returns the sum, contributors and dropped.
#[tracing::instrument(name = "federation_round", skip_all, fields(round, kind = ?plan.kind))]
async fn aggregate(
    s: &Shared,
    round: u64,
    session: [u8; 16],
    plan: &RoundPlan,
) -> Result<crate::protocol::secagg::Aggregate, ServiceError> {
    let params = s.cfg.params(plan.len)?;
    let rid = RoundId { session, round };
    let server = Server::new(params, rid, s.roster.clone())?;
    let d = s.cfg.deadlines;
    {
        let mut st = lock(s);
        st.round = round;
        st.server = Some(server);
        st.stage_seconds.clear();
        st.plan_json = serde_json::to_string(plan).expect("plans serialise");
    }
    // Stage 0 hands every bank the plan (JSON) and the global parameters (binary).
    let params = crate::wire::encode_params(&plan.global);
    let all: BTreeMap<u32, Vec<u8>> = (0..s.names.len() as u32)
        .map(|i| (i, params.clone()))
        .collect();
    run_stage(s, 0, all, Duration::from_secs_f64(d.train_s)).await;
    let stage_d = Duration::from_secs_f64(d.stage_s);
    let keys = with_server(s, |sv| sv.close_keys())?;
    run_stage(s, 1, encode_map(keys), stage_d).await;
    let shares = with_server(s, |sv| sv.close_shares())?;
    run_stage(s, 2, encode_map(shares), stage_d).await;
    let list = with_server(s, |sv| sv.close_masked())?;
    let to: BTreeMap<u32, Vec<u8>> = list.survivors.iter().map(|i| (*i, list.encode())).collect();
    run_stage(s, 3, to, stage_d).await;
    let req = with_server(s, |sv| sv.close_consistency())?;
    let to: BTreeMap<u32, Vec<u8>> = req.survivors.iter().map(|i| (*i, req.encode())).collect();
    run_stage(s, 4, to, stage_d).await;
    let agg = with_server(s, |sv| sv.finish())?;
    lock(s).server = None;
    Ok(agg)
}

fn with_server<T>(
    s: &Shared,
    f: impl FnOnce(&mut Server) -> Result<T, ProtocolError>,
) -> Result<T, ServiceError> {
    let mut st = lock(s);
    let sv = st
        .server
        .as_mut()
        .ok_or_else(|| ServiceError::Failed("no open round".into()))?;
    Ok(f(sv)?)
}

async fn drive(s: Arc<Shared>) -> Result<RunSummary, ServiceError> {
    let out = drive_inner(&s).await;
    let mut st = lock(&s);
    match &out {
        Ok(sum) => st.phase = Phase::Done(Box::new(sum.clone())),
        Err(e) => st.phase = Phase::Failed(e.to_string()),
    }
    // Every bank gets the final task.
    st.tasks = (0..s.names.len() as u32).map(|i| (i, Vec::new())).collect();
    drop(st);
    s.tasks_out.notify_waiters();
    out
}

async fn drive_inner(s: &Shared) -> Result<RunSummary, ServiceError> {
    let cfg = &s.cfg;
    let mut session = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut session)
        .map_err(|_| ServiceError::Failed("random source failed".into()))?;
    let session_hex = hex::encode(session);
    let n = s.names.len();
    // Wait (bounded) for the banks to show up before round 0.
    let join_end = Instant::now() + Duration::from_secs_f64(cfg.deadlines.join_s);
    let need = cfg.params(1)?.threshold;
    while Instant::now() < join_end && lock(s).last_seen.len() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if lock(s).last_seen.len() < need {
        return Err(ServiceError::Failed(format!(
            "{} of {n} banks connected within {} s; the threshold is {need}",
            lock(s).last_seen.len(),
            cfg.deadlines.join_s
        )));
    }
    let dim = cfg.features.len();
    let mut plan = RoundPlan {
        session: session_hex.clone(),
        round: 0,
        kind: RoundKind::Moments,
        roster: cfg.roster.clone(),
        threshold: cfg.params(1)?.threshold,
        neighbours: cfg.params(1)?.neighbours,
        len: 0,
        features: cfg.features.clone(),
        label: cfg.label.clone(),
        architecture: cfg.architecture,
        max_rows: cfg.max_rows,
        update_clip: cfg.update_clip,
        local: cfg.local.clone(),
        standardizer: None,
        global: Vec::new(),
        strategy: cfg.strategy,
        bank_dp: cfg.bank_dp,
    };
    // Round 0: feature statistics.
    let moments = FeatureMoments::new(dim, cfg.max_rows, n)?;
    plan.len = moments.layout().len();
    let t = Instant::now();
    let agg = aggregate(s, 0, session, &plan).await?;
    let (standardizer, rows) = moments.decode(&agg.sum, agg.contributors.len());
    record(s, 0, &agg, rows, None, 0, 0, None, t);
    tracing::info!(
        rows,
        banks = agg.contributors.len(),
        "global feature statistics aggregated"
    );

    let np = cfg.architecture.num_params(dim);
    let enc = UpdateEncoding::new(np, cfg.update_clip, cfg.max_rows, n)?;
    // Bank-level DP: the coordinator accounts it itself from public parameters (the
    // banks do too, and refuse rounds past their own budgets).
    let mut bank_dp = cfg
        .bank_dp
        .map(|dp| BankDpEncoding::new(np, dp, plan.threshold, n))
        .transpose()?
        .map(|enc| (enc, RdpAccountant::for_skellam()));
    let mut global = cfg.architecture.init(dim, cfg.seed);
    let mut opt = ServerOptimizer::new(cfg.strategy);
    plan.kind = RoundKind::Train;
    plan.len = match &bank_dp {
        Some((b, _)) => b.len(),
        None => enc.layout().len(),
    };
    plan.standardizer = Some(standardizer.clone());
    let mut stopped = "rounds".to_string();
    let mut done = 0;
    for round in 1..=cfg.rounds {
        if let Some((b, acc)) = &bank_dp {
            let (l1, l2, mu) = b.accounting();
            let next = acc.epsilon_after_skellam(l1, l2, mu, 1, cfg.budget.delta)?;
            if next > cfg.budget.epsilon {
                stopped = format!(
                    "budget: one more round would spend bank-level ε = {next:.3} > {}",
                    cfg.budget.epsilon
                );
                break;
            }
        }
        plan.round = round;
        plan.global = global.clone();
        let t = Instant::now();
        let agg = match aggregate(s, round, session, &plan).await {
            Ok(a) => a,
            Err(e) => {
                // Banks that refused for their budget end the run with the model so far.
                let refused: Vec<String> = lock(s)
                    .reports
                    .iter()
                    .filter_map(|(i, r)| {
                        r.refused
                            .as_ref()
                            .map(|why| format!("{}: {why}", s.names[*i as usize]))
                    })
                    .collect();
                if refused.is_empty() {
                    return Err(e);
                }
                stopped = format!("budget: {}", refused.join("; "));
                break;
            }
        };
        let (sum, bank_eps) = match &mut bank_dp {
            Some((b, acc)) => {
                let (l1, l2, mu) = b.accounting();
                acc.compose_skellam(l1, l2, mu, 1)?;
                let eps = acc.epsilon(cfg.budget.delta)?.0;
                // Only the noised mean update is released: no rows, loss or counts.
                let delta = b.decode(&agg.sum, agg.contributors.len());
                (
                    crate::aggregate::RoundSum {
                        delta,
                        rows: 0,
                        loss_before: f64::NAN,
                        examples: 0,
                        clipped_examples: 0,
                        clipped_values: 0,
                    },
                    Some(eps),
                )
            }
            None => (enc.decode(&agg.sum, agg.contributors.len()), None),
        };
        opt.step(&mut global, &sum.delta);
        if global.iter().any(|v| !v.is_finite()) {
            return Err(ServiceError::Failed(format!(
                "the global model diverged at round {round}; lower local.learning_rate"
            )));
        }
        record(
            s,
            round,
            &agg,
            sum.rows,
            (!sum.loss_before.is_nan()).then_some(sum.loss_before),
            sum.clipped_values,
            sum.clipped_examples,
            bank_eps,
            t,
        );
        done = round;
        let st = lock(s);
        let next = st
            .reports
            .values()
            .map(|r| r.epsilon_next)
            .fold(0.0, f64::max);
        let eps = st.history.last().map_or(0.0, |h| h.epsilon);
        drop(st);
        tracing::info!(
            round,
            loss_before = sum.loss_before,
            epsilon = eps,
            bank_epsilon = bank_eps,
            "round done"
        );
        if round < cfg.rounds && next > cfg.budget.epsilon {
            stopped = format!(
                "budget: one more round would spend ε = {next:.3} > {}",
                cfg.budget.epsilon
            );
            break;
        }
    }
    let model = cfg
        .architecture
        .export(&global, &cfg.features, &standardizer);
    let st = lock(s);
    let history = st.history.clone();
    let lineage: BTreeMap<String, BankReport> = st
        .reports
        .iter()
        .map(|(i, r)| (s.names[*i as usize].clone(), r.clone()))
        .collect();
    drop(st);
    let mut summary = RunSummary {
        session: session_hex,
        rounds: done,
        stopped,
        epsilon: history.iter().map(|h| h.epsilon).fold(0.0, f64::max),
        delta: cfg.budget.delta,
        bank_epsilon: bank_dp
            .as_ref()
            .map(|(_, acc)| acc.epsilon(cfg.budget.delta).map(|e| e.0))
            .transpose()?,
        history,
        model: serde_json::from_slice(&model.to_json()).expect("model JSON"),
        architecture: cfg.architecture,
        features: cfg.features.clone(),
        params: global,
        standardizer: Some(standardizer),
        registered: None,
        lineage,
    };
    if let Some(reg) = &cfg.register {
        summary.registered = Some(register(reg, &summary, &model)?);
    }
    if let Some(dir) = &cfg.output {
        std::fs::create_dir_all(dir).map_err(|e| super::io_err(dir, e))?;
        let p = dir.join("model.json");
        std::fs::write(&p, model.to_json()).map_err(|e| super::io_err(&p, e))?;
        let p = dir.join("summary.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&summary).expect("summary"))
            .map_err(|e| super::io_err(&p, e))?;
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn record(
    s: &Shared,
    round: u64,
    agg: &crate::protocol::secagg::Aggregate,
    rows: u64,
    loss_before: Option<f64>,
    clipped_values: u64,
    clipped_examples: u64,
    bank_epsilon: Option<f64>,
    t: Instant,
) {
    let mut st = lock(s);
    let epsilon = st.reports.values().map(|r| r.epsilon).fold(0.0, f64::max);
    let name = |i: &u32| s.names[*i as usize].clone();
    let rec = RoundRecord {
        round,
        contributors: agg.contributors.iter().map(name).collect(),
        // Every bank of the roster not in the sum: dropped mid-round, late, or
        // sitting the round out (its budget).
        dropped: s
            .names
            .iter()
            .enumerate()
            .filter(|(i, _)| !agg.contributors.contains(&(*i as u32)))
            .map(|(_, n)| n.clone())
            .collect(),
        rows,
        loss_before,
        epsilon,
        bank_epsilon,
        clipped_values,
        clipped_examples,
        seconds: t.elapsed().as_secs_f64(),
        stage_seconds: st.stage_seconds.clone(),
    };
    st.history.push(rec);
}

/// Register the final model with lineage: a `federation_run` node with the banks,
/// rounds and ε, fed by the banks' training sets.
fn register(
    reg: &RegisterConfig,
    sum: &RunSummary,
    model: &quiver_registry::NativeModel,
) -> Result<String, ServiceError> {
    use quiver_registry::{Edge, Node, NodeKind, Registration, SigningKey};
    let store = quiver_featurestore::FeatureStore::open(&reg.repo)?;
    let refs = quiver_featurestore::offline::parse_feature_refs(&reg.features.join(","))?;
    let input = store.input_schema(&refs, false)?;
    let key = SigningKey::load(&reg.key)?;
    let run_id = format!("federation_run:{}", sum.session);
    let banks: Vec<&String> = sum.lineage.keys().collect();
    let node = Node::new(NodeKind::FederationRun, &sum.session, None)
        .with_attr("banks", serde_json::json!(banks))
        .with_attr("rounds", sum.rounds)
        .with_attr("epsilon", sum.epsilon)
        .with_attr("delta", sum.delta)
        .with_attr("stopped", sum.stopped.clone());
    let node = match sum.bank_epsilon {
        Some(e) => node.with_attr("bank_epsilon", e),
        None => node,
    };
    let mut nodes = vec![node];
    let mut edges = Vec::new();
    for (bank, r) in &sum.lineage {
        if let Some(ts) = &r.training_set {
            nodes.push(
                Node::new(
                    NodeKind::TrainingSet,
                    ts.trim_start_matches("training_set:"),
                    None,
                )
                .with_attr("bank", bank.clone()),
            );
            edges.push(Edge {
                from: ts.clone(),
                to: run_id.clone(),
                relation: "trained_on".into(),
            });
        }
    }
    store.models()?.lineage().record(&nodes, &edges)?;
    let mut r = Registration::new(&reg.model, model.to_json(), input)
        .description(&format!(
            "federated over {} banks, {} rounds, ε = {:.3} (δ = {:e})",
            banks.len(),
            sum.rounds,
            sum.epsilon,
            sum.delta
        ))
        .metric("epsilon", sum.epsilon)
        .metric("rounds", sum.rounds as f64)
        .tag("federation_run", &sum.session)
        .upstream(&run_id);
    if let Some(loss) = sum.history.last().and_then(|h| h.loss_before) {
        r = r.metric("federated_loss", loss);
    }
    if let Some(e) = sum.bank_epsilon {
        r = r.metric("bank_epsilon", e);
    }
    let mv = store.models()?.register(r, &reg.signer, &key)?;
    Ok(format!("{}@{}", mv.manifest.model, mv.manifest.version))
}
