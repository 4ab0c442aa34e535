//! Materialization and online lookups against real Delta tables and sled on disk. The
//! central check: the online value of a key at time `t` equals its training-set value
//! at `t`, also long after materialization ran (windows keep sliding).

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::protocol::SaveMode;
use proptest::prelude::*;
use quiver_featurestore::FeatureStore;

use crate::common::{
    DAY, HOUR, Repo, T0, assert_online_equals_training, column_strings, entities, keys,
    transactions,
};

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
name: stats
entity: user
source: transactions
ttl: 20d
features:
  - { name: n_1d,      agg: count,                     window: 1d }
  - { name: n_all,     agg: count }
  - { name: sum_3d,    agg: sum(amount),               window: 3d }
  - { name: avg_all,   agg: avg(amount) }
  - { name: max_3d,    agg: max(amount),               window: 3d }
  - { name: min_all,   agg: min(amount) }
  - { name: std_3d,    agg: stddev(amount),            window: 3d }
  - { name: devs_3d,   agg: count_distinct(device_id), window: 3d }
  - { name: devs_all,  agg: count_distinct(device_id) }
  - { name: last_dev,  agg: last(device_id) }
  - { name: last_dev_1d, agg: last(device_id),         window: 1d }
---
kind: FeatureView
name: latest
entity: user
source: transactions
ttl: 5d
features:
  - { name: amount }
  - { name: device, column: device_id }
---
kind: FeatureView
name: doubled
entity: user
source: transactions
ttl: 10d
sql: SELECT user_id, ts, amount * 2 AS amount2 FROM transactions WHERE amount IS NOT NULL
";

async fn repo_with(rows: &[crate::common::Txn<'_>]) -> (Repo, FeatureStore) {
    let repo = Repo::new();
    repo.write("f.yaml", REPO);
    repo.delta("data/transactions", vec![transactions(rows)])
        .await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    (repo, store)
}

fn random_rows(
    seed: u64,
    n: usize,
    until: i64,
) -> Vec<(i64, i64, Option<f64>, Option<&'static str>)> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    const DEVS: [&str; 4] = ["a", "b", "c", "d"];
    (0..n)
        .map(|_| {
            let k = (next() % 6) as i64;
            let ts = until - (next() % (30 * 24)) as i64 * HOUR;
            let amount = (next() % 5 != 0).then(|| (next() % 2000) as f64 / 8.0);
            let dev = (next() % 4 != 0).then(|| DEVS[(next() % 4) as usize]);
            (k, ts, amount, dev)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

    /// Online values at materialization time and long after equal training-set values.
    #[test]
    fn online_values_equal_training_values(seed in any::<u64>(), n in 1usize..120) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let until = T0 + 40 * DAY;
            let rows = random_rows(seed, n, until);
            let (_repo, store) = repo_with(&rows).await;
            store.materialize().with_until(until).await.unwrap();
            let ids = [0, 1, 2, 3, 4, 5, 99];
            for t in [until, until + HOUR, until + 2 * DAY, until + 25 * DAY] {
                for view in ["stats", "latest", "doubled"] {
                    assert_online_equals_training(&store, view, &ids, t).await;
                }
            }
        });
    }
}

#[tokio::test]
async fn incremental_runs_equal_a_full_rebuild_and_reruns_change_nothing() {
    let t1 = T0 + 20 * DAY;
    let t2 = T0 + 25 * DAY;
    let first = random_rows(7, 200, t1);
    let (repo, store) = repo_with(&first).await;
    let r = store.materialize().with_until(t1).await.unwrap();
    assert!(r.views.iter().all(|v| v.mode == "full"), "{r:?}");

    // New rows: some after t1, some late (event time before t1), some after t2.
    let mut second = random_rows(8, 150, t2);
    second.push((1, t1 - 3 * HOUR, Some(1000.0), Some("late")));
    second.push((2, t2 + DAY, Some(5.0), Some("future")));
    let url = quiver_featurestore::delta::table_url(repo.path(), "data/transactions").unwrap();
    quiver_featurestore::delta::write(&url, vec![transactions(&second)], SaveMode::Append)
        .await
        .unwrap();

    let r = store.materialize().with_until(t2).await.unwrap();
    let stats = r.views.iter().find(|v| v.view == "stats").unwrap();
    assert_eq!(stats.mode, "incremental", "{stats:?}");
    let doubled = r.views.iter().find(|v| v.view == "doubled").unwrap();
    assert_eq!(
        doubled.mode, "full",
        "SQL views are recomputed: {doubled:?}"
    );

    let again = store.materialize().with_until(t2).await.unwrap();
    assert!(
        again
            .views
            .iter()
            .filter(|v| v.view != "doubled")
            .all(|v| v.mode == "up_to_date"),
        "{again:?}"
    );

    // Same answers as a store built in one go, and as training sets (rows <= t2 only:
    // the row after t2 must not be visible yet).
    let full_dir = tempfile::tempdir().unwrap();
    let full = FeatureStore::builder(repo.path())
        .with_registry(repo.path().join(".quiver/registry2"))
        .with_online_store(full_dir.path())
        .build()
        .unwrap();
    full.apply().await.unwrap();
    full.materialize()
        .with_until(t2)
        .with_full(true)
        .await
        .unwrap();
    let ids = keys(&[0, 1, 2, 3, 4, 5]);
    for t in [t2, t2 + 2 * DAY] {
        for view in ["stats", "latest"] {
            let (a, _) = store.online().unwrap().get(view, None, &ids, t).unwrap();
            let (b, _) = full.online().unwrap().get(view, None, &ids, t).unwrap();
            for f in a.schema().fields() {
                assert_eq!(
                    column_strings(&a, f.name()),
                    column_strings(&b, f.name()),
                    "{view}.{} at {t}",
                    f.name()
                );
            }
        }
    }
    let (now, _) = store
        .online()
        .unwrap()
        .get("latest", None, &keys(&[2]), t2)
        .unwrap();
    assert_ne!(
        column_strings(&now, "device"),
        ["future"],
        "rows after `until` are not materialized yet"
    );
}

#[tokio::test]
async fn rewritten_tables_trigger_a_full_rebuild() {
    let until = T0 + 10 * DAY;
    let (repo, store) = repo_with(&random_rows(3, 50, until)).await;
    store.materialize().with_until(until).await.unwrap();
    let url = quiver_featurestore::delta::table_url(repo.path(), "data/transactions").unwrap();
    quiver_featurestore::delta::write(
        &url,
        vec![transactions(&[(1, until - HOUR, Some(1.0), Some("only"))])],
        SaveMode::Overwrite,
    )
    .await
    .unwrap();
    let r = store
        .materialize()
        .with_until(until)
        .with_views(vec!["latest".into()])
        .await
        .unwrap();
    assert_eq!(r.views[0].mode, "full");
    assert!(
        r.views[0].reason.contains("removed or rewritten"),
        "{}",
        r.views[0].reason
    );
    assert_eq!(
        r.views[0].keys_total, 1,
        "keys that vanished from the table are gone"
    );
    let (b, _) = store
        .online()
        .unwrap()
        .get("latest", None, &keys(&[1, 2]), until)
        .unwrap();
    assert_eq!(column_strings(&b, "device"), ["only", ""]);
    assert_eq!(
        column_strings(&b, "latest__status"),
        ["PRESENT", "NOT_FOUND"]
    );
}

#[tokio::test]
async fn unknown_keys_get_the_same_fallback_online_and_in_training_sets() {
    // `fallback: mean` (or median) cannot be reproduced as of each training row's
    // time: refused where it is written.
    let repo = Repo::new();
    let latest = "name: latest\nentity: user\nsource: transactions\nttl: 5d\n";
    repo.write(
        "f.yaml",
        &REPO.replace(latest, &format!("{latest}fallback: mean\n")),
    );
    let store = FeatureStore::open(repo.path()).unwrap();
    let e = store.apply().await.unwrap_err().to_string();
    assert!(e.contains("f.yaml") && e.contains("fallback `mean`"), "{e}");
    assert!(e.contains("fallback: zero"), "{e}");

    repo.write(
        "f.yaml",
        &REPO
            .replace(latest, &format!("{latest}fallback: zero\n"))
            .replace(
                "name: stats\nentity: user\nsource: transactions\nttl: 20d\n",
                "name: stats\nentity: user\nsource: transactions\nttl: 20d\nfallback: zero\n",
            ),
    );
    repo.delta(
        "data/transactions",
        vec![transactions(&[
            (1, T0, Some(10.0), Some("a")),
            (2, T0, Some(30.0), Some("b")),
        ])],
    )
    .await;
    store.apply().await.unwrap();
    store.materialize().with_until(T0 + HOUR).await.unwrap();
    let (b, counts) = store
        .online()
        .unwrap()
        .get("latest", None, &keys(&[1, 42]), T0 + HOUR)
        .unwrap();
    assert_eq!(
        column_strings(&b, "latest__status"),
        ["PRESENT", "FALLBACK"]
    );
    assert_eq!(column_strings(&b, "amount"), ["10.0", "0.0"]);
    assert_eq!(
        column_strings(&b, "device"),
        ["a", ""],
        "non-numeric features fall back to null"
    );
    assert_eq!((counts.present, counts.fallback), (1, 1));
    // The training set answers a new key exactly as serving does, for as-of and
    // aggregate views alike (a key seen later is new at an earlier time too).
    for view in ["latest", "stats"] {
        assert_online_equals_training(&store, view, &[1, 2, 42], T0 + HOUR).await;
    }
    let set = store
        .historical_features()
        .with_entities(vec![entities(&[(1, T0 - DAY), (42, T0)])])
        .with_features("latest")
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    assert_eq!(
        column_strings(&set, "latest__status"),
        ["FALLBACK", "FALLBACK"]
    );
    assert_eq!(column_strings(&set, "amount"), ["0.0", "0.0"]);
}

#[tokio::test]
async fn lookups_validate_their_input() {
    let (_repo, store) = repo_with(&[(1, T0, Some(1.0), Some("a"))]).await;
    store.materialize().with_until(T0).await.unwrap();
    let online = store.online().unwrap();
    let e = online.get("nope", None, &keys(&[1]), T0).unwrap_err();
    assert!(
        matches!(e, quiver_featurestore::Error::NotFound { .. }),
        "{e}"
    );
    let e = online
        .get("latest", Some(&["amout".into()]), &keys(&[1]), T0)
        .unwrap_err();
    assert!(e.to_string().contains("did you mean `amount`?"), "{e}");
    let strings = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .unwrap();
    let e = online.get("latest", None, &strings, T0).unwrap_err();
    assert!(e.to_string().contains("must hold Int64 values"), "{e}");
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "account",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    let e = online.get("latest", None, &other, T0).unwrap_err();
    assert!(e.to_string().contains("no key column `user_id`"), "{e}");
    let (b, _) = online.get("latest", None, &keys(&[]), T0).unwrap();
    assert_eq!(b.num_rows(), 0);
}

#[test]
fn a_second_process_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _held =
        quiver_featurestore::online::SledOnlineStore::open(dir.path().join(".quiver/online"))
            .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["--repo", dir.path().to_str().unwrap(), "materialize"])
        .env_remove("QUIVER_SERVER")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
}

#[tokio::test]
async fn materializing_until_a_future_time_is_refused() {
    let (_repo, store) = repo_with(&random_rows(3, 20, T0 + DAY)).await;
    let tomorrow = chrono::Utc::now().timestamp_micros() + DAY;
    let e = store
        .materialize()
        .with_until(tomorrow)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("in the future"), "{e}");
    // Nothing was written: the store has no watermark yet, and a run up to now works.
    store.materialize().await.unwrap();
}

/// The `add` action of the only data file in a table's first commit.
fn first_add(table: &std::path::Path) -> serde_json::Value {
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("add").cloned())
        .expect("an add action")
}

#[tokio::test]
async fn a_deletion_vector_written_by_another_engine_rebuilds_the_view() {
    // Spark and Databricks delete rows by attaching a deletion vector to the same
    // file path. Key 2's only row is deleted that way; an incremental run that
    // compared paths would keep serving it.
    let (repo, store) = repo_with(&[
        (1, T0, Some(10.0), Some("a")),
        (2, T0 + HOUR, Some(20.0), Some("b")),
        (3, T0 + 2 * HOUR, Some(30.0), Some("c")),
    ])
    .await;
    let until = T0 + DAY;
    store.materialize().with_until(until).await.unwrap();
    let table = repo.path().join("data/transactions");
    let add = first_add(&table);
    // Row 1 (key 2) deleted: a portable RoaringTreemap after the magic number, inline.
    let mut bitmap = roaring::RoaringTreemap::new();
    bitmap.insert(1);
    let mut bytes = 1_681_511_377u32.to_le_bytes().to_vec();
    bitmap.serialize_into(&mut bytes).unwrap();
    let mut with_dv = add.clone();
    with_dv["deletionVector"] = serde_json::json!({
        "storageType": "i",
        "pathOrInlineDv": z85::encode(&bytes),
        "sizeInBytes": bytes.len(),
        "cardinality": 1,
    });
    with_dv["dataChange"] = serde_json::json!(true);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let commit = [
        serde_json::json!({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]}}),
        serde_json::json!({"remove": {"path": add["path"], "deletionTimestamp": now_ms,
            "dataChange": true, "extendedFileMetadata": true, "partitionValues": {},
            "size": add["size"]}}),
        serde_json::json!({"add": with_dv}),
        serde_json::json!({"commitInfo": {"timestamp": now_ms, "operation": "DELETE",
            "engineInfo": "a Spark-like test writer"}}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(
        table.join("_delta_log/00000000000000000001.json"),
        commit + "\n",
    )
    .unwrap();
    let r = store.materialize().with_until(until).await.unwrap();
    let v = r.views.iter().find(|v| v.view == "latest").unwrap();
    assert_eq!(v.mode, "full", "{v:?}");
    assert!(v.reason.contains("deletion vector"), "{}", v.reason);
    // Key 2 is gone from training sets and from serving alike.
    for view in ["stats", "latest", "doubled"] {
        assert_online_equals_training(&store, view, &[1, 2, 3], until).await;
    }
    let (b, _) = store
        .online()
        .unwrap()
        .get("latest", None, &keys(&[2]), until)
        .unwrap();
    assert_eq!(column_strings(&b, "latest__status"), ["NOT_FOUND"]);
}

#[tokio::test]
async fn a_cleaned_up_log_and_a_retyped_column_rebuild_in_full() {
    let (repo, store) = repo_with(&random_rows(5, 60, T0 + 5 * DAY)).await;
    let until = T0 + 10 * DAY;
    store.materialize().with_until(until).await.unwrap();
    let url = quiver_featurestore::delta::table_url(repo.path(), "data/transactions").unwrap();
    // Three more commits, a checkpoint at the last, and the log before it removed, as
    // Delta's log retention does: version 0, which the store holds, is unreadable.
    for i in 0..3 {
        quiver_featurestore::delta::write(
            &url,
            vec![transactions(&random_rows(100 + i, 20, T0 + 8 * DAY))],
            SaveMode::Append,
        )
        .await
        .unwrap();
    }
    deltalake::checkpoints::create_checkpoint_from_table_url_and_cleanup(
        url.clone(),
        3,
        Some(false),
        None,
    )
    .await
    .unwrap();
    let log = repo.path().join("data/transactions/_delta_log");
    for v in 0..3 {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let r = store.materialize().with_until(until).await.unwrap();
    for v in &r.views {
        assert_eq!(v.mode, "full", "{v:?}");
    }
    let stats = r.views.iter().find(|v| v.view == "stats").unwrap();
    assert!(
        stats.reason.contains("no longer readable"),
        "{}",
        stats.reason
    );
    for view in ["stats", "latest", "doubled"] {
        assert_online_equals_training(&store, view, &[0, 1, 2, 3, 4, 5], until).await;
    }

    // `amount` rewritten as a decimal (another engine's schema change): rebuilt in
    // full, with the new type, online and in training sets.
    let retyped: Vec<_> = random_rows(9, 40, T0 + 9 * DAY);
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", crate::common::ts_type(), false),
        Field::new("amount", DataType::Decimal128(12, 3), true),
        Field::new("device_id", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(retyped.iter().map(|r| r.0))),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from_iter_values(
                    retyped.iter().map(|r| r.1),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                arrow::array::Decimal128Array::from_iter(
                    retyped.iter().map(|r| r.2.map(|a| (a * 1000.0) as i128)),
                )
                .with_precision_and_scale(12, 3)
                .unwrap(),
            ),
            Arc::new(StringArray::from_iter(retyped.iter().map(|r| r.3))),
        ],
    )
    .unwrap();
    let table = deltalake::open_table(url.clone()).await.unwrap();
    table
        .write(vec![batch])
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .await
        .unwrap();
    let r = store.materialize().with_until(until).await.unwrap();
    for v in &r.views {
        assert_eq!(v.mode, "full", "{v:?}");
    }
    for view in ["stats", "latest", "doubled"] {
        assert_online_equals_training(&store, view, &[0, 1, 2, 3, 4, 5], until).await;
    }
}
