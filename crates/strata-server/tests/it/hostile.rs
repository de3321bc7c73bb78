//! What a hostile or careless client sends, and what it gets back: a clear error with
//! the right code, and a server that goes on serving everyone else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandPreparedStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, FlightClient, FlightData, FlightDescriptor};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{DescribeDatasetRequest, QueryRequest};
use strata_server::{Server, ServerConfig};
use tonic::Code;
use tonic::transport::Channel;

use crate::e2e::{batch, client, create, ingest, ipc, schema, start};
use crate::flight_sql::channel;

/// A zstd-compressed batch whose buffers all claim to decompress into 1 TiB.
fn decompression_bomb() -> Bytes {
    let b = batch(0, 100);
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::ZSTD))
        .unwrap();
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new_with_options(&mut out, &b.schema(), options).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    drop(w);
    assert!(strata_ingest::ipc::forge_uncompressed_lengths(&mut out, 1 << 40) > 0);
    assert!(out.len() < 8 << 10, "a few KB on the wire");
    Bytes::from(out)
}

/// The messages of an IPC stream as Flight messages, the descriptor on the first.
fn flight_messages(ipc: &[u8], descriptor: FlightDescriptor) -> Vec<FlightData> {
    strata_ingest::ipc::stream_messages(ipc)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, (header, body))| FlightData {
            flight_descriptor: (i == 0).then(|| descriptor.clone()),
            data_header: Bytes::copy_from_slice(header),
            data_body: Bytes::copy_from_slice(body),
            app_metadata: Bytes::new(),
        })
        .collect()
}

/// The status a `DoPut` ends with (at the call or in its results).
async fn do_put_status(flight: &mut FlightClient, messages: Vec<FlightData>) -> tonic::Status {
    let input = futures::stream::iter(messages.into_iter().map(Ok));
    let mut results = match flight.do_put(input).await {
        Ok(r) => r,
        Err(e) => return crate::flight_sql::status(e),
    };
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            return crate::flight_sql::status(e);
        }
    }
    panic!("the DoPut succeeded");
}

/// Runs one statement through the `Query` RPC.
pub(crate) async fn sql(
    c: &mut StrataClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    sql_request(c, tonic::Request::new(QueryRequest { sql: sql.into() })).await
}

async fn sql_request(
    c: &mut StrataClient<Channel>,
    request: tonic::Request<QueryRequest>,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let mut stream = c.query(request).await?.into_inner();
    let mut ipc = Vec::new();
    while let Some(m) = stream.message().await? {
        ipc.extend_from_slice(&m.arrow_ipc);
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    Ok(reader.map(Result::unwrap).collect())
}

pub(crate) fn single_i64(batches: &[RecordBatch]) -> i64 {
    let b = batches.iter().find(|b| b.num_rows() > 0).unwrap();
    let c = arrow::compute::cast(b.column(0), &DataType::Int64).unwrap();
    c.as_any().downcast_ref::<Int64Array>().unwrap().value(0)
}

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let e = r.expect_err("an error");
    (e.code(), e.message().to_string())
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    let bomb = decompression_bomb();

    // The Ingest RPC.
    let out = ingest(&mut c, "events", "", vec![(1, bomb.clone())])
        .await
        .unwrap();
    let status = out.status.expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(out.acks.is_empty());

    // Flight DoPut into the dataset.
    let mut flight = FlightClient::new(channel(&server).await);
    let status = do_put_status(
        &mut flight,
        flight_messages(&bomb, FlightDescriptor::new_path(vec!["events".into()])),
    )
    .await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");

    // Flight SQL parameters bound to a prepared statement.
    let request = ActionCreatePreparedStatementRequest {
        query: "SELECT * FROM events WHERE k = $1 AND t = $2 AND v = $3".into(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let mut answers = flight.do_action(action).await.unwrap();
    let answer = answers.next().await.unwrap().unwrap();
    let handle = Any::decode(answer)
        .unwrap()
        .unpack::<ActionCreatePreparedStatementResult>()
        .unwrap()
        .unwrap()
        .prepared_statement_handle;
    let command = CommandPreparedStatementQuery {
        prepared_statement_handle: handle,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let status = do_put_status(&mut flight, flight_messages(&bomb, descriptor)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");

    // Still serving, nothing written.
    let out = ingest(&mut c, "events", "", vec![(1, ipc(&batch(0, 10)))])
        .await
        .unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.acks.len(), 1);
    c.flush(strata_proto::v1::FlushRequest {
        dataset: "events".into(),
    })
    .await
    .unwrap();
    let n = sql(&mut c, "SELECT count(*) FROM events").await.unwrap();
    assert_eq!(single_i64(&n), 10);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn statements_that_would_overflow_the_stack_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    let chain = |op: &str, n: usize| -> String { vec!["1"; n].join(op) };
    let refused = [
        format!("SELECT {}", chain("+", 2_000)),
        format!("SELECT 1 WHERE {}", vec!["1 = 1"; 2_000].join(" OR ")),
        format!("SELECT 1 WHERE {}", vec!["1 = 1"; 2_000].join(" AND ")),
        vec!["SELECT 1"; 5_000].join(" UNION ALL "),
        format!("SELECT {}", vec!["'a'"; 10_000].join(" || ")),
        format!("SELECT {}", vec!["'a'"; 50_000].join(" || ")),
        format!("SELECT 1{}", "::BIGINT".repeat(5_000)),
    ];
    for statement in &refused {
        let (code, message) = code_of(sql(&mut c, statement).await);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.contains("too complex"), "{message}");
    }
    // Below the limits, long chains still run.
    let n = sql(&mut c, &format!("SELECT {}", chain("+", 900)))
        .await
        .unwrap();
    assert_eq!(single_i64(&n), 900);
    let n = sql(&mut c, &vec!["SELECT 1"; 200].join(" UNION ALL ")).await;
    assert_eq!(n.unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 200);

    // Longer than max_statement_kb: refused before parsing.
    let list: Vec<String> = (0..1_000_000).map(|i| i.to_string()).collect();
    let long = format!("SELECT 1 WHERE 1 IN ({})", list.join(","));
    let (code, message) = code_of(sql(&mut c, &long).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("max_statement_kb"), "{message}");
    let n = sql(&mut c, "SELECT 1").await.unwrap();
    assert_eq!(single_i64(&n), 1);
    server.shutdown().await.unwrap();
}

/// Waits for every task of the server's query runtime to end: a cancelled query that
/// kept computing would keep its task (and a core) busy.
async fn assert_stopped(server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.query_tasks() > 0 {
        assert!(
            Instant::now() < deadline,
            "{what}: {} query tasks still running 5 s after the query ended",
            server.query_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ENDLESS: [&str; 2] = [
    // A nested loop join whose filter never matches, under an aggregate.
    "SELECT count(*) FROM generate_series(1, 1000000) a, generate_series(1, 1000000) b \
     WHERE a.value + b.value < 0",
    // A cross join computing every pair.
    "SELECT max(a.value * b.value) FROM generate_series(1, 100000000) a, \
     generate_series(1, 100000000) b",
];

#[tokio::test]
async fn a_timed_out_or_abandoned_query_stops_computing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.query.timeout_ms = 1_000).await;
    let mut c = client(&server).await;
    for statement in ENDLESS {
        let started = Instant::now();
        let (code, message) = code_of(sql(&mut c, statement).await);
        assert_eq!(code, Code::DeadlineExceeded, "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_stopped(&server, statement).await;
    }
    server.shutdown().await.unwrap();

    // The client's own deadline, and a client that goes away, stop the work too.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    for statement in ENDLESS {
        let mut request = tonic::Request::new(QueryRequest {
            sql: statement.into(),
        });
        request.set_timeout(Duration::from_millis(800));
        let (code, message) = code_of(sql_request(&mut c, request).await);
        assert!(
            matches!(code, Code::DeadlineExceeded | Code::Cancelled),
            "{code:?} {message}"
        );
        assert_stopped(&server, statement).await;

        let abandoned = tokio::time::timeout(Duration::from_millis(800), sql(&mut c, statement));
        assert!(abandoned.await.is_err(), "still running");
        assert_stopped(&server, statement).await;
    }
    let n = sql(&mut c, "SELECT 1").await.unwrap();
    assert_eq!(single_i64(&n), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn planning_runs_on_the_query_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.query.max_statement_kb = 64 << 10).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    // Two statements that take seconds to plan (two million-literal IN lists).
    let list: Vec<String> = (0..1_000_000).map(|i| i.to_string()).collect();
    let heavy = format!(
        "SELECT count(*) FROM events WHERE t IN ({0}) OR t + 1 IN ({0})",
        list.join(",")
    );
    let mut planners = Vec::new();
    for _ in 0..2 {
        let mut c = client(&server).await;
        let heavy = heavy.clone();
        planners.push(tokio::spawn(async move { sql(&mut c, &heavy).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile the server's own threads answer at once.
    let started = Instant::now();
    c.describe_dataset(DescribeDatasetRequest {
        name: "events".into(),
    })
    .await
    .unwrap();
    let describe = started.elapsed();
    let mut planning = Duration::ZERO;
    for p in planners {
        p.await.unwrap().unwrap();
        planning = started.elapsed();
    }
    assert!(
        describe * 4 < planning,
        "DescribeDataset took {describe:?} while planning took {planning:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_mistakes_are_client_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", true).await;
    for (statement, code) in [
        ("SELECT 1/0", Code::InvalidArgument),
        ("SELECT CAST('abc' AS INT)", Code::InvalidArgument),
        ("SELECT to_timestamp('garbage')", Code::InvalidArgument),
        (
            "SELECT * FROM events TIMESTAMP AS OF 'garbage'",
            Code::InvalidArgument,
        ),
        (
            "INSERT INTO events VALUES ('a', 'not a number', 1.0)",
            Code::InvalidArgument,
        ),
        (
            "INSERT INTO events VALUES (NULL, 1, 1.0)",
            Code::InvalidArgument,
        ),
        (
            "INSERT INTO events VALUES ('a', NULL, 1.0)",
            Code::InvalidArgument,
        ),
        ("SELECT 9223372036854775807 + 1", Code::OutOfRange),
        (
            "SELECT sum(x) FROM (VALUES (9223372036854775807), (1)) AS t(x)",
            Code::OutOfRange,
        ),
    ] {
        let (got, message) = code_of(sql(&mut c, statement).await);
        assert_eq!(got, code, "{statement}: {message}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_column_given_twice_and_the_last_sequence_numbers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;

    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("v", DataType::Float64, true));
    let twice = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(Float64Array::from(vec![2.0])),
        ],
    )
    .unwrap();
    let out = ingest(&mut c, "events", "", vec![(1, ipc(&twice))])
        .await
        .unwrap();
    let status = out.status.expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("more than once"), "{status}");

    // The last sequence numbers would leave no room after them.
    let out = ingest(&mut c, "events", "p", vec![(u64::MAX, ipc(&batch(0, 1)))])
        .await
        .unwrap();
    let status = out.status.expect("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status}");
    let out = ingest(&mut c, "events", "p", vec![(1 << 63, ipc(&batch(0, 1)))])
        .await
        .unwrap();
    assert_eq!(out.status.expect("refused").code(), Code::OutOfRange);
    // The producer is not poisoned: its next batches are written, not "duplicates".
    let out = ingest(&mut c, "events", "p", vec![(7, ipc(&batch(0, 3)))])
        .await
        .unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert!(!out.acks[0].duplicate);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_server_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), |_| {}).await;
    let e = Server::start(ServerConfig::ephemeral(dir.path().to_path_buf()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in use by process"), "{e}");
    assert_eq!(tonic::Status::from(e).code(), Code::FailedPrecondition);
    // The WAL directory is locked on its own too (an ingester opened beside a server).
    let wal = strata_ingest::wal::Wal::open(&dir.path().join("wal"), 1 << 20).unwrap_err();
    assert!(wal.to_string().contains("in use"), "{wal}");
    first.shutdown().await.unwrap();
    let again = start(dir.path(), |_| {}).await;
    again.shutdown().await.unwrap();
}

/// True once the server closed a raw connection (read returns end of file or reset).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the server's HTTP/2 settings
        }
    }
}

#[tokio::test]
async fn idle_and_surplus_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| {
        c.max_connections = 4;
        c.handshake_timeout_s = 1;
        c.idle_timeout_s = 1;
    })
    .await;
    // Silent sockets take every slot; one more is closed at once.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut surplus = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    assert!(closed_by_server(&mut surplus, Duration::from_millis(500)).await);
    // Sockets that never start a request are closed after the handshake timeout,
    // which frees the slots.
    for s in &mut silent {
        assert!(closed_by_server(s, Duration::from_secs(5)).await);
    }
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;

    // A request open for longer than the idle timeout keeps its connection: an ingest
    // stream quiet between batches.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let open = strata_proto::v1::IngestRequest {
        kind: Some(strata_proto::v1::ingest_request::Kind::Open(
            strata_proto::v1::IngestOpen {
                dataset: "events".into(),
                producer: "slow".into(),
            },
        )),
    };
    let batch_msg = |sequence: u64, first: i64| strata_proto::v1::IngestRequest {
        kind: Some(strata_proto::v1::ingest_request::Kind::Batch(
            strata_proto::v1::IngestBatch {
                sequence,
                arrow_ipc: ipc(&batch(first, 5)),
            },
        )),
    };
    tx.send(open).await.unwrap();
    tx.send(batch_msg(1, 0)).await.unwrap();
    let mut responses = c
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    responses.message().await.unwrap().unwrap(); // opened
    responses.message().await.unwrap().unwrap(); // ack 1
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    tx.send(batch_msg(2, 5)).await.unwrap();
    let ack = responses.message().await.unwrap().unwrap();
    assert!(matches!(
        ack.kind,
        Some(strata_proto::v1::ingest_response::Kind::Ack(a)) if a.sequence == 2
    ));
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    server.shutdown().await.unwrap();
}

/// Creates a prepared statement through the raw Flight action; its handle.
async fn create_prepared(flight: &mut FlightClient, sql: &str) -> Result<Bytes, tonic::Status> {
    let request = ActionCreatePreparedStatementRequest {
        query: sql.into(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let mut answers = flight
        .do_action(action)
        .await
        .map_err(crate::flight_sql::status)?;
    let answer = answers
        .next()
        .await
        .unwrap()
        .map_err(crate::flight_sql::status)?;
    Ok(Any::decode(answer)
        .unwrap()
        .unpack::<ActionCreatePreparedStatementResult>()
        .unwrap()
        .unwrap()
        .prepared_statement_handle)
}

fn prepared_descriptor(handle: Bytes) -> FlightDescriptor {
    let command = CommandPreparedStatementQuery {
        prepared_statement_handle: handle,
    };
    FlightDescriptor::new_cmd(command.as_any().encode_to_vec())
}

#[tokio::test]
async fn prepared_statements_belong_to_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.max_prepared_per_session = 3).await;
    let mut greedy = FlightClient::new(channel(&server).await);
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(create_prepared(&mut greedy, "SELECT 1").await.unwrap());
    }
    let e = create_prepared(&mut greedy, "SELECT 1").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert_eq!(server.open_prepared_statements(), 3);

    // Another client is not affected, and cannot use the first one's handles.
    let mut other = FlightClient::new(channel(&server).await);
    let mine = create_prepared(&mut other, "SELECT 2 AS two")
        .await
        .unwrap();
    let info = other
        .get_flight_info(prepared_descriptor(mine.clone()))
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> =
        futures::TryStreamExt::try_collect(other.do_get(ticket).await.unwrap())
            .await
            .unwrap();
    assert_eq!(single_i64(&batches), 2);
    let e = other
        .get_flight_info(prepared_descriptor(handles[0].clone()))
        .await
        .unwrap_err();
    assert_eq!(crate::flight_sql::status(e).code(), Code::NotFound);

    // The first client goes away without closing anything: its statements go too.
    drop(greedy);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.open_prepared_statements() != 1 {
        assert!(
            Instant::now() < deadline,
            "{} open",
            server.open_prepared_statements()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_drop_keeps_the_files_of_queries_already_reading() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.max_message_mb = 64).await;
    let mut c = client(&server).await;
    create(&mut c, "events", false).await;
    for i in 0..10 {
        let out = ingest(
            &mut c,
            "events",
            "",
            vec![(1, ipc(&batch(i * 20_000, 20_000)))],
        )
        .await
        .unwrap();
        assert!(out.status.is_none(), "{:?}", out.status);
        c.flush(strata_proto::v1::FlushRequest {
            dataset: "events".into(),
        })
        .await
        .unwrap();
    }
    // A reader takes its first message, then the dataset is dropped under it.
    let mut reader = client(&server).await;
    let mut stream = reader
        .query(QueryRequest {
            sql: "SELECT * FROM events".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut ipc_bytes = stream.message().await.unwrap().unwrap().arrow_ipc.to_vec();
    sql(&mut c, "DROP TABLE events").await.unwrap();
    let (code, message) = code_of(sql(&mut c, "SELECT count(*) FROM events").await);
    assert_eq!(code, Code::NotFound, "{message}");
    while let Some(m) = stream.message().await.unwrap() {
        ipc_bytes.extend_from_slice(&m.arrow_ipc);
    }
    let rows: usize = StreamReader::try_new(std::io::Cursor::new(ipc_bytes), None)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 200_000, "the reader saw the whole dataset");
    // The name is free at once.
    create(&mut c, "events", false).await;
    server.shutdown().await.unwrap();
}
