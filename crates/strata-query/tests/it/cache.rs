//! The decoded-column cache: cached scans answer exactly as scans of the segments do,
//! across versions, deletions, upserts and added columns, and stay within capacity.

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use strata_query::{Engine, QueryConfig};
use strata_table::Catalog;

use crate::common::{History, batch, weather, write};

fn engine(catalog: &Catalog, cache_bytes: usize) -> Engine {
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
async fn answer(engine: &Engine, sql: &str) -> Vec<String> {
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
async fn settle(engine: &Engine) {
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
/// once the fills are done (from the cache); the answers must be the uncached ones.
async fn agree(plain: &Engine, cached: &Engine, queries: &[String]) {
    for sql in queries {
        let want = answer(plain, sql).await;
        assert_eq!(answer(cached, sql).await, want, "cold: {sql}");
        settle(cached).await;
        assert_eq!(answer(cached, sql).await, want, "hot: {sql}");
    }
}

#[tokio::test]
async fn cached_scans_answer_as_the_segments_do() {
    let catalog = crate::common::memory_catalog();
    let h = weather(&catalog, "weather").await;
    let plain = engine(&catalog, 0);
    let cached = engine(&catalog, 64 << 20);
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
    agree(&plain, &cached, &qs).await;
    assert!(stat(&cached, "hits").await > hits_before);
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
    let plan = explain_analyze(
        &cached,
        "SELECT * FROM weather WHERE ts BETWEEN 100 AND 130",
    )
    .await;
    assert!(plan.contains("StrataCachedScan"), "{plan}");
    let pruned = plan
        .split("zones_pruned=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no zones_pruned in {plan}"));
    assert!(pruned > 0, "{plan}");
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
