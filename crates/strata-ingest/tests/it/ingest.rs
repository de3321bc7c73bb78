use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use strata_ingest::{Error, IngestConfig, Ingester, WAL_MARK};
use strata_storage::{BlobStore, MemoryBlobStore, MemoryMetaStore, MetaStore};
use strata_table::{Catalog, VersionSpec};
use strata_types::{DatasetName, DatasetSpec};

struct Env {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    wal: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            blobs: Arc::new(MemoryBlobStore::new()),
            meta: Arc::new(MemoryMetaStore::new()),
            wal: tempfile::tempdir().unwrap(),
        }
    }

    /// An ingester that flushes only when asked (or under memory pressure).
    fn config(&self) -> IngestConfig {
        let mut c = IngestConfig::new(self.wal.path());
        c.flush_interval = Duration::from_secs(3600);
        c.compaction_interval = Duration::from_secs(3600);
        c
    }

    async fn open(&self, config: IngestConfig) -> Ingester {
        let catalog = Catalog::new(self.blobs.clone(), self.meta.clone());
        Ingester::open(catalog, config).await.unwrap()
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]))
}

fn spec(name: &str, row_key: bool) -> DatasetSpec {
    DatasetSpec::new(
        DatasetName::new(name).unwrap(),
        schema(),
        vec!["k".into()],
        if row_key { vec!["t".into()] } else { vec![] },
        4,
    )
    .unwrap()
}

/// Rows `t = first..first+n` spread over ten keys.
fn batch(first: i64, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (first..first + n).map(|t| format!("key{}", t % 10)),
            )),
            Arc::new(Int64Array::from_iter_values(first..first + n)),
            Arc::new(Float64Array::from_iter_values(
                (first..first + n).map(|t| t as f64),
            )),
        ],
    )
    .unwrap()
}

fn ipc(batches: &[RecordBatch]) -> Bytes {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batches[0].schema()).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    Bytes::from(out)
}

/// Every `t` at the head, sorted.
async fn ts_at_head(ingester: &Ingester, name: &str) -> Vec<i64> {
    let table = ingester.catalog().open_table(name).await.unwrap();
    let all = table
        .snapshot(&VersionSpec::Head)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    let t = all
        .column_by_name("t")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let mut v: Vec<i64> = t.values().to_vec();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn acked_batches_land_once_with_their_marks() {
    let env = Env::new();
    let ing = env.open(env.config()).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    let mut s = ing.open_stream("events", "job-1").await.unwrap();
    assert_eq!(s.last_sequence(), 0);
    let mut pending = vec![];
    for i in 0..10 {
        pending.push(
            s.submit(i + 1, ipc(&[batch(i as i64 * 100, 100)]))
                .await
                .unwrap(),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let ack = p.await.unwrap();
        assert_eq!(
            (ack.sequence, ack.duplicate, ack.rows),
            (i as u64 + 1, false, 100)
        );
    }
    assert_eq!(ing.status("events").await.unwrap().unflushed_rows, 1000);
    let v = ing.flush("events").await.unwrap();
    assert_eq!(v, 2, "one version for the whole memtable");
    assert_eq!(
        ts_at_head(&ing, "events").await,
        (0..1000).collect::<Vec<_>>()
    );
    let head = ing
        .catalog()
        .open_table("events")
        .await
        .unwrap()
        .head()
        .await
        .unwrap();
    assert_eq!(head.producers["job-1"], 10);
    assert!(head.producers[WAL_MARK] >= 10);
    // Nothing left to flush: the head again.
    assert_eq!(ing.flush("events").await.unwrap(), 2);
    assert_eq!(ing.status("events").await.unwrap().unflushed_rows, 0);

    // Resent batches (before and after the flush) are duplicates, also on a new stream.
    let mut s2 = ing.open_stream("events", "job-1").await.unwrap();
    assert_eq!(s2.last_sequence(), 10);
    let ack = s2
        .submit(3, ipc(&[batch(0, 100)]))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate);
    let ack = s2
        .submit(11, ipc(&[batch(1000, 5)]))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);
    ing.flush("events").await.unwrap();
    assert_eq!(
        ts_at_head(&ing, "events").await,
        (0..1005).collect::<Vec<_>>()
    );
    ing.shutdown().await.unwrap();
}

#[tokio::test]
async fn sequence_numbers_must_increase_on_a_stream() {
    let env = Env::new();
    let ing = env.open(env.config()).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    for producer in ["p", ""] {
        let mut s = ing.open_stream("events", producer).await.unwrap();
        s.submit(5, ipc(&[batch(0, 1)]))
            .await
            .unwrap()
            .await
            .unwrap();
        for bad in [5, 4] {
            match s.submit(bad, ipc(&[batch(0, 1)])).await {
                Err(Error::SequenceNotIncreasing {
                    sequence,
                    previous: 5,
                }) => {
                    assert_eq!(sequence, bad)
                }
                other => panic!("expected SequenceNotIncreasing, got {:?}", other.err()),
            }
        }
    }
    ing.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let env = Env::new();
    let mut config = env.config();
    config.max_batch_bytes = 64 << 10;
    let ing = env.open(config).await;
    ing.create_dataset(spec("events", true)).await.unwrap();
    assert!(matches!(
        ing.open_stream("nope", "p").await,
        Err(Error::DatasetNotFound(n)) if n == "nope"
    ));
    for bad in ["has space", "$wal", "x/y", &"p".repeat(129)] {
        assert!(
            matches!(
                ing.open_stream("events", bad).await,
                Err(Error::InvalidProducer { .. })
            ),
            "{bad}"
        );
    }
    let mut s = ing.open_stream("events", "p").await.unwrap();
    s.submit(1, ipc(&[batch(0, 10)]))
        .await
        .unwrap()
        .await
        .unwrap();

    let good = batch(100, 10);
    let mismatch = |cols: Vec<(Field, arrow::array::ArrayRef)>| {
        let (fields, arrays): (Vec<_>, Vec<_>) = cols.into_iter().unzip();
        ipc(&[RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()])
    };
    let k = (
        Field::new("k", DataType::Utf8, false),
        good.column(0).clone(),
    );
    let t = (
        Field::new("t", DataType::Int64, false),
        good.column(1).clone(),
    );
    let v = (
        Field::new("v", DataType::Float64, true),
        good.column(2).clone(),
    );
    let cases: Vec<(&str, Bytes, &str)> = vec![
        (
            "missing column",
            mismatch(vec![k.clone(), t.clone()]),
            "\"v\"",
        ),
        (
            "extra column",
            mismatch(vec![
                k.clone(),
                t.clone(),
                v.clone(),
                (
                    Field::new("w", DataType::UInt64, true),
                    Arc::new(UInt64Array::from(vec![1; 10])),
                ),
            ]),
            "\"w\"",
        ),
        (
            "mistyped column",
            mismatch(vec![
                k.clone(),
                (
                    Field::new("t", DataType::Float64, false),
                    Arc::new(Float64Array::from(vec![1.0; 10])),
                ),
                v.clone(),
            ]),
            "\"t\"",
        ),
        (
            "null in key",
            mismatch(vec![
                (
                    Field::new("k", DataType::Utf8, true),
                    Arc::new(StringArray::from(vec![None::<&str>; 10])),
                ),
                t.clone(),
                v.clone(),
            ]),
            "key column \"k\"",
        ),
    ];
    for (seq, (what, bytes, needle)) in (10..).zip(cases) {
        match s.submit(seq, bytes).await {
            Err(e @ Error::SchemaMismatch { .. }) => {
                assert!(e.to_string().contains(needle), "{what}: {e}")
            }
            other => panic!("{what}: expected a schema mismatch, got {:?}", other.err()),
        }
    }
    let whole = ipc(std::slice::from_ref(&good));
    for (what, bytes) in [
        ("garbage", Bytes::from_static(b"definitely not arrow")),
        ("truncated", whole.slice(..whole.len() - 40)),
        ("empty", Bytes::new()),
    ] {
        assert!(
            matches!(s.submit(20, bytes).await, Err(Error::MalformedIpc { .. })),
            "{what}"
        );
    }
    let big = ipc(&[batch(0, 10_000)]);
    assert!(matches!(
        s.submit(21, big).await,
        Err(Error::BatchTooLarge { max, .. }) if max == 64 << 10
    ));
    // Reordered columns are fine.
    let reordered = mismatch(vec![v, t, k]);
    s.submit(30, reordered).await.unwrap().await.unwrap();
    ing.flush("events").await.unwrap();
    let mut want: Vec<i64> = (0..10).chain(100..110).collect();
    want.sort_unstable();
    assert_eq!(ts_at_head(&ing, "events").await, want);
    ing.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_crash_replays_acked_rows_exactly_once() {
    let env = Env::new();
    let ing = env.open(env.config()).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    let mut s = ing.open_stream("events", "p").await.unwrap();
    for i in 0..5 {
        s.submit(i + 1, ipc(&[batch(i as i64 * 10, 10)]))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Half of it committed, half only in the log.
    ing.flush("events").await.unwrap();
    for i in 5..10 {
        s.submit(i + 1, ipc(&[batch(i as i64 * 10, 10)]))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut anon = ing.open_stream("events", "").await.unwrap();
    anon.submit(1, ipc(&[batch(1000, 3)]))
        .await
        .unwrap()
        .await
        .unwrap();
    // "Crash": the old ingester is abandoned without a flush or a clean close.
    std::mem::forget(s);
    std::mem::forget(anon);
    // Its WAL is closed as a dying process's would be (the lock goes with it); its
    // memtables are lost.
    ing.abandon().await.unwrap();

    let ing = env.open(env.config()).await;
    assert_eq!(ing.status("events").await.unwrap().unflushed_rows, 53);
    let mut s = ing.open_stream("events", "p").await.unwrap();
    assert_eq!(s.last_sequence(), 10, "the replayed high-water mark");
    assert!(
        s.submit(7, ipc(&[batch(60, 10)]))
            .await
            .unwrap()
            .await
            .unwrap()
            .duplicate
    );
    ing.flush("events").await.unwrap();
    let want: Vec<i64> = (0..100).chain(1000..1003).collect();
    assert_eq!(ts_at_head(&ing, "events").await, want);
    std::mem::forget(s);
    // Its WAL is closed as a dying process's would be (the lock goes with it); its
    // memtables are lost.
    ing.abandon().await.unwrap();

    // Crash again after the flush: the log still holds the entries, the marks skip them.
    let ing = env.open(env.config()).await;
    assert_eq!(ing.status("events").await.unwrap().unflushed_rows, 0);
    assert_eq!(ts_at_head(&ing, "events").await, want);
    ing.shutdown().await.unwrap();
    // A clean shutdown leaves an empty log.
    let left = strata_ingest::wal::log_files(env.wal.path()).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_dropped_and_recreated_dataset_does_not_get_old_log_entries() {
    let env = Env::new();
    let ing = env.open(env.config()).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    let mut s = ing.open_stream("events", "p").await.unwrap();
    s.submit(1, ipc(&[batch(0, 10)]))
        .await
        .unwrap()
        .await
        .unwrap();
    ing.drop_dataset("events").await.unwrap();
    assert!(matches!(
        s.submit(2, ipc(&[batch(0, 10)])).await,
        Err(Error::DatasetNotFound(_))
    ));
    ing.create_dataset(spec("events", false)).await.unwrap();
    std::mem::forget(s);
    // Its WAL is closed as a dying process's would be (the lock goes with it); its
    // memtables are lost.
    ing.abandon().await.unwrap();
    let ing = env.open(env.config()).await;
    assert_eq!(ing.status("events").await.unwrap().unflushed_rows, 0);
    let s = ing.open_stream("events", "p").await.unwrap();
    assert_eq!(
        s.last_sequence(),
        0,
        "the new dataset does not know the old producer"
    );
    ing.shutdown().await.unwrap();
}

#[tokio::test]
async fn writers_wait_when_memory_is_full_and_resume_after_a_flush() {
    let env = Env::new();
    let mut config = env.config();
    config.memory_limit_bytes = 256 << 10;
    config.flush_rows = usize::MAX;
    config.flush_bytes = usize::MAX;
    let ing = env.open(config.clone()).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    // The flusher frees memory under pressure by itself: many times the limit goes through.
    let mut s = ing.open_stream("events", "p").await.unwrap();
    let mut acks = vec![];
    for i in 0..200 {
        acks.push(
            s.submit(i + 1, ipc(&[batch(i as i64 * 1000, 1000)]))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    let stats = ing.stats();
    assert!(stats.flushes > 1, "{stats:?}");
    assert!(
        stats.memory_peak_bytes <= config.memory_limit_bytes,
        "{stats:?}"
    );
    ing.flush("events").await.unwrap();
    assert_eq!(ts_at_head(&ing, "events").await.len(), 200_000);
    ing.shutdown().await.unwrap();
}

#[tokio::test]
async fn background_compaction_bounds_segments_per_shard() {
    let env = Env::new();
    let mut config = env.config();
    config.compaction_interval = Duration::from_millis(20);
    config.compaction_trigger = 4;
    let ing = env.open(config).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    let mut s = ing.open_stream("events", "p").await.unwrap();
    // Forty small flushes: forty segments per shard without compaction.
    for i in 0..40 {
        s.submit(i + 1, ipc(&[batch(i as i64 * 100, 100)]))
            .await
            .unwrap()
            .await
            .unwrap();
        ing.flush("events").await.unwrap();
    }
    // Let the compactor catch up with the last flushes.
    let table = ing.catalog().open_table("events").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let head = table.head().await.unwrap();
        let most = (0..4)
            .map(|s| head.shard_segments(s).count())
            .max()
            .unwrap();
        if most < 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{most} segments in a shard"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ing.stats().compactions > 0);
    assert_eq!(
        ts_at_head(&ing, "events").await,
        (0..4000).collect::<Vec<_>>()
    );
    ing.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_large_memtable_is_flushed_in_bounded_chunks() {
    let env = Env::new();
    let mut config = env.config();
    config.flush_rows = 250;
    let ing = env.open(config.clone()).await;
    ing.create_dataset(spec("events", false)).await.unwrap();
    let table = ing.catalog().open_table("events").await.unwrap();
    let mut s = ing.open_stream("events", "p").await.unwrap();
    let mut anon = ing.open_stream("events", "").await.unwrap();
    let before = table.head_version().await.unwrap();
    for i in 0..10 {
        s.submit(i + 1, ipc(&[batch(i as i64 * 100, 100)]))
            .await
            .unwrap()
            .await
            .unwrap();
        anon.submit(i + 1, ipc(&[batch(10_000 + i as i64, 1)]))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // 1,010 rows, at most 250 (plus the entry that crosses it) per version, whether the
    // flusher (by size) or the explicit flush committed them.
    let v = ing.flush("events").await.unwrap();
    assert!(v - before >= 5, "{before} -> {v}");
    let versions = table.list_versions().await.unwrap();
    let mut marks_seen = vec![];
    for info in versions.iter().filter(|i| i.version > before) {
        assert!(info.rows_added <= 250 + 100, "{info:?}");
        marks_seen.push(info.producers.get("p").copied().unwrap_or(0));
    }
    assert!(
        marks_seen.windows(2).all(|w| w[0] <= w[1]),
        "{marks_seen:?}"
    );
    assert_eq!(*marks_seen.last().unwrap(), 10);
    let mut want: Vec<i64> = (0..1000).chain(10_000..10_010).collect();
    want.sort_unstable();
    assert_eq!(ts_at_head(&ing, "events").await, want);
    // Nothing replays after a crash: every chunk's WAL mark covered its entries.
    std::mem::forget(s);
    std::mem::forget(anon);
    // Its WAL is closed as a dying process's would be (the lock goes with it); its
    // memtables are lost.
    ing.abandon().await.unwrap();
    let ing = env.open(config).await;
    assert_eq!(ing.status("events").await.unwrap().unflushed_rows, 0);
    assert_eq!(ts_at_head(&ing, "events").await, want);
    ing.shutdown().await.unwrap();
}
