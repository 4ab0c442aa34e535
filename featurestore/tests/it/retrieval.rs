//! Training sets from real Delta tables through the public API, checked against values
//! worked out by hand.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_featurestore::offline::OutputFormat;
use quiver_featurestore::{Error, FeatureStore};

use crate::common::{DAY, HOUR, T0, column_strings, entities, example_repo, ts_type};

#[tokio::test]
async fn windows_ttl_and_missing_keys_by_hand() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let e = entities(&[
        (1, T0 - HOUR),     // before any data
        (1, T0 + DAY),      // two rows in 7d, both devices
        (1, T0 + 8 * DAY),  // the row at T0+1d sits exactly on the window's open bound
        (1, T0 + 10 * DAY), // one row in 7d
        (1, T0 + 60 * DAY), // newest row 50 days old > ttl 45d
        (2, T0 + 3 * DAY),  // null device
        (3, T0 + 3 * DAY),  // key absent from the source
    ]);
    let set = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("user_txn_stats")
        .unwrap()
        .await
        .unwrap();
    let b = set.concat().unwrap();
    assert_eq!(
        column_strings(&b, "user_id"),
        ["1", "1", "1", "1", "1", "2", "3"],
        "entity order kept"
    );
    assert_eq!(
        column_strings(&b, "txn_count_7d"),
        ["", "2", "0", "1", "", "1", ""]
    );
    assert_eq!(
        column_strings(&b, "amount_sum_7d"),
        ["", "30.0", "0.0", "5.0", "", "7.5", ""]
    );
    assert_eq!(
        column_strings(&b, "distinct_devices_30d"),
        ["", "2", "2", "2", "", "0", ""]
    );
    assert_eq!(
        column_strings(&b, "user_txn_stats__status"),
        [
            "NOT_FOUND",
            "PRESENT",
            "PRESENT",
            "PRESENT",
            "EXPIRED",
            "PRESENT",
            "NOT_FOUND"
        ]
    );
    assert_eq!(
        column_strings(&b, "user_txn_stats__event_timestamp"),
        [
            "",
            "2024-01-02T00:00:00Z",
            "2024-01-02T00:00:00Z",
            "2024-01-11T00:00:00Z",
            "2024-01-11T00:00:00Z",
            "2024-01-03T00:00:00Z",
            ""
        ]
    );
    assert_eq!(set.lineage.views[0].version, 1);
    assert_eq!(set.lineage.tables[0].version, 0);
    assert_eq!(set.lineage.entity_rows, 7);
}

#[tokio::test]
async fn entities_from_csv_and_outputs_in_every_format() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let csv = repo.write("entities.csv", "user_id,event_timestamp\n1,2024-01-02T00:00:00Z\n2,2024-01-04T00:00:00Z\n9,2024-01-04T00:00:00Z\n");
    let set = store
        .historical_features()
        .with_entities_file(&csv)
        .with_features("user_txn_stats:txn_count_7d,user_txn_stats:amount_sum_7d")
        .unwrap()
        .await
        .unwrap();
    let b = set.concat().unwrap();
    assert_eq!(column_strings(&b, "txn_count_7d"), ["2", "1", ""]);
    assert_eq!(
        b.schema()
            .field_with_name("amount_sum_7d")
            .unwrap()
            .data_type(),
        &DataType::Float64
    );
    assert!(
        b.schema().field_with_name("distinct_devices_30d").is_err(),
        "only the asked-for features"
    );

    let pq = repo.path().join("out/train.parquet");
    set.write(&pq, OutputFormat::infer(&pq), false)
        .await
        .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&pq).unwrap(),
    )
    .unwrap();
    let lineage = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .find(|kv| kv.key == "quiver.lineage")
        .unwrap()
        .value
        .clone()
        .unwrap();
    assert!(lineage.contains("\"view\":\"user_txn_stats\""), "{lineage}");
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
    let again = set
        .write(&pq, OutputFormat::Parquet, false)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("exists"), "{again}");

    let csv_out = repo.path().join("out/train.csv");
    set.write(&csv_out, OutputFormat::infer(&csv_out), false)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&csv_out).unwrap().lines().count(),
        4
    );

    let delta_out = repo.path().join("out/train_delta");
    assert_eq!(OutputFormat::infer(&delta_out), OutputFormat::Delta);
    set.write(&delta_out, OutputFormat::Delta, false)
        .await
        .unwrap();
    let url = quiver_featurestore::delta::table_url(repo.path(), "out/train_delta").unwrap();
    let t = quiver_featurestore::delta::open(&url, None).await.unwrap();
    assert_eq!(t.num_rows, Some(3));
}

/// Daily snapshots of precomputed values: served as of each time within the ttl.
#[tokio::test]
async fn column_views_serve_the_newest_row_within_ttl() {
    let repo = crate::common::Repo::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("credit_score", DataType::Int64, true),
        Field::new("segment", DataType::Utf8, true),
    ]));
    let rows = [
        (1, T0, Some(700), "retail"),
        (1, T0 + DAY, Some(650), "retail"),
        (1, T0 + 3 * DAY, None, "private"),
        (2, T0, Some(800), "sme"),
    ];
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .unwrap();
    repo.delta("data/snapshots", vec![batch]).await;
    repo.write(
        "f.yaml",
        "kind: Entity\nname: user\njoin_keys: [user_id]\n---\nkind: Source\nname: snapshots\ndelta: data/snapshots\ntimestamp: ts\n---\n\
         kind: FeatureView\nname: risk\nentity: user\nsource: snapshots\nttl: 2d\nfeatures:\n  - credit_score\n  - { name: client_segment, column: segment }\n",
    );
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let e = entities(&[
        (1, T0 + 12 * HOUR),
        (1, T0 + 2 * DAY),
        (1, T0 + 3 * DAY),
        (1, T0 + 6 * DAY),
        (2, T0 + 2 * DAY),
        (2, T0 + 2 * DAY + 1),
    ]);
    let set = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("risk")
        .unwrap()
        .await
        .unwrap();
    let b = set.concat().unwrap();
    // A null in the newest row is served as null: the row is the unit of a snapshot.
    assert_eq!(
        column_strings(&b, "credit_score"),
        ["700", "650", "", "", "800", ""]
    );
    assert_eq!(
        column_strings(&b, "client_segment"),
        ["retail", "retail", "private", "", "sme", ""]
    );
    assert_eq!(
        column_strings(&b, "risk__status"),
        [
            "PRESENT", "PRESENT", "PRESENT", "EXPIRED", "PRESENT", "EXPIRED"
        ]
    );
}

#[tokio::test]
async fn sql_views_use_the_same_point_in_time_rule() {
    let repo = example_repo().await;
    repo.write(
        "sql.yaml",
        "kind: FeatureView\nname: last_txn\nentity: user\nsource: transactions\nttl: 5d\n\
         sql: |\n  SELECT user_id, ts, amount * 2 AS doubled, upper(device_id) AS device FROM transactions WHERE amount > 6\n",
    );
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let v = store.view("last_txn", None).unwrap();
    let names: Vec<&str> = v
        .definition
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["doubled", "device"]);
    let e = entities(&[
        (1, T0),
        (1, T0 + 2 * DAY),
        (1, T0 + 10 * DAY),
        (2, T0 + 2 * DAY),
    ]);
    let set = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("last_txn")
        .unwrap()
        .await
        .unwrap();
    let b = set.concat().unwrap();
    // The 5.0 row at T0+10d is filtered out by the SQL; T0+1d is 9 days old by then.
    assert_eq!(column_strings(&b, "doubled"), ["20.0", "40.0", "", "15.0"]);
    assert_eq!(column_strings(&b, "device"), ["A", "B", "", ""]);
    assert_eq!(
        column_strings(&b, "last_txn__status"),
        ["PRESENT", "PRESENT", "EXPIRED", "PRESENT"]
    );
}

#[tokio::test]
async fn several_views_and_name_collisions() {
    let repo = example_repo().await;
    repo.write(
        "more.yaml",
        "kind: FeatureView\nname: user_txn_totals\nentity: user\nsource: transactions\nfeatures:\n  - { name: txn_count_7d, agg: count, window: 7d }\n  - { name: amount_avg, agg: avg(amount) }\n",
    );
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let e = entities(&[(1, T0 + 10 * DAY)]);
    let err = store
        .historical_features()
        .with_entities(vec![e.clone()])
        .with_features("user_txn_stats,user_txn_totals")
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("comes from both") && err.to_string().contains("--full-names"),
        "{err}"
    );
    let set = store
        .historical_features()
        .with_entities(vec![e])
        .with_features("user_txn_stats:txn_count_7d,user_txn_totals")
        .unwrap()
        .with_full_feature_names(true)
        .await
        .unwrap();
    let b = set.concat().unwrap();
    assert_eq!(column_strings(&b, "user_txn_stats__txn_count_7d"), ["1"]);
    assert_eq!(column_strings(&b, "user_txn_totals__txn_count_7d"), ["1"]);
    assert_eq!(
        column_strings(&b, "user_txn_totals__amount_avg"),
        ["11.666666666666666"]
    );
    assert_eq!(set.lineage.views.len(), 2);
    assert_eq!(
        set.lineage.tables.len(),
        1,
        "one table, opened once, same version for both views"
    );
}

#[tokio::test]
async fn bad_requests_are_clear() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let e = entities(&[(1, T0)]);
    let run = |refs: &'static str, batch: RecordBatch| {
        let store = store.clone();
        async move {
            store
                .historical_features()
                .with_entities(vec![batch])
                .with_features(refs)?
                .await
                .map(|_| ())
        }
    };
    let err = run("user_txn_stat", e.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. })
            && err.to_string().contains("did you mean `user_txn_stats`?"),
        "{err}"
    );
    let err = run("user_txn_stats:txn_count_7", e.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no feature `txn_count_7`")
            && err.to_string().contains("txn_count_7d"),
        "{err}"
    );
    let err = run("user_txn_stats@9", e.clone()).await.unwrap_err();
    assert!(err.to_string().contains("no version 9"), "{err}");
    let err = run("user_txn_stats@x", e.clone()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    let no_key = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "event_timestamp",
            ts_type(),
            false,
        )])),
        vec![Arc::new(
            TimestampMicrosecondArray::from(vec![T0]).with_timezone("UTC"),
        )],
    )
    .unwrap();
    let err = run("user_txn_stats", no_key).await.unwrap_err();
    assert!(
        err.to_string().contains("lacks column(s) `user_id`"),
        "{err}"
    );
    let bad_time = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Float64Array::from(vec![1.5])),
        ],
    )
    .unwrap();
    let err = run("user_txn_stats", bad_time).await.unwrap_err();
    assert!(err.to_string().contains("is not a time"), "{err}");
    let str_keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["1", "oops"])),
            Arc::new(TimestampMicrosecondArray::from(vec![T0 + DAY, T0]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    let err = run("user_txn_stats", str_keys).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("cast"), "{err}");
}

#[tokio::test]
async fn values_as_of_now_match_the_training_set_rule() {
    let repo = example_repo().await;
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let t = T0 + 10 * DAY;
    let batches = store.values_as_of("user_txn_stats", t).await.unwrap();
    let schema = batches[0].schema();
    let b = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let sorted =
        arrow::compute::sort_to_indices(b.column_by_name("user_id").unwrap(), None, None).unwrap();
    let b = arrow::compute::take_record_batch(&b, &sorted).unwrap();
    assert_eq!(column_strings(&b, "user_id"), ["1", "2"]);
    assert_eq!(column_strings(&b, "txn_count_7d"), ["1", "0"]);
    assert_eq!(column_strings(&b, "amount_sum_7d"), ["5.0", "0.0"]);
    let training = store
        .historical_features()
        .with_entities(vec![entities(&[(1, t), (2, t)])])
        .with_features("user_txn_stats")
        .unwrap()
        .await
        .unwrap()
        .concat()
        .unwrap();
    for col in [
        "txn_count_7d",
        "amount_sum_7d",
        "distinct_devices_30d",
        "user_txn_stats__status",
    ] {
        assert_eq!(
            column_strings(&b, col),
            column_strings(&training, col),
            "{col}: online values = offline values"
        );
    }
}

#[tokio::test]
async fn integer_sums_that_overflow_are_errors_not_clamped() {
    let repo = crate::common::Repo::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("cents", DataType::Int64, false),
    ]));
    let big = i64::MAX / 2 + 1;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 1, 2])),
            Arc::new(TimestampMicrosecondArray::from(vec![T0, T0 + HOUR, T0]).with_timezone("UTC")),
            Arc::new(Int64Array::from(vec![big, big, 5])),
        ],
    )
    .unwrap();
    repo.delta("data/t", vec![batch]).await;
    repo.write(
        "f.yaml",
        "kind: Entity\nname: user\njoin_keys: [user_id]\n---\nkind: Source\nname: t\ndelta: data/t\ntimestamp: ts\n---\n\
         kind: FeatureView\nname: money\nentity: user\nsource: t\nfeatures:\n  - { name: total, agg: sum(cents) }\n",
    );
    let store = FeatureStore::open(repo.path()).unwrap();
    store.apply().await.unwrap();
    let ok = store
        .historical_features()
        .with_entities(vec![entities(&[(2, T0 + DAY)])])
        .with_features("money")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(column_strings(&ok.concat().unwrap(), "total"), ["5"]);
    let err = store
        .historical_features()
        .with_entities(vec![entities(&[(1, T0 + DAY)])])
        .with_features("money")
        .unwrap()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not fit in Int64"), "{err}");
}
