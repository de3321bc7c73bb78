//! Helpers shared by the criterion benches in `benches/` and the scaling tools in
//! `src/bin/`: one-shard weather data and small statistics helpers.

use std::time::Duration;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute;
use strata_datagen::WeatherFeed;
pub use strata_storage::{BlobCounts, CountingBlobStore};
use strata_table::segment::shard_of_rows;
use strata_types::DatasetSpec;

/// Rows of the weather feed that fall in `shard` of a dataset with `spec`'s partition
/// key and shard count, in feed (time) order: the feed is generated in chunks and
/// filtered until `count` rows of the shard were found. Also returns how many feed
/// rows were consumed, so a caller can continue the feed after them.
pub fn one_shard_rows(
    feed: &WeatherFeed,
    spec: &DatasetSpec,
    shard: u32,
    first_row: u64,
    count: usize,
) -> (RecordBatch, u64) {
    const CHUNK: usize = 256 * 1024;
    let partition: Vec<usize> = spec
        .partition_key
        .iter()
        .map(|c| spec.schema.index_of(c).expect("partition key column"))
        .collect();
    let mut parts = Vec::new();
    let mut found = 0usize;
    let mut next = first_row;
    while found < count {
        let chunk = feed.batch(next, CHUNK);
        let shards = shard_of_rows(&chunk, &partition, spec.shards).expect("shardable key");
        // Stop exactly at the row that completes `count`, so `next` is the resume point.
        let mut mask = Vec::with_capacity(CHUNK);
        let mut used = CHUNK;
        for (i, s) in shards.iter().enumerate() {
            if found == count {
                used = i;
                break;
            }
            let hit = *s == shard;
            found += hit as usize;
            mask.push(hit);
        }
        let part = chunk.slice(0, used);
        let kept = compute::filter_record_batch(&part, &BooleanArray::from(mask))
            .expect("mask matches batch");
        parts.push(kept);
        next += used as u64;
    }
    let batch = compute::concat_batches(&spec.schema, &parts).expect("same schema");
    (batch, next)
}

/// Makes the allocator settle the small blocks freed so far, outside a timed region.
///
/// glibc's malloc keeps freed small blocks in "fast bins" and merges them only when a
/// later request of a larger size comes (`malloc_consolidate`), so work that frees many
/// small allocations (decoding and dropping a full checkpoint, say) is partly paid by
/// whichever code allocates a large-ish block next on that thread. One allocation of
/// 64 KiB (below the mmap threshold) triggers that merge here instead.
pub fn settle_allocator() {
    let block: Vec<u8> = Vec::with_capacity(64 * 1024);
    std::hint::black_box(&block);
}

/// Median of `samples` (which it sorts).
pub fn median(samples: &mut [Duration]) -> Duration {
    assert!(!samples.is_empty(), "median of no samples");
    samples.sort();
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    }
}

/// A duration in milliseconds with three decimals, for tables and JSON.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A ratio rounded to three decimals, for tables and JSON.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    let r = a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    (r * 1000.0).round() / 1000.0
}

/// Parses a comma-separated list of numbers (`"1,16,64"`).
pub fn parse_list(s: &str) -> Result<Vec<u64>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("bad number {p:?}: {e}"))
        })
        .collect()
}

/// Escapes `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The weather feed's dataset spec as the `CreateDataset` RPC takes it.
pub fn weather_dataset(name: &str, shards: u32) -> strata_proto::v1::DatasetSpec {
    let mut def = strata_datagen::weather_spec().to_def();
    def.name = name.into();
    def.shards = shards;
    strata_server::service::spec_to_proto(&def)
}

/// One of the weather benchmarks' analyst queries: SQL with `{t}` for the table.
#[derive(Clone, Debug)]
pub struct WeatherQuery {
    pub id: usize,
    pub label: &'static str,
    pub sql: String,
}

impl WeatherQuery {
    pub fn sql_for(&self, table: &str) -> String {
        self.sql.replace("{t}", table)
    }
}

/// The station the point queries read.
pub const QUERY_STATION: usize = 17;

/// `TIMESTAMP '…'` for microseconds since the epoch.
fn timestamp_literal(us: i64) -> String {
    let t = arrow::temporal_conversions::timestamp_us_to_datetime(us).expect("timestamp in range");
    format!("TIMESTAMP '{}'", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// The analyst queries over the first `base_rows` rows of `feed` (time order): counts,
/// sums, one station over one hour, group-by top 10, one-minute buckets with a filter,
/// top 10 rows by a value, and a full scan aggregating every column (ids 1–6 and 8;
/// `query-bench` adds its query 7, at an old version).
pub fn weather_queries(feed: &WeatherFeed, base_rows: u64) -> Vec<WeatherQuery> {
    const HOUR_US: i64 = 3_600_000_000;
    let ticks = base_rows.div_ceil(feed.stations as u64) as i64;
    let mid = feed.start_us + ticks / 2 * feed.interval_us;
    let from = mid - mid.rem_euclid(HOUR_US);
    let q = |id, label, sql: String| WeatherQuery { id, label, sql };
    vec![
        q(1, "count(*)", "SELECT count(*) FROM {t}".into()),
        q(
            2,
            "sum(temperature), avg(pressure)",
            "SELECT sum(temperature), avg(pressure) FROM {t}".into(),
        ),
        q(
            3,
            "one station, one hour (SELECT *)",
            format!(
                "SELECT * FROM {{t}} WHERE station = '{}' AND ts >= {} AND ts < {}",
                strata_datagen::station_name(QUERY_STATION),
                timestamp_literal(from),
                timestamp_literal(from + HOUR_US)
            ),
        ),
        q(
            4,
            "top 10 stations by avg(temperature)",
            "SELECT station, avg(temperature) a FROM {t} GROUP BY station ORDER BY a DESC LIMIT 10"
                .into(),
        ),
        q(
            5,
            "1-minute buckets, temperature > 20",
            "SELECT date_bin(INTERVAL '1 minute', ts) b, avg(wind_speed) FROM {t} \
             WHERE temperature > 20 GROUP BY b ORDER BY b"
                .into(),
        ),
        q(
            6,
            "top 10 by precip_1h (SELECT *)",
            "SELECT * FROM {t} ORDER BY precip_1h DESC LIMIT 10".into(),
        ),
        q(
            8,
            "full scan, every column aggregated",
            "SELECT max(station), max(ts), sum(temperature), sum(dewpoint), sum(pressure), \
             sum(wind_direction), sum(wind_speed), sum(precip_1h), max(sky_condition) FROM {t}"
                .into(),
        ),
    ]
}

/// Writer settings of the plain Parquet files the benchmarks compare Strata with: as
/// Strata's segments apart from the sort (zstd, page statistics, arrow-rs's default row
/// group and page limits).
pub fn parquet_props() -> parquet::file::properties::WriterProperties {
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Writes `batches` as one plain Parquet file ([`parquet_props`]); returns its size.
pub fn write_parquet(path: &std::path::Path, batches: &[RecordBatch]) -> u64 {
    let file = std::fs::File::create(path).expect("create parquet file");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), Some(parquet_props()))
            .expect("parquet writer");
    for b in batches {
        w.write(b).expect("write parquet");
    }
    w.close().expect("close parquet");
    std::fs::metadata(path).expect("stat").len()
}

/// Compacts `table` until compaction has nothing left to merge; returns the rounds.
pub async fn compact_all(table: &strata_table::Table) -> usize {
    let mut n = 0;
    while table.compact().await.expect("compact").is_some() {
        n += 1;
    }
    n
}
