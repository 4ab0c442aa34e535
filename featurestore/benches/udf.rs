//! WebAssembly UDF overhead: the same logic as a WASM UDF and as a native DataFusion
//! expression.
//!
//! ```text
//! cargo bench -p quiver-featurestore --bench udf
//! cargo bench -p quiver-featurestore --bench udf -- --rows 1000000 --runs 7
//! ```
//!
//! Measured:
//! - `SELECT sum(ratio(a, b)) FROM t` (the `udfs/ratio.wat` module, `a / (b + 1)`)
//!   against `SELECT sum(a / (b + 1.0)) FROM t` over `--rows` Float64 rows in memory
//!   (DataFusion's 8,192-row batches: one guest call each): median wall time, rows/s,
//!   the WASM path's ratio to native (target: within 2×), the extra time per batch;
//! - `jaccard` (`udfs/jaccard.wat`) over two 3-item string sets per row, for scale;
//! - a training set of a SQL view over a Delta table of `--rows` transactions calling
//!   `ratio` against the same view written as a SQL expression (10,000 entity rows);
//! - instantiation from the pool and without it (target: under 50 µs from the pool),
//!   and one call on an empty batch (instantiate, ABI check, alloc, IPC both ways).
//!
//! Output: a table and one JSON line.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use common::{DAY, arg, ts_type, write_delta};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::udf::{Budget, HostConfig, UdfHost, UdfRef, UdfRuntime};

const RATIO: &str = include_str!("../../udfs/ratio.wat");
const JACCARD: &str = include_str!("../../udfs/jaccard.wat");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_sql(ctx: &SessionContext, sql: &str, runs: usize) -> Duration {
    let mut times = Vec::new();
    for i in 0..runs + 1 {
        let t = Instant::now();
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        assert_eq!(out[0].num_rows(), 1);
        if i > 0 {
            times.push(t.elapsed()); // the first run warms up
        }
    }
    median(times)
}

fn refs(m: &quiver_featurestore::udf::LoadedModule) -> UdfRef {
    UdfRef {
        path: m.path.clone(),
        sha256: m.sha256.clone(),
        functions: m.metadata.functions.clone(),
    }
}

#[tokio::main]
async fn main() {
    let rows = arg("--rows", 1_000_000);
    let runs = arg("--runs", 7);
    let host = UdfHost::shared();
    let ratio = host.load("udfs/ratio.wat", RATIO.as_bytes()).unwrap();
    let jaccard = host.load("udfs/jaccard.wat", JACCARD.as_bytes()).unwrap();

    // In-memory table: a, b (Float64, 1% nulls), s1, s2 (3-item sets).
    let a: ArrayRef = Arc::new(Float64Array::from_iter(
        (0..rows).map(|i| (i % 100 != 7).then_some(i as f64 * 0.5)),
    ));
    let b: ArrayRef = Arc::new(Float64Array::from_iter_values(
        (0..rows).map(|i| (i % 13) as f64),
    ));
    let s1: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..rows).map(|i| format!("d{},d{},d{}", i % 5, i % 7, i % 3)),
    ));
    let s2: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..rows).map(|i| format!("d{},d{},d{}", i % 4, i % 7, i % 2)),
    ));
    let batch = RecordBatch::try_from_iter([("a", a), ("b", b), ("s1", s1), ("s2", s2)]).unwrap();
    let batch_size = 8192;
    let parts: Vec<RecordBatch> = (0..rows.div_ceil(batch_size))
        .map(|i| batch.slice(i * batch_size, batch_size.min(rows - i * batch_size)))
        .collect();
    let batches = parts.len();
    let ctx = SessionContext::new();
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(batch.schema(), vec![parts]).unwrap()),
    )
    .unwrap();
    UdfRuntime::new(host.clone(), None)
        .with_pending([ratio.clone(), jaccard.clone()])
        .register(&ctx, &[refs(&ratio), refs(&jaccard)])
        .unwrap();
    // Same answer both ways.
    let check = ctx
        .sql("SELECT sum(ratio(a, b)) - sum(a / (b + 1.0)) AS d FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    eprintln!(
        "difference of the sums: {:?}",
        arrow::util::pretty::pretty_format_batches(&check)
            .unwrap()
            .to_string()
            .lines()
            .nth(3)
    );
    let native = time_sql(&ctx, "SELECT sum(a / (b + 1.0)) FROM t", runs).await;
    let wasm = time_sql(&ctx, "SELECT sum(ratio(a, b)) FROM t", runs).await;
    let jac = time_sql(&ctx, "SELECT sum(jaccard(s1, s2)) FROM t", runs).await;
    let ratio_x = wasm.as_secs_f64() / native.as_secs_f64();
    let per_batch_us = (wasm.as_secs_f64() - native.as_secs_f64()) * 1e6 / batches as f64;

    // Instantiation, pooled and not.
    let inst = |h: &UdfHost, m: &quiver_featurestore::udf::LoadedModule| {
        for _ in 0..200 {
            h.instantiate(m).unwrap();
        }
        median((0..2000).map(|_| h.instantiate(m).unwrap()).collect())
    };
    let pooled = inst(&host, &ratio);
    let mut unpooled_cfg = HostConfig::default();
    unpooled_cfg.pooling = false;
    let unpooled_host = UdfHost::new(unpooled_cfg).unwrap();
    let unpooled_module = unpooled_host
        .load("udfs/ratio.wat", RATIO.as_bytes())
        .unwrap();
    let unpooled = inst(&unpooled_host, &unpooled_module);
    let empty: ArrayRef = Arc::new(Float64Array::from(Vec::<f64>::new()));
    let f = ratio.function("ratio").unwrap();
    let empty_call = median(
        (0..2000)
            .map(|_| {
                host.call(
                    &ratio,
                    f,
                    &[empty.clone(), empty.clone()],
                    0,
                    Budget::Deadline(Duration::from_secs(1)),
                )
                .unwrap()
                .elapsed
            })
            .collect(),
    );

    // Validating and compiling a module (what `validate`/`apply` and a process's first
    // use pay): a host without a cache compiles every time.
    let mut nocache_cfg = HostConfig::default();
    nocache_cfg.cache = false;
    let nocache = UdfHost::new(nocache_cfg).unwrap();
    let compile = |text: &str| {
        median(
            (0..9)
                .map(|_| {
                    let t = Instant::now();
                    nocache.load("m.wat", text.as_bytes()).unwrap();
                    t.elapsed()
                })
                .collect(),
        )
    };
    let (compile_ratio, compile_jaccard) = (compile(RATIO), compile(JACCARD));

    // A training set of a SQL view calling the UDF, against the same view in SQL.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let users = 10_000i64;
    let now = 1_735_689_600_000_000i64;
    let tx_schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("amount", DataType::Float64, true),
        Field::new("fee", DataType::Float64, false),
    ]));
    let tx = RecordBatch::try_new(
        tx_schema,
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| i % users),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..rows as i64).map(|i| now - 30 * DAY + i * (30 * DAY / rows as i64)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter(
                (0..rows).map(|i| (i % 100 != 7).then_some(i as f64 * 0.5)),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| (i % 13) as f64),
            )),
        ],
    )
    .unwrap();
    write_delta(root, "data/tx", vec![tx]).await;
    std::fs::create_dir_all(root.join("udfs")).unwrap();
    std::fs::write(root.join("udfs/ratio.wat"), RATIO).unwrap();
    let view = |name: &str, expr: &str, udfs: &str| {
        format!(
            "---\nkind: FeatureView\nname: {name}\nentity: user\nsources: [tx]\n{udfs}sql: SELECT user_id, ts, {expr} AS r FROM tx\n"
        )
    };
    std::fs::write(
        root.join("f.yaml"),
        format!(
            "kind: Entity\nname: user\njoin_keys: [user_id]\n---\nkind: Source\nname: tx\ndelta: data/tx\ntimestamp: ts\n{}{}",
            view("with_udf", "ratio(amount, fee)", "udfs: [udfs/ratio.wat]\n"),
            view("native", "amount / (fee + 1.0)", "")
        ),
    )
    .unwrap();
    let store = FeatureStore::open(root).unwrap();
    store.apply().await.unwrap();
    let ent = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(0..users)),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..users).map(|_| now))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    let mut ts_times = std::collections::BTreeMap::new();
    for v in ["native", "with_udf"] {
        let mut times = Vec::new();
        for i in 0..runs + 1 {
            let t = Instant::now();
            let out = store
                .historical_features()
                .with_entities(vec![ent.clone()])
                .with_features(v)
                .unwrap()
                .await
                .unwrap();
            assert_eq!(out.num_rows(), users as usize);
            if i > 0 {
                times.push(t.elapsed());
            }
        }
        ts_times.insert(v, median(times));
    }
    let ts_ratio = ts_times["with_udf"].as_secs_f64() / ts_times["native"].as_secs_f64();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("UDF overhead, {rows} rows in {batches} batches (median of {runs})");
    println!("{:<58} {:>12} {:>14}", "case", "time", "rows/s");
    println!(
        "{:<58} {:>9.1} ms {:>14.0}",
        "native: sum(a / (b + 1.0))",
        ms(native),
        rows as f64 / native.as_secs_f64()
    );
    println!(
        "{:<58} {:>9.1} ms {:>14.0}",
        "wasm: sum(ratio(a, b))",
        ms(wasm),
        rows as f64 / wasm.as_secs_f64()
    );
    println!("{:<58} {:>12.2}x", "wasm / native (target <= 2x)", ratio_x);
    println!(
        "{:<58} {:>9.1} µs",
        "extra time per batch (one guest call)", per_batch_us
    );
    println!(
        "{:<58} {:>9.1} ms {:>14.0}",
        "wasm: sum(jaccard(s1, s2)), 3-item sets",
        ms(jac),
        rows as f64 / jac.as_secs_f64()
    );
    println!(
        "{:<58} {:>9.1} ms",
        "training set, SQL view, native expression (10k rows)",
        ms(ts_times["native"])
    );
    println!(
        "{:<58} {:>9.1} ms",
        "training set, SQL view calling ratio() (10k rows)",
        ms(ts_times["with_udf"])
    );
    println!("{:<58} {:>12.2}x", "training set: udf / native", ts_ratio);
    println!(
        "{:<58} {:>9.1} µs",
        "instantiate from the pool (target < 50 µs)",
        us(pooled)
    );
    println!(
        "{:<58} {:>9.1} µs",
        "instantiate without the pool",
        us(unpooled)
    );
    println!(
        "{:<58} {:>9.1} µs",
        "call on an empty batch (instantiate + ABI + IPC)",
        us(empty_call)
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "udf",
            "rows": rows,
            "batches": batches,
            "native_ms": ms(native),
            "wasm_ms": ms(wasm),
            "wasm_over_native": ratio_x,
            "extra_us_per_batch": per_batch_us,
            "jaccard_ms": ms(jac),
            "training_set_native_ms": ms(ts_times["native"]),
            "training_set_udf_ms": ms(ts_times["with_udf"]),
            "training_set_udf_over_native": ts_ratio,
            "instantiate_pooled_us": us(pooled),
            "instantiate_unpooled_us": us(unpooled),
            "empty_call_us": us(empty_call),
            "compile_ratio_ms": ms(compile_ratio),
            "compile_jaccard_ms": ms(compile_jaccard),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    );
}
