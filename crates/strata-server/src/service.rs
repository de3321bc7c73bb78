//! The `strata.v1.Strata` gRPC service: datasets, `Ingest` and `Flush`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::datatypes::Schema;
use arrow::ipc::writer::StreamWriter;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use strata_ingest::{Ack, Ingester, PendingAck};
use strata_proto::v1::strata_server::Strata;
use strata_proto::v1::{
    Column, CompactRequest, CompactResponse, CreateDatasetRequest, CreateTagRequest, DatasetInfo,
    DatasetSpec as PbSpec, DeleteTagRequest, DeleteTagResponse, DescribeDatasetRequest,
    DropDatasetRequest, DropDatasetResponse, FlushRequest, FlushResponse, IngestAck, IngestOpened,
    IngestRequest, IngestResponse, ListDatasetsRequest, ListDatasetsResponse, ListTagsRequest,
    ListTagsResponse, ListVersionsRequest, ListVersionsResponse, QueryRequest, QueryResponse,
    RollbackRequest, RollbackResponse, SubscribeRequest as PbSubscribeRequest,
    TagInfo as PbTagInfo, VacuumRequest, VacuumResponse, VersionInfo as PbVersionInfo, VersionRef,
    ingest_request, ingest_response, version_ref,
};
use strata_query::Engine;
use strata_table::{Table, TagInfo, VacuumPolicy, VersionInfo, VersionSpec};
use strata_types::{ColumnDef, DatasetSpec, DatasetSpecDef};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::auth::Caller;
use crate::error::{ingest_status, query_status, table_status};
use crate::subscribe::{SubscribeStream, Subscriptions};

/// Acks not yet sent on one stream; beyond this the stream is not read further.
const MAX_PENDING_ACKS: usize = 4096;

#[derive(Clone, Debug)]
pub struct StrataService {
    ingester: Ingester,
    engine: Engine,
    default_shards: u32,
    subscriptions: Subscriptions,
}

impl StrataService {
    pub fn new(
        ingester: Ingester,
        engine: Engine,
        default_shards: u32,
        subscriptions: Subscriptions,
    ) -> Self {
        Self {
            ingester,
            engine,
            default_shards,
            subscriptions,
        }
    }

    async fn table(&self, name: &str) -> Result<Table, Status> {
        self.ingester
            .catalog()
            .open_table(name)
            .await
            .map_err(table_status)
    }

    async fn info(&self, name: &str) -> Result<DatasetInfo, Status> {
        let status = self.ingester.status(name).await.map_err(ingest_status)?;
        let head = status.table.head().await.map_err(table_status)?;
        let def = status.table.spec().to_def();
        let mut spec = spec_to_proto(&def);
        // The spec keeps the schema it was created with; columns added since show too.
        spec.columns = strata_types::spec::schema_to_defs(&head.schema)
            .into_iter()
            .map(|c| Column {
                name: c.name,
                r#type: c.data_type,
                nullable: c.nullable,
            })
            .collect();
        Ok(DatasetInfo {
            spec: Some(spec),
            head_version: head.version,
            live_rows: head.live_rows(),
            segments: head.segment_count() as u64,
            producers: head
                .producers
                .iter()
                .filter(|(p, _)| !p.starts_with('$'))
                .map(|(p, s)| (p.clone(), *s))
                .collect(),
            arrow_schema: schema_ipc(&head.schema)?.into(),
            unflushed_rows: status.unflushed_rows,
        })
    }
}

/// A dataset spec as the `strata.v1` API carries it.
pub fn spec_to_proto(def: &DatasetSpecDef) -> PbSpec {
    PbSpec {
        name: def.name.clone(),
        columns: def
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                r#type: c.data_type.clone(),
                nullable: c.nullable,
            })
            .collect(),
        partition_key: def.partition_key.clone(),
        row_key: def.row_key.clone(),
        shards: def.shards,
    }
}

/// The schema as an Arrow IPC stream holding only the schema message.
pub fn schema_ipc(schema: &Schema) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, schema)
        .map_err(|e| Status::internal(format!("encoding schema: {e}")))?;
    w.finish()
        .map_err(|e| Status::internal(format!("encoding schema: {e}")))?;
    drop(w);
    Ok(out)
}

type IngestStream = Pin<Box<dyn Stream<Item = Result<IngestResponse, Status>> + Send>>;
type QueryStream = Pin<Box<dyn Stream<Item = Result<QueryResponse, Status>> + Send>>;

fn version_spec(v: Option<VersionRef>, what: &str) -> Result<VersionSpec, Status> {
    match v.and_then(|v| v.kind) {
        Some(version_ref::Kind::Version(n)) => Ok(VersionSpec::Version(n)),
        Some(version_ref::Kind::Tag(t)) => Ok(VersionSpec::Tag(t)),
        Some(version_ref::Kind::TimestampMs(t)) => Ok(VersionSpec::Timestamp(t)),
        None => Err(Status::invalid_argument(format!(
            "{what} needs a version (number, tag or timestamp_ms)"
        ))),
    }
}

fn version_to_proto(v: &VersionInfo, tags: &[TagInfo]) -> PbVersionInfo {
    PbVersionInfo {
        version: v.version,
        timestamp_ms: v.timestamp_ms,
        operation: v.operation.name().to_string(),
        details: serde_json::to_string(&v.operation).unwrap_or_default(),
        rows_added: v.rows_added,
        rows_removed: v.rows_removed,
        tags: tags
            .iter()
            .filter(|t| t.version == v.version)
            .map(|t| t.name.clone())
            .collect(),
    }
}

fn tag_to_proto(t: TagInfo) -> PbTagInfo {
    PbTagInfo {
        name: t.name,
        version: t.version,
        created_ms: t.created_ms,
    }
}

/// The deadline the client gave its call (the `grpc-timeout` header), so a query
/// stops when its client stops waiting even if the connection stays open.
pub(crate) fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a result stream as one Arrow IPC stream cut into messages: the schema
/// first, then one message per batch, then the end-of-stream marker.
fn ipc_messages(
    stream: strata_query::datafusion::physical_plan::SendableRecordBatchStream,
) -> Result<QueryStream, Status> {
    let encode_err =
        |e: arrow::error::ArrowError| Status::internal(format!("encoding result: {e}"));
    let mut writer = StreamWriter::try_new(Vec::new(), &stream.schema()).map_err(encode_err)?;
    let schema_msg = std::mem::take(writer.get_mut());
    let first = futures::stream::once(async move {
        Ok(QueryResponse {
            arrow_ipc: schema_msg.into(),
        })
    });
    let rest = futures::stream::unfold(Some((stream, writer)), move |state| async move {
        let (mut stream, mut writer) = state?;
        let item = match stream.next().await {
            Some(Ok(batch)) => writer
                .write(&batch)
                .map(|()| std::mem::take(writer.get_mut()))
                .map_err(encode_err),
            Some(Err(e)) => {
                let e = query_status(strata_query::Error::from(e));
                return Some((Err(e), None));
            }
            None => {
                let end = writer
                    .finish()
                    .map(|()| std::mem::take(writer.get_mut()))
                    .map_err(encode_err);
                return Some((
                    end.map(|b| QueryResponse {
                        arrow_ipc: b.into(),
                    }),
                    None,
                ));
            }
        };
        match item {
            Ok(bytes) => Some((
                Ok(QueryResponse {
                    arrow_ipc: bytes.into(),
                }),
                Some((stream, writer)),
            )),
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(Box::pin(first.chain(rest)))
}

fn ack_message(a: Ack) -> IngestResponse {
    IngestResponse {
        kind: Some(ingest_response::Kind::Ack(IngestAck {
            sequence: a.sequence,
            duplicate: a.duplicate,
            rows: a.rows,
        })),
    }
}

#[tonic::async_trait]
impl Strata for StrataService {
    async fn create_dataset(
        &self,
        request: Request<CreateDatasetRequest>,
    ) -> Result<Response<DatasetInfo>, Status> {
        let pb = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("CreateDataset needs a spec"))?;
        let def = DatasetSpecDef {
            name: pb.name,
            columns: pb
                .columns
                .into_iter()
                .map(|c| ColumnDef {
                    name: c.name,
                    data_type: c.r#type,
                    nullable: c.nullable,
                })
                .collect(),
            partition_key: pb.partition_key,
            row_key: pb.row_key,
            shards: if pb.shards == 0 {
                self.default_shards
            } else {
                pb.shards
            },
        };
        let spec = DatasetSpec::from_def(&def)
            .map_err(|e| Status::invalid_argument(format!("invalid dataset spec: {e}")))?;
        let table = self
            .ingester
            .create_dataset(spec)
            .await
            .map_err(ingest_status)?;
        info!(dataset = table.name(), "dataset created");
        Ok(Response::new(self.info(table.name()).await?))
    }

    async fn list_datasets(
        &self,
        _request: Request<ListDatasetsRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        let names = self
            .ingester
            .catalog()
            .list_tables()
            .await
            .map_err(table_status)?;
        Ok(Response::new(ListDatasetsResponse { names }))
    }

    async fn describe_dataset(
        &self,
        request: Request<DescribeDatasetRequest>,
    ) -> Result<Response<DatasetInfo>, Status> {
        Ok(Response::new(self.info(&request.into_inner().name).await?))
    }

    async fn drop_dataset(
        &self,
        request: Request<DropDatasetRequest>,
    ) -> Result<Response<DropDatasetResponse>, Status> {
        let name = request.into_inner().name;
        self.ingester
            .drop_dataset(&name)
            .await
            .map_err(ingest_status)?;
        info!(dataset = name, "dataset dropped");
        Ok(Response::new(DropDatasetResponse {}))
    }

    type IngestStream = IngestStream;

    async fn ingest(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(IngestRequest {
                kind: Some(ingest_request::Kind::Open(open)),
            }) => open,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of an Ingest stream must be `open`",
                ));
            }
            None => return Err(Status::invalid_argument("empty Ingest stream")),
        };
        let stream = self
            .ingester
            .open_stream(&open.dataset, &open.producer)
            .await
            .map_err(ingest_status)?;
        debug!(
            dataset = open.dataset,
            producer = open.producer,
            "ingest stream opened"
        );
        let (tx, rx) = mpsc::channel(256);
        let opened = IngestResponse {
            kind: Some(ingest_response::Kind::Opened(IngestOpened {
                last_sequence: stream.last_sequence(),
            })),
        };
        tx.send(Ok(opened))
            .await
            .map_err(|_| Status::cancelled("client went away"))?;
        let closing = self.ingester.closing();
        tokio::spawn(pump(
            stream,
            inbound,
            tx,
            closing,
            open.dataset,
            open.producer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn flush(
        &self,
        request: Request<FlushRequest>,
    ) -> Result<Response<FlushResponse>, Status> {
        let dataset = request.into_inner().dataset;
        let version = self.ingester.flush(&dataset).await.map_err(ingest_status)?;
        Ok(Response::new(FlushResponse { version }))
    }

    type QueryStream = QueryStream;
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<PbSubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let running = self.subscriptions.start(request.into_inner()).await?;
        Ok(Response::new(crate::subscribe::responses(running)?))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let deadline = client_deadline(request.metadata());
        let sql = request.into_inner().sql;
        debug!(sql, "query");
        let prepared = self.engine.prepare(&sql).await.map_err(query_status)?;
        if let Some(caller) = caller {
            caller.require(prepared.access(), "this statement")?;
        }
        let stream = Box::pin(prepared.execute_within(vec![], deadline))
            .await
            .map_err(query_status)?;
        Ok(Response::new(ipc_messages(stream)?))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let table = self.table(&request.into_inner().dataset).await?;
        let versions = table.list_versions().await.map_err(table_status)?;
        let tags = table.list_tags().await.map_err(table_status)?;
        Ok(Response::new(ListVersionsResponse {
            versions: versions
                .iter()
                .map(|v| version_to_proto(v, &tags))
                .collect(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        let r = request.into_inner();
        let to = version_spec(r.to, "Rollback")?;
        let table = self.table(&r.dataset).await?;
        // Commit what was acknowledged before the rollback, so it is rolled back too.
        self.ingester
            .flush(&r.dataset)
            .await
            .map_err(ingest_status)?;
        let info = table.rollback(&to).await.map_err(table_status)?;
        self.ingester
            .refresh_schema(&r.dataset)
            .await
            .map_err(ingest_status)?;
        info!(dataset = r.dataset, version = info.version, "rolled back");
        Ok(Response::new(RollbackResponse {
            version: Some(version_to_proto(&info, &[])),
        }))
    }

    async fn create_tag(
        &self,
        request: Request<CreateTagRequest>,
    ) -> Result<Response<PbTagInfo>, Status> {
        let r = request.into_inner();
        let at = match r.version {
            None => VersionSpec::Head,
            v => version_spec(v, "CreateTag")?,
        };
        let table = self.table(&r.dataset).await?;
        let tag = table.create_tag(&r.tag, &at).await.map_err(table_status)?;
        Ok(Response::new(tag_to_proto(tag)))
    }

    async fn delete_tag(
        &self,
        request: Request<DeleteTagRequest>,
    ) -> Result<Response<DeleteTagResponse>, Status> {
        let r = request.into_inner();
        let table = self.table(&r.dataset).await?;
        table.delete_tag(&r.tag).await.map_err(table_status)?;
        Ok(Response::new(DeleteTagResponse {}))
    }

    async fn list_tags(
        &self,
        request: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        let table = self.table(&request.into_inner().dataset).await?;
        let tags = table.list_tags().await.map_err(table_status)?;
        Ok(Response::new(ListTagsResponse {
            tags: tags.into_iter().map(tag_to_proto).collect(),
        }))
    }

    async fn vacuum(
        &self,
        request: Request<VacuumRequest>,
    ) -> Result<Response<VacuumResponse>, Status> {
        let r = request.into_inner();
        let policy = if r.keep_last.is_none() && r.keep_within_ms.is_none() {
            strata_query::statements::default_vacuum_policy()
        } else {
            VacuumPolicy {
                keep_last: r.keep_last,
                keep_within_ms: r.keep_within_ms,
            }
        };
        let table = self.table(&r.dataset).await?;
        let report = table.vacuum(&policy).await.map_err(table_status)?;
        Ok(Response::new(VacuumResponse {
            version: report.version.unwrap_or(0),
            oldest_retained: report.oldest_retained,
            versions_removed: report.versions_removed,
            blobs_removed: report.blobs_removed,
            bytes_removed: report.bytes_removed,
        }))
    }

    async fn compact(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        let table = self.table(&request.into_inner().dataset).await?;
        let info = table.compact().await.map_err(table_status)?;
        Ok(Response::new(CompactResponse {
            version: info.map_or(0, |i| i.version),
        }))
    }
}

/// One batch as the client sent it: sequence number and Arrow IPC stream.
pub(crate) type Batch = Result<(u64, bytes::Bytes), Status>;

/// Reads batches, submits them and sends their acks in order. A bad batch ends the
/// stream with its status after the acks of the batches before it; a shutdown ends it
/// with `Unavailable` the same way.
async fn pump(
    mut stream: strata_ingest::IngestStream,
    inbound: Streaming<IngestRequest>,
    tx: mpsc::Sender<Result<IngestResponse, Status>>,
    closing: tokio::sync::watch::Receiver<bool>,
    dataset: String,
    producer: String,
) {
    let started = std::time::Instant::now();
    // Acknowledged batches and rows, for the log line at the end.
    let (batches_acked, rows_acked) = (AtomicU64::new(0), AtomicU64::new(0));
    let batches = inbound.map(|msg| match msg {
        Ok(IngestRequest {
            kind: Some(ingest_request::Kind::Batch(b)),
        }) => Ok((b.sequence, b.arrow_ipc)),
        Ok(_) => Err(Status::invalid_argument(
            "only `batch` messages may follow `open` on an Ingest stream",
        )),
        Err(s) => Err(s),
    });
    let send = |r: Result<Ack, Status>| {
        let tx = tx.clone();
        if let Ok(a) = &r {
            batches_acked.fetch_add(1, Ordering::Relaxed);
            rows_acked.fetch_add(a.rows, Ordering::Relaxed);
        }
        async move { tx.send(r.map(ack_message)).await.is_ok() }
    };
    drive(&mut stream, batches, send, closing).await;
    info!(
        dataset,
        producer,
        batches = batches_acked.into_inner(),
        rows = rows_acked.into_inner(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ingest stream closed"
    );
}

/// The submit/ack loop shared by `Ingest` and Flight `DoPut`: reads `batches`, submits
/// them, and hands acks (in order) to `send`, which returns false once the client is
/// gone. Stops reading while a submit waits for memory (backpressure: HTTP/2 flow
/// control then stops the client) or too many acks are pending, but keeps delivering
/// acks meanwhile.
pub(crate) async fn drive<B, S, SF>(
    stream: &mut strata_ingest::IngestStream,
    batches: B,
    send: S,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    B: Stream<Item = Batch>,
    S: Fn(Result<Ack, Status>) -> SF,
    SF: Future<Output = bool>,
{
    let mut batches = std::pin::pin!(batches);
    let mut pending: FuturesOrdered<PendingAck> = FuturesOrdered::new();
    let end: Option<Status> = loop {
        if *closing.borrow() {
            break Some(Status::unavailable(
                "the server is shutting down; resume after the last acknowledged batch",
            ));
        }
        tokio::select! {
            biased;
            Some(ack) = pending.next(), if !pending.is_empty() => {
                match ack {
                    Ok(a) => if !send(Ok(a)).await { return },
                    Err(e) => break Some(ingest_status(e)),
                }
            }
            _ = closing.changed() => continue,
            msg = batches.next(), if pending.len() < MAX_PENDING_ACKS => match msg {
                Some(Ok((sequence, payload))) => {
                    let submit = stream.submit(sequence, payload);
                    tokio::pin!(submit);
                    // While the submit waits for memory, acks keep flowing.
                    let result = loop {
                        tokio::select! {
                            r = &mut submit => break r,
                            Some(ack) = pending.next(), if !pending.is_empty() => match ack {
                                Ok(a) => if !send(Ok(a)).await { return },
                                Err(e) => { let _ = send(Err(ingest_status(e))).await; return }
                            },
                        }
                    };
                    match result {
                        Ok(p) => pending.push_back(p),
                        Err(e) => break Some(ingest_status(e)),
                    }
                }
                None => break None,
                Some(Err(s)) => break Some(s),
            },
        }
    };
    // The batches before the end are acknowledged before the stream closes.
    while let Some(ack) = pending.next().await {
        match ack {
            Ok(a) => {
                if !send(Ok(a)).await {
                    return;
                }
            }
            Err(e) => {
                let _ = send(Err(ingest_status(e))).await;
                return;
            }
        }
    }
    if let Some(status) = end {
        debug!(dataset = stream.dataset(), status = %status, "ingest stream ended with an error");
        let _ = send(Err(status)).await;
    }
}
