//! The table over real storage: local-store damage surfaces as errors, projections
//! read only their columns' bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_datagen::{WeatherFeed, weather_spec};
use strata_storage::conformance::version_log_suite;
use strata_storage::{CountingBlobStore, LocalStore, MemoryBlobStore, MemoryMetaStore};
use strata_table::{Catalog, Error, MetaLog, VersionSpec};

/// The version log over a MetaStore keeps the log's guarantees on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meta_version_log_conformance() {
    let memory = Arc::new(MetaLog::new(Arc::new(MemoryMetaStore::new())));
    version_log_suite(memory.clone(), "t1").await;
    version_log_suite(memory, "t1").await;
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(MetaLog::new(Arc::new(
        LocalStore::open(dir.path()).unwrap(),
    )));
    version_log_suite(local, "t1").await;
}

#[tokio::test]
async fn projection_reads_only_its_columns() {
    let blobs = Arc::new(CountingBlobStore::new(Arc::new(MemoryBlobStore::new())));
    let cat = Catalog::new(blobs.clone(), Arc::new(MemoryMetaStore::new()));
    let mut spec = weather_spec();
    spec.shards = 1;
    let t = cat.create_table(spec).await.unwrap();
    let feed = WeatherFeed::default();
    t.write(&[feed.batch(0, 200_000)], BTreeMap::new())
        .await
        .unwrap();
    let snap = t.snapshot(&VersionSpec::Head).await.unwrap();

    blobs.reset();
    let all = snap.scan(None).await.unwrap();
    let full = blobs.snapshot().bytes_read;
    blobs.reset();
    let one = snap.scan(Some(&["wind_direction"])).await.unwrap();
    let projected = blobs.snapshot().bytes_read;
    let rows = |b: &[arrow::array::RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
    assert_eq!(rows(&all), 200_000);
    assert_eq!(rows(&one), 200_000);
    assert_eq!(one[0].num_columns(), 1);
    assert!(
        projected * 4 < full,
        "one of nine columns read {projected} bytes, all columns {full}"
    );
}

#[tokio::test]
async fn damaged_segments_are_errors_naming_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let cat = Catalog::new(store.clone(), store.clone());
    let mut spec = weather_spec();
    spec.shards = 1;
    let t = cat.create_table(spec).await.unwrap();
    t.write(&[WeatherFeed::default().batch(0, 50_000)], BTreeMap::new())
        .await
        .unwrap();
    let head = t.head().await.unwrap();
    let seg = head.live_segments().next().unwrap().meta.clone();
    let file = dir.path().join("blobs").join(&seg.path);

    // Flip a byte in the middle of the data.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    let fresh = cat.open_table("weather").await.unwrap();
    let err = fresh
        .snapshot(&VersionSpec::Head)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&seg.path), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");

    // Truncation too.
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, &bytes[..bytes.len() - 7]).unwrap();
    let err = fresh
        .snapshot(&VersionSpec::Head)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&seg.path), "{err}");

    // Restored bytes read again: nothing else was harmed.
    std::fs::write(&file, &bytes).unwrap();
    let all = fresh
        .snapshot(&VersionSpec::Head)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    assert_eq!(all.num_rows(), 50_000);

    // A damaged version record is a clear error too, not an empty table.
    let rec = dir
        .path()
        .join("meta/tables")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("versions/00000000000000000002");
    let mut r = std::fs::read(&rec).unwrap();
    r[3] ^= 1;
    std::fs::write(&rec, &r).unwrap();
    let err = cat
        .open_table("weather")
        .await
        .unwrap()
        .head()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err}");
    assert!(
        err.to_string().contains("versions/00000000000000000002"),
        "{err}"
    );
}
