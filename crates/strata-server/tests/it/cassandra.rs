//! The server on the Cassandra backend (a real node: `STRATA_CASSANDRA`, which
//! `tools/test` sets), each test in a keyspace of its own.

use bytes::Bytes;
use strata_proto::v1::{RollbackRequest, VersionRef, version_ref};
use strata_server::ServerConfig;

use crate::e2e::{batch, client, create, flush, ingest, ipc, start};
use crate::hostile::{single_i64, sql};

fn contact_point() -> String {
    std::env::var("STRATA_CASSANDRA").unwrap_or_else(|_| {
        panic!(
            "STRATA_CASSANDRA is not set: run the tests with tools/test (it starts a \
             Cassandra node), or start one with tools/cassandra/run start"
        )
    })
}

/// The store URL of this test process's keyspace `keyspace`.
fn url(keyspace: &str) -> String {
    format!(
        "cassandra://{}/{keyspace}_{}",
        contact_point(),
        std::process::id()
    )
}

fn on_cassandra(keyspace: &str) -> impl Fn(&mut ServerConfig) {
    let url = url(keyspace);
    move |c: &mut ServerConfig| c.store = url.clone()
}

async fn count(
    c: &mut strata_proto::v1::strata_client::StrataClient<tonic::transport::Channel>,
    q: &str,
) -> i64 {
    single_i64(&sql(c, q).await.unwrap_or_else(|e| panic!("{q}: {e}")))
}

/// Ingest, SQL, time travel and rollback with segments and versions in Cassandra; a
/// second server with an empty data directory on the same keyspace sees it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_and_roll_back_on_cassandra() {
    let store = on_cassandra("strata_e2e");
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &store).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let batches: Vec<(u64, Bytes)> = (0..20)
        .map(|i| (i + 1, ipc(&batch(i as i64 * 50, 50))))
        .collect();
    let out = ingest(&mut c, "events", "job", batches).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.acks.len(), 20);
    let good = flush(&mut c, "events").await;
    assert_eq!(count(&mut c, "SELECT count(*) FROM events").await, 1000);

    // A bad load: 500 more rows, then rolled back.
    let bad: Vec<(u64, Bytes)> = (0..10)
        .map(|i| (i + 1, ipc(&batch(10_000 + i as i64 * 50, 50))))
        .collect();
    ingest(&mut c, "events", "bad-job", bad).await.unwrap();
    let bad_version = flush(&mut c, "events").await;
    assert!(bad_version > good);
    assert_eq!(count(&mut c, "SELECT count(*) FROM events").await, 1500);
    c.rollback(RollbackRequest {
        dataset: "events".into(),
        to: Some(VersionRef {
            kind: Some(version_ref::Kind::Version(good)),
        }),
    })
    .await
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM events").await, 1000);
    let q = format!("SELECT count(*) FROM events VERSION AS OF {bad_version}");
    assert_eq!(count(&mut c, &q).await, 1500);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM events WHERE t >= 500 AND t < 600"
        )
        .await,
        100
    );
    server.shutdown().await.unwrap();

    // Nothing of it was local: a server with a fresh data directory finds it all.
    let other = tempfile::tempdir().unwrap();
    let server = start(other.path(), &store).await;
    let mut c = client(&server).await;
    assert_eq!(count(&mut c, "SELECT count(*) FROM events").await, 1000);
    assert_eq!(count(&mut c, &q).await, 1500);
    server.shutdown().await.unwrap();
    drop_keyspace("strata_e2e").await;
}

/// Two servers ingest into one dataset of one keyspace, flushing often so their commits
/// race: every acknowledged row is there exactly once, versions are 1, 2, 3… without a
/// gap, and a third server sees it all. Then a server dies with rows only in its WAL
/// while the other commits: on restart it replays its own log against its own mark
/// (one shared mark would let the other server's commit hide its rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_one_keyspace() {
    let store = on_cassandra("strata_two");
    let fast = |c: &mut ServerConfig| {
        store(c);
        c.ingest.flush_interval_ms = 50;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(dir_a.path(), fast).await;
    let b = start(dir_b.path(), fast).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    create(&mut ca, "events", true).await;
    // Producer pa writes t in [0, 2000) through A, pb [100000, 102000) through B, in
    // 40 batches each, both at once.
    let load = |base: i64| -> Vec<(u64, Bytes)> {
        (0..40)
            .map(|i| (i + 1, ipc(&batch(base + i as i64 * 50, 50))))
            .collect()
    };
    let (ra, rb) = tokio::join!(
        ingest(&mut ca, "events", "pa", load(0)),
        ingest(&mut cb, "events", "pb", load(100_000))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.status.is_none() && rb.status.is_none(), "{ra:?} {rb:?}");
    assert_eq!(ra.acks.len() + rb.acks.len(), 80);
    flush(&mut ca, "events").await;
    flush(&mut cb, "events").await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    let dir_c = tempfile::tempdir().unwrap();
    let c = start(dir_c.path(), &store).await;
    let mut cc = client(&c).await;
    assert_eq!(count(&mut cc, "SELECT count(*) FROM events").await, 4000);
    assert_eq!(
        count(&mut cc, "SELECT count(DISTINCT t) FROM events").await,
        4000
    );
    let versions = count(&mut cc, "SELECT count(*) FROM strata_versions('events')").await;
    let newest = count(
        &mut cc,
        "SELECT max(version) FROM strata_versions('events')",
    )
    .await;
    assert_eq!(versions, newest, "versions 1..={newest} without a gap");
    assert!(
        versions >= 3,
        "both servers committed ({versions} versions)"
    );
    c.shutdown().await.unwrap();

    // A holds acknowledged rows only in its WAL when it dies; B commits meanwhile.
    let slow = |c: &mut ServerConfig| {
        store(c);
        c.ingest.flush_interval_ms = 3_600_000;
    };
    let a = start(dir_a.path(), slow).await;
    let mut ca = client(&a).await;
    let more: Vec<(u64, Bytes)> = (0..5)
        .map(|i| (41 + i, ipc(&batch(200_000 + i as i64 * 10, 10))))
        .collect();
    let out = ingest(&mut ca, "events", "pa", more).await.unwrap();
    assert_eq!(out.acks.len(), 5);
    a.abort().await.unwrap();
    let b = start(dir_b.path(), slow).await;
    let mut cb = client(&b).await;
    ingest(
        &mut cb,
        "events",
        "pb",
        vec![(41, ipc(&batch(300_000, 10)))],
    )
    .await
    .unwrap();
    flush(&mut cb, "events").await;
    b.shutdown().await.unwrap();
    let a = start(dir_a.path(), slow).await;
    let mut ca = client(&a).await;
    flush(&mut ca, "events").await;
    assert_eq!(count(&mut ca, "SELECT count(*) FROM events").await, 4060);
    assert_eq!(
        count(
            &mut ca,
            "SELECT count(*) FROM events WHERE t >= 200000 AND t < 300000"
        )
        .await,
        50
    );
    a.shutdown().await.unwrap();
    drop_keyspace("strata_two").await;
}

/// A producer that moves between servers keeps exactly-once: while the server it left
/// still holds its acknowledged, unflushed batches, the other refuses it with
/// UNAVAILABLE (retryable); once they are committed the producer goes on through the
/// new server, which acknowledges the resent batches as duplicates. Append-only, so a
/// batch applied twice would show as twice the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_moves_between_servers_exactly_once() {
    let store = on_cassandra("strata_moves");
    let slow = |c: &mut ServerConfig| {
        store(c);
        c.ingest.flush_interval_ms = 3_600_000;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(dir_a.path(), slow).await;
    let b = start(dir_b.path(), slow).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    create(&mut ca, "moves", false).await;
    // B has the dataset open (and its marks) before A takes any batch.
    assert_eq!(count(&mut cb, "SELECT count(*) FROM moves").await, 0);
    let batches = |seqs: std::ops::RangeInclusive<u64>| -> Vec<(u64, Bytes)> {
        seqs.map(|s| (s, ipc(&batch(s as i64 * 10, 10)))).collect()
    };
    let out = ingest(&mut ca, "moves", "p", batches(1..=5)).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.acks.len(), 5);

    // The producer lost its last acks and moves to B, resending 4 and 5.
    let refused = ingest(&mut cb, "moves", "p", batches(4..=8)).await;
    let status = match refused {
        Err(s) => s,
        Ok(o) => o.status.expect("B must refuse the producer A still holds"),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");

    // A commits its batches and gives the producer up; B then takes it.
    flush(&mut ca, "moves").await;
    let mut moved = None;
    for _ in 0..100 {
        match ingest(&mut cb, "moves", "p", batches(4..=8)).await {
            Ok(o) if o.status.is_none() => {
                moved = Some(o);
                break;
            }
            Ok(o) if o.status.as_ref().unwrap().code() == tonic::Code::Unavailable => {}
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            other => panic!("moving the producer: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let moved = moved.expect("A released the producer after its flush");
    assert_eq!(moved.last_sequence, 5, "B knows what A committed");
    let duplicate: Vec<bool> = moved.acks.iter().map(|a| a.duplicate).collect();
    assert_eq!(duplicate, [true, true, false, false, false]);

    // Back to A while B holds 6..=8 unflushed: refused the same way.
    let back = ingest(&mut ca, "moves", "p", batches(9..=9)).await;
    let status = match back {
        Err(s) => s,
        Ok(o) => o.status.expect("A must refuse the producer B holds"),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    flush(&mut cb, "moves").await;
    assert_eq!(count(&mut ca, "SELECT count(*) FROM moves").await, 80);
    assert_eq!(
        count(&mut ca, "SELECT count(DISTINCT t) FROM moves").await,
        80
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop_keyspace("strata_moves").await;
}

/// A three-node cluster of this test's own (`tools/cassandra/run`), stopped when
/// dropped, whatever the test's outcome.
struct Cluster {
    dir: tempfile::TempDir,
    contact: String,
}

impl Cluster {
    fn run(&self, args: &[&str]) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/cassandra/run");
        let out = std::process::Command::new(script)
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .expect("tools/cassandra/run");
        assert!(
            out.status.success(),
            "tools/cassandra/run {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn log(&self, node: usize) -> (std::path::PathBuf, String) {
        let path = self.dir.path().join(format!("node{node}/system.log"));
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        (path, log)
    }

    /// What each node logged about its peers and schema, to explain a failure: the
    /// last 80 such lines, and every line about a peer it removed or ignores.
    fn print_logs(&self) {
        const WORTH: [&str; 7] = ["schema", "Schema", " UP", "DOWN", "WARN", "ERROR", "pull"];
        const REMOVED: [&str; 4] = ["ignor", "Removing", "FatClient", "removeEndpoint"];
        for node in 1..=3 {
            let (path, log) = self.log(node);
            eprintln!("--- node {node}: {} ---", path.display());
            for line in log
                .lines()
                .filter(|l| REMOVED.iter().any(|w| l.contains(w)))
            {
                eprintln!("{line}");
            }
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| WORTH.iter().any(|w| l.contains(w)))
                .collect();
            eprintln!("--- node {node}, last lines ---");
            for line in &lines[lines.len().saturating_sub(80)..] {
                eprintln!("{line}");
            }
        }
    }

    /// Whether a node removed a peer from schema synchronisation. Cassandra never takes
    /// such a peer back while it runs (CASSANDRA-17883, "Removing and ignoring
    /// endpoint"), so its schema stays apart for good: a node that was silent in gossip
    /// before announcing its tokens for longer than the fat-client timeout (half the
    /// gossip quarantine delay, see `tools/cassandra/run`) is removed as a departed
    /// client.
    fn ignores_a_peer(&self) -> bool {
        (1..=3).any(|node| self.log(node).1.contains("Removing and ignoring endpoint"))
    }

    fn start(port: u16) -> Cluster {
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            contact: String::new(),
        };
        let port = port.to_string();
        cluster.contact = cluster.run(&["start", "--nodes", "3", "--port", &port]);
        assert!(
            !cluster.ignores_a_peer(),
            "a node of the new cluster ignores a peer's schema (CASSANDRA-17883)"
        );
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let _ = self.run(&["stop"]);
    }
}

/// Replication 3, QUORUM: one node SIGKILLed during ingest and queries changes
/// nothing a client sees; with two down, acknowledged rows wait in the WAL (a flush
/// cannot commit, dataset changes fail UNAVAILABLE) and commit once a node is back;
/// with all three down, acknowledgements go on up to the memory bound, then the
/// stream waits, and nothing is lost when the cluster returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_one_then_two() {
    let cluster = Cluster::start(19342);
    let url = format!(
        "cassandra://{}/strata_nodes?replication_factor=3&consistency=quorum&serial_consistency=serial&timeout_ms=3000",
        cluster.contact
    );
    let on = |c: &mut ServerConfig| {
        c.store = url.clone();
        c.ingest.flush_interval_ms = 100;
        c.ingest.max_batch_mb = 2;
        c.ingest.memory_limit_mb = 4;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), on).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let load = |from: u64, to: u64| -> Vec<(u64, Bytes)> {
        (from..to)
            .map(|i| (i + 1, ipc(&batch(i as i64 * 20, 20))))
            .collect()
    };
    let out = ingest(&mut c, "events", "p", load(0, 20)).await.unwrap();
    assert_eq!(out.acks.len(), 20);

    // One node down, mid-stream.
    let mut writer = c.clone();
    let feeding =
        tokio::spawn(async move { ingest(&mut writer, "events", "p", load(20, 60)).await });
    cluster.run(&["kill", "3"]);
    let out = feeding.await.unwrap().unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.acks.len(), 40);
    flush(&mut c, "events").await;
    assert_eq!(count(&mut c, "SELECT count(*) FROM events").await, 1200);
    cluster.run(&["restart-node", "3"]);

    // Two down: acknowledged into the WAL, nothing committed until a node returns.
    cluster.run(&["kill", "2"]);
    cluster.run(&["kill", "3"]);
    let out = ingest(&mut c, "events", "p", load(60, 70)).await.unwrap();
    assert_eq!(
        out.acks.len(),
        10,
        "acknowledged from the WAL: {:?}",
        out.status
    );
    let e = c
        .rollback(RollbackRequest {
            dataset: "events".into(),
            to: Some(VersionRef {
                kind: Some(version_ref::Kind::Version(2)),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    let mut flusher = c.clone();
    let flushing = tokio::spawn(async move { flush(&mut flusher, "events").await });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !flushing.is_finished(),
        "a flush cannot commit without a quorum"
    );
    cluster.run(&["restart-node", "2"]);
    flushing.await.unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM events").await, 1400);

    // Every node down: batches are acknowledged into the WAL until the memory bound
    // (4 MiB here), then the stream waits; all of it commits once a quorum returns.
    cluster.run(&["kill", "1"]);
    cluster.run(&["kill", "2"]);
    let big: Vec<(u64, Bytes)> = (0..120)
        .map(|i| (100 + i, ipc(&batch(1_000_000 + i as i64 * 2000, 2000))))
        .collect();
    let mut writer = c.clone();
    let feeding = tokio::spawn(async move { ingest(&mut writer, "events", "p", big).await });
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        !feeding.is_finished(),
        "the stream waits at the memory bound"
    );
    cluster.run(&["restart-node", "1"]);
    cluster.run(&["restart-node", "2"]);
    let out = feeding.await.unwrap().unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.acks.len(), 120);
    flush(&mut c, "events").await;
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM events").await,
        1400 + 120 * 2000
    );
    server.shutdown().await.unwrap();
    cluster.run(&["restart-node", "3"]);
}

async fn drop_keyspace(keyspace: &str) {
    let config = strata_cassandra::CassandraConfig::from_url(&url(keyspace)).unwrap();
    let store = strata_cassandra::CassandraStore::connect(config)
        .await
        .unwrap();
    store.drop_keyspace().await.unwrap();
}

/// A subscriber of server A sees commits made through server B on the same keyspace
/// (found by polling the version log), in order, without gap or repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_see_commits_of_other_servers() {
    use crate::subscribe::subscribe;
    let store = on_cassandra("strata_feed");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(dir_a.path(), &store).await;
    let b = start(dir_b.path(), &store).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    create(&mut ca, "events", true).await;
    let mut feed = subscribe(
        &mut ca,
        strata_proto::v1::SubscribeRequest {
            dataset: "events".into(),
            from_version: Some(1),
            filter: "t % 2 = 0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut last = 0;
    for i in 0..3 {
        let out = ingest(
            &mut cb,
            "events",
            "pb",
            vec![(i + 1, ipc(&batch(i as i64 * 100, 100)))],
        )
        .await
        .unwrap();
        assert!(out.status.is_none(), "{:?}", out.status);
        last = flush(&mut cb, "events").await;
    }
    feed.until(last).await.unwrap();
    assert_eq!(feed.completed, (1..=last).collect::<Vec<_>>());
    let rows: usize = feed.rows.values().map(Vec::len).sum();
    assert_eq!(rows, 150, "the even t of 300 rows written through B");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop_keyspace("strata_feed").await;
}
