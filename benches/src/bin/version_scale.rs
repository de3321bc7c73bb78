//! How manifest reads and rollback scale with the length of a dataset's history.
//!
//! For each N in `--versions` (default `1000,100000`) this builds a weather dataset with
//! N versions on a `LocalStore`, then measures, each with a fresh `Catalog` and `Table`
//! (no manifest cache) over the same directory re-opened with fsync on:
//! (a) `open_table` + `head()`; (b) `manifest(N/2)` (a checkpoint version) and
//! `manifest(N/2 + 99)` (the longest replay: 99 records after a checkpoint), open not
//! timed; (c) `rollback(&VersionSpec::Version(N/2))`, commit included, open not timed.
//! Each figure is the median of `--reps` repetitions; the datasets are measured in
//! alternation, round by round, so drift of the shared machine hits all alike.
//!
//! History: version 1 creates the dataset; then each version is one `Table::write` of
//! `--rows-per-version` rows (default 4) of one shard (rotating over the 8 shards) at that
//! shard's next tick: time-ordered new keys, so upsert resolution reads nothing. Every
//! `--correct-every`-th version (default 50) instead re-writes the rows of that shard's
//! previous tick with changed values (an upsert that replaces live rows). Every
//! `--compact-every` versions (default 500, at versions ≡ 250 mod 500) the version is a
//! `compact()`, so the number of live segments stays bounded as in a maintained table;
//! with these defaults the versions measured (N, N/2, N/2+99) sit at the same point of the
//! compaction cycle for N = 1000 and N = 100000, so their manifests are alike in size and
//! the ratio isolates the length of the history.
//! The history is built with fsync off (`LocalStore::with_sync(false)`, benchmark setup
//! only); all measurements re-open the directory with fsync on. The OS page cache is warm.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float64Array, RecordBatch, UInt32Array};
use arrow::compute;
use strata_benches::{json_str, median, ms, parse_list, ratio, settle_allocator};
use strata_datagen::{WeatherFeed, weather_spec};
use strata_storage::{BlobStore, LocalStore, MetaStore};
use strata_table::segment::shard_of_rows;
use strata_table::{Catalog, Table, TableOptions, VersionSpec, WriteOutcome};
use strata_types::DatasetSpec;

const TABLE: &str = "weather";

#[derive(Debug)]
struct Args {
    versions: Vec<u64>,
    dir: Option<PathBuf>,
    rows_per_version: usize,
    compact_every: u64,
    correct_every: u64,
    reps: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: version-scale [--versions 1000,100000] [--dir DIR] [--rows-per-version 4]\n\
         \x20                    [--compact-every 500] [--correct-every 50] [--reps 7]\n\
         --dir: where to build the datasets (a subdirectory n<N> each, which must not exist);\n\
         default: a temporary directory, removed at exit. --compact-every 0: never compact."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        versions: vec![1000, 100_000],
        dir: None,
        rows_per_version: 4,
        compact_every: 500,
        correct_every: 50,
        reps: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let num = |s: String| {
            s.replace('_', "")
                .parse::<u64>()
                .unwrap_or_else(|_| usage())
        };
        match flag.as_str() {
            "--versions" => args.versions = parse_list(&value()).unwrap_or_else(|_| usage()),
            "--dir" => args.dir = Some(PathBuf::from(value())),
            "--rows-per-version" => args.rows_per_version = num(value()) as usize,
            "--compact-every" => args.compact_every = num(value()),
            "--correct-every" => args.correct_every = num(value()),
            "--reps" => args.reps = num(value()) as usize,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if args.versions.is_empty() || args.versions.iter().any(|&n| n < 4) || args.reps == 0 {
        usage();
    }
    args
}

/// The feed's stations grouped by the shard of the weather dataset they fall in.
fn stations_by_shard(feed: &WeatherFeed, spec: &DatasetSpec) -> Vec<Vec<usize>> {
    let tick = feed.batch(0, feed.stations);
    let part = spec
        .schema
        .index_of(&spec.partition_key[0])
        .expect("partition key");
    let shards = shard_of_rows(&tick, &[part], spec.shards).expect("shards");
    let mut out = vec![Vec::new(); spec.shards as usize];
    for (station, s) in shards.iter().enumerate() {
        out[*s as usize].push(station);
    }
    out
}

/// Generates the history of one dataset, version by version.
struct Workload {
    feed: WeatherFeed,
    by_shard: Vec<Vec<usize>>,
    /// Ticks written so far, per shard.
    ticks: Vec<u64>,
    rows: usize,
}

impl Workload {
    fn stations(&self, shard: usize, tick: u64) -> Vec<u32> {
        let list = &self.by_shard[shard];
        (0..self.rows)
            .map(|i| list[(tick as usize * self.rows + i) % list.len()] as u32)
            .collect()
    }

    fn rows_at(&self, shard: usize, tick: u64) -> RecordBatch {
        let all = self
            .feed
            .batch(tick * self.feed.stations as u64, self.feed.stations);
        compute::take_record_batch(&all, &UInt32Array::from(self.stations(shard, tick)))
            .expect("take")
    }

    /// The next tick of `shard`: new keys, later than every key the shard holds.
    fn append(&mut self, shard: usize) -> RecordBatch {
        let tick = self.ticks[shard];
        self.ticks[shard] += 1;
        self.rows_at(shard, tick)
    }

    /// The rows of `shard`'s latest tick again, with corrected temperatures.
    fn correction(&mut self, shard: usize) -> Option<RecordBatch> {
        let tick = self.ticks[shard].checked_sub(1)?;
        let rows = self.rows_at(shard, tick);
        let idx = rows.schema().index_of("temperature").expect("temperature");
        let temp = rows
            .column(idx)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("float64");
        let fixed: Float64Array = temp.iter().map(|t| t.map(|t| t + 0.5)).collect();
        let mut cols = rows.columns().to_vec();
        cols[idx] = Arc::new(fixed) as Arc<dyn Array>;
        Some(RecordBatch::try_new(rows.schema(), cols).expect("same schema"))
    }
}

#[derive(Debug, Default)]
struct BuildStats {
    seconds: f64,
    writes: u64,
    corrections: u64,
    compactions: u64,
}

async fn build(dir: &PathBuf, n: u64, args: &Args) -> BuildStats {
    let store = LocalStore::open(dir).expect("open store").with_sync(false);
    let catalog = Catalog::with_options(
        Arc::new(store.clone()),
        Arc::new(store),
        TableOptions::default(),
    );
    let spec = weather_spec();
    let feed = WeatherFeed::default();
    let by_shard = stations_by_shard(&feed, &spec);
    let min_stations = by_shard.iter().map(Vec::len).min().unwrap_or(0);
    assert!(
        min_stations >= args.rows_per_version,
        "every shard needs {} stations, one has {min_stations}",
        args.rows_per_version
    );
    let shards = spec.shards as usize;
    let mut w = Workload {
        feed,
        by_shard,
        ticks: vec![0; shards],
        rows: args.rows_per_version,
    };
    let started = Instant::now();
    let table = catalog.create_table(spec).await.expect("create");
    let mut stats = BuildStats::default();
    let mut last_report = Instant::now();
    for v in 2..=n {
        let shard = (v % shards as u64) as usize;
        let compact = args.compact_every > 0 && v % args.compact_every == args.compact_every / 2;
        let correct = !compact && args.correct_every > 0 && v % args.correct_every == 0;
        let committed = if compact {
            stats.compactions += 1;
            table.compact().await.expect("compact").map(|i| i.version)
        } else {
            let batch = match correct.then(|| w.correction(shard)).flatten() {
                Some(b) => {
                    stats.corrections += 1;
                    b
                }
                None => w.append(shard),
            };
            stats.writes += 1;
            match table
                .write(&[batch], Default::default())
                .await
                .expect("write")
            {
                WriteOutcome::Committed(i) => Some(i.version),
                WriteOutcome::Duplicate { .. } => None,
            }
        };
        // A compaction with nothing to do commits nothing: write instead so that the
        // dataset has exactly N versions.
        let committed = match committed {
            Some(c) => c,
            None => {
                let batch = w.append(shard);
                match table
                    .write(&[batch], Default::default())
                    .await
                    .expect("write")
                {
                    WriteOutcome::Committed(i) => i.version,
                    WriteOutcome::Duplicate { .. } => unreachable!("no producer marks"),
                }
            }
        };
        assert_eq!(committed, v, "one version per step");
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  n={n}: built {v} versions in {:.0}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats
}

/// A store over `dir` with fsync on, and a catalog with default options over it.
fn measuring_catalog(store: &LocalStore) -> Catalog {
    let blobs: Arc<dyn BlobStore> = Arc::new(store.clone());
    let meta: Arc<dyn MetaStore> = Arc::new(store.clone());
    Catalog::with_options(blobs, meta, TableOptions::default())
}

async fn fresh_table(store: &LocalStore) -> Table {
    measuring_catalog(store)
        .open_table(TABLE)
        .await
        .expect("open")
}

#[derive(Debug, Default)]
struct Samples {
    open_head: Vec<Duration>,
    old: Vec<Duration>,
    old_replay: Vec<Duration>,
    rollback: Vec<Duration>,
    head_version: u64,
    head_segments: usize,
    old_segments: usize,
    old_replay_segments: usize,
}

struct Dataset {
    n: u64,
    store: LocalStore,
    build: BuildStats,
    samples: Samples,
}

impl Dataset {
    fn old(&self) -> u64 {
        self.n / 2
    }

    /// The version N/2 + interval - 1 (at most N): the most records replayed after a checkpoint.
    fn old_replay(&self) -> u64 {
        let interval = TableOptions::default().checkpoint_interval;
        let base = self.old() - self.old() % interval;
        (base + interval - 1).min(self.n)
    }
}

async fn measure_reads(d: &mut Dataset) {
    settle_allocator();
    let t = Instant::now();
    let table = fresh_table(&d.store).await;
    let head = table.head().await.expect("head");
    d.samples.open_head.push(t.elapsed());
    d.samples.head_version = head.version;
    d.samples.head_segments = head.segment_count();

    let table = fresh_table(&d.store).await;
    settle_allocator();
    let t = Instant::now();
    let m = table.manifest(d.old()).await.expect("old manifest");
    d.samples.old.push(t.elapsed());
    d.samples.old_segments = m.segment_count();

    let table = fresh_table(&d.store).await;
    settle_allocator();
    let t = Instant::now();
    let m = table.manifest(d.old_replay()).await.expect("old manifest");
    d.samples.old_replay.push(t.elapsed());
    d.samples.old_replay_segments = m.segment_count();
}

async fn measure_rollback(d: &mut Dataset) {
    let table = fresh_table(&d.store).await;
    settle_allocator();
    let t = Instant::now();
    let info = table
        .rollback(&VersionSpec::Version(d.old()))
        .await
        .expect("rollback");
    d.samples.rollback.push(t.elapsed());
    // The rolled-back head has the content of N/2.
    let check = fresh_table(&d.store).await.head().await.expect("head");
    assert_eq!(check.version, info.version);
    let want = fresh_table(&d.store)
        .await
        .manifest(d.old())
        .await
        .expect("old");
    assert_eq!(
        check
            .live_segments()
            .map(|s| &s.meta.id)
            .collect::<Vec<_>>(),
        want.live_segments().map(|s| &s.meta.id).collect::<Vec<_>>(),
        "rollback restores the segments of the target"
    );
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    println!(
        "version-scale: weather dataset on LocalStore under {}; history built with fsync OFF \
         (with_sync(false), setup only); measured with fsync ON, fresh Catalog/Table per sample, \
         warm OS page cache; default TableOptions (checkpoint_interval {})",
        root.display(),
        TableOptions::default().checkpoint_interval
    );
    println!(
        "history: {} rows per write (one shard, new keys), a correcting upsert every {} versions, \
         compact() every {} versions; {} repetitions per figure",
        args.rows_per_version, args.correct_every, args.compact_every, args.reps
    );
    let mut sets = Vec::new();
    for &n in &args.versions {
        let dir = root.join(format!("n{n}"));
        if dir.exists() {
            eprintln!("{} exists; pick another --dir", dir.display());
            std::process::exit(2);
        }
        eprintln!("building n={n} ...");
        let build = rt.block_on(build(&dir, n, &args));
        eprintln!(
            "  n={n}: {:.1}s ({:.0} versions/s): {} writes ({} corrections), {} compactions",
            build.seconds,
            n as f64 / build.seconds,
            build.writes,
            build.corrections,
            build.compactions
        );
        let store = LocalStore::open(&dir).expect("reopen store with fsync on");
        sets.push(Dataset {
            n,
            store,
            build,
            samples: Samples::default(),
        });
    }
    rt.block_on(async {
        // One untimed pass first, then the rounds; datasets alternate within a round.
        for d in sets.iter_mut() {
            measure_reads(d).await;
            d.samples = Samples::default();
        }
        for _ in 0..args.reps {
            for d in sets.iter_mut() {
                measure_reads(d).await;
            }
        }
        for _ in 0..args.reps {
            for d in sets.iter_mut() {
                measure_rollback(d).await;
            }
        }
    });

    println!();
    println!(
        "{:>9} {:>8} {:>10} {:>14} {:>17} {:>21} {:>13}",
        "versions",
        "build s",
        "head segs",
        "open+head ms",
        "manifest(N/2) ms",
        "manifest(N/2+99) ms",
        "rollback ms"
    );
    let mut med = Vec::new();
    for d in sets.iter_mut() {
        let s = &mut d.samples;
        let m = (
            median(&mut s.open_head),
            median(&mut s.old),
            median(&mut s.old_replay),
            median(&mut s.rollback),
        );
        println!(
            "{:>9} {:>8.1} {:>10} {:>14.3} {:>17.3} {:>21.3} {:>13.3}",
            d.n,
            d.build.seconds,
            s.head_segments,
            ms(m.0),
            ms(m.1),
            ms(m.2),
            ms(m.3)
        );
        med.push(m);
    }
    let ratios = (sets.len() >= 2).then(|| {
        let (a, b) = (&med[0], &med[med.len() - 1]);
        (
            ratio(b.0, a.0),
            ratio(b.1, a.1),
            ratio(b.2, a.2),
            ratio(b.3, a.3),
        )
    });
    if let Some(r) = ratios {
        println!(
            "{:>9} {:>8} {:>10} {:>14.3} {:>17.3} {:>21.3} {:>13.3}",
            format!("{}/{}", sets[sets.len() - 1].n, sets[0].n),
            "",
            "",
            r.0,
            r.1,
            r.2,
            r.3
        );
    }
    let mut json = String::from(
        "{\"tool\":\"version-scale\",\"store\":\"local\",\"build_sync\":false,\"measure_sync\":true",
    );
    json += &format!(
        ",\"checkpoint_interval\":{},\"rows_per_version\":{},\"correct_every\":{},\"compact_every\":{},\"reps\":{},\"datasets\":[",
        TableOptions::default().checkpoint_interval,
        args.rows_per_version,
        args.correct_every,
        args.compact_every,
        args.reps
    );
    for (i, (d, m)) in sets.iter().zip(&med).enumerate() {
        if i > 0 {
            json.push(',');
        }
        json += &format!(
            "{{\"versions\":{},\"build_s\":{:.1},\"compactions\":{},\"corrections\":{},\"head_version\":{},\"head_segments\":{},\
             \"old_version\":{},\"old_segments\":{},\"old_replay_version\":{},\"old_replay_segments\":{},\
             \"open_head_ms\":{},\"manifest_old_ms\":{},\"manifest_old_replay_ms\":{},\"rollback_ms\":{}}}",
            d.n,
            d.build.seconds,
            d.build.compactions,
            d.build.corrections,
            d.samples.head_version,
            d.samples.head_segments,
            d.old(),
            d.samples.old_segments,
            d.old_replay(),
            d.samples.old_replay_segments,
            ms(m.0),
            ms(m.1),
            ms(m.2),
            ms(m.3)
        );
    }
    json.push(']');
    if let Some(r) = ratios {
        json += &format!(
            ",\"ratio\":{{\"of\":{},\"open_head\":{},\"manifest_old\":{},\"manifest_old_replay\":{},\"rollback\":{}}}",
            json_str(&format!("{}/{}", sets[sets.len() - 1].n, sets[0].n)),
            r.0,
            r.1,
            r.2,
            r.3
        );
    }
    json.push('}');
    println!("{json}");
}
