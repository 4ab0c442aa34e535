//! Ballista runs a task over a slice of a stage's partitions and restricts the
//! stage's leaves to that slice itself (its scheduler's `restrict_plan_to_partitions`),
//! for the leaves it knows. A portable Delta scan must read every row exactly once
//! whichever slices the tasks get: found when pull-staged scheduling split a scan's
//! partitions over two executors and a training set came back with rows counted
//! twice (push-staged happened to bind whole stages to one task).

use std::sync::Arc;

use ballista_scheduler::state::task_builder::restrict_plan_to_partitions;
use datafusion::prelude::{SessionConfig, SessionContext};
use quiver_featurestore::plan::portable::PortableDeltaTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portable_scan_reads_each_row_once_whatever_slice_a_task_runs() {
    let dir = tempfile::tempdir().unwrap();
    crate::cluster::write_table(dir.path(), 4).await;
    let url = quiver_featurestore::delta::table_url(dir.path(), "data/transactions").unwrap();
    let open = quiver_featurestore::delta::open(url, None).await.unwrap();
    let table = PortableDeltaTable::new(&open, "transactions", Vec::new()).unwrap();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
    ctx.register_table("t", Arc::new(table)).unwrap();
    let plan = ctx
        .sql("SELECT user_id FROM t")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let total: usize = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(total, 1600);
    // One task per partition, as a scheduler splitting the stage over executors
    // hands them out: each runs its restricted plan's partitions.
    let mut read = 0;
    for p in 0..plan.properties().output_partitioning().partition_count() {
        let task = restrict_plan_to_partitions(plan.clone(), &[p]).unwrap();
        for local in 0..task.properties().output_partitioning().partition_count() {
            let stream = task.execute(local, ctx.task_ctx()).unwrap();
            let batches: Vec<_> = futures::TryStreamExt::try_collect(stream).await.unwrap();
            read += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    assert_eq!(read, total, "rows read over every task's slice");
}
