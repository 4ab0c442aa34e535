//! The fraud scenario end to end, as far as quiver goes today: three banks generate
//! their data, apply the same feature repo, build point-in-time training sets, serve
//! features over Flight, and train one model together with secure aggregation and DP.
//!
//! ```text
//! cargo run --release -p quiver-examples --bin fraud            # everything (`all`)
//! cargo run --release -p quiver-examples --bin fraud -- generate --banks 5 --transactions 1000000
//! ```

mod federate;

use quiver_examples::fraud_data as generate;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use clap::{Args, Parser, Subcommand};
use quiver_featurestore::FeatureStore;
use quiver_federation::train::Device;

/// The fraud example: 3 banks, a data generator, features and training sets.
#[derive(Debug, Parser)]
#[command(name = "fraud")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Debug, Clone, Args)]
struct DataArgs {
    /// Folder for the banks' data and repos.
    #[arg(long, global = true, default_value = "target/quiver-fraud")]
    out: PathBuf,
    /// Number of banks.
    #[arg(long, global = true, default_value_t = 3)]
    banks: usize,
    /// Customers per bank.
    #[arg(long, global = true, default_value_t = 20_000)]
    users: usize,
    /// Transactions per bank.
    #[arg(long, global = true, default_value_t = 300_000)]
    transactions: usize,
    /// Days of history.
    #[arg(long, global = true, default_value_t = 60)]
    days: i64,
    /// Random seed (same seed, same data).
    #[arg(long, global = true, default_value_t = 42)]
    seed: u64,
    /// First day of data, YYYY-MM-DD (default: `days` before today, so that online
    /// values are fresh; pin it to reproduce a run exactly).
    #[arg(long, global = true)]
    start: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write each bank's Delta tables, labels and feature repo.
    Generate,
    /// Apply each bank's repo and build its training set (needs `generate` first).
    Train,
    /// Materialize each bank's features, serve bank_a's over Arrow Flight, and query
    /// them with the Rust client SDK (needs `train` first).
    Serve,
    /// Train one fraud model across the banks with secure aggregation and DP-SGD
    /// (coordinator and workers on loopback, gRPC over mutual TLS), register it in
    /// bank_a's registry, and compare its AUC with each bank alone and with pooled data
    /// (needs `train` first).
    Federate(FederateArgs),
    /// Generate, train, serve and federate (the default).
    All,
}

#[derive(Debug, Clone, Args)]
struct FederateArgs {
    /// Training rounds (fewer if a bank's budget runs out).
    #[arg(long, default_value_t = 8)]
    rounds: u64,
    /// Privacy budget ε of every bank (δ = 1e-5).
    #[arg(long, default_value_t = 2.5)]
    epsilon: f64,
    /// DP-SGD noise multiplier.
    #[arg(long, default_value_t = 1.0)]
    noise_multiplier: f64,
    /// Where the banks train: cpu, cpu-batched, or cuda:N (a build of the example
    /// with `--features gpu`).
    #[arg(long, default_value_t = Device::Cpu)]
    device: Device,
}

impl Default for FederateArgs {
    fn default() -> Self {
        Self {
            rounds: 8,
            epsilon: 2.5,
            noise_multiplier: 1.0,
            device: Device::Cpu,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUIVER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let d = &cli.data;
    let start_day = match &d.start {
        Some(s) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|e| anyhow::anyhow!("--start {s}: {e}; write YYYY-MM-DD"))?,
        None => chrono::Utc::now().date_naive() - chrono::Days::new(d.days.max(1) as u64),
    };
    let cfg = generate::Config {
        banks: d.banks,
        users: d.users,
        transactions: d.transactions,
        days: d.days,
        seed: d.seed,
        start_us: start_day
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros(),
    };
    let cmd = cli.command.unwrap_or(Cmd::All);
    let fed_args = match &cmd {
        Cmd::Federate(a) => Some(a.clone()),
        Cmd::All => Some(FederateArgs::default()),
        _ => None,
    };
    if matches!(cmd, Cmd::Generate | Cmd::All) {
        let t = Instant::now();
        println!(
            "Generating {} banks x {} transactions into {} ...",
            cfg.banks,
            cfg.transactions,
            d.out.display()
        );
        let banks = generate::generate(&cfg, &d.out).await?;
        println!(
            "\n{:<8} {:>12} {:>8} {:>10} {:>10} {:>8}",
            "bank", "transactions", "fraud", "fraud rate", "logins", "labels"
        );
        for b in &banks {
            println!(
                "{:<8} {:>12} {:>8} {:>9.2}% {:>10} {:>8}",
                b.name,
                b.transactions,
                b.fraud,
                100.0 * b.fraud as f64 / b.transactions as f64,
                b.logins,
                b.labels
            );
        }
        println!("generated in {:.1}s\n", t.elapsed().as_secs_f64());
    }
    if matches!(cmd, Cmd::Train | Cmd::All) {
        train(&cfg, &d.out).await?;
    }
    if matches!(cmd, Cmd::Serve | Cmd::All) {
        serve(&cfg, &d.out).await?;
    }
    if let Some(a) = fed_args {
        federate::run(&cfg, &d.out, &a).await?;
    }
    Ok(())
}

/// Materialize every bank's online store; serve bank_a's over Flight on loopback and
/// read features for a few customers through the SDK.
async fn serve(cfg: &generate::Config, out: &std::path::Path) -> Result<()> {
    use quiver_featurestore::client::Client;
    use quiver_featurestore::serve::{ServeConfig, Tokens};
    println!("\nMaterializing the online stores ...");
    println!(
        "{:<8} {:<24} {:<12} {:>9} {:>8} {:>8}",
        "bank", "view", "mode", "rows", "keys", "seconds"
    );
    let mut stores = Vec::new();
    for b in 0..cfg.banks {
        let name = generate::bank_name(b);
        let store = FeatureStore::open(out.join(&name))?;
        store.apply().await?;
        let report = store.materialize().await?;
        for v in &report.views {
            println!(
                "{:<8} {:<24} {:<12} {:>9} {:>8} {:>8.2}",
                name, v.view, v.mode, v.rows_read, v.keys_total, v.seconds
            );
        }
        stores.push(store);
    }
    // A fresh random token for this run; the server only listens on loopback.
    let token = format!("{:032x}", rand::random::<u128>());
    let tokens = Tokens::new().with(&token, "bank_a", false)?;
    let server = ServeConfig::new("127.0.0.1:0".parse()?, tokens)
        .spawn(stores.swap_remove(0))
        .await?;
    let url = format!("http://{}", server.addr());
    println!(
        "\nbank_a serves Arrow Flight on {url} (metrics on http://{}/metrics)",
        server.metrics_addr().expect("metrics on")
    );
    let mut client = Client::connect(&url).await?.with_token(&token)?;
    let views = client.list_views().await?;
    println!(
        "views: {}",
        views
            .iter()
            .map(|v| v.view.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The five customers with the most transactions in the last 30 days, and one unknown.
    let velocity = client.scan("user_txn_velocity", None).await?;
    let mut counts: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let cutoff = chrono::Utc::now().timestamp_micros() - 30 * 86_400_000_000;
    for b in &velocity {
        let users = b
            .column_by_name("user_id")
            .expect("key")
            .as_primitive::<arrow::datatypes::Int64Type>();
        let ts = b
            .column_by_name("ts")
            .expect("time")
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        for i in 0..b.num_rows() {
            if ts.value(i) > cutoff {
                *counts.entry(users.value(i)).or_default() += 1;
            }
        }
    }
    let mut top: Vec<(i64, usize)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut ids: Vec<i64> = top.iter().take(5).map(|(u, _)| *u).collect();
    ids.push(999_999_999);
    let keys = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("user_id", DataType::Int64, false),
        ])),
        vec![std::sync::Arc::new(arrow::array::Int64Array::from(ids))],
    )?;
    for (view, features) in [
        (
            "user_txn_velocity",
            vec!["txn_count_1h", "txn_count_24h", "txn_count_7d"],
        ),
        (
            "user_amount_stats",
            vec!["amount_sum_24h", "amount_avg_30d", "amount_max_7d"],
        ),
        (
            "user_device_ip_stats",
            vec!["distinct_devices_30d", "distinct_ips_7d"],
        ),
        (
            "user_login_stats",
            vec!["login_ip_count_30d", "last_login_ip"],
        ),
        ("user_device_novelty", vec!["device_jaccard"]),
    ] {
        let t = Instant::now();
        let batch = client
            .get_online_features(view, Some(&features), &keys)
            .await?;
        let shown: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| {
                !batch
                    .schema()
                    .field(i)
                    .name()
                    .ends_with("__event_timestamp")
            })
            .collect();
        println!(
            "\n{view} (online, as of now; {:.1} ms round trip):",
            t.elapsed().as_secs_f64() * 1e3
        );
        println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&[batch.project(&shown)?])?
        );
    }
    server.shutdown().await;
    Ok(())
}

/// Apply each bank's repo and build its training set from its labels.
async fn train(cfg: &generate::Config, out: &std::path::Path) -> Result<()> {
    println!(
        "{:<8} {:>7} {:>9} {:>8} {:>9} {:>10}",
        "bank", "applied", "rows", "columns", "seconds", "rows/s"
    );
    let mut summaries = Vec::new();
    for b in 0..cfg.banks {
        let name = generate::bank_name(b);
        let dir = out.join(&name);
        anyhow::ensure!(
            dir.join("features.yaml").exists(),
            "{} has no data yet; run `fraud generate` first",
            dir.display()
        );
        let store = FeatureStore::open(&dir)?;
        let applied = store.apply().await?;
        let t = Instant::now();
        let set = store
            .historical_features()
            .with_entities_file(dir.join("labels.parquet"))
            .with_features("user_txn_velocity,user_amount_stats,user_device_ip_stats,user_login_stats,user_last_txn,user_device_novelty")?
            .await?;
        let secs = t.elapsed().as_secs_f64();
        set.write(
            &dir.join("training_set.parquet"),
            quiver_featurestore::offline::OutputFormat::Parquet,
            true,
        )
        .await?;
        println!(
            "{:<8} {:>7} {:>9} {:>8} {:>9.2} {:>10.0}",
            name,
            applied.plan.changes.len(),
            set.num_rows(),
            set.schema.fields().len(),
            secs,
            set.num_rows() as f64 / secs
        );
        summaries.push((name, set));
    }
    // Do the features separate fraud from legitimate transactions? Mean per class.
    let shown = [
        "txn_count_1h",
        "amount_sum_24h",
        "distinct_devices_24h",
        "distinct_ips_7d",
        "login_ip_count_30d",
    ];
    println!(
        "\nmean feature value, fraud vs legitimate (features as of 1 s before each transaction):"
    );
    print!("{:<8}", "bank");
    for f in shown {
        print!(" {:>22}", f);
    }
    println!();
    for (name, set) in &summaries {
        let batch = set.concat()?;
        let y = batch
            .column_by_name("is_fraud")
            .expect("labels carry is_fraud")
            .as_boolean()
            .clone();
        print!("{:<8}", name);
        for f in shown {
            let col = cast(
                batch.column_by_name(f).expect("requested feature"),
                &DataType::Float64,
            )?;
            let col = col.as_primitive::<Float64Type>();
            let mean = |want: bool| {
                let (mut s, mut n) = (0.0, 0usize);
                for i in 0..col.len() {
                    if y.value(i) == want && col.is_valid(i) {
                        s += col.value(i);
                        n += 1;
                    }
                }
                s / n.max(1) as f64
            };
            print!(" {:>10.2} vs {:>8.2}", mean(true), mean(false));
        }
        println!();
    }
    println!(
        "\nTraining sets: {}/<bank>/training_set.parquet (lineage in the file's `quiver.lineage` metadata).",
        out.display()
    );
    Ok(())
}
