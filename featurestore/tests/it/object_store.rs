//! Delta tables on object storage, against real S3- and Azure-compatible servers on
//! 127.0.0.1: moto's S3 server (which checks request signatures) and Azurite (Azure
//! Blob), both started by `scripts/object_stores.py` and installed by
//! `scripts/object-store-env.sh` (the README's test command runs it). Point
//! `QUIVER_PYTHON` at another interpreter with moto and azure-storage-blob to use that
//! one instead.
//!
//! The flows go through the `quiver` binary, as a user runs them, with the secret in
//! the environment and `${VAR}` in the YAML; writes racing each other use the library.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use deltalake::protocol::SaveMode;
use quiver_featurestore::delta::{self, Location};
use serde_json::Value;

use crate::common::{json, keys, ok, python};

/// The two servers, started once for the whole test binary. The script stops them
/// when this process exits and its stdin closes.
struct Stores {
    doc: Value,
    _child: Mutex<Child>,
}

fn stores() -> &'static Value {
    static STORES: OnceLock<Stores> = OnceLock::new();
    &STORES
        .get_or_init(|| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/object_stores.py");
            let mut child = Command::new(python())
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start scripts/object_stores.py");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("object-store servers up within 120 s");
            let doc: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("object_stores.py printed `{line}`: {e}"));
            Stores {
                doc,
                _child: Mutex::new(child),
            }
        })
        .doc
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    S3,
    Azure,
}

/// Environment variable the YAML reads the store's secret from.
const SECRET_VAR: &str = "QUIVER_TEST_STORE_SECRET";

impl Kind {
    fn url(self, prefix: &str) -> String {
        let s = stores();
        match self {
            Kind::S3 => format!("s3://{}/{prefix}", s["s3"]["bucket"].as_str().unwrap()),
            Kind::Azure => format!(
                "az://{}/{prefix}",
                s["azure"]["container"].as_str().unwrap()
            ),
        }
    }

    fn secret(self) -> String {
        let s = stores();
        match self {
            Kind::S3 => s["s3"]["secret_access_key"].as_str().unwrap().to_owned(),
            Kind::Azure => s["azure"]["key"].as_str().unwrap().to_owned(),
        }
    }

    /// Options as written in YAML: literals, and the secret as `${SECRET_VAR}`.
    fn written(self) -> Vec<(&'static str, String)> {
        let s = stores();
        match self {
            Kind::S3 => vec![
                ("aws_endpoint", s["s3"]["endpoint"].as_str().unwrap().into()),
                ("aws_region", "us-east-1".into()),
                ("aws_allow_http", "true".into()),
                (
                    "aws_access_key_id",
                    s["s3"]["access_key_id"].as_str().unwrap().into(),
                ),
                ("aws_secret_access_key", format!("${{{SECRET_VAR}}}")),
            ],
            Kind::Azure => vec![
                (
                    "azure_storage_account_name",
                    s["azure"]["account"].as_str().unwrap().into(),
                ),
                (
                    "azure_storage_endpoint",
                    s["azure"]["endpoint"].as_str().unwrap().into(),
                ),
                ("azure_allow_http", "true".into()),
                ("azure_storage_account_key", format!("${{{SECRET_VAR}}}")),
            ],
        }
    }

    /// The options with the secret's value in place of its reference.
    fn resolved(self) -> Vec<(&'static str, String)> {
        let secret = self.secret();
        self.written()
            .into_iter()
            .map(|(k, v)| {
                if v.starts_with("${") {
                    (k, secret.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    /// The same options for the library, the secret given in code.
    fn location(self, prefix: &str) -> Location {
        Location::parse(Path::new(""), &self.url(prefix))
            .unwrap()
            .with_options(self.resolved())
            .unwrap()
    }

    /// The store's standard environment variables (the options' upper-case names), as
    /// a job writing a training set to the store would have them.
    fn standard_env(self) -> Vec<(String, String)> {
        self.resolved()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect()
    }

    fn yaml_options(self) -> String {
        let mut out = String::from("storage_options:\n");
        for (k, v) in self.written() {
            out.push_str(&format!("  {k}: \"{v}\"\n"));
        }
        out
    }
}

/// A prefix no other test uses.
fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `quiver --repo REPO ARGS` with `env`, killed after 120 s.
fn quiver_env(repo: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.arg("--repo").arg(repo).args(args);
    for v in [
        "QUIVER_REPO",
        "QUIVER_REGISTRY",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quiver");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("quiver {args:?} still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Transactions in a fixed order.
const TXN_ORDER: &str = "user_id, ts, amount";
/// Training-set rows in a fixed order.
const SET_ORDER: &str = "user_id, event_timestamp";

/// The rows of the Delta table at `location` (`version`, or the latest) in `order`.
async fn rows_of(location: &Location, version: Option<i64>, order: &str) -> Vec<RecordBatch> {
    let table = delta::open(location, version).await.unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    table.register(&ctx, "t").await.unwrap();
    ordered(&ctx, order).await
}

/// `batches` in `order`.
async fn sorted(batches: &[RecordBatch], order: &str) -> Vec<RecordBatch> {
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_batch(
        "t",
        arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap(),
    )
    .unwrap();
    ordered(&ctx, order).await
}

async fn ordered(ctx: &datafusion::prelude::SessionContext, order: &str) -> Vec<RecordBatch> {
    ctx.sql(&format!("SELECT * FROM t ORDER BY {order}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn text(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

fn parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A scaffolded repo (`quiver init --sample-data`) and a copy of it whose source lives
/// on the object store holding the first half of the rows (one commit); `rest` is the
/// other half.
struct Pair {
    _dir: tempfile::TempDir,
    local: PathBuf,
    remote: PathBuf,
    table: Location,
    env: Vec<(String, String)>,
    /// The second half of the rows, not yet committed.
    rest: RecordBatch,
}

async fn pair(kind: Kind, name: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let remote = dir.path().join("remote");
    ok(&quiver_env(&local, &["init", "--sample-data"], &[]));
    ok(&quiver_env(&remote, &["init"], &[]));
    let prefix = unique(name);
    let table = kind.location(&format!("{prefix}/transactions"));
    let all = rows_of(
        &Location::parse(&local, "data/transactions").unwrap(),
        None,
        TXN_ORDER,
    )
    .await;
    let all = arrow::compute::concat_batches(&all[0].schema(), &all).unwrap();
    let half = all.num_rows() / 2;
    delta::write(&table, vec![all.slice(0, half)], SaveMode::ErrorIfExists)
        .await
        .unwrap();
    let rest = all.slice(half, all.num_rows() - half);
    let yaml = std::fs::read_to_string(local.join("features.yaml")).unwrap();
    let yaml = yaml.replace(
        "delta: data/transactions          # a Delta table folder, relative to this repo\n",
        &format!(
            "delta: {}\n{}",
            kind.url(&format!("{prefix}/transactions")),
            kind.yaml_options()
        ),
    );
    assert!(yaml.contains("storage_options"), "{yaml}");
    std::fs::write(remote.join("features.yaml"), yaml).unwrap();
    Pair {
        _dir: dir,
        local,
        remote,
        table,
        env: vec![
            (SECRET_VAR.to_owned(), kind.secret()),
            // A secret option reads its own variable, or one this process allows.
            ("QUIVER_STORAGE_ENV".to_owned(), SECRET_VAR.to_owned()),
        ],
        rest,
    }
}

async fn same_as_local(kind: Kind) {
    let p = pair(kind, "flows").await;
    for repo in [&p.local, &p.remote] {
        ok(&quiver_env(repo, &["apply"], &p.env));
    }
    // Materialize the first commit; after the second, materialize incrementally (it
    // diffs the files of version 0 against version 1 on the store).
    let remote_mat = || {
        json(&quiver_env(
            &p.remote,
            &["materialize", "--output", "json"],
            &p.env,
        ))
    };
    let first = remote_mat();
    assert_eq!(first["views"][0]["mode"], "full", "{first}");
    delta::write(&p.table, vec![p.rest.clone()], SaveMode::Append)
        .await
        .unwrap();
    let again = remote_mat();
    assert_eq!(again["views"][0]["mode"], "incremental", "{again}");
    assert_eq!(
        again["views"][0]["reason"], "1 new file(s) since Delta version 0",
        "{again}"
    );
    assert_eq!(again["views"][0]["tables"][0]["version"], 1, "{again}");
    ok(&quiver_env(&p.local, &["materialize"], &[]));

    // Time travel: each commit reads back as written.
    let v0 = rows_of(&p.table, Some(0), TXN_ORDER).await;
    let v1 = rows_of(&p.table, None, TXN_ORDER).await;
    assert_eq!(count(&v1), 2000);
    assert_eq!(count(&v0), 1000);
    // The stored definition holds the reference, never the secret.
    let described = ok(&quiver_env(
        &p.remote,
        &["describe", "user_txn_stats"],
        &p.env,
    ));
    let plan = ok(&quiver_env(
        &p.remote,
        &["plan", "--output", "json"],
        &p.env,
    ));
    assert!(
        described.contains(&format!("${{{SECRET_VAR}}}")),
        "describe shows the reference: {described}"
    );
    for shown in [&described, &plan] {
        assert!(!shown.contains(&kind.secret()), "{shown}");
    }

    // The same training set from either table, with the object store's lineage.
    let entities = p.local.join("entities.csv");
    let mut out_env = p.env.clone();
    out_env.extend(kind.standard_env());
    let history = |repo: &Path, out: &str| {
        json(&quiver_env(
            repo,
            &[
                "history",
                "--entities",
                entities.to_str().unwrap(),
                "--features",
                "user_txn_stats",
                "--out",
                out,
                "--output",
                "json",
            ],
            &out_env,
        ))
    };
    let local_out = p.local.join("train.parquet");
    let remote_out = p.remote.join("train.parquet");
    history(&p.local, local_out.to_str().unwrap());
    let doc = history(&p.remote, remote_out.to_str().unwrap());
    assert_eq!(text(&parquet(&local_out)), text(&parquet(&remote_out)));
    assert_eq!(doc["lineage"]["tables"][0]["version"], 1);
    assert!(
        doc["lineage"]["tables"][0]["location"]
            .as_str()
            .unwrap()
            .starts_with(&kind.url("")),
        "{doc}"
    );

    // A training set written to the object store as a Delta table: the same rows,
    // lineage in its commit.
    let set_prefix = unique("train");
    history(&p.remote, &kind.url(&set_prefix));
    let set = kind.location(&set_prefix);
    assert_eq!(
        text(&rows_of(&set, None, SET_ORDER).await),
        text(&sorted(&parquet(&local_out), SET_ORDER).await)
    );

    // The online values equal a full materialization of the local table.
    let ids: Vec<i64> = (1..=21).collect();
    let t = 1_704_067_200_000_000 + 61 * 86_400_000_000;
    let online = |repo: &Path| {
        let store = quiver_featurestore::FeatureStore::open(repo).unwrap();
        let (b, _) = store
            .online()
            .unwrap()
            .get("user_txn_stats", None, &keys(&ids), t)
            .unwrap();
        text(&[b])
    };
    assert_eq!(online(&p.local), online(&p.remote));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tables_give_the_training_sets_and_online_values_of_local_ones() {
    same_as_local(Kind::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_tables_give_the_training_sets_and_online_values_of_local_ones() {
    same_as_local(Kind::Azure).await;
}

async fn racing(kind: Kind) {
    let prefix = unique("race");
    let batch =
        |user: i64| crate::common::transactions(&[(user, crate::common::T0, Some(1.0), Some("d"))]);
    // Two writers create the same table at once: exactly one wins, the other is told.
    for round in 0..3 {
        let fresh = kind.location(&format!("{prefix}/create-{round}"));
        let (a, b) = tokio::join!(
            delta::write(&fresh, vec![batch(100)], SaveMode::ErrorIfExists),
            delta::write(&fresh, vec![batch(200)], SaveMode::ErrorIfExists),
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "round {round}: exactly one create wins: {a:?} / {b:?}"
        );
        let rows = text(&rows_of(&fresh, None, TXN_ORDER).await);
        let winner = if a.is_ok() { "100" } else { "200" };
        let loser = if a.is_ok() { "200" } else { "100" };
        assert!(rows.contains(winner) && !rows.contains(loser), "{rows}");
        let err = a.err().or(b.err()).unwrap().to_string();
        assert!(
            err.contains(&kind.url("")),
            "the error names the table: {err}"
        );
        assert!(
            err.contains("another writer") || err.contains("already exists"),
            "{err}"
        );
    }
    if matches!(kind, Kind::Azure) {
        // Azurite ignores List Blobs' `startFrom`, which a Delta writer that lost a
        // race uses to find the commits after its own version (Azure honours it):
        // racing appends are checked on S3 only (docs/object-storage.md).
        return;
    }
    // Eight appends at once to one table: every row lands once, one commit each.
    let table = kind.location(&format!("{prefix}/appends"));
    delta::write(&table, vec![batch(0)], SaveMode::ErrorIfExists)
        .await
        .unwrap();
    let writers: Vec<_> = (1..=8)
        .map(|u| {
            let table = table.clone();
            tokio::spawn(
                async move { delta::write(&table, vec![batch(u)], SaveMode::Append).await },
            )
        })
        .collect();
    let mut versions = Vec::new();
    for w in writers {
        versions.push(
            w.await
                .unwrap()
                .expect("an append that loses a race retries"),
        );
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<i64>>(), "one commit each");
    let rows = rows_of(&table, None, TXN_ORDER).await;
    assert_eq!(count(&rows), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_on_s3_never_lose_or_double_a_write() {
    racing(Kind::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_on_azure_never_lose_or_double_a_write() {
    racing(Kind::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_writing_one_training_set_to_s3_one_wins_even_told_to_rename_unsafely() {
    let p = pair(Kind::S3, "procs").await;
    // Two repos (one registry each: a registry has one writer) over the same table.
    let other = p.remote.with_file_name("remote2");
    ok(&quiver_env(&other, &["init"], &[]));
    std::fs::copy(p.remote.join("features.yaml"), other.join("features.yaml")).unwrap();
    for repo in [&p.remote, &other] {
        ok(&quiver_env(repo, &["apply"], &p.env));
    }
    let out = Kind::S3.url(&unique("race-set"));
    let entities = p.local.join("entities.csv");
    let mut env = p.env.clone();
    env.extend(Kind::S3.standard_env());
    // deltalake reads this variable; quiver overrides it: commits stay conditional.
    env.push(("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into()));
    let run = |repo: &Path| {
        let (repo, out, entities, env) =
            (repo.to_owned(), out.clone(), entities.clone(), env.clone());
        std::thread::spawn(move || {
            quiver_env(
                &repo,
                &[
                    "history",
                    "--entities",
                    entities.to_str().unwrap(),
                    "--features",
                    "user_txn_stats",
                    "--out",
                    &out,
                ],
                &env,
            )
        })
    };
    let (a, b) = (run(&p.remote), run(&other));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        a.status.success() != b.status.success(),
        "exactly one writer wins:\n{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let loser = if a.status.success() { &b } else { &a };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(
        err.contains(&out),
        "the loser's error names the table: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_credential_names_the_source_and_never_the_secret() {
    for kind in [Kind::S3, Kind::Azure] {
        let p = pair(kind, "badcred").await;
        // A wrong secret of the right shape (Azure keys are base64).
        let wrong = match kind {
            Kind::S3 => "wrongSecretKey0123456789abcdefWRONGsecret".to_owned(),
            Kind::Azure => kind.secret().replace('E', "F"),
        };
        // At -vv, dependencies log requests and options too: redacted like errors.
        let out = quiver_env(
            &p.remote,
            &["-vv", "validate"],
            &[
                (SECRET_VAR.to_owned(), wrong.clone()),
                ("QUIVER_STORAGE_ENV".to_owned(), SECRET_VAR.to_owned()),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{kind:?}: {err}");
        assert!(err.contains("source `transactions`"), "{kind:?}: {err}");
        assert!(err.contains(&kind.url("")), "{kind:?}: {err}");
        assert!(
            !err.contains(&wrong) && !err.contains(&kind.secret()),
            "{kind:?}: {err}"
        );

        // No variable at all: named, and nothing is read.
        let out = quiver_env(
            &p.remote,
            &["validate"],
            &[("QUIVER_STORAGE_ENV".to_owned(), SECRET_VAR.to_owned())],
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains(SECRET_VAR) && err.contains("not set"),
            "{kind:?}: {err}"
        );
    }
    // A secret read from a variable this process does not allow is refused, named.
    let p = pair(Kind::S3, "unallowed").await;
    let out = quiver_env(&p.remote, &["validate"], &p.env[..1]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not allow") && err.contains("QUIVER_STORAGE_ENV"),
        "{err}"
    );
    assert!(!err.contains(&Kind::S3.secret()), "{err}");
    // A secret written into the YAML is refused where it stands, and not echoed.
    let p = pair(Kind::S3, "literal").await;
    let yaml = std::fs::read_to_string(p.remote.join("features.yaml")).unwrap();
    let leaked = yaml.replace(&format!("${{{SECRET_VAR}}}"), "literalSecret0123456789");
    std::fs::write(p.remote.join("features.yaml"), leaked).unwrap();
    let out = quiver_env(&p.remote, &["validate"], &p.env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("features.yaml:") && err.contains("${AWS_SECRET_ACCESS_KEY}"),
        "{err}"
    );
    assert!(!err.contains("literalSecret0123456789"), "{err}");
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_audit_to_one_s3_table_and_every_row_is_found() {
    use quiver_featurestore::audit::{AuditConfig, AuditLog, AuditRecord, lookup_at};
    let table = Kind::S3.location(&unique("audit"));
    let mut config = AuditConfig::default();
    config.max_batch = 16;
    config.max_delay = Duration::from_millis(50);
    let now_ms = 1_764_460_800_000i64; // 2025-11-30
    let record = |replica: u32, i: u32| AuditRecord {
        request_id: format!("{now_ms:x}-{replica:08x}{i:08x}-0"),
        time_us: now_ms * 1000 + i64::from(i),
        tenant: "bank_a".into(),
        model: "fraud".into(),
        model_version: 1,
        model_alias: "champion".into(),
        entity: format!("{{\"user_id\": {i}}}"),
        inputs: "{}".into(),
        score: f64::from(i) / 100.0,
        contributions: None,
    };
    // Two writers (two replicas) with small batches: their commits interleave.
    let mut writers = Vec::new();
    for replica in 0..2u32 {
        let (log, writer) = AuditLog::start_at(table.clone(), config.clone()).unwrap();
        for i in 0..40u32 {
            log.record(vec![record(replica, i)]).await.unwrap();
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        writers.push((log, writer));
    }
    for (log, writer) in writers {
        drop(log);
        writer.finish(Duration::from_secs(60)).await;
    }
    let rows = count(&rows_of(&table, None, "request_id").await);
    assert_eq!(rows, 80, "every row committed once");
    for replica in 0..2 {
        for i in [0u32, 17, 39] {
            let want = record(replica, i);
            let got = lookup_at(&table, &want.request_id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{} not found", want.request_id));
            assert_eq!(got.score, want.score);
        }
    }
}
