//! The Arrow Flight server on loopback: every RPC through the Rust SDK, tenants and
//! tokens, hostile requests (each answered with the right status while the server
//! keeps serving), TLS, metrics, and graceful shutdown of the real binary.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::{FlightDescriptor, Ticket};
use futures::TryStreamExt;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::client::Client;
use quiver_featurestore::serve::{RunningServer, ServeConfig, ServeLimits, TlsConfig, Tokens};

use crate::common::{DAY, HOUR, Repo, column_strings, transactions, ts_type};

pub(crate) const TOKEN_A: &str = "token-bank-a-0123456789";
pub(crate) const TOKEN_B: &str = "token-bank-b-0123456789";

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
name: stats
entity: user
source: transactions
owner: bank_a
ttl: 30d
features:
  - { name: n_1d,    agg: count,       window: 1d }
  - { name: sum_all, agg: sum(amount) }
---
kind: FeatureView
name: latest
entity: user
source: transactions
owner: bank_a
shared_with: [bank_b]
features:
  - amount
  - { name: device, column: device_id }
---
kind: FeatureView
name: public
entity: user
source: transactions
features:
  - { name: n_all, agg: count }
";

/// A repo with data relative to now, applied and materialized, and a running server.
pub(crate) struct Fixture {
    /// Kept so the temp folder outlives the server.
    pub(crate) _repo: Repo,
    pub(crate) server: RunningServer,
    pub(crate) base: i64,
}

impl Fixture {
    pub(crate) async fn start(tls: Option<TlsConfig>) -> Self {
        Self::start_with(tls, ServeLimits::default()).await
    }

    /// The repo with data relative to now, applied and materialized, not served yet.
    pub(crate) async fn store() -> (Repo, FeatureStore, i64) {
        let base = chrono::Utc::now().timestamp_micros() - HOUR;
        let repo = Repo::new();
        repo.write("f.yaml", REPO);
        repo.delta(
            "data/transactions",
            vec![transactions(&[
                (1, base, Some(10.0), Some("a")),
                (1, base - 2 * HOUR, Some(20.0), Some("b")),
                (1, base - 30 * HOUR, Some(5.0), None),
                (2, base - 10 * DAY, Some(7.5), Some("c")),
            ])],
        )
        .await;
        let store = FeatureStore::open(repo.path()).unwrap();
        store.apply().await.unwrap();
        store.materialize().await.unwrap();
        (repo, store, base)
    }

    /// Both tenants' tokens: bank_a (admin) and bank_b.
    pub(crate) fn tokens() -> Tokens {
        Tokens::new()
            .with(TOKEN_A, "bank_a", true)
            .unwrap()
            .with(TOKEN_B, "bank_b", false)
            .unwrap()
    }

    pub(crate) async fn start_with(tls: Option<TlsConfig>, limits: ServeLimits) -> Self {
        let (repo, store, base) = Self::store().await;
        let mut config =
            ServeConfig::new("127.0.0.1:0".parse().unwrap(), Self::tokens()).with_limits(limits);
        if let Some(t) = tls {
            config = config.with_tls(t);
        }
        let server = config.spawn(store).await.unwrap();
        Self {
            _repo: repo,
            server,
            base,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub(crate) async fn client(&self, token: &str) -> Client {
        Client::connect(&self.url())
            .await
            .unwrap()
            .with_token(token)
            .unwrap()
    }
}

fn keys(ids: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from(ids.to_vec()))],
    )
    .unwrap()
}

fn code(e: quiver_featurestore::Error) -> String {
    match e {
        quiver_featurestore::Error::Remote { code, .. } => code,
        other => panic!("expected a server error, got {other}"),
    }
}

#[tokio::test]
async fn every_rpc_through_the_sdk() {
    let fx = Fixture::start(None).await;
    let mut a = fx.client(TOKEN_A).await;

    let online = a
        .get_online_features("stats", None, &keys(&[1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(column_strings(&online, "n_1d"), ["2", "0", ""]);
    assert_eq!(column_strings(&online, "sum_all"), ["35.0", "7.5", ""]);
    assert_eq!(
        column_strings(&online, "stats__status"),
        ["PRESENT", "PRESENT", "NOT_FOUND"]
    );

    let some = a
        .get_online_features("latest", Some(&["device"]), &keys(&[1]))
        .await
        .unwrap();
    assert_eq!(
        some.schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        [
            "user_id",
            "device",
            "latest__status",
            "latest__event_timestamp"
        ]
    );
    assert_eq!(column_strings(&some, "device"), ["a"]);

    // Training set through an upload.
    let entities = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 1])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![fx.base, fx.base - HOUR]).with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    let train = a
        .get_historical_features(vec![entities], &["stats:n_1d", "latest"], false)
        .await
        .unwrap();
    let train = arrow::compute::concat_batches(&train[0].schema(), &train).unwrap();
    assert_eq!(column_strings(&train, "n_1d"), ["2", "1"]);
    assert_eq!(column_strings(&train, "device"), ["a", "b"]);

    // The same training set with inline rows, through GetFlightInfo then DoGet (what
    // generic Flight clients do).
    let cmd = serde_json::json!({"type": "historical", "features": ["public"], "rows": {"user_id": [2], "event_timestamp": ["2020-01-01T00:00:00Z"]}});
    let info = a
        .flight()
        .get_flight_info(FlightDescriptor::new_cmd(cmd.to_string()))
        .await
        .unwrap();
    let schema = info.clone().try_decode_schema().unwrap();
    assert!(schema.field_with_name("n_all").is_ok());
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = a
        .flight()
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        column_strings(&batches[0], "public__status"),
        ["NOT_FOUND"],
        "2020 is before any data"
    );

    let scan = a.scan("stats", None).await.unwrap();
    assert_eq!(scan.iter().map(RecordBatch::num_rows).sum::<usize>(), 4);
    let scan0 = a.scan("stats", Some(0)).await.unwrap();
    assert_eq!(scan0.iter().map(RecordBatch::num_rows).sum::<usize>(), 4);

    let out = a
        .exchange_online_features("public", None, vec![keys(&[1, 2]), keys(&[3])])
        .await
        .unwrap();
    let rows: Vec<String> = out
        .iter()
        .flat_map(|b| column_strings(b, "n_all"))
        .collect();
    assert_eq!(rows, ["3", "1", ""]);

    let views = a.list_views().await.unwrap();
    assert_eq!(
        views.iter().map(|v| v.view.as_str()).collect::<Vec<_>>(),
        ["latest", "public", "stats"]
    );
    let flights: Vec<_> = a
        .flight()
        .list_flights("")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(flights.len(), 3);
    assert!(flights.iter().all(|f| {
        f.clone()
            .try_decode_schema()
            .is_ok_and(|s| s.field_with_name("user_id").is_ok())
    }));

    let report = a.materialize(Some(&["stats"]), None).await.unwrap();
    assert_eq!(report["views"][0]["view"], "stats");
    let applied = a.apply().await.unwrap();
    assert_eq!(applied["apply_id"], 0, "nothing changed");
    assert_eq!(
        a.action("health", serde_json::Value::Null).await.unwrap()["status"],
        "ok"
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn tenants_read_only_what_is_theirs_or_shared() {
    let fx = Fixture::start(None).await;
    let mut b = fx.client(TOKEN_B).await;
    let views = b.list_views().await.unwrap();
    assert_eq!(
        views.iter().map(|v| v.view.as_str()).collect::<Vec<_>>(),
        ["latest", "public"]
    );
    assert_eq!(
        code(
            b.get_online_features("stats", None, &keys(&[1]))
                .await
                .unwrap_err()
        ),
        "PermissionDenied"
    );
    assert_eq!(
        code(b.scan("stats", None).await.unwrap_err()),
        "PermissionDenied"
    );
    assert_eq!(
        code(
            b.exchange_online_features("stats", None, vec![keys(&[1])])
                .await
                .unwrap_err()
        ),
        "PermissionDenied"
    );
    assert_eq!(
        code(b.materialize(None, None).await.unwrap_err()),
        "PermissionDenied"
    );
    assert_eq!(code(b.apply().await.unwrap_err()), "PermissionDenied");
    assert!(
        b.get_online_features("latest", None, &keys(&[1]))
            .await
            .is_ok()
    );
    // bank_b cannot use bank_a's upload.
    let mut a = fx.client(TOKEN_A).await;
    let entities = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(TimestampMicrosecondArray::from(vec![fx.base]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    let id = a.upload(vec![entities]).await.unwrap();
    let cmd = serde_json::json!({"type": "historical", "features": ["public"], "upload": id});
    let err = b
        .flight()
        .do_get(Ticket::new(cmd.to_string()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NotFound") || err.to_string().contains("no upload"),
        "{err}"
    );
}

#[tokio::test]
async fn hostile_requests_get_the_right_status_and_the_server_keeps_serving() {
    let fx = Fixture::start(None).await;
    let raw = |ticket: Vec<u8>| {
        let url = fx.url();
        async move {
            let mut c = Client::connect(&url)
                .await
                .unwrap()
                .with_token(TOKEN_A)
                .unwrap();
            let r = match c.flight().do_get(Ticket::new(ticket)).await {
                Ok(s) => s.try_collect::<Vec<_>>().await.map(|_| ()),
                Err(e) => Err(e),
            };
            r.map_err(|e| code(e.into()))
        }
    };
    let expect = |r: Result<(), String>, want: &str| {
        let e = r.expect_err("must fail");
        assert!(e.contains(want), "expected {want}, got {e}");
    };
    expect(raw(b"{not json".to_vec()).await, "InvalidArgument");
    expect(
        raw(br#"{"type":"online","view":"stats","keys":{"user_id":[1]},"x":1}"#.to_vec()).await,
        "InvalidArgument",
    );
    expect(raw(vec![b' '; 2 * 1024 * 1024]).await, "ResourceExhausted");
    let million = format!(
        r#"{{"type":"online","view":"stats","keys":{{"user_id":[{}]}}}}"#,
        vec!["7"; 1_000_000].join(",")
    );
    expect(raw(million.into_bytes()).await, "ResourceExhausted");
    expect(
        raw(br#"{"type":"online","view":"nope","keys":{"user_id":[1]}}"#.to_vec()).await,
        "NotFound",
    );
    expect(
        raw(
            br#"{"type":"online","view":"stats","features":["n_2d"],"keys":{"user_id":[1]}}"#
                .to_vec(),
        )
        .await,
        "NotFound",
    );
    expect(
        raw(br#"{"type":"online","view":"stats","keys":{"user_id":["one"]}}"#.to_vec()).await,
        "InvalidArgument",
    );
    expect(
        raw(br#"{"type":"online","view":"stats","keys":{"account":[1]}}"#.to_vec()).await,
        "InvalidArgument",
    );
    expect(
        raw(br#"{"type":"upload"}"#.to_vec()).await,
        "InvalidArgument",
    );

    let mut a = fx.client(TOKEN_A).await;
    let big: Vec<i64> = (0..150_000).collect();
    assert_eq!(
        code(
            a.exchange_online_features("stats", None, vec![keys(&big)])
                .await
                .unwrap_err()
        ),
        "ResourceExhausted"
    );
    let strings = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .unwrap();
    assert_eq!(
        code(
            a.exchange_online_features("stats", None, vec![strings])
                .await
                .unwrap_err()
        ),
        "InvalidArgument"
    );
    assert_eq!(
        code(
            a.action("drop_everything", serde_json::Value::Null)
                .await
                .unwrap_err()
        ),
        "InvalidArgument"
    );

    let mut none = Client::connect(&fx.url()).await.unwrap();
    assert_eq!(
        code(none.list_views().await.unwrap_err()),
        "Unauthenticated"
    );
    let mut wrong = fx.client("not-a-token-at-all-0000").await;
    assert_eq!(
        code(
            wrong
                .get_online_features("public", None, &keys(&[1]))
                .await
                .unwrap_err()
        ),
        "Unauthenticated"
    );

    // Still serving.
    let ok = a
        .get_online_features("stats", None, &keys(&[1]))
        .await
        .unwrap();
    assert_eq!(column_strings(&ok, "n_1d"), ["2"]);
    let metrics = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("quiver_flight_requests_total{method=\"DoGet\",code=\"InvalidArgument\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quiver_online_values_total{view=\"stats\",status=\"PRESENT\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quiver_flight_request_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quiver_materialization_lag_seconds{view=\"stats\"}"),
        "lag from the watermark: {metrics}"
    );
}

/// A minimal HTTP/1.1 GET over loopback.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn tls_with_a_real_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = TlsConfig {
        cert_pem: cert.cert.pem().into_bytes(),
        key_pem: cert.signing_key.serialize_pem().into_bytes(),
    };
    let fx = Fixture::start(Some(tls)).await;
    let url = format!("https://{}", fx.server.addr());
    let mut c = Client::connect_tls(&url, cert.cert.pem().as_bytes(), "localhost")
        .await
        .unwrap()
        .with_token(TOKEN_A)
        .unwrap();
    let b = c
        .get_online_features("public", None, &keys(&[1]))
        .await
        .unwrap();
    assert_eq!(column_strings(&b, "n_all"), ["3"]);
    // A plaintext client cannot talk to it.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let mut p = Client::connect(&fx.url()).await?.with_token(TOKEN_A)?;
        p.list_views().await
    })
    .await
    .expect("no hang");
    assert!(plain.is_err());
}

#[test]
fn the_binary_stops_gracefully_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let repo = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "--repo",
            repo.path().to_str().unwrap(),
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("QUIVER_TOKENS", format!("{TOKEN_A}=bank_a:admin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server prints its address");
    assert!(
        first.starts_with("Serving Arrow Flight on http://127.0.0.1:"),
        "{first}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit {exit:?}");
}

#[tokio::test]
async fn uploads_are_bounded_in_total_bytes() {
    let mut limits = ServeLimits::default();
    limits.max_upload_total_bytes = 64 * 1024;
    let fx = Fixture::start_with(None, limits).await;
    let mut a = fx.client(TOKEN_A).await;
    let rows = |n: usize| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Int64, false),
                Field::new("event_timestamp", ts_type(), false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1; n])),
                Arc::new(TimestampMicrosecondArray::from(vec![fx.base; n]).with_timezone("UTC")),
            ],
        )
        .unwrap()
    };
    let first = a.upload(vec![rows(2_000)]).await.unwrap();
    let second = a.upload(vec![rows(2_000)]).await.unwrap();
    let get = |id: String| {
        serde_json::json!({"type": "historical", "features": ["public"], "upload": id}).to_string()
    };
    let err = a
        .flight()
        .do_get(Ticket::new(get(first)))
        .await
        .unwrap_err();
    assert_eq!(code(err.into()), "NotFound", "the oldest upload made room");
    let batches: Vec<RecordBatch> = a
        .flight()
        .do_get(Ticket::new(get(second)))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        2_000
    );
}
