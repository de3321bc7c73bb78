//! How the cost of one upsert scales with segments outside and inside the shard it hits.
//!
//! For each store (`--stores mem,local`), each count of outside shards O (`--outside
//! 1,16,64`) and each count of segments M in the target shard (`--inside 1,8,32`), a
//! weather-schema dataset with O + 1 shards is built: shard 0 (the target) gets M
//! segments, every other shard `--segs-per-shard` (K, default 8), each segment one
//! `Table::write` of `--rows-per-segment` (default 1000) time-ordered rows of that shard
//! only (writes interleaved round-robin over the shards, as an ingest would).
//! Then one upsert of `--upsert-rows` (default 100) rows, all in shard 0, is timed, in
//! three modes:
//! - `new`: keys later than every key of the shard (time-ordered ingest): no segment's
//!   key range overlaps them;
//! - `latest`: existing keys from the middle of the newest segment (a late correction):
//!   one segment overlaps;
//! - `spread`: existing keys taken evenly from all M segments: all M overlap;
//! - `ingest`: like `new`, but consecutive batches of whole ticks (about
//!   `--upsert-rows` rows each) are upserted one after the other without any reset, so
//!   shard 0 gains one segment per sample (M, M+1, ...): steady time-ordered ingest.
//!
//! Each sample is one `Table::write` on a warm writer handle (its manifest cached, as in
//! a long-running writer), commit included. In the modes `new`, `latest` and `spread`
//! the dataset is rolled back to its built version after each sample (not timed), so
//! every sample starts from the same state; `ingest` runs afterwards in a phase with no
//! rollbacks at all, as a cross-check of the reset procedure. (A rollback decodes and
//! drops a full checkpoint; glibc malloc merges those freed blocks lazily, on the next
//! larger allocation, which would bill the next timed write for it in proportion to the
//! total segment count. The tool triggers that merge before each timed write; see
//! `strata_benches::settle_allocator`.)
//! Segments read and ranged-read calls come from a counting `BlobStore` wrapper around
//! the real store. Figures are medians over `--reps` samples; configurations are measured
//! in alternation, round by round. The memory store shows CPU cost; the LocalStore is
//! built with fsync off (setup only) and measured re-opened with fsync on.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute;
use strata_benches::{
    BlobCounts, CountingBlobStore, json_str, median, ms, parse_list, ratio, settle_allocator,
};
use strata_datagen::{WeatherFeed, weather_spec};
use strata_storage::{BlobStore, LocalStore, MemoryBlobStore, MemoryMetaStore, MetaStore};
use strata_table::segment::shard_of_rows;
use strata_table::{Catalog, Table, TableOptions, VersionSpec, WriteOutcome};
use strata_types::{DatasetName, DatasetSpec};

const TABLE: &str = "weather_upsert";
/// Modes measured with a rollback to the built version after each sample.
const RESET_MODES: [&str; 3] = ["new", "latest", "spread"];
/// All modes; `ingest` is measured in a phase of its own, without rollbacks.
const MODES: [&str; 4] = ["new", "latest", "spread", "ingest"];

#[derive(Debug)]
struct Args {
    outside: Vec<u64>,
    inside: Vec<u64>,
    segs_per_shard: usize,
    rows_per_segment: usize,
    upsert_rows: usize,
    reps: usize,
    stores: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: upsert-scale [--outside 1,16,64] [--inside 1,8,32] [--segs-per-shard 8]\n\
         \x20                   [--rows-per-segment 1000] [--upsert-rows 100] [--reps 25]\n\
         \x20                   [--stores mem,local]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        outside: vec![1, 16, 64],
        inside: vec![1, 8, 32],
        segs_per_shard: 8,
        rows_per_segment: 1000,
        upsert_rows: 100,
        reps: 25,
        stores: vec!["mem".into(), "local".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let num = |s: String| {
            s.replace('_', "")
                .parse::<usize>()
                .unwrap_or_else(|_| usage())
        };
        match flag.as_str() {
            "--outside" => args.outside = parse_list(&value()).unwrap_or_else(|_| usage()),
            "--inside" => args.inside = parse_list(&value()).unwrap_or_else(|_| usage()),
            "--segs-per-shard" => args.segs_per_shard = num(value()),
            "--rows-per-segment" => args.rows_per_segment = num(value()),
            "--upsert-rows" => args.upsert_rows = num(value()),
            "--reps" => args.reps = num(value()),
            "--stores" => {
                args.stores = value().split(',').map(str::to_string).collect();
                if args.stores.iter().any(|s| s != "mem" && s != "local") {
                    usage();
                }
            }
            _ => usage(),
        }
    }
    let bad = args
        .inside
        .iter()
        .any(|&m| m == 0 || m as usize > args.upsert_rows)
        || args
            .outside
            .iter()
            .any(|&o| o + 1 > u64::from(strata_types::spec::MAX_SHARDS))
        || args.rows_per_segment < args.upsert_rows
        || args.reps == 0
        || args.segs_per_shard == 0;
    if bad {
        eprintln!(
            "need 1 <= inside <= upsert-rows <= rows-per-segment, outside + 1 <= 4096 shards"
        );
        usage();
    }
    args
}

fn spec_with_shards(shards: u32) -> DatasetSpec {
    let w = weather_spec();
    DatasetSpec::new(
        DatasetName::new(TABLE).expect("name"),
        w.schema.clone(),
        w.partition_key.clone(),
        w.row_key.clone(),
        shards,
    )
    .expect("spec")
}

/// Rows of the feed per shard, in time order, until every shard has `need[shard]` rows.
fn rows_by_shard(feed: &WeatherFeed, spec: &DatasetSpec, need: &[usize]) -> Vec<RecordBatch> {
    const CHUNK: usize = 128 * 1024;
    let part = spec
        .schema
        .index_of(&spec.partition_key[0])
        .expect("partition key");
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); need.len()];
    let mut have = vec![0usize; need.len()];
    let mut next = 0u64;
    while have.iter().zip(need).any(|(h, n)| h < n) {
        let chunk = feed.batch(next, CHUNK);
        next += CHUNK as u64;
        let shards = shard_of_rows(&chunk, &[part], spec.shards).expect("shards");
        let mut idx: Vec<Vec<u32>> = vec![Vec::new(); need.len()];
        for (row, s) in shards.iter().enumerate() {
            let s = *s as usize;
            if have[s] + idx[s].len() < need[s] {
                idx[s].push(row as u32);
            }
        }
        for (s, rows) in idx.into_iter().enumerate() {
            if !rows.is_empty() {
                have[s] += rows.len();
                parts[s].push(
                    compute::take_record_batch(&chunk, &UInt32Array::from(rows)).expect("take"),
                );
            }
        }
        assert!(next < 1 << 34, "the feed does not reach every shard");
    }
    parts
        .into_iter()
        .map(|p| compute::concat_batches(&spec.schema, &p).expect("concat"))
        .collect()
}

fn ts_column(b: &RecordBatch) -> &TimestampMicrosecondArray {
    b.column(b.schema().index_of("ts").expect("ts"))
        .as_any()
        .downcast_ref()
        .expect("timestamp(us)")
}

/// `rows` with changed temperatures: the same keys, new values.
fn corrected(rows: &RecordBatch) -> RecordBatch {
    let idx = rows.schema().index_of("temperature").expect("temperature");
    let temp = rows
        .column(idx)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("float64");
    let fixed: Float64Array = temp.iter().map(|t| t.map(|t| t + 0.5)).collect();
    let mut cols = rows.columns().to_vec();
    cols[idx] = Arc::new(fixed) as Arc<dyn Array>;
    RecordBatch::try_new(rows.schema(), cols).expect("same schema")
}

struct Config {
    store: &'static str,
    outside: u64,
    inside: u64,
    /// The measuring handle (warm) over the counting wrapper.
    table: Table,
    counting: Arc<CountingBlobStore>,
    /// The version every sample starts from.
    base: u64,
    batches: BTreeMap<&'static str, RecordBatch>,
    /// The `ingest` batches, used in turn.
    ingest: Vec<RecordBatch>,
    ingest_next: usize,
    samples: BTreeMap<&'static str, Vec<Duration>>,
    counts: BTreeMap<&'static str, BlobCounts>,
    setup_s: f64,
    _dir: Option<tempfile::TempDir>,
}

async fn write_all(table: &Table, by_shard: &[Vec<RecordBatch>]) {
    let rounds = by_shard.iter().map(Vec::len).max().unwrap_or(0);
    for j in 0..rounds {
        for segs in by_shard {
            if let Some(b) = segs.get(j) {
                table
                    .write(std::slice::from_ref(b), BTreeMap::new())
                    .await
                    .expect("write");
            }
        }
    }
}

async fn build(store: &'static str, outside: u64, inside: u64, args: &Args) -> Config {
    let started = Instant::now();
    let shards = outside as u32 + 1;
    let spec = spec_with_shards(shards);
    let feed = WeatherFeed {
        stations: 16 * shards as usize,
        ..WeatherFeed::default()
    };
    let r = args.rows_per_segment;
    let per_tick = feed.stations / shards as usize;
    // Shard 0: M segments, then rows for the `new` upsert (past a tick boundary).
    let mut need = vec![args.segs_per_shard * r; shards as usize];
    need[0] = inside as usize * r + (args.reps + 3) * (args.upsert_rows + 2 * per_tick.max(16));
    let streams = rows_by_shard(&feed, &spec, &need);
    let by_shard: Vec<Vec<RecordBatch>> = streams
        .iter()
        .enumerate()
        .map(|(s, rows)| {
            let n = if s == 0 {
                inside as usize
            } else {
                args.segs_per_shard
            };
            (0..n).map(|j| rows.slice(j * r, r)).collect()
        })
        .collect();
    // The upserts.
    let target = &streams[0];
    let segs = &by_shard[0];
    let last_ts = ts_column(&segs[segs.len() - 1])
        .values()
        .iter()
        .max()
        .copied()
        .expect("rows");
    let later = &target.slice(inside as usize * r, target.num_rows() - inside as usize * r);
    let first_later = ts_column(later)
        .values()
        .iter()
        .position(|t| *t > last_ts)
        .expect("rows after the last tick");
    assert!(
        later.num_rows() - first_later >= args.upsert_rows,
        "enough new rows"
    );
    let new = later.slice(first_later, args.upsert_rows);
    // Ingest batches: whole ticks, at least `upsert_rows` rows each, after the `new` rows
    // (so that consecutive batches never share a timestamp).
    let later_ts = ts_column(later).values().to_vec();
    let mut ingest = Vec::new();
    let mut start = first_later + args.upsert_rows;
    while start < later_ts.len() && later_ts[start] == later_ts[start - 1] {
        start += 1;
    }
    while ingest.len() < args.reps + 1 {
        let mut end = start + args.upsert_rows;
        while end < later_ts.len() && later_ts[end] == later_ts[end - 1] {
            end += 1;
        }
        assert!(end < later_ts.len(), "enough rows for the ingest batches");
        ingest.push(later.slice(start, end - start));
        start = end;
    }
    let half = args.upsert_rows / 2;
    let latest = corrected(&segs[segs.len() - 1].slice(r / 2 - half, args.upsert_rows));
    let per_seg = args.upsert_rows / segs.len();
    let extra = args.upsert_rows % segs.len();
    let spread_parts: Vec<RecordBatch> = segs
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let n = per_seg + usize::from(j < extra);
            s.slice(r / 2 - n / 2, n)
        })
        .collect();
    let spread = corrected(&compute::concat_batches(&spec.schema, &spread_parts).expect("concat"));
    // Every upsert row falls in shard 0.
    let part = spec.schema.index_of("station").expect("station");
    for b in [&new, &latest, &spread] {
        assert_eq!(b.num_rows(), args.upsert_rows);
    }
    for b in [&new, &latest, &spread].into_iter().chain(&ingest) {
        let in_target = shard_of_rows(b, &[part], shards).expect("shards");
        assert!(in_target.iter().all(|s| *s == 0));
    }
    let batches = BTreeMap::from([("new", new), ("latest", latest), ("spread", spread)]);

    let (counting, meta, dir): (Arc<CountingBlobStore>, Arc<dyn MetaStore>, _) = match store {
        "mem" => {
            let blobs = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
            let meta: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new());
            let catalog =
                Catalog::with_options(blobs.clone(), meta.clone(), TableOptions::default());
            let table = catalog.create_table(spec.clone()).await.expect("create");
            write_all(&table, &by_shard).await;
            (blobs, meta, None)
        }
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let fast = LocalStore::open(dir.path())
                .expect("store")
                .with_sync(false);
            let catalog = Catalog::new(Arc::new(fast.clone()), Arc::new(fast));
            let table = catalog.create_table(spec.clone()).await.expect("create");
            write_all(&table, &by_shard).await;
            let synced = LocalStore::open(dir.path()).expect("store");
            let blobs = Arc::new(CountingBlobStore::new(Arc::new(synced.clone())));
            (blobs, Arc::new(synced) as Arc<dyn MetaStore>, Some(dir))
        }
    };
    let catalog = Catalog::with_options(
        counting.clone() as Arc<dyn BlobStore>,
        meta,
        TableOptions::default(),
    );
    let table = catalog.open_table(TABLE).await.expect("open");
    let head = table.head().await.expect("head");
    let shard0 = head.shard_segments(0).count();
    assert_eq!(shard0, inside as usize, "one segment per write");
    assert_eq!(
        head.segment_count(),
        inside as usize + outside as usize * args.segs_per_shard
    );
    Config {
        store,
        outside,
        inside,
        table,
        counting,
        base: head.version,
        batches,
        ingest,
        ingest_next: 0,
        samples: MODES.iter().map(|m| (*m, Vec::new())).collect(),
        counts: BTreeMap::new(),
        setup_s: started.elapsed().as_secs_f64(),
        _dir: dir,
    }
}

async fn sample(c: &mut Config, mode: &'static str, keep: bool) {
    let batch = if mode == "ingest" {
        c.ingest_next += 1;
        c.ingest[c.ingest_next - 1].clone()
    } else {
        c.batches[mode].clone()
    };
    c.counting.reset();
    // The previous sample's rollback decoded (and dropped) a full checkpoint; settle
    // that garbage here rather than in this timed write.
    settle_allocator();
    let t = Instant::now();
    let out = c
        .table
        .write(&[batch], BTreeMap::new())
        .await
        .expect("upsert");
    let took = t.elapsed();
    let counts = c.counting.snapshot();
    let WriteOutcome::Committed(info) = out else {
        panic!("upsert without producer marks committed nothing")
    };
    let want_removed = match mode {
        "new" | "ingest" => 0,
        _ => c.batches[mode].num_rows() as u64,
    };
    assert_eq!(info.rows_removed, want_removed, "{mode}: rows replaced");
    if mode != "ingest" {
        c.table
            .rollback(&VersionSpec::Version(c.base))
            .await
            .expect("rollback");
    }
    if keep {
        c.samples.get_mut(mode).expect("mode").push(took);
        // Reads are deterministic; keep the last sample's counts.
        c.counts.insert(mode, counts);
    }
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "upsert-scale: one upsert of {} rows into shard 0 of a weather dataset; shard 0 holds M segments, \
         each of O other shards {} segments; {} rows per segment; median of {} samples; \
         LocalStore built with fsync OFF (setup only), measured with fsync ON",
        args.upsert_rows, args.segs_per_shard, args.rows_per_segment, args.reps
    );
    let mut configs = Vec::new();
    for store in ["mem", "local"] {
        if !args.stores.iter().any(|s| s == store) {
            continue;
        }
        for &o in &args.outside {
            for &m in &args.inside {
                let c = rt.block_on(build(store, o, m, &args));
                eprintln!("built {store} O={o} M={m} in {:.1}s", c.setup_s);
                configs.push(c);
            }
        }
    }
    let sizes = configs
        .iter()
        .flat_map(|c| c.ingest.iter().map(RecordBatch::num_rows));
    let (lo, hi) = sizes.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
    println!(
        "ingest batches: {lo}..={hi} rows (whole ticks); in mode ingest shard 0 holds M + i segments at sample i"
    );
    rt.block_on(async {
        // One untimed pass first, then the rounds; configurations alternate in a round.
        for c in configs.iter_mut() {
            for mode in RESET_MODES {
                sample(c, mode, false).await;
            }
        }
        for _ in 0..args.reps {
            for c in configs.iter_mut() {
                // An untimed sample first: the first write after switching datasets is
                // measurably slower (caches and allocator state of the previous one).
                sample(c, "new", false).await;
                for mode in RESET_MODES {
                    sample(c, mode, true).await;
                }
            }
        }
        // Ingest: no rollbacks from here on.
        for c in configs.iter_mut() {
            sample(c, "ingest", false).await;
        }
        for _ in 0..args.reps {
            for c in configs.iter_mut() {
                sample(c, "ingest", true).await;
            }
        }
    });

    let med: Vec<BTreeMap<&str, Duration>> = configs
        .iter_mut()
        .map(|c| c.samples.iter_mut().map(|(m, s)| (*m, median(s))).collect())
        .collect();
    // Baselines: the same store, mode and M with the fewest outside shards; the same
    // configuration in mode `new`.
    let min_outside = args.outside.iter().copied().min().unwrap_or(1);
    let base_of = |i: usize| {
        configs
            .iter()
            .position(|b| {
                b.store == configs[i].store
                    && b.inside == configs[i].inside
                    && b.outside == min_outside
            })
            .expect("baseline configuration")
    };
    println!();
    println!(
        "{:<6} {:>4} {:>9} {:>4} {:<7} {:>9} {:>9} {:>11} {:>7} {:>10} {:>10} {:>10}",
        "store",
        "O",
        "out segs",
        "M",
        "mode",
        "median ms",
        "segs read",
        "range calls",
        "ranges",
        "bytes read",
        format!("÷ O={min_outside}"),
        "÷ new"
    );
    let mut json = format!(
        "{{\"tool\":\"upsert-scale\",\"upsert_rows\":{},\"rows_per_segment\":{},\"segs_per_outside_shard\":{},\"reps\":{},\"results\":[",
        args.upsert_rows, args.rows_per_segment, args.segs_per_shard, args.reps
    );
    let mut first = true;
    for (i, c) in configs.iter().enumerate() {
        for mode in MODES {
            let t = med[i][mode];
            let n = &c.counts[mode];
            let vs_outside = ratio(t, med[base_of(i)][mode]);
            let vs_new = ratio(t, med[i]["new"]);
            println!(
                "{:<6} {:>4} {:>9} {:>4} {:<7} {:>9.3} {:>9} {:>11} {:>7} {:>10} {:>10.3} {:>10.3}",
                c.store,
                c.outside,
                c.outside as usize * args.segs_per_shard,
                c.inside,
                mode,
                ms(t),
                n.segments_read(),
                n.get_range_calls + n.get_ranges_calls,
                n.ranges,
                n.bytes_read,
                vs_outside,
                vs_new
            );
            if !first {
                json.push(',');
            }
            first = false;
            json += &format!(
                "{{\"store\":{},\"outside_shards\":{},\"outside_segments\":{},\"inside_segments\":{},\"mode\":{},\
                 \"median_ms\":{},\"segments_read\":{},\"checkpoints_read\":{},\"range_calls\":{},\"ranges\":{},\
                 \"bytes_read\":{},\"ratio_vs_min_outside\":{},\"ratio_vs_new\":{}}}",
                json_str(c.store),
                c.outside,
                c.outside as usize * args.segs_per_shard,
                c.inside,
                json_str(mode),
                ms(t),
                n.segments_read(),
                n.checkpoints_read(),
                n.get_range_calls + n.get_ranges_calls,
                n.ranges,
                n.bytes_read,
                vs_outside,
                vs_new
            );
        }
    }
    json += "]}";
    println!("{json}");
}
