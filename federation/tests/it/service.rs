//! The coordinator and workers over real gRPC and mutual TLS on loopback.

use std::time::Duration;

use quiver_federation::aggregate::{BankDp, BankDpEncoding, Strategy};
use quiver_federation::dp::{Budget, RdpAccountant};
use quiver_federation::service::pki::TlsFiles;
use quiver_federation::service::simulate::{BankSource, SimBank, SimulationResult, simulate};
use quiver_federation::service::worker::BankData;
use quiver_federation::service::{
    Coordinator, CoordinatorConfig, PrivacyPolicy, Worker, WorkerConfig, pki,
};
use quiver_federation::train::{Architecture, Device, DpSgd};
use rand::{Rng, SeedableRng};

/// A bank whose fraud rate is `rate` (non-IID across banks); fraud raises `amount`.
fn bank(rows: usize, rate: f64, seed: u64) -> BankData {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut a, mut b, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rows {
        let f = rng.random::<f64>() < rate;
        a.push((rng.random::<f64>() * 3.0 + if f { 1.5 } else { 0.0 }).exp());
        b.push(if rng.random::<f64>() < 0.1 {
            f64::NAN
        } else {
            rng.random::<f64>() * 10.0
        });
        y.push(if f { 1.0 } else { 0.0 });
    }
    BankData {
        columns: vec![a, b],
        labels: y,
        training_set: Some(format!("training_set:{seed:016x}")),
        views: vec!["txn@1".into()],
    }
}

fn config(rounds: u64, budget: Budget) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.tls = TlsFiles {
        ca: "".into(),
        cert: "".into(),
        key: "".into(),
    };
    c.features = vec!["amount".into(), "noise".into()];
    c.label = "is_fraud".into();
    c.architecture = Architecture::LogisticRegression;
    c.rounds = rounds;
    c.strategy = Strategy::FedAvg;
    c.local.learning_rate = 0.5;
    c.local.local_steps = 20;
    c.local.batch_size = 128;
    c.local.prox_mu = 0.0;
    c.local.dp = Some(DpSgd {
        noise_multiplier: 1.0,
        clip_norm: 1.0,
    });
    c.update_clip = 1.0;
    c.max_rows = 100_000;
    c.budget = budget;
    c.deadlines.train_s = 30.0;
    c.deadlines.stage_s = 10.0;
    c.deadlines.join_s = 20.0;
    c.seed = 3;
    c
}

fn sims(rates: &[f64], offline: Option<usize>) -> Vec<SimBank> {
    rates
        .iter()
        .enumerate()
        .map(|(i, r)| SimBank {
            name: format!("bank_{i}"),
            source: BankSource::Data(bank(4000, *r, i as u64 + 1)),
            privacy: PrivacyPolicy::default(),
            offline: offline == Some(i),
            // One bank trains batched, so the service runs both gradient engines.
            device: if i == 1 {
                Device::CpuBatched
            } else {
                Device::Cpu
            },
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_non_iid_banks_train_a_dp_model_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(3, Budget::default());
    cfg.local.dp = Some(DpSgd {
        noise_multiplier: 1.5,
        clip_norm: 1.0,
    });
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let res = tokio::time::timeout(
        Duration::from_secs(120),
        simulate(dir.path(), cfg, sims(&[0.02, 0.05, 0.1], None)),
    )
    .await
    .expect("finishes")
    .unwrap();
    let s = &res.summary;
    assert_eq!(s.rounds, 3, "{s:?}");
    assert_eq!(
        s.history.len(),
        4,
        "round 0 (statistics) and 3 training rounds"
    );
    for h in &s.history {
        assert_eq!(h.contributors.len(), 3);
        assert_eq!(h.rows, s.history[0].rows);
    }
    // The loss of the global model falls round over round.
    let l: Vec<f64> = s.history[1..]
        .iter()
        .map(|h| h.loss_before.unwrap())
        .collect();
    assert!(l[2] < l[0], "{l:?}");
    assert!(s.epsilon > 0.0 && s.epsilon <= 2.5, "ε {}", s.epsilon);
    assert_eq!(s.lineage.len(), 3);
    assert_eq!(
        s.lineage["bank_0"].training_set.as_deref(),
        Some("training_set:0000000000000001")
    );
    // The artifact is a valid registry model over raw features.
    let m =
        quiver_registry::NativeModel::from_json(&serde_json::to_vec(&s.model).unwrap()).unwrap();
    assert!(m.score(&[400.0, 1.0]) > m.score(&[3.0, 1.0]));
    // Prometheus, scraped over HTTP at the end of the run.
    let m = res.metrics.as_deref().expect("metrics_listen was set");
    let value = |line: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{line}` in\n{m}"))
    };
    assert_eq!(value("quiver_fed_state{state=\"done\"}"), 1.0);
    assert_eq!(value("quiver_fed_rounds_completed_total"), 4.0);
    assert_eq!(value("quiver_fed_round_contributors"), 3.0);
    assert!((value("quiver_fed_epsilon") - s.epsilon).abs() < 1e-9);
    assert_eq!(
        value("quiver_fed_bank_dropped_rounds_total{bank=\"bank_1\"}"),
        0.0
    );
    // Three banks' masked vectors of 3 parameters + 1 loss + 4 counts, 3 training
    // rounds, plus round 0: some hundreds of bytes of masked input at least.
    assert!(value("quiver_fed_received_bytes_total{stage=\"masked\"}") > 3.0 * 4.0 * 8.0 * 4.0);
    assert!(value("quiver_fed_stage_seconds_total{stage=\"keys\"}") > 0.0);
    assert!(m.contains("quiver_fed_round_seconds_count 4"), "{m}");
    for h in &s.history {
        assert_eq!(h.stage_seconds.len(), 5, "{h:?}");
    }
    for (name, out) in &res.banks {
        let out = out.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.holdout_auc > 0.8, "{name}: {}", out.holdout_auc);
        assert!((out.epsilon - s.epsilon).abs() < 1e-9);
        assert_eq!(out.rounds_joined, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_bank_drops_out_and_the_rest_finish() {
    // Five banks with the default threshold (3 of 4 neighbours, withstanding one
    // colluding bank) tolerate one bank down; four could not (t = 3 of 3).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(2, Budget::default());
    cfg.deadlines.join_s = 2.0;
    let res = tokio::time::timeout(
        Duration::from_secs(120),
        simulate(
            dir.path(),
            cfg,
            sims(&[0.05, 0.05, 0.05, 0.05, 0.05], Some(4)),
        ),
    )
    .await
    .expect("finishes")
    .unwrap();
    assert_eq!(res.summary.rounds, 2);
    for h in &res.summary.history {
        assert_eq!(
            h.contributors,
            vec!["bank_0", "bank_1", "bank_2", "bank_3"],
            "{h:?}"
        );
    }
}

/// Three banks with `budget` each, in `dir`, for up to 50 rounds.
async fn run_with_budget(dir: &std::path::Path, budget: Budget) -> SimulationResult {
    let mut banks = sims(&[0.05, 0.05, 0.05], None);
    for b in &mut banks {
        b.privacy.budget = budget;
    }
    tokio::time::timeout(
        Duration::from_secs(120),
        simulate(dir, config(50, budget), banks),
    )
    .await
    .expect("finishes")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_stops_before_the_budget_is_spent() {
    // One round of this plan spends ε ≈ 2.1 and two ≈ 2.46 (σ = 1, q = 0.04, 20 steps).
    for (eps, rounds) in [(2.3, 1), (1.0, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            epsilon: eps,
            delta: 1e-5,
        };
        let res = run_with_budget(dir.path(), budget).await;
        let s = &res.summary;
        assert_eq!(s.rounds, rounds, "{s:?}");
        assert!(s.stopped.starts_with("budget"), "{}", s.stopped);
        assert!(s.epsilon <= eps, "ε {}", s.epsilon);
        for (name, out) in &res.banks {
            let out = out.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(out.epsilon <= eps);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_across_runs_and_restarts() {
    // One round spends ε ≈ 2.1 and a second would reach ≈ 2.46 (see above). Run 1
    // trains one round within ε 2.3; run 2, with new worker processes on the same
    // ledgers (a restart), must not train at all: its first round would pass 2.3.
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget {
        epsilon: 2.3,
        delta: 1e-5,
    };
    let mut spent = Vec::new();
    for run in 0..2 {
        let res = run_with_budget(dir.path(), budget).await;
        assert_eq!(res.summary.rounds, 1 - run, "run {run}: {:?}", res.summary);
        for (name, out) in &res.banks {
            let out = out.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(out.epsilon <= budget.epsilon, "{name}: ε {}", out.epsilon);
            spent.push(out.epsilon);
        }
        // The ledger on disk says the same, and is what `quiver-fed ledger` reads.
        let ledger = quiver_federation::ledger::PrivacyLedger::read_only(
            &dir.path().join("bank_0.privacy-ledger.json"),
        )
        .unwrap();
        let eps = ledger["default"].record_epsilon(budget.delta).unwrap();
        assert!(
            (eps - spent[run as usize * 3]).abs() < 1e-9,
            "{eps} vs {spent:?}"
        );
        assert_eq!(ledger["default"].rounds.len(), 1);
    }
    // Run 2 reports what run 1 spent: the budget was not restarted.
    assert!(spent[3] > 2.0, "{spent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_level_dp_noises_the_aggregate_and_stops_at_its_budget() {
    let dp = BankDp {
        clip_norm: 1.0,
        noise_multiplier: 3.0,
    };
    // Logistic regression over 2 features: 3 parameters; 5 banks, threshold 3 (so one
    // bank may sit a round out; three banks could not lose one). The accountant over
    // public parameters: ε ≈ 1.39 after one round, ≈ 2.03 after two, ≈ 2.55 after
    // three.
    let (l1, l2, mu) = BankDpEncoding::new(3, dp, 3, 5).unwrap().accounting();
    let mut acc = RdpAccountant::for_skellam();
    let mut want = Vec::new();
    for _ in 0..3 {
        acc.compose_skellam(l1, l2, mu, 1).unwrap();
        want.push(acc.epsilon(1e-5).unwrap().0);
    }
    assert!(want[1] < 2.3 && want[2] > 2.3, "{want:?}");
    // Run 1: the coordinator's budget (2.3) allows two rounds. Run 2: bank_1's own
    // budget (1.5) allows one; it sits round 2 out, saying why in the clear, and the
    // other two (the threshold) go on.
    for bank_budget in [2.3, 1.5] {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            epsilon: 2.3,
            delta: 1e-5,
        };
        let mut cfg = config(5, budget);
        cfg.local.dp = None;
        cfg.bank_dp = Some(dp);
        let mut banks = sims(&[0.02, 0.05, 0.1, 0.05, 0.05], None);
        for (i, b) in banks.iter_mut().enumerate() {
            b.privacy.require_dp = false;
            if i == 1 {
                b.privacy.budget.epsilon = bank_budget;
            }
        }
        let res = tokio::time::timeout(Duration::from_secs(120), simulate(dir.path(), cfg, banks))
            .await
            .expect("finishes")
            .unwrap();
        let s = &res.summary;
        assert_eq!(s.rounds, 2, "{s:?}");
        assert!(
            s.stopped.starts_with("budget") && s.stopped.contains("bank-level ε"),
            "{}",
            s.stopped
        );
        let eps = s.bank_epsilon.expect("bank-level ε reported");
        assert!((eps - want[1]).abs() < 1e-9, "{eps} vs {want:?}");
        assert_eq!(s.epsilon, 0.0, "no record-level DP in this run");
        for (i, h) in s.history[1..].iter().enumerate() {
            // Only the noised update is released: no rows, loss or counts.
            assert_eq!((h.rows, h.loss_before, h.clipped_values), (0, None, 0));
            assert!((h.bank_epsilon.unwrap() - want[i]).abs() < 1e-9, "{h:?}");
        }
        let round2: Vec<&str> = s.history[2]
            .contributors
            .iter()
            .map(|c| c.as_str())
            .collect();
        let b1 = &s.lineage["bank_1"];
        if bank_budget < 2.0 {
            assert_eq!(round2, ["bank_0", "bank_2", "bank_3", "bank_4"]);
            assert_eq!(s.history[2].dropped, ["bank_1"]);
            let why = b1.refused.as_deref().unwrap_or_default();
            assert!(why.contains("bank-level ε = 2.0291"), "{why}");
            assert!((b1.bank_epsilon.unwrap() - want[0]).abs() < 1e-9, "{b1:?}");
            // Its training set still fed round 1: lineage keeps it.
            assert!(b1.training_set.is_some(), "{b1:?}");
        } else {
            assert_eq!(round2.len(), 5);
            // Every bank accounted the same ε itself.
            for (name, r) in &s.lineage {
                assert!(
                    (r.bank_epsilon.unwrap() - eps).abs() < 1e-9,
                    "{name}: {r:?}"
                );
            }
        }
        assert!(s.params.iter().all(|p| p.is_finite()));
    }
}

/// A coordinator over mTLS for `bank_a` and `bank_b` (one round), waiting `join_s`
/// for them; its PKI is in the returned folder.
async fn two_bank_coordinator(join_s: f64) -> (tempfile::TempDir, pki::Federation, Coordinator) {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["bank_a".to_string(), "bank_b".to_string()];
    let fed = pki::init(dir.path(), &names).unwrap();
    let mut cfg = config(1, Budget::default());
    cfg.roster = fed.roster.clone();
    cfg.tls = TlsFiles {
        ca: "ca.pem".into(),
        cert: "coordinator.pem".into(),
        key: "coordinator.key".into(),
    };
    cfg.deadlines.join_s = join_s;
    let coord = Coordinator::start(cfg, dir.path()).await.unwrap();
    (dir, fed, coord)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_presenting_another_banks_certificate_is_refused() {
    let (dir, fed, coord) = two_bank_coordinator(1.0).await;
    let w = {
        let mut c = WorkerConfig::default();
        c.name = "bank_b".into();
        c.coordinator = format!("https://{}", coord.addr());
        // bank_a's certificate with bank_b's name.
        c.tls = TlsFiles {
            ca: "ca.pem".into(),
            cert: "bank_a.pem".into(),
            key: "bank_a.key".into(),
        };
        c.identity = "bank_b.identity".into();
        c.roster = fed.roster.clone();
        c.training_set = "missing.parquet".into();
        c.holdout = 0.2;
        c.privacy = PrivacyPolicy::default();
        c.connect_timeout_s = 5.0;
        c.seed = Some(1);
        c.ledger = None;
        c.dataset = None;
        c.secagg = None;
        c.device = Device::Cpu;
        c
    };
    let w2 = w.clone();
    let err = tokio::time::timeout(Duration::from_secs(30), Worker::run(w, dir.path()))
        .await
        .expect("finishes")
        .unwrap_err();
    assert!(err.to_string().contains("not `bank_b`"), "{err}");
    if !Device::GPU_BUILD {
        // A worker asked for a GPU this build cannot drive stops before it connects.
        let mut gpu = w2;
        gpu.device = Device::Cuda(0);
        let err = tokio::time::timeout(Duration::from_secs(5), Worker::run(gpu, dir.path()))
            .await
            .expect("fails at once")
            .unwrap_err();
        assert!(err.to_string().contains("--features gpu"), "{err}");
    }
    // Nobody joined: the coordinator gives up after join_s with a clear reason.
    let e = coord.finish(Duration::from_secs(1)).await.unwrap_err();
    assert!(e.to_string().contains("connected"), "{e}");
}

/// A bank with a valid certificate sending malformed stage messages: each is refused
/// with the message and field named, and the coordinator keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submissions_are_refused_with_the_field_named() {
    use quiver_federation::service::rpc::{self, PollRequest, Stage, Submission, Work, pb};
    let (dir, _fed, coord) = two_bank_coordinator(2.0).await;
    let pem = TlsFiles {
        ca: "ca.pem".into(),
        cert: "bank_a.pem".into(),
        key: "bank_a.key".into(),
    }
    .read(dir.path())
    .unwrap();
    let ch = pki::coordinator_endpoint(&format!("https://{}", coord.addr()), &pem)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = rpc::client(ch);
    // Stage 0 opens once the join window closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let round = loop {
        assert!(std::time::Instant::now() < deadline, "no stage-0 task");
        let t = c
            .poll(PollRequest {
                bank: "bank_a".into(),
                wait_ms: 1_000,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(Work::Start(s)) = &t.work {
            assert!(s.plan_json.contains("\"features\""), "{}", s.plan_json);
            break t.round;
        }
    };
    let submit = |stage: Option<Stage>| {
        let mut c = c.clone();
        async move {
            c.submit(Submission {
                bank: "bank_a".into(),
                round,
                stage,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let ack = submit(None).await;
    assert!(!ack.accepted);
    assert!(ack.reason.contains("no stage message"), "{}", ack.reason);
    // A stage this round is not at.
    let ack = submit(Some(Stage::Masked(pb::MaskedInput::default()))).await;
    assert!(ack.reason.contains("not round"), "{}", ack.reason);
    let keys = pb::AdvertiseKeys {
        from: 0,
        round: Some(pb::RoundId {
            session: vec![0; 16],
            round,
        }),
        cipher_pk: vec![1; 32],
        mask_pk: vec![2; 31],
        seed_commitment: vec![3; 32],
        signature: vec![4; 64],
    };
    let ack = submit(Some(Stage::Join(pb::Join {
        keys: Some(keys),
        report_json: String::new(),
    })))
    .await;
    assert!(!ack.accepted);
    assert!(
        ack.reason
            .contains("malformed advertised keys: `mask_pk` is 31 bytes, not 32"),
        "{}",
        ack.reason
    );
    let status = c.status(rpc::StatusRequest {}).await.unwrap().into_inner();
    let status: serde_json::Value = serde_json::from_str(&status.json).unwrap();
    let rejected = status["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{status}");
    assert!(
        rejected[2].as_str().unwrap().contains("bank_a round"),
        "{status}"
    );
    drop(c);
    // Nobody sent keys: the run ends with a clear error, within its deadlines.
    let e = tokio::time::timeout(
        Duration::from_secs(60),
        coord.finish(Duration::from_secs(1)),
    )
    .await
    .expect("the coordinator finishes")
    .unwrap_err();
    assert!(!e.to_string().is_empty());
}

#[test]
fn configs_are_validated_with_the_field_named() {
    let mut cfg = config(0, Budget::default());
    cfg.roster = vec![
        pki::RosterEntry {
            name: "a".into(),
            public_key: "00".repeat(32),
        };
        2
    ];
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("listed twice"), "{e}");
    cfg.roster[1].name = "b".into();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("rounds 0"), "{e}");
    cfg.rounds = 1;
    cfg.local.prox_mu = 0.1;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("prox_mu"), "{e}");
    let bad: Result<CoordinatorConfig, _> =
        serde_json::from_str(r#"{"listen": "127.0.0.1:0", "bogus": 1}"#);
    assert!(bad.unwrap_err().to_string().contains("bogus"));
}
