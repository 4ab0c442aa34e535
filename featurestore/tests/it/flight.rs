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
use quiver_featurestore::Limits;
use quiver_featurestore::client::Client;
use quiver_featurestore::serve::{RunningServer, ServeConfig, TlsConfig, Tokens};

use crate::common::{DAY, HOUR, Repo, column_strings, keys, transactions, ts_type};

pub(crate) const TOKEN_A: &str = "token-bank-a-0123456789";
pub(crate) const TOKEN_B: &str = "token-bank-b-0123456789";
/// A replica's credential: follow, blobs and rollback reports only.
pub(crate) const TOKEN_FOLLOWER: &str = "token-replica-0123456789";

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
        Self::start_with(tls, Limits::default()).await
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
            .with_follower(TOKEN_FOLLOWER, "replica")
            .unwrap()
    }

    pub(crate) async fn start_with(tls: Option<TlsConfig>, limits: Limits) -> Self {
        let (repo, store, base) = Self::store().await;
        let store = store.with_limits(limits);
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Self::tokens());
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
    http_get_with(addr, path, "").await
}

/// `GET path` with extra header lines (each ending in `\r\n`).
pub(crate) async fn http_get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
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
async fn uploads_are_bounded_per_tenant_in_total_bytes() {
    let mut limits = Limits::default();
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
        .do_get(Ticket::new(get(second.clone())))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        2_000
    );

    // Another tenant uploading as much as it likes never evicts bank_a's upload: each
    // tenant's oldest uploads make room only for that tenant's new ones.
    let mut b = fx.client(TOKEN_B).await;
    for _ in 0..5 {
        b.upload(vec![rows(2_000)]).await.unwrap();
    }
    let kept: Vec<RecordBatch> = a
        .flight()
        .do_get(Ticket::new(get(second)))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(kept.iter().map(RecordBatch::num_rows).sum::<usize>(), 2_000);
}

/// Run a hand-built client stream through DoPut or DoExchange; the gRPC status on error.
async fn raw_stream(
    fx: &Fixture,
    exchange: bool,
    msgs: Vec<arrow_flight::FlightData>,
) -> Result<usize, tonic::Status> {
    let mut c = fx.client(TOKEN_A).await;
    let input = futures::stream::iter(msgs.into_iter().map(Ok));
    let status = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    };
    if exchange {
        let out = c.flight().do_exchange(input).await.map_err(status)?;
        let batches: Vec<RecordBatch> = out.try_collect().await.map_err(status)?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    } else {
        let out = c.flight().do_put(input).await.map_err(status)?;
        let results: Vec<_> = out.try_collect().await.map_err(status)?;
        Ok(results.len())
    }
}

/// Schema then one batch of `ids`, encoded with `options`; the first message carries
/// `cmd` as its descriptor.
async fn encoded(
    ids: &[i64],
    options: arrow::ipc::writer::IpcWriteOptions,
    cmd: &[u8],
) -> Vec<arrow_flight::FlightData> {
    let mut msgs: Vec<arrow_flight::FlightData> =
        arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_options(options)
            .build(futures::stream::iter([Ok(keys(ids))]))
            .try_collect()
            .await
            .unwrap();
    msgs[0].flight_descriptor = Some(FlightDescriptor::new_cmd(cmd.to_vec()));
    msgs
}

#[tokio::test]
async fn hostile_client_ipc_is_refused_before_decoding_and_the_server_keeps_serving() {
    let fx = Fixture::start(None).await;
    let upload = br#"{"type":"upload"}"#;
    let exchange = br#"{"type":"exchange","view":"stats"}"#;
    for codec in [
        arrow::ipc::CompressionType::LZ4_FRAME,
        arrow::ipc::CompressionType::ZSTD,
    ] {
        let opts = arrow::ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(codec))
            .unwrap();
        for (is_exchange, cmd) in [(false, &upload[..]), (true, &exchange[..])] {
            let mut msgs = encoded(&[1, 2, 3], opts.clone(), cmd).await;
            // The first buffer's declared uncompressed length: 2^62 bytes.
            let mut body = msgs[1].data_body.to_vec();
            body[..8].copy_from_slice(&(1i64 << 62).to_le_bytes());
            msgs[1].data_body = body.into();
            let e = raw_stream(&fx, is_exchange, msgs).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{codec:?}: {e}");
            assert!(e.message().contains("compressed IPC"), "{e}");
        }
    }
    let plain = arrow::ipc::writer::IpcWriteOptions::default();
    // A body shorter than its header declares.
    let mut msgs = encoded(&[1, 2, 3], plain.clone(), upload).await;
    let body = msgs[1].data_body.slice(..8);
    msgs[1].data_body = body;
    let e = raw_stream(&fx, false, msgs).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("declares a body"), "{e}");
    // A header that is not an IPC message at all.
    let mut msgs = encoded(&[1], plain.clone(), upload).await;
    msgs[1].data_header = vec![0xffu8; 64].into();
    let e = raw_stream(&fx, false, msgs).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // A body with no header.
    let mut msgs = encoded(&[1], plain.clone(), upload).await;
    msgs.push(arrow_flight::FlightData {
        data_body: vec![1u8; 32].into(),
        ..Default::default()
    });
    let e = raw_stream(&fx, false, msgs).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // And the server still answers.
    let mut a = fx.client(TOKEN_A).await;
    let out = a
        .get_online_features("stats", None, &keys(&[1]))
        .await
        .unwrap();
    assert_eq!(out.num_rows(), 1);
}

#[tokio::test]
async fn exchange_accepts_a_descriptor_only_first_message_and_metadata_only_messages() {
    // As pyarrow sends it: the descriptor alone, then the schema and batches, with a
    // metadata-only message in between (allowed by the Flight spec).
    let fx = Fixture::start(None).await;
    let plain = arrow::ipc::writer::IpcWriteOptions::default();
    let mut msgs = vec![arrow_flight::FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(
            br#"{"type":"exchange","view":"stats"}"#.to_vec(),
        )),
        ..Default::default()
    }];
    let mut data = encoded(&[1, 2], plain.clone(), b"{}").await;
    data[0].flight_descriptor = None;
    msgs.extend(data);
    msgs.push(arrow_flight::FlightData {
        app_metadata: b"progress".to_vec().into(),
        ..Default::default()
    });
    let more = encoded(&[2, 3, 4], plain, b"{}").await;
    msgs.push(more[1].clone());
    assert_eq!(raw_stream(&fx, true, msgs).await.unwrap(), 5);
}

async fn read(c: &mut Client, t: Ticket) -> Result<(), String> {
    match c.flight().do_get(t).await {
        Ok(s) => s
            .try_collect::<Vec<RecordBatch>>()
            .await
            .map(|_| ())
            .map_err(|e| code(e.into())),
        Err(e) => Err(code(e.into())),
    }
}

#[tokio::test]
async fn a_pinned_version_does_not_bypass_revoked_access() {
    let fx = Fixture::start(None).await;
    let mut a = fx.client(TOKEN_A).await;
    let mut b = fx.client(TOKEN_B).await;
    let historical = |view: &str| {
        let cmd = serde_json::json!({"type": "historical", "features": [view],
            "rows": {"user_id": [1], "event_timestamp": ["2030-01-01T00:00:00Z"]}});
        Ticket::new(cmd.to_string().into_bytes())
    };
    // Version 1 shares `latest` with bank_b.
    read(&mut b, historical("latest@1")).await.unwrap();
    // Version 2 stops sharing it: bank_b can read neither the current nor version 1.
    fx._repo
        .write("f.yaml", &REPO.replace("shared_with: [bank_b]\n", ""));
    a.apply().await.unwrap();
    for pinned in ["latest", "latest@1", "latest@2"] {
        let e = read(&mut b, historical(pinned)).await.unwrap_err();
        assert_eq!(e, "PermissionDenied", "{pinned}");
    }
    // The denial names no owner or version.
    let denied = b
        .get_online_features("latest", None, &keys(&[1]))
        .await
        .unwrap_err()
        .to_string();
    assert!(!denied.contains("bank_a"), "{denied}");
    // The view removed altogether: nobody but an admin reads any version of it.
    let without_latest = REPO
        .split("---\n")
        .filter(|d| !d.contains("name: latest"))
        .collect::<Vec<_>>()
        .join("---\n");
    fx._repo.write("f.yaml", &without_latest);
    a.apply().await.unwrap();
    let e = read(&mut b, historical("latest@1")).await.unwrap_err();
    assert_eq!(e, "NotFound");
    read(&mut a, historical("latest@1")).await.unwrap();
    // And what bank_b is told about a view it may not read says nothing of others.
    let e = b
        .get_online_features("stats", None, &keys(&[1]))
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains("versions"), "{e}");
}

#[tokio::test]
async fn the_metrics_endpoint_can_require_a_token() {
    let (_repo, store, _base) = Fixture::store().await;
    let token = "metrics-token-0123456789";
    let config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
        .with_metrics_token(token)
        .unwrap();
    let server = config.spawn(store).await.unwrap();
    let addr = server.metrics_addr().unwrap();
    let none = http_get(addr, "/metrics").await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    assert!(!none.contains("stats"), "{none}");
    let wrong = http_get_with(
        addr,
        "/metrics",
        "Authorization: Bearer metrics-token-9999999999\r\n",
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = http_get_with(
        addr,
        "/metrics",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert!(right.starts_with("HTTP/1.1 200"), "{right}");
    assert!(right.contains("quiver_"), "{right}");
    assert!(
        ServeConfig::new("127.0.0.1:0".parse().unwrap(), Fixture::tokens())
            .with_metrics_token("short")
            .is_err()
    );
}
