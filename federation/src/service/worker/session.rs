//! [`BankSession`]: a bank's side of a federated run, one method per protocol stage,
//! mirroring `secagg::Client`. It owns the bank's data, its trainer, its privacy
//! ledger and the open round's secure-aggregation client; the worker's loop only polls,
//! calls the stage's method and submits the answer.

use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng;

use super::{BankData, WorkerConfig, WorkerOutcome};
use crate::aggregate::{BankDpEncoding, FeatureMoments, UpdateEncoding};
use crate::ledger::PrivacyLedger;
use crate::protocol::secagg::{
    AdvertiseKeys, Client, ClientPolicy, ConsistencySig, EncryptedShare, MaskedInput, Params,
    Roster, RoundId, ShareKeys, SurvivorList, UnmaskRequest, UnmaskResponse,
};
use crate::service::coordinator::RunSummary;
use crate::service::pki::read_identity;
use crate::service::{BankReport, RoundKind, RoundPlan, ServiceError};
use crate::train::{Dataset, LocalTrainer, Standardizer, split_rows};

/// The secure-aggregation client of the round this bank is in.
struct RoundState {
    round: u64,
    client: Client,
    input: Vec<u32>,
}

/// Loads the bank's data once, given the plan's features and label.
pub(crate) type Loader = Box<dyn FnOnce(&[String], &str) -> Result<BankData, ServiceError> + Send>;

/// A bank's side of one run.
pub(crate) struct BankSession {
    cfg: WorkerConfig,
    id: u32,
    roster: Arc<Roster>,
    policy: ClientPolicy,
    identity: Arc<ring::signature::Ed25519KeyPair>,
    /// Locked for the session's life; what earlier runs spent counts.
    ledger: PrivacyLedger,
    dataset: String,
    /// Record-level and bank-level ε spent so far on `dataset` (every run).
    epsilon: f64,
    bank_epsilon: f64,
    rng: rand::rngs::StdRng,
    load: Option<Loader>,
    /// (train, holdout) rows, once loaded.
    data: Option<(BankData, BankData)>,
    /// The training rows on the device, for the run's statistics and model family.
    prepared: Option<(Standardizer, LocalTrainer)>,
    round: Option<RoundState>,
    /// The run's session id (the first plan's), its highest round id so far, and
    /// whether this bank already sent its feature statistics: a coordinator cannot
    /// start a round twice (two sums over different survivors would give one bank's
    /// exact statistics by difference) or move to another session mid-run.
    session: Option<String>,
    last_round: Option<u64>,
    moments_sent: bool,
    /// Rounds this bank completed.
    pub(crate) joined: u64,
}

impl BankSession {
    /// Check `cfg`, open the bank's identity and privacy ledger. Relative paths resolve
    /// against `base`.
    pub(crate) fn open(cfg: WorkerConfig, base: &Path, load: Loader) -> Result<Self, ServiceError> {
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
        let ledger = PrivacyLedger::open(&ledger_path)?;
        let delta = cfg.privacy.budget.delta;
        let spent = ledger.dataset(&dataset);
        let epsilon = spent.record_epsilon(delta)?;
        let bank_epsilon = spent.bank_epsilon(delta)?;
        tracing::info!(ledger = %ledger_path.display(), dataset, epsilon, bank_epsilon, "privacy ledger opened");
        let rng = match cfg.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        Ok(Self {
            cfg,
            id,
            roster,
            policy,
            identity,
            ledger,
            dataset,
            epsilon,
            bank_epsilon,
            rng,
            load: Some(load),
            data: None,
            prepared: None,
            round: None,
            session: None,
            last_round: None,
            moments_sent: false,
            joined: 0,
        })
    }

    /// Stage 0: check the plan against this bank's roster and policy, spend (durably)
    /// and train within its own budget, and advertise the round's keys. Returns the
    /// advert and the bank's report (JSON).
    pub(crate) fn plan(
        &mut self,
        plan_json: &str,
        global: Vec<f32>,
    ) -> Result<(AdvertiseKeys, String), ServiceError> {
        let mut plan: RoundPlan = serde_json::from_str(plan_json)
            .map_err(|e| ServiceError::Failed(format!("plan: {e}")))?;
        if plan.kind == RoundKind::Train {
            plan.architecture.validate(plan.features.len())?;
            let np = plan.architecture.num_params(plan.features.len());
            plan.global = crate::service::rpc::convert::global_params(global, np)
                .map_err(|e| ServiceError::Failed(e.to_string()))?;
        }
        if plan.roster != self.cfg.roster {
            return Err(ServiceError::Failed(
                "the plan's roster is not this bank's roster; refusing".into(),
            ));
        }
        if self.session.as_ref().is_some_and(|s| *s != plan.session) {
            return Err(ServiceError::Failed(format!(
                "the plan is of session {}, this bank's run is session {}; refusing",
                plan.session,
                self.session.as_deref().unwrap_or("")
            )));
        }
        if let Some(last) = self.last_round
            && plan.round <= last
        {
            return Err(ServiceError::Failed(format!(
                "round {} again (this bank is past round {last}); each round id is used once, refusing",
                plan.round
            )));
        }
        if plan.kind == RoundKind::Moments && self.moments_sent {
            return Err(ServiceError::Failed(
                "a second feature-statistics round in one run (its inputs are exact; two sums would give this bank's by difference); refusing".into(),
            ));
        }
        self.session = Some(plan.session.clone());
        self.last_round = Some(plan.round);
        if plan.kind == RoundKind::Moments {
            self.moments_sent = true;
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
        self.policy.check(&params)?;
        if self.data.is_none() {
            let loader = self.load.take().expect("loaded once");
            let all = loader(&plan.features, &plan.label)?;
            let (train, test) = split_rows(all.labels.len(), self.cfg.holdout, 0x5eed);
            self.data = Some((all.subset(&train), all.subset(&test)));
        }
        let (train, _) = self.data.as_ref().expect("loaded");
        let n = plan.roster.len();
        let mut report = BankReport {
            epsilon: self.epsilon,
            epsilon_next: self.epsilon,
            delta: self.cfg.privacy.budget.delta,
            training_set: train.training_set.clone(),
            views: train.views.clone(),
            bank_epsilon: plan.bank_dp.map(|_| self.bank_epsilon),
            refused: None,
        };
        let input = match plan.kind {
            RoundKind::Moments => FeatureMoments::new(plan.features.len(), plan.max_rows, n)?
                .encode(&train.columns)?,
            RoundKind::Train => {
                let st = plan
                    .standardizer
                    .clone()
                    .ok_or_else(|| ServiceError::Failed("train plan without statistics".into()))?;
                if self.prepared.as_ref().map(|p| (&p.0, p.1.architecture()))
                    != Some((&st, plan.architecture))
                {
                    let ds = Dataset::prepare(
                        plan.features.clone(),
                        &train.columns,
                        &train.labels,
                        &st,
                    )?;
                    let trainer = LocalTrainer::new(self.cfg.device, plan.architecture, ds)?;
                    self.prepared = Some((st, trainer));
                }
                let trainer = &self.prepared.as_ref().expect("prepared").1;
                let rows = trainer.data().rows();
                // Everything this dataset has spent, in every run so far.
                let mut spend = self.ledger.dataset(&self.dataset);
                let q = plan.local.sample_rate(rows);
                let steps = plan.local.local_steps;
                // Every guarantee this round spends on is checked against
                // this bank's own budget before any of it is spent.
                let b = self.cfg.privacy.budget;
                let exhausted = |unit, spent, next| crate::dp::DpError::BudgetExhausted {
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
                            params.honest_survivors(self.policy.colluders),
                            n,
                        )?;
                        let (l1, l2, mu) = enc.accounting();
                        let after = spend.bank.epsilon_after_skellam(l1, l2, mu, 1, b.delta)?;
                        if after > b.epsilon {
                            return Err(exhausted("bank-level", self.bank_epsilon, after).into());
                        }
                        Some((enc, after))
                    }
                    None => None,
                };
                let record = match &plan.local.dp {
                    None if self.cfg.privacy.require_dp => {
                        return Err(ServiceError::Failed(
                                "the plan trains without DP-SGD and this bank requires it; refusing the round".into(),
                            ));
                    }
                    None => None,
                    Some(dp) => {
                        let after =
                            spend
                                .record
                                .epsilon_after(q, dp.noise_multiplier, steps, b.delta)?;
                        if after > b.epsilon {
                            return Err(exhausted("record-level", self.epsilon, after).into());
                        }
                        Some((dp.noise_multiplier, after))
                    }
                };
                if let Some((sigma, after)) = record {
                    spend.record.compose_subsampled_gaussian(q, sigma, steps)?;
                    report.epsilon = after;
                    report.epsilon_next = spend.record.epsilon_after(q, sigma, steps, b.delta)?;
                }
                if let Some((enc, after)) = &bank_dp {
                    let (l1, l2, mu) = enc.accounting();
                    spend.bank.compose_skellam(l1, l2, mu, 1)?;
                    report.bank_epsilon = Some(*after);
                }
                // Spent before anything leaves the bank, and durable: a
                // crash from here on overstates the spend, never forgets it.
                if record.is_some() || bank_dp.is_some() {
                    self.ledger
                        .commit(&self.dataset, spend, &plan.session, plan.round)?;
                    if let Some((_, after)) = record {
                        self.epsilon = after;
                    }
                    if let Some((_, after)) = &bank_dp {
                        self.bank_epsilon = *after;
                    }
                }
                let u = trainer.train(&plan.global, &plan.local, &mut self.rng)?;
                match bank_dp {
                    Some((enc, _)) => {
                        let (w, clipped) = enc.encode(&u.delta, &mut self.rng)?;
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
        let (c, msg) = Client::new(
            self.id,
            self.identity.clone(),
            self.roster.clone(),
            params,
            self.policy,
            rid,
        )?;
        self.round = Some(RoundState {
            round: plan.round,
            client: c,
            input,
        });
        Ok((msg, serde_json::to_string(&report).expect("report")))
    }

    /// The round's client, if this bank started round `round`.
    fn client(&mut self, round: u64, stage: u32) -> Result<&mut RoundState, ServiceError> {
        self.round
            .as_mut()
            .filter(|st| st.round == round)
            .ok_or_else(|| {
                ServiceError::Failed(format!("stage {stage} of a round this bank did not start"))
            })
    }

    /// Stage 1: the key adverts in, this bank's encrypted shares out.
    pub(crate) fn share_keys(
        &mut self,
        round: u64,
        adverts: &[AdvertiseKeys],
    ) -> Result<ShareKeys, ServiceError> {
        Ok(self.client(round, 1)?.client.share_keys(adverts)?)
    }

    /// Stage 2: the shares for this bank in, its masked input out.
    pub(crate) fn masked_input(
        &mut self,
        round: u64,
        shares: &[EncryptedShare],
    ) -> Result<MaskedInput, ServiceError> {
        let st = self.client(round, 2)?;
        Ok(st.client.masked_input(shares, &st.input)?)
    }

    /// Stage 3: the survivor list in, this bank's signature of it out.
    pub(crate) fn consistency(
        &mut self,
        round: u64,
        list: &SurvivorList,
    ) -> Result<ConsistencySig, ServiceError> {
        Ok(self.client(round, 3)?.client.consistency(list)?)
    }

    /// Stage 4: the unmask request in, the shares the protocol allows out.
    pub(crate) fn unmask(
        &mut self,
        round: u64,
        req: &UnmaskRequest,
    ) -> Result<UnmaskResponse, ServiceError> {
        Ok(self.client(round, 4)?.client.unmask(req)?)
    }

    /// Leave the open round (the protocol treats a silent bank as dropped).
    pub(crate) fn leave_round(&mut self) {
        self.round = None;
    }

    /// The report of a bank sitting a round out because of its budget: public facts
    /// only, and the lineage stays whole (the training set still fed earlier rounds).
    pub(crate) fn refusal(&mut self, why: &crate::dp::DpError) -> String {
        self.round = None;
        let train = self.data.as_ref().map(|(t, _)| t);
        let report = BankReport {
            epsilon: self.epsilon,
            epsilon_next: self.epsilon,
            delta: self.cfg.privacy.budget.delta,
            training_set: train.and_then(|t| t.training_set.clone()),
            views: train.map(|t| t.views.clone()).unwrap_or_default(),
            bank_epsilon: (self.bank_epsilon > 0.0).then_some(self.bank_epsilon),
            refused: Some(why.to_string()),
        };
        serde_json::to_string(&report).expect("report")
    }

    /// The run is over: the final model's AUC on this bank's holdout rows.
    pub(crate) fn outcome(&self, summary: RunSummary) -> Result<WorkerOutcome, ServiceError> {
        let holdout_auc = match (&self.data, &summary.standardizer) {
            (Some((_, test)), Some(st)) if !test.labels.is_empty() => {
                let ds =
                    Dataset::prepare(summary.features.clone(), &test.columns, &test.labels, st)?;
                summary.architecture.auc(&summary.params, &ds)
            }
            _ => f64::NAN,
        };
        Ok(WorkerOutcome {
            summary,
            epsilon: self.epsilon,
            bank_epsilon: (self.bank_epsilon > 0.0).then_some(self.bank_epsilon),
            holdout_auc,
            rounds_joined: self.joined,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::pki;

    fn session(dir: &Path) -> (BankSession, RoundPlan) {
        let names: Vec<String> = ["bank_a", "bank_b", "bank_c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let fed = pki::init(dir, &names).unwrap();
        let cfg = WorkerConfig {
            name: "bank_a".into(),
            identity: "bank_a.identity".into(),
            roster: fed.roster.clone(),
            ..WorkerConfig::default()
        };
        let load: Loader = Box::new(|_, _| {
            Ok(BankData {
                columns: vec![(0..50).map(f64::from).collect()],
                labels: (0..50).map(|i| f64::from(i % 2)).collect(),
                training_set: None,
                views: Vec::new(),
            })
        });
        let s = BankSession::open(cfg, dir, load).unwrap();
        let moments = FeatureMoments::new(1, 1_000, 3).unwrap();
        let plan = RoundPlan {
            session: "00112233445566778899aabbccddeeff".into(),
            round: 0,
            kind: RoundKind::Moments,
            roster: fed.roster,
            threshold: 2,
            neighbours: 2,
            len: moments.layout().len(),
            features: vec!["amount".into()],
            label: "y".into(),
            architecture: crate::train::Architecture::LogisticRegression,
            max_rows: 1_000,
            update_clip: 1.0,
            local: crate::train::LocalConfig::default(),
            standardizer: None,
            global: Vec::new(),
            strategy: crate::aggregate::Strategy::FedAvg,
            bank_dp: None,
        };
        (s, plan)
    }

    #[test]
    fn a_bank_takes_each_round_id_once_and_one_statistics_round_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, plan) = session(dir.path());
        let json = |p: &RoundPlan| serde_json::to_string(p).unwrap();
        s.plan(&json(&plan), Vec::new()).unwrap();
        // The same round again: a second sum over other survivors would give this
        // bank's exact statistics by difference.
        let e = s.plan(&json(&plan), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("round 0 again"), "{e}");
        let again = RoundPlan {
            round: 5,
            ..plan.clone()
        };
        let e = s.plan(&json(&again), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("second feature-statistics round"), "{e}");
        let other = RoundPlan {
            session: "ffeeddccbbaa99887766554433221100".into(),
            round: 9,
            ..plan
        };
        let e = s.plan(&json(&other), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("of session ffeedd"), "{e}");
    }
}
