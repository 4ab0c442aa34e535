//! A materialization killed with SIGKILL at several moments leaves every view either
//! untouched or fully materialized (watermark and records agree), and a rerun
//! completes it.

use std::process::Command;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_featurestore::FeatureStore;

use crate::common::{DAY, HOUR, Repo, T0, column_strings, entities, transactions};

const REPO: &str = "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
delta: data/transactions
timestamp: ts
---
kind: FeatureView
name: velocity
entity: user
source: transactions
ttl: 30d
features:
  - { name: n_1d,   agg: count,                     window: 1d }
  - { name: sum_7d, agg: sum(amount),               window: 7d }
  - { name: devs,   agg: count_distinct(device_id) }
---
kind: FeatureView
name: latest
entity: user
source: transactions
features: [amount]
";

const USERS: i64 = 20_000;

fn keys(ids: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )])),
        vec![std::sync::Arc::new(Int64Array::from(ids.to_vec()))],
    )
    .unwrap()
}

/// Every materialized view holds what a training set says, and as many records as its
/// watermark claims.
async fn check_consistent(repo: &Repo, until: i64) -> usize {
    let store = FeatureStore::open(repo.path()).unwrap();
    let online = store.online().unwrap();
    let sample: Vec<i64> = (0..USERS).step_by(997).collect();
    let mut done = 0;
    for view in ["velocity", "latest"] {
        let Some(wm) = online.store().watermark(view).unwrap() else {
            continue;
        };
        done += 1;
        assert_eq!(wm.until_us, until);
        let stored = online.store().scan(&wm).unwrap().count() as u64;
        assert_eq!(
            stored, wm.keys,
            "{view}: watermark says {} keys, store holds {stored}",
            wm.keys
        );
        let (got, _) = online.get(view, None, &keys(&sample), until).unwrap();
        let rows: Vec<(i64, i64)> = sample.iter().map(|&k| (k, until)).collect();
        let want = store
            .historical_features()
            .with_entities(vec![entities(&rows)])
            .with_features(view)
            .unwrap()
            .await
            .unwrap()
            .concat()
            .unwrap();
        for f in want
            .schema()
            .fields()
            .iter()
            .skip(2)
            .filter(|f| !f.name().ends_with("__event_timestamp"))
        {
            assert_eq!(
                column_strings(&got, f.name()),
                column_strings(&want, f.name()),
                "{view}.{}",
                f.name()
            );
        }
    }
    done
}

#[tokio::test]
async fn sigkill_mid_materialization_leaves_a_consistent_store() {
    let repo = Repo::new();
    repo.write("f.yaml", REPO);
    let mut rows = Vec::with_capacity(200_000);
    let mut s = 12345u64;
    for i in 0..200_000u64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let dev = ["a", "b", "c", "d", "e"][(s % 5) as usize];
        rows.push((
            (s % USERS as u64) as i64,
            T0 + ((i * 7919) % (20 * 24)) as i64 * HOUR,
            Some((s % 1000) as f64),
            Some(dev),
        ));
    }
    let batches: Vec<RecordBatch> = rows.chunks(50_000).map(transactions).collect();
    repo.delta("data/transactions", batches).await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    drop(store); // release the registry's lock for the child processes

    let until = T0 + 20 * DAY;
    let until_text = chrono::DateTime::from_timestamp_micros(until)
        .unwrap()
        .to_rfc3339();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args([
                "--repo",
                repo.path().to_str().unwrap(),
                "materialize",
                "--until",
                &until_text,
            ])
            .env_remove("QUIVER_SERVER")
            .spawn()
            .unwrap()
    };
    let mut finished_early = 0;
    for delay_ms in [20u64, 120, 300, 700, 1500, 3000] {
        let mut child = run();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let killed = if child.try_wait().unwrap().is_some() {
            finished_early += 1;
            false
        } else {
            child.kill().unwrap(); // SIGKILL
            true
        };
        child.wait().unwrap();
        let done = check_consistent(&repo, until).await;
        eprintln!("after {delay_ms} ms: killed={killed}, views materialized={done}");
    }
    // A rerun completes whatever was left, and a second rerun changes nothing.
    let status = run().wait().unwrap();
    assert!(status.success());
    assert_eq!(check_consistent(&repo, until).await, 2);
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "--repo",
            repo.path().to_str().unwrap(),
            "--output",
            "json",
            "materialize",
            "--until",
            &until_text,
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for v in report["views"].as_array().unwrap() {
        assert_eq!(v["mode"], "up_to_date", "{v}");
    }
    assert!(
        finished_early < 6,
        "every run finished before its kill: the data is too small to test anything"
    );
}
