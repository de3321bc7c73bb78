//! One test suite per storage trait. Every backend runs them; a backend that passes
//! keeps the guarantees the traits document (as far as a test can tell).
//!
//! Each suite writes only under the `prefix` it is given, in a few fixed sub-prefixes it
//! clears before and after running, so it can run against a shared external store. The
//! suites panic on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::traits::{BlobStore, MetaStore};
use crate::version_log::{LogEntry, VersionLog};

/// `prefix` and `rel` joined with `/` (just `rel` when the prefix is empty).
fn join(prefix: &str, rel: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// Deterministic, incompressible-looking bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn ok<T>(what: &str, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got error: {e}"),
    }
}

fn expect_invalid<T: Debug>(what: &str, r: Result<T>) {
    match r {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn expect_not_found<T: Debug>(what: &str, r: Result<T>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn expect_conflict<T: Debug>(what: &str, r: Result<T>) {
    match r {
        Err(Error::Conflict { .. }) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

/// Bytes `r` of `data`.
fn slice(data: &Bytes, r: &Range<u64>) -> Bytes {
    data.slice(r.start as usize..r.end as usize)
}

/// Paths used to probe validation; every call must reject them.
const INVALID_PATHS: &[&str] = &["../x", "a//b", "", "a/.tmp-x", "/abs", "a/./b", "a b"];

/// Runs the [`BlobStore`] suite under `prefix` (a valid path prefix, or empty).
pub async fn blob_store_suite(store: &dyn BlobStore, prefix: &str) {
    let p = |rel: &str| join(prefix, rel);

    // Start clean so the suite can be re-run on a shared store.
    clear_blobs(store, prefix).await;

    // Round trips: empty, 1 byte, exactly 2 blocks, 200 KiB (3 blocks + a partial one).
    let cases = [
        ("rt/empty", Bytes::new()),
        ("rt/one", Bytes::from_static(b"x")),
        ("rt/two-blocks", pseudo_random(128 * 1024, 1)),
        ("rt/big.bin", pseudo_random(200 * 1024, 2)),
    ];
    for (rel, data) in &cases {
        let path = p(rel);
        ok(&format!("put {path}"), store.put(&path, data.clone()).await);
        let got = ok(&format!("get {path}"), store.get(&path).await);
        assert!(
            got == *data,
            "get {path}: returned {} bytes that differ from the {} written",
            got.len(),
            data.len()
        );
        let meta = ok(&format!("head {path}"), store.head(&path).await);
        assert_eq!(meta.path, path, "head {path}: wrong path");
        assert_eq!(meta.size, data.len() as u64, "head {path}: wrong size");
        assert!(
            meta.last_modified_ms > 1_500_000_000_000,
            "head {path}: implausible last_modified_ms {}",
            meta.last_modified_ms
        );
        let full = 0..data.len() as u64;
        let got = ok(
            &format!("get_range {path} {full:?}"),
            store.get_range(&path, full.clone()).await,
        );
        assert!(got == *data, "get_range {path} {full:?}: wrong bytes");
    }

    // Ranged reads on the 200 KiB blob: block boundaries, single bytes, arbitrary spans.
    let big_path = p("rt/big.bin");
    let big = cases[3].1.clone();
    let n = big.len() as u64;
    const B: u64 = 64 * 1024;
    let ranges: Vec<Range<u64>> = vec![
        0..1,
        0..B,
        B - 1..B + 1,
        B..2 * B,
        B - 10..3 * B + 10,
        2 * B - 1..2 * B,
        3 * B..n,
        n - 1..n,
        12_345..12_399,
        70_001..150_003,
        1..n - 1,
        0..n,
    ];
    for r in &ranges {
        let got = ok(
            &format!("get_range {big_path} {r:?}"),
            store.get_range(&big_path, r.clone()).await,
        );
        assert_eq!(
            got.len() as u64,
            r.end - r.start,
            "get_range {big_path} {r:?}: wrong length"
        );
        assert!(
            got == slice(&big, r),
            "get_range {big_path} {r:?}: wrong bytes"
        );
    }

    // Empty ranges anywhere inside (or at the end of) the blob.
    for at in [0, 1, B, n] {
        let got = ok(
            &format!("empty get_range at {at}"),
            store.get_range(&big_path, at..at).await,
        );
        assert!(got.is_empty(), "get_range {big_path} {at}..{at}: not empty");
    }
    let empty_path = p("rt/empty");
    let got = ok(
        "empty range of empty blob",
        store.get_range(&empty_path, 0..0).await,
    );
    assert!(got.is_empty(), "get_range of empty blob: not empty");

    // Ranges past the end, or reversed.
    expect_invalid(
        "get_range ending past the end",
        store.get_range(&big_path, n - 1..n + 1).await,
    );
    expect_invalid(
        "get_range starting past the end",
        store.get_range(&big_path, n + 5..n + 10).await,
    );
    expect_invalid(
        "get_range past the end of an empty blob",
        store.get_range(&empty_path, 0..1).await,
    );
    let (hi, lo) = (10u64, 5u64);
    expect_invalid(
        "reversed get_range",
        store.get_range(&big_path, hi..lo).await,
    );

    // get_ranges: several, overlapping, empty, in any order.
    let multi: Vec<Range<u64>> = vec![B..B + 100, 0..10, 5..5, 0..n, 150_000..150_001, 0..10];
    let got = ok("get_ranges", store.get_ranges(&big_path, &multi).await);
    assert_eq!(
        got.len(),
        multi.len(),
        "get_ranges: wrong number of results"
    );
    for (r, g) in multi.iter().zip(&got) {
        assert!(
            *g == slice(&big, r),
            "get_ranges {big_path}: range {r:?} wrong bytes"
        );
    }
    let none = ok(
        "get_ranges with no ranges",
        store.get_ranges(&big_path, &[]).await,
    );
    assert!(
        none.is_empty(),
        "get_ranges with no ranges: returned results"
    );
    expect_invalid(
        "get_ranges with a range past the end",
        store.get_ranges(&big_path, &[0..1, n..n + 1]).await,
    );

    // Missing blobs.
    let missing = p("rt/missing");
    expect_not_found("get of missing blob", store.get(&missing).await);
    expect_not_found(
        "get_range of missing blob",
        store.get_range(&missing, 0..0).await,
    );
    expect_not_found(
        "get_ranges of missing blob",
        store.get_ranges(&missing, &[0..1, 1..2]).await,
    );
    expect_not_found("head of missing blob", store.head(&missing).await);
    // A path that is only a prefix of other blobs is not a blob.
    expect_not_found(
        "head of a directory-like prefix",
        store.head(&p("rt")).await,
    );

    // Overwrite replaces the whole blob.
    let ow = p("ow/blob");
    ok(
        "put before overwrite",
        store.put(&ow, pseudo_random(100_000, 3)).await,
    );
    let newer = pseudo_random(777, 4);
    ok("overwrite", store.put(&ow, newer.clone()).await);
    assert!(
        ok("get after overwrite", store.get(&ow).await) == newer,
        "get after overwrite: old or mixed bytes"
    );
    assert_eq!(
        ok("head after overwrite", store.head(&ow).await).size,
        777,
        "head after overwrite: wrong size"
    );

    // Delete, and delete again.
    ok("delete", store.delete(&ow).await);
    expect_not_found("get after delete", store.get(&ow).await);
    expect_not_found("head after delete", store.head(&ow).await);
    ok("delete of a deleted blob", store.delete(&ow).await);
    ok(
        "delete of a never written blob",
        store.delete(&p("ow/never")).await,
    );
    let listed = ok("list after delete", store.list(&p("ow/")).await);
    assert!(
        listed.is_empty(),
        "list after delete still shows {listed:?}"
    );

    // Listing with prefixes, including ones ending mid-segment.
    let list_rels = [
        "ls/alpha/1",
        "ls/alpha/2",
        "ls/alpha/sub/3",
        "ls/alpha-x",
        "ls/alphabet",
        "ls/beta/1",
        "ls/b",
    ];
    for (i, rel) in list_rels.iter().enumerate() {
        ok(
            &format!("put {rel}"),
            store.put(&p(rel), pseudo_random(i * 10, i as u64)).await,
        );
    }
    let check_list = |listed: Vec<crate::traits::BlobMeta>, list_prefix: &str, want: &[&str]| {
        let got: Vec<&str> = listed.iter().map(|m| m.path.as_str()).collect();
        let want: Vec<String> = want.iter().map(|r| p(r)).collect();
        assert_eq!(
            got, want,
            "list({list_prefix:?}): wrong paths (or not sorted)"
        );
        for m in &listed {
            let i = list_rels
                .iter()
                .position(|r| p(r) == m.path)
                .expect("listed path was written");
            assert_eq!(
                m.size,
                i as u64 * 10,
                "list({list_prefix:?}): wrong size of {}",
                m.path
            );
        }
    };
    let all = [
        "ls/alpha-x",
        "ls/alpha/1",
        "ls/alpha/2",
        "ls/alpha/sub/3",
        "ls/alphabet",
        "ls/b",
        "ls/beta/1",
    ];
    for (q, want) in [
        ("ls/", &all[..]),
        ("ls", &all[..]),
        ("ls/alpha", &all[..5]),
        ("ls/alpha/", &all[1..4]),
        ("ls/alpha/s", &all[3..4]),
        ("ls/alphab", &all[4..5]),
        ("ls/b", &all[5..]),
        ("ls/beta/", &all[6..]),
        ("ls/gamma", &[][..]),
        ("ls/alpha/1/", &[][..]),
        ("nothing/here/", &[][..]),
    ] {
        let lp = p(q);
        check_list(
            ok(&format!("list({lp:?})"), store.list(&lp).await),
            &lp,
            want,
        );
    }

    // Invalid paths are rejected by every call.
    for bad in INVALID_PATHS {
        expect_invalid(&format!("put {bad:?}"), store.put(bad, Bytes::new()).await);
        expect_invalid(&format!("get {bad:?}"), store.get(bad).await);
        expect_invalid(
            &format!("get_range {bad:?}"),
            store.get_range(bad, 0..0).await,
        );
        expect_invalid(&format!("head {bad:?}"), store.head(bad).await);
        expect_invalid(&format!("delete {bad:?}"), store.delete(bad).await);
    }
    for bad in ["../", "a//b/", "/a", "a/.tmp"] {
        expect_invalid(&format!("list {bad:?}"), store.list(bad).await);
    }

    clear_blobs(store, prefix).await;
}

const BLOB_SUITE_DIRS: &[&str] = &["rt/", "ow/", "ls/"];
const META_SUITE_DIRS: &[&str] = &["basic/", "ls/", "race/", "v/"];

async fn clear_blobs(store: &dyn BlobStore, prefix: &str) {
    for dir in BLOB_SUITE_DIRS {
        for m in ok("list for cleanup", store.list(&join(prefix, dir)).await) {
            ok("delete for cleanup", store.delete(&m.path).await);
        }
    }
}

async fn clear_records(store: &dyn MetaStore, prefix: &str) {
    for dir in META_SUITE_DIRS {
        for k in ok("list for cleanup", store.list(&join(prefix, dir)).await) {
            ok("delete for cleanup", store.delete(&k).await);
        }
    }
}

/// Runs the [`MetaStore`] suite under `prefix` (a valid path prefix, or empty).
pub async fn meta_store_suite(store: Arc<dyn MetaStore>, prefix: &str) {
    let p = |rel: &str| join(prefix, rel);
    clear_records(&*store, prefix).await;

    // get of a missing key.
    let k = p("basic/k1");
    assert_eq!(
        ok("get missing", store.get(&k).await),
        None,
        "get of a missing key"
    );

    // put_if_absent once wins, twice conflicts and leaves the value alone.
    ok(
        "put_if_absent",
        store.put_if_absent(&k, Bytes::from_static(b"first")).await,
    );
    assert_eq!(
        ok("get after put_if_absent", store.get(&k).await).as_deref(),
        Some(&b"first"[..]),
        "get after put_if_absent"
    );
    expect_conflict(
        "second put_if_absent",
        store.put_if_absent(&k, Bytes::from_static(b"second")).await,
    );
    assert_eq!(
        ok("get after conflict", store.get(&k).await).as_deref(),
        Some(&b"first"[..]),
        "a conflicting put_if_absent changed the value"
    );

    // put overwrites; empty and larger values round trip.
    ok("put", store.put(&k, Bytes::from_static(b"replaced")).await);
    assert_eq!(
        ok("get after put", store.get(&k).await).as_deref(),
        Some(&b"replaced"[..]),
        "put did not replace the value"
    );
    let empty = p("basic/empty");
    ok(
        "put_if_absent empty",
        store.put_if_absent(&empty, Bytes::new()).await,
    );
    assert_eq!(
        ok("get empty", store.get(&empty).await).as_deref(),
        Some(&b""[..]),
        "empty record"
    );
    let large = pseudo_random(100_000, 9);
    let large_key = p("basic/large");
    ok("put large", store.put(&large_key, large.clone()).await);
    assert!(
        ok("get large", store.get(&large_key).await) == Some(large),
        "large record: wrong bytes"
    );
    let fresh = p("basic/fresh");
    ok(
        "put of a new key",
        store.put(&fresh, Bytes::from_static(b"v")).await,
    );
    expect_conflict(
        "put_if_absent after put",
        store.put_if_absent(&fresh, Bytes::from_static(b"w")).await,
    );

    // delete, delete again, and the key is free again.
    ok("delete", store.delete(&k).await);
    assert_eq!(
        ok("get after delete", store.get(&k).await),
        None,
        "get after delete"
    );
    ok("delete of a deleted key", store.delete(&k).await);
    ok(
        "delete of a never written key",
        store.delete(&p("basic/never")).await,
    );
    ok(
        "put_if_absent after delete",
        store.put_if_absent(&k, Bytes::from_static(b"again")).await,
    );
    assert_eq!(
        ok("get after re-create", store.get(&k).await).as_deref(),
        Some(&b"again"[..]),
        "get after re-create"
    );

    // list: sorted, only the prefix, mid-segment prefixes.
    for rel in [
        "ls/t/b",
        "ls/t/a",
        "ls/t-x",
        "ls/tags/z",
        "ls/tag",
        "ls/u/1",
    ] {
        ok(
            &format!("put {rel}"),
            store
                .put(&p(rel), Bytes::copy_from_slice(rel.as_bytes()))
                .await,
        );
    }
    for (q, want) in [
        (
            "ls/",
            &[
                "ls/t-x",
                "ls/t/a",
                "ls/t/b",
                "ls/tag",
                "ls/tags/z",
                "ls/u/1",
            ][..],
        ),
        (
            "ls/t",
            &["ls/t-x", "ls/t/a", "ls/t/b", "ls/tag", "ls/tags/z"][..],
        ),
        ("ls/t/", &["ls/t/a", "ls/t/b"][..]),
        ("ls/ta", &["ls/tag", "ls/tags/z"][..]),
        ("ls/tags/", &["ls/tags/z"][..]),
        ("ls/v", &[][..]),
        ("missing/", &[][..]),
    ] {
        let lp = p(q);
        let got = ok(&format!("list({lp:?})"), store.list(&lp).await);
        let want: Vec<String> = want.iter().map(|r| p(r)).collect();
        assert_eq!(got, want, "list({lp:?}): wrong keys (or not sorted)");
    }

    // Invalid keys.
    for bad in INVALID_PATHS {
        expect_invalid(&format!("get {bad:?}"), store.get(bad).await);
        expect_invalid(
            &format!("put_if_absent {bad:?}"),
            store.put_if_absent(bad, Bytes::new()).await,
        );
        expect_invalid(&format!("put {bad:?}"), store.put(bad, Bytes::new()).await);
        expect_invalid(&format!("delete {bad:?}"), store.delete(bad).await);
    }
    for bad in ["../", "a//b/", "/a", "a/.tmp"] {
        expect_invalid(&format!("list {bad:?}"), store.list(bad).await);
    }

    race_one_key(&store, &p("race/one")).await;
    race_versions(&store, &p("v")).await;

    clear_records(&*store, prefix).await;
}

/// 16 tasks race `put_if_absent` on one key: exactly one wins, and its value stays.
async fn race_one_key(store: &Arc<dyn MetaStore>, key: &str) {
    const TASKS: usize = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut handles = Vec::new();
    for i in 0..TASKS {
        let (store, barrier, key) = (Arc::clone(store), Arc::clone(&barrier), key.to_string());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let value = Bytes::from(format!("task-{i}"));
            (i, store.put_if_absent(&key, value).await)
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        let (i, r) = h.await.expect("racing task panicked");
        match r {
            Ok(()) => winners.push(i),
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("put_if_absent race: task {i} got {e}, expected Ok or Conflict"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "put_if_absent race on {key:?}: {} winners ({winners:?}), expected exactly one",
        winners.len()
    );
    let stored = ok("get after race", store.get(key).await);
    assert_eq!(
        stored.as_deref(),
        Some(format!("task-{}", winners[0]).as_bytes()),
        "put_if_absent race on {key:?}: stored value is not the winner's"
    );
}

/// 8 tasks commit versions with "read the max, put max+1 if absent" until each has 20
/// commits: the versions must be dense, and each won by exactly one task.
async fn race_versions(store: &Arc<dyn MetaStore>, dir: &str) {
    const TASKS: usize = 8;
    const COMMITS: usize = 20;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let list_prefix = format!("{dir}/");
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (store, barrier, list_prefix) =
            (Arc::clone(store), Arc::clone(&barrier), list_prefix.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut won = Vec::new();
            let mut attempts = 0;
            while won.len() < COMMITS {
                attempts += 1;
                assert!(
                    attempts < 100_000,
                    "task {t}: no progress committing versions"
                );
                let keys = ok("list versions", store.list(&list_prefix).await);
                let max = match keys.last() {
                    Some(k) => k[list_prefix.len()..]
                        .parse::<u64>()
                        .unwrap_or_else(|_| panic!("unexpected version key {k:?}")),
                    None => 0,
                };
                let key = format!("{list_prefix}{:020}", max + 1);
                let value = Bytes::from(format!("task-{t} commit-{}", won.len()));
                match store.put_if_absent(&key, value.clone()).await {
                    Ok(()) => won.push((max + 1, value)),
                    Err(Error::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("task {t}: put_if_absent {key:?} failed: {e}"),
                }
            }
            won
        }));
    }
    let mut winners: BTreeMap<u64, Bytes> = BTreeMap::new();
    for h in handles {
        for (v, value) in h.await.expect("committing task panicked") {
            if let Some(other) = winners.insert(v, value.clone()) {
                panic!("version {v} was won twice: by {other:?} and by {value:?}");
            }
        }
    }
    let total = (TASKS * COMMITS) as u64;
    let versions: BTreeSet<u64> = winners.keys().copied().collect();
    assert_eq!(
        versions,
        (1..=total).collect::<BTreeSet<u64>>(),
        "committed versions are not exactly 1..={total}"
    );
    let keys = ok("list versions after race", store.list(&list_prefix).await);
    let want: Vec<String> = (1..=total)
        .map(|v| format!("{list_prefix}{v:020}"))
        .collect();
    assert_eq!(
        keys, want,
        "version keys after the race are not dense 1..={total}"
    );
    for (v, value) in &winners {
        let key = format!("{list_prefix}{v:020}");
        assert_eq!(
            ok("get version", store.get(&key).await).as_ref(),
            Some(value),
            "version {v}: stored value is not its winner's"
        );
    }
}

/// Runs the [`VersionLog`] suite on tables named `{table}` and `{table}-other` (ids the
/// suite purges before and after). Commits enough versions to cross a few of any
/// partitioning a backend uses (the Cassandra log's buckets are small in its tests).
pub async fn version_log_suite(log: Arc<dyn VersionLog>, table: &str) {
    let other = format!("{table}-other");
    let rec = |v: u64| Bytes::from(format!("record {v} of {table}"));
    ok("purge before", log.purge(table).await);
    ok("purge other before", log.purge(&other).await);

    assert_eq!(ok("latest of no log", log.latest(table, 0).await), None);
    assert!(ok("list of no log", log.list(table).await).is_empty());
    assert_eq!(ok("get of no log", log.get(table, 1).await), None);

    const N: u64 = 40;
    for v in 1..=N {
        ok("commit", log.commit(table, v, rec(v)).await);
        if v == 1 {
            ok(
                "commit other",
                log.commit(&other, 1, Bytes::from_static(b"x")).await,
            );
        }
    }
    expect_conflict(
        "commit of a taken version",
        log.commit(table, 7, Bytes::from_static(b"again")).await,
    );
    assert_eq!(
        ok("get", log.get(table, 7).await),
        Some(rec(7)),
        "a lost commit changed the record"
    );
    for known in [0, 1, 17, N] {
        assert_eq!(
            ok("latest", log.latest(table, known).await),
            Some(N),
            "latest from {known}"
        );
    }
    assert_eq!(
        ok("latest other", log.latest(&other, 0).await),
        Some(1),
        "tables are separate"
    );
    assert!(ok("contains", log.contains(table, 33).await));
    assert!(!ok("contains past head", log.contains(table, N + 1).await));
    let got = ok("range", log.range(table, 15, 34).await);
    assert_eq!(
        got,
        (15..=34).map(|v| (v, rec(v))).collect::<Vec<_>>(),
        "range 15..=34"
    );
    assert_eq!(
        ok("range past head", log.range(table, N - 1, N + 10).await).len(),
        2
    );

    // Concurrent commits of one version: exactly one wins, from any handle.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let log = log.clone();
        let table = table.to_string();
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(format!("racer {i}"));
            match log.commit(&table, N + 1, body.clone()).await {
                Ok(()) => Some(body),
                Err(Error::Conflict { .. }) => None,
                Err(e) => panic!("racing commit failed: {e}"),
            }
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.expect("racer panicked"));
    }
    assert_eq!(
        winners.len(),
        1,
        "racing commits of one version: {} winners",
        winners.len()
    );
    assert_eq!(
        ok("get raced", log.get(table, N + 1).await).as_ref(),
        Some(&winners[0])
    );
    let head = N + 1;

    // Vacuum's trim: keep 5 and 20, remove the rest below 30.
    let keep: BTreeSet<u64> = [5, 20, 1000].into_iter().collect();
    assert_eq!(
        ok("trim", log.trim(table, 30, &keep).await),
        27,
        "versions removed by the trim"
    );
    assert_eq!(
        ok("trim again", log.trim(table, 30, &keep).await),
        0,
        "a second trim removes nothing"
    );
    assert!(
        !ok("contains kept", log.contains(table, 5).await),
        "a kept version is not live"
    );
    assert_eq!(ok("get kept", log.get(table, 5).await), Some(rec(5)));
    ok("remove absent", log.remove(table, 1000).await);
    assert_eq!(ok("get removed", log.get(table, 3).await), None);
    assert_eq!(
        ok("get kept after trim", log.get(table, 20).await),
        Some(rec(20))
    );
    for known in [0, 3, 30, head] {
        assert_eq!(
            ok("latest after trim", log.latest(table, known).await),
            Some(head),
            "latest from {known}"
        );
    }
    let mut want: Vec<LogEntry> = vec![
        LogEntry {
            version: 5,
            kept: true,
        },
        LogEntry {
            version: 20,
            kept: true,
        },
    ];
    want.extend((30..=head).map(|version| LogEntry {
        version,
        kept: false,
    }));
    assert_eq!(ok("list after trim", log.list(table).await), want);
    assert_eq!(
        ok("range over trimmed", log.range(table, 1, 31).await),
        vec![(30, rec(30)), (31, rec(31))],
        "range returns live records only"
    );
    // A later trim releases a version no longer kept.
    let keep: BTreeSet<u64> = [20].into_iter().collect();
    assert_eq!(ok("trim released", log.trim(table, 30, &keep).await), 1);
    assert_eq!(ok("get released", log.get(table, 5).await), None);
    ok("remove a live version", log.remove(table, head).await);
    assert_eq!(
        ok("latest after remove", log.latest(table, 30).await),
        Some(head - 1)
    );
    ok("commit again", log.commit(table, head, rec(head)).await);

    // Commits go on after a trim.
    ok(
        "commit after trim",
        log.commit(table, head + 1, rec(head + 1)).await,
    );
    assert_eq!(ok("latest", log.latest(table, 30).await), Some(head + 1));

    ok("purge", log.purge(table).await);
    assert_eq!(ok("latest after purge", log.latest(table, 0).await), None);
    assert!(ok("list after purge", log.list(table).await).is_empty());
    assert_eq!(ok("get after purge", log.get(table, 20).await), None);
    assert_eq!(
        ok("other survives purge", log.latest(&other, 0).await),
        Some(1)
    );
    ok("purge other", log.purge(&other).await);
}
