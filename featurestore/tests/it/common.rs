//! Shared fixtures: temp feature repos with real Delta tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, TimeUnit};
use deltalake::protocol::SaveMode;
use quiver_featurestore::delta;

pub(crate) const HOUR: i64 = 3_600_000_000;
pub(crate) const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z in microseconds.
pub(crate) const T0: i64 = 1_704_067_200_000_000;

/// The Python the interop and object-store tests run: `.venv` (made by
/// scripts/python-env.sh and scripts/object-store-env.sh, which the README's test
/// command runs), or `QUIVER_PYTHON`.
pub(crate) fn python() -> PathBuf {
    if let Ok(p) = std::env::var("QUIVER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no .venv: run scripts/python-env.sh and scripts/object-store-env.sh (the README's test command does) or set QUIVER_PYTHON"
    );
    venv
}

/// A folder with YAML files and Delta tables, deleted on drop.
pub(crate) struct Repo {
    pub(crate) dir: tempfile::TempDir,
}

impl Repo {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub(crate) async fn delta(&self, rel: &str, batches: Vec<RecordBatch>) -> i64 {
        let url = delta::table_url(self.path(), rel).unwrap();
        let mut version = 0;
        for (i, b) in batches.into_iter().enumerate() {
            let mode = if i == 0 {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            };
            version = delta::write(&url, vec![b], mode)
                .await
                .expect("write delta");
        }
        version
    }
}

pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// One transaction: user, time (µs), amount, device.
pub(crate) type Txn<'a> = (i64, i64, Option<f64>, Option<&'a str>);

pub(crate) fn transactions(rows: &[Txn<'_>]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("amount", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
        ],
    )
    .unwrap()
}

/// A batch of `user_id` keys, for online lookups.
pub(crate) fn keys(ids: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from(ids.to_vec()))],
    )
    .unwrap()
}

/// The training set of `view` for keys `ids`, all at time `t`.
pub(crate) async fn training_at(
    store: &quiver_featurestore::FeatureStore,
    view: &str,
    ids: &[i64],
    t: i64,
) -> RecordBatch {
    let rows: Vec<(i64, i64)> = ids.iter().map(|&k| (k, t)).collect();
    store
        .historical_features()
        .with_entities(vec![entities(&rows)])
        .with_features(view)
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap()
}

/// Equal as served: floats within 1e-12 relative (both NaN, or the same infinity,
/// count as equal), everything else as text.
pub(crate) fn assert_same_values(got: &RecordBatch, want: &RecordBatch, view: &str, t: i64) {
    for f in want.schema().fields().iter().skip(2) {
        let name = f.name();
        let (g, w) = (
            got.column_by_name(name)
                .unwrap_or_else(|| panic!("{view}.{name} not served")),
            want.column_by_name(name).unwrap(),
        );
        assert_eq!(g.data_type(), w.data_type(), "{view}.{name} type");
        if w.data_type() == &DataType::Float64 {
            let (g, w) = (
                g.as_primitive::<Float64Type>(),
                w.as_primitive::<Float64Type>(),
            );
            for i in 0..w.len() {
                assert_eq!(
                    g.is_null(i),
                    w.is_null(i),
                    "{view}.{name} row {i} null, t={t}"
                );
                if w.is_valid(i) {
                    let (a, b) = (g.value(i), w.value(i));
                    let same = a == b
                        || (a.is_nan() && b.is_nan())
                        || (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
                    assert!(
                        same,
                        "{view}.{name} row {i} t={t}: online {a} vs training {b}"
                    );
                }
            }
        } else {
            assert_eq!(
                column_strings(got, name),
                column_strings(want, name),
                "{view}.{name} at t={t}"
            );
        }
    }
}

/// Compare the online answer with the training set at `t`, feature by feature.
pub(crate) async fn assert_online_equals_training(
    store: &quiver_featurestore::FeatureStore,
    view: &str,
    ids: &[i64],
    t: i64,
) {
    let online = store.online().unwrap();
    let (got, _) = online.get(view, None, &keys(ids), t).unwrap();
    let want = training_at(store, view, ids, t).await;
    let status = format!("{view}__status");
    assert_eq!(
        column_strings(&got, &status),
        column_strings(&want, &status),
        "{view} status at t={t}"
    );
    assert_same_values(&got, &want, view, t);
}

/// Entity rows: user, time (µs).
pub(crate) fn entities(rows: &[(i64, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("event_timestamp", ts_type(), false),
    ]));
    RecordBatch::try_new(
        schema,
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

/// The design's example repo over `data/transactions`: the one copy, shared with the
/// unit tests of `spec::load` (`tests/data/example-repo.yaml`).
pub(crate) const REPO_YAML: &str = include_str!("../data/example-repo.yaml");

/// A repo with [`REPO_YAML`] and a small transactions table.
pub(crate) async fn example_repo() -> Repo {
    let repo = Repo::new();
    repo.write("features.yaml", REPO_YAML);
    repo.delta(
        "data/transactions",
        vec![transactions(&[
            (1, T0, Some(10.0), Some("a")),
            (1, T0 + DAY, Some(20.0), Some("b")),
            (1, T0 + 10 * DAY, Some(5.0), Some("a")),
            (2, T0 + 2 * DAY, Some(7.5), None),
        ])],
    )
    .await;
    repo
}

/// Column `name` of `batch` as strings, for easy comparisons.
pub(crate) fn column_strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let fmt =
        arrow::util::display::ArrayFormatter::try_new(col.as_ref(), &Default::default()).unwrap();
    (0..col.len()).map(|i| fmt.value(i).to_string()).collect()
}

/// Run the `quiver` binary on `repo` with a clean environment.
pub(crate) fn quiver(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("QUIVER_REPO")
        .env_remove("QUIVER_REGISTRY")
        .env_remove("QUIVER_SIGNING_KEY")
        .env_remove("QUIVER_SIGNER")
        .output()
        .expect("run quiver")
}

/// Stdout of a run that must succeed.
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Stdout and stderr of a run that must fail with exit code 1 (bad input).
pub(crate) fn fails(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Stdout of a successful run, parsed as one JSON document.
pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("stdout is one JSON document")
}
