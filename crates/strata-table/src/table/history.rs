//! Operations on history: rollback, schema evolution and tags.

use super::*;

impl Table {
    /// Makes a new version whose content (rows and schema) equals version `to`'s. History
    /// is kept, so the rollback itself can be rolled back. Costs one record write,
    /// whatever the data size.
    pub async fn rollback(&self, to: &VersionSpec) -> Result<VersionInfo> {
        let target = self.resolve(to).await?;
        let start = self.manifest(target).await?;
        self.commit_loop(|base| {
            let start = start.clone();
            async move {
                if !base.retention.retains(target) {
                    return Err(Error::VersionVacuumed {
                        dataset: self.name().to_string(),
                        version: target,
                        oldest: base.retention.oldest,
                    });
                }
                let mut txn = Txn::new(Operation::Rollback { to: target });
                let (added, removed) = diff_rows(&base, &start);
                txn.rows_added = added;
                txn.rows_removed = removed;
                txn.schema = Some(start.schema.clone());
                txn.producers = base.producers.clone();
                txn.retention = Some(base.retention.clone());
                txn.start = Some(start);
                Ok(txn)
            }
        })
        .await
    }

    /// Adds a nullable column as a new version. Segments written before read it as null.
    pub async fn add_column(&self, field: Field) -> Result<VersionInfo> {
        validate_name("column", field.name())?;
        if !field.is_nullable() {
            return Err(Error::InvalidArgument(format!(
                "added column {:?} must be nullable: existing rows have no value for it",
                field.name()
            )));
        }
        let type_name = format_type(field.data_type())?;
        self.commit_loop(|base| {
            let field = field.clone();
            let type_name = type_name.clone();
            async move {
                if base
                    .schema
                    .fields()
                    .iter()
                    .any(|f| f.name().eq_ignore_ascii_case(field.name()))
                {
                    return Err(Error::InvalidArgument(format!(
                        "dataset {:?} already has a column {:?}",
                        self.name(),
                        field.name()
                    )));
                }
                let mut fields: Vec<Field> = base
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let name = field.name().clone();
                fields.push(field);
                let schema = Schema::new(fields);
                validate_schema(&schema)?;
                let mut txn = Txn::new(Operation::AddColumn {
                    column: name,
                    data_type: type_name,
                });
                txn.schema = Some(Arc::new(schema));
                Ok(txn)
            }
        })
        .await
    }

    /// Names `version` (any spec) `tag`; tagged versions are never vacuumed.
    pub async fn create_tag(&self, tag: &str, version: &VersionSpec) -> Result<TagInfo> {
        validate_name("tag", tag)?;
        let v = self.resolve(version).await?;
        let info = TagInfo {
            name: tag.to_string(),
            version: v,
            created_ms: now_ms(),
        };
        let key = layout::tag_key(&self.inner.id, tag);
        let body = serde_json::to_vec(&info).expect("tags serialize");
        match self.inner.meta.put_if_absent(&key, Bytes::from(body)).await {
            Ok(()) => self.changed(),
            Err(e) if e.is_conflict() => {
                return Err(Error::TagExists {
                    dataset: self.name().to_string(),
                    tag: tag.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        // A vacuum that committed after `resolve` may have dropped the version; it lists
        // tags only after committing, so checking again after writing the tag is enough.
        let head = self.head().await?;
        if !head.retention.retains(v) {
            self.inner.meta.delete(&key).await?;
            return Err(Error::VersionVacuumed {
                dataset: self.name().to_string(),
                version: v,
                oldest: head.retention.oldest,
            });
        }
        Ok(info)
    }

    pub async fn delete_tag(&self, tag: &str) -> Result<()> {
        validate_name("tag", tag)?;
        let key = layout::tag_key(&self.inner.id, tag);
        if self.inner.meta.get(&key).await?.is_none() {
            return Err(Error::TagNotFound {
                dataset: self.name().to_string(),
                tag: tag.to_string(),
            });
        }
        self.inner.meta.delete(&key).await?;
        self.changed();
        Ok(())
    }

    pub async fn list_tags(&self) -> Result<Vec<TagInfo>> {
        let prefix = layout::tags_prefix(&self.inner.id);
        let mut out = Vec::new();
        for key in self.inner.meta.list(&prefix).await? {
            if let Some(bytes) = self.inner.meta.get(&key).await? {
                out.push(serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?);
            }
        }
        Ok(out)
    }
}

/// Rows live in `to` but not in `from`, and the other way round, from segment metadata
/// and deletion vectors only (no data is read).
pub(super) fn diff_rows(from: &Manifest, to: &Manifest) -> (u64, u64) {
    let mut added = 0;
    let mut removed = 0;
    let empty = RoaringBitmap::new();
    for shard in from.shard_ids(to) {
        if from.shares_shard(to, shard) {
            continue;
        }
        for seg in to.shard_segments(shard) {
            match from.segment(shard, &seg.meta.id) {
                None => added += seg.live_rows(),
                Some(old) => {
                    let now = seg.deleted.as_deref().unwrap_or(&empty);
                    let before = old.deleted.as_deref().unwrap_or(&empty);
                    added += (before - now).len();
                    removed += (now - before).len();
                }
            }
        }
        for seg in from.shard_segments(shard) {
            if to.segment(shard, &seg.meta.id).is_none() {
                removed += seg.live_rows();
            }
        }
    }
    (added, removed)
}
