//! Model serving benchmark: hot swap under load, and batch scoring.
//!
//! `cargo bench -p quiver-registry --bench serving` prints a table and one JSON line.
//!
//! - Hot swap: 8 client threads score continuously through a [`ModelServer`] that
//!   watches its aliases; the champion alias is moved 100 times between two versions.
//!   For each move: time from the start of the alias move (a durable sled transaction)
//!   to the first request served by the new version, and failed requests overall.
//!   Targets: under 10 ms, 0 failures.
//! - Scoring a 100-row batch with a logistic regression of 16 features
//!   (`NativeModel::score_into`). Target: under 20 µs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quiver_registry::{
    ArtifactStore, InputFeature, InputSchema, MetadataStore, ModelServer, NativeModel,
    Registration, RolloutPolicy, SigningKey,
};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn linear(n: usize, intercept: f64) -> NativeModel {
    NativeModel::LogisticRegression {
        features: (0..n).map(|i| format!("f{i}")).collect(),
        weights: (0..n).map(|i| (i as f64 * 0.37).sin()).collect(),
        intercept,
        baseline: Some(vec![0.0; n]),
        transform: None,
    }
}

fn main() {
    let clients = 8;
    let swaps = 100;
    let dir = tempfile::tempdir().unwrap();
    let meta = MetadataStore::open(dir.path().join("registry")).unwrap();
    let reg = meta
        .models(ArtifactStore::new(dir.path().join("artifacts")))
        .unwrap();
    let key = SigningKey::generate(dir.path().join("k")).unwrap();
    reg.trust("bench", &key.public_key_hex()).unwrap();
    let n = 16;
    let input = InputSchema {
        features: (0..n)
            .map(|i| InputFeature {
                column: format!("f{i}"),
                view: "v".into(),
                view_version: 1,
                feature: format!("f{i}"),
                dtype: "Float64".into(),
            })
            .collect(),
    };
    let v1 = reg
        .register(
            Registration::new("fraud", linear(n, -3.0).to_json(), input.clone()),
            "bench",
            &key,
        )
        .unwrap();
    let v2 = reg
        .register(
            Registration::new("fraud", linear(n, -2.0).to_json(), input),
            "bench",
            &key,
        )
        .unwrap();
    let (v1, v2) = (v1.manifest.version, v2.manifest.version);
    reg.move_alias("fraud", "champion", Some(v1), None, "bench", "start")
        .unwrap();
    let server = ModelServer::new(reg.clone(), "fraud", RolloutPolicy::default()).unwrap();
    let _watch = server.watch();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    // Version wanted, and the instant (ns since `epoch`) it was first served.
    let wanted = Arc::new(AtomicU64::new(0));
    let first_seen = Arc::new(AtomicU64::new(u64::MAX));
    let epoch = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (server, stop, failures, requests, wanted, first_seen) = (
                server.clone(),
                stop.clone(),
                failures.clone(),
                requests.clone(),
                wanted.clone(),
                first_seen.clone(),
            );
            std::thread::spawn(move || {
                let x: Vec<f64> = (0..n).map(|i| (i + c) as f64 * 0.1).collect();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match server.score(&i.to_le_bytes(), &x, false) {
                        Ok(s) => {
                            if s.version == wanted.load(Ordering::Acquire) {
                                let now = epoch.elapsed().as_nanos() as u64;
                                first_seen.fetch_min(now, Ordering::AcqRel);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut swap_ms = Vec::with_capacity(swaps);
    for round in 0..swaps {
        let v = if round % 2 == 0 { v2 } else { v1 };
        first_seen.store(u64::MAX, Ordering::Release);
        wanted.store(v, Ordering::Release);
        let t0 = epoch.elapsed().as_nanos() as u64;
        reg.move_alias("fraud", "champion", Some(v), None, "bench", "swap")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = first_seen.load(Ordering::Acquire);
            if seen != u64::MAX {
                swap_ms.push(seen.saturating_sub(t0) as f64 / 1e6);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "version {v} not served within 5 s"
            );
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let load_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let total = requests.load(Ordering::Relaxed);
    let failed = failures.load(Ordering::Relaxed);

    // Batch scoring: 100 rows x 16 features.
    let model = linear(n, -3.0);
    let rows: Vec<f64> = (0..100 * n)
        .map(|i| ((i * 7919) % 1000) as f64 / 100.0)
        .collect();
    let mut out = Vec::with_capacity(100);
    for _ in 0..10_000 {
        model.score_into(&rows, &mut out).unwrap();
    }
    let mut batch_us = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let t = Instant::now();
        for _ in 0..10 {
            model
                .score_into(std::hint::black_box(&rows), &mut out)
                .unwrap();
        }
        batch_us.push(t.elapsed().as_secs_f64() * 1e6 / 10.0);
    }
    std::hint::black_box(&out);

    let (s50, s99, smax) = (
        pct(&mut swap_ms, 50.0),
        pct(&mut swap_ms, 99.0),
        pct(&mut swap_ms, 100.0),
    );
    let (b50, b99) = (pct(&mut batch_us, 50.0), pct(&mut batch_us, 99.0));
    println!(
        "hot swap: {clients} clients, {swaps} promotions, {total} requests in {load_secs:.2} s ({:.0} req/s), {failed} failed (target 0)",
        total as f64 / load_secs
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "measure", "p50", "p99", "max"
    );
    println!(
        "{:<44} {:>10.3} {:>10.3} {:>10.3}",
        "alias move -> first request on new version, ms", s50, s99, smax
    );
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>10}",
        "score 100 rows x 16 features (linear), us", b50, b99, "-"
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "model_serving", "clients": clients, "swaps": swaps, "requests": total, "failed": failed,
            "swap_ms": {"p50": s50, "p99": s99, "max": smax},
            "score_100_rows_us": {"p50": b50, "p99": b99},
        })
    );
}
