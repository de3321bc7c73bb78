use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow_flight::{FlightClient, FlightDescriptor};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    Column, CreateDatasetRequest, DatasetSpec, DescribeDatasetRequest, DropDatasetRequest,
    FlushRequest, IngestAck, IngestBatch, IngestOpen, IngestRequest, ListDatasetsRequest,
    ingest_request, ingest_response,
};
use strata_server::{Server, ServerConfig};
use strata_table::VersionSpec;
use tonic::Code;
use tonic::transport::Channel;

pub(crate) async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut config = ServerConfig::ephemeral(dir.to_path_buf());
    tweak(&mut config);
    Server::start(config).await.unwrap()
}

pub(crate) async fn client(server: &Server) -> StrataClient<Channel> {
    StrataClient::connect(server.url())
        .await
        .unwrap()
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]))
}

pub(crate) async fn create(c: &mut StrataClient<Channel>, name: &str, row_key: bool) {
    let col = |name: &str, ty: &str, nullable| Column {
        name: name.into(),
        r#type: ty.into(),
        nullable,
    };
    c.create_dataset(CreateDatasetRequest {
        spec: Some(DatasetSpec {
            name: name.into(),
            columns: vec![
                col("k", "utf8", false),
                col("t", "int64", false),
                col("v", "float64", true),
            ],
            partition_key: vec!["k".into()],
            row_key: if row_key { vec!["t".into()] } else { vec![] },
            shards: 0,
        }),
    })
    .await
    .unwrap();
}

/// Rows `t = first..first+n` over five keys.
pub(crate) fn batch(first: i64, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (first..first + n).map(|t| format!("k{}", t % 5)),
            )),
            Arc::new(Int64Array::from_iter_values(first..first + n)),
            Arc::new(Float64Array::from_iter_values(
                (first..first + n).map(|t| t as f64 / 2.0),
            )),
        ],
    )
    .unwrap()
}

pub(crate) fn ipc(b: &RecordBatch) -> Bytes {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &b.schema()).unwrap();
    w.write(b).unwrap();
    w.finish().unwrap();
    drop(w);
    Bytes::from(out)
}

/// What one Ingest stream saw.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) last_sequence: u64,
    pub(crate) acks: Vec<IngestAck>,
    pub(crate) status: Option<tonic::Status>,
}

pub(crate) async fn ingest(
    c: &mut StrataClient<Channel>,
    dataset: &str,
    producer: &str,
    batches: Vec<(u64, Bytes)>,
) -> Result<Outcome, tonic::Status> {
    let mut messages = vec![IngestRequest {
        kind: Some(ingest_request::Kind::Open(IngestOpen {
            dataset: dataset.into(),
            producer: producer.into(),
        })),
    }];
    messages.extend(
        batches
            .into_iter()
            .map(|(sequence, arrow_ipc)| IngestRequest {
                kind: Some(ingest_request::Kind::Batch(IngestBatch {
                    sequence,
                    arrow_ipc,
                })),
            }),
    );
    let mut responses = c
        .ingest(futures::stream::iter(messages))
        .await?
        .into_inner();
    let mut out = Outcome {
        last_sequence: 0,
        acks: vec![],
        status: None,
    };
    loop {
        match responses.message().await {
            Ok(Some(r)) => match r.kind.unwrap() {
                ingest_response::Kind::Opened(o) => out.last_sequence = o.last_sequence,
                ingest_response::Kind::Ack(a) => out.acks.push(a),
            },
            Ok(None) => return Ok(out),
            Err(s) => {
                out.status = Some(s);
                return Ok(out);
            }
        }
    }
}

pub(crate) async fn flush(c: &mut StrataClient<Channel>, dataset: &str) -> u64 {
    c.flush(FlushRequest {
        dataset: dataset.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .version
}

/// Sorted `t` values at the head.
async fn ts(server: &Server, dataset: &str) -> Vec<i64> {
    let table = server
        .ingester()
        .catalog()
        .open_table(dataset)
        .await
        .unwrap();
    let all = table
        .snapshot(&VersionSpec::Head)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    let col = all
        .column_by_name("t")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let mut v = col.values().to_vec();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn ingest_then_read_back_with_duplicates_after_resend() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    let batches: Vec<(u64, Bytes)> = (0..20)
        .map(|i| (i + 1, ipc(&batch(i as i64 * 50, 50))))
        .collect();
    let out = ingest(&mut c, "events", "job", batches.clone())
        .await
        .unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.last_sequence, 0);
    let seqs: Vec<u64> = out.acks.iter().map(|a| a.sequence).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "acks in order");
    assert!(out.acks.iter().all(|a| !a.duplicate && a.rows == 50));

    // A producer that lost its acks resends everything: all duplicates, nothing doubled.
    let again = ingest(&mut c, "events", "job", batches[5..].to_vec())
        .await
        .unwrap();
    assert_eq!(again.last_sequence, 20);
    assert!(again.status.is_none());
    assert!(again.acks.iter().all(|a| a.duplicate && a.rows == 0));
    assert_eq!(again.acks.len(), 15);

    let v = flush(&mut c, "events").await;
    assert!(v >= 2);
    assert_eq!(ts(&server, "events").await, (0..1000).collect::<Vec<_>>());
    let info = c
        .describe_dataset(DescribeDatasetRequest {
            name: "events".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.live_rows, 1000);
    assert_eq!(info.producers.get("job"), Some(&20));
    assert!(
        !info.producers.contains_key("$wal"),
        "internal marks are not shown"
    );
    assert_eq!(info.unflushed_rows, 0);
    let schema = arrow::ipc::reader::StreamReader::try_new(&info.arrow_schema[..], None)
        .unwrap()
        .schema();
    assert_eq!(schema.fields().len(), 3);

    // Resent after the flush too (the marks are committed with the rows).
    let late = ingest(&mut c, "events", "job", batches[..2].to_vec())
        .await
        .unwrap();
    assert!(late.acks.iter().all(|a| a.duplicate));
    flush(&mut c, "events").await;
    assert_eq!(ts(&server, "events").await.len(), 1000);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn rows_become_visible_without_an_explicit_flush() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.ingest.flush_interval_ms = 100).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let out = ingest(&mut c, "events", "p", vec![(1, ipc(&batch(0, 10)))])
        .await
        .unwrap();
    assert_eq!(out.acks.len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let info = c
            .describe_dataset(DescribeDatasetRequest {
                name: "events".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if info.live_rows == 10 {
            assert_eq!(info.producers.get("p"), Some(&1));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rows never became visible"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| {
        c.ingest.max_batch_mb = 1;
        c.max_message_mb = 2;
    })
    .await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let good = ingest(&mut c, "events", "p", vec![(1, ipc(&batch(0, 100)))])
        .await
        .unwrap();
    assert_eq!(good.acks.len(), 1);

    // Unknown dataset.
    let e = ingest(&mut c, "nope", "p", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("nope"), "{e}");

    let with = |fields: Vec<Field>, cols: Vec<arrow::array::ArrayRef>| {
        ipc(&RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap())
    };
    let b = batch(1000, 10);
    let (k, t, v) = (
        b.column(0).clone(),
        b.column(1).clone(),
        b.column(2).clone(),
    );
    let fk = Field::new("k", DataType::Utf8, false);
    let ft = Field::new("t", DataType::Int64, false);
    let fv = Field::new("v", DataType::Float64, true);
    let full = ipc(&b);
    let huge = ipc(&batch(0, 60_000)); // ~1.4 MB: over the 1 MiB batch limit
    let cases: Vec<(&str, Bytes, Code, &str)> = vec![
        (
            "missing column",
            with(vec![fk.clone(), ft.clone()], vec![k.clone(), t.clone()]),
            Code::InvalidArgument,
            "\"v\"",
        ),
        (
            "extra column",
            with(
                vec![
                    fk.clone(),
                    ft.clone(),
                    fv.clone(),
                    Field::new("w", DataType::Float64, true),
                ],
                vec![k.clone(), t.clone(), v.clone(), v.clone()],
            ),
            Code::InvalidArgument,
            "\"w\"",
        ),
        (
            "mistyped column",
            with(
                vec![
                    fk.clone(),
                    Field::new("t", DataType::Float64, false),
                    fv.clone(),
                ],
                vec![k.clone(), v.clone(), v.clone()],
            ),
            Code::InvalidArgument,
            "\"t\"",
        ),
        (
            "null in key",
            with(
                vec![
                    Field::new("k", DataType::Utf8, true),
                    ft.clone(),
                    fv.clone(),
                ],
                vec![
                    Arc::new(StringArray::from(vec![None::<&str>; 10])),
                    t.clone(),
                    v.clone(),
                ],
            ),
            Code::InvalidArgument,
            "key column \"k\"",
        ),
        (
            "malformed IPC",
            Bytes::from_static(b"\x01\x02garbage"),
            Code::InvalidArgument,
            "Arrow IPC",
        ),
        (
            "truncated IPC",
            full.slice(..full.len() - 30),
            Code::InvalidArgument,
            "Arrow IPC",
        ),
        ("oversized batch", huge, Code::ResourceExhausted, "limit"),
    ];
    for (what, bytes, code, needle) in cases {
        // One good batch first: its ack must arrive before the error ends the stream.
        let out = ingest(
            &mut c,
            "events",
            "",
            vec![(1, ipc(&batch(5000, 1))), (2, bytes)],
        )
        .await
        .unwrap();
        assert_eq!(out.acks.len(), 1, "{what}: {:?}", out.acks);
        let status = out.status.unwrap_or_else(|| panic!("{what}: no error"));
        assert_eq!(status.code(), code, "{what}: {status}");
        assert!(status.message().contains(needle), "{what}: {status}");
    }
    // Over the gRPC message limit itself: the transport refuses it before Strata sees
    // it, with tonic's code for an oversized message.
    let out = ingest(&mut c, "events", "", vec![(1, ipc(&batch(0, 120_000)))]).await;
    let status = match out {
        Ok(o) => o.status.expect("error"),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status}");
    assert!(status.message().contains("too large"), "{status}");

    // Sequence numbers going backwards on a stream.
    let out = ingest(
        &mut c,
        "events",
        "q",
        vec![(5, ipc(&batch(6000, 1))), (4, ipc(&batch(6001, 1)))],
    )
    .await
    .unwrap();
    assert_eq!(out.acks.len(), 1);
    let status = out.status.unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("sequence number 4"), "{status}");

    // A bad producer id, and a stream that does not start with `open`.
    let e = ingest(&mut c, "events", "a b", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .ingest(futures::stream::iter(vec![IngestRequest {
            kind: Some(ingest_request::Kind::Batch(IngestBatch {
                sequence: 1,
                arrow_ipc: full.clone(),
            })),
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Only the good rows are there.
    flush(&mut c, "events").await;
    let mut want: Vec<i64> = (0..100).chain([5000, 6000]).collect();
    want.sort_unstable();
    assert_eq!(ts(&server, "events").await, want);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn dataset_management_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "b_events", false).await;
    create(&mut c, "a_events", true).await;
    // One key column `k` of the given type.
    let one_column = |name: &str, ty: &str| CreateDatasetRequest {
        spec: Some(DatasetSpec {
            name: name.into(),
            columns: vec![Column {
                name: "k".into(),
                r#type: ty.into(),
                nullable: false,
            }],
            partition_key: vec!["k".into()],
            row_key: vec![],
            shards: 1,
        }),
    };
    let e = c
        .create_dataset(one_column("a_events", "utf8"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let e = c
        .create_dataset(one_column("bad", "notatype"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("notatype"), "{e}");
    let names = c
        .list_datasets(ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, vec!["a_events", "b_events"]);
    let info = c
        .describe_dataset(DescribeDatasetRequest {
            name: "a_events".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let spec = info.spec.unwrap();
    assert_eq!(spec.row_key, vec!["t"]);
    assert_eq!(spec.shards, 4, "the server's default shard count");
    assert_eq!(info.head_version, 1);
    let e = c
        .describe_dataset(DescribeDatasetRequest { name: "zzz".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.drop_dataset(DropDatasetRequest {
        name: "b_events".into(),
    })
    .await
    .unwrap();
    let e = c
        .drop_dataset(DropDatasetRequest {
            name: "b_events".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .flush(FlushRequest {
            dataset: "b_events".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_recovers_acked_rows_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    // No timed flushes: acknowledged rows are only in the WAL when the server dies.
    let slow = |c: &mut ServerConfig| c.ingest.flush_interval_ms = 3_600_000;
    let server = start(dir.path(), slow).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let batches: Vec<(u64, Bytes)> = (0..10)
        .map(|i| (i + 1, ipc(&batch(i as i64 * 10, 10))))
        .collect();
    let out = ingest(&mut c, "events", "p", batches[..6].to_vec())
        .await
        .unwrap();
    assert_eq!(out.acks.len(), 6);
    server.abort().await.unwrap();

    let server = start(dir.path(), slow).await;
    let mut c = client(&server).await;
    let info = c
        .describe_dataset(DescribeDatasetRequest {
            name: "events".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.unflushed_rows, 60, "replayed from the WAL");
    // The producer resumes where the server says, resending one batch it is unsure of.
    let out = ingest(&mut c, "events", "p", batches[5..].to_vec())
        .await
        .unwrap();
    assert_eq!(out.last_sequence, 6);
    assert!(out.acks[0].duplicate);
    assert!(out.acks[1..].iter().all(|a| !a.duplicate));
    // A graceful shutdown commits everything and leaves an empty WAL.
    server.shutdown().await.unwrap();
    let logs = strata_ingest::wal::log_files(&dir.path().join("wal")).unwrap();
    assert!(logs.is_empty(), "no log file left: {logs:?}");

    let server = start(dir.path(), slow).await;
    assert_eq!(ts(&server, "events").await, (0..100).collect::<Vec<_>>());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn memory_stays_bounded_under_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| {
        c.ingest.memory_limit_mb = 2;
        c.ingest.max_batch_mb = 1;
        c.ingest.flush_interval_ms = 3_600_000;
    })
    .await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    // About 30 MB of batches through a 2 MiB budget.
    let batches: Vec<(u64, Bytes)> = (0..300)
        .map(|i| (i + 1, ipc(&batch(i as i64 * 4000, 4000))))
        .collect();
    let out = ingest(&mut c, "events", "p", batches).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.acks.len(), 300);
    let stats = server.ingester().stats();
    assert!(stats.memory_peak_bytes <= 2 << 20, "{stats:?}");
    assert!(stats.flushes >= 10, "{stats:?}");
    flush(&mut c, "events").await;
    assert_eq!(ts(&server, "events").await.len(), 1_200_000);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn flight_do_put_writes_with_and_without_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightClient::new(channel);

    let put = |path: Vec<&str>, batches: Vec<RecordBatch>, seqs: Option<Vec<u64>>| {
        let mut data = arrow_flight::utils::batches_to_flight_data(&schema(), batches).unwrap();
        data[0].flight_descriptor = Some(FlightDescriptor::new_path(
            path.into_iter().map(String::from).collect(),
        ));
        if let Some(seqs) = seqs {
            for (d, s) in data[1..].iter_mut().zip(seqs) {
                d.app_metadata = Bytes::from(s.to_string());
            }
        }
        futures::stream::iter(data.into_iter().map(Ok))
    };
    let results: Vec<_> = flight
        .do_put(put(vec!["events"], vec![batch(0, 10), batch(10, 10)], None))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    let first: serde_json::Value = serde_json::from_slice(&results[0].app_metadata).unwrap();
    assert_eq!(first["rows"], 10);

    let exactly_once = || {
        put(
            vec!["events", "loader"],
            vec![batch(20, 5), batch(25, 5)],
            Some(vec![1, 2]),
        )
    };
    let results: Vec<_> = flight
        .do_put(exactly_once())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        results
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.app_metadata).contains("\"duplicate\":true"))
    );
    let again: Vec<_> = flight
        .do_put(exactly_once())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|r| String::from_utf8_lossy(&r.app_metadata).contains("\"duplicate\":true"))
    );

    // Errors: unknown dataset, missing sequence numbers.
    let e = flight
        .do_put(put(vec!["nope"], vec![batch(0, 1)], None))
        .await
        .err()
        .expect("unknown dataset");
    assert!(e.to_string().contains("nope"), "{e}");
    let mut stream = flight
        .do_put(put(vec!["events", "loader"], vec![batch(100, 1)], None))
        .await
        .unwrap();
    let mut failed = None;
    while let Some(r) = stream.next().await {
        if let Err(e) = r {
            failed = Some(e);
        }
    }
    assert!(
        failed
            .expect("missing sequence")
            .to_string()
            .contains("sequence number")
    );

    flush(&mut c, "events").await;
    assert_eq!(ts(&server, "events").await, (0..30).collect::<Vec<_>>());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "strata.v1.Strata".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"strata.v1.Strata".to_string()), "{names:?}");
    server.shutdown().await.unwrap();
}

/// pyarrow.flight as the client: the Python environment comes from `tools/pyenv`.
#[tokio::test]
async fn pyarrow_flight_do_put() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    let url = format!("grpc://{}", server.addr());
    let report = run_python("flight_put.py", vec![url, "events".into()]).await;
    let acks = |k: &str| report[k].as_array().unwrap().clone();
    assert_eq!(acks("plain").len(), 2);
    assert!(acks("plain").iter().all(|a| a["rows"] == 10));
    assert_eq!(acks("exactly_once").len(), 2);
    assert!(acks("exactly_once").iter().all(|a| a["duplicate"] == false));
    assert!(acks("resent").iter().all(|a| a["duplicate"] == true));
    let err = report["unknown_dataset_error"].as_str().expect("an error");
    assert!(err.contains("no_such_dataset"), "{err}");
    flush(&mut c, "events").await;
    assert_eq!(ts(&server, "events").await, (0..30).collect::<Vec<_>>());
    server.shutdown().await.unwrap();
}

/// Runs `tools/python/SCRIPT ARGS` with the interpreter of `tools/pyenv`; fails the
/// test unless it exits 0, and returns the one JSON object it prints.
pub(crate) async fn run_python(script: &str, args: Vec<String>) -> serde_json::Value {
    let (root, python) = python_env();
    let path = root.join("tools/python").join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(path)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The repository root and the Python interpreter `tools/pyenv` provides (it installs
/// the clients on first use); fails the test if the environment cannot be made.
pub(crate) fn python_env() -> (std::path::PathBuf, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::process::Command::new(root.join("tools/pyenv"))
        .output()
        .expect("tools/pyenv runs");
    assert!(
        python.status.success(),
        "tools/pyenv failed: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    let python = String::from_utf8(python.stdout).unwrap().trim().to_string();
    (root, python)
}

async fn oldest(c: &mut StrataClient<Channel>, dataset: &str) -> i64 {
    let q = format!("SELECT min(version) FROM strata_versions('{dataset}')");
    crate::hostile::single_i64(&crate::hostile::sql(c, &q).await.unwrap())
}

/// A retention policy is applied in the background: old versions go, the newest ones
/// and tagged ones stay, and a dataset's own policy overrides the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_vacuums_old_versions_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| {
        c.ingest.compaction_interval_ms = 100;
        c.retention.keep_versions = 3;
        c.retention.interval_s = 1;
        c.retention.dataset.insert(
            "kept".into(),
            strata_server::config::RetentionPolicy {
                keep_versions: 0,
                keep_hours: 24,
            },
        );
    })
    .await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    create(&mut c, "kept", true).await;
    for (i, dataset) in ["events", "kept"].iter().enumerate() {
        for v in 0..6 {
            let producer = format!("p{i}");
            let out = ingest(
                &mut c,
                dataset,
                &producer,
                vec![(v + 1, ipc(&batch(v as i64 * 10, 10)))],
            )
            .await
            .unwrap();
            assert!(out.status.is_none());
            flush(&mut c, dataset).await;
        }
    }
    crate::hostile::sql(
        &mut c,
        "ALTER TABLE events CREATE TAG first AS OF VERSION 2",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let versions = crate::hostile::sql(
            &mut c,
            "SELECT count(*) FROM strata_versions('events') WHERE version > 2",
        )
        .await
        .unwrap();
        if crate::hostile::single_i64(&versions) <= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The tagged version 2 is kept below the line; the rows are all there.
    assert_eq!(oldest(&mut c, "events").await, 2);
    let rows = crate::hostile::sql(&mut c, "SELECT count(*) FROM events")
        .await
        .unwrap();
    assert_eq!(crate::hostile::single_i64(&rows), 60);
    // `kept` keeps a day of versions: nothing removed.
    assert_eq!(oldest(&mut c, "kept").await, 1);
    server.shutdown().await.unwrap();
}

/// One scrape of the metrics endpoint: the HTTP status line and the body.
async fn scrape(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Prometheus metrics on their own port, scraped while a dataset is loaded: acks and
/// their latency, WAL syncs, flushes, requests by method and code, per-dataset figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_during_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| {
        c.metrics_listen = Some("127.0.0.1:0".into())
    })
    .await;
    let addr = server.metrics_addr().expect("metrics are served");
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    let get = "GET /metrics HTTP/1.1\r\nHost: strata\r\n\r\n";
    for i in 0..5 {
        let out = ingest(
            &mut c,
            "events",
            "p",
            vec![(i + 1, ipc(&batch(i as i64 * 10, 10)))],
        )
        .await
        .unwrap();
        assert!(out.status.is_none());
        let (status, body) = scrape(addr, get).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.contains(&format!("strata_ingest_acked_batches_total {}\n", i + 1)),
            "{body}"
        );
    }
    flush(&mut c, "events").await;
    let _ = crate::hostile::sql(&mut c, "SELEC nope").await;
    crate::hostile::sql(&mut c, "SELECT count(*) FROM events")
        .await
        .unwrap();
    let (_, body) = scrape(addr, get).await;
    for line in [
        "strata_ingest_acked_rows_total 50\n",
        "strata_ingest_ack_latency_seconds_count 5\n",
        "strata_flushes_total 1\n",
        "strata_flush_duration_seconds_count 1\n",
        "strata_grpc_requests_total{method=\"/strata.v1.Strata/Query\",code=\"INVALID_ARGUMENT\"} 1\n",
        "strata_grpc_requests_total{method=\"/strata.v1.Strata/Query\",code=\"OK\"} 1\n",
        "strata_dataset_live_rows{dataset=\"events\"} 50\n",
        "strata_dataset_unflushed_rows{dataset=\"events\"} 0\n",
        "# TYPE strata_wal_sync_seconds histogram\n",
        "strata_subscriptions 0\n",
    ] {
        assert!(body.contains(line), "{line:?} missing from:\n{body}");
    }
    assert!(
        !body.contains("strata_wal_sync_seconds_count 0\n"),
        "the log was synced: {body}"
    );
    // Anything but GET /metrics.
    let (status, _) = scrape(addr, "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = scrape(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    server.shutdown().await.unwrap();
}
