//! Online serving benchmark: materialization, raw store reads, and lookups over Arrow
//! Flight on loopback.
//!
//! ```text
//! cargo bench -p quiver-featurestore --bench serving
//! cargo bench -p quiver-featurestore --bench serving -- --seconds 2 --users 100000
//! ```
//!
//! Data: 1,000,000 transactions of 100,000 users over the 60 days before now, and a
//! view with 4 features (7d count, 7d sum, 30d avg, 30d count_distinct of device).
//! Measured:
//! - materialization into sled (full run): source rows/s;
//! - a raw batch read of 100 records from the store;
//! - single-key lookups over Flight (DoGet) with 1, 8 and 64 concurrent clients, each
//!   on its own connection: p50/p99 and requests/s;
//! - 100-key lookups: p50/p99;
//! - a DoGet scan of the view's source: MB/s of Arrow data received;
//! - hot swap under load: 8 clients call `score` (one key each, a linear model over the
//!   view's 4 features) while the `champion` alias moves 100 times between two signed
//!   versions; the time from the alias move to the first answer from the new version
//!   (target < 10 ms) and failed requests (target 0);
//! - the audit log: lookup of one request id among 500,000 rows.
//! Output: a table and one JSON line.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use common::{DAY, arg, percentile};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::client::Client;
use quiver_featurestore::serve::{ServeConfig, Tokens};

const TOKEN: &str = "bench-token-0123456789abcdef";

const REPO: &str = "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
delta: data/transactions
timestamp: ts
---
kind: FeatureView
name: txn_windows
entity: user
source: transactions
ttl: 45d
features:
  - { name: txn_count_7d,         agg: count,                     window: 7d }
  - { name: amount_sum_7d,        agg: sum(amount),               window: 7d }
  - { name: amount_avg_30d,       agg: avg(amount),               window: 30d }
  - { name: distinct_devices_30d, agg: count_distinct(device_id), window: 30d }
";

fn keys(ids: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from(ids))],
    )
    .unwrap()
}

struct Lookup {
    clients: usize,
    keys: usize,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

/// `clients` tasks, each with its own connection, looking up `n_keys` random keys per
/// request for `secs` seconds.
async fn lookups(url: &str, users: usize, clients: usize, n_keys: usize, secs: f64) -> Lookup {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url)
                .await
                .unwrap()
                .with_token(TOKEN)
                .unwrap();
            let mut lat = Vec::new();
            let mut s = 0x9e37_79b9u64 ^ (c as u64 + 1);
            // Warm the connection.
            client
                .get_online_features("txn_windows", None, &keys(vec![1]))
                .await
                .unwrap();
            while Instant::now() < deadline {
                let ids: Vec<i64> = (0..n_keys)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        (s % users as u64) as i64
                    })
                    .collect();
                let t = Instant::now();
                let b = client
                    .get_online_features("txn_windows", None, &keys(ids))
                    .await
                    .unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(b.num_rows(), n_keys);
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64().min(secs + 1.0);
    all.sort_by(f64::total_cmp);
    Lookup {
        clients,
        keys: n_keys,
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        rps: all.len() as f64 / elapsed,
    }
}

fn main() {
    // RUST_LOG=quiver_featurestore=debug shows where materialization spends its time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let users = arg("--users", 100_000);
    let n_txn = arg("--transactions", 1_000_000);
    let secs = arg("--seconds", 3) as f64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("features.yaml"), REPO).unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        common::write_delta(root, "data/transactions", common::transactions(users, n_txn, now - 60 * DAY, 60 * DAY - 1_000_000, 3)).await;
        let store = FeatureStore::open(root).unwrap();
        store.apply().await.unwrap();

        // Materialization: the best of 3 full runs.
        let mut mat_secs = f64::MAX;
        let mut keys_total = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let r = store.materialize().with_full(true).await.unwrap();
            mat_secs = mat_secs.min(t.elapsed().as_secs_f64());
            keys_total = r.views[0].keys_total;
        }
        let mat_rows_s = n_txn as f64 / mat_secs;

        // Raw store: 100 records by key.
        let online = store.online().unwrap();
        // Replaced generations are deleted in the background; measure steady reads.
        online.store().wait_background();
        let wm = online.watermark("txn_windows").unwrap();
        let mut encoded = Vec::new();
        for i in 0..100i64 {
            let mut k = vec![1u8];
            k.extend_from_slice(&(((i * 997) as u64) ^ (1 << 63)).to_be_bytes());
            encoded.push(k);
        }
        let mut raw = Vec::new();
        let raw_iters = arg("--raw-iterations", 5_000);
        for _ in 0..raw_iters {
            let t = Instant::now();
            let got = online.store().get(&wm, &encoded).unwrap();
            raw.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(got.len(), 100);
        }
        raw.sort_by(f64::total_cmp);
        // In-process lookup of 100 keys (decode + evaluate at now), without the network.
        let mut inproc = Vec::new();
        let batch = keys((0..100).map(|i| i * 997).collect());
        for _ in 0..2_000 {
            let t = Instant::now();
            online.get("txn_windows", None, &batch, chrono::Utc::now().timestamp_micros()).unwrap();
            inproc.push(t.elapsed().as_secs_f64() * 1e6);
        }
        inproc.sort_by(f64::total_cmp);

        let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Tokens::new().with(TOKEN, "bench", true).unwrap()).spawn(store.clone()).await.unwrap();
        let url = format!("http://{}", server.addr());
        let mut results = Vec::new();
        for clients in [1, 8, 64] {
            results.push(lookups(&url, users, clients, 1, secs).await);
        }
        results.push(lookups(&url, users, 8, 100, secs).await);

        // Scan: the view's source rows over DoGet.
        let mut client = Client::connect(&url).await.unwrap().with_token(TOKEN).unwrap();
        let t = Instant::now();
        let batches = client.scan("txn_windows", None).await.unwrap();
        let scan_secs = t.elapsed().as_secs_f64();
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let scan_mb_s = bytes as f64 / 1e6 / scan_secs;
        server.shutdown().await;
        let swap = hot_swap_bench(&store, users, arg("--swaps", 100), 8).await;

        println!("\nmaterialization: {n_txn} rows, {keys_total} keys in {mat_secs:.3} s = {mat_rows_s:.0} rows/s (target > 1,000,000)");
        println!("raw sled get of 100 keys: p50 {:.1} us, p99 {:.1} us (target < 50 us)", percentile(&raw, 50.0), percentile(&raw, 99.0));
        println!("in-process lookup of 100 keys (decode + evaluate): p50 {:.1} us, p99 {:.1} us", percentile(&inproc, 50.0), percentile(&inproc, 99.0));
        println!("\n{:<10} {:>6} {:>10} {:>10} {:>12}", "clients", "keys", "p50 us", "p99 us", "requests/s");
        for r in &results {
            println!("{:<10} {:>6} {:>10.0} {:>10.0} {:>12.0}", r.clients, r.keys, r.p50_us, r.p99_us, r.rps);
        }
        println!("\nscan over DoGet: {rows} rows, {:.1} MB in {scan_secs:.3} s = {scan_mb_s:.0} MB/s (target > 500)", bytes as f64 / 1e6);
        println!(
            "hot swap: {} alias moves under {} scoring clients ({} requests, {} failed): move -> first answer from the new version p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target < 10 ms); score p50 {:.0} us, p99 {:.0} us",
            swap.swaps, swap.clients, swap.requests, swap.failed, percentile(&swap.swap_ms, 50.0), percentile(&swap.swap_ms, 99.0),
            swap.swap_ms.last().copied().unwrap_or(f64::NAN), swap.p50_us, swap.p99_us
        );
        let (audit_rows, audit_commits, audit_lookup) = audit_bench(root, arg("--audit-rows", 500_000), arg("--audit-commits", 50)).await;
        println!(
            "audit log: {audit_rows} rows in {audit_commits} commits; lookup by request id p50 {:.0} ms, max {:.0} ms (target < 1 s)",
            percentile(&audit_lookup, 50.0), audit_lookup.last().copied().unwrap_or(f64::NAN)
        );
        let lookups: Vec<serde_json::Value> = results
            .iter()
            .map(|r| serde_json::json!({"clients": r.clients, "keys": r.keys, "p50_us": r.p50_us, "p99_us": r.p99_us, "rps": r.rps}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "materialize_rows_per_s": mat_rows_s, "materialize_s": mat_secs, "keys": keys_total,
                "raw_get_100_p50_us": percentile(&raw, 50.0), "raw_get_100_p99_us": percentile(&raw, 99.0),
                "inprocess_100_p50_us": percentile(&inproc, 50.0),
                "lookups": lookups, "scan_mb_per_s": scan_mb_s, "scan_rows": rows,
                "hot_swap": {"swaps": swap.swaps, "clients": swap.clients, "requests": swap.requests, "failed": swap.failed,
                    "move_to_first_p50_ms": percentile(&swap.swap_ms, 50.0), "move_to_first_p99_ms": percentile(&swap.swap_ms, 99.0),
                    "move_to_first_max_ms": swap.swap_ms.last().copied(), "score_p50_us": swap.p50_us, "score_p99_us": swap.p99_us},
                "audit_rows": audit_rows, "audit_lookup_p50_ms": percentile(&audit_lookup, 50.0),
                "audit_lookup_max_ms": audit_lookup.last().copied(),
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            })
        );
    });
}

/// Fill an audit table with `rows` scored rows in `commits` commits (one a second in a
/// server: about a minute of heavy scoring), then look up 20 of them by request id.
async fn audit_bench(
    root: &std::path::Path,
    rows: usize,
    commits: usize,
) -> (usize, usize, Vec<f64>) {
    use quiver_featurestore::audit::{
        AuditConfig, AuditLog, AuditRecord, lookup, new_request_prefix,
    };
    let path = root.join(".quiver").join("audit-bench");
    let per = rows.div_ceil(commits.max(1));
    let (log, writer) = AuditLog::start(&path, {
        let mut c = AuditConfig::default();
        c.max_batch = per;
        c.max_delay = Duration::from_secs(60);
        c.queue_rows = per * 2;
        c
    })
    .unwrap();
    let mut ids = Vec::new();
    let now = chrono::Utc::now().timestamp_micros();
    for c in 0..commits {
        let prefix = new_request_prefix(now + c as i64 * 1_000_000);
        let batch: Vec<AuditRecord> = (0..per)
            .map(|i| AuditRecord {
                request_id: format!("{prefix}-{i}"),
                time_us: now + c as i64 * 1_000_000,
                tenant: "bank_a".into(),
                model: "fraud".into(),
                model_version: 3,
                model_alias: "champion".into(),
                entity: format!("{{\"user_id\":{i}}}"),
                inputs: format!(
                    "{{\"txn_count_7d\":{}.0,\"amount_sum_7d\":{}.5}}",
                    i % 17,
                    i % 1000
                ),
                score: (i % 1000) as f64 / 1000.0,
                contributions: None,
            })
            .collect();
        if c % (commits / 20).max(1) == 0 {
            ids.push(format!("{prefix}-{}", per / 2));
        }
        log.record(batch).await.unwrap();
    }
    drop(log);
    writer.finish(Duration::from_secs(300)).await;
    let mut lat = Vec::new();
    for id in &ids {
        let t = Instant::now();
        let got = lookup(&path, id).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(got.is_some(), "{id} not found");
    }
    lat.sort_by(f64::total_cmp);
    (per * commits, commits, lat)
}

struct HotSwap {
    swaps: usize,
    clients: usize,
    requests: usize,
    failed: usize,
    /// Sorted: ms from each alias move to the first answer from the new version.
    swap_ms: Vec<f64>,
    p50_us: f64,
    p99_us: f64,
}

/// Clients score continuously over Flight while the champion alias flips between two
/// signed versions `swaps` times; the server reloads through its alias watch.
async fn hot_swap_bench(
    store: &FeatureStore,
    users: usize,
    swaps: usize,
    clients: usize,
) -> HotSwap {
    use quiver_featurestore::offline::parse_feature_refs;
    use quiver_registry::{NativeModel, Registration, SigningKey};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let registry = store.models().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(dir.path().join("bench.key")).unwrap();
    registry.trust("bench", &key.public_key_hex()).unwrap();
    let input = store
        .input_schema(&parse_feature_refs("txn_windows").unwrap(), false)
        .unwrap();
    let features: Vec<String> = input.features.iter().map(|f| f.column.clone()).collect();
    let mut versions = Vec::new();
    for intercept in [-3.0, -2.5] {
        let model = NativeModel::LogisticRegression {
            features: features.clone(),
            weights: vec![0.1, 0.001, 0.002, 0.3],
            intercept,
            baseline: None,
            transform: None,
        };
        let mv = registry
            .register(
                Registration::new("swap_bench", model.to_json(), input.clone()),
                "bench",
                &key,
            )
            .unwrap();
        versions.push(mv.manifest.version);
    }
    let current = registry
        .alias("swap_bench", "champion")
        .unwrap()
        .map(|a| a.version);
    registry
        .move_alias(
            "swap_bench",
            "champion",
            Some(versions[0]),
            Some(current),
            "bench",
            "start",
        )
        .unwrap();

    let server = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Tokens::new().with(TOKEN, "bench", true).unwrap(),
    )
    .spawn(store.clone())
    .await
    .unwrap();
    let url = format!("http://{}", server.addr());
    let stop = Arc::new(AtomicBool::new(false));
    // The version the promoter just moved to, and whether its first answer was seen.
    let want = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicBool::new(true));
    let moved_at = Arc::new(std::sync::Mutex::new(Instant::now()));
    let swap_ms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, stop, want, seen, moved_at, swap_ms) = (
            url.clone(),
            stop.clone(),
            want.clone(),
            seen.clone(),
            moved_at.clone(),
            swap_ms.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url)
                .await
                .unwrap()
                .with_token(TOKEN)
                .unwrap();
            let mut lat = Vec::new();
            let mut failed = 0usize;
            let mut s = 0x51_7cc1_b727_220au64 ^ (c as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let t = Instant::now();
                match client
                    .score("swap_bench", &keys(vec![(s % users as u64) as i64]), false)
                    .await
                {
                    Ok(b) => {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                        let v = b
                            .column_by_name("model_version")
                            .unwrap()
                            .as_any()
                            .downcast_ref::<arrow::array::UInt64Array>()
                            .unwrap()
                            .value(0);
                        if v == want.load(Ordering::Acquire) && !seen.swap(true, Ordering::AcqRel) {
                            let at = *moved_at.lock().unwrap();
                            swap_ms
                                .lock()
                                .unwrap()
                                .push(at.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("score failed during hot swap: {e}");
                    }
                }
            }
            (lat, failed)
        }));
    }
    // Let every client connect and warm up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut from = versions[0];
    for i in 0..swaps {
        let to = versions[(i + 1) % 2];
        seen.store(false, Ordering::Release);
        want.store(to, Ordering::Release);
        *moved_at.lock().unwrap() = Instant::now();
        registry
            .move_alias(
                "swap_bench",
                "champion",
                Some(to),
                Some(Some(from)),
                "bench",
                "swap",
            )
            .unwrap();
        from = to;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.load(Ordering::Acquire) {
            assert!(
                Instant::now() < deadline,
                "version {to} never answered after swap {i}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Some traffic on the new version before the next move.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failed += f;
    }
    server.shutdown().await;
    lat.sort_by(f64::total_cmp);
    let mut swap_ms = std::mem::take(&mut *swap_ms.lock().unwrap());
    swap_ms.sort_by(f64::total_cmp);
    HotSwap {
        swaps,
        clients,
        requests: lat.len() + failed,
        failed,
        swap_ms,
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
    }
}
