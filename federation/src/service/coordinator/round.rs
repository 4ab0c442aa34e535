//! The round driver: each round's stages under deadlines, the global model updated
//! from the securely aggregated sums, one record per round, and the final model
//! registered with its lineage.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use super::config::RegisterConfig;
use super::state::{Phase, Shared, lock};
use super::summary::{RoundRecord, RunSummary};
use crate::aggregate::{BankDpEncoding, FeatureMoments, ServerOptimizer, UpdateEncoding};
use crate::dp::RdpAccountant;
use crate::protocol::ProtocolError;
use crate::protocol::secagg::{Misbehaviour, RoundId, Server};
use crate::service::rpc::{Work, pb};
use crate::service::{BankReport, RoundKind, RoundPlan, ServiceError};

/// Open a stage: hand out `inputs` and wait until every bank answered or the
/// deadline passed.
pub(super) async fn run_stage(
    s: &Shared,
    stage: u32,
    inputs: BTreeMap<u32, Arc<Work>>,
    deadline: Duration,
) {
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

/// One input per bank, built from the protocol's output for it.
fn per_bank<T>(m: BTreeMap<u32, T>, work: impl Fn(T) -> Work) -> BTreeMap<u32, Arc<Work>> {
    m.into_iter().map(|(k, v)| (k, Arc::new(work(v)))).collect()
}

/// The same input, one copy, for every bank in `to`.
fn to_all(to: &[u32], work: Work) -> BTreeMap<u32, Arc<Work>> {
    let work = Arc::new(work);
    to.iter().map(|i| (*i, work.clone())).collect()
}

/// One secure aggregation; returns the sum, contributors and dropped, and in either
/// case the banks the protocol caught breaking it. Those are recorded in the shared
/// state's `excluded` and left out of every later round (their own signed messages
/// prove what they did, so no honest bank can be excluded this way).
async fn aggregate(
    s: &Shared,
    round: u64,
    session: [u8; 16],
    plan: &RoundPlan,
    sit_out: &BTreeSet<u32>,
) -> (
    Result<crate::protocol::secagg::Aggregate, ServiceError>,
    Vec<Misbehaviour>,
    Vec<u32>,
) {
    let out = aggregate_stages(s, round, session, plan, sit_out).await;
    let mut st = lock(s);
    let (caught, accusers) = st
        .server
        .take()
        .map(|sv| (sv.misbehaving().to_vec(), sv.accusers()))
        .unwrap_or_default();
    for m in &caught {
        st.excluded
            .entry(m.client)
            .or_insert_with(|| format!("round {round}: {}", m.reason));
    }
    (out, caught, accusers)
}

#[tracing::instrument(name = "federation_round", skip_all, fields(round, kind = ?plan.kind))]
async fn aggregate_stages(
    s: &Shared,
    round: u64,
    session: [u8; 16],
    plan: &RoundPlan,
    sit_out: &BTreeSet<u32>,
) -> Result<crate::protocol::secagg::Aggregate, ServiceError> {
    let params = s.cfg.params(plan.len)?;
    let rid = RoundId { session, round };
    let mut server = Server::new(params, rid, s.roster.clone())?;
    let mut excluded: BTreeSet<u32> = lock(s).excluded.keys().copied().collect();
    excluded.extend(sit_out.iter().copied());
    server.exclude(excluded.iter().copied());
    let d = s.cfg.deadlines;
    {
        let mut st = lock(s);
        st.round = round;
        st.server = Some(server);
        st.stage_seconds.clear();
    }
    // Stage 0 hands every bank the plan (JSON) and the global parameters.
    let start = Work::Start(pb::RoundStart {
        plan_json: serde_json::to_string(plan).expect("plans serialise"),
        global: plan.global.clone(),
    });
    let all: Vec<u32> = (0..s.names.len() as u32)
        .filter(|i| !excluded.contains(i))
        .collect();
    run_stage(
        s,
        0,
        to_all(&all, start),
        Duration::from_secs_f64(d.train_s),
    )
    .await;
    let stage_d = Duration::from_secs_f64(d.stage_s);
    let keys = with_server(s, |sv| sv.close_keys())?;
    let keys = per_bank(keys, |v| {
        Work::Keys(pb::AdvertisedKeys {
            adverts: v.into_iter().map(Into::into).collect(),
        })
    });
    run_stage(s, 1, keys, stage_d).await;
    let shares = with_server(s, |sv| sv.close_shares())?;
    let shares = per_bank(shares, |v| {
        Work::Shares(pb::EncryptedShares {
            shares: v.into_iter().map(Into::into).collect(),
        })
    });
    run_stage(s, 2, shares, stage_d).await;
    let list = with_server(s, |sv| sv.close_masked())?;
    let to = list.survivors.clone();
    run_stage(s, 3, to_all(&to, Work::Survivors(list.into())), stage_d).await;
    let req = with_server(s, |sv| sv.close_consistency())?;
    let to = req.survivors.clone();
    let to = to_all(&to, Work::Unmask(req.into()));
    run_stage(s, 4, to, stage_d).await;
    with_server(s, |sv| sv.finish())
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

pub(super) async fn drive(s: Arc<Shared>) -> Result<RunSummary, ServiceError> {
    let out = drive_inner(&s).await;
    let mut st = lock(&s);
    match &out {
        Ok(sum) => st.phase = Phase::Done(Box::new(sum.clone())),
        Err(e) => st.phase = Phase::Failed(e.to_string()),
    }
    // Every bank gets the final task (`poll` builds it from the phase; the entry only
    // marks who has not been told yet).
    let all: Vec<u32> = (0..s.names.len() as u32).collect();
    st.tasks = to_all(&all, Work::Wait(pb::Wait {}));
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
    // Round 0: feature statistics. Never retried: its inputs are exact, so two sums
    // over different survivors would give a bank's statistics by difference (banks
    // refuse a second one). A bank caught breaking the protocol here ends the run,
    // named; the next run leaves it out of its roster.
    let moments = FeatureMoments::new(dim, cfg.max_rows, n)?;
    plan.len = moments.layout().len();
    let t = Instant::now();
    let (out, caught, _) = aggregate(s, 0, session, &plan, &BTreeSet::new()).await;
    let agg = match out {
        Ok(agg) => agg,
        Err(e) if !caught.is_empty() => {
            record_failed(s, 0, &caught, &e, t);
            return Err(ServiceError::Failed(format!(
                "{e}; banks that broke the protocol: {}",
                excluded_names(s)
            )));
        }
        Err(e) => return Err(e),
    };
    let (standardizer, rows) = moments.decode(&agg.sum, agg.contributors.len());
    record(s, 0, &agg, rows, None, 0, 0, None, t);
    // Round ids are spent once each (banks refuse one they have seen): a training
    // round that fails because a bank broke the protocol is recorded, the bank is
    // excluded, and the next round gets a new id.
    let mut next_round = 1u64;
    // Each failed attempt that goes on excludes at least one more bank.
    let max_rounds = cfg.rounds + n as u64 + 1;
    tracing::info!(
        rows,
        banks = agg.contributors.len(),
        "global feature statistics aggregated"
    );

    let np = cfg.architecture.num_params(dim);
    let enc = UpdateEncoding::new(np, cfg.update_clip, cfg.max_rows, n)?;
    // Bank-level DP: the coordinator accounts it itself from public parameters (the
    // banks do too, and refuse rounds past their own budgets).
    // Noise is divided as the banks divide it at most: by the fewest honest banks in a
    // sum when as many banks collude as the plan withstands (the wrap check is then
    // conservative for banks assuming fewer).
    let p = cfg.params(1)?;
    let honest = p.honest_survivors(p.colluders_tolerated());
    let mut bank_dp = cfg
        .bank_dp
        .map(|dp| BankDpEncoding::new(np, dp, honest, n))
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
    let quorum = cfg.params(1)?.unmask_quorum();
    // Banks that sit out the next attempt only: the accusers of a round that failed
    // with nobody caught (an accusation cannot be checked, so one bank accusing
    // others and then falling silent could otherwise fail every round).
    let mut sit_out = BTreeSet::new();
    while done < cfg.rounds && next_round < max_rounds {
        let round = next_round;
        next_round += 1;
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
        let (out, caught, accusers) = aggregate(s, round, session, &plan, &sit_out).await;
        let retried = !sit_out.is_empty();
        sit_out.clear();
        let agg = match out {
            Ok(a) => a,
            Err(e) => {
                // Banks that sit out for their own budget end the run with the model
                // so far only when too few banks are left for a round.
                let st = lock(s);
                if let Some(why) = budget_stop(
                    &st.reports,
                    n,
                    &st.excluded,
                    cfg.budget.epsilon,
                    quorum,
                    &s.names,
                    true,
                ) {
                    drop(st);
                    stopped = why;
                    break;
                }
                drop(st);
                if !caught.is_empty() {
                    record_failed(s, round, &caught, &e, t);
                    continue;
                }
                if !accusers.is_empty() && !retried {
                    record_failed(s, round, &[], &e, t);
                    tracing::warn!(round, accusers = ?accusers, "round failed with accusations and nobody caught; the accusers sit out the next attempt");
                    sit_out = accusers.into_iter().collect();
                    continue;
                }
                return Err(e);
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
        done += 1;
        let st = lock(s);
        // One bank's report decides only for that bank (it sits out when its own
        // budget is spent); the run stops when too few banks are left for a round.
        let budget_out = budget_stop(
            &st.reports,
            n,
            &st.excluded,
            cfg.budget.epsilon,
            quorum,
            &s.names,
            false,
        );
        let eps = st.history.last().map_or(0.0, |h| h.epsilon);
        drop(st);
        tracing::info!(
            round,
            loss_before = sum.loss_before,
            epsilon = eps,
            bank_epsilon = bank_eps,
            "round done"
        );
        if done < cfg.rounds
            && let Some(why) = budget_out
        {
            stopped = why;
            break;
        }
    }
    if done < cfg.rounds && stopped == "rounds" {
        stopped = format!(
            "attempts: {next_round} rounds tried, {done} completed; banks excluded for breaking the protocol: {}",
            excluded_names(s)
        );
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
        std::fs::create_dir_all(dir).map_err(|e| crate::service::io_err(dir, e))?;
        let p = dir.join("model.json");
        std::fs::write(&p, model.to_json()).map_err(|e| crate::service::io_err(&p, e))?;
        let p = dir.join("summary.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&summary).expect("summary"))
            .map_err(|e| crate::service::io_err(&p, e))?;
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
    // The largest ε any bank in the sum reports for itself.
    let epsilon = st
        .reports
        .iter()
        .filter(|(i, _)| agg.contributors.contains(i))
        .map(|(_, r)| r.epsilon)
        .fold(0.0, f64::max);
    let name = |i: &u32| s.names[*i as usize].clone();
    let rec = RoundRecord {
        round,
        misbehaving: agg
            .misbehaving
            .iter()
            .map(|m| format!("{}: {}", name(&m.client), m.reason))
            .collect(),
        failed: None,
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

/// A round that failed after the protocol caught banks breaking it: its id is spent,
/// the banks are excluded from here on, and the run goes on.
fn record_failed(s: &Shared, round: u64, caught: &[Misbehaviour], e: &ServiceError, t: Instant) {
    let mut st = lock(s);
    let name = |i: &u32| s.names[*i as usize].clone();
    tracing::warn!(round, error = %e, "round failed; the banks that broke the protocol are excluded from the rest of the run");
    let epsilon = st.history.last().map_or(0.0, |h| h.epsilon);
    let rec = RoundRecord {
        round,
        contributors: Vec::new(),
        dropped: s.names.clone(),
        misbehaving: caught
            .iter()
            .map(|m| format!("{}: {}", name(&m.client), m.reason))
            .collect(),
        failed: Some(e.to_string()),
        rows: 0,
        loss_before: None,
        epsilon,
        bank_epsilon: None,
        clipped_values: 0,
        clipped_examples: 0,
        seconds: t.elapsed().as_secs_f64(),
        stage_seconds: st.stage_seconds.clone(),
    };
    st.history.push(rec);
}

fn excluded_names(s: &Shared) -> String {
    let st = lock(s);
    if st.excluded.is_empty() {
        return "none".into();
    }
    st.excluded
        .iter()
        .map(|(i, why)| format!("{} ({why})", s.names[*i as usize]))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why the run must stop for the privacy budget, if it must: fewer than `quorum`
/// banks of the roster can take part in one more round (`failed`: in the round that
/// just failed). A bank cannot take part when it is excluded, sits the round out for
/// its own budget (`refused`), or reports that one more round would pass the run's
/// budget. So one bank's report (true or not) decides only for that bank.
pub(super) fn budget_stop(
    reports: &BTreeMap<u32, BankReport>,
    banks: usize,
    excluded: &BTreeMap<u32, String>,
    budget: f64,
    quorum: usize,
    names: &[String],
    failed: bool,
) -> Option<String> {
    let mut out = Vec::new();
    for i in 0..banks as u32 {
        if excluded.contains_key(&i) {
            continue;
        }
        let Some(r) = reports.get(&i) else { continue };
        let name = names.get(i as usize).map_or("?", String::as_str);
        if let Some(why) = &r.refused {
            out.push(format!("{name}: {why}"));
        } else if !failed && !(r.epsilon_next <= budget) {
            out.push(format!(
                "{name}: one more round would spend ε = {:.3} > {budget}",
                r.epsilon_next
            ));
        }
    }
    let can = banks - excluded.len() - out.len();
    if out.is_empty() || can >= quorum {
        return None;
    }
    Some(format!(
        "budget: {can} banks can take part in another round, {quorum} needed ({})",
        out.join("; ")
    ))
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
    let run_id = NodeKind::FederationRun.id(&sum.session, None);
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
                    Node::split_id(ts).map_or(ts.as_str(), |(_, name, _)| name),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(epsilon_next: f64) -> BankReport {
        BankReport {
            epsilon: 1.0,
            epsilon_next,
            delta: 1e-5,
            ..BankReport::default()
        }
    }

    #[test]
    fn one_bank_claiming_its_budget_is_spent_does_not_end_the_run() {
        let names: Vec<String> = (0..10).map(|i| format!("bank{i}")).collect();
        let quorum = crate::protocol::secagg::Params::secagg(10, 7, 1).unmask_quorum();
        let mut reports: BTreeMap<u32, BankReport> = (0..10).map(|i| (i, report(1.5))).collect();
        let none = BTreeMap::new();
        // One bank says one more round would cost it ε = 1e9: only it sits out.
        reports.insert(4, report(1e9));
        assert_eq!(
            budget_stop(&reports, 10, &none, 2.5, quorum, &names, false),
            None
        );
        reports.insert(5, report(f64::NAN));
        assert_eq!(
            budget_stop(&reports, 10, &none, 2.5, quorum, &names, false),
            None
        );
        // A third bank past its budget leaves 7 of 10, below the quorum of 8: stop.
        reports.insert(6, report(3.0));
        let why = budget_stop(&reports, 10, &none, 2.5, quorum, &names, false).unwrap();
        assert!(
            why.contains("7 banks can take part in another round, 8 needed"),
            "{why}"
        );
        assert!(why.contains("bank4") && why.contains("bank6"), "{why}");
        // A failed round stops for the budget only when refusals leave too few.
        let mut failed: BTreeMap<u32, BankReport> = (0..10).map(|i| (i, report(1.5))).collect();
        failed.insert(
            2,
            BankReport {
                refused: Some("budget".into()),
                ..report(3.0)
            },
        );
        assert_eq!(
            budget_stop(&failed, 10, &none, 2.5, quorum, &names, true),
            None
        );
        // Excluded banks do not count as able to go on.
        let excluded: BTreeMap<u32, String> = [(0, "x".to_string()), (1, "y".to_string())]
            .into_iter()
            .collect();
        assert!(budget_stop(&failed, 10, &excluded, 2.5, quorum, &names, true).is_some());
    }
}
