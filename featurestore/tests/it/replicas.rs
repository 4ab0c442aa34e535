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
use crate::flight::{Fixture, TOKEN_A, TOKEN_B, http_get};

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

async fn serve(repo: &Repo) -> RunningServer {
    let store = FeatureStore::open(repo.path()).unwrap();
    ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_materialize_every(EVERY)
        .spawn(store)
        .await
        .unwrap()
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
