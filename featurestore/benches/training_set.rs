//! Training-set benchmark: point-in-time joins from Delta tables on disk.
//!
//! ```text
//! cargo bench -p quiver-featurestore --bench training_set                 # defaults below
//! cargo bench -p quiver-featurestore --bench training_set -- --runs 3 --users 10000
//! ```
//!
//! Data (generated once, cached under `target/quiver-bench/`): 1,000,000 transactions
//! of 100,000 users over 60 days (Zipf-skewed activity), and daily per-user snapshots
//! of 4 precomputed values (about 4.5 million rows). Then 100,000 (user_id,
//! event_timestamp) rows get:
//! - (a) 4 windowed features from raw transactions: 7d count, 7d sum, 30d avg,
//!   30d count_distinct(device_id);
//! - (b) 4 precomputed columns from the snapshots, as of each time, with a TTL.
//!
//! Output: a table and one JSON line. Peak memory is the process's peak RSS during the
//! measured runs (reset before them through /proc/self/clear_refs).
//!
//! `--prepare-only` generates the data, writes the entity rows to `entities.parquet` in
//! the data folder, prints the folder and stops: `scripts/bench-vs-duckdb.sh` runs the
//! `quiver history` command and DuckDB on those files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_featurestore::{FeatureStore, delta};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;

use common::{DAY, peak_rss_bytes, reset_peak_rss, ts_type};

const T0: i64 = 1_704_067_200_000_000;

struct Args {
    prepare_only: bool,
    users: usize,
    transactions: usize,
    entity_rows: usize,
    days: i64,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args {
        prepare_only: false,
        users: 100_000,
        transactions: 1_000_000,
        entity_rows: 100_000,
        days: 60,
        runs: 5,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let val = |i: usize| argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match argv[i].as_str() {
            "--users" => a.users = val(i).expect("--users N"),
            "--transactions" => a.transactions = val(i).expect("--transactions N"),
            "--entity-rows" => a.entity_rows = val(i).expect("--entity-rows N"),
            "--runs" => a.runs = val(i).expect("--runs N").max(1),
            "--bench" => {
                i += 1;
                continue;
            }
            "--prepare-only" => {
                a.prepare_only = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

const REPO: &str = "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
delta: data/transactions
timestamp: ts
---
kind: Source
name: snapshots
delta: data/snapshots
timestamp: ts
---
kind: FeatureView
name: txn_windows
entity: user
source: transactions
ttl: 45d
features:
  - { name: txn_count_7d,         agg: count,                     window: 7d }
  - { name: amount_sum_7d,        agg: sum(amount),               window: 7d }
  - { name: amount_avg_30d,       agg: avg(amount),               window: 30d }
  - { name: distinct_devices_30d, agg: count_distinct(device_id), window: 30d }
---
kind: FeatureView
name: daily_snapshot
entity: user
source: snapshots
ttl: 3d
features: [balance, credit_limit, risk_score, days_past_due]
";

/// Generate the data once per size; later runs reuse it.
async fn prepare(a: &Args) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/quiver-bench")
        .join(format!("u{}-t{}-d{}", a.users, a.transactions, a.days));
    if root.join("ready").exists() {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("features.yaml"), REPO).unwrap();
    let started = Instant::now();
    let span = a.days * DAY;
    let batches = common::transactions(a.users, a.transactions, T0, span, 7);
    let mut rng = StdRng::seed_from_u64(8);
    common::write_delta(&root, "data/transactions", batches).await;

    // Daily snapshots: each user from a first day in [0, 30) to the end: ~45 days each.
    let first: Vec<i64> = (0..a.users).map(|_| rng.random_range(0..30)).collect();
    let snap_schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("balance", DataType::Float64, false),
        Field::new("credit_limit", DataType::Float64, false),
        Field::new("risk_score", DataType::Float64, false),
        Field::new("days_past_due", DataType::Int64, false),
    ]));
    let mut batches = Vec::new();
    for day in 0..a.days {
        let users: Vec<i64> = (0..a.users as i64)
            .filter(|&u| first[u as usize] <= day)
            .collect();
        let n = users.len();
        batches.push(
            RecordBatch::try_new(
                snap_schema.clone(),
                vec![
                    Arc::new(Int64Array::from(users.clone())),
                    Arc::new(
                        TimestampMicrosecondArray::from(vec![T0 + day * DAY; n])
                            .with_timezone("UTC"),
                    ),
                    Arc::new(Float64Array::from_iter_values(
                        users.iter().map(|u| ((u * 31 + day) % 10_000) as f64),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        users.iter().map(|u| ((u % 50) * 1000) as f64),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        users
                            .iter()
                            .map(|u| ((u * 13 + day * 7) % 1000) as f64 / 1000.0),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        users.iter().map(|u| (u + day) % 90),
                    )),
                ],
            )
            .unwrap(),
        );
    }
    // Write the snapshots as 6 files of about 10 days each.
    let merged: Vec<RecordBatch> = batches
        .chunks(batches.len().div_ceil(6))
        .map(|c| arrow::compute::concat_batches(&snap_schema, c).unwrap())
        .collect();
    common::write_delta(&root, "data/snapshots", merged).await;
    let store = FeatureStore::open(&root).unwrap();
    store.apply().await.expect("apply bench repo");
    std::fs::write(root.join("ready"), "").unwrap();
    eprintln!(
        "generated bench data in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        root.display()
    );
    root
}

fn entity_rows(a: &Args) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(11);
    let span = a.days * DAY;
    let users: Vec<i64> = (0..a.entity_rows)
        .map(|_| rng.random_range(0..a.users as i64))
        .collect();
    let ts: Vec<i64> = (0..a.entity_rows)
        .map(|_| T0 + rng.random_range(0..span))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from(users)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ],
    )
    .unwrap()
}

struct Measured {
    name: &'static str,
    target_s: f64,
    times: Vec<f64>,
    peak: Option<u64>,
    rows: usize,
    source_rows: u64,
}

async fn measure(
    store: &FeatureStore,
    entities: &RecordBatch,
    features: &str,
    runs: usize,
    name: &'static str,
    target_s: f64,
    source_rows: u64,
) -> Measured {
    // Warm-up: opens the tables, fills the OS page cache.
    let warm = store
        .historical_features()
        .with_entities(vec![entities.clone()])
        .with_features(features)
        .unwrap()
        .await
        .unwrap();
    let rows = warm.num_rows();
    drop(warm);
    reset_peak_rss();
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let set = store
            .historical_features()
            .with_entities(vec![entities.clone()])
            .with_features(features)
            .unwrap()
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(set.num_rows(), rows);
    }
    times.sort_by(f64::total_cmp);
    Measured {
        name,
        target_s,
        times,
        peak: peak_rss_bytes(),
        rows,
        source_rows,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let root = prepare(&a).await;
        let entities = entity_rows(&a);
        if a.prepare_only {
            let path = root.join("entities.parquet");
            let file = std::fs::File::create(&path).unwrap();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(file, entities.schema(), None).unwrap();
            w.write(&entities).unwrap();
            w.close().unwrap();
            println!("{}", root.canonicalize().unwrap().display());
            return;
        }
        let store = FeatureStore::open(&root).unwrap();
        let rows_of = |view: &str| {
            let v = store.view(view, None).unwrap();
            let root = root.clone();
            let src = v.definition.sources[0].delta.value.clone();
            async move { delta::open(&delta::table_url(&root, &src).unwrap(), None).await.unwrap().num_rows.unwrap_or(0) }
        };
        let txn_rows = rows_of("txn_windows").await;
        let snap_rows = rows_of("daily_snapshot").await;
        let results = [
            measure(&store, &entities, "txn_windows", a.runs, "a_windowed_aggregates", 0.3, txn_rows).await,
            measure(&store, &entities, "daily_snapshot", a.runs, "b_asof_snapshots", 0.5, snap_rows).await,
        ];
        println!(
            "\n{:<24} {:>12} {:>12} {:>10} {:>10} {:>10} {:>14} {:>14} {:>10}",
            "case", "source rows", "entity rows", "min s", "median s", "target s", "rows/s", "source rows/s", "peak MiB"
        );
        let mut json = serde_json::Map::new();
        for m in &results {
            let median = m.times[m.times.len() / 2];
            let min = m.times[0];
            let peak_mib = m.peak.map(|p| p as f64 / 1048576.0).unwrap_or(f64::NAN);
            println!(
                "{:<24} {:>12} {:>12} {:>10.3} {:>10.3} {:>10.2} {:>14.0} {:>14.0} {:>10.0}",
                m.name,
                m.source_rows,
                m.rows,
                min,
                median,
                m.target_s,
                m.rows as f64 / median,
                m.source_rows as f64 / median,
                peak_mib
            );
            json.insert(
                m.name.into(),
                serde_json::json!({
                    "source_rows": m.source_rows, "entity_rows": m.rows, "min_s": min, "median_s": median,
                    "target_s": m.target_s, "meets_target": median < m.target_s,
                    "rows_per_s": m.rows as f64 / median, "peak_rss_mib": peak_mib,
                }),
            );
        }
        json.insert("threads".into(), serde_json::json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)));
        println!("{}", serde_json::Value::Object(json));
    });
}
