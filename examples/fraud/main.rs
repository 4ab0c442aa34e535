//! The fraud scenario end to end, as far as quiver goes today: three banks generate
//! their data, apply the same feature repo, and build point-in-time training sets.
//!
//! ```text
//! cargo run --release -p quiver-examples --bin fraud            # everything (`all`)
//! cargo run --release -p quiver-examples --bin fraud -- generate --banks 5 --transactions 1000000
//! ```

use quiver_examples::fraud_data as generate;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use clap::{Args, Parser, Subcommand};
use quiver_featurestore::FeatureStore;

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
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write each bank's Delta tables, labels and feature repo.
    Generate,
    /// Apply each bank's repo and build its training set (needs `generate` first).
    Train,
    /// Generate, apply and build training sets (the default).
    All,
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
    let cfg = generate::Config {
        banks: d.banks,
        users: d.users,
        transactions: d.transactions,
        days: d.days,
        seed: d.seed,
        ..Default::default()
    };
    let cmd = cli.command.unwrap_or(Cmd::All);
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
            .with_features("user_txn_velocity,user_amount_stats,user_device_ip_stats,user_login_stats,user_last_txn")?
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
