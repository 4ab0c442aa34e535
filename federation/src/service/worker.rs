//! A bank's worker: dials the coordinator, trains on the bank's own training set, and
//! answers each secure-aggregation stage. Its data and its update never leave it
//! unmasked; it enforces its own privacy budget whatever the coordinator asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::coordinator::RunSummary;
use super::pki::{RosterEntry, TlsFiles, coordinator_endpoint, read_identity};
use super::rpc::{CoordinatorClient, PollRequest, Submission, task_kind};
use super::{BankReport, PrivacyPolicy, RoundKind, RoundPlan, ServiceError};
use crate::aggregate::{BankDpEncoding, FeatureMoments, UpdateEncoding};
use crate::ledger::PrivacyLedger;
use crate::protocol::secagg::{
    AdvertiseKeys, Client, ClientPolicy, EncryptedShare, Params, Roster, RoundId, SurvivorList,
    UnmaskRequest,
};
use crate::train::{Dataset, Device, LocalTrainer, Standardizer, split_rows};
use crate::wire::Wire;

/// A worker's configuration (`quiver-fed worker --config FILE`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
        let mut data = quiver_featurestore::models::read_training_data(path, &cols)?;
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

struct RoundState {
    round: u64,
    client: Client,
    input: Vec<u32>,
}

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
        load: impl FnOnce(&[String], &str) -> Result<BankData, ServiceError>,
    ) -> Result<WorkerOutcome, ServiceError> {
        cfg.privacy.budget.validate()?;
        cfg.device.probe()?;
        if !(0.0..0.9).contains(&cfg.holdout) {
            return Err(ServiceError::Config(format!(
                "holdout {}; 0 to 0.9",
                cfg.holdout
            )));
        }
        let id = cfg
            .roster
            .iter()
            .position(|b| b.name == cfg.name)
            .ok_or_else(|| {
                ServiceError::Config(format!("`{}` is not in its own roster", cfg.name))
            })? as u32;
        let roster = Arc::new(Roster::new(
            cfg.roster
                .iter()
                .map(|b| {
                    hex::decode(&b.public_key).map_err(|_| {
                        ServiceError::Config(format!("roster: bad public_key of `{}`", b.name))
                    })
                })
                .collect::<Result<_, _>>()?,
        )?);
        let policy = cfg
            .secagg
            .unwrap_or_else(|| ClientPolicy::for_roster(cfg.roster.len()));
        let identity = Arc::new(read_identity(&base.join(&cfg.identity))?);
        let ledger_path = base.join(
            cfg.ledger
                .clone()
                .unwrap_or_else(|| format!("{}.privacy-ledger.json", cfg.name).into()),
        );
        let dataset = cfg.dataset.clone().unwrap_or_else(|| "default".into());
        // Locked for the worker's life; what earlier runs spent counts against the budget.
        let mut ledger = PrivacyLedger::open(&ledger_path)?;
        let delta = cfg.privacy.budget.delta;
        let spent = ledger.dataset(&dataset);
        let mut epsilon = spent.record_epsilon(delta)?;
        let mut bank_epsilon = spent.bank_epsilon(delta)?;
        tracing::info!(ledger = %ledger_path.display(), dataset, epsilon, bank_epsilon, "privacy ledger opened");
        let mut client = connect(&cfg, base).await?;
        let mut rng = match cfg.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        let mut load = Some(load);
        let mut data: Option<(BankData, BankData)> = None; // (train, holdout)
        // The training rows on the device, for the run's statistics and model family.
        let mut prepared: Option<(Standardizer, LocalTrainer)> = None;
        let mut joined = 0u64;
        let mut state: Option<RoundState> = None;
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
                    t
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
            match task.kind {
                task_kind::WAIT => continue,
                task_kind::FAILED => return Err(ServiceError::Failed(task.message)),
                task_kind::DONE => {
                    let summary: RunSummary = serde_json::from_str(&task.plan_json)
                        .map_err(|e| ServiceError::Failed(format!("final summary: {e}")))?;
                    let holdout_auc = match (&data, &summary.standardizer) {
                        (Some((_, test)), Some(st)) if !test.labels.is_empty() => {
                            let ds = Dataset::prepare(
                                summary.features.clone(),
                                &test.columns,
                                &test.labels,
                                st,
                            )?;
                            summary.architecture.auc(&summary.params, &ds)
                        }
                        _ => f64::NAN,
                    };
                    return Ok(WorkerOutcome {
                        summary,
                        epsilon,
                        bank_epsilon: (bank_epsilon > 0.0).then_some(bank_epsilon),
                        holdout_auc,
                        rounds_joined: joined,
                    });
                }
                task_kind::STAGE if left == Some(task.round) => {
                    // Wait for the next round instead of busy-polling this one. The
                    // coordinator hands the task out again on every poll until the
                    // stage ends, so poll seldom.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                task_kind::STAGE => {}
                k => {
                    return Err(ServiceError::Failed(format!("unknown task kind {k}")));
                }
            }
            // The bank's side of one protocol stage (synchronous: training and crypto).
            let stage_span = tracing::info_span!(
                "federation_stage",
                bank = %cfg.name,
                round = task.round,
                stage = task.stage
            );
            let entered = stage_span.enter();
            let answer: Result<(Vec<u8>, String), ServiceError> = (|| match task.stage {
                0 => {
                    let mut plan: RoundPlan = serde_json::from_str(&task.plan_json)
                        .map_err(|e| ServiceError::Failed(format!("plan: {e}")))?;
                    if plan.kind == RoundKind::Train {
                        plan.architecture.validate(plan.features.len())?;
                        let np = plan.architecture.num_params(plan.features.len());
                        plan.global =
                            crate::wire::decode_params(&task.payload, np).map_err(wire)?;
                    }
                    if plan.roster != cfg.roster {
                        return Err(ServiceError::Failed(
                            "the plan's roster is not this bank's roster; refusing".into(),
                        ));
                    }
                    let params = Params {
                        clients: plan.roster.len(),
                        threshold: plan.threshold,
                        neighbours: plan.neighbours,
                        len: plan.len,
                    };
                    // Before anything is trained or spent: a plan below this bank's own
                    // secure-aggregation policy is refused.
                    params.validate()?;
                    policy.check(&params)?;
                    if data.is_none() {
                        let loader = load.take().expect("loaded once");
                        let all = loader(&plan.features, &plan.label)?;
                        let (train, test) = split_rows(all.labels.len(), cfg.holdout, 0x5eed);
                        data = Some((all.subset(&train), all.subset(&test)));
                    }
                    let (train, _) = data.as_ref().expect("loaded");
                    let n = plan.roster.len();
                    let mut report = BankReport {
                        epsilon,
                        epsilon_next: epsilon,
                        delta: cfg.privacy.budget.delta,
                        training_set: train.training_set.clone(),
                        views: train.views.clone(),
                        bank_epsilon: plan.bank_dp.map(|_| bank_epsilon),
                        refused: None,
                    };
                    let input = match plan.kind {
                        RoundKind::Moments => {
                            FeatureMoments::new(plan.features.len(), plan.max_rows, n)?
                                .encode(&train.columns)?
                        }
                        RoundKind::Train => {
                            let st = plan.standardizer.clone().ok_or_else(|| {
                                ServiceError::Failed("train plan without statistics".into())
                            })?;
                            if prepared.as_ref().map(|p| (&p.0, p.1.architecture()))
                                != Some((&st, plan.architecture))
                            {
                                let ds = Dataset::prepare(
                                    plan.features.clone(),
                                    &train.columns,
                                    &train.labels,
                                    &st,
                                )?;
                                let trainer = LocalTrainer::new(cfg.device, plan.architecture, ds)?;
                                prepared = Some((st, trainer));
                            }
                            let trainer = &prepared.as_ref().expect("prepared").1;
                            let rows = trainer.data().rows();
                            // Everything this dataset has spent, in every run so far.
                            let mut spend = ledger.dataset(&dataset);
                            let q = plan.local.sample_rate(rows);
                            let steps = plan.local.local_steps;
                            // Every guarantee this round spends on is checked against
                            // this bank's own budget before any of it is spent.
                            let b = cfg.privacy.budget;
                            let exhausted =
                                |unit, spent, next| crate::dp::DpError::BudgetExhausted {
                                    unit,
                                    spent,
                                    next,
                                    budget: b.epsilon,
                                    delta: b.delta,
                                };
                            let bank_dp = match plan.bank_dp {
                                Some(dp) => {
                                    let enc = BankDpEncoding::new(
                                        plan.global.len(),
                                        dp,
                                        plan.threshold,
                                        n,
                                    )?;
                                    let (l1, l2, mu) = enc.accounting();
                                    let after =
                                        spend.bank.epsilon_after_skellam(l1, l2, mu, 1, b.delta)?;
                                    if after > b.epsilon {
                                        return Err(
                                            exhausted("bank-level", bank_epsilon, after).into()
                                        );
                                    }
                                    Some((enc, after))
                                }
                                None => None,
                            };
                            let record = match &plan.local.dp {
                                None if cfg.privacy.require_dp => {
                                    return Err(ServiceError::Failed(
                                            "the plan trains without DP-SGD and this bank requires it; refusing the round".into(),
                                        ));
                                }
                                None => None,
                                Some(dp) => {
                                    let after = spend.record.epsilon_after(
                                        q,
                                        dp.noise_multiplier,
                                        steps,
                                        b.delta,
                                    )?;
                                    if after > b.epsilon {
                                        return Err(
                                            exhausted("record-level", epsilon, after).into()
                                        );
                                    }
                                    Some((dp.noise_multiplier, after))
                                }
                            };
                            if let Some((sigma, after)) = record {
                                spend.record.compose_subsampled_gaussian(q, sigma, steps)?;
                                report.epsilon = after;
                                report.epsilon_next =
                                    spend.record.epsilon_after(q, sigma, steps, b.delta)?;
                            }
                            if let Some((enc, after)) = &bank_dp {
                                let (l1, l2, mu) = enc.accounting();
                                spend.bank.compose_skellam(l1, l2, mu, 1)?;
                                report.bank_epsilon = Some(*after);
                            }
                            // Spent before anything leaves the bank, and durable: a
                            // crash from here on overstates the spend, never forgets it.
                            if record.is_some() || bank_dp.is_some() {
                                ledger.commit(&dataset, spend, &plan.session, plan.round)?;
                                if let Some((_, after)) = record {
                                    epsilon = after;
                                }
                                if let Some((_, after)) = &bank_dp {
                                    bank_epsilon = *after;
                                }
                            }
                            let u = trainer.train(&plan.global, &plan.local, &mut rng)?;
                            match bank_dp {
                                Some((enc, _)) => {
                                    let (w, clipped) = enc.encode(&u.delta, &mut rng)?;
                                    if clipped {
                                        // Under bank-level DP no count leaves the bank:
                                        // this log line is where clipping is reported.
                                        tracing::info!(
                                            round = plan.round,
                                            clip_norm = plan.bank_dp.map(|d| d.clip_norm),
                                            "update clipped to bank_dp.clip_norm"
                                        );
                                    }
                                    w
                                }
                                None => {
                                    let enc = UpdateEncoding::new(
                                        plan.global.len(),
                                        plan.update_clip,
                                        plan.max_rows,
                                        n,
                                    )?;
                                    let (w, clipped) = enc.encode(&u, rows as u64)?;
                                    if clipped > 0 {
                                        tracing::info!(
                                            clipped,
                                            "update values clipped to ±update_clip (counted in the aggregate)"
                                        );
                                    }
                                    w
                                }
                            }
                        }
                    };
                    let session: [u8; 16] = hex::decode(&plan.session)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| ServiceError::Failed("bad session id".into()))?;
                    let rid = RoundId {
                        session,
                        round: plan.round,
                    };
                    let (c, msg) =
                        Client::new(id, identity.clone(), roster.clone(), params, policy, rid)?;
                    state = Some(RoundState {
                        round: plan.round,
                        client: c,
                        input,
                    });
                    Ok((
                        msg.encode(),
                        serde_json::to_string(&report).expect("report"),
                    ))
                }
                s => {
                    let st = state
                        .as_mut()
                        .filter(|st| st.round == task.round)
                        .ok_or_else(|| {
                            ServiceError::Failed(format!(
                                "stage {s} of a round this bank did not start"
                            ))
                        })?;
                    let out = match s {
                        1 => st
                            .client
                            .share_keys(
                                &Vec::<AdvertiseKeys>::decode(&task.payload).map_err(wire)?,
                            )?
                            .encode(),
                        2 => {
                            let shares =
                                Vec::<EncryptedShare>::decode(&task.payload).map_err(wire)?;
                            st.client.masked_input(&shares, &st.input)?.encode()
                        }
                        3 => st
                            .client
                            .consistency(&SurvivorList::decode(&task.payload).map_err(wire)?)?
                            .encode(),
                        4 => st
                            .client
                            .unmask(&UnmaskRequest::decode(&task.payload).map_err(wire)?)?
                            .encode(),
                        _ => return Err(ServiceError::Failed(format!("stage {s} does not exist"))),
                    };
                    Ok((out, String::new()))
                }
            })();
            drop(entered);
            match answer {
                Ok((payload, report_json)) => {
                    let ack = client
                        .submit(Submission {
                            bank: cfg.name.clone(),
                            round: task.round,
                            stage: task.stage,
                            payload,
                            report_json,
                        })
                        .await
                        .map_err(|e| ServiceError::Transport(e.to_string()))?;
                    if !ack.accepted {
                        tracing::warn!(round = task.round, stage = task.stage, reason = %ack.reason, "the coordinator rejected this bank's message");
                    } else if task.stage == 4 {
                        joined += 1;
                    }
                }
                Err(ServiceError::Dp(e)) if task.stage == 0 => {
                    // Say why, in the clear (public facts only), and sit the round out.
                    tracing::warn!(round = task.round, error = %e, "privacy budget: sitting this round out");
                    state = None;
                    let train = data.as_ref().map(|(t, _)| t);
                    let report = BankReport {
                        epsilon,
                        epsilon_next: epsilon,
                        delta: cfg.privacy.budget.delta,
                        // Lineage stays whole: the training set still fed earlier rounds.
                        training_set: train.and_then(|t| t.training_set.clone()),
                        views: train.map(|t| t.views.clone()).unwrap_or_default(),
                        bank_epsilon: (bank_epsilon > 0.0).then_some(bank_epsilon),
                        refused: Some(e.to_string()),
                    };
                    let _ = client
                        .submit(Submission {
                            bank: cfg.name.clone(),
                            round: task.round,
                            stage: 0,
                            payload: Vec::new(),
                            report_json: serde_json::to_string(&report).expect("report"),
                        })
                        .await;
                }
                Err(e) => {
                    // Sit this round out: the protocol treats a silent bank as dropped.
                    tracing::warn!(round = task.round, stage = task.stage, error = %e, "leaving the round");
                    state = None;
                    left = Some(task.round);
                }
            }
        }
    }
}

fn wire(e: crate::wire::WireError) -> ServiceError {
    ServiceError::Failed(e.to_string())
}

async fn connect(cfg: &WorkerConfig, base: &Path) -> Result<CoordinatorClient, ServiceError> {
    let endpoint = coordinator_endpoint(&cfg.coordinator, &cfg.tls.read(base)?)?;
    let deadline =
        Instant::now() + Duration::from_secs_f64(cfg.connect_timeout_s.clamp(1.0, 86_400.0));
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(CoordinatorClient::new(ch)),
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
