//! LocalStore specifics: damage on disk, leftovers, reopening, several processes.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use strata_storage::{BlobStore, Error, LocalStore, MetaStore};

fn data(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn flip_byte(file: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

fn truncate_by(file: &Path, n: u64) {
    let f = OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - n).unwrap();
}

/// Asserts `r` is a Corrupt error naming `path` (and mentioning `reason_part`).
#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, Error>, path: &str, reason_part: &str) {
    match r {
        Err(e @ Error::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(path), "error {msg:?} does not name {path:?}");
            assert!(
                msg.contains(reason_part),
                "error {msg:?} does not mention {reason_part:?}"
            );
        }
        other => panic!("expected Corrupt for {path:?}, got {other:?}"),
    }
}

/// The block each CRC covers in blobs written now.
const BLOCK: u64 = 8 * 1024;

#[tokio::test]
async fn flipped_data_byte_fails_only_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let store: &dyn BlobStore = &store;
    let path = "ds/seg/a.parquet";
    let bytes = data(200 * 1024);
    store.put(path, bytes.clone()).await.unwrap();
    let file = dir.path().join("blobs").join(path);
    assert_eq!(
        fs::metadata(&file).unwrap().len(),
        200 * 1024 + 4 * 25 + 32,
        "data + 25 CRCs + footer"
    );

    flip_byte(&file, BLOCK + 4_464);
    assert_corrupt(store.get(path).await, path, "checksum mismatch in block 1");
    assert_corrupt(
        store.get_range(path, BLOCK..BLOCK + 1).await,
        path,
        "block 1",
    );
    assert_corrupt(
        store.get_range(path, 1_000..BLOCK + 10).await,
        path,
        "block 1",
    );
    assert_corrupt(
        store
            .get_ranges(path, &[0..10, 2 * BLOCK - 1..2 * BLOCK])
            .await,
        path,
        "block 1",
    );
    // Unaffected blocks still read, and the footer still gives the size.
    let n = bytes.len() as u64;
    assert_eq!(
        store.get_range(path, 0..BLOCK).await.unwrap(),
        bytes.slice(..BLOCK as usize)
    );
    assert_eq!(
        store.get_range(path, 2 * BLOCK..n).await.unwrap(),
        bytes.slice(2 * BLOCK as usize..)
    );
    assert_eq!(store.head(path).await.unwrap().size, n);
}

#[tokio::test]
async fn damaged_crc_table_or_footer_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let store: &dyn BlobStore = &store;
    let n = 150_000u64;
    store.put("t/table", data(n as usize)).await.unwrap();
    store.put("t/footer", data(n as usize)).await.unwrap();
    store.put("t/small", data(1_000)).await.unwrap();
    let blobs = dir.path().join("blobs");

    flip_byte(&blobs.join("t/table"), n + 5);
    assert_corrupt(
        store.get_range("t/table", 0..10).await,
        "t/table",
        "CRC table",
    );

    // data_len field of the footer.
    flip_byte(&blobs.join("t/footer"), n + n.div_ceil(BLOCK) * 4 + 1);
    assert_corrupt(store.get("t/footer").await, "t/footer", "footer");
    assert_corrupt(store.head("t/footer").await, "t/footer", "footer");

    // A blob small enough to be read in one go.
    flip_byte(&blobs.join("t/small"), 999);
    assert_corrupt(
        store.get("t/small").await,
        "t/small",
        "checksum mismatch in block 0",
    );

    // Listing reports a blob whose size it cannot trust.
    assert_corrupt(store.list("t/").await, "t/footer", "footer");
}

#[tokio::test]
async fn truncated_blob_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let store: &dyn BlobStore = &store;
    let blobs = dir.path().join("blobs");
    for (path, cut) in [("cut/a", 3), ("cut/b", 5_000), ("cut/c", 1)] {
        store.put(path, data(100_000)).await.unwrap();
        truncate_by(&blobs.join(path), cut);
        assert_corrupt(store.get(path).await, path, "truncated");
        assert_corrupt(store.get_range(path, 0..1).await, path, "truncated");
        assert_corrupt(store.head(path).await, path, "truncated");
    }
    // A file shorter than a footer is truncated too.
    store.put("cut/tiny", data(10)).await.unwrap();
    truncate_by(&blobs.join("cut/tiny"), 20);
    assert_corrupt(store.get("cut/tiny").await, "cut/tiny", "truncated");
}

#[tokio::test]
async fn damaged_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let store: &dyn MetaStore = &store;
    let meta = dir.path().join("meta");
    for key in ["ds/a", "ds/b", "ds/c", "ds/d"] {
        store
            .put(key, Bytes::from_static(b"{\"version\": 7}"))
            .await
            .unwrap();
    }
    flip_byte(&meta.join("ds/a"), 3);
    assert_corrupt(store.get("ds/a").await, "ds/a", "checksum");
    flip_byte(&meta.join("ds/b"), 14 + 2);
    assert_corrupt(store.get("ds/b").await, "ds/b", "checksum");
    truncate_by(&meta.join("ds/c"), 2);
    assert_corrupt(store.get("ds/c").await, "ds/c", "truncated");
    fs::write(meta.join("ds/d"), b"").unwrap();
    assert_corrupt(store.get("ds/d").await, "ds/d", "truncated");
    // A damaged record still blocks put_if_absent: it exists.
    assert!(matches!(
        store.put_if_absent("ds/a", Bytes::new()).await,
        Err(Error::Conflict { .. })
    ));
}

fn set_age(file: &Path, age: Duration) {
    let f = OpenOptions::new().write(true).open(file).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test]
async fn tmp_files_are_invisible_and_stale_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = LocalStore::open(root).unwrap();
    BlobStore::put(&store, "b/real", data(10)).await.unwrap();
    MetaStore::put(&store, "m/real", Bytes::from_static(b"r"))
        .await
        .unwrap();

    // Leftovers of writers that crashed, or are still writing.
    let stale = root.join("tmp/.tmp-stale");
    let young = root.join("tmp/.tmp-young");
    fs::write(&stale, b"half a blob").unwrap();
    fs::write(&young, b"being written").unwrap();
    set_age(&stale, Duration::from_secs(2 * 3600));
    fs::write(root.join("blobs/b/.tmp-partial"), b"x").unwrap();
    fs::create_dir(root.join("blobs/.tmp-dir")).unwrap();
    fs::write(root.join("blobs/.tmp-dir/inside"), b"x").unwrap();
    fs::write(root.join("meta/m/.tmp-partial"), b"x").unwrap();
    fs::write(root.join("meta/.tmp-x"), b"x").unwrap();

    let blobs: Vec<String> = BlobStore::list(&store, "")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(blobs, ["b/real"]);
    assert_eq!(MetaStore::list(&store, "").await.unwrap(), ["m/real"]);
    assert!(BlobStore::list(&store, "b/.tm").await.unwrap().is_empty());
    assert!(matches!(
        BlobStore::get(&store, "b/.tmp-partial").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        MetaStore::get(&store, ".tmp-x").await,
        Err(Error::InvalidArgument(_))
    ));

    // Reopening removes only the stale tmp file, and keeps committed data.
    drop(store);
    let store = LocalStore::open(root).unwrap();
    assert!(!stale.exists(), "stale tmp file survived reopening");
    assert!(
        young.exists(),
        "a young tmp file (maybe a live writer's) was removed"
    );
    assert_eq!(BlobStore::get(&store, "b/real").await.unwrap(), data(10));
    assert_eq!(
        MetaStore::get(&store, "m/real").await.unwrap().as_deref(),
        Some(&b"r"[..])
    );
    // Successful writes leave nothing in tmp.
    BlobStore::put(&store, "b/more", data(70_000))
        .await
        .unwrap();
    store
        .put_if_absent("m/more", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let _ = store
        .put_if_absent("m/more", Bytes::from_static(b"2"))
        .await;
    MetaStore::put(&store, "m/more2", Bytes::new())
        .await
        .unwrap();
    let mut left: Vec<_> = fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, [".tmp-young"]);
}

#[tokio::test]
async fn reopen_keeps_committed_data() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(300_000);
    {
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.root(), dir.path());
        BlobStore::put(&store, "d/1/seg", blob.clone())
            .await
            .unwrap();
        store
            .put_if_absent("d/1/v/00000000000000000001", Bytes::from_static(b"v1"))
            .await
            .unwrap();
    }
    let store = LocalStore::open(dir.path()).unwrap();
    assert_eq!(BlobStore::get(&store, "d/1/seg").await.unwrap(), blob);
    assert_eq!(
        store.get_range("d/1/seg", 65_000..200_000).await.unwrap(),
        blob.slice(65_000..200_000)
    );
    assert_eq!(
        MetaStore::get(&store, "d/1/v/00000000000000000001")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    assert!(matches!(
        store
            .put_if_absent("d/1/v/00000000000000000001", Bytes::new())
            .await,
        Err(Error::Conflict { .. })
    ));
}

#[tokio::test]
async fn entry_cannot_also_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let invalid = |r: Result<(), Error>| matches!(r, Err(Error::InvalidArgument(_)));

    MetaStore::put(&store, "a/b", Bytes::from_static(b"x"))
        .await
        .unwrap();
    // "a" is a directory holding "a/b".
    assert!(invalid(MetaStore::put(&store, "a", Bytes::new()).await));
    assert!(invalid(store.put_if_absent("a", Bytes::new()).await));
    // "a/b" is a record, so it cannot hold "a/b/c".
    assert!(invalid(MetaStore::put(&store, "a/b/c", Bytes::new()).await));
    assert!(invalid(store.put_if_absent("a/b/c", Bytes::new()).await));
    assert!(invalid(store.put_if_absent("a/b/c/d", Bytes::new()).await));
    assert_eq!(MetaStore::get(&store, "a").await.unwrap(), None);
    assert_eq!(MetaStore::get(&store, "a/b/c").await.unwrap(), None);
    MetaStore::delete(&store, "a").await.unwrap();
    MetaStore::delete(&store, "a/b/c").await.unwrap();
    assert_eq!(
        MetaStore::get(&store, "a/b").await.unwrap().as_deref(),
        Some(&b"x"[..])
    );

    BlobStore::put(&store, "p/q", data(5)).await.unwrap();
    assert!(invalid(BlobStore::put(&store, "p", data(5)).await));
    assert!(invalid(BlobStore::put(&store, "p/q/r", data(5)).await));
    assert!(
        BlobStore::head(&store, "p")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        BlobStore::get(&store, "p/q/r")
            .await
            .unwrap_err()
            .is_not_found()
    );
    BlobStore::delete(&store, "p").await.unwrap();
    assert_eq!(BlobStore::get(&store, "p/q").await.unwrap(), data(5));
}

const CHILD_DIR_ENV: &str = "STRATA_STORAGE_CHILD";
const CHILD_ID_ENV: &str = "STRATA_STORAGE_CHILD_ID";
const RACE_TEST: &str = "local::processes_race_put_if_absent";
const RACE_KEYS: usize = 200;

/// Two child processes (this test binary, re-executed) and this process claim the same
/// keys with `put_if_absent` in one directory: each key must have exactly one winner,
/// whose value is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_race_put_if_absent() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let id = std::env::var(CHILD_ID_ENV).expect("child id");
        let wins = claim_keys(Path::new(&dir), &id).await;
        fs::write(Path::new(&dir).join(format!("wins-{id}")), wins.join("\n")).unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    LocalStore::open(&store_dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let ids = ["child-0", "child-1"];
    let mut children = Vec::new();
    for id in ids {
        let child = Command::new(&exe)
            .args(["--exact", RACE_TEST, "--nocapture"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ID_ENV, id)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
    }
    // Start everyone at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ids
        .iter()
        .all(|id| dir.path().join(format!("ready-{id}")).exists())
    {
        for c in &mut children {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("child exited before the race started: {status}");
            }
        }
        assert!(Instant::now() < deadline, "children did not get ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    fs::write(dir.path().join("go"), b"").unwrap();
    let parent_wins = claim_keys(dir.path(), "parent").await;

    let mut winners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in parent_wins {
        winners.entry(w).or_default().push("parent".to_string());
    }
    for (id, child) in ids.iter().zip(children) {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "{id} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let wins = fs::read_to_string(dir.path().join(format!("wins-{id}"))).unwrap();
        for w in wins.lines().filter(|l| !l.is_empty()) {
            winners
                .entry(w.to_string())
                .or_default()
                .push(id.to_string());
        }
    }

    let store = LocalStore::open(&store_dir).unwrap();
    assert_eq!(winners.len(), RACE_KEYS, "some keys were won by nobody");
    for i in 0..RACE_KEYS {
        let key = format!("k/{i}");
        let who = winners.get(&key).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            who.len(),
            1,
            "{key} was won by {who:?}, expected exactly one"
        );
        let stored = MetaStore::get(&store, &key).await.unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(format!("{} {key}", who[0]).as_bytes()),
            "{key}: stored value is not its winner's"
        );
    }
    assert_eq!(
        MetaStore::list(&store, "k/").await.unwrap().len(),
        RACE_KEYS
    );
}

/// Waits for the parent's go, then tries to claim `k/0..RACE_KEYS` in order.
async fn claim_keys(dir: &Path, id: &str) -> Vec<String> {
    let store = LocalStore::open(dir.join("store")).unwrap();
    fs::write(dir.join(format!("ready-{id}")), b"").unwrap();
    let go: PathBuf = dir.join("go");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !go.exists() {
        assert!(Instant::now() < deadline, "{id}: no go signal");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut wins = Vec::new();
    for i in 0..RACE_KEYS {
        let key = format!("k/{i}");
        match store
            .put_if_absent(&key, Bytes::from(format!("{id} {key}")))
            .await
        {
            Ok(()) => wins.push(key),
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("{id}: put_if_absent {key}: {e}"),
        }
    }
    wins
}
