//! Continuous queries: a dataset's changes from a version on, then each new version's
//! as it commits, with a projection and a filter run on the server.
//!
//! A subscription is a task that walks the versions with a [`ChangeCursor`] and sends
//! each version's rows (after `SELECT columns … WHERE filter` over them) into a bounded
//! channel, then one event closing the version. It reads only stored versions, so a
//! slow consumer never slows a writer: the task waits on the channel and catches up from
//! the store when the consumer does. New versions are noticed when this process commits
//! (the catalog's change signal) or, for commits through other servers on the same
//! store, at the next poll of the version log.
//!
//! The columns are those of the head when the subscription starts (a column added later
//! is not in its rows; subscribe again to get it).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use strata_table::{CHANGE_TYPE, COMMIT_TIMESTAMP, COMMIT_VERSION, ChangeCursor, changes_schema};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// What to follow.
#[derive(Clone, Debug, Default)]
pub struct SubscribeRequest {
    pub dataset: String,
    /// The first version whose changes are sent; `None`: the version after the head
    /// (only what commits from now on). A consumer that saw version `n` complete
    /// resumes with `n + 1`.
    pub from: Option<u64>,
    /// Columns of the dataset to send (all when empty); the change columns always follow.
    pub columns: Vec<String>,
    /// A SQL condition on the dataset's and the change columns (`_change_type`, …).
    pub filter: Option<String>,
    /// How often the version log is asked for commits made elsewhere.
    pub poll: Duration,
}

/// One message of a subscription.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub version: u64,
    pub timestamp_ms: i64,
    /// The version's operation (`append`, `upsert`, `delete`, `rollback`, …).
    pub operation: &'static str,
    /// Rows of the version that passed the filter; `None` in the event closing it.
    pub batch: Option<RecordBatch>,
}

impl ChangeEvent {
    /// The last event of its version: every row of it was sent before.
    pub fn completes_version(&self) -> bool {
        self.batch.is_none()
    }
}

/// A running subscription: the schema of its rows and its events, in version order.
pub struct Subscription {
    pub schema: SchemaRef,
    /// The first version it sends.
    pub from: u64,
    pub events: mpsc::Receiver<Result<ChangeEvent>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Events buffered between the task and the consumer.
const EVENTS_BUFFERED: usize = 4;

impl Engine {
    /// Starts a subscription. Errors now (not in the stream) for an unknown dataset or
    /// column, a filter that does not plan, and a position vacuum removed
    /// ([`strata_table::Error::ChangesVacuumed`]) or beyond the head.
    pub async fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription> {
        let table = self.catalog().open_table(&request.dataset).await?;
        let head = table.head().await?;
        let from = request.from.unwrap_or(head.version + 1);
        let cursor = ChangeCursor::open(&table, from).await?;
        let table_schema = head.schema.clone();
        // Planned once over no rows: the schema of the events, and errors up front.
        let schema = self
            .continuous(&table_schema, &request, futures::stream::empty().boxed())
            .await?
            .schema();
        let (tx, events) = mpsc::channel(EVENTS_BUFFERED);
        let engine = self.clone();
        // On the query runtime: the steps read segments and run the filter.
        self.runtime().spawn(async move {
            if let Err(e) = engine.follow(cursor, table_schema, request, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Subscription {
            schema,
            from,
            events,
        })
    }

    /// The subscription's task: catch up, wait for a commit, again, until the consumer
    /// goes away (`Ok`) or a step fails.
    async fn follow(
        &self,
        mut cursor: ChangeCursor,
        table_schema: SchemaRef,
        request: SubscribeRequest,
        tx: &mpsc::Sender<Result<ChangeEvent>>,
    ) -> Result<()> {
        let mut commits = self.catalog().watch_changes();
        let poll = request.poll.max(Duration::from_millis(1));
        loop {
            commits.mark_unchanged();
            while let Some(changes) = cursor.step(Some(table_schema.clone())).await? {
                let (version, timestamp_ms, operation) = (
                    changes.version,
                    changes.timestamp_ms,
                    changes.operation.name(),
                );
                let shared = self
                    .recent_changes()
                    .rows(cursor.table().id(), &table_schema, version, changes.rows)
                    .await?;
                let mut rows = self.continuous(&table_schema, &request, shared).await?;
                while let Some(batch) = rows.next().await {
                    let batch = batch.map_err(Error::from)?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let sent = tx
                        .send(Ok(ChangeEvent {
                            version,
                            timestamp_ms,
                            operation,
                            batch: Some(batch),
                        }))
                        .await;
                    if sent.is_err() {
                        return Ok(());
                    }
                }
                let done = ChangeEvent {
                    version,
                    timestamp_ms,
                    operation,
                    batch: None,
                };
                if tx.send(Ok(done)).await.is_err() {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = commits.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(poll).await;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
    }

    /// `SELECT columns, change columns FROM rows WHERE filter`, over one version's rows.
    async fn continuous(
        &self,
        table_schema: &SchemaRef,
        request: &SubscribeRequest,
        rows: BoxStream<'static, strata_table::Result<RecordBatch>>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = changes_schema(table_schema);
        let source = OneShot {
            schema: schema.clone(),
            rows: Mutex::new(Some(rows)),
        };
        let ctx = SessionContext::new_with_state(self.statement_state());
        let mut df = ctx.read_table(Arc::new(StreamingTable::try_new(
            schema,
            vec![Arc::new(source)],
        )?))?;
        if let Some(filter) = request.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            let expr = df
                .parse_sql_expr(filter)
                .map_err(|e| Error::plan(format!("subscription filter {filter:?}: {e}")))?;
            df = df.filter(expr)?;
        }
        if !request.columns.is_empty() {
            for c in &request.columns {
                if table_schema.field_with_name(c).is_err() {
                    return Err(Error::plan(format!(
                        "dataset {:?} has no column {c:?}",
                        request.dataset
                    )));
                }
            }
            let mut columns: Vec<&str> = request.columns.iter().map(String::as_str).collect();
            columns.extend([CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP]);
            df = df.select_columns(&columns)?;
        }
        Ok(df.execute_stream().await?)
    }
}

/// The change rows of the versions subscriptions read last, so that subscribers
/// following one dataset read and decode each version once between them, not once each.
/// Bounded by [`RECENT_CHANGES_BYTES`]; a version larger than that streams to each
/// subscriber on its own, as it would without the cache.
#[derive(Debug, Default)]
pub struct RecentChanges {
    inner: Mutex<Recent>,
}

/// What [`RecentChanges`] holds at most, in bytes of Arrow memory.
pub const RECENT_CHANGES_BYTES: usize = 256 << 20;

/// A version's change rows: (table id, version, the columns they were read with).
type RecentKey = (String, u64, Vec<String>);

/// `None` in a slot: the version was too large to keep.
type Slot = Arc<tokio::sync::OnceCell<Option<Arc<Vec<RecordBatch>>>>>;

/// Versions [`RecentChanges`] remembers at most (filled, too large or being read).
const RECENT_VERSIONS: usize = 1024;

#[derive(Debug, Default)]
struct Recent {
    /// Each version's slot and the bytes it holds.
    slots: std::collections::HashMap<RecentKey, (Slot, usize)>,
    /// Keys in the order their slots were made.
    order: std::collections::VecDeque<RecentKey>,
    used: usize,
}

impl Recent {
    /// Drops the oldest slots while over either budget.
    fn evict(&mut self) {
        while self.used > RECENT_CHANGES_BYTES || self.order.len() > RECENT_VERSIONS {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, bytes)) = self.slots.remove(&old) {
                self.used -= bytes;
            }
        }
    }
}

impl RecentChanges {
    /// The rows of `version`: from the cache if another subscription read them, else
    /// from `rows` (kept for the others when they fit).
    async fn rows(
        &self,
        table_id: &str,
        schema: &SchemaRef,
        version: u64,
        rows: BoxStream<'static, strata_table::Result<RecordBatch>>,
    ) -> Result<BoxStream<'static, strata_table::Result<RecordBatch>>> {
        let key: RecentKey = (
            table_id.to_string(),
            version,
            schema.fields().iter().map(|f| f.name().clone()).collect(),
        );
        let slot = {
            let mut inner = self.inner.lock().expect("recent changes lock");
            match inner.slots.get(&key) {
                Some((slot, _)) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    inner.slots.insert(key.clone(), (slot.clone(), 0));
                    inner.order.push_back(key.clone());
                    inner.evict();
                    slot
                }
            }
        };
        let mut rows = Some(rows);
        // The first subscription to get here reads the version; the others wait for it.
        let kept = slot
            .get_or_try_init(|| async {
                let mut stream = rows.take().expect("read once");
                let (mut batches, mut bytes) = (Vec::new(), 0);
                while let Some(b) = stream.next().await {
                    let b = b?;
                    bytes += b.get_array_memory_size();
                    batches.push(b);
                    if bytes > RECENT_CHANGES_BYTES {
                        // Too large to share: this subscription goes on with the rest.
                        rows = Some(
                            futures::stream::iter(batches.into_iter().map(Ok))
                                .chain(stream)
                                .boxed(),
                        );
                        return Ok::<_, Error>(None);
                    }
                }
                self.insert(key.clone(), bytes);
                Ok(Some(Arc::new(batches)))
            })
            .await?;
        match (kept, rows) {
            (Some(batches), _) => {
                let batches = batches.clone();
                Ok(
                    futures::stream::iter((0..batches.len()).map(move |i| Ok(batches[i].clone())))
                        .boxed(),
                )
            }
            // Too large: this subscription's own stream (read in part above, or not yet).
            (None, Some(rows)) => Ok(rows),
            // Only the call that read the rows can leave its slot empty, and it keeps them.
            (None, None) => Err(Error::Execution(
                "a version's change rows were neither kept nor left to read".into(),
            )),
        }
    }

    /// Counts the bytes of a filled slot (if it was not evicted meanwhile), evicting the
    /// oldest beyond the budget.
    fn insert(&self, key: RecentKey, bytes: usize) {
        let mut inner = self.inner.lock().expect("recent changes lock");
        if let Some((_, size)) = inner.slots.get_mut(&key) {
            *size = bytes;
            inner.used += bytes;
            inner.evict();
        }
    }
}

/// A partition that yields one given stream once.
struct OneShot {
    schema: SchemaRef,
    rows: Mutex<Option<BoxStream<'static, strata_table::Result<RecordBatch>>>>,
}

impl fmt::Debug for OneShot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("changes of one version")
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = self
            .rows
            .lock()
            .expect("one-shot lock")
            .take()
            .unwrap_or_else(|| futures::stream::empty().boxed())
            .map_err(|e| DataFusionError::from(Error::from(e)));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }
}
