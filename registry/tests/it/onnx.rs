//! ONNX models exported by a real exporter (skl2onnx; `tests/data/onnx/make_models.py`
//! made the files and `expected.json`, scikit-learn's own probabilities), registered,
//! loaded through the signed registry and scored by tract.

use std::path::PathBuf;

use quiver_registry::{
    Error, FeatureStats, InputFeature, InputSchema, Model, Registration, SHAPLEY_PERMUTATIONS,
};
use serde_json::Value;

use crate::common::{Fixture, fixture};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(data("expected.json")).unwrap()).unwrap()
}

fn schema(columns: &[&str]) -> InputSchema {
    InputSchema {
        features: columns
            .iter()
            .map(|c| InputFeature {
                column: (*c).into(),
                view: "stats".into(),
                view_version: 1,
                feature: (*c).into(),
                dtype: "Float64".into(),
            })
            .collect(),
    }
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn register(fx: &Fixture, file: &str, columns: &[&str], stats: Vec<FeatureStats>) -> Model {
    let bytes = std::fs::read(data(file)).unwrap();
    let mv = fx
        .reg
        .register(
            Registration::new("fraud_onnx", bytes, schema(columns)).training_stats(stats),
            "alice",
            &fx.key,
        )
        .unwrap();
    assert_eq!(mv.manifest.format, "onnx");
    fx.reg
        .load("fraud_onnx", mv.manifest.version)
        .unwrap()
        .model
}

#[test]
fn exported_models_score_like_scikit_learn() {
    let fx = fixture("alice");
    let exp = expected();
    let x = rows(&exp["rows"]);
    for name in ["logistic_regression", "random_forest", "mlp"] {
        let m = &exp["models"][name];
        let model = register(
            &fx,
            m["file"].as_str().unwrap(),
            &["n_1d", "sum_all"],
            vec![],
        );
        let want = floats(&m["probabilities"]);
        // One row at a time and all rows in one batch.
        let flat: Vec<f64> = x.iter().flatten().copied().collect();
        let mut batch = Vec::new();
        model.score_into(&flat, &mut batch).unwrap();
        for (i, row) in x.iter().enumerate() {
            let got = model.score(row).unwrap();
            // float32 inside the model: agree to about 1e-6.
            assert!(
                (got - want[i]).abs() < 1e-5,
                "{name} row {i}: tract {got}, scikit-learn {}",
                want[i]
            );
            assert!((batch[i] - got).abs() < 1e-9);
            let c = model.contributions(row).unwrap();
            assert_eq!(c.method, "baseline_shapley_exact");
            assert_eq!(c.values.len(), 2);
            assert!(c.residual.abs() < 1e-9, "{name}: residual {}", c.residual);
        }
    }
}

#[test]
fn shapley_values_of_a_linear_export_are_its_linear_terms() {
    // Logistic regression is linear in the logit, so each feature's Shapley value
    // depends only on its own value: changing sum_all leaves n_1d's share alone, and
    // moving n_1d by the same step adds the same amount wherever it starts.
    let fx = fixture("alice");
    let stats = vec![
        FeatureStats::from_values("n_1d", &[1.0, 2.0, 3.0, 6.0]),
        FeatureStats::from_values("sum_all", &[10.0, 50.0, 90.0, 130.0]),
    ];
    let model = register(&fx, "logistic_regression.onnx", &["n_1d", "sum_all"], stats);
    let a = model.contributions(&[3.0, 80.0]).unwrap();
    let b = model.contributions(&[3.0, 200.0]).unwrap();
    let c = model.contributions(&[5.0, 200.0]).unwrap();
    let d = model.contributions(&[7.0, 200.0]).unwrap();
    assert!((a.values[0] - b.values[0]).abs() < 1e-4, "{a:?} {b:?}");
    assert!(b.values[1] > a.values[1], "more spend, more risk");
    let step1 = c.values[0] - b.values[0];
    let step2 = d.values[0] - c.values[0];
    assert!(
        step1 > 0.0 && (step1 - step2).abs() < 1e-4,
        "{step1} {step2}"
    );
    // At the baseline (the training means, 3 and 70) every contribution is 0.
    let at_mean = model.contributions(&[3.0, 70.0]).unwrap();
    assert!(at_mean.values.iter().all(|v| v.abs() < 1e-5), "{at_mean:?}");
    // Missing inputs take the training mean.
    let missing = model.score(&[f64::NAN, 80.0]).unwrap();
    assert!((missing - model.score(&[3.0, 80.0]).unwrap()).abs() < 1e-12);
}

#[test]
fn wide_models_get_sampled_shapley_values_that_still_add_up() {
    let fx = fixture("alice");
    let exp = expected();
    let w = &exp["wide"];
    let cols: Vec<String> = w["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
    let model = register(&fx, w["file"].as_str().unwrap(), &cols, vec![]);
    let want = floats(&w["probabilities"]);
    for (i, row) in rows(&w["rows"]).iter().enumerate() {
        assert!((model.score(row).unwrap() - want[i]).abs() < 1e-5);
        let c = model.contributions(row).unwrap();
        assert_eq!(c.method, "baseline_shapley_sampled");
        assert!(c.residual.abs() < 1e-9, "residual {}", c.residual);
        // Linear in the logit: every permutation gives the exact value, so the
        // sample mean is exact too. Compare against one-feature-at-a-time changes.
        let base = model.contributions(&[0.0; 12]).unwrap().base;
        for (j, v) in c.values.iter().enumerate() {
            let mut alone = vec![0.0; 12];
            alone[j] = row[j];
            let p = model.score(&alone).unwrap();
            let solo = (p / (1.0 - p)).ln() - base;
            assert!((v - solo).abs() < 1e-4, "feature {j}: {v} vs {solo}");
        }
        // Deterministic: the same input gets the same answer.
        assert_eq!(model.contributions(row).unwrap().values, c.values);
    }
    assert!(SHAPLEY_PERMUTATIONS >= 16);
}

#[test]
fn broken_unsupported_and_mismatched_files_are_clear_errors() {
    let fx = fixture("alice");
    let reg = |bytes: Vec<u8>, cols: &[&str]| {
        fx.reg
            .register(
                Registration::new("bad", bytes, schema(cols)),
                "alice",
                &fx.key,
            )
            .unwrap_err()
    };
    let good = std::fs::read(data("mlp.onnx")).unwrap();

    // Not ONNX at all, and an ONNX file cut short: parse errors, not panics.
    let e = reg(
        b"\x08\x07garbage that is not protobuf".to_vec(),
        &["a", "b"],
    );
    assert!(matches!(e, Error::InvalidModel(_)), "{e}");
    assert!(e.to_string().contains("ONNX"), "{e}");
    for cut in [1, good.len() / 3, good.len() / 2, good.len() - 7] {
        let e = reg(good[..cut].to_vec(), &["n_1d", "sum_all"]);
        assert!(matches!(e, Error::InvalidModel(_)), "cut at {cut}: {e}");
    }
    // A model tract cannot build names the operator.
    let e = reg(
        std::fs::read(data("gradient_boosting.onnx")).unwrap(),
        &["n_1d", "sum_all"],
    );
    assert!(e.to_string().contains("TreeEnsembleClassifier"), "{e}");
    // An input schema of the wrong width cannot be registered (or promoted).
    let e = reg(good.clone(), &["n_1d", "sum_all", "extra"]);
    assert!(matches!(e, Error::SchemaMismatch(_)), "{e}");
    assert!(e.to_string().contains("takes 2 features per row"), "{e}");
    // Nothing was registered by any of these.
    assert!(fx.reg.model("bad").unwrap().is_none());
}
