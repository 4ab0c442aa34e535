//! Hostile and broken feature repos: each gives a clear, located error and applies
//! nothing (the registry stays where it was).

use quiver_featurestore::{Error, FeatureStore};

use crate::common::{REPO_YAML, Repo, example_repo};

/// Apply `yaml` (as features.yaml) on top of an applied example repo; return the error.
async fn apply_err(yaml: &str) -> String {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let before = store.registry().last_apply_id().unwrap();
    let view_before = store.view("user_txn_stats", None).unwrap();
    repo.write("features.yaml", yaml);
    let err = store.apply().await.expect_err("apply must fail");
    assert!(matches!(err, Error::Spec(_)), "a spec error, got {err:?}");
    assert!(err.is_user_error());
    assert_eq!(
        store.registry().last_apply_id().unwrap(),
        before,
        "nothing applied"
    );
    assert_eq!(store.view("user_txn_stats", None).unwrap(), view_before);
    assert!(store.plan().await.is_err(), "plan fails the same way");
    err.to_string()
}

#[tokio::test]
async fn malformed_yaml() {
    let e = apply_err(&REPO_YAML.replace("join_keys: [user_id]", "join_keys: [user_id")).await;
    assert!(
        e.starts_with("features.yaml:") && e.contains("malformed YAML"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_kind() {
    let e = apply_err(&REPO_YAML.replace("kind: Source", "kind: Sorce")).await;
    assert!(
        e.contains("features.yaml:5:7: unknown kind `Sorce`")
            && e.contains("did you mean `Source`?"),
        "{e}"
    );
}

#[tokio::test]
async fn duplicate_names() {
    let e = apply_err(&format!(
        "{REPO_YAML}---\nkind: Entity\nname: user\njoin_keys: [id]\n"
    ))
    .await;
    assert!(
        e.contains("entity `user` is defined twice")
            && e.contains("the first is at features.yaml:1"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_column_in_an_aggregate() {
    let e = apply_err(&REPO_YAML.replace("sum(amount)", "sum(amout)")).await;
    assert!(
        e.contains("features.yaml:17:")
            && e.contains("has no column `amout`")
            && e.contains("did you mean `amount`?"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_window_syntax() {
    let e = apply_err(&REPO_YAML.replace("window: 30d", "window: 30 days")).await;
    assert!(
        e.contains("features.yaml:18:") && e.contains("not a duration"),
        "{e}"
    );
}

#[tokio::test]
async fn missing_source() {
    let e = apply_err(&REPO_YAML.replace("source: transactions", "source: transactionz")).await;
    assert!(
        e.contains("features.yaml:13:9")
            && e.contains("source `transactionz`, which is not defined")
            && e.contains("did you mean `transactions`?"),
        "{e}"
    );
}

#[tokio::test]
async fn missing_delta_table() {
    let e = apply_err(&REPO_YAML.replace("delta: data/transactions", "delta: data/nowhere")).await;
    assert!(
        e.contains("features.yaml:7:8") && e.contains("cannot open Delta table `data/nowhere`"),
        "{e}"
    );
}

#[tokio::test]
async fn non_numeric_sum() {
    let e = apply_err(&REPO_YAML.replace("sum(amount)", "sum(device_id)")).await;
    assert!(e.contains("needs a numeric column"), "{e}");
}

#[tokio::test]
async fn huge_file_is_refused_without_reading_it() {
    let repo = example_repo().await;
    let f = std::fs::File::create(repo.path().join("huge.yaml")).unwrap();
    f.set_len(50 * 1024 * 1024).unwrap();
    let store = FeatureStore::open(repo.path()).unwrap();
    let e = store.apply().await.unwrap_err().to_string();
    assert!(
        e.contains("huge.yaml") && e.contains("over the limit"),
        "{e}"
    );
    assert_eq!(store.registry().last_apply_id().unwrap(), 0);
}

#[tokio::test]
async fn deep_nesting() {
    let deep = format!(
        "{REPO_YAML}---\nkind: Entity\nname: deep\njoin_keys: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let e = apply_err(&deep).await;
    assert!(
        e.contains("features.yaml:")
            && (e.contains("nesting deeper than") || e.contains("recursion limit")),
        "{e}"
    );
}

#[tokio::test]
async fn alias_bomb() {
    let mut bomb = String::from(
        "kind: Entity\nname: bomb\njoin_keys: [user_id]\ndescription: x\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..12 {
        bomb.push_str(&format!(
            "x{i}: &x{i} [{}]\n",
            vec![format!("*x{}", i - 1); 10].join(", ")
        ));
    }
    let started = std::time::Instant::now();
    let e = apply_err(&format!("{REPO_YAML}---\n{bomb}")).await;
    assert!(e.contains("alias bomb"), "{e}");
    assert!(started.elapsed().as_secs() < 20);
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let yaml = REPO_YAML
        .replace("sum(amount)", "sum(amout)")
        .replace("window: 30d", "window: 30x")
        .replace("ttl: 45d", "tll: 45d");
    let e = apply_err(&yaml).await;
    for needle in ["unknown key `tll`", "unknown unit `x`"] {
        assert!(e.contains(needle), "{needle} missing from {e}");
    }
}

#[tokio::test]
async fn sql_views_cannot_write_or_read_outside_their_sources() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    for sql in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "SELECT user_id, ts, amount FROM transactions; DROP TABLE transactions",
        "SELECT user_id, ts, 1 AS one FROM other_table",
    ] {
        repo.write("sql.yaml", &format!("kind: FeatureView\nname: bad_sql\nentity: user\nsource: transactions\nsql: \"{sql}\"\n"));
        let e = store.apply().await.unwrap_err().to_string();
        assert!(
            e.contains("sql.yaml:5:6") && e.contains("SQL of view `bad_sql`"),
            "{e}"
        );
    }
    assert_eq!(store.registry().last_apply_id().unwrap(), 0);
}

#[tokio::test]
async fn an_empty_repo_folder_is_fine_and_a_missing_one_is_not() {
    let repo = Repo::new();
    let store = FeatureStore::open(repo.path()).unwrap();
    assert!(store.plan().await.unwrap().is_empty());
    // A missing repo is refused when opened, before anything (a registry) is created.
    let e = FeatureStore::builder(repo.path().join("nope"))
        .with_registry(repo.path().join("reg"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("no feature repo folder"), "{e}");
    assert!(!repo.path().join("reg").exists());
    assert!(!repo.path().join("nope").exists());
}

#[tokio::test]
async fn bad_storage_options_are_located_and_never_echo_a_secret() {
    // Options on a local table, a misspelt key, another store's key, a literal secret
    // and a spliced variable: all reported at once, where they stand.
    let e = apply_err(&REPO_YAML.replace(
        "delta: data/transactions",
        "delta: data/transactions\nstorage_options: { aws_region: eu-west-1 }",
    ))
    .await;
    assert!(
        e.contains("features.yaml:8:") && e.contains("apply to object-store tables"),
        "{e}"
    );
    let e = apply_err(&REPO_YAML.replace(
        "delta: data/transactions",
        "delta: s3://lake/transactions\nstorage_options:\n  aws_regoin: eu-west-1\n  azure_storage_account_name: x\n  aws_secret_access_key: hunter2hunter2\n  aws_session_token: \"a${B}\"",
    ))
    .await;
    for want in [
        "features.yaml:9:3: unknown option `aws_regoin`; did you mean `aws_region`?",
        "features.yaml:10:3: `azure_storage_account_name` is not an option of S3 tables",
        "features.yaml:11:26: `aws_secret_access_key` is a secret",
        "features.yaml:12:22: a value is either `${NAME}` as a whole",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
    assert!(!e.contains("hunter2"), "{e}");
}

/// A Delta table whose log was written by hand: version 1 adds a data file named by
/// `path`. The table's own version 0 holds one row (user 1); `../secret` beside it
/// holds another table's row (user 666).
async fn crafted_log(
    path_of: impl Fn(&std::path::Path) -> String,
) -> (tempfile::TempDir, url::Url) {
    use quiver_featurestore::delta;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let table = dir.path().join("table");
    let one = |user: i64| crate::common::keys(&[user]);
    delta::write(
        url::Url::from_directory_path(&secret).unwrap(),
        vec![one(666)],
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await
    .unwrap();
    delta::write(
        url::Url::from_directory_path(&table).unwrap(),
        vec![one(1)],
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await
    .unwrap();
    let parquet = std::fs::read_dir(&secret)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let size = std::fs::metadata(&parquet).unwrap().len();
    let add = serde_json::json!({
        "add": {
            "path": path_of(&parquet),
            "partitionValues": {},
            "size": size,
            "modificationTime": 1_700_000_000_000i64,
            "dataChange": true
        }
    });
    let commit = serde_json::json!({
        "commitInfo": { "timestamp": 1_700_000_000_001i64, "operation": "WRITE" }
    });
    std::fs::write(
        table.join("_delta_log/00000000000000000001.json"),
        format!("{add}\n{commit}\n"),
    )
    .unwrap();
    let url = url::Url::from_directory_path(&table).unwrap();
    (dir, url)
}

/// Rows of the table at `url`, or the error opening or reading it.
async fn read_all(url: &url::Url) -> Result<Vec<String>, String> {
    use quiver_featurestore::delta;
    let t = delta::open(url.clone(), None)
        .await
        .map_err(|e| e.to_string())?;
    let ctx = datafusion::prelude::SessionContext::new();
    t.register(&ctx, "t").await.map_err(|e| e.to_string())?;
    let batches = ctx
        .sql("SELECT user_id FROM t ORDER BY user_id")
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(batches
        .iter()
        .flat_map(|b| crate::common::column_strings(b, "user_id"))
        .collect())
}

#[tokio::test]
async fn a_delta_log_naming_a_file_outside_the_table_is_refused() {
    let absolute = |p: &std::path::Path| url::Url::from_file_path(p).unwrap().to_string();
    let plain_absolute = |p: &std::path::Path| p.display().to_string();
    let escaping =
        |p: &std::path::Path| format!("../secret/{}", p.file_name().unwrap().to_string_lossy());
    let encoded =
        |p: &std::path::Path| format!("%2E%2E/secret/{}", p.file_name().unwrap().to_string_lossy());
    let other_bucket =
        |_: &std::path::Path| "s3://other-bank/transactions/part-0.parquet".to_string();
    let cases: [(&str, &dyn Fn(&std::path::Path) -> String); 5] = [
        ("file URL", &absolute),
        ("absolute path", &plain_absolute),
        ("relative path leaving the table", &escaping),
        ("percent-encoded ..", &encoded),
        ("another bucket", &other_bucket),
    ];
    for (what, path_of) in cases {
        let (_dir, url) = crafted_log(path_of).await;
        match read_all(&url).await {
            Ok(rows) => {
                assert!(
                    !rows.contains(&"666".to_string()),
                    "{what}: the table read another table's rows: {rows:?}"
                );
                panic!("{what}: the crafted log was not refused (rows {rows:?})");
            }
            Err(e) => {
                assert!(e.contains("outside the table"), "{what}: {e}");
                assert!(e.contains("version") || e.contains("path"), "{what}: {e}");
            }
        }
    }
}
