#!/usr/bin/env bash
# Training sets side by side with DuckDB on the same files (docs/benchmarks.md), two
# cases over 100,000 entity rows:
# - windowed: 1,000,000 transactions of 100,000 users, 4 windows (7d count, 7d sum,
#   30d avg, 30d count_distinct) against DuckDB's range join;
# - as-of: 4 columns of about 4.5 million daily snapshots with a 3-day TTL against
#   DuckDB's ASOF JOIN.
#
#   ./scripts/bench-vs-duckdb.sh            # 5 runs each; RUNS=N to change
#
# quiver: the whole `quiver history` command (process start, registry, Delta log, the
# point-in-time join, writing Parquet), timed from outside. DuckDB: the query alone,
# in a warm in-process connection, reading the same Parquet files (the Delta table's
# data files and the entity file) and materializing the result. Output: a table and
# one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-5}"
venv="${QUIVER_VENV:-.venv}"

./scripts/python-env.sh
if ! "$venv/bin/python" -c "import duckdb" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "duckdb>=1,<2"
fi

cargo build --release -p quiver-featurestore --bin quiver
target="${CARGO_TARGET_DIR:-target}"
root=$(cargo bench -p quiver-featurestore --bench training_set -- --prepare-only 2>/dev/null | tail -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$venv/bin/python" - "$target/release/quiver" "$root" "$out" "$runs" <<'PY'
import json, os, subprocess, sys, time, statistics
import duckdb

quiver, root, out, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
entities = os.path.join(root, "entities.parquet")
txns = os.path.join(root, "data", "transactions", "*.parquet")
snaps = os.path.join(root, "data", "snapshots", "*.parquet")

def run_quiver(view):
    t = time.perf_counter()
    subprocess.run(
        [quiver, "--repo", root, "history", "--entities", entities,
         "--features", view, "--out", os.path.join(out, "q.parquet"),
         "--overwrite", "--output", "json"],
        check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t

windowed = f"""
WITH e AS (SELECT row_number() OVER () AS rid, user_id, event_timestamp
           FROM read_parquet('{entities}'))
SELECT e.rid, any_value(e.user_id) AS user_id, any_value(e.event_timestamp) AS event_timestamp,
  count(t.ts) FILTER (WHERE t.ts > e.event_timestamp - INTERVAL 7 DAY) AS txn_count_7d,
  coalesce(sum(t.amount) FILTER (WHERE t.ts > e.event_timestamp - INTERVAL 7 DAY), 0) AS amount_sum_7d,
  avg(t.amount) AS amount_avg_30d,
  count(DISTINCT t.device_id) AS distinct_devices_30d
FROM e LEFT JOIN read_parquet('{txns}') t
  ON t.user_id = e.user_id AND t.ts <= e.event_timestamp
 AND t.ts > e.event_timestamp - INTERVAL 30 DAY
GROUP BY e.rid
"""
asof = f"""
SELECT e.user_id, e.event_timestamp,
  CASE WHEN s.ts > e.event_timestamp - INTERVAL 3 DAY THEN s.balance END AS balance,
  CASE WHEN s.ts > e.event_timestamp - INTERVAL 3 DAY THEN s.credit_limit END AS credit_limit,
  CASE WHEN s.ts > e.event_timestamp - INTERVAL 3 DAY THEN s.risk_score END AS risk_score,
  CASE WHEN s.ts > e.event_timestamp - INTERVAL 3 DAY THEN s.days_past_due END AS days_past_due
FROM read_parquet('{entities}') e
ASOF LEFT JOIN read_parquet('{snaps}') s
  ON s.user_id = e.user_id AND s.ts <= e.event_timestamp
"""
con = duckdb.connect()
con.execute(f"SET threads = {os.cpu_count()}")

def run_duckdb(sql):
    t = time.perf_counter()
    n = con.execute(sql).to_arrow_table().num_rows
    dt = time.perf_counter() - t
    assert n == 100_000, n
    return dt

print(f"{'case':<9} {'engine':<40} {'min s':>8} {'median s':>9}")
result = {"runs": runs, "threads": os.cpu_count(), "duckdb": duckdb.__version__}
for case, view, sql, what in [("windowed", "txn_windows", windowed, "range join"),
                              ("as-of", "daily_snapshot", asof, "ASOF JOIN")]:
    run_quiver(view); run_duckdb(sql)  # warm the page cache and DuckDB's catalog
    q = sorted(run_quiver(view) for _ in range(runs))
    d = sorted(run_duckdb(sql) for _ in range(runs))
    qm, dm = statistics.median(q), statistics.median(d)
    print(f"{case:<9} {'quiver history (process, Parquet out)':<40} {q[0]:>8.3f} {qm:>9.3f}")
    print(f"{case:<9} {'DuckDB ' + what + ' (query, from Parquet)':<40} {d[0]:>8.3f} {dm:>9.3f}")
    print(f"{case:<9} {'ratio quiver / DuckDB (medians)':<40} {'':>8} {qm/dm:>9.2f}")
    result[case] = {"quiver_median_s": qm, "duckdb_median_s": dm, "ratio": qm / dm}
print(json.dumps(result))
PY
