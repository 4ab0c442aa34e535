//! A repo with an aggregate view and a SQL view calling the jaccard UDF, applied and
//! materialized.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::delta;

pub(crate) const HOUR: i64 = 3_600_000_000;
pub(crate) const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z.
pub(crate) const T0: i64 = 1_704_067_200_000_000;
/// Materialized until.
pub(crate) const UNTIL: i64 = T0 + 10 * DAY;

pub(crate) const REPO: &str = "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
delta: data/transactions
timestamp: ts
---
kind: FeatureView
name: spend
entity: user
source: transactions
ttl: 30d
features:
  - { name: n_1d,     agg: count,          window: 1d }
  - { name: sum_3d,   agg: sum(amount),    window: 3d }
  - { name: devs_all, agg: count_distinct(device_id) }
---
kind: FeatureView
name: novelty
entity: user
sources: [transactions]
ttl: 30d
udfs: [udfs/jaccard.wat]
sql: |
  SELECT user_id, ts,
    jaccard(
      array_to_string(array_agg(device_id) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW), ','),
      array_to_string(array_agg(device_id) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 10 PRECEDING AND 2 PRECEDING), ',')
    ) AS device_jaccard
  FROM transactions
";

pub(crate) const JACCARD: &str = include_str!("../../../udfs/jaccard.wat");

/// Users 1..=20, a transaction every 7 hours for 10 days, devices drifting.
pub(crate) fn rows(users: i64, from: i64, to: i64) -> RecordBatch {
    let mut r: Vec<(i64, i64, f64, String)> = Vec::new();
    for u in 1..=users {
        let mut t = from + u;
        let mut i = 0;
        while t < to {
            r.push((
                u,
                t,
                (i % 17) as f64 + u as f64,
                format!("d{}", (i / 4 + u) % 5),
            ));
            t += 7 * HOUR;
            i += 1;
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("amount", DataType::Float64, false),
            Field::new("device_id", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(r.iter().map(|x| x.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(r.iter().map(|x| x.2))),
            Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.3.clone()))),
        ],
    )
    .unwrap()
}

pub(crate) async fn write(
    root: &Path,
    batch: RecordBatch,
    mode: deltalake::protocol::SaveMode,
) -> i64 {
    let url = delta::table_url(root, "data/transactions").unwrap();
    delta::write(&url, vec![batch], mode).await.unwrap()
}

/// The repo, applied, materialized until [`UNTIL`]; the store is dropped (closed).
pub(crate) async fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("f.yaml"), REPO).unwrap();
    std::fs::create_dir_all(root.join("udfs")).unwrap();
    std::fs::write(root.join("udfs/jaccard.wat"), JACCARD).unwrap();
    write(
        root,
        rows(20, T0, UNTIL),
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await;
    let store = FeatureStore::open(root).unwrap();
    store.apply().await.unwrap();
    store.materialize().with_until(UNTIL).await.unwrap();
    dir
}

/// Stdout of a process that must have succeeded (stdout and stderr shown otherwise).
pub(crate) fn success(o: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}
