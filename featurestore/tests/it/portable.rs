//! Plans that travel: a training set's physical plan with portable scans, encoded with
//! quiver's codec, decoded in a fresh session (no tables, no object stores registered:
//! as in another process), gives the local engine's rows, row for row.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::plan::portable;

use crate::common::*;

fn plan_text(plan: &Arc<dyn ExecutionPlan>) -> String {
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_set_plan_decoded_elsewhere_gives_the_local_rows() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let e = entities(&[
        (1, T0 - HOUR),
        (1, T0 + DAY),
        (1, T0 + 8 * DAY),
        (1, T0 + 10 * DAY),
        (2, T0 + 3 * DAY),
        (3, T0 + 3 * DAY),
    ]);
    let local = store
        .historical_features()
        .with_entities(vec![e.clone()])
        .with_features("user_txn_stats")
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    let prepared = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("user_txn_stats")
        .unwrap()
        .with_portable_scans(true)
        .prepare()
        .await
        .unwrap();
    let (plan, _) = prepared.physical_plan().await.unwrap();
    let text = plan_text(&plan);
    assert!(text.contains("DeltaFilesExec"), "{text}");
    assert!(!text.contains("DeltaScanExec"), "{text}");
    let bytes = portable::to_bytes(plan).unwrap();
    let elsewhere = SessionContext::new();
    let decoded = portable::from_bytes(&bytes, &elsewhere.task_ctx()).unwrap();
    let batches = datafusion::physical_plan::collect(decoded, elsewhere.task_ctx())
        .await
        .unwrap();
    let remote = arrow::compute::concat_batches(&local.schema(), &batches).unwrap();
    assert_eq!(remote, local, "same rows, same order, same types");
}
