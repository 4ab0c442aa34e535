use std::collections::HashMap;

use crate::common::{Fixture, fixture};
use quiver_registry::{
    ArtifactStore, Error, FeatureStats, InputFeature, InputSchema, MetadataStore, NativeModel,
    Registration, SigningKey,
};

fn linear(w: f64) -> NativeModel {
    NativeModel::LogisticRegression {
        features: vec!["txn_count_1h".into(), "amount_avg_7d".into()],
        weights: vec![w, -0.01],
        intercept: -3.0,
        baseline: Some(vec![1.0, 50.0]),
        transform: None,
    }
}

fn schema() -> InputSchema {
    let f = |col: &str, feature: &str| InputFeature {
        column: col.into(),
        view: "user_txn_stats".into(),
        view_version: 2,
        feature: feature.into(),
        dtype: "Float64".into(),
    };
    InputSchema {
        features: vec![
            f("txn_count_1h", "txn_count_1h"),
            f("amount_avg_7d", "amount_avg_7d"),
        ],
    }
}

fn register(fx: &Fixture, w: f64) -> u64 {
    let stats = vec![FeatureStats::from_values(
        "txn_count_1h",
        &[0.0, 1.0, 2.0, 3.0],
    )];
    fx.reg
        .register(
            Registration::new("fraud", linear(w).to_json(), schema())
                .metric("auc", 0.91)
                .training_stats(stats)
                .upstream("training_set:abc")
                .tag("team", "risk"),
            "alice",
            &fx.key,
        )
        .unwrap()
        .manifest
        .version
}

#[test]
fn versions_grow_and_load_verified() {
    let fx = fixture("alice");
    assert_eq!(register(&fx, 0.5), 1);
    assert_eq!(register(&fx, 0.7), 2);
    let loaded = fx.reg.load("fraud", 2).unwrap();
    assert_eq!(loaded.model.native(), Some(&linear(0.7)));
    assert_eq!(loaded.version.manifest.metrics["auc"], 0.91);
    assert_eq!(loaded.version.tags["team"], "risk");
    assert_eq!(fx.reg.versions("fraud").unwrap().len(), 2);
    assert_eq!(fx.reg.models().unwrap()[0].latest_version, 2);
    // Same bytes, one artifact.
    register(&fx, 0.7);
    let a = fx
        .reg
        .version("fraud", 2)
        .unwrap()
        .unwrap()
        .manifest
        .artifact_sha256;
    let b = fx
        .reg
        .version("fraud", 3)
        .unwrap()
        .unwrap()
        .manifest
        .artifact_sha256;
    assert_eq!(a, b);
}

#[test]
fn tampered_artifacts_and_manifests_refuse_to_load() {
    let fx = fixture("alice");
    register(&fx, 0.5);
    register(&fx, 0.9);
    // Flip the artifact of version 2 on disk.
    let digest = fx
        .reg
        .version("fraud", 2)
        .unwrap()
        .unwrap()
        .manifest
        .artifact_sha256;
    let path = fx.reg.artifacts().path_of(&digest).unwrap();
    let evil = linear(50.0).to_json();
    std::fs::write(&path, evil).unwrap();
    let err = fx.reg.load("fraud", 2).unwrap_err();
    assert!(matches!(err, Error::Tampered { .. }), "{err}");
    // Version 1 still loads: the previous version keeps serving.
    fx.reg.load("fraud", 1).unwrap();

    // A version signed by a key the registry does not trust does not register.
    let mallory = SigningKey::generate(fx._dir.path().join("mallory.key")).unwrap();
    let err = fx
        .reg
        .register(
            Registration::new("fraud", linear(1.0).to_json(), schema()),
            "alice",
            &mallory,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Untrusted(_)), "{err}");
    let err = fx
        .reg
        .register(
            Registration::new("fraud", linear(1.0).to_json(), schema()),
            "mallory",
            &mallory,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("quiver registry trust mallory"),
        "{err}"
    );

    // Untrusting the signer stops its versions from loading.
    fx.reg.untrust("alice").unwrap();
    assert!(matches!(fx.reg.load("fraud", 1), Err(Error::Untrusted(_))));
}

#[test]
fn bad_models_do_not_register() {
    let fx = fixture("alice");
    let err = fx
        .reg
        .register(
            Registration::new("fraud", b"{not json".to_vec(), schema()),
            "alice",
            &fx.key,
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidModel(_)), "{err}");
    let mut swapped = schema();
    swapped.features.reverse();
    let err = fx
        .reg
        .register(
            Registration::new("fraud", linear(1.0).to_json(), swapped),
            "alice",
            &fx.key,
        )
        .unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch(_)), "{err}");
    let err = fx
        .reg
        .register(
            Registration::new("../etc", linear(1.0).to_json(), schema()),
            "alice",
            &fx.key,
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert!(fx.reg.models().unwrap().is_empty());
}

#[test]
fn aliases_move_atomically_with_history() {
    let fx = fixture("alice");
    register(&fx, 0.5);
    register(&fx, 0.6);
    fx.reg
        .move_alias("fraud", "champion", Some(1), Some(None), "ana", "first")
        .unwrap();
    fx.reg
        .move_alias(
            "fraud",
            "champion",
            Some(2),
            Some(Some(1)),
            "ana",
            "better auc",
        )
        .unwrap();
    // A stale compare-and-set loses and changes nothing.
    let err = fx
        .reg
        .move_alias("fraud", "champion", Some(1), Some(Some(1)), "bob", "stale")
        .unwrap_err();
    assert!(
        matches!(err, Error::AliasMoved { found: Some(2), .. }),
        "{err}"
    );
    assert_eq!(fx.reg.resolve("fraud", "champion").unwrap(), 2);
    // Unknown versions cannot be aliased.
    assert!(matches!(
        fx.reg
            .move_alias("fraud", "champion", Some(9), None, "ana", "x"),
        Err(Error::NotFound { .. })
    ));
    fx.reg
        .move_alias("fraud", "champion", None, None, "ana", "retire")
        .unwrap();
    fx.reg
        .move_alias("fraud", "champion", Some(1), None, "ana", "back")
        .unwrap();
    let h = fx.reg.alias_history("fraud", "champion").unwrap();
    let moves: Vec<_> = h.iter().map(|e| (e.seq, e.from, e.to)).collect();
    assert_eq!(
        moves,
        vec![
            (1, None, Some(1)),
            (2, Some(1), Some(2)),
            (3, Some(2), None),
            (4, None, Some(1))
        ]
    );

    // Concurrent movers in one process: every move is logged once, the alias ends at
    // the last logged target.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let reg = fx.reg.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let v = 1 + ((t + i) % 2) as u64;
                    reg.move_alias(
                        "fraud",
                        "challenger",
                        Some(v),
                        None,
                        &format!("t{t}"),
                        "race",
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let h = fx.reg.alias_history("fraud", "challenger").unwrap();
    assert_eq!(h.len(), 100);
    assert!(
        h.windows(2)
            .all(|w| w[1].seq == w[0].seq + 1 && w[1].from == w[0].to)
    );
    assert_eq!(
        fx.reg
            .alias("fraud", "challenger")
            .unwrap()
            .unwrap()
            .version,
        h[99].to.unwrap()
    );
}

#[test]
fn lineage_answers_upstream_and_impact() {
    let fx = fixture("alice");
    let lineage = fx.reg.lineage();
    use quiver_registry::{Edge, Node, NodeKind};
    let e = |from: &str, to: &str, rel: &str| Edge {
        from: from.into(),
        to: to.into(),
        relation: rel.into(),
    };
    lineage
        .record(
            &[Node::new(NodeKind::TrainingSet, "abc", None).with_attr("rows", 1000)],
            &[
                e(
                    "delta:data/bank_a/transactions@7",
                    "view:user_txn_stats@2",
                    "computes",
                ),
                e("view:user_txn_stats@2", "training_set:abc", "reads"),
            ],
        )
        .unwrap();
    register(&fx, 0.5);
    let up = lineage.upstream("model:fraud@1").unwrap();
    let ids: Vec<&str> = up.nodes.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        vec![
            "delta:data/bank_a/transactions@7",
            "model:fraud@1",
            "training_set:abc",
            "view:user_txn_stats@2"
        ]
    );
    let down = lineage.downstream("view:user_txn_stats@2").unwrap();
    assert!(down.nodes.contains_key("model:fraud@1"));
    assert!(down.nodes.contains_key("training_set:abc"));
    let dot = up.to_dot();
    assert!(dot.starts_with("digraph lineage {"));
    assert!(dot.contains("\"view:user_txn_stats@2\" -> \"model:fraud@1\""));
    let events = up.to_openlineage("quiver://test");
    let model_event = events
        .iter()
        .find(|e| e["outputs"][0]["name"] == "model:fraud@1")
        .unwrap();
    let inputs: Vec<&str> = model_event["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, vec!["training_set:abc", "view:user_txn_stats@2"]);
    assert_eq!(model_event["eventType"], "COMPLETE");
    assert_eq!(model_event["run"]["runId"].as_str().unwrap().len(), 36);
    assert!(matches!(
        lineage.upstream("model:nope@1"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        lineage.upstream("bogus"),
        Err(Error::NotFound { .. }) | Err(Error::InvalidKey { .. })
    ));
}

#[test]
fn drift_flags_shifted_features() {
    let train: Vec<f64> = (0..10_000).map(|i| (i % 100) as f64).collect();
    let stats = vec![
        FeatureStats::from_values("a", &train),
        FeatureStats::from_values("b", &train),
    ];
    let mut live = HashMap::new();
    live.insert(
        "a".to_string(),
        train.iter().step_by(7).copied().collect::<Vec<_>>(),
    );
    live.insert(
        "b".to_string(),
        train.iter().map(|v| v * 1.5 + 20.0).collect::<Vec<_>>(),
    );
    let report =
        quiver_registry::drift_report(&stats, &live, quiver_registry::DEFAULT_PSI_THRESHOLD);
    assert!(
        !report[0].drifted && report[0].psi < 0.02,
        "{:?}",
        report[0]
    );
    assert!(report[1].drifted && report[1].ks > 0.3, "{:?}", report[1]);
}

#[test]
fn an_edited_manifest_fails_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("registry");
    {
        let meta = MetadataStore::open(&db_path).unwrap();
        let reg = meta
            .models(ArtifactStore::new(dir.path().join("artifacts")))
            .unwrap();
        let key = SigningKey::generate(dir.path().join("k")).unwrap();
        reg.trust("alice", &key.public_key_hex()).unwrap();
        reg.register(
            Registration::new("fraud", linear(0.5).to_json(), schema()).metric("auc", 0.7),
            "alice",
            &key,
        )
        .unwrap();
    }
    // Raise the recorded AUC directly in the database, as an attacker with disk access would.
    {
        let db = sled::open(&db_path).unwrap();
        let versions = db.open_tree("model_versions").unwrap();
        let (k, v) = versions.iter().next().unwrap().unwrap();
        let mut stored: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let edited = stored["signed_manifest"]
            .as_str()
            .unwrap()
            .replace("0.7", "0.99");
        stored["signed_manifest"] = edited.into();
        versions
            .insert(k, serde_json::to_vec(&stored).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let meta = MetadataStore::open(&db_path).unwrap();
    let reg = meta
        .models(ArtifactStore::new(dir.path().join("artifacts")))
        .unwrap();
    assert_eq!(
        reg.version("fraud", 1).unwrap().unwrap().manifest.metrics["auc"],
        0.99
    );
    let err = reg.load("fraud", 1).unwrap_err();
    assert!(
        err.to_string().contains("signature does not match"),
        "{err}"
    );
}

#[test]
fn registrations_are_bounded() {
    let fx = fixture("alice");
    let mut r = Registration::new("fraud", linear(1.0).to_json(), schema());
    for i in 0..=quiver_registry::MAX_TAGS {
        r = r.tag(&format!("k{i}"), "v");
    }
    let err = fx.reg.register(r, "alice", &fx.key).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { ref what, .. } if what == "tags"),
        "{err}"
    );
    let r = Registration::new("fraud", linear(1.0).to_json(), schema()).metric("auc", f64::NAN);
    let err = fx.reg.register(r, "alice", &fx.key).unwrap_err();
    assert!(err.to_string().contains("metrics must be finite"), "{err}");
    let r = Registration::new("fraud", linear(1.0).to_json(), schema())
        .description(&"x".repeat(quiver_registry::MAX_TEXT + 1));
    assert!(matches!(
        fx.reg.register(r, "alice", &fx.key),
        Err(Error::TooLarge { .. })
    ));
    assert!(fx.reg.models().unwrap().is_empty());
}
