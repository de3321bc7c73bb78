//! The object store view DataFusion reads segments through.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use strata_query::BlobObjectStore;
use strata_storage::{BlobStore, MemoryBlobStore};

#[tokio::test]
async fn ranged_reads_and_read_only() {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs
        .put("d/segments/a.parquet", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    let store = BlobObjectStore::new(blobs);
    let path = Path::from("d/segments/a.parquet");
    let got = store
        .get_opts(
            &path,
            GetOptions {
                range: Some(GetRange::Bounded(2..5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(got.meta.size, 10);
    assert_eq!(got.bytes().await.unwrap(), Bytes::from_static(b"234"));
    let tail = store
        .get_opts(
            &path,
            GetOptions {
                range: Some(GetRange::Suffix(3)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), Bytes::from_static(b"789"));
    let many = store.get_ranges(&path, &[0..1, 8..10]).await.unwrap();
    assert_eq!(
        many,
        vec![Bytes::from_static(b"0"), Bytes::from_static(b"89")]
    );
    assert_eq!(store.head(&path).await.unwrap().size, 10);
    assert!(matches!(
        store.head(&Path::from("missing")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        store.put(&path, PutPayload::from_static(b"x")).await,
        Err(object_store::Error::NotSupported { .. })
    ));
}
