//! Strata's SQL engine: DataFusion over versioned segments.
//!
//! [`Engine`] takes SQL text (queries, time travel, Strata's write and version
//! statements, see [`statements`]) and returns Arrow batches; the pieces below are
//! what it plans with.
//!
//! ```text
//!  SessionContext ──register(ctx, catalog)──▶ one StrataTable per dataset, at its head
//!                                            (StrataTable::at(table, VersionSpec) for others)
//!
//!  SQL ─▶ DataFusion plan ─▶ StrataTable.scan(projection, filters, limit)
//!     ─▶ Snapshot's manifest (the version's live segments + deletion vectors)
//!     ─▶ prune shards: `key = lit` / `key IN (…)` ─▶ xxh3 shard of the literals
//!     ─▶ prune segments: PruningPredicate over manifest min/max/null counts
//!     ─▶ DataSourceExec(ParquetSource): one PartitionedFile per segment (size from the
//!        manifest), grouped into target_partitions groups by bytes;
//!        predicate ─▶ row group stats, page index, row filter;
//!        deletion vector ─▶ ParquetRowSelection (file-level, split per row group)
//!     ─▶ strata://store/ ─▶ BlobObjectStore ─▶ BlobStore.get_range / get_ranges
//! ```
//!
//! Invariants:
//! - A `StrataTable` is pinned to one version: every scan of it sees the same rows,
//!   whatever commits happen meanwhile.
//! - Pruning is conservative: segment statistics cover deleted rows too (a superset of
//!   the live rows), and a filter the pruner cannot read prunes nothing. Filters are
//!   answered `Inexact`, so DataFusion re-applies them above the scan.
//! - Deleted rows never reach DataFusion: they are skipped by the Parquet reader's row
//!   selection, and fully deleted segments are not scanned.
//! - Columns a segment predates read as nulls (DataFusion's schema adaptation fills
//!   table columns missing from a file's schema).

pub mod aggregates;
pub mod bucket_aggregate;
pub mod cache;
pub mod cached_scan;
pub mod cancel;
pub mod catalog;
pub mod changes;
pub mod dialect;
mod dictionary_scan;
pub mod engine;
pub mod error;
pub mod functions;
pub mod hooks;
pub mod limits;
pub mod merge;
pub mod object_store;
pub mod overflow;
pub mod plan_cache;
pub mod provider;
pub mod run_aggregate;
pub mod sink;
pub mod statements;
pub mod subscribe;
pub mod views;

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;

/// The DataFusion this engine is built on, for callers that handle its types
/// (parameters, record batch streams).
pub use datafusion;

pub use catalog::VersionedName;
pub use engine::{Access, Engine, Prepared, QueryConfig, Warmed};
pub use error::{Error, Result};
pub use hooks::{CatalogHooks, DatasetHooks, HookError};
pub use object_store::BlobObjectStore;
pub use provider::{DEFAULT_STORE_URL, PruneStats, ScanLog, StrataTable};
pub use subscribe::{ChangeEvent, SubscribeRequest, Subscription};

/// Registers the catalog's blob store under [`DEFAULT_STORE_URL`] and every dataset, at
/// its head version, as a table of the same name. Returns the names registered.
pub async fn register(
    ctx: &SessionContext,
    catalog: &strata_table::Catalog,
) -> Result<Vec<String>> {
    let url = ObjectStoreUrl::parse(DEFAULT_STORE_URL)?;
    let names = catalog.list_tables().await?;
    let mut store_registered = false;
    for name in &names {
        let table = catalog.open_table(name).await?;
        if !store_registered {
            ctx.runtime_env().register_object_store(
                url.as_ref(),
                Arc::new(BlobObjectStore::new(table.blobs().clone())),
            );
            store_registered = true;
        }
        let provider = StrataTable::at(&table, strata_table::VersionSpec::Head).await?;
        ctx.register_table(name.as_str(), Arc::new(provider))?;
    }
    Ok(names)
}
