//! Commits: a transaction built against a base manifest becomes version base + 1 in
//! the version log, or loses the race and is rebuilt on the new head.

use super::*;

/// A change to commit, built by an operation against a base manifest.
pub(super) struct Txn {
    pub(super) operation: Operation,
    /// For rollback: the manifest the new version starts from.
    pub(super) start: Option<Arc<Manifest>>,
    pub(super) schema: Option<SchemaRef>,
    pub(super) add: Vec<SegmentMeta>,
    pub(super) remove: Vec<SegmentRef>,
    pub(super) deletes: Vec<DvUpdate>,
    pub(super) producers: BTreeMap<String, u64>,
    pub(super) rows_added: u64,
    pub(super) rows_removed: u64,
    pub(super) retention: Option<Retention>,
    /// When the first new blob of this transaction started being written.
    pub(super) blobs_since_ms: Option<i64>,
}

impl Txn {
    pub(super) fn new(operation: Operation) -> Self {
        Self {
            operation,
            start: None,
            schema: None,
            add: vec![],
            remove: vec![],
            deletes: vec![],
            producers: BTreeMap::new(),
            rows_added: 0,
            rows_removed: 0,
            retention: None,
            blobs_since_ms: None,
        }
    }
}

impl Table {
    /// Commits `txn` as version `base.version + 1`. Fails with `Error::Conflict` when
    /// another writer took that version; the caller rebuilds the transaction and retries.
    pub(super) async fn try_commit(&self, base: &Manifest, txn: Txn) -> Result<VersionInfo> {
        let v = base.version + 1;
        let now = now_ms();
        if let Some(since) = txn.blobs_since_ms
            && now - since > self.options().blob_grace_ms
        {
            return Err(Error::TransactionExpired {
                dataset: self.name().to_string(),
                elapsed_ms: now - since,
                grace_ms: self.options().blob_grace_ms,
            });
        }
        let record = VersionRecord {
            format: crate::manifest::FORMAT,
            version: v,
            timestamp_ms: now.max(base.timestamp_ms),
            operation: txn.operation,
            base: txn.start.as_ref().map(|m| m.version),
            schema: txn.schema.as_deref().map(schema_to_defs),
            add: txn.add,
            remove: txn.remove,
            deletes: txn.deletes,
            producers: txn.producers,
            rows_added: txn.rows_added,
            rows_removed: txn.rows_removed,
            retention: txn.retention,
        };
        let id = &self.inner.id;
        match self
            .inner
            .log
            .commit(id, v, Bytes::from(record.encode()))
            .await
        {
            Ok(()) => self.changed(),
            Err(e) if e.is_conflict() => {
                return Err(Error::Conflict {
                    dataset: self.name().to_string(),
                    reason: format!("version {v} was committed by another writer"),
                });
            }
            Err(e) => return Err(e.into()),
        }
        // A writer whose base is so stale that vacuum trimmed the log past it would have
        // just written into the trimmed range. Vacuum trims oldest-first, so in that case
        // the base record is gone too: take the record back and rebuild on the real head.
        if v > 1 && !self.in_log(v - 1).await? {
            self.inner.log.remove(id, v).await?;
            return Err(Error::Conflict {
                dataset: self.name().to_string(),
                reason: format!("version {} was vacuumed while building on it", v - 1),
            });
        }
        let mut next = match &txn.start {
            Some(start) => (**start).clone(),
            None => base.clone(),
        };
        next.apply(&record)?;
        let next = Arc::new(next);
        self.remember(&next);
        debug!(
            dataset = self.name(),
            version = v,
            op = record.operation.name(),
            "committed"
        );
        if v.is_multiple_of(self.options().checkpoint_interval.max(1))
            && let Err(e) = self.write_checkpoint(&next).await
        {
            warn!(dataset = self.name(), version = v, error = %e, "could not write checkpoint");
        }
        Ok(VersionInfo::from(&record))
    }

    /// Runs `build` against the head and commits its transaction, retrying on conflict.
    pub(super) async fn commit_loop<F, Fut>(&self, mut build: F) -> Result<VersionInfo>
    where
        F: FnMut(Arc<Manifest>) -> Fut,
        Fut: std::future::Future<Output = Result<Txn>>,
    {
        let mut attempt = 0;
        loop {
            let base = self.head().await?;
            let txn = build(base.clone()).await?;
            match self.try_commit(&base, txn).await {
                Err(e) if e.is_conflict() && attempt < self.options().max_commit_retries => {
                    attempt += 1;
                    debug!(dataset = self.name(), attempt, "commit conflict, retrying");
                }
                other => return other,
            }
        }
    }
}

pub(super) fn is_duplicate(base: &Manifest, producers: &BTreeMap<String, u64>) -> bool {
    !producers.is_empty()
        && producers
            .iter()
            .all(|(p, seq)| base.producers.get(p).is_some_and(|m| m >= seq))
}

/// True if segments written with `written` can be committed on a head with `head`:
/// every written column exists in the head schema with the same type.
pub(super) fn schema_compatible(head: &Schema, written: &Schema) -> bool {
    written.fields().iter().all(|f| {
        head.field_with_name(f.name())
            .is_ok_and(|h| h.data_type() == f.data_type())
    })
}
