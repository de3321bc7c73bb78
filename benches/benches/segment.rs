//! Segment write and read throughput for the weather schema, against plain arrow-rs
//! Parquet write/read of the same rows measured in the same run.
//!
//! Data: `STRATA_BENCH_ROWS` (default 1,000,000) rows of the weather feed that fall in
//! shard 0 of the weather dataset (8 shards), in feed order (time order, stations
//! interleaved), i.e. exactly what `Table::write` hands one shard's segment writer.
//!
//! What is timed:
//! - `strata_sort_write_{mem,local}`: Strata's segment write as `Table::write` does it
//!   per shard: `sort_and_dedupe` (primary-key sort, last duplicate wins) then
//!   `write_segments` into a `MemoryBlobStore` / a `LocalStore` in a tempdir with fsync
//!   on (the production setting). Shard splitting and the commit are not included.
//! - `strata_sort_dedupe`, `strata_write_segments_mem`: those two steps alone
//!   (`write_segments` over the already sorted batch).
//! - Baselines, all over the same sorted batch (so every file holds the same rows in
//!   the same order as the segment):
//!   `arrow_default_vec`: `ArrowWriter` with default `WriterProperties` (uncompressed)
//!   into a `Vec<u8>`; `arrow_zstd1_vec`: default properties but zstd level 1 (Strata's
//!   codec and level); `arrow_strata_props_vec`: exactly Strata's writer properties
//!   (zstd 1, page statistics, 8192-row pages, 256 Ki-row row groups, sorting columns),
//!   fed in Strata's 16 Ki-row slices; `arrow_zstd1_file_fsync`: zstd 1 into a file in a
//!   tempdir, then fsync of the file and its directory (what `LocalStore::put` pays).
//!   So `arrow_zstd1 / arrow_default` is the codec choice, `arrow_strata_props /
//!   arrow_zstd1` Strata's other encoding choices, and `strata_write_segments_mem /
//!   arrow_strata_props` Strata's own overhead (column statistics, key bounds, blob put).
//! - Reads: `strata_read_{mem,local}_{all,proj2}` = `read_segment` (async, ranged reads
//!   through the `BlobStore`, page index loaded) of all 9 columns / of `ts` and
//!   `temperature`; baselines `arrow_{default,zstd1,segment}_bytes_{all,proj2}` are the
//!   sync `ParquetRecordBatchReaderBuilder` over in-memory `Bytes` of the default file,
//!   the zstd-1 file, and Strata's own segment bytes; `arrow_zstd1_file_{all,proj2}` the
//!   same over the zstd-1 file on disk. All readers use 8192-row batches, as
//!   `read_segment` does, and collect every batch.
//!
//! After the criterion run a table of medians and ratios against the in-run baselines
//! is printed (from criterion's `estimates.json` of this run).

#![allow(clippy::print_stdout, reason = "a bench reports on stdout")]

use std::fs::File;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use strata_benches::one_shard_rows;
use strata_datagen::{WeatherFeed, weather_spec};
use strata_storage::{BlobStore, LocalStore, MemoryBlobStore};
use strata_table::SegmentOptions;
use strata_table::segment::{KeyCodec, SegmentMeta, read_segment, sort_and_dedupe, write_segments};
use tokio::runtime::Runtime;

const DEFAULT_ROWS: usize = 1_000_000;
/// Rows Strata hands its writer between size checks (crates/strata-table/src/segment.rs).
const WRITE_CHUNK_ROWS: usize = 16 * 1024;
const BATCH_ROWS: usize = 8192;
/// The 2-column projection: `ts` and `temperature`.
const PROJ2: [&str; 2] = ["ts", "temperature"];

const WRITE_GROUP: &str = "segment_write";
const READ_GROUP: &str = "segment_read";

struct Data {
    rows: usize,
    schema: SchemaRef,
    keys: KeyCodec,
    opts: SegmentOptions,
    unsorted: RecordBatch,
    sorted: RecordBatch,
    mem: Arc<dyn BlobStore>,
    mem_seg: SegmentMeta,
    local: Arc<dyn BlobStore>,
    local_seg: SegmentMeta,
    segment_bytes: Bytes,
    default_bytes: Bytes,
    zstd1_bytes: Bytes,
    strata_props_bytes: Bytes,
    zstd1_file: PathBuf,
    dir: tempfile::TempDir,
}

fn zstd1_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1")))
        .build()
}

/// Strata's own segment writer properties.
fn strata_props(schema: &Schema, keys: &KeyCodec, opts: &SegmentOptions) -> WriterProperties {
    strata_table::segment::writer_properties(schema, keys, opts)
}

fn arrow_write<W: std::io::Write + Send>(
    out: W,
    batch: &RecordBatch,
    props: &WriterProperties,
    chunk: Option<usize>,
) -> W {
    let mut w = ArrowWriter::try_new(out, batch.schema(), Some(props.clone())).expect("writer");
    match chunk {
        Some(n) => {
            let mut start = 0;
            while start < batch.num_rows() {
                let len = n.min(batch.num_rows() - start);
                w.write(&batch.slice(start, len)).expect("write");
                start += len;
            }
        }
        None => w.write(batch).expect("write"),
    }
    w.into_inner().expect("finish")
}

fn arrow_read<T: ChunkReader + 'static>(input: T, columns: Option<&[usize]>) -> usize {
    let builder = ParquetRecordBatchReaderBuilder::try_new(input)
        .expect("parquet footer")
        .with_batch_size(BATCH_ROWS);
    let builder = match columns {
        Some(cols) => {
            let mask = ProjectionMask::roots(builder.parquet_schema(), cols.iter().copied());
            builder.with_projection(mask)
        }
        None => builder,
    };
    let batches: Vec<RecordBatch> = builder
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("decode");
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

impl Data {
    fn new(rt: &Runtime) -> Data {
        let rows = std::env::var("STRATA_BENCH_ROWS")
            .ok()
            .and_then(|s| s.replace('_', "").parse().ok())
            .unwrap_or(DEFAULT_ROWS);
        let spec = weather_spec();
        let feed = WeatherFeed::default();
        let t = Instant::now();
        let (unsorted, consumed) = one_shard_rows(&feed, &spec, 0, 0, rows);
        println!(
            "data: {rows} weather rows of shard 0/{} (from {consumed} feed rows, {:.1}s to generate), \
             {} columns, {} MiB in Arrow memory",
            spec.shards,
            t.elapsed().as_secs_f64(),
            spec.schema.fields().len(),
            unsorted.get_array_memory_size() >> 20
        );
        let keys = KeyCodec::new(&spec.schema, &spec.partition_key, &spec.row_key).expect("keys");
        let opts = SegmentOptions::default();
        let sorted = sort_and_dedupe(&keys, &unsorted, true).expect("sort");
        assert_eq!(
            sorted.num_rows(),
            rows,
            "feed rows have unique primary keys"
        );

        let mem: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let dir = tempfile::tempdir().expect("tempdir");
        let local: Arc<dyn BlobStore> =
            Arc::new(LocalStore::open(dir.path().join("store")).expect("local store"));
        let (mem_seg, local_seg) = rt.block_on(async {
            let m = write_segments(mem.as_ref(), "bench", 0, &keys, &sorted, &opts)
                .await
                .expect("write mem");
            let l = write_segments(local.as_ref(), "bench", 0, &keys, &sorted, &opts)
                .await
                .expect("write local");
            assert_eq!((m.len(), l.len()), (1, 1), "one segment of the target size");
            (m[0].clone(), l[0].clone())
        });
        let segment_bytes = rt.block_on(mem.get(&mem_seg.path)).expect("segment bytes");
        let default_bytes = Bytes::from(arrow_write(
            Vec::new(),
            &sorted,
            &WriterProperties::default(),
            None,
        ));
        let zstd1_bytes = Bytes::from(arrow_write(Vec::new(), &sorted, &zstd1_props(), None));
        let strata_props_bytes = Bytes::from(arrow_write(
            Vec::new(),
            &sorted,
            &strata_props(&sorted.schema(), &keys, &opts),
            Some(WRITE_CHUNK_ROWS),
        ));
        let zstd1_file = dir.path().join("zstd1.parquet");
        std::fs::write(&zstd1_file, &zstd1_bytes).expect("write zstd1 file");
        println!("encoded sizes (bytes, bytes/row):");
        for (name, n) in [
            ("strata segment", segment_bytes.len()),
            ("arrow default (uncompressed)", default_bytes.len()),
            ("arrow zstd1", zstd1_bytes.len()),
            ("arrow with strata's properties", strata_props_bytes.len()),
        ] {
            println!("  {name:<32} {n:>12} {:>8.2}", n as f64 / rows as f64);
        }
        Data {
            rows,
            schema: spec.schema.clone(),
            keys,
            opts,
            unsorted,
            sorted,
            mem,
            mem_seg,
            local,
            local_seg,
            segment_bytes,
            default_bytes,
            zstd1_bytes,
            strata_props_bytes,
            zstd1_file,
            dir,
        }
    }

    fn proj2(&self) -> Vec<usize> {
        PROJ2
            .iter()
            .map(|c| self.schema.index_of(c).expect("projected column"))
            .collect()
    }
}

/// `sort_and_dedupe` + `write_segments` into `store`; the blobs are deleted untimed.
fn sort_write(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    d: &Data,
    store: Arc<dyn BlobStore>,
) {
    g.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let sorted = sort_and_dedupe(&d.keys, &d.unsorted, true).expect("sort");
                    let segs = write_segments(store.as_ref(), "w", 0, &d.keys, &sorted, &d.opts)
                        .await
                        .expect("write");
                    total += t.elapsed();
                    drop(sorted);
                    for s in segs {
                        store.delete(&s.path).await.expect("delete");
                    }
                }
                total
            }
        })
    });
}

fn bench_write(c: &mut Criterion, rt: &Runtime, d: &Data) {
    let mut g = c.benchmark_group(WRITE_GROUP);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(d.rows as u64));
    let keys = &d.keys;
    let opts = &d.opts;

    // Strata: sort + dedupe + write_segments, as Table::write does per shard.
    sort_write(
        &mut g,
        "strata_sort_write_mem",
        rt,
        d,
        Arc::new(MemoryBlobStore::new()),
    );
    let local: Arc<dyn BlobStore> =
        Arc::new(LocalStore::open(d.dir.path().join("write-store")).expect("local store"));
    sort_write(&mut g, "strata_sort_write_local", rt, d, local);

    g.bench_function("strata_sort_dedupe", |b| {
        b.iter(|| black_box(sort_and_dedupe(keys, &d.unsorted, true).expect("sort")))
    });
    let mem: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    g.bench_function("strata_write_segments_mem", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mem = mem.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let segs = write_segments(mem.as_ref(), "w", 0, keys, &d.sorted, opts)
                        .await
                        .expect("write");
                    total += t.elapsed();
                    for s in segs {
                        mem.delete(&s.path).await.expect("delete");
                    }
                }
                total
            }
        })
    });

    let default_props = WriterProperties::default();
    g.bench_function("arrow_default_vec", |b| {
        b.iter(|| black_box(arrow_write(Vec::new(), &d.sorted, &default_props, None).len()))
    });
    let zstd1 = zstd1_props();
    g.bench_function("arrow_zstd1_vec", |b| {
        b.iter(|| black_box(arrow_write(Vec::new(), &d.sorted, &zstd1, None).len()))
    });
    let sprops = strata_props(&d.sorted.schema(), keys, opts);
    g.bench_function("arrow_strata_props_vec", |b| {
        b.iter(|| {
            black_box(arrow_write(Vec::new(), &d.sorted, &sprops, Some(WRITE_CHUNK_ROWS)).len())
        })
    });
    let file_dir = d.dir.path().join("arrow-files");
    std::fs::create_dir_all(&file_dir).expect("mkdir");
    g.bench_function("arrow_zstd1_file_fsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = file_dir.join(format!("{i}.parquet"));
                let t = Instant::now();
                let file = File::create(&path).expect("create");
                let file = arrow_write(file, &d.sorted, &zstd1, None);
                file.sync_all().expect("fsync");
                sync_dir(&file_dir);
                total += t.elapsed();
                drop(file);
                std::fs::remove_file(&path).expect("remove");
            }
            total
        })
    });
    g.finish();
}

fn bench_read(c: &mut Criterion, rt: &Runtime, d: &Data) {
    let mut g = c.benchmark_group(READ_GROUP);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(d.rows as u64));
    let all: Vec<usize> = (0..d.schema.fields().len()).collect();
    let proj2 = d.proj2();
    for (proj, cols) in [("all", &all), ("proj2", &proj2)] {
        for (store, blobs, seg) in [
            ("mem", &d.mem, &d.mem_seg),
            ("local", &d.local, &d.local_seg),
        ] {
            g.bench_function(format!("strata_read_{store}_{proj}"), |b| {
                b.to_async(rt).iter(|| async {
                    let batches = read_segment(blobs.clone(), seg, &d.schema, cols, None)
                        .await
                        .expect("read");
                    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    assert_eq!(n, d.rows);
                    black_box(batches)
                })
            });
        }
        let sel = (proj == "proj2").then_some(cols.as_slice());
        for (name, bytes) in [
            ("default", &d.default_bytes),
            ("zstd1", &d.zstd1_bytes),
            ("segment", &d.segment_bytes),
        ] {
            g.bench_function(format!("arrow_{name}_bytes_{proj}"), |b| {
                b.iter(|| {
                    let n = arrow_read(bytes.clone(), sel);
                    assert_eq!(n, d.rows);
                    black_box(n)
                })
            });
        }
        g.bench_function(format!("arrow_zstd1_file_{proj}"), |b| {
            b.iter(|| {
                let n = arrow_read(File::open(&d.zstd1_file).expect("open"), sel);
                assert_eq!(n, d.rows);
                black_box(n)
            })
        });
    }
    g.finish();
}

/// Where criterion writes `estimates.json`: the same rule criterion uses
/// (`CRITERION_HOME`, else `<cargo target dir>/criterion`).
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(t).join("criterion"));
    }
    // The bench executable lives in <target>/release/deps.
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median (ns) criterion estimated in this run for `group/bench`.
fn median_ns(dir: &Path, group: &str, bench: &str) -> Option<f64> {
    let text = std::fs::read_to_string(
        dir.join(group)
            .join(bench)
            .join("new")
            .join("estimates.json"),
    )
    .ok()?;
    let after = &text[text.find("\"median\"")?..];
    let p = &after[after.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = p.find([',', '}'])?;
    p[..end].trim().parse().ok()
}

fn summary(d: &Data, started: std::time::SystemTime) {
    let Some(dir) = criterion_dir() else {
        println!("(no criterion directory found: no ratio table)");
        return;
    };
    // Only estimates written by this run count.
    let fresh = |group: &str, bench: &str| -> Option<f64> {
        let p = dir
            .join(group)
            .join(bench)
            .join("new")
            .join("estimates.json");
        let modified = std::fs::metadata(&p).ok()?.modified().ok()?;
        (modified >= started)
            .then(|| median_ns(&dir, group, bench))
            .flatten()
    };
    let table = |group: &str, benches: &[&str], baselines: &[&str]| {
        let base: Vec<Option<f64>> = baselines.iter().map(|b| fresh(group, b)).collect();
        print!("{:<28} {:>10} {:>9}", "bench", "median ms", "Mrows/s");
        for b in baselines {
            print!("  {:>22}", format!("÷ {b}"));
        }
        println!();
        for bench in benches {
            let Some(ns) = fresh(group, bench) else {
                continue;
            };
            print!(
                "{bench:<28} {:>10.2} {:>9.2}",
                ns / 1e6,
                d.rows as f64 / (ns / 1e9) / 1e6
            );
            for b in &base {
                match b {
                    Some(b) => print!("  {:>22.3}", ns / b),
                    None => print!("  {:>22}", "-"),
                }
            }
            println!();
        }
    };
    println!("\n== {WRITE_GROUP}: medians of this run, ratios against in-run baselines ==");
    table(
        WRITE_GROUP,
        &[
            "strata_sort_write_mem",
            "strata_sort_write_local",
            "strata_sort_dedupe",
            "strata_write_segments_mem",
            "arrow_default_vec",
            "arrow_zstd1_vec",
            "arrow_strata_props_vec",
            "arrow_zstd1_file_fsync",
        ],
        &[
            "arrow_default_vec",
            "arrow_zstd1_vec",
            "arrow_strata_props_vec",
            "arrow_zstd1_file_fsync",
        ],
    );
    for proj in ["all", "proj2"] {
        println!(
            "\n== {READ_GROUP} ({proj}): medians of this run, ratios against in-run baselines =="
        );
        let names: Vec<String> = [
            "strata_read_mem",
            "strata_read_local",
            "arrow_default_bytes",
            "arrow_zstd1_bytes",
            "arrow_segment_bytes",
            "arrow_zstd1_file",
        ]
        .iter()
        .map(|n| format!("{n}_{proj}"))
        .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        table(READ_GROUP, &refs, &[refs[2], refs[3], refs[4]]);
    }
    println!(
        "\nsizes: strata segment {} B, arrow default {} B, arrow zstd1 {} B, arrow strata props {} B",
        d.segment_bytes.len(),
        d.default_bytes.len(),
        d.zstd1_bytes.len(),
        d.strata_props_bytes.len()
    );
}

fn main() {
    let started = std::time::SystemTime::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let d = Data::new(&rt);
    bench_write(&mut c, &rt, &d);
    bench_read(&mut c, &rt, &d);
    c.final_summary();
    summary(&d, started);
}
