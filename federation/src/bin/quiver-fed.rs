//! `quiver-fed`: federated training across banks with secure aggregation and
//! differential privacy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rand::{Rng, SeedableRng};

use quiver_federation::aggregate::{BankDp, Strategy};
use quiver_federation::dp::Budget;
use quiver_federation::service::pki::{self, TlsFiles};
use quiver_federation::service::simulate::{BankSource, SimBank, simulate};
use quiver_federation::service::worker::BankData;
use quiver_federation::service::{
    Coordinator, CoordinatorConfig, PrivacyPolicy, RunSummary, Worker, WorkerConfig,
    read_json_config,
};
use quiver_federation::train::{Architecture, Device, DpSgd};

/// Federated training across banks: each bank trains on its own training set, the
/// coordinator only ever sees the securely aggregated sum of the banks' updates, and
/// every bank's records are protected by DP-SGD with a budget the bank enforces.
///
/// Start here:
///   quiver-fed simulate --banks 3 --rounds 5          # everything on loopback, synthetic data
///
/// A real federation (no one ever holds another bank's private keys):
///   quiver-fed keygen --bank bank_a --dir keys        # at each bank; send keys/bank_a.request.json
///   quiver-fed ca init --dir fed                       # at the operator: CA + coordinator cert
///   quiver-fed ca sign --dir fed bank_*.request.json   # certificates, roster, config templates
///   quiver-fed coordinator --config fed/coordinator.json
///   quiver-fed worker --config keys/worker-bank_a.json # at each bank, with its signed bank_a.pem
///   quiver-fed status --coordinator https://127.0.0.1:7443 --tls-dir keys --bank bank_a
///   quiver-fed ledger --file keys/bank_a.privacy-ledger.json   # ε spent, across runs
///
/// Exit codes: 0 success, 1 a problem with your input or a refusal (config, budget,
/// policy), 2 an internal or network failure.
#[derive(Debug, Parser)]
#[command(name = "quiver-fed", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// More log output on stderr (-v info, -vv debug); QUIVER_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelKind {
    /// Logistic regression.
    Lr,
    /// One hidden layer of tanh units (--hidden).
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DpKind {
    /// Record-level DP-SGD inside each bank (customers are the unit of privacy).
    Record,
    /// Bank-level DP: updates clipped and noised with distributed Skellam noise.
    Bank,
    /// Both guarantees, each within the budget.
    Both,
    /// No differential privacy (secure aggregation only).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StrategyKind {
    Fedavg,
    Fedprox,
    Fedadam,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// DEMO ONLY: one folder with a CA and every bank's private keys, roster.json and
    /// config templates. For a real federation use `keygen` at each bank and `ca`.
    #[command(name = "init-demo", alias = "init")]
    InitDemo {
        /// Folder to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// Bank names, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        banks: Vec<String>,
    },
    /// At a bank: make its Ed25519 identity and TLS key (kept in --dir, owner-only) and
    /// <bank>.request.json (public key + certificate request) for the operator.
    Keygen {
        /// This bank's name (its certificate's common name).
        #[arg(long)]
        bank: String,
        /// Folder for the bank's files (created).
        #[arg(long)]
        dir: PathBuf,
    },
    /// At the federation operator: the CA and certificates.
    Ca {
        #[command(subcommand)]
        command: CaCmd,
    },
    /// Show a bank's privacy ledger: ε spent per dataset across every run (reads only).
    Ledger {
        /// The ledger file (a worker's `ledger`, default <bank>.privacy-ledger.json).
        #[arg(long)]
        file: PathBuf,
        /// δ at which to state ε.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
    },
    /// Run the coordinator until training ends (JSON config; see docs/federation.md).
    Coordinator {
        /// Config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one bank's worker until training ends.
    Worker {
        /// Config file.
        #[arg(long)]
        config: PathBuf,
        /// Where local training computes, overriding the config's `device`: cpu,
        /// cpu-batched (matrix products on every core; faster for wide MLPs and large
        /// batches), or cuda:N (an NVIDIA GPU; needs a build with `--features gpu`).
        #[arg(long)]
        device: Option<Device>,
    },
    /// Coordinator and N workers on loopback in one command, over real gRPC and
    /// mutual TLS; prints each round and each bank's held-out AUC.
    Simulate {
        /// Banks.
        #[arg(long, default_value_t = 3)]
        banks: usize,
        /// Training rounds (fewer if the budget runs out).
        #[arg(long, default_value_t = 5)]
        rounds: u64,
        /// Training sets, one per bank, comma separated (default: synthetic non-IID
        /// fraud-like data).
        #[arg(long, value_delimiter = ',')]
        training_sets: Vec<PathBuf>,
        /// Model inputs (with --training-sets).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Label column (with --training-sets).
        #[arg(long, default_value = "is_fraud")]
        label: String,
        /// Model family.
        #[arg(long, value_enum, default_value_t = ModelKind::Lr)]
        model: ModelKind,
        /// Aggregation strategy.
        #[arg(long, value_enum, default_value_t = StrategyKind::Fedavg)]
        strategy: StrategyKind,
        /// Differential privacy: per customer record, per bank, both, or none.
        #[arg(long, value_enum, default_value_t = DpKind::Record)]
        dp: DpKind,
        /// Privacy budget ε (δ = --delta), for each guarantee --dp asks for.
        #[arg(long, default_value_t = 2.5)]
        epsilon: f64,
        /// δ of the budget.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// DP-SGD noise multiplier.
        #[arg(long, default_value_t = 1.0)]
        noise_multiplier: f64,
        /// Bank-level DP: noise multiplier of the aggregate (Skellam). At 3, two rounds
        /// fit ε = 2.5; the noise on the mean is about 3 × clip / banks per value, so it
        /// takes tens of banks to learn through it.
        #[arg(long, default_value_t = 3.0)]
        bank_noise_multiplier: f64,
        /// Bank-level DP: L2 norm each bank's update is clipped to.
        #[arg(long, default_value_t = 1.0)]
        bank_clip_norm: f64,
        /// SGD steps per round.
        #[arg(long, default_value_t = 50)]
        local_steps: u64,
        /// Expected examples per step.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Learning rate.
        #[arg(long, default_value_t = 0.5)]
        learning_rate: f64,
        /// Hidden units of --model mlp.
        #[arg(long, default_value_t = 16)]
        hidden: usize,
        /// Where every bank's local training computes: cpu, cpu-batched, or cuda:N
        /// (needs a build with `--features gpu`).
        #[arg(long, default_value_t = Device::Cpu)]
        device: Device,
        /// Folder for certificates and the result (default: a temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show a running coordinator's status (authenticates as one bank), and with
    /// --ledger that bank's own ε spent across runs.
    Status {
        /// Coordinator URL, https://host:port.
        #[arg(long)]
        coordinator: String,
        /// Folder `init` wrote (ca.pem, <bank>.pem, <bank>.key).
        #[arg(long)]
        tls_dir: PathBuf,
        /// Bank whose certificate to present.
        #[arg(long)]
        bank: String,
        /// This bank's privacy ledger, shown beside the run's status.
        #[arg(long)]
        ledger: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Make the federation CA (ca.pem; ca.key stays here) and the coordinator's
    /// certificate and key.
    Init {
        /// Operator's folder (created).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sign the banks' requests: <bank>.pem for each, roster.json, and config templates
    /// (coordinator.json, worker-<bank>.json). Send each bank ca.pem, its <bank>.pem and
    /// its worker template; nothing private leaves the operator.
    Sign {
        /// Operator's folder (with ca.pem and ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// Request files (<bank>.request.json), in roster order.
        #[arg(required = true)]
        requests: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    quiver_featurestore::cli::exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    quiver_featurestore::cli::init_logging(cli.verbose, None);
    let json = cli.output == Output::Json;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let user = is_user_error(&e);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": if user { "input" } else { "internal" }, "message": format!("{e:#}")})
                );
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::from(if user { 1 } else { 2 })
        }
    }
}

/// 1 for what the user can fix or what a bank's own policy refused; 2 otherwise.
fn is_user_error(e: &anyhow::Error) -> bool {
    use quiver_federation::service::ServiceError as S;
    match e.downcast_ref::<S>() {
        Some(S::Config(_) | S::Dp(_) | S::Ledger(_) | S::Io { .. }) => true,
        Some(S::Protocol(p)) => matches!(
            p,
            quiver_federation::protocol::ProtocolError::Config(_)
                | quiver_federation::protocol::ProtocolError::Refused { .. }
        ),
        Some(_) => false,
        // Errors of this binary itself (bad files, bad flags) are the user's to fix.
        None => e.downcast_ref::<std::io::Error>().is_none(),
    }
}

fn config_base(config: &Path) -> PathBuf {
    config.parent().map(Path::to_path_buf).unwrap_or_default()
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Output::Json;
    match cli.command {
        Cmd::Keygen { bank, dir } => {
            let req = pki::keygen(&dir, &bank)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bank": bank, "public_key": req.public_key,
                        "request": dir.join(format!("{bank}.request.json"))})
                );
            } else {
                println!(
                    "Wrote {0}/{1}.identity and {0}/{1}.key (private: keep them here).",
                    dir.display(),
                    bank
                );
                println!(
                    "Send {}/{bank}.request.json to the federation operator; it holds only public keys.",
                    dir.display()
                );
                println!("Ed25519 public key: {}", req.public_key);
            }
        }
        Cmd::Ca {
            command: CaCmd::Init { dir },
        } => {
            pki::ca_init(&dir)?;
            if json {
                println!("{}", serde_json::json!({"dir": dir}));
            } else {
                println!(
                    "Wrote ca.pem, ca.key (keep it here), coordinator.pem and coordinator.key to {}.",
                    dir.display()
                );
            }
        }
        Cmd::Ca {
            command: CaCmd::Sign { dir, requests },
        } => {
            let reqs = requests
                .iter()
                .map(|p| {
                    read_json_config::<pki::BankRequest>(p)
                        .with_context(|| format!("reading the bank request {}", p.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let fed = pki::ca_sign(&dir, &reqs)?;
            write_templates(&dir, &fed.roster)?;
            if json {
                println!("{}", serde_json::json!({"dir": dir, "roster": fed.roster}));
            } else {
                println!("Signed {} banks in {}:", fed.roster.len(), dir.display());
                for b in &fed.roster {
                    println!("  send {0}.pem, ca.pem and worker-{0}.json to {0}", b.name);
                }
            }
        }
        Cmd::Ledger { file, delta } => {
            let datasets = quiver_federation::ledger::PrivacyLedger::read_only(&file)?;
            let rows = ledger_rows(&datasets, delta)?;
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<24} {:>8} {:>10} {:>7}  last",
                    "dataset", "ε", "bank ε", "rounds"
                );
                for r in &rows {
                    println!(
                        "{:<24} {:>8.3} {:>10.3} {:>7}  {}",
                        r["dataset"].as_str().unwrap_or_default(),
                        r["epsilon"].as_f64().unwrap_or_default(),
                        r["bank_epsilon"].as_f64().unwrap_or_default(),
                        r["rounds"],
                        r["last_session"].as_str().unwrap_or("-"),
                    );
                }
            }
        }
        Cmd::InitDemo { dir, banks } => {
            let fed = pki::init(&dir, &banks)?;
            write_templates(&dir, &fed.roster)?;
            if json {
                println!("{}", serde_json::json!({"dir": dir, "roster": fed.roster}));
            } else {
                println!(
                    "Wrote CA, certificates, identities and configs to {}:",
                    dir.display()
                );
                println!(
                    "  coordinator.json        quiver-fed coordinator --config {}/coordinator.json",
                    dir.display()
                );
                for b in &banks {
                    println!(
                        "  worker-{b}.json   quiver-fed worker --config {}/worker-{b}.json",
                        dir.display()
                    );
                }
                println!(
                    "Each bank keeps its own <bank>.key and <bank>.identity; edit training_set in its worker config."
                );
            }
        }
        Cmd::Coordinator { config } => {
            let cfg: CoordinatorConfig = read_json_config(&config)?;
            let coord = Coordinator::start(cfg, &config_base(&config)).await?;
            eprintln!("coordinator listening on {}", coord.addr());
            if let Some(m) = coord.metrics_addr() {
                eprintln!("Prometheus metrics on http://{m}/metrics");
            }
            let sum = coord.finish(std::time::Duration::from_secs(30)).await?;
            print_summary(&sum, json);
        }
        Cmd::Worker { config, device } => {
            let mut cfg: WorkerConfig = read_json_config(&config)?;
            if let Some(d) = device {
                cfg.device = d;
            }
            let name = cfg.name.clone();
            let out = Worker::run(cfg, &config_base(&config)).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bank": name, "epsilon": out.epsilon, "bank_epsilon": out.bank_epsilon, "holdout_auc": out.holdout_auc,
                        "rounds_joined": out.rounds_joined, "session": out.summary.session})
                );
            } else {
                let bank = out
                    .bank_epsilon
                    .map_or(String::new(), |e| format!(", bank-level ε = {e:.3}"));
                println!(
                    "{name}: joined {} rounds, spent ε = {:.3}{bank}, held-out AUC of the federated model {:.4}",
                    out.rounds_joined, out.epsilon, out.holdout_auc
                );
            }
        }
        Cmd::Simulate {
            banks,
            rounds,
            training_sets,
            features,
            label,
            model,
            strategy,
            dp: dp_kind,
            epsilon,
            delta,
            noise_multiplier,
            bank_noise_multiplier,
            bank_clip_norm,
            local_steps,
            batch_size,
            learning_rate,
            hidden,
            device,
            dir,
        } => {
            if !(2..=64).contains(&banks) {
                bail!("--banks {banks}: 2 to 64 in a simulation");
            }
            device
                .probe()
                .with_context(|| format!("--device {device}"))?;
            let tmp;
            let dir = match dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            let (sources, features, label) = if training_sets.is_empty() {
                let (f, data) = synthetic(banks, 20_000, 7);
                (
                    data.into_iter().map(BankSource::Data).collect::<Vec<_>>(),
                    f,
                    "is_fraud".to_string(),
                )
            } else {
                if training_sets.len() != banks {
                    bail!(
                        "--training-sets has {} files for --banks {banks}",
                        training_sets.len()
                    );
                }
                if features.is_empty() {
                    bail!("--features is required with --training-sets");
                }
                (
                    training_sets
                        .into_iter()
                        .map(BankSource::TrainingSet)
                        .collect(),
                    features,
                    label,
                )
            };
            let record = matches!(dp_kind, DpKind::Record | DpKind::Both);
            let dp = record.then_some(DpSgd {
                noise_multiplier,
                clip_norm: 1.0,
            });
            let bank_dp = matches!(dp_kind, DpKind::Bank | DpKind::Both).then_some(BankDp {
                clip_norm: bank_clip_norm,
                noise_multiplier: bank_noise_multiplier,
            });
            let strategy = match strategy {
                StrategyKind::Fedavg => Strategy::FedAvg,
                StrategyKind::Fedprox => Strategy::FedProx { mu: 0.01 },
                StrategyKind::Fedadam => Strategy::fed_adam(),
            };
            let budget = Budget { epsilon, delta };
            let cfg = {
                let mut c = CoordinatorConfig::default();
                c.listen = "127.0.0.1:0".parse()?;
                c.metrics_listen = None;
                c.tls = TlsFiles {
                    ca: PathBuf::new(),
                    cert: PathBuf::new(),
                    key: PathBuf::new(),
                };
                c.roster = Vec::new();
                c.features = features;
                c.label = label;
                c.architecture = match model {
                    ModelKind::Lr => Architecture::LogisticRegression,
                    ModelKind::Mlp => Architecture::Mlp { hidden },
                };
                c.rounds = rounds;
                c.threshold = None;
                c.neighbours = None;
                c.strategy = strategy;
                c.local.learning_rate = learning_rate;
                c.local.local_steps = local_steps;
                c.local.batch_size = batch_size;
                c.local.prox_mu = strategy.prox_mu();
                c.local.dp = dp;
                c.update_clip = 1.0;
                c.max_rows = 10_000_000;
                c.budget = budget;
                c.bank_dp = bank_dp;
                c.deadlines.train_s = 120.0;
                c.deadlines.stage_s = 30.0;
                c.deadlines.join_s = 30.0;
                c.seed = 1;
                c.register = None;
                c.output = Some(dir.join("result"));
                c
            };
            let sims = sources
                .into_iter()
                .enumerate()
                .map(|(i, source)| SimBank {
                    name: format!("bank_{}", (b'a' + (i % 26) as u8) as char)
                        + &if i >= 26 {
                            format!("{}", i / 26)
                        } else {
                            String::new()
                        },
                    source,
                    privacy: {
                        let mut c = PrivacyPolicy::default();
                        c.budget = budget;
                        c.require_dp = record;
                        c
                    },
                    offline: false,
                    device,
                })
                .collect();
            let res = simulate(&dir, cfg, sims).await?;
            print_summary(&res.summary, json);
            if json {
                let banks: Vec<_> = res
                    .banks
                    .iter()
                    .map(|(n, r)| match r {
                        Ok(o) => serde_json::json!({"bank": n, "epsilon": o.epsilon, "bank_epsilon": o.bank_epsilon, "holdout_auc": o.holdout_auc}),
                        Err(e) => serde_json::json!({"bank": n, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::json!({"banks": banks}));
            } else {
                println!(
                    "\n{:<10} {:>8} {:>12} {:>14}",
                    "bank", "ε spent", "bank-level ε", "held-out AUC"
                );
                for (n, r) in &res.banks {
                    let bank = |o: &quiver_federation::service::WorkerOutcome| {
                        o.bank_epsilon
                            .map_or("-".to_string(), |e| format!("{e:.3}"))
                    };
                    match r {
                        Ok(o) => println!(
                            "{n:<10} {:>8.3} {:>12} {:>14.4}",
                            o.epsilon,
                            bank(o),
                            o.holdout_auc
                        ),
                        Err(e) => println!("{n:<10} failed: {e}"),
                    }
                }
                println!("\nmodel and summary: {}/result", dir.display());
            }
        }
        Cmd::Status {
            coordinator,
            tls_dir,
            bank,
            ledger,
        } => {
            let mut s = status(&coordinator, &tls_dir, &bank).await?;
            let own = match &ledger {
                Some(f) => Some(ledger_rows(
                    &quiver_federation::ledger::PrivacyLedger::read_only(f)?,
                    1e-5,
                )?),
                None => None,
            };
            if json {
                if let Some(rows) = &own {
                    s["ledger"] = serde_json::Value::Array(rows.clone());
                }
                println!("{s}");
            } else {
                println!(
                    "state {}  round {}/{}  stage {}",
                    s["state"].as_str().unwrap_or("?"),
                    s["round"],
                    s["rounds"],
                    s["stage"]
                );
                for b in s["banks"].as_array().into_iter().flatten() {
                    let seen = b["seconds_since_seen"]
                        .as_f64()
                        .map_or("never connected".into(), |v| format!("seen {v:.1} s ago"));
                    let eps = b["epsilon"]
                        .as_f64()
                        .map_or("-".into(), |e| format!("{e:.3}"));
                    println!(
                        "  {:<12} {seen:<20} ε {eps}",
                        b["bank"].as_str().unwrap_or("?")
                    );
                }
                for r in own.iter().flatten() {
                    println!(
                        "{bank}'s ledger: dataset {}  ε {:.3} (δ 1e-5) over {} rounds of every run",
                        r["dataset"].as_str().unwrap_or_default(),
                        r["epsilon"].as_f64().unwrap_or_default(),
                        r["rounds"]
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_summary(s: &RunSummary, json: bool) {
    if json {
        let mut v = serde_json::to_value(s).expect("summary");
        v.as_object_mut().map(|o| o.remove("params"));
        println!("{v}");
        return;
    }
    print!("{}", s.history_table());
    let bank = s
        .bank_epsilon
        .map_or(String::new(), |e| format!(", bank-level ε = {e:.3}"));
    println!(
        "stopped after {} rounds ({}); ε = {:.3}{bank}, δ = {:e}; run {}",
        s.rounds, s.stopped, s.epsilon, s.delta, s.session
    );
    if let Some(r) = &s.registered {
        println!("registered {r}");
    }
}

/// One JSON object per dataset of a ledger.
fn ledger_rows(
    datasets: &std::collections::BTreeMap<String, quiver_federation::ledger::DatasetSpend>,
    delta: f64,
) -> Result<Vec<serde_json::Value>> {
    if !(delta > 0.0 && delta < 1.0) {
        bail!("--delta {delta}: between 0 and 1");
    }
    datasets
        .iter()
        .map(|(name, d)| {
            Ok(serde_json::json!({
                "dataset": name,
                "epsilon": d.record_epsilon(delta)?,
                "bank_epsilon": d.bank_epsilon(delta)?,
                "delta": delta,
                "rounds": d.rounds.len(),
                "last_session": d.rounds.last().map(|r| r.session.clone()),
            }))
        })
        .collect()
}

async fn status(url: &str, dir: &Path, bank: &str) -> Result<serde_json::Value> {
    let pem = TlsFiles {
        ca: "ca.pem".into(),
        cert: format!("{bank}.pem").into(),
        key: format!("{bank}.key").into(),
    }
    .read(dir)?;
    let ch = pki::coordinator_endpoint(url, &pem)?
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let reply = quiver_federation::service::rpc::client(ch)
        .status(quiver_federation::service::rpc::StatusRequest {})
        .await?
        .into_inner();
    Ok(serde_json::from_str(&reply.json)?)
}

fn write_templates(dir: &Path, roster: &[pki::RosterEntry]) -> Result<()> {
    let coord = serde_json::json!({
        "listen": "127.0.0.1:7443",
        "metrics_listen": "127.0.0.1:9464",
        "tls": {"ca": "ca.pem", "cert": "coordinator.pem", "key": "coordinator.key"},
        "roster": roster,
        "features": ["txn_count_1h", "amount_sum_24h"],
        "label": "is_fraud",
        "architecture": {"kind": "logistic_regression"},
        "rounds": 10,
        "strategy": {"name": "fed_avg"},
        "local": {"learning_rate": 0.5, "local_steps": 50, "batch_size": 256,
                  "dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}},
        "budget": {"epsilon": 2.5, "delta": 1e-5},
        "output": "result"
    });
    std::fs::write(
        dir.join("coordinator.json"),
        serde_json::to_vec_pretty(&coord)?,
    )?;
    for b in roster {
        let w = serde_json::json!({
            "name": b.name,
            "coordinator": "https://127.0.0.1:7443",
            "tls": {"ca": "ca.pem", "cert": format!("{}.pem", b.name), "key": format!("{}.key", b.name)},
            "identity": format!("{}.identity", b.name),
            "roster": roster,
            "training_set": "training_set.parquet",
            "privacy": {"budget": {"epsilon": 2.5, "delta": 1e-5}, "require_dp": true},
            "ledger": format!("{}.privacy-ledger.json", b.name),
            "dataset": "default",
            "device": "cpu"
        });
        std::fs::write(
            dir.join(format!("worker-{}.json", b.name)),
            serde_json::to_vec_pretty(&w)?,
        )?;
    }
    Ok(())
}

/// Synthetic fraud-like banks with different fraud rates (non-IID): amounts,
/// velocity and device counts shift for fraud.
fn synthetic(banks: usize, rows: usize, seed: u64) -> (Vec<String>, Vec<BankData>) {
    let features = vec![
        "amount".to_string(),
        "txn_count_1h".to_string(),
        "distinct_devices_24h".to_string(),
        "account_age_days".to_string(),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = (0..banks)
        .map(|b| {
            let rate = 0.01 + 0.03 * b as f64 / banks.max(2) as f64;
            let mut cols: Vec<Vec<f64>> = (0..4).map(|_| Vec::with_capacity(rows)).collect();
            let mut labels = Vec::with_capacity(rows);
            for _ in 0..rows {
                let fraud = rng.random::<f64>() < rate;
                let lift = if fraud { 1.0 } else { 0.0 };
                cols[0].push((rng.random::<f64>() * 4.0 + 2.0 + 1.5 * lift).exp());
                cols[1].push((rng.random::<f64>() * 3.0 + 3.0 * lift).floor());
                cols[2].push(1.0 + (rng.random::<f64>() * 1.5 + 1.5 * lift).floor());
                cols[3].push(rng.random::<f64>() * 2000.0 * (1.0 - 0.6 * lift));
                labels.push(lift);
            }
            BankData {
                columns: cols,
                labels,
                training_set: None,
                views: Vec::new(),
            }
        })
        .collect();
    (features, data)
}
