//! The decoded-column cache: cached scans answer exactly as scans of the segments do,
//! across versions, deletions, upserts and added columns, and stay within capacity.
//! Kept plans (an exclusive catalog's repeated queries) answer as planning again does,
//! whatever changed in between.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::util::pretty::pretty_format_batches;
use strata_query::cache::ZONE_ROWS;
use strata_query::{Engine, QueryConfig};
use strata_table::Catalog;

use crate::common::{History, batch, weather, write};

pub(crate) fn engine(catalog: &Catalog, cache_bytes: usize) -> Engine {
    Engine::new(
        catalog.clone(),
        QueryConfig {
            cache_bytes,
            ..QueryConfig::default()
        },
    )
    .unwrap()
}

/// The answer as sorted lines of text (row order is the query's business, and both
/// engines run the same plan above the scan).
pub(crate) async fn answer(engine: &Engine, sql: &str) -> Vec<String> {
    let batches = engine
        .collect(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    lines(&batches)
}

fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `EXPLAIN ANALYZE` of `sql` as one text.
async fn explain_analyze(engine: &Engine, sql: &str) -> String {
    let batches = engine
        .collect(&format!("EXPLAIN ANALYZE {sql}"))
        .await
        .unwrap();
    lines(&batches).join("\n")
}

async fn stat(engine: &Engine, column: &str) -> u64 {
    let b = engine
        .collect(&format!("SELECT {column} FROM strata_cache()"))
        .await
        .unwrap();
    b[0].column(0)
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .unwrap()
        .value(0)
}

/// Waits for the background fills the queries so far queued (asking the cache itself:
/// a query would count as activity the fills wait out).
pub(crate) async fn settle(engine: &Engine) {
    for _ in 0..12_000 {
        if engine.cache().stats().fills_pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("background fills did not finish");
}

fn queries(h: &History) -> Vec<String> {
    let mut q: Vec<String> = [
        "SELECT * FROM weather",
        "SELECT count(*) FROM weather",
        "SELECT count(*), sum(temp), min(ts), max(ts) FROM weather WHERE temp > 1000",
        "SELECT station, avg(temp), count(humidity) FROM weather GROUP BY station",
        "SELECT * FROM weather WHERE station = 's3' AND ts BETWEEN 40 AND 160",
        "SELECT ts, humidity FROM weather WHERE humidity IS NOT NULL AND ts % 7 = 3",
        "SELECT * FROM weather WHERE humidity IS NULL AND ts >= 195",
        "SELECT station, ts, temp FROM weather ORDER BY temp DESC, station, ts LIMIT 7",
        "SELECT station FROM weather WHERE station > 's7' AND ts < 3",
        "SELECT count(*) FROM (SELECT * FROM weather LIMIT 25)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for v in [h.v_first, h.v_upsert, h.v_column] {
        q.push(format!(
            "SELECT station, ts, temp FROM weather VERSION AS OF {v} WHERE ts % 10 = 0"
        ));
        q.push(format!(
            "SELECT count(*), sum(temp) FROM weather VERSION AS OF {v}"
        ));
    }
    q
}

/// Runs every query on both engines: once (cold, the cache fills behind it), then again
/// once the fills are done (from the cache), then once more (on an exclusive catalog,
/// with the plan the hot run kept); the answers must be the uncached ones.
async fn agree(plain: &Engine, cached: &Engine, queries: &[String]) {
    for sql in queries {
        let want = answer(plain, sql).await;
        assert_eq!(answer(cached, sql).await, want, "cold: {sql}");
        settle(cached).await;
        assert_eq!(answer(cached, sql).await, want, "hot: {sql}");
        assert_eq!(answer(cached, sql).await, want, "kept plan: {sql}");
    }
}

#[tokio::test]
async fn cached_scans_answer_as_the_segments_do() {
    let catalog = crate::common::memory_catalog();
    let h = weather(&catalog, "weather").await;
    // The plain engine plans every statement; the cached one keeps plans (its catalog
    // is exclusive: every change goes through the clones of this one).
    let plain = engine(&catalog, 0);
    let cached = engine(&catalog.clone().exclusive(), 64 << 20);
    let qs = queries(&h);
    agree(&plain, &cached, &qs).await;
    let hits = stat(&cached, "hits").await;
    assert!(hits > 0, "hot queries read the cache");
    assert!(stat(&cached, "used_bytes").await > 0);
    // A hot scan is the cached one.
    let plan = explain_analyze(&cached, "SELECT sum(temp) FROM weather").await;
    assert!(plan.contains("StrataCachedScan"), "{plan}");
    assert!(plan.contains("columns_from_cache"), "{plan}");

    // New versions: deletes (deletion vectors on cached segments), an upsert and new
    // rows. Cached columns of unchanged segments serve the new head too.
    cached
        .collect("DELETE FROM weather WHERE ts % 5 = 1 OR station = 's2'")
        .await
        .unwrap();
    cached
        .collect(
            "INSERT INTO weather VALUES ('s1', 125, 5000.0, 1.5), ('s9', 400, -3.0, NULL), \
             ('s4', 126, NULL, 2.5)",
        )
        .await
        .unwrap();
    let hits_before = stat(&cached, "hits").await;
    let plan_hits = stat(&cached, "plan_hits").await;
    assert!(plan_hits > 0, "repeated queries ran kept plans");
    agree(&plain, &cached, &qs).await;
    assert!(stat(&cached, "hits").await > hits_before);
    assert!(stat(&cached, "plan_hits").await > plan_hits);
}

/// A repeated query runs the plan it had while nothing changed, and is planned again
/// after any change: a commit through SQL or a table handle, a delete, a rollback, a
/// compaction. Plans whose answers depend on the moment (`now()`) or on a version are
/// never kept, nor any plan on a shared catalog; a TopK's is, its bound renewed.
#[tokio::test]
async fn kept_plans_follow_every_change() {
    let catalog = crate::common::memory_catalog();
    let h = weather(&catalog, "weather").await;
    let plain = engine(&catalog, 0);
    let cached = engine(&catalog.clone().exclusive(), 64 << 20);
    let q = "SELECT count(*), sum(temp), min(ts) FROM weather WHERE station = 's3' AND ts >= 40";
    answer(&cached, q).await;
    settle(&cached).await;
    answer(&cached, q).await; // hot: planned over cached segments, kept
    let hits = stat(&cached, "plan_hits").await;
    let want = answer(&plain, q).await;
    assert_eq!(answer(&cached, q).await, want);
    assert_eq!(
        stat(&cached, "plan_hits").await,
        hits + 1,
        "the kept plan ran"
    );

    // After each change the answer is the new one (and the plan kept again after it).
    let changes = [
        "INSERT INTO weather VALUES ('s3', 1000, 1.0, NULL)",
        "DELETE FROM weather WHERE station = 's3' AND ts < 60",
        "OPTIMIZE weather",
        &format!("RESTORE TABLE weather TO VERSION AS OF {}", h.v_head),
    ];
    // A count the optimizer answers from statistics once no deletion vector is left
    // (after OPTIMIZE) is kept as its answer: it must move with every change too.
    let count = "SELECT count(*) FROM weather";
    for change in changes {
        cached.collect(change).await.unwrap();
        for q in [q, count] {
            let want = answer(&plain, q).await;
            assert_eq!(answer(&cached, q).await, want, "{q} after {change}");
            settle(&cached).await;
            assert_eq!(answer(&cached, q).await, want, "{q} after {change}, hot");
            assert_eq!(answer(&cached, q).await, want, "{q} after {change}, kept");
        }
    }
    let hits = stat(&cached, "plan_hits").await;
    assert_eq!(
        answer(&cached, "SELECT 1").await,
        answer(&plain, "SELECT 1").await
    );
    assert_eq!(
        answer(&cached, "SELECT 1").await,
        answer(&plain, "SELECT 1").await
    );
    assert_eq!(
        stat(&cached, "plan_hits").await,
        hits + 1,
        "a row of literals is kept"
    );
    // A commit through a table handle, not SQL.
    h.table
        .rollback(&strata_table::VersionSpec::Version(h.v_upsert))
        .await
        .unwrap();
    assert_eq!(
        answer(&cached, q).await,
        answer(&plain, q).await,
        "after a rollback"
    );

    // A TopK is kept: each run renews its dynamic bound (the last run's excludes the
    // rows that run ended on).
    let top = "SELECT station, ts FROM weather ORDER BY temp DESC, station, ts LIMIT 3";
    let before = stat(&cached, "plan_hits").await;
    for _ in 0..4 {
        assert_eq!(answer(&cached, top).await, answer(&plain, top).await);
        settle(&cached).await;
    }
    assert!(
        stat(&cached, "plan_hits").await >= before + 2,
        "a TopK is kept"
    );

    // Never kept: the moment, a version, an introspection table.
    let before = stat(&cached, "plan_hits").await;
    let now = "SELECT CAST(now() AS BIGINT) FROM weather LIMIT 1";
    let first = answer(&cached, now).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_ne!(answer(&cached, now).await, first, "now() moves");
    let others = [format!(
        "SELECT count(*) FROM weather VERSION AS OF {}",
        h.v_first
    )];
    for sql in &others {
        for _ in 0..3 {
            assert_eq!(
                answer(&cached, sql).await,
                answer(&plain, sql).await,
                "{sql}"
            );
            settle(&cached).await;
        }
    }
    // strata_cache() answers what the cache holds now: reading it counts no hit either.
    assert_eq!(
        stat(&cached, "plan_hits").await,
        before,
        "nothing above was kept"
    );
    assert_eq!(stat(&cached, "plan_hits").await, before);

    // A shared catalog (other processes may commit to it) keeps nothing.
    let shared = engine(&catalog, 64 << 20);
    for _ in 0..3 {
        answer(&shared, q).await;
        settle(&shared).await;
    }
    assert_eq!(stat(&shared, "plans").await, 0);
}

/// The `zones_pruned` of a plan's cached scans, summed.
fn zones_pruned(plan: &str) -> u64 {
    metric(plan, "zones_pruned=")
}

/// A counter of a plan's operators (`name=`), summed.
fn metric(plan: &str, name: &str) -> u64 {
    plan.split(name)
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .map(|n| {
            n.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} in {plan}"))
        })
        .sum()
}

#[tokio::test]
async fn zone_maps_skip_what_filters_exclude() {
    let catalog = crate::common::memory_catalog();
    let table = catalog
        .create_table(crate::common::weather_spec("weather"))
        .await
        .unwrap();
    // 10 stations × 20,000 ticks: segments of about 25,000 rows, several zones each.
    write(&table, batch(0..20_000, 0.0)).await;
    let plain = engine(&catalog, 0);
    let cached = engine(&catalog, 64 << 20);
    let qs: Vec<String> = [
        "SELECT * FROM weather WHERE ts BETWEEN 100 AND 130",
        "SELECT count(*) FROM weather WHERE station = 's4' AND ts >= 19990",
        "SELECT * FROM weather ORDER BY temp DESC, ts DESC, station LIMIT 3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    agree(&plain, &cached, &qs).await;
    // The range filter's zone maps, and a TopK's bound once tight, skip zones.
    for (sql, mark) in [(&qs[0], "StrataCachedScan"), (&qs[2], "dynamic_filters=1")] {
        let plan = explain_analyze(&cached, sql).await;
        assert!(plan.contains(mark), "{plan}");
        assert!(zones_pruned(&plan) > 0, "{plan}");
    }

    // A TopK visits each segment's zones best first: with values rising through each
    // station's run, the best zone is a run's last, and the bound it sets prunes the rest.
    let rising = catalog
        .create_table(crate::common::weather_spec("rising"))
        .await
        .unwrap();
    let b = batch(0..20_000, 0.0);
    let ts = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    let temp: Float64Array = ts
        .values()
        .iter()
        .enumerate()
        .map(|(i, &t)| Some(t as f64 * 10.0 + (i / 20_000) as f64))
        .collect();
    let b = RecordBatch::try_new(
        b.schema(),
        vec![b.column(0).clone(), b.column(1).clone(), Arc::new(temp)],
    )
    .unwrap();
    write(&rising, b).await;
    let top = [
        "SELECT * FROM rising ORDER BY temp DESC LIMIT 3".to_string(),
        "SELECT station, ts FROM rising ORDER BY temp LIMIT 4".to_string(),
    ];
    agree(&plain, &cached, &top).await;
    // Kept, a TopK's plan gets a new bound each run. One segment, three zones, each
    // with one peak: the last run's bound (above the third peak) would prune the zone
    // of the third peak.
    let peaks = catalog
        .create_table(crate::common::weather_spec("peaks"))
        .await
        .unwrap();
    let rows = 3 * ZONE_ROWS;
    let temp: Float64Array = (0..rows)
        .map(|i| {
            Some(match i % ZONE_ROWS {
                10 => 100.0 - (i / ZONE_ROWS) as f64,
                _ => 1.0,
            })
        })
        .collect();
    let b = RecordBatch::try_new(
        crate::common::weather_spec("peaks").schema,
        vec![
            Arc::new(StringArray::from(vec!["s0"; rows])),
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            Arc::new(temp),
        ],
    )
    .unwrap();
    write(&peaks, b).await;
    let kept = engine(&catalog.clone().exclusive(), 64 << 20);
    let mut top = top.to_vec();
    top.push("SELECT ts, temp FROM peaks ORDER BY temp DESC LIMIT 3".to_string());
    agree(&plain, &kept, &top).await;
    for sql in &top {
        assert_eq!(answer(&kept, sql).await, answer(&plain, sql).await, "{sql}");
    }
    assert!(
        stat(&kept, "plan_hits").await >= 6,
        "the TopKs' plans were kept"
    );
    let plan = explain_analyze(&cached, &top[0]).await;
    assert!(plan.contains("zones_by=[temp DESC"), "{plan}");
    let segments = metric(&plan, "segments=");
    let scanned = metric(&plan, "zones_scanned=");
    assert!(
        scanned <= segments,
        "{scanned} zones scanned of {segments} segments: {plan}"
    );
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let catalog = crate::common::memory_catalog();
    let h = weather(&catalog, "weather").await;
    let plain = engine(&catalog, 0);
    // Room for a few columns of a few segments, not for all of them.
    let capacity = 24 << 10;
    let cached = engine(&catalog, capacity);
    let qs = queries(&h);
    agree(&plain, &cached, &qs).await;
    agree(&plain, &cached, &qs).await;
    assert!(stat(&cached, "used_bytes").await <= capacity as u64);
    assert!(stat(&cached, "evictions").await > 0);
    assert!(stat(&cached, "columns").await > 0);
}
