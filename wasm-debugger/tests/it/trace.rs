//! Replays against a real repo: every step kind recorded, UDF calls see only the
//! entity's rows, and each verdict where it belongs.

use deltalake::protocol::SaveMode;
use quiver_featurestore::FeatureStore;
use quiver_featurestore::explain::{ExplainRequest, StepKind, Verdict, explain};

use crate::common::{DAY, HOUR, T0, UNTIL, repo, rows, write};

#[tokio::test]
async fn a_replay_records_every_step_and_matches_the_online_value() {
    let dir = repo().await;
    let store = FeatureStore::open(dir.path()).unwrap();
    for view in ["spend", "novelty"] {
        let t = explain(
            &store,
            &ExplainRequest::new(view, [("user_id", "7")], UNTIL).with_all_steps(),
        )
        .await
        .unwrap();
        assert_eq!(t.verdict, Verdict::Match, "{view}: {}", t.reason);
        let kinds: Vec<StepKind> = t.steps.iter().map(|s| s.kind).collect();
        assert_eq!(kinds[0], StepKind::Source);
        assert!(
            kinds.iter().filter(|k| **k == StepKind::Stage).count() >= 3,
            "{view}: {kinds:?}"
        );
        assert_eq!(
            &kinds[kinds.len() - 3..],
            &[StepKind::Decision, StepKind::Value, StepKind::Online]
        );
        // The source step holds exactly this entity's rows.
        let src = t.steps[0].batch.as_ref().unwrap();
        assert_eq!(t.steps[0].rows, src.num_rows());
        assert_eq!(src.num_rows(), rows(20, T0, UNTIL).num_rows() / 20);
        assert_eq!(t.tables[0].version, 0);
        assert!(
            t.command.contains(&format!("{view}@1"))
                && t.command.contains("--table-version transactions=0")
        );
        if view == "novelty" {
            let calls: Vec<_> = t
                .steps
                .iter()
                .filter(|s| s.kind == StepKind::UdfCall)
                .collect();
            assert!(!calls.is_empty());
            let call_rows: usize = calls.iter().map(|c| c.rows).sum();
            assert_eq!(
                call_rows, t.steps[0].rows,
                "the UDF saw this entity's rows only"
            );
            assert!(calls[0].detail["fuel"].as_u64().unwrap() > 0);
            assert!(calls[0].output.is_some());
            assert_eq!(t.udfs.len(), 1);
        } else {
            let d = &t.steps[t.steps.len() - 3].detail;
            assert!(d["n_1d"].as_str().unwrap().contains("row(s) in ("), "{d}");
            assert!(
                d["ttl"].as_str().unwrap().contains("within the TTL of 30d"),
                "{d}"
            );
        }
    }
}

#[tokio::test]
async fn verdicts_name_what_is_different() {
    let dir = repo().await;
    let root = dir.path();

    // Rows after the materialization, up to the as-of time: STALE.
    write(root, rows(3, UNTIL + HOUR, UNTIL + DAY), SaveMode::Append).await;
    let store = FeatureStore::open(root).unwrap();
    let t = explain(
        &store,
        &ExplainRequest::new("spend", [("user_id", "2")], UNTIL + DAY).with_all_steps(),
    )
    .await
    .unwrap();
    assert_eq!(t.verdict, Verdict::Stale, "{}", t.reason);
    assert!(
        t.reason
            .contains("source row(s) of this entity came after it"),
        "{}",
        t.reason
    );

    // A key the online store never saw: MISSING.
    drop(store);
    let mut late = rows(25, UNTIL - DAY, UNTIL);
    late = arrow::compute::filter_record_batch(
        &late,
        &arrow::compute::kernels::cmp::gt(
            late.column(0),
            &arrow::array::Int64Array::new_scalar(20),
        )
        .unwrap(),
    )
    .unwrap();
    write(root, late, SaveMode::Append).await;
    let store = FeatureStore::open(root).unwrap();
    let t = explain(
        &store,
        &ExplainRequest::new("spend", [("user_id", "23")], UNTIL).with_all_steps(),
    )
    .await
    .unwrap();
    assert_eq!(t.verdict, Verdict::Missing, "{}", t.reason);

    // An as-of time before the entity's newest materialized row: the online value
    // comes from after it.
    let t = explain(
        &store,
        &ExplainRequest::new("novelty", [("user_id", "4")], UNTIL - 2 * DAY).with_all_steps(),
    )
    .await
    .unwrap();
    assert_eq!(t.verdict, Verdict::CreatedAfterAsOf, "{}", t.reason);

    // The table rewritten under the online store: the replay reads other values.
    drop(store);
    let mut changed = rows(20, T0, UNTIL);
    let amount: arrow::array::ArrayRef =
        std::sync::Arc::new(arrow::array::Float64Array::from_iter_values(
            (0..changed.num_rows()).map(|i| i as f64 * 1000.0),
        ));
    let mut cols = changed.columns().to_vec();
    cols[2] = amount;
    changed = arrow::array::RecordBatch::try_new(changed.schema(), cols).unwrap();
    let v = write(root, changed, SaveMode::Overwrite).await;
    let store = FeatureStore::open(root).unwrap();
    let t = explain(
        &store,
        &ExplainRequest::new("spend", [("user_id", "5")], UNTIL).with_all_steps(),
    )
    .await
    .unwrap();
    assert_eq!(t.verdict, Verdict::ValueDiff, "{}", t.reason);
    assert!(t.reason.contains("feature `sum_3d`"), "{}", t.reason);
    // Pinned to the version the online store was built from, it matches again.
    let mut req = ExplainRequest::new("spend", [("user_id", "5")], UNTIL).with_all_steps();
    req.table_versions.insert("transactions".into(), 0);
    let t = explain(&store, &req).await.unwrap();
    assert_eq!(t.verdict, Verdict::Match, "{}", t.reason);
    assert!(v > 0);

    // The entity's rows rewritten 40 days into the past: the replay finds them past the
    // TTL while the online store (built from the old version) still serves a value.
    drop(store);
    let old = rows(20, T0, UNTIL);
    let shifted: Vec<i64> = {
        let users = old
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let ts = old
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        (0..old.num_rows())
            .map(|i| {
                if users.value(i) == 6 {
                    ts.value(i) - 40 * DAY
                } else {
                    ts.value(i)
                }
            })
            .collect()
    };
    let mut cols = old.columns().to_vec();
    cols[1] = std::sync::Arc::new(
        arrow::array::TimestampMicrosecondArray::from(shifted).with_timezone("UTC"),
    );
    write(
        root,
        arrow::array::RecordBatch::try_new(old.schema(), cols).unwrap(),
        SaveMode::Overwrite,
    )
    .await;
    let store = FeatureStore::open(root).unwrap();
    let t = explain(
        &store,
        &ExplainRequest::new("spend", [("user_id", "6")], UNTIL).with_all_steps(),
    )
    .await
    .unwrap();
    assert_eq!(t.verdict, Verdict::ExpiredByTtl, "{}", t.reason);
    assert!(t.reason.contains("past the TTL of 30d"), "{}", t.reason);

    // Bad requests name what is wrong.
    let err = explain(
        &store,
        &ExplainRequest::new("spend", [("account", "5")], UNTIL).with_all_steps(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("keyed by user_id"), "{err}");
    let err = explain(
        &store,
        &ExplainRequest::new("nope", [("user_id", "5")], UNTIL).with_all_steps(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no applied view `nope`"), "{err}");
}
