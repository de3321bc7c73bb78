//! The conformance suites against every backend in this crate.

use std::sync::Arc;

use strata_storage::conformance::{blob_store_suite, meta_store_suite};
use strata_storage::{LocalStore, MemoryBlobStore, MemoryMetaStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_blob_store() {
    let store = MemoryBlobStore::new();
    blob_store_suite(&store, "suite").await;
    blob_store_suite(&store, "suite").await;
    blob_store_suite(&store, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_meta_store() {
    let store = Arc::new(MemoryMetaStore::new());
    meta_store_suite(store.clone(), "suite").await;
    meta_store_suite(store.clone(), "suite").await;
    meta_store_suite(store, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_blob_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    blob_store_suite(&store, "suite").await;
    // Re-runnable on a store it already ran on.
    blob_store_suite(&store, "suite").await;
    blob_store_suite(&store, "").await;
    blob_store_suite(&store, "deep/er/prefix").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_meta_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    meta_store_suite(store.clone(), "suite").await;
    meta_store_suite(store.clone(), "suite").await;
    meta_store_suite(store.clone(), "").await;
    meta_store_suite(store, "deep/er/prefix").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_store_without_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap().with_sync(false);
    blob_store_suite(&store, "nosync").await;
    meta_store_suite(Arc::new(store), "nosync").await;
}
