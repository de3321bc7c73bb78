//! Subscriptions on the wire: the `Subscribe` RPC and the Flight `DoGet` ticket that
//! carry [`strata_query::Subscription`]s, and the limit on how many run at once.
//!
//! Flight: the ticket is a protobuf `Any` with type URL [`SUBSCRIBE_TYPE_URL`] and a
//! `strata.v1.SubscribeRequest` as value. The stream's schema is the subscription's;
//! every batch carries `app_metadata` JSON `{"version":…,"timestamp_ms":…,
//! "operation":…,"complete":false}`, and each version ends with a batch of no rows
//! whose metadata has `"complete":true` (pyarrow: `reader.read_chunk()` gives
//! `(batch, metadata)`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, StreamWriter,
};
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use strata_proto::v1::{SubscribeRequest as PbSubscribeRequest, SubscribeResponse};
use strata_query::{ChangeEvent, Engine, SubscribeRequest, Subscription};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tracing::info;

use crate::error::query_status;

/// The type URL of a subscription ticket's `Any`.
pub const SUBSCRIBE_TYPE_URL: &str = "type.googleapis.com/strata.v1.SubscribeRequest";

/// Starts subscriptions, at most `max` at once.
#[derive(Clone, Debug)]
pub struct Subscriptions {
    engine: Engine,
    slots: Arc<Semaphore>,
    max: usize,
    poll: Duration,
}

/// A subscription holding its slot until dropped.
#[derive(Debug)]
pub struct Running {
    pub subscription: Subscription,
    _slot: OwnedSemaphorePermit,
}

impl Subscriptions {
    pub fn new(engine: Engine, max: usize, poll: Duration) -> Self {
        Self {
            engine,
            slots: Arc::new(Semaphore::new(max)),
            max,
            poll,
        }
    }

    /// Subscriptions running now.
    pub fn running(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    pub async fn start(&self, request: PbSubscribeRequest) -> Result<Running, Status> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the server runs its maximum of {} subscriptions (max_subscriptions)",
                self.max
            ))
        })?;
        let dataset = request.dataset.clone();
        let subscription = self
            .engine
            .subscribe(SubscribeRequest {
                dataset: request.dataset,
                from: request.from_version,
                columns: request.columns,
                filter: Some(request.filter).filter(|f| !f.trim().is_empty()),
                poll: self.poll,
            })
            .await
            .map_err(query_status)?;
        info!(dataset, from = subscription.from, "subscription started");
        Ok(Running {
            subscription,
            _slot: slot,
        })
    }
}

pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

fn encode_error(e: arrow::error::ArrowError) -> Status {
    Status::internal(format!("encoding changes: {e}"))
}

/// The `Subscribe` RPC's messages: the IPC schema, then batches and version ends.
pub fn responses(running: Running) -> Result<SubscribeStream, Status> {
    let mut writer =
        StreamWriter::try_new(Vec::new(), &running.subscription.schema).map_err(encode_error)?;
    let schema = SubscribeResponse {
        arrow_ipc: std::mem::take(writer.get_mut()).into(),
        ..Default::default()
    };
    let rest = futures::stream::unfold(Some((running, writer)), |state| async move {
        let (mut running, mut writer) = state?;
        let event = match running.subscription.events.recv().await? {
            Ok(event) => event,
            Err(e) => return Some((Err(query_status(e)), None)),
        };
        let ipc = match &event.batch {
            Some(batch) => match writer.write(batch) {
                Ok(()) => std::mem::take(writer.get_mut()),
                Err(e) => return Some((Err(encode_error(e)), None)),
            },
            None => Vec::new(),
        };
        let response = SubscribeResponse {
            version: event.version,
            timestamp_ms: event.timestamp_ms,
            operation: event.operation.to_string(),
            arrow_ipc: ipc.into(),
            version_complete: event.completes_version(),
        };
        Some((Ok(response), Some((running, writer))))
    });
    Ok(Box::pin(
        futures::stream::once(async { Ok(schema) }).chain(rest),
    ))
}

pub type FlightStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;

fn metadata(event: &ChangeEvent) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "version": event.version,
            "timestamp_ms": event.timestamp_ms,
            "operation": event.operation,
            "complete": event.completes_version(),
        })
        .to_string(),
    )
}

/// The Flight `DoGet` stream of a subscription (see the module docs).
pub fn flight_data(running: Running) -> FlightStream {
    let options = IpcWriteOptions::default();
    let schema = FlightData::from(SchemaAsIpc::new(&running.subscription.schema, &options));
    let state = (
        running,
        DictionaryTracker::new(false),
        IpcWriteContext::default(),
        options,
    );
    let rest = futures::stream::unfold(Some(state), |state| async move {
        let (mut running, mut tracker, mut context, options) = state?;
        let event = match running.subscription.events.recv().await? {
            Ok(event) => event,
            Err(e) => return Some((vec![Err(query_status(e))], None)),
        };
        // A version ends with a batch of no rows whose metadata says so: clients of
        // every language decode it (metadata-only messages are not read alike).
        let batch = event
            .batch
            .clone()
            .unwrap_or_else(|| RecordBatch::new_empty(running.subscription.schema.clone()));
        let encoded =
            IpcDataGenerator::default().encode(&batch, &mut tracker, &options, &mut context);
        let out = match encoded {
            Ok((dictionaries, data)) => {
                let mut out: Vec<_> = dictionaries
                    .into_iter()
                    .map(|d| Ok(FlightData::from(d)))
                    .collect();
                out.push(Ok(
                    FlightData::from(data).with_app_metadata(metadata(&event))
                ));
                out
            }
            Err(e) => return Some((vec![Err(encode_error(e))], None)),
        };
        Some((out, Some((running, tracker, context, options))))
    })
    .flat_map(futures::stream::iter);
    Box::pin(futures::stream::once(async { Ok(schema) }).chain(rest))
}
