//! Training sets on a Ballista cluster equal the local engine's, row for row: a
//! scheduler and two executors started as processes on 127.0.0.1, every connection
//! over mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_ballista::local_cluster::{LocalCluster, Pki};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::offline::Engine;

const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_704_067_200_000_000;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Transactions of 50 users over 40 days, in `files` Delta commits.
pub(crate) async fn write_table(dir: &std::path::Path, files: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts(), false),
        Field::new("amount", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]));
    let url = quiver_featurestore::delta::table_url(dir, "data/transactions").unwrap();
    for f in 0..files as i64 {
        let n = 400i64;
        let rows: Vec<i64> = (0..n).map(|i| f * n + i).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|i| i * 7 % 50),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|i| T0 + (i * 7_919 % 40_000) * DAY / 1_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter(
                    rows.iter()
                        .map(|i| (i % 13 != 0).then_some((i % 97) as f64 * 1.5)),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter()
                        .map(|i| (i % 11 != 0).then(|| format!("d{}", i % 5))),
                )),
            ],
        )
        .unwrap();
        let mode = if f == 0 {
            deltalake::protocol::SaveMode::ErrorIfExists
        } else {
            deltalake::protocol::SaveMode::Append
        };
        quiver_featurestore::delta::write(&url, vec![batch], mode)
            .await
            .unwrap();
    }
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
kind: FeatureView
name: windows
entity: user
source: transactions
ttl: 20d
features:
  - { name: n_7d, agg: count, window: 7d }
  - { name: sum_7d, agg: sum(amount), window: 7d }
  - { name: avg_30d, agg: avg(amount), window: 30d }
  - { name: devices_30d, agg: count_distinct(device_id), window: 30d }
---
kind: FeatureView
name: last
entity: user
source: transactions
ttl: 10d
features:
  - { name: last_amount, column: amount }
  - { name: last_device, column: device_id }
---
kind: FeatureView
name: daily
entity: user
sources: [transactions]
ttl: 10d
sql: |
  SELECT user_id, ts, amount * 2 AS double_amount,
         count(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS recent_n,
         array_to_string(array_agg(device_id) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), ',') AS recent_devices
  FROM transactions
";

fn entities() -> RecordBatch {
    let rows: Vec<(i64, i64)> = (0..300i64)
        .map(|i| (i % 60, T0 + (i * 104_729 % 45_000) * DAY / 1_000))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts(), false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_set_on_two_executors_equals_the_local_one_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("features.yaml"), REPO).unwrap();
    write_table(&repo, 4).await;
    let store = FeatureStore::open(&repo).unwrap();
    store.apply().await.unwrap();
    let features = "windows,last,daily";
    let local = store
        .historical_features()
        .with_entities(vec![entities()])
        .with_features(features)
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    assert_eq!(local.num_rows(), 300);

    // Mutual TLS everywhere: client to scheduler and executors, executors to the
    // scheduler and to each other (shuffle partitions).
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let cluster = LocalCluster::builder(
        env!("CARGO_BIN_EXE_quiver-ballista-scheduler").as_ref(),
        env!("CARGO_BIN_EXE_quiver-ballista-executor").as_ref(),
    )
    .executors(2)
    .tasks(2)
    .work_dir(&dir.path().join("work"))
    .tls(&pki)
    .start()
    .unwrap();
    let engine = Engine::parse(&cluster.engine_url())
        .unwrap()
        .with_tls(pki.client_tls(&pki.client).unwrap());
    // Executors register with the scheduler shortly after they listen: retry the
    // first job for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let remote = loop {
        let attempt = store
            .historical_features()
            .with_entities(vec![entities()])
            .with_features(features)
            .unwrap()
            .with_engine(engine.clone())
            .await;
        match attempt {
            Ok(set) => break set.concat().unwrap(),
            Err(e)
                if std::time::Instant::now() < deadline && !e.to_string().contains("rejected") =>
            {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                let logs: String = ["scheduler.log", "executor-0.log", "executor-1.log"]
                    .iter()
                    .map(|f| {
                        let text = std::fs::read_to_string(dir.path().join("work").join(f))
                            .unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        format!(
                            "--- {f}\n{}\n",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!("the cluster did not run the training set: {e}\n{logs}")
            }
        }
    };
    assert_eq!(remote.schema(), local.schema());
    assert_eq!(remote.num_rows(), local.num_rows());
    for (i, f) in local.schema().fields().iter().enumerate() {
        let (a, b) = (local.column(i), remote.column(i));
        if a != b {
            let fa = arrow::util::display::ArrayFormatter::try_new(a.as_ref(), &Default::default())
                .unwrap();
            let fb = arrow::util::display::ArrayFormatter::try_new(b.as_ref(), &Default::default())
                .unwrap();
            let diffs: Vec<String> = (0..a.len())
                .filter(|&r| fa.value(r).to_string() != fb.value(r).to_string())
                .take(5)
                .map(|r| format!("row {r}: local {} remote {}", fa.value(r), fb.value(r)))
                .collect();
            let row = (0..a.len())
                .find(|&r| fa.value(r).to_string() != fb.value(r).to_string())
                .unwrap();
            let show = |batch: &RecordBatch| -> String {
                (0..batch.num_columns())
                    .map(|c| {
                        let f = arrow::util::display::ArrayFormatter::try_new(
                            batch.column(c).as_ref(),
                            &Default::default(),
                        )
                        .unwrap();
                        format!("{}={}", batch.schema().field(c).name(), f.value(row))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            panic!(
                "column {} differs: {diffs:?}\nlocal  {}\nremote {}",
                f.name(),
                show(&local),
                show(&remote)
            );
        }
    }
    assert_eq!(remote, local, "same rows, same order, same values");

    // Materialization on the cluster: the online values equal a local run's, in full
    // and after an incremental run over a new commit (only its files are sent).
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from_iter_values(0..60))],
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    let online = |store: &FeatureStore| {
        let o = store.online().unwrap();
        ["windows", "last", "daily"]
            .iter()
            .map(|v| o.get(v, None, &keys, now).unwrap().0)
            .collect::<Vec<_>>()
    };
    let until = T0 + 60 * DAY;
    let report = store
        .materialize()
        .with_full(true)
        .with_until(until)
        .await
        .unwrap();
    assert_eq!(report.views.len(), 3);
    let want = online(&store);
    let report = store
        .materialize()
        .with_full(true)
        .with_until(until)
        .with_engine(engine.clone())
        .await
        .unwrap();
    assert!(report.views.iter().all(|v| v.mode == "full"), "{report:?}");
    assert_eq!(
        online(&store),
        want,
        "online values materialized on Ballista"
    );

    write_table_commit(&repo, 99).await;
    let report = store
        .materialize()
        .with_until(until)
        .with_engine(engine.clone())
        .await
        .unwrap();
    let incremental = online(&store);
    assert!(
        report.views.iter().any(|v| v.mode == "incremental"),
        "{report:?}"
    );
    store
        .materialize()
        .with_full(true)
        .with_until(until)
        .await
        .unwrap();
    assert_eq!(
        incremental,
        online(&store),
        "incremental on Ballista = full local"
    );
}

/// One more commit of 400 rows (file number `f`).
async fn write_table_commit(dir: &std::path::Path, f: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts(), false),
        Field::new("amount", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]));
    let rows: Vec<i64> = (0..400).map(|i| f * 400 + i).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|i| i * 7 % 50),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|i| T0 + 41 * DAY + (i % 1000) * 60_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|i| (i % 7) as f64),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|i| format!("n{}", i % 3)),
            )),
        ],
    )
    .unwrap();
    let url = quiver_featurestore::delta::table_url(dir, "data/transactions").unwrap();
    quiver_featurestore::delta::write(&url, vec![batch], deltalake::protocol::SaveMode::Append)
        .await
        .unwrap();
}
