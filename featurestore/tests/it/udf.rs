//! WebAssembly UDFs: the examples give the right values, a SQL view calling one is
//! served online with its training value, the pooled and cached paths change nothing,
//! the module hash pins the view, and every hostile guest fails with a clear error
//! naming its module and function while the host keeps running others.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::Float64Type;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::udf::{Budget, HostConfig, LoadedModule, UdfHost, UdfRef, UdfRuntime};

use crate::common::{
    DAY, HOUR, Repo, T0, assert_online_equals_training, training_at, transactions,
};

const PRELUDE: &str = include_str!("../../../udfs/src/prelude.wat");
const RATIO: &str = include_str!("../../../udfs/ratio.wat");
const JACCARD: &str = include_str!("../../../udfs/jaccard.wat");

fn host(config: HostConfig) -> Arc<UdfHost> {
    UdfHost::new(config).unwrap()
}

fn floats(a: &ArrayRef) -> Vec<Option<f64>> {
    a.as_primitive::<Float64Type>().iter().collect()
}

#[test]
fn example_udfs_compute_their_values() {
    let host = UdfHost::shared();
    let ratio = host.load("udfs/ratio.wat", RATIO.as_bytes()).unwrap();
    let a: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(4.0),
        None,
        Some(-3.0),
        Some(1.0),
    ]));
    let b: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(1.0),
        Some(2.0),
        Some(2.0),
        None,
    ]));
    let out = host
        .call(
            &ratio,
            ratio.function("ratio").unwrap(),
            &[a, b],
            4,
            Budget::Deadline(Duration::from_secs(5)),
        )
        .unwrap();
    assert_eq!(floats(&out.output), vec![Some(2.0), None, Some(-1.0), None]);

    let jaccard = host.load("udfs/jaccard.wat", JACCARD.as_bytes()).unwrap();
    let a: ArrayRef = Arc::new(StringArray::from(vec![
        Some("d1,d2"),
        Some("d1,d1,d2,"),
        Some(""),
        None,
        Some("x"),
        Some("a,b,c"),
    ]));
    let b: ArrayRef = Arc::new(StringArray::from(vec![
        Some("d2,d3"),
        Some("d2"),
        Some(""),
        Some("d1"),
        Some("y"),
        Some("c,b,a,a"),
    ]));
    let out = host
        .call(
            &jaccard,
            jaccard.function("jaccard").unwrap(),
            &[a, b],
            6,
            Budget::Fuel(1_000_000),
        )
        .unwrap();
    assert_eq!(
        floats(&out.output),
        vec![Some(1.0 / 3.0), Some(0.5), None, None, Some(0.0), Some(1.0)]
    );
    // Fuel makes the cost visible and repeatable.
    let used = out.fuel_used.unwrap();
    assert!(used > 0);
    let a: ArrayRef = Arc::new(StringArray::from(vec!["d1,d2"]));
    let b: ArrayRef = Arc::new(StringArray::from(vec!["d2,d3"]));
    let once = |h: &UdfHost| {
        h.call(
            &jaccard,
            jaccard.function("jaccard").unwrap(),
            &[a.clone(), b.clone()],
            1,
            Budget::Fuel(1_000_000),
        )
        .unwrap()
        .fuel_used
    };
    assert_eq!(once(&host), once(&host));
    // Empty batches pass through.
    let e: ArrayRef = Arc::new(StringArray::from(Vec::<Option<&str>>::new()));
    let out = host
        .call(
            &jaccard,
            jaccard.function("jaccard").unwrap(),
            &[e.clone(), e],
            0,
            Budget::Fuel(1_000_000),
        )
        .unwrap();
    assert_eq!(out.output.len(), 0);
}

/// `pa.ipc.new_stream(..., options=IpcWriteOptions(compression="lz4"))` of
/// `{"out": [1.0, 2.0, 3.0]}`, as pyarrow 2x writes it.
const LZ4_STREAM: &str = "ffffffff780000001000000000000a000c000600050008000a000000000104000c000000080008000000040008000000040000000100000014000000100014000800060007000c00000010001000000000000103100000001c0000000400000000000000030000006f7574000000060008000600060000000000020000000000ffffffff9800000014000000000000000c0018000600050008000c000c000000000304001c0000003000000000000000000000000c001c001000040008000c000c000000480000001c000000140000000300000000000000000000000400040004000000020000000000000000000000000000000000000000000000000000002c00000000000000000000000100000003000000000000000000000000000000180000000000000004224d18604082150000001100010021f03f0700b000004000000000000008400000000000000000ffffffff00000000";

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

const F_META: &str =
    r#"{"functions":[{"name":"f","args":["Float64"],"returns":"Float64","deterministic":true}]}"#;

/// A module of the prelude, `imports` before it and `body` after it.
fn wat(meta: &str, imports: &str, body: &str) -> String {
    format!(
        "(module\n{imports}\n(@custom \"quiver.udf.v1\" \"{}\")\n{PRELUDE}\n{body})",
        meta.replace('"', "\\\"")
    )
}

fn call_body(inner: &str) -> String {
    format!("(func (export \"f\") (param $p i32) (param $len i32) (result i64)\n{inner})")
}

/// Three Float64 rows in a table `t(x)`, `module` registered; the error of `sql`.
async fn run_sql(
    host: &Arc<UdfHost>,
    module: &Arc<LoadedModule>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let ctx = SessionContext::new();
    let x: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]));
    let batch = RecordBatch::try_from_iter([("x", x)]).unwrap();
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap()),
    )
    .unwrap();
    let r = UdfRef {
        path: module.path.clone(),
        sha256: module.sha256.clone(),
        functions: module.metadata.functions.clone(),
    };
    UdfRuntime::new(host.clone(), None)
        .with_pending([module.clone()])
        .register(&ctx, &[r])
        .map_err(|e| e.to_string())?;
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    df.collect().await.map_err(|e| e.to_string())
}

fn hostile_host() -> Arc<UdfHost> {
    let mut c = HostConfig::default();
    c.deadline = Duration::from_millis(300);
    c.max_output_bytes = 1 << 20;
    c.max_memory_bytes = 32 << 20;
    host(c)
}

#[tokio::test]
async fn hostile_guests_fail_with_their_module_and_function_named_and_harm_nothing() {
    let host = hostile_host();
    let good = host.load("udfs/ratio.wat", RATIO.as_bytes()).unwrap();
    // Header (status 0) then pyarrow's LZ4-compressed stream of three Float64 rows.
    let escaped: String = hex_bytes(&format!("{}{LZ4_STREAM}", "00".repeat(8)))
        .iter()
        .map(|b| format!("\\{b:02x}"))
        .collect();
    let lz4 = format!("(data (i32.const 512) \"{escaped}\")");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "infinite_loop",
            wat(F_META, "", &call_body("(loop $l (br $l)) (i64.const 0)")),
            "ran past its deadline of 300ms",
        ),
        (
            "memory_bomb",
            wat(
                F_META,
                "",
                &call_body(
                    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i64.const 0)",
                ),
            ),
            "over the cap of 33554432 bytes",
        ),
        (
            "huge_output",
            wat(
                F_META,
                "",
                &call_body(
                    "(drop (call $alloc (i32.const 4194304))) (i64.or (i64.const 0x40000000000) (i64.const 4194304))",
                ),
            ),
            "over the output limit of 1048576 bytes",
        ),
        (
            "wrong_row_count",
            wat(
                F_META,
                "",
                &call_body(
                    "(drop (call $read (local.get $p) (local.get $len))) (drop (call $out_begin (i32.add (global.get $rows) (i32.const 1)))) (call $out_finish)",
                ),
            ),
            "returned 4 rows for 3 input rows",
        ),
        (
            "wrong_schema",
            wat(
                F_META,
                "",
                &call_body(
                    "(drop (call $read (local.get $p) (local.get $len))) (drop (call $out_begin (global.get $rows))) (i32.store16 (i32.add (global.get $out) (i32.const 108)) (i32.const 1)) (call $out_finish)",
                ),
            ),
            "returned a Float32 column; its metadata declares Float64",
        ),
        (
            "compressed_ipc",
            wat(
                F_META,
                "",
                &format!(
                    "{lz4}\n{}",
                    call_body("(i64.or (i64.const 0x20000000000) (i64.const 352))")
                ),
            ),
            "returned compressed IPC",
        ),
        (
            "trap_in_alloc",
            format!(
                "(module (@custom \"quiver.udf.v1\" \"{}\") (memory (export \"memory\") 1)
                  (func (export \"quiver_abi_version\") (result i32) (i32.const 1))
                  (func (export \"alloc\") (param i32) (result i32) unreachable)
                  (func (export \"dealloc\") (param i32 i32))
                  {})",
                F_META.replace('"', "\\\""),
                call_body("(i64.const 0)")
            ),
            "`alloc` trapped",
        ),
        (
            "pointer_out_of_bounds",
            wat(F_META, "", &call_body("(i64.const 0x7fff000000000064)")),
            "not a result inside its memory",
        ),
        (
            "log_flood",
            wat(
                F_META,
                "(import \"quiver\" \"log\" (func $log (param i32 i32)))",
                &call_body(
                    "(local $i i32) (loop $l (call $log (i32.const 300) (i32.const 10)) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 100000)))) (i64.const 0)",
                ),
            ),
            "log flood",
        ),
        (
            "metadata_lies_about_types",
            wat(
                r#"{"functions":[{"name":"f","args":["Float64"],"returns":"Utf8","deterministic":true}]}"#,
                "",
                &call_body(
                    "(drop (call $read (local.get $p) (local.get $len))) (drop (call $out_begin (global.get $rows))) (call $out_finish)",
                ),
            ),
            "returned a Float64 column; its metadata declares Utf8",
        ),
    ];
    for (name, text, want) in &cases {
        let path = format!("udfs/{name}.wat");
        let module = host
            .load(&path, text.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let started = std::time::Instant::now();
        let err = run_sql(&host, &module, "SELECT f(x) FROM t")
            .await
            .expect_err(name);
        assert!(
            err.contains(&path) && err.contains("UDF `f`"),
            "{name}: names module and function: {err}"
        );
        assert!(err.contains(want), "{name}: wanted `{want}` in: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            started.elapsed()
        );
        // The host keeps running other modules.
        let ok = run_sql(&host, &good, "SELECT ratio(x, x) AS r FROM t")
            .await
            .unwrap();
        assert_eq!(
            floats(ok[0].column(0)),
            vec![Some(0.5), Some(2.0 / 3.0), Some(0.75)],
            "after {name}"
        );
    }

    // Refused before anything runs.
    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wasi_import",
            wat(F_META, "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))", &call_body("(i64.const 0)")).into_bytes(),
            "imports `wasi_snapshot_preview1::fd_write`; the only import a UDF may have is the function `quiver::log`",
        ),
        (
            "env_import",
            wat(F_META, "(import \"env\" \"abort\" (func))", &call_body("(i64.const 0)")).into_bytes(),
            "imports `env::abort`",
        ),
        ("invalid_module", b"\0asm\x01\0\0\0\x01\xff\xff".to_vec(), "not a valid WebAssembly module"),
        ("not_wasm_at_all", b"(module (func".to_vec(), "not a valid WebAssembly module"),
        (
            "declared_but_not_exported",
            wat(r#"{"functions":[{"name":"g","args":["Float64"],"returns":"Float64","deterministic":true}]}"#, "", &call_body("(i64.const 0)")).into_bytes(),
            "function `g` is declared in `quiver.udf.v1`, but no exported function `g`",
        ),
        (
            "export_of_the_wrong_type",
            wat(F_META, "", "(func (export \"f\") (param i32) (result i32) (i32.const 0))").into_bytes(),
            "export `f` has the wrong type",
        ),
        (
            "no_metadata",
            format!("(module {PRELUDE} {})", call_body("(i64.const 0)")).into_bytes(),
            "no `quiver.udf.v1` custom section",
        ),
        (
            "unknown_type",
            wat(r#"{"functions":[{"name":"f","args":["Decimal128"],"returns":"Float64","deterministic":true}]}"#, "", &call_body("(i64.const 0)")).into_bytes(),
            "type `Decimal128` is not one of",
        ),
    ];
    for (name, bytes, want) in &refused {
        let err = host
            .load(&format!("udfs/{name}.wasm"), bytes)
            .expect_err(name);
        assert!(err.contains(want), "{name}: wanted `{want}` in: {err}");
    }
}

const VIEW_REPO: &str = "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
delta: data/transactions
timestamp: ts
---
kind: FeatureView
name: devices
entity: user
sources: [transactions]
ttl: 10d
udfs: [udfs/jaccard.wat, udfs/ratio.wat]
sql: |
  SELECT user_id, ts,
    jaccard(
      array_to_string(array_agg(device_id) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW), ','),
      array_to_string(array_agg(device_id) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 10 PRECEDING AND 2 PRECEDING), ',')
    ) AS device_jaccard,
    ratio(amount, 1.0) AS half_amount
  FROM transactions
";

/// Users 1..=3, one transaction every 5 hours, devices cycling per user.
fn device_rows() -> Vec<(i64, i64, Option<f64>, Option<&'static str>)> {
    const DEVS: [&str; 4] = ["a", "b", "c", "d"];
    let mut rows = Vec::new();
    for u in 1..=3i64 {
        for i in 0..12i64 {
            let dev = DEVS[((i / (u + 1)) % 4) as usize];
            rows.push((
                u,
                T0 + i * 5 * HOUR + u,
                Some(10.0 * i as f64),
                (i % 5 != 3).then_some(dev),
            ));
        }
    }
    rows
}

async fn view_repo(host: Arc<UdfHost>) -> (Repo, FeatureStore) {
    let repo = Repo::new();
    repo.write("f.yaml", VIEW_REPO);
    repo.write("udfs/jaccard.wat", JACCARD);
    repo.write("udfs/ratio.wat", RATIO);
    repo.delta("data/transactions", vec![transactions(&device_rows())])
        .await;
    let store = FeatureStore::builder(repo.path())
        .with_udf_host(host)
        .build()
        .unwrap();
    store.apply().await.unwrap();
    (repo, store)
}

/// The reference: the jaccard of the devices of the last 2 transactions and of the 9
/// before them, as of each transaction.
fn expected_jaccard(user: i64, upto: usize) -> Option<f64> {
    let rows: Vec<_> = device_rows().into_iter().filter(|r| r.0 == user).collect();
    let set = |lo: usize, hi: usize| -> std::collections::BTreeSet<&str> {
        rows[lo..hi].iter().filter_map(|r| r.3).collect()
    };
    if upto < 2 {
        return None; // the earlier frame is empty: SQL gives null
    }
    let recent = set(upto - 1, upto + 1);
    let before = set(upto.saturating_sub(10), upto - 1);
    let union = recent.union(&before).count();
    (union > 0).then(|| recent.intersection(&before).count() as f64 / union as f64)
}

#[tokio::test]
async fn a_view_calling_udfs_is_served_online_with_its_training_value() {
    let (_repo, store) = view_repo(UdfHost::shared()).await;
    // Training values against a reference computed here.
    for (user, i) in [(1i64, 0usize), (1, 5), (2, 7), (3, 11)] {
        let t = T0 + i as i64 * 5 * HOUR + user + 1;
        let b = training_at(&store, "devices", &[user], t).await;
        let got = b
            .column_by_name("device_jaccard")
            .unwrap()
            .as_primitive::<Float64Type>();
        let want = expected_jaccard(user, i);
        assert_eq!(
            got.is_valid(0).then(|| got.value(0)),
            want,
            "user {user} after transaction {i}"
        );
        let half = b
            .column_by_name("half_amount")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(half.value(0), 10.0 * i as f64 / 2.0);
    }
    // Online values equal training values, at materialization and later.
    let until = T0 + 3 * DAY;
    store.materialize().with_until(until).await.unwrap();
    for t in [until, until + HOUR, until + 9 * DAY, until + 11 * DAY] {
        assert_online_equals_training(&store, "devices", &[1, 2, 3, 4], t).await;
    }
}

#[tokio::test]
async fn pooled_and_cached_paths_change_no_value() {
    let mut plain = HostConfig::default();
    plain.pooling = false;
    plain.cache = false;
    let mut results = Vec::new();
    for config in [HostConfig::default(), plain] {
        let (_repo, store) = view_repo(host(config)).await;
        let ids = [1, 2, 3];
        let until = T0 + 3 * DAY;
        let training = training_at(&store, "devices", &ids, until).await;
        store.materialize().with_until(until).await.unwrap();
        let online = store.online().unwrap();
        let (served, _) = online
            .get("devices", None, &crate::common::keys(&ids), until)
            .unwrap();
        results.push((training, served));
    }
    assert_eq!(results[0].0, results[1].0, "training sets");
    assert_eq!(results[0].1, results[1].1, "online values");
}

#[tokio::test]
async fn the_module_hash_pins_the_view() {
    let (repo, store) = view_repo(UdfHost::shared()).await;
    let v1 = store.view("devices", None).unwrap();
    assert_eq!(v1.definition.udfs.len(), 2);
    let sha = v1.definition.udfs[1].sha256.clone();
    assert_eq!(sha, quiver_registry::sha256_hex(RATIO.as_bytes()));
    let t = T0 + 20 * HOUR;
    let before = training_at(&store, "devices", &[1], t).await;

    // Edit the module (it now returns a * 10) without applying: runs keep the applied
    // code, read back by hash (a fresh host has nothing cached).
    let edited = RATIO.replace(
        "(f64.div (f64.load (local.get $a)) (f64.add (f64.load (local.get $b)) (f64.const 1)))",
        "(f64.mul (f64.load (local.get $a)) (f64.const 10))",
    );
    assert!(edited != RATIO, "the edit applies");
    repo.write("udfs/ratio.wat", &edited);
    drop(store);
    let store = FeatureStore::builder(repo.path())
        .with_udf_host(host(HostConfig::default()))
        .build()
        .unwrap();
    assert_eq!(training_at(&store, "devices", &[1], t).await, before);

    // `plan` shows the change as a new version of the view; `apply` makes it one.
    let plan = store.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 1, "{}", plan.render());
    assert_eq!(plan.changes[0].name, "devices");
    store.apply().await.unwrap();
    let v2 = store.view("devices", None).unwrap();
    assert_eq!(v2.version, v1.version + 1);
    assert_ne!(v2.hash, v1.hash);
    let after = training_at(&store, "devices", &[1], t).await;
    let half = after
        .column_by_name("half_amount")
        .unwrap()
        .as_primitive::<Float64Type>();
    // As of t the newest transaction is the fourth (amount 30).
    assert_eq!(half.value(0), 30.0 * 10.0);
    // The old version still reads its own module.
    let old = store
        .historical_features()
        .with_entities(vec![crate::common::entities(&[(1, t)])])
        .with_features(&format!("devices@{}", v1.version))
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    let half = old
        .column_by_name("half_amount")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(half.value(0), 15.0);
    // `quiver describe` names the pinned modules.
    drop(store);
    let described = crate::common::ok(&crate::common::quiver(
        repo.path(),
        &["describe", "devices"],
    ));
    assert!(
        described.contains("udfs      udfs/jaccard.wat (sha256 ")
            && described.contains("jaccard(Utf8, Utf8) -> Float64")
            && described.contains("ratio(Float64, Float64) -> Float64"),
        "{described}"
    );
}

#[tokio::test]
async fn a_repo_with_a_bad_module_is_refused_at_validation_with_its_location() {
    let repo = Repo::new();
    repo.write("f.yaml", VIEW_REPO);
    repo.write("udfs/jaccard.wat", JACCARD);
    repo.write(
        "udfs/ratio.wat",
        &wat(
            F_META,
            "(import \"wasi_snapshot_preview1\" \"proc_exit\" (func (param i32)))",
            &call_body("(i64.const 0)"),
        ),
    );
    repo.delta("data/transactions", vec![transactions(&device_rows())])
        .await;
    let store = FeatureStore::open(repo.path()).unwrap();
    let err = store.apply().await.unwrap_err().to_string();
    assert!(err.contains("f.yaml:"), "{err}");
    assert!(
        err.contains("UDF module `udfs/ratio.wat`: imports `wasi_snapshot_preview1::proc_exit`"),
        "{err}"
    );
    assert!(store.views().unwrap().is_empty(), "nothing applied");

    // A non-deterministic function is refused in a feature view.
    repo.write(
        "udfs/ratio.wat",
        &RATIO.replace("\\\"deterministic\\\":true", "\\\"deterministic\\\":false"),
    );
    let err = store.apply().await.unwrap_err().to_string();
    assert!(
        err.contains("function `ratio` is declared non-deterministic"),
        "{err}"
    );
    // A module outside the repo.
    repo.write(
        "f.yaml",
        &VIEW_REPO.replace("udfs/ratio.wat]", "../ratio.wat]"),
    );
    let err = store.apply().await.unwrap_err().to_string();
    assert!(err.contains("stays inside it"), "{err}");
}

/// Over Flight: a training set of a view whose UDF never returns fails with the module
/// and function named, within the deadline, while the server keeps answering.
#[tokio::test]
async fn a_runaway_udf_fails_its_request_and_the_server_keeps_serving() {
    use quiver_featurestore::client::Client;
    use quiver_featurestore::serve::{ServeConfig, Tokens};
    let repo = Repo::new();
    let spin = wat(F_META, "", &call_body("(loop $l (br $l)) (i64.const 0)"));
    repo.write("udfs/spin.wat", &spin);
    repo.write("udfs/jaccard.wat", JACCARD);
    repo.write("udfs/ratio.wat", RATIO);
    repo.write(
        "f.yaml",
        &format!(
            "{VIEW_REPO}---\nkind: FeatureView\nname: spinning\nentity: user\nsources: [transactions]\nudfs: [udfs/spin.wat]\nsql: SELECT user_id, ts, f(amount) AS x FROM transactions\n"
        ),
    );
    repo.delta("data/transactions", vec![transactions(&device_rows())])
        .await;
    let store = FeatureStore::builder(repo.path())
        .with_udf_host(hostile_host())
        .build()
        .unwrap();
    store.apply().await.unwrap();
    store
        .materialize()
        .with_views(vec!["devices".into()])
        .await
        .unwrap();
    let token = "udf-test-token-0123456789";
    let tokens = Tokens::new().with(token, "bank", true).unwrap();
    let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), tokens)
        .spawn(store)
        .await
        .unwrap();
    let mut client = Client::connect(&format!("http://{}", server.addr()))
        .await
        .unwrap()
        .with_token(token)
        .unwrap();
    let ent = crate::common::entities(&[(1, T0 + DAY), (2, T0 + DAY)]);
    let started = std::time::Instant::now();
    let err = client
        .get_historical_features(vec![ent.clone()], &["spinning"], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("UDF `f` of module `udfs/spin.wat`")
            && err.contains("ran past its deadline of 300ms"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // The server keeps serving: online lookups and a training set of the good view.
    let got = client
        .get_online_features("devices", None, &crate::common::keys(&[1]))
        .await
        .unwrap();
    assert_eq!(got.num_rows(), 1);
    let ok = client
        .get_historical_features(vec![ent], &["devices"], false)
        .await
        .unwrap();
    assert_eq!(ok.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
}

/// The Rust example (`udfs/rust`) gives the WAT example's values. Needs the
/// wasm32-unknown-unknown target, so it runs on demand:
/// `udfs/rust/build.sh && cargo test -p quiver-featurestore --test it -- --ignored rust_udf`.
#[test]
#[ignore = "needs udfs/rust/build.sh (rustup target add wasm32-unknown-unknown)"]
fn rust_udf_gives_the_values_of_the_wat_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../udfs/rust/quiver_udf_example.wasm");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run udfs/rust/build.sh", path.display()));
    let host = UdfHost::shared();
    let rust = host
        .load("udfs/rust/quiver_udf_example.wasm", &bytes)
        .unwrap();
    let wat = host.load("udfs/jaccard.wat", JACCARD.as_bytes()).unwrap();
    let a: ArrayRef = Arc::new(StringArray::from(vec![
        Some("d1,d2"),
        Some("d1,d1,d2,"),
        Some(""),
        None,
        Some("x,y,z"),
    ]));
    let b: ArrayRef = Arc::new(StringArray::from(vec![
        Some("d2,d3"),
        Some("d2"),
        Some(""),
        Some("d1"),
        Some("z,y"),
    ]));
    let budget = Budget::Deadline(Duration::from_secs(5));
    let got = host
        .call(
            &rust,
            rust.function("jaccard").unwrap(),
            &[a.clone(), b.clone()],
            5,
            budget,
        )
        .unwrap();
    let want = host
        .call(&wat, wat.function("jaccard").unwrap(), &[a, b], 5, budget)
        .unwrap();
    assert_eq!(floats(&got.output), floats(&want.output));
}

/// `quiver validate` and `quiver plan` with the address space limited to 4 GiB
/// (`ulimit -v`, as container runtimes and shared hosts set it): the UDF host starts
/// only when a view needs it, and then falls back from the pooling allocator (which
/// reserves every slot's address space up front) to allocation on demand.
#[tokio::test]
async fn commands_run_under_a_4_gib_address_space_limit() {
    let run = |repo: &std::path::Path, cmd: &str| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -v 4194304 && exec \"$0\" --repo \"$1\" {cmd}"
            ))
            .arg(env!("CARGO_BIN_EXE_quiver"))
            .arg(repo)
            .env_remove("QUIVER_REPO")
            .env_remove("QUIVER_REGISTRY")
            .output()
            .unwrap()
    };
    // Without any UDF: the engine never starts.
    let plain = crate::common::example_repo().await;
    let o = run(plain.path(), "validate");
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    // With UDFs: the engine starts on demand, without the pool's reservation.
    let repo = Repo::new();
    repo.write("f.yaml", VIEW_REPO);
    repo.write("udfs/jaccard.wat", JACCARD);
    repo.write("udfs/ratio.wat", RATIO);
    repo.delta("data/transactions", vec![transactions(&device_rows())])
        .await;
    for cmd in ["validate", "plan"] {
        let o = run(repo.path(), cmd);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(101), "{cmd} panicked: {err}");
        assert!(
            o.status.success(),
            "{cmd}: exit {:?}: {err}",
            o.status.code()
        );
    }
}

/// A module with no prelude: `memory` pages of memory, a start function `start` (wat
/// instructions) and the ABI's exports doing nothing.
fn bare_module(memory: u32, start: &str) -> String {
    format!(
        "(module (@custom \"quiver.udf.v1\" \"{}\") (memory (export \"memory\") {memory})
          (func $start {start}) (start $start)
          (func (export \"quiver_abi_version\") (result i32) (i32.const 1))
          (func (export \"alloc\") (param i32) (result i32) (i32.const 8))
          (func (export \"dealloc\") (param i32 i32))
          {})",
        F_META.replace('"', "\\\""),
        call_body("(i64.const 0)")
    )
}

#[tokio::test]
async fn instantiation_is_bounded_like_a_call() {
    let host = hostile_host();
    // A start function that never returns stops at the deadline, at instantiation.
    let looping = host
        .load(
            "udfs/start_loop.wat",
            bare_module(1, "(loop $l (br $l))").as_bytes(),
        )
        .unwrap();
    let started = std::time::Instant::now();
    let e = host.instantiate(&looping).unwrap_err();
    assert!(e.contains("ran past its deadline of 300ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = run_sql(&host, &looping, "SELECT f(x) FROM t")
        .await
        .unwrap_err();
    assert!(
        e.contains("udfs/start_loop.wat") && e.contains("deadline"),
        "{e}"
    );
    // An initial memory over the cap (2,000 pages, 125 MiB, against 32 MiB) is refused
    // when the instance is made, before any code runs.
    // The pool refuses it when the module is compiled; on demand, the memory limiter
    // when the instance is made.
    let e = host
        .load("udfs/big_memory.wat", bare_module(2000, "").as_bytes())
        .unwrap_err();
    assert!(e.contains("memory"), "{e}");
    let mut c = HostConfig::default();
    c.pooling = false;
    c.max_memory_bytes = 32 << 20;
    let on_demand = UdfHost::new(c).unwrap();
    let big = on_demand
        .load("udfs/big_memory.wat", bare_module(2000, "").as_bytes())
        .unwrap();
    let e = on_demand.instantiate(&big).unwrap_err();
    assert!(e.contains("over the cap of 33554432 bytes"), "{e}");
    // The host still runs a good module.
    let good = host.load("udfs/ratio.wat", RATIO.as_bytes()).unwrap();
    assert!(host.instantiate(&good).is_ok());
}

#[test]
fn compiling_is_bounded_in_time_and_the_host_goes_on() {
    let mut c = HostConfig::default();
    c.compile_deadline = Duration::from_millis(1);
    let host = host(c);
    // About 120,000 instructions in one function: milliseconds to compile, not one.
    let body: String = (0..40_000)
        .map(|_| "(local.set $a (i32.add (local.get $a) (i32.const 7)))")
        .collect();
    let slow = wat(
        F_META,
        "",
        &call_body(&format!("(local $a i32) {body} (i64.const 0)")),
    );
    let e = host.load("udfs/slow.wat", slow.as_bytes()).unwrap_err();
    assert!(e.contains("took more than 1 ms to compile"), "{e}");
    // The same module again is refused at once, without another compiler thread.
    let started = std::time::Instant::now();
    let again = host.load("udfs/slow.wat", slow.as_bytes()).unwrap_err();
    assert_eq!(again, e);
    assert!(started.elapsed() < Duration::from_millis(500));
    // A small module still compiles under a generous deadline on another host, and
    // this one still answers (the slow compile finishes on its own thread).
    let ok = UdfHost::new(HostConfig::default()).unwrap();
    assert!(ok.load("udfs/ratio.wat", RATIO.as_bytes()).is_ok());
    assert!(host.cached("nothing").is_none());
}

#[test]
fn the_module_cache_is_bounded_in_bytes() {
    let probe = host(HostConfig::default());
    probe.load("udfs/ratio.wat", RATIO.as_bytes()).unwrap();
    let one = probe.cached_bytes();
    assert!(one > RATIO.len(), "{one}");
    // Room for about one module: loading a second evicts the first.
    let mut c = HostConfig::default();
    c.cache_bytes = one + one / 2;
    let host = host(c);
    let ratio = host.load("udfs/ratio.wat", RATIO.as_bytes()).unwrap();
    let jaccard = host.load("udfs/jaccard.wat", JACCARD.as_bytes()).unwrap();
    assert!(
        host.cached_bytes() <= one + one / 2,
        "{}",
        host.cached_bytes()
    );
    assert!(
        host.cached(&ratio.sha256).is_none(),
        "the older module was evicted"
    );
    assert!(host.cached(&jaccard.sha256).is_some() || host.cached_bytes() == 0);
    // Using a module keeps it: the least recently used goes.
    let mut c = HostConfig::default();
    c.cache_bytes = 64 << 20;
    let roomy = host_with(c);
    for i in 0..50 {
        let text = RATIO.replace("a / (b + 1)", &format!("variant {i}"));
        roomy
            .load(&format!("udfs/r{i}.wat"), text.as_bytes())
            .unwrap();
    }
    assert!(roomy.cached_bytes() <= 64 << 20);
}

fn host_with(c: HostConfig) -> Arc<UdfHost> {
    host(c)
}

#[tokio::test]
async fn nan_results_are_the_same_bits_on_every_cpu() {
    // (x − x) / (x − x) at run time: x86 gives a negative quiet NaN, ARM a positive
    // one. With NaN canonicalization every CPU returns the canonical 0x7ff8….
    let host = hostile_host();
    let module = host
        .load(
            "udfs/nan.wat",
            wat(
                F_META,
                "",
                &call_body(
                    "(local $x i32) (local $o i32) (local $end i32)
                     (drop (call $read (local.get $p) (local.get $len)))
                     (local.set $x (call $buf (i32.const 1)))
                     (local.set $o (call $out_begin (global.get $rows)))
                     (local.set $end (i32.add (local.get $o) (i32.shl (global.get $rows) (i32.const 3))))
                     (block $done (loop $row
                       (br_if $done (i32.ge_u (local.get $o) (local.get $end)))
                       (f64.store (local.get $o)
                         (f64.div (f64.sub (f64.load (local.get $x)) (f64.load (local.get $x)))
                                  (f64.sub (f64.load (local.get $x)) (f64.load (local.get $x)))))
                       (local.set $o (i32.add (local.get $o) (i32.const 8)))
                       (local.set $x (i32.add (local.get $x) (i32.const 8)))
                       (br $row)))
                     (call $out_finish)",
                ),
            )
            .as_bytes(),
        )
        .unwrap();
    let batches = run_sql(&host, &module, "SELECT f(x) AS v FROM t")
        .await
        .unwrap();
    let v = batches[0].column(0).as_primitive::<Float64Type>();
    assert_eq!(v.len(), 3);
    for i in 0..3 {
        assert_eq!(v.value(i).to_bits(), 0x7ff8_0000_0000_0000, "row {i}");
    }
}
