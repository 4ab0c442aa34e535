"""The project's Python client (python/, installed into .venv by scripts/python-env.sh)
against `quiver serve`: every call, Arrow and pandas output, and the typed errors.

Usage: python_client.py PORT TOKEN OTHER_TENANT_TOKEN BASE_US
Prints one JSON document with what it read; the Rust test checks it.
"""
import json
import sys
from datetime import datetime, timezone

import pyarrow as pa

import quiver_client as qc


def main():
    port, token, other, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    url = f"grpc://127.0.0.1:{port}"
    out = {}
    with qc.Client(url, token=token) as c:
        out["views"] = sorted(v["view"] for v in c.list_views())
        t = c.get_online_features("stats", {"user_id": [1, 2, 3]})
        out["online_type"] = type(t).__name__
        out["online"] = {n: t.column(n).to_pylist() for n in ["user_id", "n_1d", "stats__status"]}
        sub = c.get_online_features("stats", pa.table({"user_id": [2]}), features=["n_1d"])
        out["subset_columns"] = sub.schema.names
        when = datetime.fromtimestamp(base / 1e6, tz=timezone.utc)
        entities = pa.table({
            "user_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array([when, when], pa.timestamp("us", tz="UTC")),
        })
        h = c.get_historical_features(entities, ["stats"])
        out["historical_n_1d"] = h.column("n_1d").to_pylist()
        out["health"] = c.health(max_lag_seconds=3600)
        scored = c.score("fraud", {"user_id": [1, 2]})
        out["scores"] = scored.column("score").to_pylist()
        out["score_versions"] = scored.column("model_version").to_pylist()
        errors = {}
        for name, call in [
            ("unknown_view", lambda: c.get_online_features("nope", {"user_id": [1]})),
            ("bad_key_type", lambda: c.get_online_features("stats", {"user_id": ["x"]})),
            ("unknown_model", lambda: c.score("no_such_model", {"user_id": [1]})),
            ("bad_feature_ref", lambda: c.get_historical_features(entities, ["stats:nope"])),
        ]:
            try:
                call()
                errors[name] = None
            except qc.QuiverError as e:
                errors[name] = type(e).__name__
        out["errors"] = errors
    with qc.Client(url, token="wrong-token-0000000000") as c:
        try:
            c.list_views()
        except qc.Unauthenticated:
            out["unauthenticated"] = True
    with qc.Client(url, token=other) as c:
        try:
            c.get_online_features("stats", {"user_id": [1]})
        except qc.PermissionDenied as e:
            out["permission_denied"] = "stats" in str(e)
    try:
        import pandas  # noqa: F401
        with qc.Client(url, token=token, output="pandas") as c:
            df = c.get_online_features("stats", {"user_id": [1, 2]})
            out["pandas"] = [type(df).__name__, df["n_1d"].tolist()]
            h = c.get_historical_features(entities.to_pandas(), ["stats"])
            out["pandas_historical"] = h["n_1d"].tolist()
    except ImportError:
        out["pandas"] = "not installed"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
