//! `quiver registry`: a scaffolded repo, a training set, a signed model, aliases,
//! lineage, tampering and two processes moving one alias at once.

use crate::common::{fails, json, ok, quiver};

const MODEL: &str = r#"{"format": "logistic_regression",
  "features": ["txn_count_7d", "amount_sum_7d", "amount_avg_30d"],
  "weights": [0.3, 0.001, -0.002], "intercept": -2.5, "baseline": [3, 200, 60]}"#;

const FEATURES: &str =
    "user_txn_stats:txn_count_7d,user_txn_stats:amount_sum_7d,user_txn_stats:amount_avg_30d";

/// Create and trust the key `ana`, write the model artifact; their paths.
fn signer_and_model(repo: &std::path::Path, dir: &std::path::Path) -> (String, String) {
    let key = dir.join("ana.key").to_str().unwrap().to_owned();
    let model = dir.join("model.json").to_str().unwrap().to_owned();
    ok(&quiver(
        repo,
        &["registry", "keygen", "--signer", "ana", "--out", &key],
    ));
    std::fs::write(&model, MODEL).unwrap();
    (model, key)
}

/// `quiver registry register fraud` of `artifact` taking `features`, signed by `ana`,
/// with `extra` flags.
fn register(
    repo: &std::path::Path,
    artifact: &str,
    features: &str,
    key: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "registry",
        "register",
        "fraud",
        "--artifact",
        artifact,
        "--features",
        features,
        "--key",
        key,
        "--signer",
        "ana",
    ];
    args.extend_from_slice(extra);
    quiver(repo, &args)
}

#[test]
fn register_promote_trace_verify_and_refuse_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    ok(&quiver(&repo, &["init", "--sample-data"]));
    ok(&quiver(&repo, &["apply"]));
    let hist = json(&quiver(
        &repo,
        &[
            "history",
            "--entities",
            repo.join("entities.csv").to_str().unwrap(),
            "--features",
            "user_txn_stats",
            "--out",
            &p("train.parquet"),
            "--output",
            "json",
        ],
    ));
    let set_id = hist["lineage_id"].as_str().unwrap().to_owned();
    assert!(set_id.starts_with("training_set:"), "{set_id}");

    let (model_path, key_path) = signer_and_model(&repo, dir.path());
    let features = FEATURES;
    let train_path = p("train.parquet");
    let reg = || {
        register(
            &repo,
            &model_path,
            features,
            &key_path,
            &[
                "--training-data",
                &train_path,
                "--metric",
                "auc=0.9",
                "--output",
                "json",
            ],
        )
    };
    let v1 = json(&reg());
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["training_rows"], 4);
    let ups: Vec<&str> = v1["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ups, vec![set_id.as_str(), "view:user_txn_stats@1"]);

    // Feature names that do not match the artifact are refused, naming both lists.
    let bad = fails(&register(
        &repo,
        &model_path,
        "user_txn_stats",
        &key_path,
        &[],
    ));
    assert!(
        bad.contains("schema mismatch") && bad.contains("distinct_devices_30d"),
        "{bad}"
    );

    // Lineage: model <- view <- Delta table, and <- training set.
    let up = json(&quiver(
        &repo,
        &["registry", "lineage", "fraud@1", "--format", "json"],
    ));
    let nodes: Vec<&str> = up["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        nodes
            .iter()
            .any(|n| n.starts_with("delta:") && n.ends_with("transactions@0")),
        "{nodes:?}"
    );
    assert!(nodes.contains(&set_id.as_str()) && nodes.contains(&"view:user_txn_stats@1"));
    let dot = ok(&quiver(
        &repo,
        &["registry", "lineage", "fraud@1", "--format", "dot"],
    ));
    assert!(
        dot.contains("\"view:user_txn_stats@1\" -> \"model:fraud@1\""),
        "{dot}"
    );
    let ol = ok(&quiver(
        &repo,
        &["registry", "lineage", "fraud@1", "--format", "openlineage"],
    ));
    for line in ol.lines() {
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(ev["eventType"], "COMPLETE");
    }

    // Promote, then see the impact of the view.
    ok(&quiver(
        &repo,
        &[
            "registry", "alias", "fraud", "champion", "1", "--expect", "none", "--reason", "first",
        ],
    ));
    let impact = json(&quiver(
        &repo,
        &["registry", "impact", "user_txn_stats", "--output", "json"],
    ));
    assert_eq!(impact["tasks"][0]["model"], "fraud");
    assert_eq!(impact["tasks"][0]["aliases"][0], "champion");

    // Changing the view: `plan` names the model that reads it, with its alias.
    let yaml_path = repo.join("features.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    std::fs::write(&yaml_path, yaml.replace("ttl: 45d", "ttl: 40d")).unwrap();
    let plan = json(&quiver(&repo, &["plan", "--output", "json"]));
    let change = &plan["changes"][0];
    assert_eq!(change["name"], "user_txn_stats", "{plan}");
    assert_eq!(change["affected_models"][0]["model"], "fraud", "{plan}");
    assert_eq!(
        change["affected_models"][0]["aliases"][0], "champion",
        "{plan}"
    );
    let text = ok(&quiver(&repo, &["plan"]));
    assert!(
        text.contains("model fraud@1 reads it, serving as champion"),
        "{text}"
    );
    std::fs::write(&yaml_path, yaml).unwrap();
    let drift = json(&quiver(
        &repo,
        &[
            "registry",
            "drift",
            "fraud@champion",
            "--live",
            &p("train.parquet"),
            "--output",
            "json",
        ],
    ));
    assert!(
        drift["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["drifted"] == false),
        "{drift}"
    );
    assert!(ok(&quiver(&repo, &["registry", "verify", "fraud"])).contains("fraud@1  OK"));

    // Version 2, then damage its artifact: verify fails, version 1 still verifies.
    let mut evil = MODEL.replace("-2.5", "9.9");
    json(&reg());
    std::fs::write(p("model2.json"), &evil).unwrap();
    let v3 = json(&register(
        &repo,
        &p("model2.json"),
        features,
        &key_path,
        &["--output", "json"],
    ));
    let digest = v3["artifact_sha256"].as_str().unwrap();
    let stored = repo
        .join(".quiver/artifacts/sha256")
        .join(&digest[..2])
        .join(&digest[2..]);
    evil = evil.replace("9.9", "0.0");
    std::fs::write(&stored, evil).unwrap();
    let out = fails(&quiver(&repo, &["registry", "verify", "fraud"]));
    assert!(
        out.contains("fraud@1  OK") && out.contains("fraud@3  FAILED") && out.contains("tampered"),
        "{out}"
    );

    // A model whose input is gone from the applied view cannot be promoted.
    let yaml = std::fs::read_to_string(repo.join("features.yaml")).unwrap();
    let without = yaml
        .lines()
        .filter(|l| !l.contains("amount_avg_30d"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(repo.join("features.yaml"), without).unwrap();
    ok(&quiver(&repo, &["apply"]));
    let refused = fails(&quiver(
        &repo,
        &["registry", "alias", "fraud", "challenger", "2"],
    ));
    assert!(
        refused.contains("cannot be promoted") && refused.contains("amount_avg_30d"),
        "{refused}"
    );
    let impact = json(&quiver(
        &repo,
        &["registry", "impact", "user_txn_stats", "--output", "json"],
    ));
    assert!(
        impact["tasks"][0]["schema_problem"]
            .as_str()
            .unwrap()
            .contains("amount_avg_30d")
    );

    // A rollout policy stored in the registry: shown, checked, cleared.
    let shown = json(&quiver(
        &repo,
        &["registry", "policy", "fraud", "--output", "json"],
    ));
    assert!(shown["policy"].is_null(), "{shown}");
    let file = repo.join("policy.json");
    std::fs::write(&file, r#"{"challenger_percent": 5, "max_p99_ms": 20}"#).unwrap();
    let set = json(&quiver(
        &repo,
        &[
            "registry",
            "policy",
            "fraud",
            "--set",
            file.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    assert_eq!(set["policy"]["challenger_percent"], 5.0, "{set}");
    assert_eq!(
        set["policy"]["max_error_rate"], 0.01,
        "defaults fill the rest: {set}"
    );
    std::fs::write(&file, r#"{"challenger_percnt": 5}"#).unwrap();
    let refused = fails(&quiver(
        &repo,
        &[
            "registry",
            "policy",
            "fraud",
            "--set",
            file.to_str().unwrap(),
        ],
    ));
    assert!(
        refused.contains("policy.json") && refused.contains("challenger_percnt"),
        "{refused}"
    );
    let cleared = json(&quiver(
        &repo,
        &["registry", "policy", "fraud", "--clear", "--output", "json"],
    ));
    assert!(cleared["policy"].is_null(), "{cleared}");
}

#[test]
fn two_processes_moving_one_alias_never_tear_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(&quiver(&repo, &["init", "--sample-data"]));
    ok(&quiver(&repo, &["apply"]));
    let (model_path, key_path) = signer_and_model(&repo, dir.path());
    let features = FEATURES;
    for _ in 0..2 {
        ok(&register(&repo, &model_path, features, &key_path, &[]));
    }
    // Two OS processes at a time, each moving the alias; sled's file lock serialises
    // them and the CLI waits for it (up to 10 s), so every move lands exactly once.
    const ROUNDS: usize = 8;
    let movers: Vec<_> = (0..2)
        .map(|t| {
            let repo = repo.clone();
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    let v = (1 + (t + i) % 2).to_string();
                    let by = format!("p{t}");
                    ok(&quiver(
                        &repo,
                        &["registry", "alias", "fraud", "challenger", &v, "--by", &by],
                    ));
                }
            })
        })
        .collect();
    for m in movers {
        m.join().unwrap();
    }
    let show = json(&quiver(
        &repo,
        &["registry", "show", "fraud", "--output", "json"],
    ));
    let h = show["alias_history"]["challenger"].as_array().unwrap();
    assert_eq!(h.len(), 2 * ROUNDS);
    for (i, w) in h.windows(2).enumerate() {
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1,
            "at {i}"
        );
        assert_eq!(w[1]["from"], w[0]["to"], "at {i}");
    }
    assert_eq!(
        show["aliases"]["challenger"]["version"],
        h.last().unwrap()["to"]
    );
}
