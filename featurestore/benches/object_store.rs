//! Object-storage benchmark: the same training set from a Delta table on local disk and
//! from the same table on an S3 server on 127.0.0.1 (moto, which checks signatures),
//! in the same run, through `quiver history` as users run it.
//!
//! ```text
//! ./scripts/object-store-env.sh      # once: installs moto and Azurite
//! cargo bench -p quiver-featurestore --bench object_store
//! cargo bench -p quiver-featurestore --bench object_store -- --transactions 500000 --entity-rows 50000
//! ```
//!
//! Data: `--transactions` (default 2,000,000) rows of `--users` (100,000) users over 60
//! days in 4 commits (4 Parquet files), `--entity-rows` (200,000) entity rows; the view
//! has 7d count and sum, 30d avg. Runs alternate local and S3 (`--runs` each, default
//! 3); the figure is the ratio of the medians. Target (issue 16): S3 within 1.5x. The
//! S3 side pays a fixed ~0.1 s (listing and reading the log, footers, one request per
//! column chunk to a single-threaded Python server), so the ratio is larger on small
//! jobs. Output: a table and one JSON line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::protocol::SaveMode;
use quiver_featurestore::delta::{self, Location};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;

use common::{DAY, arg, ts_type};

const T0: i64 = 1_704_067_200_000_000;
const SECRET_VAR: &str = "QUIVER_BENCH_S3_SECRET";

fn repo_yaml(delta_line: &str) -> String {
    format!(
        "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
{delta_line}
timestamp: ts
---
kind: FeatureView
name: txn_windows
entity: user
source: transactions
ttl: 45d
features:
  - {{ name: txn_count_7d,   agg: count,           window: 7d }}
  - {{ name: amount_sum_7d,  agg: sum(amount),     window: 7d }}
  - {{ name: amount_avg_30d, agg: avg(amount),     window: 30d }}
"
    )
}

/// Start moto and Azurite (scripts/object_stores.py); the S3 part of its JSON line.
fn start_stores() -> (std::process::Child, serde_json::Value) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var("QUIVER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    let mut child = Command::new(&python)
        .arg(root.join("scripts/object_stores.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/object-store-env.sh first",
                python.display()
            )
        });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("object-store servers up within 120 s");
    let doc: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    (child, doc["s3"].clone())
}

fn quiver(repo: &Path, args: &[&str], env: &[(&str, String)]) -> f64 {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.arg("--repo").arg(repo).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run quiver");
    assert!(
        out.status.success(),
        "quiver {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let users = arg("--users", 100_000);
    let n = arg("--transactions", 2_000_000);
    let entity_rows = arg("--entity-rows", 200_000);
    let runs = arg("--runs", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut child, s3) = start_stores();
    let dir = tempfile::tempdir().unwrap();
    let (local, remote) = (dir.path().join("local"), dir.path().join("s3"));
    let secret = s3["secret_access_key"].as_str().unwrap().to_owned();
    let endpoint = s3["endpoint"].as_str().unwrap().to_owned();
    let key_id = s3["access_key_id"].as_str().unwrap().to_owned();
    let url = format!("s3://{}/bench/transactions", s3["bucket"].as_str().unwrap());
    let prep = Instant::now();
    rt.block_on(async {
        let batches = common::transactions(users, n, T0, 60 * DAY, 7);
        common::write_delta(&local, "data/transactions", batches.clone()).await;
        let table = Location::parse(Path::new(""), &url)
            .unwrap()
            .with_options([
                ("aws_endpoint", endpoint.as_str()),
                ("aws_region", "us-east-1"),
                ("aws_allow_http", "true"),
                ("aws_access_key_id", key_id.as_str()),
                ("aws_secret_access_key", secret.as_str()),
            ])
            .unwrap();
        for (i, b) in batches.into_iter().enumerate() {
            let mode = if i == 0 {
                SaveMode::ErrorIfExists
            } else {
                SaveMode::Append
            };
            delta::write(&table, vec![b], mode).await.unwrap();
        }
    });
    std::fs::write(
        local.join("features.yaml"),
        repo_yaml("delta: data/transactions"),
    )
    .unwrap();
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(
        remote.join("features.yaml"),
        repo_yaml(&format!(
            "delta: {url}\nstorage_options:\n  aws_endpoint: \"{endpoint}\"\n  aws_region: us-east-1\n  aws_allow_http: \"true\"\n  aws_access_key_id: \"{key_id}\"\n  aws_secret_access_key: \"${{{SECRET_VAR}}}\""
        )),
    )
    .unwrap();
    // Entity rows, one Parquet file both runs read.
    let mut rng = StdRng::seed_from_u64(11);
    let ids: Vec<i64> = (0..entity_rows)
        .map(|_| rng.random_range(0..users as i64))
        .collect();
    let ts: Vec<i64> = (0..entity_rows)
        .map(|_| T0 + rng.random_range(0..60 * DAY))
        .collect();
    let entities = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ],
    )
    .unwrap();
    let entities_path = dir.path().join("entities.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&entities_path).unwrap(),
        entities.schema(),
        None,
    )
    .unwrap();
    w.write(&entities).unwrap();
    w.close().unwrap();
    let env = vec![(SECRET_VAR, secret.clone())];
    for repo in [&local, &remote] {
        quiver(repo, &["apply"], &env);
    }
    let prep_s = prep.elapsed().as_secs_f64();

    let (mut t_local, mut t_s3) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        for (repo, times) in [(&local, &mut t_local), (&remote, &mut t_s3)] {
            let out = dir.path().join(format!("train-{run}.parquet"));
            let _ = std::fs::remove_file(&out);
            let s = quiver(
                repo,
                &[
                    "history",
                    "--entities",
                    entities_path.to_str().unwrap(),
                    "--features",
                    "txn_windows",
                    "--out",
                    out.to_str().unwrap(),
                    "--overwrite",
                ],
                &env,
            );
            // The first round warms the page cache and the server: not counted.
            if run > 0 {
                times.push(s);
            }
        }
    }
    let (ml, ms) = (median(&mut t_local), median(&mut t_s3));
    let ratio = ms / ml;
    println!(
        "object-store training set: {n} transactions, {users} users, {entity_rows} entity rows, 4 commits; prepared in {prep_s:.1}s"
    );
    println!("| table on | median s | runs |");
    println!("|---|---|---|");
    println!("| local disk | {ml:.3} | {runs} |");
    println!("| S3 (moto on 127.0.0.1) | {ms:.3} | {runs} |");
    println!(
        "S3 / local = {ratio:.2}x (target <= 1.5x: {})",
        if ratio <= 1.5 { "met" } else { "MISSED" }
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "object_store", "transactions": n, "users": users,
            "entity_rows": entity_rows, "runs": runs,
            "local_median_s": ml, "s3_median_s": ms, "ratio": ratio,
            "local_s": t_local, "s3_s": t_s3,
        })
    );
    drop(child.stdin.take());
    let _ = child.wait();
}
