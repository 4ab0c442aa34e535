//! A materialization killed with SIGKILL at several moments leaves every view either
//! untouched or fully materialized (watermark and records agree), and a rerun
//! completes it.

use std::process::Command;
use std::time::Duration;

use arrow::array::RecordBatch;
use quiver_featurestore::FeatureStore;

use crate::common::{DAY, HOUR, Repo, T0, column_strings, keys, training_at, transactions};

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
        assert_serves_training_values(&store, view, &sample, until).await;
    }
    done
}

/// `view` serves, for `sample` at `until`, what a training set says.
async fn assert_serves_training_values(
    store: &FeatureStore,
    view: &str,
    sample: &[i64],
    until: i64,
) {
    let (got, _) = store
        .online()
        .unwrap()
        .get(view, None, &keys(sample), until)
        .unwrap();
    let want = training_at(store, view, sample, until).await;
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
            "{view}.{} at {until}",
            f.name()
        );
    }
}

/// `n` transactions of up to `USERS` users, one every hour over `hours` hours from
/// `from`, from a xorshift stream seeded with `seed`.
fn txn_rows(seed: u64, n: u64, from: i64, hours: u64) -> Vec<crate::common::Txn<'static>> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let dev = ["a", "b", "c", "d", "e"][(s % 5) as usize];
            (
                (s % USERS as u64) as i64,
                from + ((i * 7919) % hours) as i64 * HOUR,
                Some((s % 1000) as f64),
                Some(dev),
            )
        })
        .collect()
}

/// `quiver materialize --until until` on `repo`, as a child process to kill.
fn spawn_materialize(repo: &Repo, until: i64) -> std::process::Child {
    let until = chrono::DateTime::from_timestamp_micros(until)
        .unwrap()
        .to_rfc3339();
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "--repo",
            repo.path().to_str().unwrap(),
            "materialize",
            "--until",
            &until,
        ])
        .env_remove("QUIVER_SERVER")
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn sigkill_mid_materialization_leaves_a_consistent_store() {
    let repo = Repo::new();
    repo.write("f.yaml", REPO);
    let rows = txn_rows(12345, 200_000, T0, 20 * 24);
    let batches: Vec<RecordBatch> = rows.chunks(50_000).map(transactions).collect();
    repo.delta("data/transactions", batches).await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    drop(store); // release the registry's lock for the child processes

    let until = T0 + 20 * DAY;
    let run = || spawn_materialize(&repo, until);
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
            &chrono::DateTime::from_timestamp_micros(until)
                .unwrap()
                .to_rfc3339(),
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

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

type Served = Vec<(String, Vec<Vec<String>>)>;

/// What the online store serves for the sample keys at `t`, view by view.
fn served_at(repo: &Repo, t: i64) -> Served {
    let store = FeatureStore::open(repo.path()).unwrap();
    let online = store.online().unwrap();
    let sample: Vec<i64> = (0..USERS).step_by(997).collect();
    ["velocity", "latest"]
        .iter()
        .map(|view| {
            let (got, _) = online.get(view, None, &keys(&sample), t).unwrap();
            let cols = got
                .schema()
                .fields()
                .iter()
                .map(|f| column_strings(&got, f.name()))
                .collect();
            (view.to_string(), cols)
        })
        .collect()
}

/// Each view is at the old watermark or the new one, never between: at the old one it
/// serves exactly what it served before the run (`before`), at the new one what a
/// training set says; its records agree with its watermark. Returns how many moved.
async fn check_old_or_new(repo: &Repo, old: i64, new: i64, before: &Served) -> usize {
    let mut moved = 0;
    let mut at = Vec::new();
    {
        let store = FeatureStore::open(repo.path()).unwrap();
        let online = store.online().unwrap();
        for view in ["velocity", "latest"] {
            let wm = online
                .store()
                .watermark(view)
                .unwrap()
                .expect("materialized before the incremental run");
            assert!(
                wm.until_us == old || wm.until_us == new,
                "{view}: watermark {} is neither the old nor the new one",
                wm.until_us
            );
            let stored = online.store().scan(&wm).unwrap().count() as u64;
            assert_eq!(stored, wm.keys, "{view}: records and watermark disagree");
            moved += usize::from(wm.until_us == new);
            at.push(wm.until_us);
        }
    }
    let now_old = served_at(repo, old);
    for (i, view) in ["velocity", "latest"].iter().enumerate() {
        if at[i] == old {
            assert_eq!(now_old[i], before[i], "{view} at the old watermark changed");
        }
    }
    let store = FeatureStore::open(repo.path()).unwrap();
    let sample: Vec<i64> = (0..USERS).step_by(997).collect();
    for (i, view) in ["velocity", "latest"].iter().enumerate() {
        if at[i] == new {
            assert_serves_training_values(&store, view, &sample, new).await;
        }
    }
    moved
}

#[tokio::test]
async fn sigkill_mid_incremental_materialization_leaves_the_old_or_the_new_watermark() {
    let repo = Repo::new();
    repo.write("f.yaml", REPO);
    let first = txn_rows(12345, 100_000, T0, 10 * 24);
    repo.delta(
        "data/transactions",
        first.chunks(50_000).map(transactions).collect(),
    )
    .await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let old = T0 + 10 * DAY;
    store.materialize().with_until(old).await.unwrap();
    drop(store);
    // New rows after the old watermark, and late ones before it: an incremental run.
    let mut second = txn_rows(777, 100_000, T0 + 10 * DAY, 10 * 24);
    second.extend(txn_rows(4242, 20_000, T0 + 2 * DAY, 10 * 24));
    let url = quiver_featurestore::delta::table_url(repo.path(), "data/transactions").unwrap();
    quiver_featurestore::delta::write(
        &url,
        second.chunks(60_000).map(transactions).collect(),
        deltalake::protocol::SaveMode::Append,
    )
    .await
    .unwrap();
    let online_dir = repo.path().join(".quiver/online");
    let backup = repo.path().join("online-before");
    copy_dir(&online_dir, &backup);
    let before = served_at(&repo, old);

    let new = T0 + 20 * DAY;
    let run = || spawn_materialize(&repo, new);
    let mut finished_early = 0;
    for delay_ms in [15u64, 60, 150, 350, 700, 1400] {
        // Every attempt starts from the store as the full run left it.
        std::fs::remove_dir_all(&online_dir).unwrap();
        copy_dir(&backup, &online_dir);
        let mut child = run();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_some() {
            finished_early += 1;
        } else {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        let moved = check_old_or_new(&repo, old, new, &before).await;
        eprintln!("incremental, killed after {delay_ms} ms: views at the new watermark={moved}");
    }
    // A rerun completes it, incrementally or not, and agrees with a training set.
    assert!(run().wait().unwrap().success());
    assert_eq!(check_old_or_new(&repo, old, new, &before).await, 2);
    assert!(
        finished_early < 6,
        "every incremental run finished before its kill: too little data to test anything"
    );
}
