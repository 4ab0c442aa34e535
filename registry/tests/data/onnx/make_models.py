"""Makes the ONNX test models of quiver's registry with real exporters.

Run from this folder, in a virtual environment with the versions pinned below:

    python3 -m venv /tmp/onnx-venv
    /tmp/onnx-venv/bin/pip install scikit-learn==1.9.1 skl2onnx==1.20.0 onnx==1.23.2 numpy==2.4.6
    /tmp/onnx-venv/bin/python make_models.py

It trains scikit-learn classifiers on a synthetic fraud set with the two features
of the Flight `score` tests (`n_1d`: transactions in the last day, `sum_all`: total
amount), exports them with skl2onnx (probabilities as a tensor, no ZipMap), and writes
`expected.json`: scikit-learn's own `predict_proba` on fixed rows, which the Rust tests
compare against what tract computes from the exported files. The files are committed,
so the tests need neither Python nor these packages.
"""

import json

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

FEATURES = ["n_1d", "sum_all"]

rng = np.random.default_rng(20261121)
n = 4000
n_1d = rng.poisson(3.0, n).astype(np.float32)
sum_all = rng.gamma(2.0, 40.0, n).astype(np.float32)
logit = -4.0 + 0.6 * n_1d + 0.01 * sum_all
y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
X = np.stack([n_1d, sum_all], axis=1)

models = {
    "logistic_regression": LogisticRegression(max_iter=1000),
    "random_forest": RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
    # tract 0.23 refuses this one (its TreeEnsembleClassifier takes one base value, this
    # export has two); the tests use it to check that an unsupported model is a clear error.
    "gradient_boosting": GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0),
    "mlp": MLPClassifier(hidden_layer_sizes=(8,), max_iter=2000, random_state=0),
}

rows = np.array(
    [[0, 0], [1, 10], [3, 80], [6, 200], [10, 500], [2, 35.5]], dtype=np.float32
)
expected = {"features": FEATURES, "rows": rows.tolist(), "models": {}}
for name, clf in models.items():
    clf.fit(X, y)
    onx = to_onnx(
        clf,
        X[:1],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.doc_string = f"quiver test model: scikit-learn {type(clf).__name__} on {FEATURES}"
    onnx.checker.check_model(onx)
    with open(f"{name}.onnx", "wb") as f:
        f.write(onx.SerializeToString())
    expected["models"][name] = {
        "file": f"{name}.onnx",
        "ops": sorted({node.op_type for node in onx.graph.node}),
        "outputs": [o.name for o in onx.graph.output],
        "probabilities": clf.predict_proba(rows)[:, 1].tolist(),
    }

# Twelve features, more than quiver explains exactly: the tests use it for sampled
# Shapley values (exact anyway for a model linear in the logit).
wide_features = [f"f{i}" for i in range(12)]
Xw = rng.normal(0.0, 1.0, (n, 12)).astype(np.float32)
yw = (rng.random(n) < 1.0 / (1.0 + np.exp(-(Xw @ np.linspace(-1.0, 1.0, 12))))).astype(np.int64)
wide = LogisticRegression(max_iter=1000).fit(Xw, yw)
wide_rows = rng.normal(0.0, 1.0, (3, 12)).astype(np.float32)
onx = to_onnx(wide, Xw[:1], options={id(wide): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
onnx.checker.check_model(onx)
with open("wide_logistic_regression.onnx", "wb") as f:
    f.write(onx.SerializeToString())
expected["wide"] = {
    "file": "wide_logistic_regression.onnx",
    "features": wide_features,
    "rows": wide_rows.tolist(),
    "probabilities": wide.predict_proba(wide_rows)[:, 1].tolist(),
}

with open("expected.json", "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
print(json.dumps({k: v["ops"] for k, v in expected["models"].items()}))
