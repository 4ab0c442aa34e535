//! Serving-replica benchmark: one primary and three replicas that follow its registry
//! (`quiver serve --follow`), all on loopback in this process.
//!
//! ```text
//! cargo bench -p quiver-featurestore --bench replicas
//! cargo bench -p quiver-featurestore --bench replicas -- --moves 50 --seconds 5
//! ```
//!
//! Data: `--transactions` (default 200,000) rows of `--users` (20,000) users over the
//! 60 days before now; a view with 4 features (7d count, 7d sum, 30d avg, 30d count
//! distinct); a linear model over them in two signed versions.
//! Measured:
//! - alias move → every replica on the new version: the primary's `alias` action
//!   moves `champion` between the two versions `--moves` times (default 30); after each
//!   move every replica is asked (`score`, one key) until it answers with the new
//!   version; the figure is the time from sending the move to the last replica's first
//!   answer from the new version, p50 and max (target: under 1 s);
//! - lookups: 8 clients spread over the 3 replicas (client i on replica i mod 3), one
//!   key per request, for `--seconds` (default 3): p50/p99 and requests/s; the same 8
//!   clients on the primary alone for comparison. All servers share this machine's
//!   cores, so replicas add no capacity here; the point is their latency under load.
//!
//! Output: a table and one JSON line.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use common::{DAY, arg, percentile};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::client::Client;
use quiver_featurestore::offline::parse_feature_refs;
use quiver_featurestore::serve::{RunningServer, ServeConfig, Tokens};
use quiver_registry::{NativeModel, Registration, SigningKey};

const TOKEN: &str = "bench-token-0123456789abcdef";
const FOLLOWER: &str = "bench-follower-0123456789abcdef";

fn repo_yaml(table: &std::path::Path) -> String {
    format!(
        "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: transactions
delta: {}
timestamp: ts
---
kind: FeatureView
name: txn_windows
entity: user
source: transactions
ttl: 45d
features:
  - {{ name: txn_count_7d,         agg: count,                     window: 7d }}
  - {{ name: amount_sum_7d,        agg: sum(amount),               window: 7d }}
  - {{ name: amount_avg_30d,       agg: avg(amount),               window: 30d }}
  - {{ name: distinct_devices_30d, agg: count_distinct(device_id), window: 30d }}
",
        table.display()
    )
}

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

fn tokens() -> Tokens {
    Tokens::new()
        .with(TOKEN, "bench", true)
        .unwrap()
        .with_follower(FOLLOWER, "replica")
        .unwrap()
}

async fn client(addr: SocketAddr) -> Client {
    Client::connect(&format!("http://{addr}"))
        .await
        .unwrap()
        .with_token(TOKEN)
        .unwrap()
}

async fn served_version(c: &mut Client) -> Option<u64> {
    let out = c.score("fraud", &keys(vec![1]), false).await.ok()?;
    Some(
        out.column_by_name("model_version")?
            .as_any()
            .downcast_ref::<UInt64Array>()?
            .value(0),
    )
}

struct Lookup {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    failed: usize,
}

/// 8 clients, client i on `servers[i % n]`, single-key lookups for `secs`.
async fn lookups(servers: &[SocketAddr], users: usize, secs: f64) -> Lookup {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..8usize {
        let addr = servers[c % servers.len()];
        tasks.push(tokio::spawn(async move {
            let mut client = client(addr).await;
            client
                .get_online_features("txn_windows", None, &keys(vec![1]))
                .await
                .unwrap();
            let (mut lat, mut failed) = (Vec::new(), 0usize);
            let mut s = 0x9e37_79b9u64 ^ (c as u64 + 1);
            while Instant::now() < deadline {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let t = Instant::now();
                match client
                    .get_online_features(
                        "txn_windows",
                        None,
                        &keys(vec![(s % users as u64) as i64]),
                    )
                    .await
                {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                    Err(_) => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let started = Instant::now();
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64().min(secs + 1.0);
    all.sort_by(f64::total_cmp);
    Lookup {
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        rps: all.len() as f64 / elapsed,
        failed,
    }
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let users = arg("--users", 20_000);
    let n_txn = arg("--transactions", 200_000);
    let moves = arg("--moves", 30);
    let secs = arg("--seconds", 3) as f64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let now = chrono::Utc::now().timestamp_micros();
        common::write_delta(
            &data,
            "transactions",
            common::transactions(users, n_txn, now - 60 * DAY, 60 * DAY - 1_000_000, 3),
        )
        .await;
        let table = data.join("transactions");

        // The primary: applied, materialized, two signed versions, champion 1.
        let primary_dir = dir.path().join("primary");
        std::fs::create_dir_all(&primary_dir).unwrap();
        std::fs::write(primary_dir.join("features.yaml"), repo_yaml(&table)).unwrap();
        let key = SigningKey::generate(dir.path().join("bench.key")).unwrap();
        let store = FeatureStore::open(&primary_dir).unwrap();
        store.apply().await.unwrap();
        store.materialize().await.unwrap();
        let registry = store.models().unwrap();
        registry.trust("bench", &key.public_key_hex()).unwrap();
        let input = store
            .input_schema(&parse_feature_refs("txn_windows").unwrap(), false)
            .unwrap();
        let features: Vec<String> = input.features.iter().map(|f| f.column.clone()).collect();
        for intercept in [-3.0, -2.5] {
            let model = NativeModel::LogisticRegression {
                features: features.clone(),
                weights: vec![0.1, 0.001, 0.002, 0.3],
                intercept,
                baseline: None,
                transform: None,
            };
            registry
                .register(
                    Registration::new("fraud", model.to_json(), input.clone()),
                    "bench",
                    &key,
                )
                .unwrap();
        }
        registry
            .move_alias("fraud", "champion", Some(1), None, "bench", "start")
            .unwrap();
        drop(registry);
        let follow_key = SigningKey::generate(dir.path().join("follow.key")).unwrap();
        let pin_key = follow_key.public_key_hex();
        let registry_id = store.replication().unwrap().id().unwrap();
        let primary = ServeConfig::new("127.0.0.1:0".parse().unwrap(), tokens())
            .with_follow_signing_key(follow_key)
            .spawn(store)
            .await
            .unwrap();
        let primary_url = format!("http://{}", primary.addr());

        // Three replicas, each on its own folder trusting the signer.
        let started = Instant::now();
        let mut replicas: Vec<RunningServer> = Vec::new();
        for i in 0..3 {
            let folder = dir.path().join(format!("replica{i}"));
            std::fs::create_dir_all(&folder).unwrap();
            let store = FeatureStore::open(&folder).unwrap();
            store
                .models()
                .unwrap()
                .trust("bench", &key.public_key_hex())
                .unwrap();
            replicas.push(
                ServeConfig::new("127.0.0.1:0".parse().unwrap(), tokens())
                    .with_follow(primary_url.clone(), FOLLOWER, &pin_key, &registry_id)
                    .with_materialize_every(Duration::from_secs(30))
                    .spawn(store)
                    .await
                    .unwrap(),
            );
        }
        let addrs: Vec<SocketAddr> = replicas.iter().map(RunningServer::addr).collect();
        let mut probes = Vec::new();
        for a in &addrs {
            probes.push(client(*a).await);
        }
        for p in probes.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(120);
            while served_version(p).await != Some(1) {
                assert!(Instant::now() < deadline, "a replica never served");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let caught_up = started.elapsed().as_secs_f64();

        // Alias moves: time until every replica answers with the new version.
        let mut admin = client(primary.addr()).await;
        let mut move_ms = Vec::new();
        let mut current = 1u64;
        for _ in 0..moves {
            let to = 3 - current;
            let t = Instant::now();
            admin
                .action(
                    "alias",
                    serde_json::json!({"model": "fraud", "alias": "champion", "to": to, "expect": current}),
                )
                .await
                .unwrap();
            let mut pending: Vec<usize> = (0..probes.len()).collect();
            while !pending.is_empty() {
                let mut still = Vec::new();
                for i in pending {
                    if served_version(&mut probes[i]).await != Some(to) {
                        still.push(i);
                    }
                }
                pending = still;
                assert!(t.elapsed() < Duration::from_secs(30), "a replica never moved");
            }
            move_ms.push(t.elapsed().as_secs_f64() * 1e3);
            current = to;
        }
        move_ms.sort_by(f64::total_cmp);

        let spread = lookups(&addrs, users, secs).await;
        let single = lookups(&[primary.addr()], users, secs).await;

        println!(
            "\n3 replicas caught up with the primary (definitions, 2 versions, materialization of {n_txn} rows): {caught_up:.2} s"
        );
        println!(
            "alias move -> all 3 replicas on the new version ({moves} moves): p50 {:.1} ms, max {:.1} ms (target < 1000 ms)",
            percentile(&move_ms, 50.0),
            move_ms.last().copied().unwrap_or(f64::NAN)
        );
        println!(
            "\n{:<34} {:>10} {:>10} {:>12} {:>7}",
            "8 clients, 1 key per lookup", "p50 us", "p99 us", "requests/s", "failed"
        );
        for (name, l) in [("spread over 3 replicas", &spread), ("all on the primary", &single)] {
            println!(
                "{:<34} {:>10.0} {:>10.0} {:>12.0} {:>7}",
                name, l.p50_us, l.p99_us, l.rps, l.failed
            );
        }
        let j = |l: &Lookup| serde_json::json!({"p50_us": l.p50_us, "p99_us": l.p99_us, "rps": l.rps, "failed": l.failed});
        println!(
            "{}",
            serde_json::json!({
                "replicas": 3, "transactions": n_txn, "users": users,
                "catch_up_s": caught_up,
                "alias_move_all_replicas_p50_ms": percentile(&move_ms, 50.0),
                "alias_move_all_replicas_max_ms": move_ms.last().copied(),
                "moves": moves,
                "lookups_8_clients_3_replicas": j(&spread),
                "lookups_8_clients_primary_only": j(&single),
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            })
        );
        for r in replicas {
            r.shutdown().await;
        }
        primary.shutdown().await;
    });
}
