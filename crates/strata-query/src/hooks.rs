//! [`DatasetHooks`]: how SQL's write statements reach whoever owns the datasets.
//!
//! Embedded (tests, benches, `strata demo` without a server) the catalog is the owner:
//! [`CatalogHooks`]. In the server the ingester owns them: it keeps unflushed rows in
//! memtables and caches schemas, so creating, dropping, and committing around it must
//! go through it (see `strata-server`).

use std::fmt;

use async_trait::async_trait;
use strata_table::{Catalog, Table};
use strata_types::DatasetSpec;

/// An error of the dataset owner, kept whole so the server can give it its status code.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[async_trait]
pub trait DatasetHooks: Send + Sync + fmt::Debug {
    /// Creates a dataset.
    async fn create_dataset(&self, spec: DatasetSpec) -> Result<Table, HookError>;

    /// Drops a dataset with everything it holds.
    async fn drop_dataset(&self, name: &str) -> Result<(), HookError>;

    /// Called before a SQL statement commits to the dataset (`INSERT`, `DELETE`,
    /// `RESTORE`, `ALTER`): rows acknowledged earlier but not yet committed must be
    /// committed first, so the statement applies after them.
    async fn before_commit(&self, name: &str) -> Result<(), HookError> {
        let _ = name;
        Ok(())
    }

    /// Called after the dataset's schema changed.
    async fn schema_changed(&self, name: &str) -> Result<(), HookError> {
        let _ = name;
        Ok(())
    }
}

/// Hooks for a catalog nobody else writes to.
#[derive(Clone, Debug)]
pub struct CatalogHooks {
    catalog: Catalog,
}

impl CatalogHooks {
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

#[async_trait]
impl DatasetHooks for CatalogHooks {
    async fn create_dataset(&self, spec: DatasetSpec) -> Result<Table, HookError> {
        Ok(self.catalog.create_table(spec).await?)
    }

    async fn drop_dataset(&self, name: &str) -> Result<(), HookError> {
        Ok(self.catalog.drop_table(name).await?)
    }
}
