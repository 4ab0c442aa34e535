//! The federated step of the fraud example: the banks (different fraud rates, so
//! non-IID) train one model together; its AUC on each bank's held-out rows is compared
//! with the model that bank trains alone and with a model trained on the pooled data
//! (which no real federation could build: it is the upper reference).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use quiver_featurestore::FeatureStore;
use quiver_federation::aggregate::Strategy;
use quiver_federation::dp::Budget;
use quiver_federation::service::pki::TlsFiles;
use quiver_federation::service::simulate::{BankSource, SimBank, simulate};
use quiver_federation::service::worker::BankData;
use quiver_federation::service::{CoordinatorConfig, Deadlines, PrivacyPolicy, RegisterConfig};
use quiver_federation::train::{
    Architecture, Dataset, DpSgd, LocalConfig, Standardizer, split_rows, train_local,
};
use rand::SeedableRng;

use crate::FederateArgs;
use crate::generate;

/// Numeric features of the five views, as `view:feature`.
const FEATURES: [(&str, &str); 17] = [
    ("user_txn_velocity", "txn_count_1h"),
    ("user_txn_velocity", "txn_count_24h"),
    ("user_txn_velocity", "txn_count_7d"),
    ("user_txn_velocity", "txn_count_30d"),
    ("user_amount_stats", "amount_sum_24h"),
    ("user_amount_stats", "amount_sum_7d"),
    ("user_amount_stats", "amount_avg_30d"),
    ("user_amount_stats", "amount_max_7d"),
    ("user_amount_stats", "amount_stddev_30d"),
    ("user_device_ip_stats", "distinct_devices_24h"),
    ("user_device_ip_stats", "distinct_devices_30d"),
    ("user_device_ip_stats", "distinct_ips_7d"),
    ("user_device_ip_stats", "distinct_merchants_7d"),
    ("user_login_stats", "login_count_30d"),
    ("user_login_stats", "login_ip_count_30d"),
    ("user_login_stats", "login_count_1h"),
    ("user_last_txn", "last_amount"),
];

/// Same split as the workers (`holdout` 0.2, the same seed).
const HOLDOUT: f64 = 0.2;
const SPLIT_SEED: u64 = 0x5eed;

pub(crate) async fn run(cfg: &generate::Config, out: &Path, a: &FederateArgs) -> Result<()> {
    a.device
        .probe()
        .map_err(|e| anyhow::anyhow!("--device {}: {e}", a.device))?;
    let features: Vec<String> = FEATURES.iter().map(|(_, f)| f.to_string()).collect();
    let mut banks = Vec::new();
    for b in 0..cfg.banks {
        let name = generate::bank_name(b);
        let path = out.join(&name).join("training_set.parquet");
        anyhow::ensure!(
            path.exists(),
            "{} is missing; run `fraud train` first",
            path.display()
        );
        banks.push((name, BankData::load(&path, &features, "is_fraud")?));
    }
    let local = {
        let mut c = LocalConfig::default();
        c.learning_rate = 0.5;
        c.local_steps = 40;
        c.batch_size = 256;
        c.prox_mu = 0.0;
        c.dp = Some(DpSgd {
            noise_multiplier: a.noise_multiplier,
            clip_norm: 1.0,
        });
        c
    };
    let budget = Budget {
        epsilon: a.epsilon,
        delta: 1e-5,
    };
    let arch = Architecture::LogisticRegression;
    // The federated model is registered in bank_a's registry, signed by a registrar
    // key that registry trusts.
    let fed_dir = out.join("federation");
    std::fs::create_dir_all(&fed_dir)?;
    let key_path = fed_dir.join("registrar.key");
    let key = if key_path.exists() {
        quiver_registry::SigningKey::load(&key_path)?
    } else {
        quiver_registry::SigningKey::generate(&key_path)?
    };
    let repo = out.join(generate::bank_name(0));
    FeatureStore::open(&repo)?
        .models()?
        .trust("federation", &key.public_key_hex())?;
    let coordinator = {
        let mut c = CoordinatorConfig::default();
        c.listen = "127.0.0.1:0".parse()?;
        c.metrics_listen = None;
        c.tls = TlsFiles {
            ca: "".into(),
            cert: "".into(),
            key: "".into(),
        };
        c.roster = Vec::new();
        c.features = features.clone();
        c.label = "is_fraud".into();
        c.architecture = arch;
        c.rounds = a.rounds;
        c.threshold = None;
        c.neighbours = None;
        c.strategy = Strategy::FedAvg;
        c.local = local.clone();
        c.update_clip = 1.0;
        c.max_rows = 10_000_000;
        c.budget = budget;
        c.bank_dp = None;
        c.deadlines = Deadlines::default();
        c.seed = 1;
        c.register = Some({
            let mut c = RegisterConfig::default();
            c.repo = repo.clone();
            c.model = "fraud_federated".into();
            c.features = FEATURES.iter().map(|(v, f)| format!("{v}:{f}")).collect();
            c.key = key_path.clone();
            c.signer = "federation".into();
            c
        });
        c.output = Some(fed_dir.join("result"));
        c
    };
    println!(
        "\nFederated training: {} banks, logistic regression, DP-SGD (σ = {}, clip 1.0), budget ε = {} δ = 1e-5,",
        banks.len(),
        a.noise_multiplier,
        a.epsilon
    );
    println!(
        "secure aggregation over gRPC with mutual TLS on loopback (certificates in {}/certs) ...",
        fed_dir.display()
    );
    let t = Instant::now();
    let sims = banks
        .iter()
        .map(|(name, data)| SimBank {
            name: name.clone(),
            source: BankSource::Data(data.clone()),
            privacy: {
                let mut c = PrivacyPolicy::default();
                c.budget = budget;
                c.require_dp = true;
                c
            },
            offline: false,
            device: a.device,
        })
        .collect();
    // A demo federation: keys, certificates and each bank's privacy ledger are made
    // afresh with the data (which `generate` remakes each run). A real bank keeps its
    // ledger across runs (`quiver-fed worker`, docs/federation.md), so its budget holds.
    let certs = fed_dir.join("certs");
    if certs.exists() {
        std::fs::remove_dir_all(&certs)?;
    }
    let res = simulate(&certs, coordinator, sims).await?;
    let s = &res.summary;
    print!("{}", s.history_table());
    println!(
        "{} rounds in {:.1}s, stopped: {}; ε spent {:.3} (δ = 1e-5); registered {}",
        s.rounds,
        t.elapsed().as_secs_f64(),
        s.stopped,
        s.epsilon,
        s.registered.as_deref().unwrap_or("-")
    );

    // Baselines with the same trainer, DP settings and number of steps.
    let steps = local.local_steps * s.rounds.max(1);
    let alone_cfg = {
        let mut c = LocalConfig::default();
        c.local_steps = steps;
        c
    };
    let splits: Vec<(BankData, BankData)> = banks
        .iter()
        .map(|(_, d)| {
            let (tr, te) = split_rows(d.labels.len(), HOLDOUT, SPLIT_SEED);
            (d.subset(&tr), d.subset(&te))
        })
        .collect();
    let prep = |d: &BankData, st: &Standardizer| {
        Dataset::prepare(features.clone(), &d.columns, &d.labels, st)
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let fed_stats = s
        .standardizer
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no global statistics"))?;
    // Pooled: every bank's training rows in one place.
    let pooled_cols: Vec<Vec<f64>> = (0..features.len())
        .map(|f| {
            splits
                .iter()
                .flat_map(|(tr, _)| tr.columns[f].iter().copied())
                .collect()
        })
        .collect();
    let pooled_labels: Vec<f64> = splits
        .iter()
        .flat_map(|(tr, _)| tr.labels.iter().copied())
        .collect();
    let pooled_stats = Standardizer::fit(&pooled_cols);
    let pooled_ds = Dataset::prepare(
        features.clone(),
        &pooled_cols,
        &pooled_labels,
        &pooled_stats,
    )?;
    let pooled = train_local(
        arch,
        &arch.init(features.len(), 1),
        &pooled_ds,
        &alone_cfg,
        &mut rng,
    )?;
    println!(
        "\nAUC on each bank's held-out rows (20%, never trained on):\n{:<8} {:>10} {:>12} {:>10} {:>10}",
        "bank", "fraud rate", "bank alone", "federated", "pooled"
    );
    for (i, (name, _)) in banks.iter().enumerate() {
        let (tr, te) = &splits[i];
        let own_stats = Standardizer::fit(&tr.columns);
        let own = train_local(
            arch,
            &arch.init(features.len(), 1),
            &prep(tr, &own_stats)?,
            &alone_cfg,
            &mut rng,
        )?;
        let rate = te.labels.iter().sum::<f64>() / te.labels.len().max(1) as f64;
        println!(
            "{:<8} {:>9.2}% {:>12.4} {:>10.4} {:>10.4}",
            name,
            100.0 * rate,
            arch.auc(&own.params, &prep(te, &own_stats)?),
            arch.auc(&s.params, &prep(te, &fed_stats)?),
            arch.auc(&pooled.params, &prep(te, &pooled_stats)?),
        );
    }
    println!(
        "\nEach bank alone and pooled use the same trainer, DP-SGD settings and {steps} steps; the federated model's"
    );
    println!(
        "lineage (banks, rounds, ε, training sets) is in bank_a's registry: quiver --repo {} registry lineage {}",
        repo.display(),
        s.registered.as_deref().unwrap_or("fraud_federated@1")
    );
    Ok(())
}
