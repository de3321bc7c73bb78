//! The storage conformance suites against a real Cassandra: `STRATA_CASSANDRA`
//! (`host:port`, set by `tools/test`, which starts a node with `tools/cassandra/run`).
//! Each test works in a keyspace of its own and drops it afterwards.

use std::sync::Arc;

use bytes::Bytes;
use strata_storage::conformance::{blob_store_suite, meta_store_suite, version_log_suite};
use strata_storage::{BlobStore, Error, MetaStore};

use crate::{CassandraConfig, CassandraStore};

/// The contact point of the test cluster.
pub fn contact_point() -> String {
    std::env::var("STRATA_CASSANDRA").unwrap_or_else(|_| {
        panic!(
            "STRATA_CASSANDRA is not set: run the tests with tools/test (it starts a \
             Cassandra node), or start one with tools/cassandra/run start and set \
             STRATA_CASSANDRA to the contact point it prints"
        )
    })
}

async fn store(test: &str, chunk_bytes: usize) -> CassandraStore {
    let keyspace = format!("strata_test_{test}_{}", std::process::id());
    let config = CassandraConfig {
        contact_points: vec![contact_point()],
        keyspace,
        chunk_bytes,
        ..Default::default()
    };
    CassandraStore::connect(config).await.expect("connect")
}

async fn drop_keyspace(store: &CassandraStore) {
    let cql = format!("DROP KEYSPACE IF EXISTS {}", store.config().keyspace);
    store
        .session()
        .query_unpaged(cql, ())
        .await
        .expect("drop keyspace");
}

/// The nudge a disagreeing cluster gets (a change of schema that makes a node left
/// behind pull again) changes the schema version and leaves nothing in the keyspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_nudge_changes_the_version_and_leaves_nothing() {
    let store = store("nudge", 1 << 20).await;
    let session = store.session();
    let keyspace = store.config().keyspace.clone();
    let before = session.await_schema_agreement().await.unwrap();
    assert!(crate::store::nudge_schema(session, &keyspace).await);
    let after = session.await_schema_agreement().await.unwrap();
    assert_ne!(before, after, "a nudge is a change of schema");
    let types = session
        .query_unpaged(
            "SELECT type_name FROM system_schema.types WHERE keyspace_name = ?",
            (keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(types, 0, "the nudge's type is dropped");
    assert!(
        !crate::store::nudge_schema(session, "strata_no_such_keyspace").await,
        "a failed nudge says so"
    );
    drop_keyspace(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cassandra_blob_store_conformance() {
    // Small chunks so the suite's blobs span many of them.
    let store = store("blobs", 7 * 1024).await;
    blob_store_suite(&store, "suite").await;
    blob_store_suite(&store, "suite").await;
    blob_store_suite(&store, "").await;
    blob_store_suite(&store, "deep/er/prefix").await;
    drop_keyspace(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cassandra_meta_store_conformance() {
    let store = Arc::new(store("meta", 1 << 20).await);
    meta_store_suite(store.clone(), "suite").await;
    meta_store_suite(store.clone(), "suite").await;
    meta_store_suite(store.clone(), "").await;
    drop_keyspace(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cassandra_version_log_conformance() {
    let store = Arc::new(store("log", 1 << 20).await);
    version_log_suite(store.clone(), "t1").await;
    version_log_suite(store.clone(), "t1").await;
    drop_keyspace(&store).await;
}

/// The version model with segments, records and the log all in Cassandra.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_model_on_cassandra() {
    let store = Arc::new(store("model", 64 * 1024).await);
    let opts = strata_table::TableOptions {
        checkpoint_interval: 7,
        ..Default::default()
    };
    let catalog =
        strata_table::Catalog::with_log(store.clone(), store.clone(), store.clone(), opts);
    strata_table::conformance::version_model(&catalog, "model", 7, 60).await;
    drop_keyspace(&store).await;
}

/// A damaged chunk is an error naming the blob, never wrong bytes; a missing one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunks_are_errors() {
    let store = store("damage", 1024).await;
    let data = Bytes::from((0..10_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    BlobStore::put(&store, "d/blob", data.clone())
        .await
        .unwrap();
    assert_eq!(
        store.get_range("d/blob", 1000..5000).await.unwrap(),
        data.slice(1000..5000)
    );
    let (id,): (String,) = store
        .session()
        .query_unpaged("SELECT id FROM blobs WHERE dir = 'd' AND name = 'blob'", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    // Flip a byte of chunk 2 behind the store's back.
    store
        .session()
        .query_unpaged(
            "UPDATE blob_chunks SET data = ? WHERE id = ? AND chunk = 2",
            (vec![0u8; 1024], id.as_str()),
        )
        .await
        .unwrap();
    let e = store.get_range("d/blob", 2000..2100).await.unwrap_err();
    assert!(
        matches!(e, Error::Corrupt { ref path, .. } if path == "d/blob"),
        "{e:?}"
    );
    // Chunks the range does not touch are not read, so still readable.
    assert_eq!(
        store.get_range("d/blob", 0..100).await.unwrap(),
        data.slice(0..100)
    );
    store
        .session()
        .query_unpaged(
            "DELETE FROM blob_chunks WHERE id = ? AND chunk = 5",
            (id.as_str(),),
        )
        .await
        .unwrap();
    let e = BlobStore::get(&store, "d/blob").await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    drop_keyspace(&store).await;
}

/// Two stores (two servers) racing for one key: exactly one wins, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_winner_across_sessions() {
    let a = store("race", 1 << 20).await;
    let b = CassandraStore::connect(a.config().clone()).await.unwrap();
    for v in 0..20 {
        let key = format!("t/versions/{v:020}");
        let (ra, rb) = tokio::join!(
            a.put_if_absent(&key, Bytes::from(format!("a{v}"))),
            b.put_if_absent(&key, Bytes::from(format!("b{v}")))
        );
        assert!(ra.is_ok() != rb.is_ok(), "{v}: {ra:?} {rb:?}");
        let winner = if ra.is_ok() { "a" } else { "b" };
        let stored = MetaStore::get(&b, &key).await.unwrap().unwrap();
        assert_eq!(stored, Bytes::from(format!("{winner}{v}")));
    }
    drop_keyspace(&a).await;
}
