//! `table_changes`: each version's inserted, deleted and replaced rows through SQL, with
//! versions, tags and times as bounds, rollbacks as changes, compactions as none, and a
//! cost that follows the change rather than the table.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use strata_query::{Engine, QueryConfig};
use strata_storage::{BlobStore, CountingBlobStore, MemoryBlobStore, MemoryMetaStore, MetaStore};
use strata_table::{Catalog, VersionSpec};

use crate::common::{STATIONS, batch, memory_catalog, weather, weather_spec, write};

fn engine(catalog: &Catalog) -> Engine {
    Engine::new(catalog.clone(), QueryConfig::default()).unwrap()
}

/// The answer's rows as text lines, in the query's order.
async fn lines(engine: &Engine, sql: &str) -> Vec<String> {
    let batches: Vec<RecordBatch> = engine
        .collect(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches)
        .unwrap()
        .to_string()
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

const BY_VERSION: &str = "SELECT _commit_version, _change_type, count(*) AS n";
const GROUPED: &str = "GROUP BY 1, 2 ORDER BY 1, 2";

#[tokio::test]
async fn table_changes_yields_each_versions_rows() {
    let catalog = memory_catalog();
    let h = weather(&catalog, "w").await;
    let e = engine(&catalog);
    let n = STATIONS * 100;
    // Appends are inserts; the upsert of ts 50..150 replaces 100 rows per station; the
    // added column changes no row; the rows written with it carry it.
    assert_eq!(
        lines(
            &e,
            &format!("{BY_VERSION} FROM table_changes('w', 1) {GROUPED}")
        )
        .await,
        [
            format!("| {} | insert | {n} |", h.v_first),
            format!("| {} | insert | {n} |", h.v_first + 1),
            format!("| {} | update_after | {n} |", h.v_upsert),
            format!("| {} | update_before | {n} |", h.v_upsert),
            format!("| {} | insert | {} |", h.v_head, STATIONS * 50),
        ]
    );
    // Before and after images: the upsert added 1000 to each temperature.
    assert_eq!(
        lines(
            &e,
            &format!(
                "SELECT sum(CASE WHEN _change_type = 'update_after' THEN temp ELSE -temp END) \
                 FROM table_changes('w', {0}, {0})",
                h.v_upsert
            )
        )
        .await,
        [format!("| {}.0 |", 1000 * n)]
    );
    // Columns are those of the last version asked for: humidity is null before it existed.
    assert_eq!(
        lines(
            &e,
            "SELECT _commit_version, count(humidity) FROM table_changes('w', 1) \
             WHERE _change_type = 'insert' GROUP BY 1 ORDER BY 1"
        )
        .await,
        [
            format!("| {} | 0 |", h.v_first),
            format!("| {} | 0 |", h.v_first + 1),
            format!("| {} | {} |", h.v_head, STATIONS * 50),
        ]
    );
    // Filterable and joinable like any table; a range of one version.
    assert_eq!(
        lines(
            &e,
            &format!(
                "SELECT c.station, c.ts, c.temp, w.temp FROM table_changes('w', {0}, {0}) c \
                 JOIN w ON c.station = w.station AND c.ts = w.ts \
                 WHERE c.station = 's1' AND c.ts = 60 AND c._change_type = 'update_before'",
                h.v_upsert
            )
        )
        .await,
        ["| s1 | 60 | 14.0 | 1014.0 |"]
    );
    // The commit time is the version's.
    let committed = lines(
        &e,
        &format!(
            "SELECT count(*) FROM table_changes('w', {0}, {0}) c JOIN strata_versions('w') v \
             ON v.version = c._commit_version AND v.committed_at = c._commit_timestamp",
            h.v_head
        ),
    )
    .await;
    assert_eq!(committed, [format!("| {} |", STATIONS * 50)]);
    // Nothing after the head.
    assert_eq!(
        lines(
            &e,
            &format!("SELECT count(*) FROM table_changes('w', {})", h.v_head + 1)
        )
        .await,
        ["| 0 |"]
    );
}

#[tokio::test]
async fn deletes_rollbacks_and_compactions_as_changes() {
    let catalog = memory_catalog();
    let table = catalog.create_table(weather_spec("w")).await.unwrap();
    let e = engine(&catalog);
    let v_base = write(&table, batch(0..10, 0.0)).await;
    e.collect("DELETE FROM w WHERE ts < 3").await.unwrap();
    let v_delete = table.head_version().await.unwrap();
    let v_upsert = write(&table, batch(5..15, 100.0)).await;
    let v_compact = table.compact().await.unwrap().expect("compaction").version;
    assert_eq!(
        lines(
            &e,
            &format!(
                "{BY_VERSION} FROM table_changes('w', {}) {GROUPED}",
                v_base + 1
            )
        )
        .await,
        [
            format!("| {v_delete} | delete | {} |", STATIONS * 3),
            format!("| {v_upsert} | insert | {} |", STATIONS * 5),
            format!("| {v_upsert} | update_after | {} |", STATIONS * 5),
            format!("| {v_upsert} | update_before | {} |", STATIONS * 5),
        ],
        "the compaction (v{v_compact}) changes no row"
    );
    // Rolling back to the base: what the later versions added comes back as deletes,
    // what they removed as inserts, what they replaced as updates to the old values. The
    // rollback crosses the compaction, whose rewritten rows are not changes.
    let v_rollback = table
        .rollback(&VersionSpec::Version(v_base))
        .await
        .unwrap()
        .version;
    assert_eq!(
        lines(
            &e,
            &format!("{BY_VERSION} FROM table_changes('w', {v_rollback}) {GROUPED}")
        )
        .await,
        [
            format!("| {v_rollback} | delete | {} |", STATIONS * 5),
            format!("| {v_rollback} | insert | {} |", STATIONS * 3),
            format!("| {v_rollback} | update_after | {} |", STATIONS * 5),
            format!("| {v_rollback} | update_before | {} |", STATIONS * 5),
        ]
    );
    assert_eq!(
        lines(
            &e,
            &format!(
                "SELECT min(ts), max(ts), max(temp) < 100 FROM table_changes('w', {v_rollback}) \
                 WHERE _change_type = 'update_after'"
            )
        )
        .await,
        ["| 5 | 9 | true |"]
    );
    // A vacuum is no change either.
    e.collect("VACUUM w RETAIN 1 VERSIONS").await.unwrap();
    let head = table.head_version().await.unwrap();
    assert_eq!(
        lines(
            &e,
            &format!("SELECT count(*) FROM table_changes('w', {head}, {head})")
        )
        .await,
        ["| 0 |"]
    );
}

#[tokio::test]
async fn bounds_as_versions_tags_and_times_and_errors() {
    let catalog = memory_catalog();
    let h = weather(&catalog, "w").await;
    let e = engine(&catalog);
    e.collect(&format!(
        "ALTER TABLE w CREATE TAG loaded AS OF VERSION {}",
        h.v_upsert
    ))
    .await
    .unwrap();
    let count = |sql: String| {
        let e = e.clone();
        async move { lines(&e, &sql).await }
    };
    // A tag as a bound.
    assert_eq!(
        count("SELECT count(*) FROM table_changes('w', 'loaded', 'loaded')".into()).await,
        [format!("| {} |", 2 * STATIONS * 100)]
    );
    // A time as `from`: the versions committed after it (here: none after now).
    assert_eq!(
        count("SELECT count(*) FROM table_changes('w', now())".into()).await,
        ["| 0 |"]
    );
    // A time long ago as `from`: everything; as `to`: up to the version committed then.
    assert_eq!(
        count(
            "SELECT count(*) FROM table_changes('w', TIMESTAMP '2000-01-01 00:00:00', now())"
                .into()
        )
        .await,
        [format!("| {} |", STATIONS * (100 + 100 + 200 + 50))]
    );
    for (sql, wanted) in [
        ("SELECT * FROM table_changes('w')", "usage: table_changes"),
        ("SELECT * FROM table_changes('w', 0)", "versions start at 1"),
        (
            "SELECT * FROM table_changes('w', 5, 2)",
            "after to version 2",
        ),
        (
            "SELECT * FROM table_changes('w', 1, 99)",
            "has no version 99",
        ),
        (
            "SELECT * FROM table_changes('w', 'nope')",
            "no tag \"nope\"",
        ),
        ("SELECT * FROM table_changes('nope', 1)", "nope"),
    ] {
        let err = e.collect(sql).await.expect_err(sql).to_string();
        assert!(err.contains(wanted), "{sql}: {err}");
    }
    // Vacuumed positions name the oldest version whose changes are readable.
    e.collect("VACUUM w RETAIN 1 VERSIONS").await.unwrap();
    let err = e
        .collect("SELECT * FROM table_changes('w', 2)")
        .await
        .expect_err("vacuumed")
        .to_string();
    let head = h.table.head_version().await.unwrap();
    assert!(
        err.contains("no longer readable") && err.contains(&format!("readable is {}", head)),
        "{err}"
    );
}

/// Reading one small version's changes reads a small part of what a scan of the table
/// reads: the cost follows the change.
#[tokio::test]
async fn the_cost_follows_the_change() {
    let blobs = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
    let catalog = Catalog::new(blobs.clone() as Arc<dyn BlobStore>, meta);
    let table = catalog.create_table(weather_spec("w")).await.unwrap();
    for i in 0..20 {
        write(&table, batch(i * 500..(i + 1) * 500, 0.0)).await;
    }
    // One small upsert: 10 rows replaced, 10 rows new.
    let v = write(&table, batch(9_999..10_001, 5.0)).await;
    let e = engine(&catalog);
    blobs.reset();
    let all = e.collect("SELECT * FROM w").await.unwrap();
    let rows: usize = all.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 10_001 * STATIONS);
    let scan = blobs.snapshot().bytes_read;
    blobs.reset();
    assert_eq!(
        lines(
            &e,
            &format!("{BY_VERSION} FROM table_changes('w', {v}) {GROUPED}")
        )
        .await,
        [
            format!("| {v} | insert | {STATIONS} |"),
            format!("| {v} | update_after | {STATIONS} |"),
            format!("| {v} | update_before | {STATIONS} |"),
        ]
    );
    let change = blobs.snapshot().bytes_read;
    assert!(
        change * 5 < scan,
        "the changes of one small version read {change} bytes, a scan of the table {scan}"
    );
}

/// Receives events of `sub` until `version` is complete; returns its rows.
async fn rows_until(sub: &mut strata_query::Subscription, version: u64) -> usize {
    let mut rows = 0;
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(30), sub.events.recv())
            .await
            .expect("the version arrives")
            .expect("the subscription runs")
            .unwrap();
        match &event.batch {
            Some(b) => rows += b.num_rows(),
            None if event.version == version => return rows,
            None => {}
        }
    }
}

/// Subscriptions following one dataset read each version's segments once between them:
/// a version read by five subscribers costs the bytes one reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_share_what_a_version_reads() {
    let blobs = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
    let catalog = Catalog::new(blobs.clone() as Arc<dyn BlobStore>, meta);
    let table = catalog.create_table(weather_spec("w")).await.unwrap();
    let e = engine(&catalog);
    let subscribe = |filter: &str| {
        let e = e.clone();
        let filter = filter.to_string();
        async move {
            e.subscribe(strata_query::SubscribeRequest {
                dataset: "w".into(),
                from: None,
                filter: Some(filter),
                poll: std::time::Duration::from_millis(50),
                ..Default::default()
            })
            .await
            .unwrap()
        }
    };
    // One subscriber: the bytes a version of 1000 rows costs.
    let mut one = subscribe("temp >= 0").await;
    blobs.reset();
    let v = write(&table, batch(0..100, 0.0)).await;
    assert_eq!(rows_until(&mut one, v).await, 1000);
    let alone = blobs.snapshot().bytes_read;
    drop(one);
    // Five, with different filters, on a version of the same size.
    let mut five = Vec::new();
    for i in 0..5 {
        five.push(subscribe(&format!("temp >= {i}")).await);
    }
    blobs.reset();
    let v = write(&table, batch(100..200, 0.0)).await;
    for sub in &mut five {
        assert!(rows_until(sub, v).await > 0);
    }
    let together = blobs.snapshot().bytes_read;
    assert!(alone > 0);
    assert!(
        together < alone * 2,
        "five subscribers read {together} bytes, one read {alone}"
    );
}
