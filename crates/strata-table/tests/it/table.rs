use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use strata_table::{
    Catalog, CmpOp, Error, Operation, Predicate, TableOptions, VacuumPolicy, VersionSpec,
    WriteOutcome,
};
use strata_types::Value;

use crate::common::*;

async fn read(table: &strata_table::Table, v: VersionSpec) -> Vec<(String, i64, Option<u64>)> {
    let snap = table.snapshot(&v).await.unwrap();
    rows_of(&snap.read_all().await.unwrap())
}

#[tokio::test]
async fn upserts_replace_rows_and_versions_time_travel() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 4, true)).await.unwrap();
    assert_eq!(t.head_version().await.unwrap(), 1);
    let v2 = put(
        &t,
        &[
            ("a", 1, Some(1.0)),
            ("b", 1, Some(2.0)),
            ("a", 2, Some(3.0)),
        ],
    )
    .await;
    // Within a batch the last duplicate wins; across versions an upsert replaces.
    let v3 = put(
        &t,
        &[("a", 1, Some(10.0)), ("a", 1, Some(11.0)), ("c", 5, None)],
    )
    .await;
    assert_eq!((v2, v3), (2, 3));
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[
            ("a", 1, Some(11.0)),
            ("a", 2, Some(3.0)),
            ("b", 1, Some(2.0)),
            ("c", 5, None)
        ])
    );
    assert_eq!(
        read(&t, VersionSpec::Version(2)).await,
        expect(&[
            ("a", 1, Some(1.0)),
            ("a", 2, Some(3.0)),
            ("b", 1, Some(2.0))
        ])
    );
    assert!(read(&t, VersionSpec::Version(1)).await.is_empty());
    let versions = t.list_versions().await.unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[2].operation, Operation::Upsert);
    assert_eq!((versions[2].rows_added, versions[2].rows_removed), (2, 1));
    // Time travel by timestamp: the latest version at or before t.
    let ts2 = versions[1].timestamp_ms;
    let at = t.resolve(&VersionSpec::Timestamp(ts2)).await.unwrap();
    assert!(at >= 2 && versions[at as usize - 1].timestamp_ms <= ts2);
    assert!(matches!(
        t.resolve(&VersionSpec::Timestamp(versions[0].timestamp_ms - 1))
            .await,
        Err(Error::NoVersionAtTime { .. })
    ));
    assert!(matches!(
        t.snapshot(&VersionSpec::Version(9)).await,
        Err(Error::VersionNotFound {
            version: 9,
            head: 3,
            ..
        })
    ));
}

#[tokio::test]
async fn append_only_keeps_duplicates() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("log", 2, false)).await.unwrap();
    put(&t, &[("a", 1, Some(1.0)), ("a", 1, Some(1.0))]).await;
    put(&t, &[("a", 1, Some(1.0))]).await;
    assert_eq!(read(&t, VersionSpec::Head).await.len(), 3);
}

#[tokio::test]
async fn rollback_restores_content_and_can_be_rolled_back() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 3, true)).await.unwrap();
    put(&t, &[("a", 1, Some(1.0)), ("b", 2, Some(2.0))]).await; // v2
    put(&t, &[("a", 1, Some(9.0)), ("z", 9, Some(9.0))]).await; // v3: a bad load
    let rb = t.rollback(&VersionSpec::Version(2)).await.unwrap();
    assert_eq!(rb.version, 4);
    assert_eq!(rb.operation, Operation::Rollback { to: 2 });
    assert_eq!((rb.rows_added, rb.rows_removed), (1, 2));
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        read(&t, VersionSpec::Version(2)).await
    );
    // Writes after a rollback build on the rolled-back content.
    put(&t, &[("a", 1, Some(5.0))]).await; // v5
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[("a", 1, Some(5.0)), ("b", 2, Some(2.0))])
    );
    // And the rollback itself can be undone.
    t.rollback(&VersionSpec::Version(3)).await.unwrap();
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        read(&t, VersionSpec::Version(3)).await
    );
    assert!(matches!(
        t.rollback(&VersionSpec::Version(42)).await,
        Err(Error::VersionNotFound { .. })
    ));
}

#[tokio::test]
async fn tags_name_versions() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 1, true)).await.unwrap();
    put(&t, &[("a", 1, Some(1.0))]).await;
    t.create_tag("release-1", &VersionSpec::Head).await.unwrap();
    put(&t, &[("a", 2, Some(1.0))]).await;
    assert_eq!(
        read(&t, VersionSpec::Tag("release-1".into())).await,
        expect(&[("a", 1, Some(1.0))])
    );
    assert!(matches!(
        t.create_tag("release-1", &VersionSpec::Head).await,
        Err(Error::TagExists { .. })
    ));
    assert!(t.create_tag("bad/name", &VersionSpec::Head).await.is_err());
    t.rollback(&VersionSpec::Tag("release-1".into()))
        .await
        .unwrap();
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[("a", 1, Some(1.0))])
    );
    assert_eq!(t.list_tags().await.unwrap().len(), 1);
    t.delete_tag("release-1").await.unwrap();
    assert!(matches!(
        t.delete_tag("release-1").await,
        Err(Error::TagNotFound { .. })
    ));
    assert!(matches!(
        t.snapshot(&VersionSpec::Tag("release-1".into())).await,
        Err(Error::TagNotFound { .. })
    ));
}

/// Keys found by reading one version are deleted only in the version right after it:
/// a row written in between under such a key was never looked at.
#[tokio::test]
async fn a_key_delete_pinned_to_a_version_refuses_a_moved_head() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 4, true)).await.unwrap();
    put(&t, &[("a", 1, Some(1.0)), ("b", 1, Some(2.0))]).await;
    let seen = t.head_version().await.unwrap();
    // Another writer replaces ("a", 1) after the keys were found.
    put(&t, &[("a", 1, Some(9.0))]).await;
    let keys = kv_batch(&[("a", 1, None)]).project(&[0, 1]).unwrap();
    let err = t.delete_keys_at(&keys, Some(seen)).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        read(&t, VersionSpec::Head).await.len(),
        2,
        "nothing deleted"
    );
    let head = t.head_version().await.unwrap();
    let d = t.delete_keys_at(&keys, Some(head)).await.unwrap();
    assert_eq!((d.version, d.rows_removed), (head + 1, 1));
}

/// `merge_at`: upserts and key deletes in one version (one deletion vector when both hit
/// one segment), refused on a moved head, and a key both written and deleted refused.
#[tokio::test]
async fn a_merge_upserts_and_deletes_in_one_version() {
    let cat = catalog(TableOptions::default());
    // One shard: every row in the same segment.
    let t = cat.create_table(kv_spec("w", 1, true)).await.unwrap();
    put(
        &t,
        &[
            ("a", 1, Some(1.0)),
            ("a", 2, Some(2.0)),
            ("a", 3, Some(3.0)),
        ],
    )
    .await;
    let base = t.head_version().await.unwrap();
    let rows = kv_batch(&[("a", 1, Some(10.0)), ("b", 1, Some(4.0))]);
    let gone = kv_batch(&[("a", 2, None)]).project(&[0, 1]).unwrap();
    let info = t
        .merge_at(std::slice::from_ref(&rows), &gone, base)
        .await
        .unwrap();
    assert_eq!(info.version, base + 1);
    assert_eq!(info.operation, Operation::Merge);
    assert_eq!(info.rows_removed, 2, "one replaced, one deleted");
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[
            ("a", 1, Some(10.0)),
            ("a", 3, Some(3.0)),
            ("b", 1, Some(4.0))
        ])
    );
    // Computed at an older version: a conflict, nothing committed.
    let err = t
        .merge_at(std::slice::from_ref(&rows), &gone, base)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(t.head_version().await.unwrap(), base + 1);
    let both = kv_batch(&[("a", 3, None)]).project(&[0, 1]).unwrap();
    let err = t
        .merge_at(&[kv_batch(&[("a", 3, Some(0.0))])], &both, base + 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("both written and deleted"),
        "{err}"
    );
    let log = cat.create_table(kv_spec("log", 1, false)).await.unwrap();
    let err = log.merge_at(&[], &both, 1).await.unwrap_err();
    assert!(err.to_string().contains("no row key"), "{err}");
}

#[tokio::test]
async fn deletes_by_key_and_predicate() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 4, true)).await.unwrap();
    put(
        &t,
        &[
            ("a", 1, Some(1.0)),
            ("a", 2, Some(2.0)),
            ("b", 1, Some(3.0)),
            ("c", 1, None),
        ],
    )
    .await;
    let keys = kv_batch(&[("a", 2, None), ("nope", 7, None)]);
    let keys = keys.project(&[0, 1]).unwrap();
    let d = t.delete_keys(&keys).await.unwrap();
    assert_eq!(d.rows_removed, 1);
    let d = t
        .delete_where(&Predicate::Or(vec![
            Predicate::cmp("v", CmpOp::GtEq, 3.0),
            Predicate::IsNull("v".into()),
        ]))
        .await
        .unwrap();
    assert_eq!(d.rows_removed, 2);
    assert!(matches!(d.operation, Operation::Delete { .. }));
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[("a", 1, Some(1.0))])
    );
    // Deleted rows stay visible at older versions.
    assert_eq!(read(&t, VersionSpec::Version(2)).await.len(), 4);
    // Bad predicates are clear errors.
    let err = t.delete_where(&Predicate::eq("nope", 1)).await.unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let err = t.delete_where(&Predicate::eq("t", "x")).await.unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    // Re-inserting a deleted key works.
    put(&t, &[("a", 2, Some(7.0))]).await;
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[("a", 1, Some(1.0)), ("a", 2, Some(7.0))])
    );
}

#[tokio::test]
async fn add_column_reads_old_segments_as_null_and_old_versions_keep_old_schema() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 2, true)).await.unwrap();
    put(&t, &[("a", 1, Some(1.0))]).await;
    let info = t
        .add_column(Field::new("note", DataType::Utf8, true))
        .await
        .unwrap();
    assert_eq!(info.version, 3);
    let head = t.snapshot(&VersionSpec::Head).await.unwrap();
    assert_eq!(head.schema().fields().len(), 4);
    let batch = head.read_all().await.unwrap();
    assert_eq!(batch.column(3).null_count(), 1);
    let old = t.snapshot(&VersionSpec::Version(2)).await.unwrap();
    assert_eq!(old.schema().fields().len(), 3);
    // Writes now need the new column.
    let err = t
        .write(&[kv_batch(&[("a", 2, None)])], BTreeMap::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"note\""), "{err}");
    assert!(
        t.add_column(Field::new("NOTE", DataType::Utf8, true))
            .await
            .is_err()
    );
    assert!(
        t.add_column(Field::new("x", DataType::Int64, false))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn schema_mismatches_are_rejected_and_change_nothing() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 2, true)).await.unwrap();
    let good = kv_batch(&[("a", 1, Some(1.0))]);
    let missing = good.project(&[0, 1]).unwrap();
    let err = t.write(&[missing], BTreeMap::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::SchemaMismatch(_)) && err.to_string().contains("\"v\""),
        "{err}"
    );
    let wrong = arrow::record_batch::RecordBatch::try_from_iter(vec![
        ("k", good.column(0).clone()),
        (
            "t",
            arrow::compute::cast(good.column(1), &DataType::Int32).unwrap(),
        ),
        ("v", good.column(2).clone()),
    ])
    .unwrap();
    let err = t.write(&[wrong], BTreeMap::new()).await.unwrap_err();
    assert!(err.to_string().contains("expects Int64"), "{err}");
    let extra = arrow::record_batch::RecordBatch::try_from_iter(vec![
        ("k", good.column(0).clone()),
        ("t", good.column(1).clone()),
        ("v", good.column(2).clone()),
        ("x", good.column(2).clone()),
    ])
    .unwrap();
    assert!(t.write(&[extra], BTreeMap::new()).await.is_err());
    assert_eq!(t.head_version().await.unwrap(), 1);
}

#[tokio::test]
async fn producer_marks_make_writes_idempotent() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 2, false)).await.unwrap();
    let marks = |s| BTreeMap::from([("p1".to_string(), s)]);
    let b = kv_batch(&[("a", 1, Some(1.0))]);
    assert!(matches!(
        t.write(std::slice::from_ref(&b), marks(1)).await.unwrap(),
        WriteOutcome::Committed(_)
    ));
    assert_eq!(
        t.write(std::slice::from_ref(&b), marks(1)).await.unwrap(),
        WriteOutcome::Duplicate { head: 2 }
    );
    assert!(matches!(
        t.write(std::slice::from_ref(&b), marks(2)).await.unwrap(),
        WriteOutcome::Committed(_)
    ));
    assert_eq!(read(&t, VersionSpec::Head).await.len(), 2);
    // Marks survive a rollback: a resent batch stays a duplicate.
    t.rollback(&VersionSpec::Version(1)).await.unwrap();
    assert!(matches!(
        t.write(&[b], marks(2)).await.unwrap(),
        WriteOutcome::Duplicate { .. }
    ));
    assert_eq!(t.head().await.unwrap().producers["p1"], 2);
}

#[tokio::test]
async fn compaction_keeps_content_and_merges_segments() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 2, true)).await.unwrap();
    for i in 0..6 {
        put(
            &t,
            &[
                ("a", i, Some(i as f64)),
                ("b", i, None),
                ("a", 0, Some(100.0 + i as f64)),
            ],
        )
        .await;
    }
    t.delete_where(&Predicate::eq("k", "b")).await.unwrap();
    let before = read(&t, VersionSpec::Head).await;
    let segs_before = t.head().await.unwrap().segment_count();
    let info = t
        .compact()
        .await
        .unwrap()
        .expect("there is something to compact");
    assert!(matches!(info.operation, Operation::Compact { .. }));
    let head = t.head().await.unwrap();
    assert!(
        head.segment_count() < segs_before,
        "{} !< {segs_before}",
        head.segment_count()
    );
    assert!(head.live_segments().all(|s| s.deleted.is_none()));
    assert_eq!(read(&t, VersionSpec::Head).await, before);
    assert!(t.compact().await.unwrap().is_none());
}

#[tokio::test]
async fn vacuum_removes_old_versions_and_blobs_but_keeps_tags() {
    let cat = catalog(TableOptions {
        blob_grace_ms: 300,
        checkpoint_interval: 4,
        ..TableOptions::default()
    });
    let t = cat.create_table(kv_spec("w", 1, true)).await.unwrap();
    for i in 0..6 {
        put(&t, &[("a", 0, Some(i as f64))]).await; // v2..v7, each replaces the row
    }
    t.create_tag("keep", &VersionSpec::Version(3))
        .await
        .unwrap();
    let rolled = t.rollback(&VersionSpec::Version(2)).await.unwrap(); // v8 references v2's segment
    assert_eq!(rolled.version, 8);
    let blobs_before = t.blobs().list("").await.unwrap().len();
    // Unreferenced blobs go only once older than the grace period.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let report = t
        .vacuum(&VacuumPolicy {
            keep_last: Some(2),
            keep_within_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(report.version, Some(9));
    assert_eq!(
        report.oldest_retained, 7,
        "keep_last 2 keeps versions 7 and 8"
    );
    assert_eq!(
        report.versions_removed, 5,
        "1, 2, 4, 5 and 6 go, tagged 3 stays: {report:?}"
    );
    assert!(t.blobs().list("").await.unwrap().len() < blobs_before);
    // Retained versions, including the tagged one and the rollback, read correctly.
    assert_eq!(
        read(&t, VersionSpec::Head).await,
        expect(&[("a", 0, Some(0.0))])
    );
    assert_eq!(
        read(&t, VersionSpec::Version(8)).await,
        expect(&[("a", 0, Some(0.0))])
    );
    assert_eq!(
        read(&t, VersionSpec::Tag("keep".into())).await,
        expect(&[("a", 0, Some(1.0))])
    );
    // Vacuumed versions are clear errors, for reads and rollbacks alike.
    for v in [1, 2, 4, 6] {
        let err = t.rollback(&VersionSpec::Version(v)).await.unwrap_err();
        assert!(
            matches!(err, Error::VersionVacuumed { oldest: 7, .. }),
            "{err}"
        );
        assert!(t.snapshot(&VersionSpec::Version(v)).await.is_err());
    }
    assert!(matches!(
        t.create_tag("late", &VersionSpec::Version(5)).await,
        Err(Error::VersionVacuumed { .. })
    ));
    // A fresh handle (no cache) reads the head and the tag through checkpoints.
    let fresh = cat.open_table("w").await.unwrap();
    assert_eq!(
        read(&fresh, VersionSpec::Head).await,
        expect(&[("a", 0, Some(0.0))])
    );
    assert_eq!(
        read(&fresh, VersionSpec::Version(3)).await,
        expect(&[("a", 0, Some(1.0))])
    );
    // Head is never vacuumed, and a second vacuum with nothing to do commits nothing.
    let again = t
        .vacuum(&VacuumPolicy {
            keep_last: Some(100),
            keep_within_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(again.version, None);
    let fresh = cat.open_table("w").await.unwrap();
    assert_eq!(
        read(&fresh, VersionSpec::Head).await,
        expect(&[("a", 0, Some(0.0))])
    );
}

#[tokio::test]
async fn many_versions_read_through_checkpoints() {
    let cat = catalog(TableOptions {
        checkpoint_interval: 10,
        ..TableOptions::default()
    });
    let t = cat.create_table(kv_spec("w", 2, true)).await.unwrap();
    for i in 0..55 {
        put(&t, &[("a", i, Some(i as f64))]).await;
    }
    let fresh = cat.open_table("w").await.unwrap();
    assert_eq!(fresh.head_version().await.unwrap(), 56);
    assert_eq!(read(&fresh, VersionSpec::Head).await.len(), 55);
    assert_eq!(read(&fresh, VersionSpec::Version(23)).await.len(), 22);
}

#[tokio::test]
async fn concurrent_writers_each_get_distinct_versions() {
    let cat = catalog(TableOptions::default());
    let t = cat.create_table(kv_spec("w", 4, true)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let cat = cat.clone();
        tasks.push(tokio::spawn(async move {
            // Separate handles: no shared cache, conflicts go through the store.
            let t = cat.open_table("w").await.unwrap();
            let mut versions = Vec::new();
            for i in 0..5 {
                let key = format!("w{w}");
                versions.push(
                    put(
                        &t,
                        &[(key.as_str(), i, Some(1.0)), ("shared", i, Some(w as f64))],
                    )
                    .await,
                );
            }
            versions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (2..=21).collect::<Vec<_>>());
    let rows = read(&t, VersionSpec::Head).await;
    assert_eq!(
        rows.len(),
        20 + 5,
        "upserts of shared keys never duplicate rows"
    );
}

#[tokio::test]
async fn catalog_lists_and_drops() {
    let cat = catalog(TableOptions::default());
    cat.create_table(kv_spec("a", 1, true)).await.unwrap();
    let t = cat.create_table(kv_spec("b", 1, true)).await.unwrap();
    put(&t, &[("x", 1, None)]).await;
    assert!(matches!(
        cat.create_table(kv_spec("a", 1, true)).await,
        Err(Error::DatasetExists(_))
    ));
    assert_eq!(cat.list_tables().await.unwrap(), ["a", "b"]);
    cat.drop_table("b").await.unwrap();
    assert!(matches!(
        cat.open_table("b").await,
        Err(Error::DatasetNotFound(_))
    ));
    assert_eq!(cat.list_tables().await.unwrap(), ["a"]);
    // Within the grace period a reader that opened the table before reads it whole.
    assert_eq!(read(&t, VersionSpec::Head).await.len(), 1);
    assert!(!t.blobs().list("").await.unwrap().is_empty());
    assert_eq!(cat.purge_dropped().await.unwrap(), 0);
    // The name is free at once; the new dataset is another one.
    let b2 = cat.create_table(kv_spec("b", 1, true)).await.unwrap();
    assert_eq!(read(&b2, VersionSpec::Head).await.len(), 0);
    // After the grace period the files go, and only those of the dropped dataset.
    let opts = TableOptions {
        blob_grace_ms: 0,
        ..TableOptions::default()
    };
    let (blobs, meta) = cat.stores();
    let later = Catalog::with_options(blobs, meta, opts);
    assert_eq!(later.purge_dropped().await.unwrap(), 1);
    assert!(
        t.blobs()
            .list(&format!("tables/{}/", t.id()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(later.purge_dropped().await.unwrap(), 0);
    put(&b2, &[("y", 2, None)]).await;
    assert_eq!(read(&b2, VersionSpec::Head).await.len(), 1);
    assert!(matches!(
        cat.open_table("no/pe").await,
        Err(Error::Types(_))
    ));
}

#[tokio::test]
async fn segments_split_at_target_size_and_stats_bound_keys() {
    let mut opts = TableOptions::default();
    opts.segment.target_bytes = 64 * 1024;
    let cat = catalog(opts);
    let t = cat.create_table(kv_spec("w", 1, true)).await.unwrap();
    let rows: Vec<(String, i64)> = (0..200_000).map(|i| (format!("s{}", i % 50), i)).collect();
    let batch = kv_batch(
        &rows
            .iter()
            .map(|(k, i)| (k.as_str(), *i, Some(*i as f64 * 0.5)))
            .collect::<Vec<_>>(),
    );
    t.write(&[batch], BTreeMap::new()).await.unwrap();
    let head = t.head().await.unwrap();
    assert!(
        head.segment_count() > 3,
        "{} segments",
        head.segment_count()
    );
    let segs: Vec<_> = head.live_segments().collect();
    let total: u64 = segs.iter().map(|s| s.meta.rows).sum();
    assert_eq!(total, 200_000);
    for s in &segs {
        assert!(s.meta.pk_min <= s.meta.pk_max);
        let v = s.meta.column_stats("v");
        assert!(
            matches!((&v.min, &v.max), (Some(Value::Float(a)), Some(Value::Float(b))) if a <= b)
        );
    }
    // Segments of one shard hold disjoint, ordered key ranges.
    for pair in segs.windows(2) {
        let (a, b) = (&pair[0].meta, &pair[1].meta);
        assert!(a.pk_max < b.pk_min || b.pk_max < a.pk_min);
    }
}

#[tokio::test]
async fn slow_commits_expire_instead_of_racing_vacuum() {
    let cat = catalog(TableOptions {
        blob_grace_ms: -1,
        ..TableOptions::default()
    });
    let t = cat.create_table(kv_spec("w", 1, true)).await.unwrap();
    let err = t
        .write(&[kv_batch(&[("a", 1, None)])], BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TransactionExpired { .. }), "{err}");
    assert_eq!(t.head_version().await.unwrap(), 1);
}

#[tokio::test]
async fn a_stale_head_hint_on_a_tagged_vacuumed_version_still_finds_the_head() {
    use strata_storage::{MemoryBlobStore, MemoryMetaStore, MetaStore};
    let meta = Arc::new(MemoryMetaStore::new());
    let cat = strata_table::Catalog::new(Arc::new(MemoryBlobStore::new()), meta.clone());
    let t = cat.create_table(kv_spec("w", 1, true)).await.unwrap();
    for i in 0..39 {
        put(&t, &[("a", i, None)]).await; // v2..=v40; the hint is written at v32
    }
    t.create_tag("old", &VersionSpec::Version(32))
        .await
        .unwrap();
    let report = t
        .vacuum(&VacuumPolicy {
            keep_last: Some(1),
            keep_within_ms: None,
        })
        .await
        .unwrap();
    assert_eq!((report.oldest_retained, report.version), (40, Some(41)));
    // A writer that stalled before writing its hint writes it now: the hint names v32,
    // which is readable (tagged) but whose successors are gone.
    let hint = meta
        .list("tables/")
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with("/head"))
        .unwrap();
    meta.put(&hint, bytes::Bytes::from("32")).await.unwrap();
    let fresh = cat.open_table("w").await.unwrap();
    assert_eq!(fresh.head_version().await.unwrap(), 41);
    assert_eq!(read(&fresh, VersionSpec::Tag("old".into())).await.len(), 31);
    let listed: Vec<u64> = fresh
        .list_versions()
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(listed, [32, 40, 41]);
}

/// The version model on the memory stores (several seeds) and the local store: random
/// upserts, deletes, rollbacks, compactions, tags and vacuums, every version checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_model_on_memory_and_local_stores() {
    let opts = TableOptions {
        checkpoint_interval: 7,
        ..Default::default()
    };
    for seed in 1..=6 {
        let catalog = catalog(opts.clone());
        strata_table::conformance::version_model(&catalog, "model", seed, 200).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(strata_storage::LocalStore::open(dir.path()).unwrap());
    let catalog = Catalog::with_options(local.clone(), local, opts);
    strata_table::conformance::version_model(&catalog, "model", 42, 120).await;
}
