//! The `score` command: online features fetched and scored by the registered champion
//! in one Flight round trip, with contributions, tenant checks and hot reload.

use std::time::{Duration, Instant};

use arrow::array::{Float64Array, StringArray, UInt64Array};
use quiver_featurestore::client::Client;
use quiver_featurestore::offline::parse_feature_refs;
use quiver_featurestore::serve::ServeConfig;
use quiver_registry::{FeatureStats, NativeModel, Registration, RolloutPolicy, SigningKey};

use crate::flight::{Fixture, TOKEN_A, TOKEN_B};

fn model(intercept: f64) -> NativeModel {
    NativeModel::LogisticRegression {
        features: vec!["n_1d".into(), "sum_all".into()],
        weights: vec![0.5, 0.01],
        intercept,
        baseline: Some(vec![1.0, 10.0]),
        transform: None,
    }
}

/// `fraud` versions 1, 2, ... with these intercepts over `stats:n_1d, stats:sum_all`,
/// signed by a trusted key `ci`; version 1 the champion.
pub(crate) fn register_fraud(
    store: &quiver_featurestore::FeatureStore,
    dir: &std::path::Path,
    intercepts: &[f64],
) -> quiver_registry::ModelRegistry {
    let registry = store.models().unwrap();
    let key = SigningKey::generate(dir.join("ci.key")).unwrap();
    registry.trust("ci", &key.public_key_hex()).unwrap();
    let input = store
        .input_schema(
            &parse_feature_refs("stats:n_1d,stats:sum_all").unwrap(),
            false,
        )
        .unwrap();
    for &intercept in intercepts {
        registry
            .register(
                Registration::new("fraud", model(intercept).to_json(), input.clone()),
                "ci",
                &key,
            )
            .unwrap();
    }
    registry
        .move_alias("fraud", "champion", Some(1), None, "ci", "first")
        .unwrap();
    registry
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_fetches_features_and_scores_with_the_champion() {
    let (_repo, store, _) = Fixture::store().await;
    let registry = register_fraud(&store, _repo.path(), &[-2.0, 1.0]);

    let audit_path = _repo.path().join(".quiver").join("audit");
    let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_audit(&audit_path)
        .spawn(store)
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let mut client = Client::connect(&url)
        .await
        .unwrap()
        .with_token(TOKEN_A)
        .unwrap();
    let keys = crate::common::keys(&[1, 2, 99]);

    let out = client.score("fraud", &keys, true).await.unwrap();
    let scores = out
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    // user 1: 2 rows in the last day, 35.0 in all; user 2: 0 and 7.5; user 99: unknown,
    // so both inputs take the baseline.
    let expect = [
        sigmoid(-2.0 + 0.5 * 2.0 + 0.01 * 35.0),
        sigmoid(-2.0 + 0.01 * 7.5),
        sigmoid(-2.0 + 0.5 + 0.1),
    ];
    for (i, e) in expect.iter().enumerate() {
        assert!(
            (scores.value(i) - e).abs() < 1e-12,
            "row {i}: {} vs {e}",
            scores.value(i)
        );
    }
    let versions = out
        .column_by_name("model_version")
        .unwrap()
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap();
    assert_eq!(versions.values().to_vec(), vec![1, 1, 1]);
    let contributions = out
        .column_by_name("contributions")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let c: serde_json::Value = serde_json::from_str(contributions.value(0)).unwrap();
    assert_eq!(c["method"], "exact_linear");
    let request_ids = out
        .column_by_name("request_id")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone();
    assert!(
        (c["features"]["n_1d"].as_f64().unwrap() - 0.5 * (2.0 - 1.0)).abs() < 1e-12,
        "{c}"
    );

    // A tenant that may not read the model's view is refused.
    let mut other = Client::connect(&url)
        .await
        .unwrap()
        .with_token(TOKEN_B)
        .unwrap();
    let err = other
        .score("fraud", &keys, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PermissionDenied") || err.contains("may not read"),
        "{err}"
    );
    // Unknown models are NotFound.
    let err = client
        .score("nope", &keys, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NotFound") || err.contains("no registered model"),
        "{err}"
    );

    // Promote version 2 through this process's handle on the same database: the
    // server's model server picks it up without a restart.
    registry
        .move_alias("fraud", "champion", Some(2), Some(Some(1)), "ci", "better")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = client.score("fraud", &keys, false).await.unwrap();
        let v = out
            .column_by_name("model_version")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        if v.value(0) == 2 {
            let s = out
                .column_by_name("score")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            assert!((s.value(0) - sigmoid(1.0 + 0.5 * 2.0 + 0.01 * 35.0)).abs() < 1e-12);
            break;
        }
        assert!(Instant::now() < deadline, "version 2 never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Per-version model metrics on /metrics, before the EOF marker.
    let metrics = crate::flight::http_get(server.metrics_addr().unwrap(), "/metrics").await;
    for line in [
        "quiver_model_requests_total{model=\"fraud\",version=\"2\",alias=\"champion\"} ",
        "quiver_model_score_count{model=\"fraud\",version=\"2\",alias=\"champion\"}",
        "quiver_model_rollbacks_total{model=\"fraud\"} 0",
        "# TYPE quiver_model_score histogram",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    // Every scored row is in the audit log (a Delta table), found by its request id;
    // shutdown commits what is still queued.
    server.shutdown().await;
    let rec = quiver_featurestore::audit::lookup(&audit_path, request_ids.value(0))
        .await
        .unwrap()
        .expect("audited");
    assert_eq!(rec.model, "fraud");
    assert_eq!(rec.model_version, 1);
    assert_eq!(rec.model_alias, "champion");
    assert_eq!(rec.tenant, "bank_a");
    assert_eq!(rec.entity, r#"{"user_id":1}"#);
    assert!((rec.score - expect[0]).abs() < 1e-12);
    let inputs: serde_json::Value = serde_json::from_str(&rec.inputs).unwrap();
    assert_eq!(inputs["n_1d"], 2.0);
    assert_eq!(inputs["sum_all"], 35.0);
    assert_eq!(rec.contributions.as_deref(), Some(contributions.value(0)));
    let unknown = quiver_featurestore::audit::lookup(&audit_path, "1-00-0")
        .await
        .unwrap();
    assert!(unknown.is_none());
}

#[cfg(feature = "onnx")]
/// An ONNX model exported by skl2onnx (registry/tests/data/onnx) served by `score`:
/// the same answer over Flight as the registry's own load, with Shapley contributions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_serves_an_exported_onnx_model() {
    let (repo, store, _) = Fixture::store().await;
    let registry = store.models().unwrap();
    let key = SigningKey::generate(repo.path().join("ci.key")).unwrap();
    registry.trust("ci", &key.public_key_hex()).unwrap();
    let input = store
        .input_schema(
            &parse_feature_refs("stats:n_1d,stats:sum_all").unwrap(),
            false,
        )
        .unwrap();
    let onnx = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../registry/tests/data/onnx/logistic_regression.onnx"),
    )
    .unwrap();
    // Training statistics far from what the fixture serves (n_1d is 0 to 2 there), so
    // live drift shows.
    let stats = vec![
        FeatureStats::from_values(
            "n_1d",
            &(0..200).map(|i| 50.0 + i as f64).collect::<Vec<_>>(),
        ),
        FeatureStats::from_values("sum_all", &[0.0, 7.5, 10.0, 35.0]),
    ];
    let mv = registry
        .register(
            Registration::new("fraud", onnx, input).training_stats(stats),
            "ci",
            &key,
        )
        .unwrap();
    assert_eq!(mv.manifest.format, "onnx");
    registry
        .move_alias("fraud", "champion", Some(1), None, "ci", "onnx")
        .unwrap();
    let local = registry.load("fraud", 1).unwrap().model;

    let policy = {
        let mut c = RolloutPolicy::default();
        c.max_feature_psi = 0.5;
        c.drift_window = 100;
        c.min_requests = 2;
        c
    };
    let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_policy("fraud", policy)
        .spawn(store)
        .await
        .unwrap();
    let mut client = Client::connect(&format!("http://{}", server.addr()))
        .await
        .unwrap()
        .with_token(TOKEN_A)
        .unwrap();
    let keys = crate::common::keys(&[1, 2, 99]);
    let out = client.score("fraud", &keys, true).await.unwrap();
    let scores = out
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    // Inputs of users 1 and 2 (see the test above); user 99 has none.
    for (i, x) in [[2.0, 35.0], [0.0, 7.5], [f64::NAN, f64::NAN]]
        .iter()
        .enumerate()
    {
        let want = local.score(x).unwrap();
        assert!((scores.value(i) - want).abs() < 1e-12, "row {i}");
    }
    let c = out
        .column_by_name("contributions")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let c: serde_json::Value = serde_json::from_str(c.value(0)).unwrap();
    assert_eq!(c["method"], "baseline_shapley_exact", "{c}");
    assert!(c["features"]["n_1d"].as_f64().is_some(), "{c}");

    // Live drift of the served inputs, judged by this model's own policy, on /metrics
    // and in the model-status action (what `quiver registry status` prints).
    let metrics = crate::flight::http_get(server.metrics_addr().unwrap(), "/metrics").await;
    let l = "model=\"fraud\",version=\"1\",alias=\"champion\"";
    for line in [
        format!("quiver_model_feature_drifted{{{l},feature=\"n_1d\"}} 1"),
        format!("quiver_model_feature_drift_rows{{{l},feature=\"n_1d\"}} 2"),
        "# TYPE quiver_model_feature_ks gauge".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    let status = client
        .action("model-status", serde_json::json!({"model": "fraud"}))
        .await
        .unwrap();
    assert_eq!(status["policy"]["max_feature_psi"], 0.5, "{status}");
    let v = &status["versions"][0];
    assert_eq!(
        (v["alias"].as_str(), v["format"].as_str()),
        (Some("champion"), Some("onnx"))
    );
    assert_eq!(v["requests"], 3);
    let n_1d = &v["drift"][0];
    assert_eq!(n_1d["feature"], "n_1d");
    assert!(
        n_1d["psi"].as_f64().unwrap() > 0.5 && n_1d["ks"].as_f64().unwrap() > 0.99,
        "{n_1d}"
    );
    // A tenant that may not read the views gets no status either.
    let mut other = Client::connect(&format!("http://{}", server.addr()))
        .await
        .unwrap()
        .with_token(TOKEN_B)
        .unwrap();
    assert!(
        other
            .action("model-status", serde_json::json!({"model": "fraud"}))
            .await
            .is_err()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_moved_on_the_running_server_is_served_at_once() {
    let (repo, store, _) = Fixture::store().await;
    let registry = register_fraud(&store, repo.path(), &[-2.0, 1.0]);
    let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .spawn(store)
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let connect = |token: &'static str| {
        let url = url.clone();
        async move {
            Client::connect(&url)
                .await
                .unwrap()
                .with_token(token)
                .unwrap()
        }
    };
    let mut a = connect(TOKEN_A).await;
    let served = |out: &arrow::array::RecordBatch| {
        out.column_by_name("model_version")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .value(0)
    };
    let keys = crate::common::keys(&[1]);
    assert_eq!(served(&a.score("fraud", &keys, false).await.unwrap()), 1);

    // The CLI sends the move to the server that holds the registry.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "--repo",
            repo.path().to_str().unwrap(),
            "registry",
            "alias",
            "fraud",
            "champion",
            "2",
        ])
        .args([
            "--server",
            &url,
            "--token",
            TOKEN_A,
            "--reason",
            "better AUC",
        ])
        .env_remove("QUIVER_REPO")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "fraud/champion: 1 -> 2 (move #2)"
    );
    let moved = std::time::Instant::now();
    loop {
        if served(&a.score("fraud", &keys, false).await.unwrap()) == 2 {
            break;
        }
        assert!(
            moved.elapsed() < std::time::Duration::from_secs(1),
            "served within 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let last = registry.alias_history("fraud", "champion").unwrap();
    let last = last.last().unwrap();
    assert_eq!(
        (last.by.as_str(), last.reason.as_str()),
        ("bank_a", "better AUC")
    );

    // Admin only; the version must exist; `expect` guards against a concurrent move.
    let mut b = connect(TOKEN_B).await;
    let body = |to: u64, expect: serde_json::Value| serde_json::json!({"model": "fraud", "alias": "champion", "to": to, "expect": expect});
    let code = |e: quiver_featurestore::Error| match e {
        quiver_featurestore::Error::Remote { code, .. } => code,
        other => panic!("expected a server error, got {other}"),
    };
    assert_eq!(
        code(
            b.action("alias", body(1, serde_json::Value::Null))
                .await
                .unwrap_err()
        ),
        "PermissionDenied"
    );
    assert_eq!(
        code(
            a.action("alias", body(9, serde_json::Value::Null))
                .await
                .unwrap_err()
        ),
        "NotFound"
    );
    assert_eq!(
        code(
            a.action("alias", body(1, serde_json::json!(1)))
                .await
                .unwrap_err()
        ),
        "Aborted"
    );
    assert_eq!(served(&a.score("fraud", &keys, false).await.unwrap()), 2);
    server.shutdown().await;
}
