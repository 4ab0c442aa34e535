//! A bank's worker: dials the coordinator, trains on the bank's own training set, and
//! answers each secure-aggregation stage. Its data and its update never leave it
//! unmasked; it enforces its own privacy budget whatever the coordinator asks.

mod session;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::coordinator::RunSummary;
use super::pki::{RosterEntry, TlsFiles, coordinator_endpoint};
use super::rpc::{self, CoordinatorClient, PollRequest, Stage, Submission, Work, pb};
use super::{PrivacyPolicy, ServiceError};
use crate::protocol::secagg::ClientPolicy;
use crate::train::Device;
use session::BankSession;

/// A worker's configuration (`quiver-fed worker --config FILE`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// This bank's name (the common name of its certificate).
    pub name: String,
    /// The coordinator, `https://host:port`.
    pub coordinator: String,
    /// TLS: the federation CA, this bank's client certificate and key.
    pub tls: TlsFiles,
    /// This bank's Ed25519 identity (PKCS#8).
    pub identity: PathBuf,
    /// The federation's roster; plans with another roster are refused.
    pub roster: Vec<RosterEntry>,
    /// The bank's training set (Parquet, as `quiver history` writes it).
    pub training_set: PathBuf,
    /// Share of rows held out (never trained on) to evaluate the final model.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// The budget this bank enforces on itself.
    #[serde(default)]
    pub privacy: PrivacyPolicy,
    /// The bank's privacy ledger: every run's spend per dataset, so the budget bounds
    /// ε across runs and restarts. Default: `<name>.privacy-ledger.json` beside the
    /// config. One worker per ledger.
    #[serde(default)]
    pub ledger: Option<PathBuf>,
    /// The dataset the budget protects, a key in the ledger. Training sets rebuilt
    /// from the same customers' records must use the same name, or the budget would
    /// restart. Default: `default` (one budget for everything this bank trains on).
    #[serde(default)]
    pub dataset: Option<String>,
    /// What this bank requires of every secure-aggregation round (threshold,
    /// neighbours, peers, and the colluding banks it must withstand), whatever the
    /// coordinator's plan says. Default: `ClientPolicy::for_roster(roster size)`.
    #[serde(default)]
    pub secagg: Option<ClientPolicy>,
    /// Give up when the coordinator cannot be reached for this long.
    #[serde(default = "default_connect_s")]
    pub connect_timeout_s: f64,
    /// Seed of local sampling and of DP noise (default: from the OS). A seed makes
    /// the noise reproducible by whoever knows it: for tests only.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Where local training computes: `cpu` (default), `cpu-batched`, or `cuda:N` with
    /// a build that has the `gpu` feature. The privacy guarantee is the same on each.
    #[serde(default)]
    pub device: Device,
}

/// An empty worker config: set at least the name, coordinator, TLS files, identity,
/// roster and training set.
impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            coordinator: String::new(),
            tls: TlsFiles::default(),
            identity: PathBuf::new(),
            roster: Vec::new(),
            training_set: PathBuf::new(),
            holdout: default_holdout(),
            privacy: PrivacyPolicy::default(),
            ledger: None,
            dataset: None,
            secagg: None,
            connect_timeout_s: default_connect_s(),
            seed: None,
            device: Device::default(),
        }
    }
}

fn default_holdout() -> f64 {
    0.2
}

fn default_connect_s() -> f64 {
    120.0
}

/// What a worker ends with.
#[derive(Debug, Clone)]
pub struct WorkerOutcome {
    /// The coordinator's summary (final model, history).
    pub summary: RunSummary,
    /// ε this bank spent (record-level DP-SGD).
    pub epsilon: f64,
    /// Bank-level ε this bank accounted, when the run used `bank_dp`.
    pub bank_epsilon: Option<f64>,
    /// AUC of the final model on this bank's held-out rows.
    pub holdout_auc: f64,
    /// Rounds this bank contributed to.
    pub rounds_joined: u64,
}

/// The training set of one bank, raw.
#[derive(Debug, Clone)]
pub struct BankData {
    /// Raw feature columns, in the plan's order.
    pub columns: Vec<Vec<f64>>,
    /// Labels.
    pub labels: Vec<f64>,
    /// Lineage id of the training set, if the file has one.
    pub training_set: Option<String>,
    /// Views behind it (`view@version`).
    pub views: Vec<String>,
}

impl BankData {
    /// Read `features` and `label` from a Parquet training set.
    pub fn load(path: &Path, features: &[String], label: &str) -> Result<Self, ServiceError> {
        let mut cols: Vec<String> = features.to_vec();
        cols.push(label.to_string());
        let mut data = quiver_featurestore::model_inputs::read_training_data(
            path,
            &cols,
            &quiver_featurestore::Limits::default(),
        )?;
        let labels = data.columns.remove(label).expect("requested");
        let columns = features
            .iter()
            .map(|f| data.columns.remove(f).expect("requested"))
            .collect();
        Ok(Self {
            columns,
            labels,
            training_set: data.lineage_id,
            views: data.views,
        })
    }

    /// Rows `idx` only.
    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            columns: self
                .columns
                .iter()
                .map(|c| idx.iter().map(|&i| c[i]).collect())
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            training_set: self.training_set.clone(),
            views: self.views.clone(),
        }
    }
}

/// The worker.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Run until the coordinator ends the run; relative paths resolve against `base`.
    pub async fn run(cfg: WorkerConfig, base: &Path) -> Result<WorkerOutcome, ServiceError> {
        super::check_bank_name(&cfg.name)?;
        let path = base.join(&cfg.training_set);
        // The columns are known from the first plan; read the file's schema lazily.
        Self::run_with(
            cfg.clone(),
            base,
            move |features: &[String], label: &str| BankData::load(&path, features, label),
        )
        .await
    }

    /// Run with a data loader called once with the plan's features and label.
    pub async fn run_with(
        cfg: WorkerConfig,
        base: &Path,
        load: impl FnOnce(&[String], &str) -> Result<BankData, ServiceError> + Send + 'static,
    ) -> Result<WorkerOutcome, ServiceError> {
        let mut session = BankSession::open(cfg.clone(), base, Box::new(load))?;
        let mut client = connect(&cfg, base).await?;
        // The round this bank left after an error: its later tasks are not attempted.
        let mut left: Option<u64> = None;
        let mut last_ok = Instant::now();
        let patience = Duration::from_secs_f64(cfg.connect_timeout_s.clamp(1.0, 86_400.0));
        loop {
            let task = match client
                .poll(PollRequest {
                    bank: cfg.name.clone(),
                    wait_ms: 5_000,
                })
                .await
            {
                Ok(t) => {
                    last_ok = Instant::now();
                    t.into_inner()
                }
                Err(e) => {
                    if last_ok.elapsed() > patience {
                        return Err(ServiceError::Transport(format!(
                            "the coordinator did not answer for {} s: {e}",
                            patience.as_secs()
                        )));
                    }
                    if e.code() == tonic::Code::PermissionDenied {
                        return Err(ServiceError::Transport(e.message().to_string()));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let round = task.round;
            let work = match task.work {
                None => {
                    return Err(ServiceError::Failed(
                        "the coordinator sent a task this worker does not know (a newer protocol?)"
                            .into(),
                    ));
                }
                Some(Work::Wait(_)) => continue,
                Some(Work::Failed(f)) => return Err(ServiceError::Failed(f.message)),
                Some(Work::Done(d)) => {
                    let summary: RunSummary = serde_json::from_str(&d.summary_json)
                        .map_err(|e| ServiceError::Failed(format!("final summary: {e}")))?;
                    return session.outcome(summary);
                }
                Some(_) if left == Some(round) => {
                    // Wait for the next round instead of busy-polling this one. The
                    // coordinator hands the task out again on every poll until the
                    // stage ends, so poll seldom.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Some(w) => w,
            };
            let stage = rpc::task_stage(&work).unwrap_or_default();
            // The bank's side of one protocol stage (synchronous: training and crypto).
            let answer = tracing::info_span!("federation_stage", bank = %cfg.name, round, stage)
                .in_scope(|| answer(&mut session, round, work));
            match answer {
                Ok(stage_msg) => {
                    let ack = client
                        .submit(Submission {
                            bank: cfg.name.clone(),
                            round,
                            stage: Some(stage_msg),
                        })
                        .await
                        .map_err(|e| ServiceError::Transport(e.to_string()))?
                        .into_inner();
                    if !ack.accepted {
                        tracing::warn!(round, stage, reason = %ack.reason, "the coordinator rejected this bank's message");
                    } else if stage == 4 {
                        session.joined += 1;
                    }
                }
                Err(ServiceError::Dp(e)) if stage == 0 => {
                    // Say why, in the clear (public facts only), and sit the round out.
                    tracing::warn!(round, error = %e, "privacy budget: sitting this round out");
                    let report_json = session.refusal(&e);
                    let _ = client
                        .submit(Submission {
                            bank: cfg.name.clone(),
                            round,
                            stage: Some(Stage::SitOut(pb::SitOut { report_json })),
                        })
                        .await;
                }
                Err(e) => {
                    // Sit this round out: the protocol treats a silent bank as dropped.
                    tracing::warn!(round, stage, error = %e, "leaving the round");
                    session.leave_round();
                    left = Some(round);
                }
            }
        }
    }
}

/// This bank's message for one stage: the task's input checked and converted, the
/// session's stage method, its output converted back.
fn answer(session: &mut BankSession, round: u64, work: Work) -> Result<Stage, ServiceError> {
    use rpc::convert::list;
    let bad = |e: rpc::MessageError| ServiceError::Failed(e.to_string());
    Ok(match work {
        Work::Start(s) => {
            let (keys, report_json) = session.plan(&s.plan_json, s.global)?;
            Stage::Join(pb::Join {
                keys: Some(keys.into()),
                report_json,
            })
        }
        Work::Keys(k) => {
            let adverts = list("advertised keys", k.adverts).map_err(bad)?;
            Stage::ShareKeys(session.share_keys(round, &adverts)?.into())
        }
        Work::Shares(s) => {
            let shares = list("encrypted shares", s.shares).map_err(bad)?;
            Stage::Masked(session.masked_input(round, &shares)?.into())
        }
        Work::Survivors(l) => {
            let list = l.try_into().map_err(bad)?;
            Stage::Consistency(session.consistency(round, &list)?.into())
        }
        Work::Unmask(r) => {
            let req = r.try_into().map_err(bad)?;
            Stage::Unmask(session.unmask(round, &req)?.into())
        }
        Work::Wait(_) | Work::Done(_) | Work::Failed(_) => {
            return Err(ServiceError::Failed("not a stage's task".into()));
        }
    })
}

async fn connect(cfg: &WorkerConfig, base: &Path) -> Result<CoordinatorClient, ServiceError> {
    let endpoint = coordinator_endpoint(&cfg.coordinator, &cfg.tls.read(base)?)?;
    let deadline =
        Instant::now() + Duration::from_secs_f64(cfg.connect_timeout_s.clamp(1.0, 86_400.0));
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(rpc::client(ch)),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "coordinator not reachable yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(ServiceError::Transport(format!(
                    "cannot reach the coordinator at {}: {e}",
                    cfg.coordinator
                )));
            }
        }
    }
}
