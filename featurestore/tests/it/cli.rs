//! The `quiver` binary: a scaffolded repo end to end, exit codes, JSON output.

use std::process::Command;

use crate::common::{json, ok, quiver};

#[test]
fn scaffold_validate_plan_apply_list_describe_history() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(&quiver(&repo, &["init", "--sample-data"]));
    assert!(
        ok(&quiver(&repo, &["validate"])).starts_with("OK: 1 entities, 1 sources, 1 feature views")
    );
    let plan = json(&quiver(&repo, &["plan", "--output", "json"]));
    assert_eq!(plan["changes"].as_array().unwrap().len(), 3);
    assert!(ok(&quiver(&repo, &["apply"])).contains("Applied as apply #1"));
    assert!(ok(&quiver(&repo, &["plan"])).starts_with("No changes"));
    let list = json(&quiver(&repo, &["list", "--output", "json"]));
    assert_eq!(list[0]["view"], "user_txn_stats");
    assert_eq!(list[0]["version"], 1);
    let described = ok(&quiver(&repo, &["describe", "user_txn_stats", "--explain"]));
    assert!(
        described.contains("txn_count_7d") && described.contains("count(*) over 7d"),
        "{described}"
    );
    assert!(
        described.contains("PointInTimeJoin") && described.contains("PointInTimeExec"),
        "{described}"
    );
    let out = repo.join("train.parquet");
    let hist = json(&quiver(
        &repo,
        &[
            "history",
            "--entities",
            repo.join("entities.csv").to_str().unwrap(),
            "--features",
            "user_txn_stats",
            "--out",
            out.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    assert_eq!(hist["rows"], 4);
    assert_eq!(hist["lineage"]["views"][0]["version"], 1);
    assert!(out.exists());
    // A second run refuses to overwrite, with exit code 1.
    let again = quiver(
        &repo,
        &[
            "history",
            "--entities",
            repo.join("entities.csv").to_str().unwrap(),
            "--features",
            "user_txn_stats",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
}

#[test]
fn user_errors_exit_1_with_located_messages() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    ok(&quiver(repo, &["init", "--sample-data"]));
    let yaml = std::fs::read_to_string(repo.join("features.yaml")).unwrap();
    std::fs::write(
        repo.join("features.yaml"),
        yaml.replace("sum(amount)", "sum(amout)"),
    )
    .unwrap();
    let out = quiver(repo, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("features.yaml:") && err.contains("did you mean `amount`?"),
        "{err}"
    );
    let out = quiver(repo, &["apply", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"], "spec");
    assert!(doc["problems"][0]["line"].as_u64().unwrap() > 0);
    let out = quiver(repo, &["describe", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let out = quiver(repo, &["init"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "init refuses a folder with YAML files"
    );
    // A policies file with a misspelt field is refused before anything is served.
    let policies = repo.join("policies.json");
    std::fs::write(&policies, r#"{"fraud": {"max_p99": 20}}"#).unwrap();
    let out = quiver(
        repo,
        &[
            "serve",
            "--insecure-no-auth",
            "--addr",
            "127.0.0.1:0",
            "--policies",
            policies.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policies.json") && err.contains("`fraud`") && err.contains("max_p99_ms"),
        "{err}"
    );
    std::fs::write(&policies, r#"{"fraud": {"challenger_percent": 140}}"#).unwrap();
    let out = quiver(
        repo,
        &[
            "serve",
            "--insecure-no-auth",
            "--addr",
            "127.0.0.1:0",
            "--policies",
            policies.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside 0..=100"));
    // A replica needs the primary's token and an http(s) URL.
    let serve_follow = |url: &str, token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quiver"));
        c.args([
            "--repo",
            repo.to_str().unwrap(),
            "serve",
            "--insecure-no-auth",
        ])
        .args([
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "none",
            "--follow",
            url,
            "--follow-key",
            &"ab".repeat(32),
            "--follow-registry",
            "0123456789abcdef0123456789abcdef",
        ])
        .env_remove("QUIVER_FOLLOW_TOKEN");
        if let Some(t) = token {
            c.env("QUIVER_FOLLOW_TOKEN", t);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve_follow("http://127.0.0.1:1", None);
    assert!(err.contains("QUIVER_FOLLOW_TOKEN"), "{err}");
    let err = serve_follow("ftp://127.0.0.1:1", Some("t0123456789abcdef"));
    assert!(err.contains("expected http://HOST:PORT"), "{err}");
    // Plain http carries the token and the change log in clear: loopback only.
    let err = serve_follow("http://192.0.2.10:8815", Some("t0123456789abcdef"));
    assert!(err.contains("plain http only to a loopback host"), "{err}");
    // An engine is `local` or a Ballista scheduler.
    let out = quiver(
        repo,
        &[
            "history",
            "--entities",
            "e.csv",
            "--features",
            "x",
            "--out",
            "o.parquet",
            "--engine",
            "spark://h:1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ballista://HOST:PORT"));
}

#[test]
fn help_teaches_with_examples() {
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["history", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Example: quiver history") && help.contains("EXPIRED"),
        "{help}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("quiver init my-features --sample-data"));
}

#[test]
fn a_registry_held_by_another_process_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _held = quiver_registry::MetadataStore::open(dir.path().join(".quiver/registry")).unwrap();
    let out = quiver(dir.path(), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    // The audit log is a Delta table, readable while a server holds the registry.
    let out = quiver(
        dir.path(),
        &["registry", "audit", "19a8e2b1c4f-5e0c1d2a3b4c5d6e-0"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no request `19a8e2b1c4f-5e0c1d2a3b4c5d6e-0`"),
        "{err}"
    );
    let out = quiver(dir.path(), &["registry", "audit", "'; drop table audit"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a request id"), "{err}");
}

#[test]
fn a_missing_repo_is_an_error_that_creates_nothing_and_a_closed_pipe_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let out = quiver(&typo, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no feature repo folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !typo.exists(),
        "a read-only command created {}",
        typo.display()
    );

    let repo = dir.path().join("repo");
    ok(&quiver(&repo, &["init", "--sample-data"]));
    // Reading a repo that was never applied creates no registry.
    ok(&quiver(&repo, &["validate"]));
    ok(&quiver(&repo, &["plan"]));
    ok(&quiver(&repo, &["list"]));
    assert_eq!(
        quiver(&repo, &["describe", "user_txn_stats"]).status.code(),
        Some(1)
    );
    assert!(
        !repo.join(".quiver").exists(),
        "a read-only command created .quiver"
    );
    ok(&quiver(&repo, &["apply"]));
    // `quiver describe VIEW | head -c1`: the reader goes away; exit 0, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("--repo")
        .arg(&repo)
        .args(["describe", "user_txn_stats"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
