//! apply / plan / versions: every version is kept and reads back identical.

use quiver_featurestore::{FeatureStore, KIND_VIEW};
use quiver_registry::ChangeKind;

use crate::common::{DAY, T0, entities, example_repo};

#[tokio::test]
async fn apply_change_apply_keeps_every_version() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();

    let first = store.apply().await.unwrap();
    assert_eq!(first.apply_id, 1);
    assert_eq!(
        first.plan.changes.len(),
        3,
        "entity, source, view added: {:?}",
        first.plan.changes
    );
    assert!(
        store.plan().await.unwrap().is_empty(),
        "plan right after apply shows no changes"
    );
    let v1 = store.view("user_txn_stats", None).unwrap();
    assert_eq!(v1.version, 1);

    // Change a window and add a feature.
    let yaml = crate::common::REPO_YAML.replace(
        "window: 7d }\n  - { name: amount_sum_7d",
        "window: 14d }\n  - { name: amount_sum_7d",
    ) + "  - { name: amount_max_30d,       agg: max(amount),               window: 30d }\n";
    repo.write("features.yaml", &yaml);
    let plan = store.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 1, "{}", plan.render());
    let change = &plan.changes[0];
    assert_eq!(
        (change.kind.as_str(), change.change, change.from_version),
        (KIND_VIEW, ChangeKind::Changed, Some(1))
    );
    let paths: Vec<&str> = change.fields.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"view.body.aggregates[txn_count_7d].window"),
        "{paths:?}"
    );
    assert!(
        change
            .schema
            .iter()
            .any(|s| s.feature == "amount_max_30d" && s.change == "added"),
        "{:?}",
        change.schema
    );
    // plan changed nothing
    assert_eq!(store.view("user_txn_stats", None).unwrap(), v1);

    let second = store.apply().await.unwrap();
    assert_eq!(second.apply_id, 2);
    assert!(store.plan().await.unwrap().is_empty());
    let v2 = store.view("user_txn_stats", None).unwrap();
    assert_eq!(v2.version, 2);
    assert_ne!(v2.hash, v1.hash);

    // The old version reads back identical, hash included.
    assert_eq!(store.view("user_txn_stats", Some(1)).unwrap(), v1);
    assert_eq!(store.view_history("user_txn_stats").unwrap().len(), 2);

    // A training set pinned to v1 uses v1's 7-day window; the current one 14 days.
    let e = entities(&[(1, T0 + 10 * DAY)]);
    let old = store
        .historical_features()
        .with_entities(vec![e.clone()])
        .with_features("user_txn_stats@1:txn_count_7d")
        .unwrap()
        .await
        .unwrap();
    let new = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("user_txn_stats:txn_count_7d")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        crate::common::column_strings(&old.concat().unwrap(), "txn_count_7d"),
        ["1"]
    );
    assert_eq!(
        crate::common::column_strings(&new.concat().unwrap(), "txn_count_7d"),
        ["3"],
        "14 days back from T0+10d reach T0"
    );
    assert_eq!(old.lineage.views[0].version, 1);
    assert_eq!(new.lineage.views[0].version, 2);
}

#[tokio::test]
async fn removing_a_view_keeps_its_versions() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let yaml = crate::common::REPO_YAML;
    let cut = yaml.find("---\nkind: FeatureView").unwrap();
    repo.write("features.yaml", &yaml[..cut]);
    let plan = store.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].change, ChangeKind::Removed);
    store.apply().await.unwrap();
    assert!(store.views().unwrap().is_empty());
    let err = store.view("user_txn_stats", None).unwrap_err().to_string();
    assert!(err.contains("was removed"), "{err}");
    assert_eq!(store.view("user_txn_stats", Some(1)).unwrap().version, 1);
}

#[tokio::test]
async fn description_only_changes_are_versions_without_schema_changes() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    repo.write(
        "features.yaml",
        &crate::common::REPO_YAML.replace("ttl: 45d", "ttl: 45d\ndescription: spend velocity"),
    );
    let plan = store.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert!(plan.changes[0].schema.is_empty());
    assert_eq!(plan.changes[0].fields[0].path, "view.description");
}
