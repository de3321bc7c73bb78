//! The ingest stream against an in-process stand-in of the server: pipelining, acks,
//! exactly-once resume, failures part-way. (End-to-end tests against the real server live
//! in the workspace's `tests/` crate.)

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions, write_message};
use strata_proto::v1::strata_server::{Strata, StrataServer};
use strata_proto::v1::{
    CompactRequest, CompactResponse, CreateDatasetRequest, CreateTagRequest, DatasetInfo,
    DeleteTagRequest, DeleteTagResponse, DescribeDatasetRequest, DropDatasetRequest,
    DropDatasetResponse, FlushRequest, FlushResponse, IngestAck, IngestOpened, IngestRequest,
    IngestResponse, ListDatasetsRequest, ListDatasetsResponse, ListTagsRequest, ListTagsResponse,
    ListVersionsRequest, ListVersionsResponse, QueryRequest, QueryResponse, RollbackRequest,
    RollbackResponse, SubscribeRequest, SubscribeResponse, TagInfo, VacuumRequest, VacuumResponse,
    ingest_request, ingest_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::ingest::{IngestArgs, Summary, ingest};

#[derive(Debug, Default)]
struct State {
    /// Producer → highest applied sequence.
    marks: HashMap<String, u64>,
    /// Rows applied (duplicates not counted).
    rows: u64,
    /// Fail the stream with INVALID_ARGUMENT on this sequence.
    fail_at: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Mock {
    state: Arc<Mutex<State>>,
}

impl Mock {
    fn rows(&self) -> u64 {
        self.state.lock().unwrap().rows
    }

    fn fail_at(&self, sequence: Option<u64>) {
        self.state.lock().unwrap().fail_at = sequence;
    }
}

fn weather() -> Schema {
    Schema::new(vec![
        Field::new("station", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("temperature", DataType::Float64, true),
    ])
}

#[tonic::async_trait]
impl Strata for Mock {
    async fn create_dataset(
        &self,
        _: Request<CreateDatasetRequest>,
    ) -> Result<Response<DatasetInfo>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_datasets(
        &self,
        _: Request<ListDatasetsRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn describe_dataset(
        &self,
        request: Request<DescribeDatasetRequest>,
    ) -> Result<Response<DatasetInfo>, Status> {
        if request.get_ref().name != "weather" {
            return Err(Status::not_found("no such dataset"));
        }
        // Framed the way Arrow Flight frames schemas.
        let options = IpcWriteOptions::default();
        let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            &weather(),
            &mut DictionaryTracker::new(false),
            &options,
        );
        let mut bytes = Vec::new();
        write_message(&mut bytes, encoded, &options).unwrap();
        Ok(Response::new(DatasetInfo {
            arrow_schema: bytes.into(),
            ..DatasetInfo::default()
        }))
    }

    async fn drop_dataset(
        &self,
        _: Request<DropDatasetRequest>,
    ) -> Result<Response<DropDatasetResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    type IngestStream = ReceiverStream<Result<IngestResponse, Status>>;

    async fn ingest(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.state.clone();
        tokio::spawn(async move {
            let reply = |kind| Ok(IngestResponse { kind: Some(kind) });
            let producer = match input.message().await {
                Ok(Some(IngestRequest {
                    kind: Some(ingest_request::Kind::Open(open)),
                })) => open.producer,
                _ => {
                    let _ = tx.send(Err(Status::invalid_argument("open first"))).await;
                    return;
                }
            };
            let last = state
                .lock()
                .unwrap()
                .marks
                .get(&producer)
                .copied()
                .unwrap_or(0);
            let opened = ingest_response::Kind::Opened(IngestOpened {
                last_sequence: last,
            });
            let _ = tx.send(reply(opened)).await;
            while let Ok(Some(request)) = input.message().await {
                let Some(ingest_request::Kind::Batch(batch)) = request.kind else {
                    let _ = tx
                        .send(Err(Status::invalid_argument("batch expected")))
                        .await;
                    return;
                };
                let rows: usize =
                    StreamReader::try_new(std::io::Cursor::new(batch.arrow_ipc), None)
                        .unwrap()
                        .map(|b| {
                            let b = b.unwrap();
                            assert_eq!(b.schema().as_ref(), &weather());
                            b.num_rows()
                        })
                        .sum();
                // Some(duplicate), or None to fail the stream here.
                let applied = {
                    let mut state = state.lock().unwrap();
                    let high = state.marks.get(&producer).copied().unwrap_or(0);
                    let duplicate = !producer.is_empty() && batch.sequence <= high;
                    if state.fail_at == Some(batch.sequence) {
                        None
                    } else {
                        if !duplicate {
                            state.rows += rows as u64;
                            if !producer.is_empty() {
                                state.marks.insert(producer.clone(), batch.sequence);
                            }
                        }
                        Some(duplicate)
                    }
                };
                let Some(duplicate) = applied else {
                    let status =
                        Status::invalid_argument(format!("batch {}: bad rows", batch.sequence));
                    let _ = tx.send(Err(status)).await;
                    return;
                };
                let ack = ingest_response::Kind::Ack(IngestAck {
                    sequence: batch.sequence,
                    duplicate,
                    rows: rows as u64,
                });
                if tx.send(reply(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn flush(&self, _: Request<FlushRequest>) -> Result<Response<FlushResponse>, Status> {
        Ok(Response::new(FlushResponse { version: 7 }))
    }

    // The rest of the API is not used by ingest.

    type QueryStream = ReceiverStream<Result<QueryResponse, Status>>;

    async fn query(&self, _: Request<QueryRequest>) -> Result<Response<Self::QueryStream>, Status> {
        Err(Status::unimplemented("mock"))
    }

    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_versions(
        &self,
        _: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn rollback(
        &self,
        _: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn create_tag(&self, _: Request<CreateTagRequest>) -> Result<Response<TagInfo>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn delete_tag(
        &self,
        _: Request<DeleteTagRequest>,
    ) -> Result<Response<DeleteTagResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_tags(
        &self,
        _: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn vacuum(&self, _: Request<VacuumRequest>) -> Result<Response<VacuumResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn compact(
        &self,
        _: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

async fn start(mock: Mock) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StrataServer::new(mock))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// `n` rows of CSV; row `bad` (if any) has an unparsable temperature.
fn csv(dir: &Path, name: &str, n: usize, bad: Option<usize>) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "station,ts,temperature").unwrap();
    for i in 0..n {
        let temp = if bad == Some(i) {
            "warm".to_string()
        } else {
            format!("{i}.5")
        };
        writeln!(file, "s{},2024-01-01T00:00:{:02}Z,{temp}", i % 3, i % 60).unwrap();
    }
    path
}

fn args(dataset: &str, files: Vec<PathBuf>, producer: Option<&str>) -> IngestArgs {
    IngestArgs {
        producer: producer.map(Into::into),
        batch_rows: 3,
        no_progress: true,
        ..IngestArgs::new(dataset, files)
    }
}

async fn run(server: &str, args: &IngestArgs) -> (Summary, Result<(), Error>) {
    ingest(server, args, false).await.unwrap()
}

#[tokio::test]
async fn resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::default();
    let server = start(mock.clone()).await;
    // 50 rows in batches of 3: 17 batches, more than the window.
    let files = vec![
        csv(dir.path(), "a.csv", 40, None),
        csv(dir.path(), "b.csv", 10, None),
    ];
    let a = args("weather", files, Some("feed-1"));

    let (summary, outcome) = run(&server, &a).await;
    outcome.unwrap();
    assert_eq!(summary.batches, 14 + 4);
    assert_eq!(summary.rows, 50);
    assert_eq!(summary.duplicates, 0);
    assert_eq!(summary.last_sequence, 18);
    assert_eq!(summary.input_batches, Some(18));
    assert!(summary.bytes > 0);
    assert_eq!(mock.rows(), 50);

    // Everything is durable: nothing is sent again.
    let (summary, outcome) = run(&server, &a).await;
    outcome.unwrap();
    assert_eq!(summary.batches, 0);
    assert_eq!((summary.skipped_batches, summary.skipped_rows), (18, 50));
    assert_eq!(summary.last_sequence, 18);
    assert_eq!(mock.rows(), 50);
}

#[tokio::test]
async fn a_failed_stream_says_what_is_durable_and_the_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::default();
    let server = start(mock.clone()).await;
    let a = args(
        "weather",
        vec![csv(dir.path(), "a.csv", 30, None)],
        Some("feed-2"),
    );

    mock.fail_at(Some(4));
    let (summary, outcome) = run(&server, &a).await;
    let err = outcome.unwrap_err().to_string();
    assert!(err.contains("INVALID_ARGUMENT: batch 4: bad rows"), "{err}");
    assert!(err.contains("through sequence 3"), "{err}");
    assert!(err.contains("--producer feed-2"), "{err}");
    assert_eq!((summary.batches, summary.last_sequence), (3, 3));
    assert_eq!(mock.rows(), 9);

    mock.fail_at(None);
    let (summary, outcome) = run(&server, &a).await;
    outcome.unwrap();
    assert_eq!(summary.skipped_batches, 3);
    assert_eq!(summary.batches, 7);
    assert_eq!(summary.last_sequence, 10);
    assert_eq!(mock.rows(), 30, "no row twice");
}

#[tokio::test]
async fn a_bad_file_stops_after_the_good_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::default();
    let server = start(mock.clone()).await;
    let a = args(
        "weather",
        vec![csv(dir.path(), "a.csv", 12, Some(7))],
        Some("feed-3"),
    );
    let (summary, outcome) = run(&server, &a).await;
    let err = outcome.unwrap_err().to_string();
    assert!(err.contains("a.csv") && err.contains("warm"), "{err}");
    assert!(err.contains("through sequence 2"), "{err}");
    assert_eq!(summary.batches, 2);
    assert_eq!(mock.rows(), 6);
}

#[tokio::test]
async fn without_a_producer_every_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::default();
    let server = start(mock.clone()).await;
    let a = args("weather", vec![csv(dir.path(), "a.csv", 5, None)], None);
    for _ in 0..2 {
        let (summary, outcome) = run(&server, &a).await;
        outcome.unwrap();
        assert_eq!((summary.batches, summary.skipped_batches), (2, 0));
    }
    assert_eq!(mock.rows(), 10);

    mock.fail_at(Some(2));
    let (_, outcome) = run(&server, &a).await;
    let err = outcome.unwrap_err().to_string();
    assert!(err.contains("no --producer"), "{err}");
}

#[tokio::test]
async fn unknown_dataset_bad_file_and_unreachable_server_fail_before_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::default();
    let server = start(mock.clone()).await;
    let file = csv(dir.path(), "a.csv", 5, None);

    let err = ingest(&server, &args("nope", vec![file.clone()], None), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("dataset nope: NOT_FOUND"), "{err}");

    let other = dir.path().join("b.csv");
    std::fs::write(&other, "station,ts,humidity\n").unwrap();
    let err = ingest(
        &server,
        &args("weather", vec![file.clone(), other], None),
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"humidity\" is not in the dataset"), "{err}");
    assert_eq!(mock.rows(), 0, "nothing sent when a file does not fit");

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = ingest(&url, &args("weather", vec![file], None), false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}
