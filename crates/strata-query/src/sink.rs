//! [`StrataSink`]: `INSERT INTO dataset …` as one commit.
//!
//! DataFusion plans the insert (casting `VALUES` or the `SELECT`'s columns to the
//! dataset's types) and streams the rows here. The sink gathers them, charging their
//! memory to the query memory pool, then writes them as one version: an `INSERT` is
//! atomic, and rows whose primary key exists replace the old ones (an upsert).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::datasource::sink::DataSink;
use datafusion::error::Result as DfResult;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, SendableRecordBatchStream};
use futures::StreamExt;
use strata_table::{Table, WriteOutcome};
use tracing::info;

use crate::error::Error;
use crate::hooks::DatasetHooks;
use crate::views;

pub struct StrataSink {
    table: Table,
    schema: SchemaRef,
    hooks: Arc<dyn DatasetHooks>,
}

impl StrataSink {
    pub fn new(table: Table, schema: SchemaRef, hooks: Arc<dyn DatasetHooks>) -> Self {
        Self {
            table,
            schema,
            hooks,
        }
    }
}

impl fmt::Debug for StrataSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrataSink")
            .field("dataset", &self.table.name())
            .finish()
    }
}

impl DisplayAs for StrataSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StrataSink: dataset={}", self.table.name())
    }
}

#[async_trait]
impl DataSink for StrataSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let reservation = MemoryConsumer::new(format!("INSERT INTO {}", self.table.name()))
            .register(context.memory_pool());
        let mut batches = Vec::new();
        let mut rows = 0u64;
        while let Some(batch) = data.next().await {
            // DataFusion hands the rows over in the engine's types (strings as views).
            let batch = views::plain_batch(&batch?)?;
            if batch.num_rows() == 0 {
                continue;
            }
            reservation.try_grow(batch.get_array_memory_size())?;
            rows += batch.num_rows() as u64;
            batches.push(batch);
        }
        if rows == 0 {
            return Ok(0);
        }
        let name = self.table.name();
        self.hooks.before_commit(name).await.map_err(Error::Hook)?;
        match self
            .table
            .write(&batches, BTreeMap::new())
            .await
            .map_err(Error::Table)?
        {
            WriteOutcome::Committed(v) => {
                info!(
                    dataset = name,
                    version = v.version,
                    rows,
                    "INSERT committed"
                );
            }
            // Only producer marks make a write a duplicate, and INSERT carries none.
            WriteOutcome::Duplicate { head } => {
                return Err(Error::Execution(format!(
                    "INSERT into {name:?} was taken for a duplicate at version {head}"
                ))
                .into());
            }
        }
        Ok(rows)
    }
}
