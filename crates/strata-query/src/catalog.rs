//! The datasets of a [`Catalog`] as a DataFusion catalog: `strata.public.<dataset>`.
//!
//! A table name may carry a version after `@`, which is how time-travel SQL reaches the
//! planner (the engine rewrites `weather VERSION AS OF 12` to `"weather@v12"`):
//!
//! | name | version |
//! |---|---|
//! | `weather` | the head |
//! | `weather@v12` | version 12 |
//! | `weather@t1767225600000` | the newest version committed at or before that time (ms since the epoch) |
//! | `weather@tag:release-1` | the version tagged `release-1` |
//!
//! | `weather@changes:v3,head` | `table_changes('weather', 3)`: see [`crate::changes`] |
//!
//! Dataset names cannot contain `@`, so the forms never collide with a dataset.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use strata_table::{Catalog, Table, VersionSpec};

use crate::changes::ChangesName;
use crate::hooks::DatasetHooks;
use crate::provider::StrataTable;

/// The catalog name Strata's datasets appear under.
pub const CATALOG: &str = "strata";
/// The one schema of [`CATALOG`].
pub const SCHEMA: &str = "public";

/// A table reference: a dataset and the version to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedName {
    pub dataset: String,
    pub version: VersionSpec,
}

impl VersionedName {
    /// Parses `dataset[@v<N>|@t<ms>|@tag:<name>]`.
    pub fn parse(name: &str) -> Result<Self, String> {
        let Some((dataset, at)) = name.split_once('@') else {
            return Ok(Self {
                dataset: name.to_string(),
                version: VersionSpec::Head,
            });
        };
        let version = if let Some(tag) = at.strip_prefix("tag:") {
            VersionSpec::Tag(tag.to_string())
        } else if let Some(v) = at.strip_prefix('v').and_then(|v| v.parse().ok()) {
            VersionSpec::Version(v)
        } else if let Some(t) = at.strip_prefix('t').and_then(|t| t.parse().ok()) {
            VersionSpec::Timestamp(t)
        } else {
            return Err(format!(
                "table name {name:?}: after '@' expected v<version>, t<milliseconds> or tag:<name>"
            ));
        };
        Ok(Self {
            dataset: dataset.to_string(),
            version,
        })
    }

    /// The table name that reads this version.
    pub fn to_table_name(&self) -> String {
        match &self.version {
            VersionSpec::Head => self.dataset.clone(),
            VersionSpec::Version(v) => format!("{}@v{v}", self.dataset),
            VersionSpec::Timestamp(t) => format!("{}@t{t}", self.dataset),
            VersionSpec::Tag(tag) => format!("{}@tag:{tag}", self.dataset),
        }
    }
}

/// `strata` catalog with the single schema `public`.
#[derive(Debug)]
pub struct StrataCatalog {
    schema: Arc<StrataSchema>,
}

impl StrataCatalog {
    pub fn new(catalog: Catalog, hooks: Arc<dyn DatasetHooks>) -> Self {
        Self {
            schema: Arc::new(StrataSchema {
                catalog,
                hooks,
                names: RwLock::new(BTreeSet::new()),
                handles: Mutex::new(HashMap::new()),
                heads: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn schema_provider(&self) -> &Arc<StrataSchema> {
        &self.schema
    }
}

impl CatalogProvider for StrataCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![SCHEMA.to_string()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        (name == SCHEMA).then(|| self.schema.clone() as Arc<dyn SchemaProvider>)
    }
}

/// The datasets. Table lookups go to storage every time, so a query always sees the
/// newest head; the list of names (which DataFusion asks for synchronously, for
/// `SHOW TABLES` and `information_schema`) is refreshed before each statement.
#[derive(Debug)]
pub struct StrataSchema {
    catalog: Catalog,
    hooks: Arc<dyn DatasetHooks>,
    names: RwLock<BTreeSet<String>>,
    /// One table handle per dataset, kept across statements: a handle caches its latest
    /// manifest, so a query at an unchanged head does not replay the version log.
    handles: Mutex<HashMap<String, Table>>,
    /// On an exclusive catalog: each dataset's head as resolved when
    /// [`Catalog::changes`] was at the count kept with it, `(count, head)`; while the
    /// count has not moved it is still the head (and the handle in `handles` still the
    /// dataset's), so a query at the head reads nothing to find them.
    heads: Mutex<HashMap<String, (u64, u64)>>,
}

impl StrataSchema {
    /// Reloads the list of dataset names.
    pub async fn refresh(&self) -> crate::Result<()> {
        let names: BTreeSet<String> = self.catalog.list_tables().await?.into_iter().collect();
        self.handles
            .lock()
            .expect("handles lock")
            .retain(|name, _| names.contains(name));
        *self.names.write().expect("names lock") = names;
        Ok(())
    }

    /// A handle of the dataset. The dataset record is read each time (a dropped and
    /// recreated dataset has a new id); the cached handle is used while the id is the same.
    async fn handle(&self, dataset: &str) -> crate::Result<Table> {
        let fresh = self.catalog.open_table(dataset).await?;
        let mut handles = self.handles.lock().expect("handles lock");
        Ok(match handles.get(dataset) {
            Some(t) if t.id() == fresh.id() => t.clone(),
            _ => {
                handles.insert(dataset.to_string(), fresh.clone());
                fresh
            }
        })
    }

    /// The dataset at a version, as a table provider.
    pub async fn open(&self, name: &VersionedName) -> crate::Result<StrataTable> {
        let at_head = name.version == VersionSpec::Head && self.catalog.is_exclusive();
        // Read before resolving: a change while resolving leaves a stale count behind.
        let changes = self.catalog.changes();
        if at_head {
            let head = match self.heads.lock().expect("heads lock").get(&name.dataset) {
                Some(&(count, head)) if count == changes => Some(head),
                _ => None,
            };
            let table = head.and_then(|_| {
                let handles = self.handles.lock().expect("handles lock");
                handles.get(&name.dataset).cloned()
            });
            if let (Some(head), Some(table)) = (head, table) {
                return Ok(StrataTable::at_known_head(&table, head)
                    .await?
                    .with_hooks(self.hooks.clone()));
            }
        }
        let table = self.handle(&name.dataset).await?;
        let t = StrataTable::at(&table, name.version.clone()).await?;
        if at_head {
            self.heads
                .lock()
                .expect("heads lock")
                .insert(name.dataset.clone(), (changes, t.version()));
        }
        Ok(t.with_hooks(self.hooks.clone()))
    }
}

#[async_trait]
impl SchemaProvider for StrataSchema {
    fn table_names(&self) -> Vec<String> {
        self.names
            .read()
            .expect("names lock")
            .iter()
            .cloned()
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(changes) = ChangesName::parse(name) {
            let changes = changes.map_err(DataFusionError::Plan)?;
            let table = self.handle(&changes.dataset).await?;
            return Ok(Some(Arc::new(changes.open(&table).await?)));
        }
        let name = VersionedName::parse(name).map_err(DataFusionError::Plan)?;
        match self.open(&name).await {
            Ok(t) => Ok(Some(Arc::new(t))),
            // Not a dataset (it may be a table function's name): DataFusion reports
            // unknown tables itself, and the error layer maps that to NOT_FOUND.
            Err(crate::Error::Table(strata_table::Error::DatasetNotFound(_))) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        let dataset = match ChangesName::parse(name) {
            Some(changes) => changes.map(|c| c.dataset),
            None => VersionedName::parse(name).map(|n| n.dataset),
        };
        dataset
            .map(|d| self.names.read().expect("names lock").contains(&d))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names_round_trip() {
        for (text, version) in [
            ("weather", VersionSpec::Head),
            ("weather@v12", VersionSpec::Version(12)),
            (
                "weather@t1767225600000",
                VersionSpec::Timestamp(1_767_225_600_000),
            ),
            (
                "weather@tag:release-1",
                VersionSpec::Tag("release-1".into()),
            ),
        ] {
            let n = VersionedName::parse(text).unwrap();
            assert_eq!(n.dataset, "weather");
            assert_eq!(n.version, version);
            assert_eq!(n.to_table_name(), text);
        }
        assert!(VersionedName::parse("weather@x").is_err());
        assert!(VersionedName::parse("weather@vx").is_err());
    }
}
