//! Interop with a Flight client nobody here wrote: pyarrow, installed into `.venv` by
//! `scripts/python-env.sh` (the README's test command runs it first). Point
//! `QUIVER_PYTHON` at another interpreter with pyarrow to use that one instead.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::python;
use crate::flight::{Fixture, TOKEN_A, TOKEN_B};

/// Run `tests/interop/SCRIPT PORT TOKEN_A TOKEN_B BASE` (120 s at most); the one JSON
/// document it prints.
async fn run_script(script: &str, port: u16, base: i64) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(Command::new(python()))
            .arg(&script)
            .args([&port.to_string(), TOKEN_A, TOKEN_B, &base.to_string()])
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} finished within 120 s", script.display()))
    .expect("run python");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[tokio::test]
async fn pyarrow_reads_online_features_and_training_sets() {
    let fx = Fixture::start(None).await;
    let doc = run_script("flight_client.py", fx.server.addr().port(), fx.base).await;
    assert_eq!(
        doc["flights"],
        serde_json::json!(["latest", "public", "stats"])
    );
    assert_eq!(
        doc["online_schema"],
        serde_json::json!([
            "user_id",
            "n_1d",
            "sum_all",
            "stats__status",
            "stats__event_timestamp"
        ])
    );
    assert_eq!(doc["online"]["n_1d"], serde_json::json!([2, 0, null]));
    assert_eq!(doc["schema"], doc["online_schema"]);
    // DoExchange from pyarrow: three batches in, the same keys' values out, in order.
    assert_eq!(
        doc["exchange_n_1d"],
        serde_json::json!([2, 0, null, 0, 2, 2])
    );
    assert!(
        doc["action_types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "list"),
        "{}",
        doc["action_types"]
    );
    assert_eq!(
        doc["online"]["sum_all"],
        serde_json::json!([35.0, 7.5, null])
    );
    assert_eq!(
        doc["online"]["stats__status"],
        serde_json::json!(["PRESENT", "PRESENT", "NOT_FOUND"])
    );
    assert_eq!(doc["historical"]["n_1d"], serde_json::json!([2, 0]));
    assert_eq!(doc["historical"]["sum_all"], serde_json::json!([35.0, 7.5]));
    assert_eq!(doc["actions"][0]["views"].as_array().map(Vec::len), Some(3));
    assert_eq!(doc["unauthenticated"], true);
    assert_eq!(doc["permission_denied"], true);
    assert_eq!(doc["invalid_argument"], true);
}

/// The project's Python client (`python/`, `pip install ./python`): every call against a
/// real server, Arrow and pandas results, and errors typed by the server's status.
#[tokio::test]
async fn the_python_client_reads_features_and_types_its_errors() {
    // The flight fixture's store, with a signed model `fraud` as champion for `score`.
    let (repo, store, base) = Fixture::store().await;
    crate::score::register_fraud(&store, repo.path(), &[-2.0]);
    let server = quiver_featurestore::serve::ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Fixture::tokens(),
    )
    .spawn(store)
    .await
    .unwrap();
    let doc = run_script("python_client.py", server.addr().port(), base).await;
    assert_eq!(
        doc["views"],
        serde_json::json!(["latest", "public", "stats"])
    );
    assert_eq!(doc["online_type"], "Table");
    assert_eq!(doc["online"]["user_id"], serde_json::json!([1, 2, 3]));
    assert_eq!(doc["online"]["n_1d"], serde_json::json!([2, 0, null]));
    assert_eq!(
        doc["online"]["stats__status"],
        serde_json::json!(["PRESENT", "PRESENT", "NOT_FOUND"])
    );
    assert_eq!(
        doc["subset_columns"],
        serde_json::json!(["user_id", "n_1d", "stats__status", "stats__event_timestamp"])
    );
    assert_eq!(doc["historical_n_1d"], serde_json::json!([2, 0]));
    assert_eq!(doc["health"]["status"], "ok", "{}", doc["health"]);
    assert_eq!(
        doc["health"]["max_lag_seconds"], 3600.0,
        "{}",
        doc["health"]
    );
    assert_eq!(
        doc["errors"],
        serde_json::json!({
            "unknown_view": "NotFound",
            "bad_key_type": "InvalidArgument",
            "unknown_model": "NotFound",
            "bad_feature_ref": "NotFound",
        })
    );
    assert_eq!(doc["unauthenticated"], true);
    assert_eq!(doc["permission_denied"], true);
    assert_eq!(doc["pandas"], serde_json::json!(["DataFrame", [2, 0]]));
    assert_eq!(doc["pandas_historical"], serde_json::json!([2, 0]));
    // score: user 1 has n_1d 2 and sum_all 35, user 2 has 0 and 7.5.
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let scores: Vec<f64> = doc["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want = [sigmoid(0.5 * 2.0 + 0.35 - 2.0), sigmoid(0.075 - 2.0)];
    assert_eq!(scores.len(), 2);
    for (g, w) in scores.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{scores:?} vs {want:?}");
    }
    assert_eq!(doc["score_versions"], serde_json::json!([1, 1]));
    drop(repo);
}
