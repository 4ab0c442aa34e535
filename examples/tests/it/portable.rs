//! The fraud training set planned for another process (portable scans, quiver's codec)
//! and run from the decoded plan in a fresh session gives the local engine's rows, row
//! for row, over every view of the fraud repo: windowed aggregates, as-of columns, SQL
//! views and the WebAssembly UDF one (its module travels inside the plan).

use datafusion::prelude::SessionContext;
use quiver_examples::fraud_data::{Config, bank_name, generate};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::plan::portable;

const VIEWS: &str = "user_txn_velocity,user_amount_stats,user_device_ip_stats,user_login_stats,user_last_txn,user_device_novelty";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fraud_training_set_decoded_elsewhere_gives_the_local_rows() {
    let out = tempfile::tempdir().unwrap();
    let cfg = Config {
        banks: 1,
        users: 2_000,
        transactions: 40_000,
        ..Config::default()
    };
    generate(&cfg, out.path()).await.unwrap();
    let dir = out.path().join(bank_name(0));
    let store = FeatureStore::open(&dir).unwrap();
    store.apply().await.unwrap();
    let labels = dir.join("labels.parquet");
    let local = store
        .historical_features()
        .with_entities_file(&labels)
        .with_features(VIEWS)
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    assert!(local.num_rows() > 100, "{} rows", local.num_rows());

    let prepared = store
        .historical_features()
        .with_entities_file(&labels)
        .with_features(VIEWS)
        .unwrap()
        .with_portable_scans(true)
        .prepare()
        .await
        .unwrap();
    let (plan, _) = prepared.physical_plan().await.unwrap();
    let text = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    assert_eq!(text.matches("PointInTimeExec").count(), 6, "{text}");
    assert!(!text.contains("DeltaScanExec"), "{text}");
    let bytes = portable::to_bytes(plan).unwrap();
    let elsewhere = SessionContext::new();
    let decoded = portable::from_bytes(&bytes, &elsewhere.task_ctx()).unwrap();
    let batches = datafusion::physical_plan::collect(decoded, elsewhere.task_ctx())
        .await
        .unwrap();
    let remote = arrow::compute::concat_batches(&local.schema(), &batches).unwrap();
    assert_eq!(remote.num_rows(), local.num_rows());
    assert_eq!(remote, local, "same rows, same order, same types");
}
