//! Interop with a Flight client nobody here wrote: pyarrow, installed into `.venv` by
//! `scripts/python-env.sh` (the README's test command runs it first). Point
//! `QUIVER_PYTHON` at another interpreter with pyarrow to use that one instead.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::flight::{Fixture, TOKEN_A, TOKEN_B};

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("QUIVER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with pyarrow: run scripts/python-env.sh (the README's test command does) or set QUIVER_PYTHON"
    );
    venv
}

#[tokio::test]
async fn pyarrow_reads_online_features_and_training_sets() {
    let fx = Fixture::start(None).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/flight_client.py");
    let port = fx.server.addr().port().to_string();
    let base = fx.base.to_string();
    let py = python();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(Command::new(py))
            .args([script.to_str().unwrap(), &port, TOKEN_A, TOKEN_B, &base])
            .output(),
    )
    .await
    .expect("pyarrow client finished within 120 s")
    .expect("run python");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
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
