//! Arrow Flight `DoPut` into datasets: the PATH-descriptor half of Strata's Flight
//! service (the Flight SQL half is [`crate::flight_sql`], which routes every `DoPut`
//! that carries no Flight SQL command here).
//!
//! The descriptor is a PATH: `[dataset]` (no exactly-once: every batch is applied) or
//! `[dataset, producer]`, in which case every record batch must carry its sequence
//! number as decimal ASCII in `app_metadata` (see the `Ingest` RPC for the rules). Each
//! batch is answered with a `PutResult` whose `app_metadata` is JSON
//! `{"sequence": n, "duplicate": bool, "rows": n}`, sent once it is durable; the call
//! returns after the last one.
//!
//! The Flight messages are re-framed, not re-encoded: the schema, dictionary and
//! record-batch messages are put back into one Arrow IPC stream per batch, which the
//! ingester validates and logs as it does for `Ingest`.

use std::pin::Pin;

use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use strata_ingest::{Ack, Ingester};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::ingest_status;
use crate::service::{Batch, drive};

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone, Debug)]
pub struct FlightIngest {
    ingester: Ingester,
}

impl FlightIngest {
    pub fn new(ingester: Ingester) -> Self {
        Self { ingester }
    }

    /// Handles a `DoPut` whose first message (already read) is `first`.
    pub async fn do_put_path(
        &self,
        first: FlightData,
        rest: impl Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    ) -> Result<BoxStream<PutResult>, Status> {
        let descriptor = first
            .flight_descriptor
            .clone()
            .ok_or_else(|| Status::invalid_argument("DoPut needs a flight descriptor"))?;
        let (dataset, producer) = path_target(&descriptor)?;
        let acks = self.acks(&dataset, &producer, first, rest).await?;
        Ok(Box::pin(acks.map(|a| a.map(put_result))))
    }

    /// Every batch of a `DoPut` into `dataset`, applied without exactly-once (ADBC's
    /// bulk ingest, `CommandStatementIngest`). Answers the rows taken once the last
    /// batch is durable and committed (a flush: like any SQL statement, the next query
    /// sees the rows); on an error, the batches acknowledged before it stay.
    pub async fn ingest_all(
        &self,
        dataset: &str,
        first: FlightData,
        rest: impl Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    ) -> Result<u64, Status> {
        let mut acks = self.acks(dataset, "", first, rest).await?;
        let mut rows = 0;
        while let Some(ack) = acks.next().await {
            rows += ack?.rows;
        }
        self.ingester.flush(dataset).await.map_err(ingest_status)?;
        Ok(rows)
    }

    /// Feeds the batches of a `DoPut` to the ingester; acks as each turns durable.
    async fn acks(
        &self,
        dataset: &str,
        producer: &str,
        first: FlightData,
        rest: impl Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    ) -> Result<BoxStream<Ack>, Status> {
        let stream = self
            .ingester
            .open_stream(dataset, producer)
            .await
            .map_err(ingest_status)?;
        let mut framer = Framer::default();
        framer.add(&first)?;
        let exactly_once = !producer.is_empty();
        let batches = futures::stream::unfold(
            (rest, framer, 0u64, false),
            move |(mut rest, mut framer, mut counter, done)| async move {
                if done {
                    return None;
                }
                let item = next_batch(&mut rest, &mut framer, exactly_once, &mut counter).await?;
                let failed = item.is_err();
                Some((item, (rest, framer, counter, failed)))
            },
        );
        let (tx, rx) = mpsc::channel(256);
        let closing = self.ingester.closing();
        tokio::spawn(async move {
            let mut stream = stream;
            let send = |r: Result<Ack, Status>| {
                let tx = tx.clone();
                async move { tx.send(r).await.is_ok() }
            };
            drive(&mut stream, batches, send, closing).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Reads Flight messages until a record batch is complete; `None` at the end.
async fn next_batch(
    rest: &mut (impl Stream<Item = Result<FlightData, Status>> + Unpin),
    framer: &mut Framer,
    exactly_once: bool,
    counter: &mut u64,
) -> Option<Batch> {
    loop {
        let data = match rest.next().await? {
            Err(s) => return Some(Err(s)),
            Ok(d) => d,
        };
        match framer.add(&data) {
            Err(s) => return Some(Err(s)),
            Ok(None) => continue,
            Ok(Some(payload)) => {
                *counter += 1;
                let sequence = if exactly_once {
                    match std::str::from_utf8(&data.app_metadata)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                    {
                        Some(s) => s,
                        None => {
                            return Some(Err(Status::invalid_argument(format!(
                                "batch {} has no sequence number: with a producer in the \
                                 descriptor path, each batch's app_metadata must hold its \
                                 sequence number as decimal text",
                                *counter
                            ))));
                        }
                    }
                } else {
                    *counter
                };
                return Some(Ok((sequence, payload)));
            }
        }
    }
}

fn put_result(a: Ack) -> PutResult {
    let json = format!(
        "{{\"sequence\":{},\"duplicate\":{},\"rows\":{}}}",
        a.sequence, a.duplicate, a.rows
    );
    PutResult {
        app_metadata: Bytes::from(json),
    }
}

/// `[dataset]` or `[dataset, producer]` from a PATH descriptor.
fn path_target(d: &FlightDescriptor) -> Result<(String, String), Status> {
    if d.r#type != DescriptorType::Path as i32 {
        return Err(Status::invalid_argument(
            "DoPut into a dataset needs a PATH descriptor: [dataset] or [dataset, producer]",
        ));
    }
    match d.path.as_slice() {
        [dataset] => Ok((dataset.clone(), String::new())),
        [dataset, producer] => Ok((dataset.clone(), producer.clone())),
        _ => Err(Status::invalid_argument(format!(
            "DoPut descriptor path must be [dataset] or [dataset, producer], got {:?}",
            d.path
        ))),
    }
}

/// Rebuilds an Arrow IPC stream for each record batch from Flight messages.
#[derive(Default)]
struct Framer {
    schema: Option<Bytes>,
    dictionaries: Vec<Bytes>,
}

fn frame(out: &mut BytesMut, header: &[u8], body: &[u8]) {
    let padded = header.len().div_ceil(8) * 8;
    out.put_u32_le(0xFFFF_FFFF);
    out.put_i32_le(padded as i32);
    out.put_slice(header);
    out.put_bytes(0, padded - header.len());
    out.put_slice(body);
}

impl Framer {
    /// Takes one Flight message; returns an IPC stream when it completes a record batch.
    fn add(&mut self, data: &FlightData) -> Result<Option<Bytes>, Status> {
        if data.data_header.is_empty() {
            // A descriptor-only or metadata-only message.
            return Ok(None);
        }
        let message = root_as_message(&data.data_header).map_err(|e| {
            Status::invalid_argument(format!("malformed Arrow IPC message header: {e}"))
        })?;
        let mut framed = BytesMut::new();
        frame(&mut framed, &data.data_header, &data.data_body);
        let framed = framed.freeze();
        match message.header_type() {
            MessageHeader::Schema => {
                self.schema = Some(framed);
                self.dictionaries.clear();
                Ok(None)
            }
            MessageHeader::DictionaryBatch => {
                self.dictionaries.push(framed);
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self.schema.as_ref().ok_or_else(|| {
                    Status::invalid_argument("a record batch came before the schema message")
                })?;
                let mut out = BytesMut::with_capacity(
                    schema.len()
                        + self.dictionaries.iter().map(Bytes::len).sum::<usize>()
                        + framed.len()
                        + 8,
                );
                out.put_slice(schema);
                for d in &self.dictionaries {
                    out.put_slice(d);
                }
                out.put_slice(&framed);
                out.put_u32_le(0xFFFF_FFFF);
                out.put_i32_le(0);
                Ok(Some(out.freeze()))
            }
            other => Err(Status::invalid_argument(format!(
                "unexpected Arrow IPC message type {other:?} in DoPut"
            ))),
        }
    }
}
