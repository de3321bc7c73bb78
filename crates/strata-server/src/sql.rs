//! The SQL engine inside the server: its writes go through the ingester.
//!
//! The ingester owns the datasets while the server runs: it holds acknowledged rows in
//! memtables and caches schemas. [`IngesterHooks`] makes SQL's write statements respect
//! that: `CREATE`/`DROP TABLE` go through it, and before `INSERT`, `DELETE`,
//! `ALTER TABLE` or `RESTORE` commit, the dataset's acknowledged rows are flushed, so
//! a statement always applies after every row acknowledged before it.

use std::sync::Arc;

use async_trait::async_trait;
use strata_ingest::Ingester;
use strata_query::{DatasetHooks, Engine, HookError, QueryConfig};
use strata_table::Table;
use strata_types::DatasetSpec;

#[derive(Clone, Debug)]
pub struct IngesterHooks {
    ingester: Ingester,
}

impl IngesterHooks {
    pub fn new(ingester: Ingester) -> Self {
        Self { ingester }
    }
}

#[async_trait]
impl DatasetHooks for IngesterHooks {
    async fn create_dataset(&self, spec: DatasetSpec) -> Result<Table, HookError> {
        Ok(self.ingester.create_dataset(spec).await?)
    }

    async fn drop_dataset(&self, name: &str) -> Result<(), HookError> {
        Ok(self.ingester.drop_dataset(name).await?)
    }

    async fn before_commit(&self, name: &str) -> Result<(), HookError> {
        self.ingester.flush(name).await?;
        Ok(())
    }

    async fn schema_changed(&self, name: &str) -> Result<(), HookError> {
        Ok(self.ingester.refresh_schema(name).await?)
    }
}

/// The server's SQL engine over the ingester's catalog.
pub fn engine(ingester: &Ingester, config: QueryConfig) -> strata_query::Result<Engine> {
    Engine::with_hooks(
        ingester.catalog().clone(),
        Arc::new(IngesterHooks::new(ingester.clone())),
        config,
    )
}
