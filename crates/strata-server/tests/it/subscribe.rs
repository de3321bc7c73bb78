//! Subscriptions: the changes from a version on, then each new version's as it commits,
//! filtered and projected on the server; resumed after a disconnect and a restart
//! without gap or repeat; a slow subscriber does not hold ingestion back; errors.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
use arrow::ipc::reader::StreamReader;
use arrow_flight::FlightClient;
use arrow_flight::decode::DecodedPayload;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    RollbackRequest, SubscribeRequest, SubscribeResponse, VersionRef, version_ref,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::e2e::{batch, client, create, flush, ingest, ipc, start};
use crate::hostile::sql;

/// One change row: (k, t, v, _change_type).
pub(crate) type ChangeRow = (String, i64, Option<f64>, String);

/// A subscription read message by message: rows per version, versions completed.
pub(crate) struct Feed {
    stream: tonic::Streaming<SubscribeResponse>,
    schema_ipc: Vec<u8>,
    /// Change rows of each version.
    pub(crate) rows: BTreeMap<u64, Vec<ChangeRow>>,
    /// Completed versions, in the order they completed.
    pub(crate) completed: Vec<u64>,
    pub(crate) operations: BTreeMap<u64, String>,
}

pub(crate) async fn subscribe(
    c: &mut StrataClient<Channel>,
    request: SubscribeRequest,
) -> Result<Feed, tonic::Status> {
    let mut stream = c.subscribe(request).await?.into_inner();
    let first = stream.message().await?.expect("the schema message");
    Ok(Feed {
        stream,
        schema_ipc: first.arrow_ipc.to_vec(),
        rows: BTreeMap::new(),
        completed: vec![],
        operations: BTreeMap::new(),
    })
}

fn from(dataset: &str, version: u64) -> SubscribeRequest {
    SubscribeRequest {
        dataset: dataset.into(),
        from_version: Some(version),
        ..Default::default()
    }
}

impl Feed {
    /// Reads messages until `version` is complete (within 30 s).
    pub(crate) async fn until(&mut self, version: u64) -> Result<(), tonic::Status> {
        while self.completed.last().is_none_or(|&v| v < version) {
            let m = tokio::time::timeout(Duration::from_secs(30), self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("version {version} did not arrive"))?
                .expect("the stream ended");
            if let Some(&last) = self.completed.last() {
                assert!(m.version > last, "v{} after v{last} completed", m.version);
            }
            self.operations.insert(m.version, m.operation.clone());
            if m.version_complete {
                assert!(m.arrow_ipc.is_empty());
                self.completed.push(m.version);
                continue;
            }
            let mut bytes = self.schema_ipc.clone();
            bytes.extend_from_slice(&m.arrow_ipc);
            let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
            for b in reader {
                let b = b.unwrap();
                self.rows
                    .entry(m.version)
                    .or_default()
                    .extend(change_rows(&b, m.version));
            }
        }
        Ok(())
    }
}

/// (k, t, v, _change_type) of each row; checks `_commit_version`.
fn change_rows(b: &RecordBatch, version: u64) -> Vec<ChangeRow> {
    let col = |name: &str| {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("column {name}"))
    };
    let k = col("k").as_string::<i32>();
    let t = col("t").as_primitive::<Int64Type>();
    let v = b
        .column_by_name("v")
        .map(|c| c.as_primitive::<Float64Type>().clone());
    let kind = col("_change_type").as_string::<i32>();
    let at = col("_commit_version").as_primitive::<UInt64Type>();
    (0..b.num_rows())
        .map(|i| {
            assert_eq!(at.value(i), version);
            let value = v.as_ref().and_then(|v| (!v.is_null(i)).then(|| v.value(i)));
            (
                k.value(i).to_string(),
                t.value(i),
                value,
                kind.value(i).to_string(),
            )
        })
        .collect()
}

async fn load(c: &mut StrataClient<Channel>, producer: &str, seq: u64, first: i64, n: i64) -> u64 {
    let out = ingest(c, "events", producer, vec![(seq, ipc(&batch(first, n)))])
        .await
        .unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    flush(c, "events").await
}

fn kinds(rows: &[ChangeRow]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rows {
        *out.entry(r.3.clone()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_history_then_each_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let v2 = load(&mut c, "p", 1, 0, 50).await;
    let v3 = load(&mut c, "p", 2, 50, 50).await;

    // From version 1: the creation (no rows), then both loads, filtered on the server.
    let mut feed = subscribe(
        &mut c,
        SubscribeRequest {
            filter: "v >= 10 AND _change_type <> 'update_before'".into(),
            ..from("events", 1)
        },
    )
    .await
    .unwrap();
    feed.until(v3).await.unwrap();
    assert_eq!(feed.completed, [1, v2, v3]);
    assert!(!feed.rows.contains_key(&1));
    assert_eq!(feed.rows[&v2].len(), 30, "t 20..50 pass v >= 10");
    assert_eq!(feed.rows[&v3].len(), 50);
    assert_eq!(feed.operations[&v2], "upsert");

    // New versions arrive as they commit: a load, a delete, a rollback.
    let v4 = load(&mut c, "p", 3, 100, 10).await;
    feed.until(v4).await.unwrap();
    assert_eq!(
        kinds(&feed.rows[&v4]),
        BTreeMap::from([("insert".into(), 10)])
    );
    sql(&mut c, "DELETE FROM events WHERE t < 30")
        .await
        .unwrap();
    let v5 = v4 + 1;
    feed.until(v5).await.unwrap();
    assert_eq!(
        kinds(&feed.rows[&v5]),
        BTreeMap::from([("delete".into(), 10)])
    );
    let v6 = c
        .rollback(RollbackRequest {
            dataset: "events".into(),
            to: Some(VersionRef {
                kind: Some(version_ref::Kind::Version(v3)),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version;
    feed.until(v6).await.unwrap();
    // The rollback re-inserts the 10 deleted rows and deletes the 10 loaded after v3.
    assert_eq!(
        kinds(&feed.rows[&v6]),
        BTreeMap::from([("delete".into(), 10), ("insert".into(), 10)])
    );
    assert_eq!(feed.operations[&v6], "rollback");

    // A projection: only the columns asked for, then the change columns.
    let mut narrow = subscribe(
        &mut c,
        SubscribeRequest {
            columns: vec!["k".into(), "t".into()],
            ..from("events", v4)
        },
    )
    .await
    .unwrap();
    narrow.until(v4).await.unwrap();
    assert!(narrow.rows[&v4].iter().all(|r| r.2.is_none()));
    let schema = StreamReader::try_new(std::io::Cursor::new(narrow.schema_ipc.clone()), None)
        .unwrap()
        .schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "k",
            "t",
            "_change_type",
            "_commit_version",
            "_commit_timestamp"
        ]
    );

    // Resume after a disconnect: from the last complete version + 1, nothing twice.
    drop(feed);
    let v7 = load(&mut c, "p", 4, 200, 5).await;
    let mut again = subscribe(&mut c, from("events", v6 + 1)).await.unwrap();
    again.until(v7).await.unwrap();
    assert_eq!(again.completed, [v7]);
    assert_eq!(again.rows[&v7].len(), 5);

    // Without from_version: only what commits from now on.
    let mut new_only = subscribe(
        &mut c,
        SubscribeRequest {
            dataset: "events".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let v8 = load(&mut c, "p", 5, 300, 5).await;
    new_only.until(v8).await.unwrap();
    assert_eq!(new_only.completed, [v8]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_restart_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let v2 = load(&mut c, "p", 1, 0, 20).await;
    let mut feed = subscribe(&mut c, from("events", 2)).await.unwrap();
    feed.until(v2).await.unwrap();
    server.shutdown().await.unwrap();

    // The consumer saw v2 complete; the server restarts; it resumes at v2 + 1.
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    let v3 = load(&mut c, "p", 2, 20, 20).await;
    let mut feed = subscribe(&mut c, from("events", v2 + 1)).await.unwrap();
    feed.until(v3).await.unwrap();
    assert_eq!(feed.completed, [v3]);
    let ts: Vec<i64> = feed.rows[&v3].iter().map(|r| r.1).collect();
    assert_eq!(ts.len(), 20);
    assert!(ts.iter().all(|t| (20..40).contains(t)));

    // Errors, each with its status.
    let code = |r: Result<Feed, tonic::Status>| {
        let e = r.err().expect("an error");
        (e.code(), e.message().to_string())
    };
    let (status, _) = code(subscribe(&mut c, from("nope", 1)).await);
    assert_eq!(status, Code::NotFound);
    let (status, _) = code(subscribe(&mut c, from("events", v3 + 2)).await);
    assert_eq!(status, Code::NotFound);
    let (status, msg) = code(
        subscribe(
            &mut c,
            SubscribeRequest {
                columns: vec!["nope".into()],
                ..from("events", 1)
            },
        )
        .await,
    );
    assert_eq!(status, Code::InvalidArgument, "{msg}");
    for filter in ["v >>> 1", "nope = 1", "v + 1", "(SELECT 1) = 1 AND"] {
        let (status, msg) = code(
            subscribe(
                &mut c,
                SubscribeRequest {
                    filter: filter.into(),
                    ..from("events", 1)
                },
            )
            .await,
        );
        assert_eq!(status, Code::InvalidArgument, "{filter}: {msg}");
    }
    // Vacuumed: FAILED_PRECONDITION naming the oldest version whose changes are readable.
    sql(&mut c, "VACUUM events RETAIN 1 VERSIONS")
        .await
        .unwrap();
    let head = sql(&mut c, "SELECT max(version) FROM strata_versions('events')")
        .await
        .unwrap();
    let head = crate::hostile::single_i64(&head) as u64;
    let (status, msg) = code(subscribe(&mut c, from("events", 2)).await);
    assert_eq!(status, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains(&format!("readable is {}", head)), "{msg}");
    server.shutdown().await.unwrap();
}

/// A subscriber that reads nothing does not hold ingestion back: its stream falls
/// behind and, read later, has every version in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_never_slows_ingestion() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let mut feed = subscribe(&mut c, from("events", 1)).await.unwrap();
    let mut last = 0;
    let started = std::time::Instant::now();
    for i in 0..40 {
        // Wide rows, so the unread feed fills its buffers and HTTP/2 window.
        last = load(&mut c, "p", i + 1, i as i64 * 2000, 2000).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "40 loads with an unread subscriber took {:?}",
        started.elapsed()
    );
    feed.until(last).await.unwrap();
    assert_eq!(feed.completed, (1..=last).collect::<Vec<_>>());
    let rows: usize = feed.rows.values().map(Vec::len).sum();
    assert_eq!(rows, 40 * 2000);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_limited_and_served_over_flight() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.max_subscriptions = 1).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let v2 = load(&mut c, "p", 1, 0, 10).await;

    // Over Flight: DoGet with the subscription ticket, metadata per message.
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightClient::new(channel);
    let ticket = arrow_flight::sql::Any {
        type_url: strata_server::subscribe::SUBSCRIBE_TYPE_URL.into(),
        value: from("events", 1).encode_to_vec().into(),
    };
    let mut data = flight
        .do_get(arrow_flight::Ticket::new(Bytes::from(
            ticket.encode_to_vec(),
        )))
        .await
        .unwrap()
        .into_inner();
    let mut rows = 0;
    let mut completed = vec![];
    while completed.last() != Some(&v2) {
        let m = data.next().await.expect("more data").unwrap();
        let meta = if m.app_metadata().is_empty() {
            None
        } else {
            Some(serde_json::from_slice::<serde_json::Value>(&m.app_metadata()).unwrap())
        };
        match m.payload {
            DecodedPayload::RecordBatch(b) => {
                let meta = meta.expect("metadata on every batch");
                if meta["complete"] == true {
                    assert_eq!(b.num_rows(), 0);
                    completed.push(meta["version"].as_u64().unwrap());
                } else {
                    assert_eq!(meta["version"], v2);
                    rows += b.num_rows();
                }
            }
            DecodedPayload::Schema(_) => {}
            DecodedPayload::None => panic!("a message of no data"),
        }
    }
    assert_eq!(completed, [1, v2]);
    assert_eq!(rows, 10);

    // That one running subscription is the maximum: another is refused until it ends.
    let e = subscribe(&mut c, from("events", 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    drop(data);
    drop(flight);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match subscribe(&mut c, from("events", 1)).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // An unknown ticket is a client error.
    let bad = arrow_flight::sql::Any {
        type_url: "type.googleapis.com/nope".into(),
        value: Bytes::new(),
    };
    let e = flight_error(&server, bad.encode_to_vec()).await;
    assert_eq!(e, Code::InvalidArgument);
    server.shutdown().await.unwrap();
}

async fn flight_error(server: &strata_server::Server, ticket: Vec<u8>) -> Code {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    match flight
        .do_get(arrow_flight::Ticket::new(Bytes::from(ticket)))
        .await
    {
        Ok(r) => {
            let mut s = r.into_inner();
            s.message().await.expect_err("an error").code()
        }
        Err(e) => e.code(),
    }
}

/// pyarrow's Flight client follows a dataset with the subscription ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_follows_changes_over_flight() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let v2 = load(&mut c, "p", 1, 0, 20).await;
    let url = format!("grpc://{}", server.addr());
    let python = crate::e2e::run_python(
        "flight_subscribe.py",
        vec![
            url,
            "events".into(),
            "1".into(),
            (v2 + 1).to_string(),
            "t < 15".into(),
        ],
    );
    // v3 commits while the client follows.
    let writer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = ingest(&mut c, "events", "p", vec![(2, ipc(&batch(10, 10)))])
            .await
            .unwrap();
        assert!(out.status.is_none());
        flush(&mut c, "events").await
    };
    let (report, v3) = tokio::join!(python, writer);
    assert_eq!(v3, v2 + 1);
    assert_eq!(report["completed"], serde_json::json!([1, v2, v3]));
    assert_eq!(report["rows"][v2.to_string()]["insert"], 15);
    // v3 wrote t 10..20 again with the values they have (`batch`'s values follow t): a
    // row rewritten equal is no change, so v3 completes with no rows.
    assert!(report["rows"].get(v3.to_string()).is_none(), "{report}");
    assert_eq!(report["columns"][3], "_change_type");
    server.shutdown().await.unwrap();
}
