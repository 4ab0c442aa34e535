//! Serving replicas over one Delta table: each keeps its own online store fresh on a
//! schedule (`--materialize-every`), reports its freshness on `/metrics`, `/healthz`
//! and the `health` action, and comes back after a restart from its intact store
//! without a full rebuild. Three in-process servers on loopback, one shared table.

use std::time::{Duration, Instant};

use deltalake::protocol::SaveMode;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::client::Client;
use quiver_featurestore::delta;
use quiver_featurestore::serve::{RunningServer, ServeConfig};

use crate::common::{HOUR, Repo, column_strings, keys, transactions};
use crate::flight::{Fixture, TOKEN_A, TOKEN_B, TOKEN_FOLLOWER, http_get};

const EVERY: Duration = Duration::from_millis(200);

/// One replica's repo: the shared table by absolute path.
fn replica_repo(table: &std::path::Path) -> Repo {
    let repo = Repo::new();
    repo.write(
        "f.yaml",
        &format!(
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
name: stats
entity: user
source: transactions
owner: bank_a
features:
  - {{ name: n_all, agg: count }}
",
            table.display()
        ),
    );
    repo
}

/// The follow key of the server on `repo` (kept beside it, so a restart signs alike).
fn follow_key(repo: &Repo) -> quiver_registry::SigningKey {
    let path = repo.path().join(".follow.key");
    if path.exists() {
        quiver_registry::SigningKey::load(&path).unwrap()
    } else {
        quiver_registry::SigningKey::generate(&path).unwrap()
    }
}

async fn serve(repo: &Repo) -> RunningServer {
    let store = FeatureStore::open(repo.path()).unwrap();
    ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_materialize_every(EVERY)
        .with_follow_signing_key(follow_key(repo))
        .spawn(store)
        .await
        .unwrap()
}

/// What a replica pins of its primary: its follow key and registry id (from `health`).
#[derive(Clone)]
struct Pins {
    key: String,
    registry: String,
}

async fn pins(primary: &RunningServer) -> Pins {
    let h = client(primary.addr(), TOKEN_A)
        .await
        .action("health", serde_json::Value::Null)
        .await
        .unwrap();
    Pins {
        key: h["follow_key"].as_str().unwrap().to_owned(),
        registry: h["registry"].as_str().unwrap().to_owned(),
    }
}

async fn client(addr: std::net::SocketAddr, token: &str) -> Client {
    Client::connect(&format!("http://{addr}"))
        .await
        .unwrap()
        .with_token(token)
        .unwrap()
}

async fn n_all(server: &RunningServer, user: i64) -> String {
    let mut c = client(server.addr(), TOKEN_A).await;
    match c.get_online_features("stats", None, &keys(&[user])).await {
        Ok(b) => column_strings(&b, "n_all")[0].clone(),
        Err(e) => format!("error: {e}"),
    }
}

/// Poll `f` until it returns true, at most `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_table_on_a_schedule_and_report_their_freshness() {
    let data = Repo::new();
    let base = chrono::Utc::now().timestamp_micros() - HOUR;
    let table = data.path().join("transactions");
    let url = delta::table_url(data.path(), "transactions").unwrap();
    delta::write(
        &url,
        vec![transactions(&[(1, base, Some(1.0), None)])],
        SaveMode::ErrorIfExists,
    )
    .await
    .unwrap();
    let repos: Vec<Repo> = (0..3).map(|_| replica_repo(&table)).collect();
    for r in &repos {
        FeatureStore::open(r.path()).unwrap().apply().await.unwrap();
    }
    let mut servers = Vec::new();
    for r in &repos {
        servers.push(serve(r).await);
    }
    // A fresh replica is behind until its first run, then serves.
    for s in &servers {
        eventually(10, "first scheduled materialization", || async {
            n_all(s, 1).await == "1"
        })
        .await;
    }

    // Clients keep asking every replica while the runs swap watermarks: no request
    // fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut askers = Vec::new();
    for s in &servers {
        let (addr, stop) = (s.addr(), stop.clone());
        askers.push(tokio::spawn(async move {
            let mut c = client(addr, TOKEN_A).await;
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.get_online_features("stats", None, &keys(&[1])).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }

    // A new commit reaches every replica within a few ticks.
    let committed = Instant::now();
    delta::write(
        &url,
        vec![transactions(&[(1, base + 1, Some(2.0), None)])],
        SaveMode::Append,
    )
    .await
    .unwrap();
    for s in &servers {
        eventually(10, "the new commit served", || async {
            n_all(s, 1).await == "2"
        })
        .await;
    }
    let followed = committed.elapsed();
    assert!(followed < Duration::from_secs(10), "{followed:?}");
    // A few more scheduled runs under load, then count.
    tokio::time::sleep(EVERY * 3).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in askers {
        let (ok, failed) = a.await.unwrap();
        assert!(ok > 0 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
    }

    // Freshness on /metrics, /healthz and the health action.
    let s = &servers[0];
    let maddr = s.metrics_addr().unwrap();
    let metrics = http_get(maddr, "/metrics").await;
    for want in [
        "quiver_materialize_runs_total{result=\"ok\"}",
        "quiver_materialized_delta_version{view=\"stats\",source=\"transactions\"} 1",
        "quiver_view_behind{view=\"stats\"} 0",
        "quiver_materialization_lag_seconds{view=\"stats\"}",
    ] {
        assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    }
    let ok = http_get(maddr, "/healthz?max_lag_seconds=600").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.contains("\"status\":\"ok\"") && ok.contains("\"behind\":0"),
        "{ok}"
    );
    assert!(!ok.contains("stats"), "no view names without a token: {ok}");
    let behind = http_get(maddr, "/healthz?max_lag_seconds=0").await;
    assert!(behind.starts_with("HTTP/1.1 503"), "{behind}");
    assert!(behind.contains("\"behind\":1"), "{behind}");
    let bad = http_get(maddr, "/healthz?max_lag=5").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(http_get(maddr, "/healthz").await.ends_with("ok"));

    let mut a = client(s.addr(), TOKEN_A).await;
    let h = a
        .action("health", serde_json::json!({"max_lag_seconds": 600}))
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["views"][0]["view"], "stats", "{h}");
    assert_eq!(h["views"][0]["served_version"], 1, "{h}");
    assert_eq!(h["views"][0]["tables"][0]["version"], 1, "{h}");
    // Another tenant sees the verdict on its own views only: none here.
    let mut b = client(s.addr(), TOKEN_B).await;
    let hb = b.action("health", serde_json::Value::Null).await.unwrap();
    assert_eq!(hb["views"], serde_json::json!([]), "{hb}");

    // Restart replica 0 on its intact store: it serves at once, before any run, and
    // its next runs are incremental (the data generation of a full rebuild is kept).
    let generation = |repo: &Repo| {
        FeatureStore::open(repo.path())
            .unwrap()
            .online()
            .unwrap()
            .watermark("stats")
            .unwrap()
            .generation
    };
    let s0 = servers.remove(0);
    s0.shutdown().await;
    let before = generation(&repos[0]);
    let store = FeatureStore::open(repos[0].path()).unwrap();
    let again = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .spawn(store)
        .await
        .unwrap();
    assert_eq!(n_all(&again, 1).await, "2", "served from the intact store");
    again.shutdown().await;
    let restarted = serve(&repos[0]).await;
    delta::write(
        &url,
        vec![transactions(&[(1, base + 2, Some(3.0), None)])],
        SaveMode::Append,
    )
    .await
    .unwrap();
    eventually(10, "the restarted replica follows", || async {
        n_all(&restarted, 1).await == "3"
    })
    .await;
    restarted.shutdown().await;
    assert_eq!(
        generation(&repos[0]),
        before,
        "no full rebuild after the restart"
    );
    for s in servers {
        s.shutdown().await;
    }
}

const RATIO_WAT: &str = include_str!("../../../udfs/ratio.wat");

/// The primary's repo: `stats` over the shared table (by absolute path, as replicas
/// on other machines would use a URL), optionally `halves`, a SQL view calling a
/// WebAssembly UDF.
fn primary_yaml(table: &std::path::Path, with_udf_view: bool) -> String {
    let mut yaml = format!(
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
name: stats
entity: user
source: transactions
owner: bank_a
features:
  - {{ name: n_all, agg: count }}
  - {{ name: sum_all, agg: sum(amount) }}
",
        table.display()
    );
    if with_udf_view {
        yaml.push_str(
            "---
kind: FeatureView
name: halves
entity: user
sources: [transactions]
owner: bank_a
ttl: 10d
udfs: [udfs/ratio.wat]
sql: |
  SELECT user_id, ts, ratio(amount, 1.0) AS half_amount FROM transactions
",
        );
    }
    yaml
}

fn fraud_model(intercept: f64) -> quiver_registry::NativeModel {
    quiver_registry::NativeModel::LogisticRegression {
        features: vec!["n_all".into(), "sum_all".into()],
        weights: vec![0.5, 0.01],
        intercept,
        baseline: None,
        transform: None,
    }
}

async fn served_version(c: &mut Client) -> Result<u64, String> {
    use arrow::array::UInt64Array;
    let out = c
        .score("fraud", &keys(&[1]), false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out
        .column_by_name("model_version")
        .unwrap()
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap()
        .value(0))
}

fn remote_code(e: quiver_featurestore::Error) -> String {
    match e {
        quiver_featurestore::Error::Remote { code, .. } => code,
        other => panic!("expected a server error, got {other}"),
    }
}

async fn follower(repo: &Repo, primary: &str, pins: &Pins) -> RunningServer {
    let store = FeatureStore::open(repo.path()).unwrap();
    ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_materialize_every(EVERY)
        .with_follow(primary, TOKEN_FOLLOWER, &pins.key, &pins.registry)
        .spawn(store)
        .await
        .unwrap()
}

/// A shared table, and a primary repo with `stats` applied and `fraud` versions 1
/// and 2 registered (signed by `ci`), version 1 the champion.
struct Setup {
    data: Repo,
    table: std::path::PathBuf,
    primary_repo: Repo,
    key: quiver_registry::SigningKey,
}

async fn setup() -> Setup {
    use quiver_featurestore::offline::parse_feature_refs;
    use quiver_registry::{Registration, SigningKey};

    let data = Repo::new();
    let base = chrono::Utc::now().timestamp_micros() - HOUR;
    let table = data.path().join("transactions");
    let url = delta::table_url(data.path(), "transactions").unwrap();
    delta::write(
        &url,
        vec![transactions(&[(1, base, Some(10.0), None)])],
        SaveMode::ErrorIfExists,
    )
    .await
    .unwrap();
    let primary_repo = Repo::new();
    primary_repo.write("f.yaml", &primary_yaml(&table, false));
    primary_repo.write("udfs/ratio.wat", RATIO_WAT);
    let key = SigningKey::generate(data.path().join("ci.key")).unwrap();
    let store = FeatureStore::open(primary_repo.path()).unwrap();
    store.apply().await.unwrap();
    let registry = store.models().unwrap();
    registry.trust("ci", &key.public_key_hex()).unwrap();
    let input = store
        .input_schema(
            &parse_feature_refs("stats:n_all,stats:sum_all").unwrap(),
            false,
        )
        .unwrap();
    for intercept in [-2.0, 1.0] {
        registry
            .register(
                Registration::new("fraud", fraud_model(intercept).to_json(), input.clone()),
                "ci",
                &key,
            )
            .unwrap();
    }
    registry
        .move_alias("fraud", "champion", Some(1), None, "ci", "first")
        .unwrap();
    Setup {
        data,
        table,
        primary_repo,
        key,
    }
}

/// Replica folders, empty but for a registry that trusts the signer `ci`.
fn replica_folders(n: usize, key: &quiver_registry::SigningKey) -> Vec<Repo> {
    (0..n)
        .map(|_| {
            let r = Repo::new();
            FeatureStore::open(r.path())
                .unwrap()
                .models()
                .unwrap()
                .trust("ci", &key.public_key_hex())
                .unwrap();
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_follow_one_registry_and_keep_serving_without_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Setup {
        data: _data,
        table,
        primary_repo,
        key,
    } = setup().await;
    let primary = serve(&primary_repo).await;
    let primary_addr = primary.addr();
    let primary_url = format!("http://{primary_addr}");
    let pins = pins(&primary).await;

    // Three replicas on empty folders; each trusts the signer itself.
    let repos = replica_folders(3, &key);
    let mut replicas = Vec::new();
    for r in &repos {
        replicas.push(follower(r, &primary_url, &pins).await);
    }
    for s in &replicas {
        eventually(
            15,
            "a replica serves the primary's view and champion",
            || async {
                let mut c = client(s.addr(), TOKEN_A).await;
                n_all(s, 1).await == "1" && served_version(&mut c).await == Ok(1)
            },
        )
        .await;
    }

    // Clients score on every replica without pause while the alias moves.
    let stop = Arc::new(AtomicBool::new(false));
    let mut askers = Vec::new();
    for s in &replicas {
        let (addr, stop) = (s.addr(), stop.clone());
        askers.push(tokio::spawn(async move {
            let mut c = client(addr, TOKEN_A).await;
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match served_version(&mut c).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    let mut admin = client(primary_addr, TOKEN_A).await;
    let moved = Instant::now();
    admin
        .action(
            "alias",
            serde_json::json!({"model": "fraud", "alias": "champion", "to": 2, "expect": 1}),
        )
        .await
        .unwrap();
    for s in &replicas {
        let mut c = client(s.addr(), TOKEN_A).await;
        loop {
            if served_version(&mut c).await == Ok(2) {
                break;
            }
            assert!(
                moved.elapsed() < Duration::from_secs(1),
                "every replica serves the new champion within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let all_moved = moved.elapsed();
    assert!(all_moved < Duration::from_secs(1), "{all_moved:?}");

    // Apply once on the primary: a new view calling a UDF module reaches every
    // replica (the module travels by hash) and is served there.
    primary_repo.write("f.yaml", &primary_yaml(&table, true));
    admin.apply().await.unwrap();
    for s in &replicas {
        eventually(15, "the applied view served on a replica", || async {
            let mut c = client(s.addr(), TOKEN_A).await;
            match c.get_online_features("halves", None, &keys(&[1])).await {
                Ok(b) => column_strings(&b, "half_amount")[0] == "5.0",
                Err(_) => false,
            }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in askers {
        let (ok, failed) = a.await.unwrap();
        assert!(ok > 0 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
    }

    // A replica's registry is the primary's: writes go there, the log is admin only.
    let mut r0 = client(replicas[0].addr(), TOKEN_A).await;
    assert_eq!(
        remote_code(r0.apply().await.unwrap_err()),
        "FailedPrecondition"
    );
    let e = r0
        .action(
            "alias",
            serde_json::json!({"model": "fraud", "alias": "champion", "to": 1}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&primary_url), "{e}");
    let mut b = client(primary_addr, TOKEN_B).await;
    assert_eq!(
        remote_code(b.action("follow", serde_json::json!({})).await.unwrap_err()),
        "PermissionDenied"
    );
    let h = r0.action("health", serde_json::Value::Null).await.unwrap();
    assert_eq!(h["follow"]["connected"], true, "{h}");
    assert_eq!(h["follow"]["events_behind"], 0, "{h}");
    let metrics = http_get(replicas[0].metrics_addr().unwrap(), "/metrics").await;
    assert!(metrics.contains("quiver_follow_cursor "), "{metrics}");

    // The primary stops: replicas keep serving the last versions and say so.
    primary.shutdown().await;
    for s in &replicas {
        let mut c = client(s.addr(), TOKEN_A).await;
        assert_eq!(served_version(&mut c).await, Ok(2));
        assert_eq!(n_all(s, 1).await, "1");
    }
    let r0_addr = replicas[0].addr();
    eventually(10, "a replica reports the lost primary", || async move {
        let mut c = client(r0_addr, TOKEN_A).await;
        let h = c.action("health", serde_json::Value::Null).await.unwrap();
        h["follow"]["connected"] == false && h["follow"]["last_error"].is_string()
    })
    .await;

    // A replica restarted on its intact folder serves at once, the primary still down.
    let s0 = replicas.remove(0);
    s0.shutdown().await;
    let restarted = follower(&repos[0], &primary_url, &pins).await;
    let mut c = client(restarted.addr(), TOKEN_A).await;
    assert_eq!(
        served_version(&mut c).await,
        Ok(2),
        "served from its own registry"
    );
    assert_eq!(n_all(&restarted, 1).await, "1");
    replicas.insert(0, restarted);

    // The primary comes back on its address: replicas resume from their cursors.
    let store = FeatureStore::open(primary_repo.path()).unwrap();
    let primary = ServeConfig::new(primary_addr, Fixture::tokens())
        .with_follow_signing_key(follow_key(&primary_repo))
        .spawn(store)
        .await
        .unwrap();
    let mut admin = client(primary_addr, TOKEN_A).await;
    admin
        .action(
            "alias",
            serde_json::json!({"model": "fraud", "alias": "champion", "to": 1, "expect": 2}),
        )
        .await
        .unwrap();
    for s in &replicas {
        eventually(15, "a replica follows the restarted primary", || async {
            let mut c = client(s.addr(), TOKEN_A).await;
            served_version(&mut c).await == Ok(1)
        })
        .await;
    }
    for s in replicas {
        s.shutdown().await;
    }
    primary.shutdown().await;

    // A folder with a registry of its own cannot become a replica.
    let store = FeatureStore::open(primary_repo.path()).unwrap();
    let e = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_follow(primary_url, TOKEN_FOLLOWER, &pins.key, &pins.registry)
        .spawn(store)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a registry of its own"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_on_a_replica_is_made_by_the_primary_and_followed_by_every_replica() {
    let Setup {
        data: _data,
        primary_repo,
        key,
        ..
    } = setup().await;
    let primary = serve(&primary_repo).await;
    let primary_url = format!("http://{}", primary.addr());
    let pins = pins(&primary).await;
    let repos = replica_folders(2, &key);
    let judged = follower(&repos[0], &primary_url, &pins).await;
    let other = follower(&repos[1], &primary_url, &pins).await;
    // The policy is stored in the primary's registry and followed: every entity goes
    // to the challenger, which cannot meet a 1 µs p99.
    let mut admin = client(primary.addr(), TOKEN_A).await;
    admin
        .action(
            "policy",
            serde_json::json!({"model": "fraud", "policy": {"challenger_percent": 100,
                "max_p99_ms": 0.001, "min_requests": 5, "check_every": 5}}),
        )
        .await
        .unwrap();
    let mut b = client(primary.addr(), TOKEN_B).await;
    assert_eq!(
        remote_code(
            b.action(
                "policy",
                serde_json::json!({"model": "fraud", "policy": null})
            )
            .await
            .unwrap_err()
        ),
        "PermissionDenied"
    );
    let bad = admin
        .action(
            "policy",
            serde_json::json!({"model": "fraud", "policy": {"challenger_percent": 140}}),
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("challenger_percent"), "{bad}");
    admin
        .action(
            "alias",
            serde_json::json!({"model": "fraud", "alias": "challenger", "to": 2}),
        )
        .await
        .unwrap();
    let mut c = client(judged.addr(), TOKEN_A).await;
    let judged_addr = judged.addr();
    eventually(15, "the replica routes to the challenger", || async move {
        served_version(&mut client(judged_addr, TOKEN_A).await).await == Ok(2)
    })
    .await;
    // A few requests over the policy: held back here at once, rolled back by the
    // primary, and the move reaches the other replica.
    let mut versions = Vec::new();
    for _ in 0..20 {
        versions.push(served_version(&mut c).await.unwrap());
    }
    assert_eq!(versions.last(), Some(&1), "{versions:?}");
    let status = c
        .action("model-status", serde_json::json!({"model": "fraud"}))
        .await
        .unwrap();
    assert_eq!(status["rollbacks"][0]["version"], 2, "{status}");
    assert_eq!(status["policy"]["challenger_percent"], 100.0, "{status}");
    eventually(10, "the primary removed the challenger", || async {
        let mut a = client(primary.addr(), TOKEN_A).await;
        let s = a
            .action("model-status", serde_json::json!({"model": "fraud"}))
            .await
            .unwrap();
        s["versions"].as_array().is_some_and(|v| v.len() == 1)
    })
    .await;
    judged.shutdown().await;
    other.shutdown().await;
    primary.shutdown().await;
    // Both replicas' registries hold the primary's move, made with the replica's
    // token and reason; neither moved the alias itself.
    for r in &repos {
        let store = FeatureStore::open(r.path()).unwrap();
        let history = store
            .models()
            .unwrap()
            .alias_history("fraud", "challenger")
            .unwrap();
        let last = history.last().unwrap();
        assert_eq!(last.to, None, "{history:?}");
        // Made with the replica's follower credential (the primary records its name).
        assert_eq!(last.by, "replica");
        assert!(
            last.reason.starts_with("automatic rollback: p99 latency"),
            "{}",
            last.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_credential_can_follow_and_report_a_rollback_and_nothing_else() {
    let Setup {
        data: _data,
        primary_repo,
        ..
    } = setup().await;
    let primary = serve(&primary_repo).await;
    let mut f = client(primary.addr(), TOKEN_FOLLOWER).await;
    // It cannot move an alias, set a policy, apply, or read anything.
    for (action, body) in [
        (
            "alias",
            serde_json::json!({"model": "fraud", "alias": "champion", "to": 2}),
        ),
        (
            "policy",
            serde_json::json!({"model": "fraud", "policy": {"challenger_percent": 100}}),
        ),
        ("apply", serde_json::Value::Null),
        ("list", serde_json::Value::Null),
        ("health", serde_json::Value::Null),
    ] {
        let e = f.action(action, body).await.unwrap_err();
        assert_eq!(remote_code(e), "PermissionDenied", "{action}");
    }
    let e = f
        .get_online_features("stats", None, &keys(&[1]))
        .await
        .unwrap_err();
    assert_eq!(remote_code(e), "PermissionDenied");
    let e = f.score("fraud", &keys(&[1]), false).await.unwrap_err();
    assert_eq!(remote_code(e), "PermissionDenied");
    // The champion did not move.
    let addr = primary.addr();
    eventually(15, "the primary serves its champion", || async move {
        let mut c = client(addr, TOKEN_A).await;
        served_version(&mut c).await == Ok(1)
    })
    .await;
    let mut admin = client(primary.addr(), TOKEN_A).await;
    // A rollback report removes a challenger only if it still names that version.
    admin
        .action(
            "alias",
            serde_json::json!({"model": "fraud", "alias": "challenger", "to": 2}),
        )
        .await
        .unwrap();
    let e = f
        .action(
            "rollback",
            serde_json::json!({"model": "fraud", "version": 1, "reason": "stale"}),
        )
        .await
        .unwrap_err();
    assert_ne!(remote_code(e), "PermissionDenied");
    f.action(
        "rollback",
        serde_json::json!({"model": "fraud", "version": 2, "reason": "automatic rollback: test"}),
    )
    .await
    .unwrap();
    let status = admin
        .action("model-status", serde_json::json!({"model": "fraud"}))
        .await
        .unwrap();
    assert!(status.to_string().contains("champion"), "{status}");
    primary.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_not_signed_by_the_pinned_key_or_of_another_registry_are_refused() {
    let Setup {
        data: _data,
        primary_repo,
        key,
        ..
    } = setup().await;
    // A primary on 127.0.0.1 whose follow key is not the one the replicas pinned: it
    // stands for a fake primary, or anyone on the path rewriting its messages.
    let primary = serve(&primary_repo).await;
    let url = format!("http://{}", primary.addr());
    let real = pins(&primary).await;
    let other_key = quiver_registry::SigningKey::generate(_data.path().join("other.key")).unwrap();
    let wrong_key = Pins {
        key: other_key.public_key_hex(),
        registry: real.registry.clone(),
    };
    let wrong_registry = Pins {
        key: real.key.clone(),
        registry: "0123456789abcdef0123456789abcdef".into(),
    };
    let repos = replica_folders(2, &key);
    let a = follower(&repos[0], &url, &wrong_key).await;
    let b = follower(&repos[1], &url, &wrong_registry).await;
    for (s, want) in [
        (&a, "not signed by its pinned follow key"),
        (&b, "this replica follows registry 0123456789abcdef"),
    ] {
        let addr = s.addr();
        eventually(
            15,
            "the replica reports the refused events",
            || async move {
                let mut c = client(addr, TOKEN_A).await;
                let h = c.action("health", serde_json::Value::Null).await.unwrap();
                h["follow"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(want))
            },
        )
        .await;
        // Nothing was imported: no view, no model, cursor 0.
        let mut c = client(addr, TOKEN_A).await;
        let h = c.action("health", serde_json::Value::Null).await.unwrap();
        assert_eq!(h["follow"]["cursor"], 0, "{h}");
        assert!(served_version(&mut c).await.is_err());
    }
    a.shutdown().await;
    b.shutdown().await;
    primary.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_its_primary_over_tls() {
    use quiver_featurestore::serve::TlsConfig;
    let Setup {
        data: _data,
        primary_repo,
        key,
        ..
    } = setup().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = cert.cert.pem().into_bytes();
    let store = FeatureStore::open(primary_repo.path()).unwrap();
    let primary = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_tls(TlsConfig {
            cert_pem: ca.clone(),
            key_pem: cert.signing_key.serialize_pem().into_bytes(),
        })
        .with_follow_signing_key(follow_key(&primary_repo))
        .spawn(store)
        .await
        .unwrap();
    let url = format!("https://localhost:{}", primary.addr().port());
    let h = Client::connect_tls(&url, &ca, "localhost")
        .await
        .unwrap()
        .with_token(TOKEN_A)
        .unwrap()
        .action("health", serde_json::Value::Null)
        .await
        .unwrap();
    let pins = Pins {
        key: h["follow_key"].as_str().unwrap().to_owned(),
        registry: h["registry"].as_str().unwrap().to_owned(),
    };
    let repos = replica_folders(1, &key);
    // Without the CA, https is refused before anything connects.
    let store = FeatureStore::open(repos[0].path()).unwrap();
    let e = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_follow(url.clone(), TOKEN_FOLLOWER, &pins.key, &pins.registry)
        .spawn(store)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--follow-ca"), "{e}");
    let store = FeatureStore::open(repos[0].path()).unwrap();
    let replica = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_materialize_every(EVERY)
        .with_follow(url, TOKEN_FOLLOWER, &pins.key, &pins.registry)
        .with_follow_ca(ca)
        .spawn(store)
        .await
        .unwrap();
    let addr = replica.addr();
    eventually(
        15,
        "the replica serves the primary's champion",
        || async move {
            let mut c = client(addr, TOKEN_A).await;
            served_version(&mut c).await == Ok(1)
        },
    )
    .await;
    replica.shutdown().await;
    primary.shutdown().await;
}
