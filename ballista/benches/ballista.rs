//! The fraud training set on local DataFusion and on a Ballista cluster of 1 and 2
//! executors, and of 2 with mutual TLS on every connection (processes on 127.0.0.1,
//! this machine's cores shared).
//!
//! ```text
//! cargo bench -p quiver-ballista --bench ballista
//! cargo bench -p quiver-ballista --bench ballista -- --transactions 1000000 --users 50000 --runs 3
//! ```
//!
//! Data: one bank of the fraud example (`--transactions`, default 300,000; `--users`,
//! 20,000), its six views (windowed aggregates, as-of columns, SQL views, a WebAssembly
//! UDF view) for every label row. Each engine runs `--runs` times (default 3); the
//! figure is the median, and every run's rows are checked equal to the local ones.
//! Output: the plan's shape, a table and one JSON line.

use std::time::Instant;

use quiver_ballista::local_cluster::{LocalCluster, Pki};
use quiver_examples::fraud_data::{Config, bank_name, generate};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::offline::Engine;

const VIEWS: &str = "user_txn_velocity,user_amount_stats,user_device_ip_stats,user_login_stats,user_last_txn,user_device_novelty";

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn run(
    store: &FeatureStore,
    labels: &std::path::Path,
    engine: &Engine,
) -> (f64, arrow::array::RecordBatch) {
    let t = Instant::now();
    let set = store
        .historical_features()
        .with_entities_file(labels)
        .with_features(VIEWS)
        .unwrap()
        .with_engine(engine.clone())
        .await
        .unwrap();
    (t.elapsed().as_secs_f64(), set.concat().unwrap())
}

fn main() {
    let runs = arg("--runs", 3).max(1);
    let cfg = Config {
        banks: 1,
        users: arg("--users", 20_000),
        transactions: arg("--transactions", 300_000),
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        generate(&cfg, dir.path()).await.unwrap();
        let bank = dir.path().join(bank_name(0));
        let store = FeatureStore::open(&bank).unwrap();
        store.apply().await.unwrap();
        let labels = bank.join("labels.parquet");

        // The plan's shape, as the scheduler receives it.
        let prepared = store
            .historical_features()
            .with_entities_file(&labels)
            .with_features(VIEWS)
            .unwrap()
            .with_portable_scans(true)
            .prepare()
            .await
            .unwrap();
        let (plan, _) = prepared.physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let count = |node: &str| text.matches(node).count();
        let shape = format!(
            "{} point-in-time joins, {} Delta scans, {} hash repartitions (SQL window views), {} merges into the joins",
            count("PointInTimeExec:"),
            count("DeltaFilesExec:"),
            count("RepartitionExec: partitioning=Hash"),
            count("CoalescePartitionsExec")
        );

        let mut local_secs = Vec::new();
        let mut reference = None;
        for _ in 0..runs {
            let (s, rows) = run(&store, &labels, &Engine::Local).await;
            local_secs.push(s);
            reference = Some(rows);
        }
        let reference = reference.unwrap();
        let mut results = vec![("local DataFusion".to_string(), median(local_secs))];
        for (executors, tls) in [(1usize, false), (2, false), (2, true)] {
            let work = dir.path().join(format!("work-{executors}{}", if tls { "-tls" } else { "" }));
            let pki = tls.then(|| Pki::generate(&work.join("pki")).unwrap());
            let mut cluster = LocalCluster::builder(
                env!("CARGO_BIN_EXE_quiver-ballista-scheduler").as_ref(),
                env!("CARGO_BIN_EXE_quiver-ballista-executor").as_ref(),
            )
            .executors(executors)
            .tasks(2)
            .work_dir(&work);
            if let Some(pki) = &pki {
                cluster = cluster.tls(pki);
            }
            let cluster = cluster.start().unwrap();
            let mut engine = Engine::parse(&cluster.engine_url()).unwrap();
            if let Some(pki) = &pki {
                engine = engine.with_tls(pki.client_tls(&pki.client).unwrap());
            }
            // Executors register a moment after they listen: a first job that waits.
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let attempt = store
                    .historical_features()
                    .with_entities_file(&labels)
                    .with_features(VIEWS)
                    .unwrap()
                    .with_engine(engine.clone())
                    .await;
                match attempt {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("waiting for executors: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        let log = work.join("executor-0.log");
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("rror")).take(8).collect();
                        panic!("{e}\nscheduler errors:\n{}", errors.join("\n"))
                    }
                }
            }
            let mut secs = Vec::new();
            for _ in 0..runs {
                let (s, rows) = run(&store, &labels, &engine).await;
                assert_eq!(rows, reference, "Ballista's rows equal the local ones");
                secs.push(s);
            }
            let tls_note = if tls { ", mutual TLS" } else { "" };
            results.push((format!("Ballista, {executors} executor(s){tls_note}"), median(secs)));
        }

        let rows = reference.num_rows();
        println!("\nfraud training set: {rows} label rows x {} columns; {} transactions", reference.num_columns(), cfg.transactions);
        println!("plan: {shape}");
        println!("\n{:<38} {:>10} {:>10}", "engine", "seconds", "vs local");
        let base = results[0].1;
        for (name, s) in &results {
            println!("{name:<38} {s:>10.3} {:>9.2}x", s / base);
        }
        println!(
            "{}",
            serde_json::json!({
                "rows": rows, "transactions": cfg.transactions, "users": cfg.users, "runs": runs,
                "local_s": results[0].1, "ballista_1_executor_s": results[1].1,
                "ballista_2_executors_s": results[2].1,
                "ballista_2_executors_tls_s": results[3].1,
                "tls_overhead": results[3].1 / results[2].1,
                "overhead_1_executor": results[1].1 / base, "overhead_2_executors": results[2].1 / base,
                "plan": shape,
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            })
        );
    });
}
