//! The catalog: datasets by name, created, opened, listed, dropped and purged.

use super::*;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DatasetRecord {
    #[serde(default = "crate::manifest::format_1")]
    format: u32,
    id: String,
    spec: DatasetSpecDef,
    created_ms: i64,
}

/// The catalog of datasets on one set of stores: blobs, records and the version log.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) meta: Arc<dyn MetaStore>,
    pub(super) log: Arc<dyn VersionLog>,
    pub(super) options: TableOptions,
    /// Changes made through this catalog (and its clones and tables), see
    /// [`Catalog::changes`].
    pub(super) changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// No other process writes these stores: see [`Catalog::exclusive`].
    pub(super) exclusive: bool,
}

impl Catalog {
    pub fn new(blobs: Arc<dyn BlobStore>, meta: Arc<dyn MetaStore>) -> Self {
        Self::with_options(blobs, meta, TableOptions::default())
    }

    /// A catalog whose version log lives in `meta` (under `tables/{id}/versions/`).
    pub fn with_options(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        options: TableOptions,
    ) -> Self {
        let log = Arc::new(MetaLog::new(meta.clone()));
        Self::with_log(blobs, meta, log, options)
    }

    /// A catalog with a version log of its own (Cassandra's `versions` table).
    pub fn with_log(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        log: Arc<dyn VersionLog>,
        options: TableOptions,
    ) -> Self {
        Self {
            blobs,
            meta,
            log,
            options,
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            exclusive: false,
        }
    }

    /// Declares that this process is the only writer of the stores (a local directory
    /// it holds the lock of, memory): then what [`Catalog::changes`] did not count has
    /// not changed, and a reader may trust what it resolved at an equal count (a
    /// dataset's id and head) without asking the store again.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// True when [`Catalog::exclusive`] was declared.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// How many changes (commits, tags, vacuums, datasets created or dropped) this
    /// process made through this catalog, its clones and its tables: equal numbers mean
    /// nothing changed here in between (other processes sharing the store are not
    /// counted).
    pub fn changes(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Wakes when [`Catalog::changes`] moves (a commit through this process, say).
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(super) fn changed(&self) {
        self.changes.send_modify(|c| *c += 1);
    }

    pub fn options(&self) -> &TableOptions {
        &self.options
    }

    /// The stores the catalog keeps its datasets in.
    pub fn stores(&self) -> (Arc<dyn BlobStore>, Arc<dyn MetaStore>) {
        (self.blobs.clone(), self.meta.clone())
    }

    /// Creates a dataset; its version 1 is the empty table with `spec`'s schema.
    pub async fn create_table(&self, spec: DatasetSpec) -> Result<Table> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let create = VersionRecord {
            format: crate::manifest::FORMAT,
            version: 1,
            timestamp_ms: now,
            operation: Operation::Create,
            base: None,
            schema: Some(schema_to_defs(&spec.schema)),
            add: vec![],
            remove: vec![],
            deletes: vec![],
            producers: BTreeMap::new(),
            rows_added: 0,
            rows_removed: 0,
            retention: None,
        };
        // Version 1 first, then the name: a crash in between leaves only an unreachable record.
        self.log
            .commit(&id, 1, Bytes::from(create.encode()))
            .await?;
        let record = DatasetRecord {
            format: crate::manifest::FORMAT,
            id: id.clone(),
            spec: spec.to_def(),
            created_ms: now,
        };
        let body = serde_json::to_vec(&record).expect("dataset records serialize");
        match self
            .meta
            .put_if_absent(&layout::dataset_key(spec.name.as_str()), Bytes::from(body))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                let _ = self.log.purge(&id).await;
                return Err(Error::DatasetExists(spec.name.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        info!(dataset = %spec.name, id, "created dataset");
        self.changed();
        Ok(Table::new(self, id, spec))
    }

    pub async fn open_table(&self, name: &str) -> Result<Table> {
        let name = DatasetName::new(name)?;
        let bytes = self
            .meta
            .get(&layout::dataset_key(name.as_str()))
            .await?
            .ok_or_else(|| Error::DatasetNotFound(name.to_string()))?;
        let what = format!("dataset record {name}");
        let record: DatasetRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&what, e))?;
        crate::manifest::check_format(&what, record.format)?;
        let spec = DatasetSpec::from_def(&record.spec).map_err(|e| Error::corrupt(&what, e))?;
        Ok(Table::new(self, record.id, spec))
    }

    pub async fn list_tables(&self) -> Result<Vec<String>> {
        Ok(self
            .meta
            .list(layout::DATASETS)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(layout::DATASETS).map(str::to_string))
            .collect())
    }

    /// Drops a dataset: the name disappears at once (it can be created again, as a new
    /// dataset); its records and blobs stay for `blob_grace_ms`, so queries that
    /// started before the drop finish reading it, and are removed by a later
    /// [`Catalog::purge_dropped`] (which this call also runs for earlier drops).
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let table = self.open_table(name).await?;
        let marker = DroppedRecord {
            name: name.to_string(),
            dropped_ms: now_ms(),
        };
        let body = serde_json::to_vec(&marker).expect("drop records serialize");
        match self
            .meta
            .put_if_absent(&layout::dropped_key(&table.inner.id), Bytes::from(body))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {} // dropped before, and the name came back?
            Err(e) => return Err(e.into()),
        }
        self.meta.delete(&layout::dataset_key(name)).await?;
        self.changed();
        info!(dataset = name, "dropped dataset");
        if let Err(e) = self.purge_dropped().await {
            warn!(error = %e, "removing the files of dropped datasets failed; retried later");
        }
        Ok(())
    }

    /// Removes the records and blobs of datasets dropped longer than `blob_grace_ms`
    /// ago; returns how many datasets it removed.
    pub async fn purge_dropped(&self) -> Result<usize> {
        let now = now_ms();
        let mut purged = 0;
        for key in self.meta.list(layout::DROPPED).await? {
            let Some(id) = key.strip_prefix(layout::DROPPED) else {
                continue;
            };
            let Some(bytes) = self.meta.get(&key).await? else {
                continue;
            };
            let marker: DroppedRecord =
                serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?;
            if now - marker.dropped_ms < self.options.blob_grace_ms {
                continue;
            }
            self.log.purge(id).await?;
            let prefix = layout::table_prefix(id);
            for record in self.meta.list(&prefix).await? {
                self.meta.delete(&record).await?;
            }
            for blob in self.blobs.list(&prefix).await? {
                self.blobs.delete(&blob.path).await?;
            }
            self.meta.delete(&key).await?;
            info!(
                dataset = marker.name,
                id, "removed the files of a dropped dataset"
            );
            purged += 1;
        }
        Ok(purged)
    }
}

/// A dropped dataset whose files are kept for readers until the grace period ends.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DroppedRecord {
    name: String,
    dropped_ms: i64,
}
