//! Maintenance: compaction and vacuum.

use super::*;

impl Table {
    /// Merges each shard's small segments (and those with many deleted rows) into
    /// segments of the target size, dropping deleted rows, as one version whose content
    /// is unchanged. Returns `None` when no shard needed it.
    pub async fn compact(&self) -> Result<Option<VersionInfo>> {
        let base = self.head().await?;
        let target = self.options().segment.target_bytes;
        let mut shards: BTreeMap<u32, Vec<LiveSegment>> = BTreeMap::new();
        for seg in base.live_segments() {
            let small = seg.meta.bytes < target / 2;
            let dead = seg.meta.rows - seg.live_rows();
            let sparse = dead * 5 > seg.meta.rows;
            if small || sparse {
                shards.entry(seg.meta.shard).or_default().push(seg.clone());
            }
        }
        shards.retain(|_, segs| segs.len() >= 2 || segs.iter().any(|s| s.deleted.is_some()));
        if shards.is_empty() {
            return Ok(None);
        }
        let since = now_ms();
        let all_columns: Vec<usize> = (0..base.schema.fields().len()).collect();
        let dir = layout::segments_dir(&self.inner.id);
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for (shard, segs) in &shards {
            let mut batches = Vec::new();
            for seg in segs {
                batches.extend(
                    read_segment(
                        self.inner.blobs.clone(),
                        &seg.meta,
                        &base.schema,
                        &all_columns,
                        seg.deleted.as_deref(),
                    )
                    .await?,
                );
                remove.push(SegmentRef {
                    shard: *shard,
                    id: seg.meta.id.clone(),
                });
            }
            let merged = compute::concat_batches(&base.schema, &batches)?;
            if merged.num_rows() == 0 {
                continue;
            }
            // CPU work off the async runtime, as in `write_shards`.
            let (inner, dir, shard) = (self.inner.clone(), dir.clone(), *shard);
            let encoded = tokio::task::spawn_blocking(move || -> Result<_> {
                let sorted = sort_and_dedupe(&inner.keys, &merged, false)?;
                encode_segments(&dir, shard, &inner.keys, &sorted, &inner.options.segment)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            add.extend(put_segments(self.inner.blobs.as_ref(), encoded).await?);
        }
        let inputs: Vec<LiveSegment> = shards.into_values().flatten().collect();
        let shard_list: Vec<u32> = inputs
            .iter()
            .map(|s| s.meta.shard)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let result = self
            .commit_loop(|head| {
                let add = add.clone();
                let remove = remove.clone();
                let inputs = &inputs;
                let base_schema = &base.schema;
                let shard_list = shard_list.clone();
                async move {
                    // Safe to rebase only if no input changed (a concurrent delete or upsert
                    // that touched an input must not be undone by dropping its rows again).
                    let unchanged = inputs.iter().all(|i| {
                        head.segment(i.meta.shard, &i.meta.id)
                            .is_some_and(|s| s.deleted == i.deleted)
                    });
                    if !unchanged || !schema_compatible(&head.schema, base_schema) {
                        return Err(Error::Conflict {
                            dataset: self.name().to_string(),
                            reason: "segments being compacted changed concurrently".into(),
                        });
                    }
                    let mut txn = Txn::new(Operation::Compact { shards: shard_list });
                    txn.add = add;
                    txn.remove = remove;
                    txn.blobs_since_ms = Some(since);
                    Ok(txn)
                }
            })
            .await;
        match result {
            Ok(info) => Ok(Some(info)),
            Err(e) => {
                self.delete_blobs(&add).await;
                Err(e)
            }
        }
    }

    /// Removes versions the policy does not keep (never the head, never a tagged
    /// version), then every blob no retained version uses and that is older than the
    /// grace period. Records its retention as a version of its own first, so a concurrent
    /// rollback or tag either lands before it (and is honoured) or sees it (and fails).
    pub async fn vacuum(&self, policy: &VacuumPolicy) -> Result<VacuumReport> {
        if policy.keep_last.is_none() && policy.keep_within_ms.is_none() {
            return Err(Error::InvalidArgument(
                "vacuum needs keep_last and/or keep_within_ms".into(),
            ));
        }
        if policy.keep_last == Some(0) {
            return Err(Error::InvalidArgument(
                "keep_last must be at least 1".into(),
            ));
        }
        let started = now_ms();
        let mut report = VacuumReport::default();
        let mut attempt = 0;
        let (head, oldest, protected) = loop {
            let base = self.head().await?;
            let h = base.version;
            let by_count = policy.keep_last.map(|n| (h + 1).saturating_sub(n).max(1));
            let by_age = match policy.keep_within_ms {
                Some(ms) => Some(match self.version_at_time(started - ms - 1).await {
                    Ok(v) => v + 1,
                    Err(Error::NoVersionAtTime { .. }) => 1,
                    Err(e) => return Err(e),
                }),
                None => None,
            };
            let wanted = match (by_count, by_age) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => unreachable!("checked above"),
            };
            let oldest = wanted.clamp(base.retention.oldest, h);
            if oldest <= base.retention.oldest {
                let (oldest, protected) = (base.retention.oldest, base.retention.protected.clone());
                break (base, oldest, protected);
            }
            // Only versions tagged now stay protected: deleting a tag releases its version.
            let protected: BTreeSet<u64> = self
                .list_tags()
                .await?
                .into_iter()
                .map(|t| t.version)
                .filter(|v| *v < oldest && base.retention.retains(*v))
                .collect();
            let mut txn = Txn::new(Operation::Vacuum {
                oldest_retained: oldest,
            });
            txn.retention = Some(Retention {
                oldest,
                protected: protected.clone(),
            });
            match self.try_commit(&base, txn).await {
                Ok(info) => {
                    report.version = Some(info.version);
                    break (self.manifest(info.version).await?, oldest, protected);
                }
                Err(e) if e.is_conflict() && attempt < self.options().max_commit_retries => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        report.oldest_retained = oldest;
        // Tags created while we committed protect their versions too.
        let mut keep: BTreeSet<u64> = protected.clone();
        keep.extend(
            self.list_tags()
                .await?
                .into_iter()
                .map(|t| t.version)
                .filter(|v| *v < oldest),
        );
        // Retained versions must stay readable without the removed records: checkpoint the
        // oldest retained version, every kept older version, and rollbacks into the removed range.
        let mut referenced: HashSet<String> = HashSet::new();
        let mut needs_checkpoint: BTreeSet<u64> = keep.clone();
        needs_checkpoint.insert(oldest);
        let id = &self.inner.id;
        let records = self.inner.log.range(id, oldest, head.version).await?;
        if records.len() as u64 != head.version - oldest + 1 {
            return Err(Error::corrupt(
                format!("dataset {}", self.name()),
                format!(
                    "the version log holds {} of versions {oldest}..={}",
                    records.len(),
                    head.version
                ),
            ));
        }
        for (v, bytes) in records {
            let rec = VersionRecord::decode(&self.record_name(v), &bytes)?;
            if let Some(b) = rec.base
                && b < oldest
                && !keep.contains(&b)
            {
                needs_checkpoint.insert(v);
            }
            referenced.extend(rec.add.iter().map(|s| s.path.clone()));
        }
        for &v in &needs_checkpoint {
            let m = self.manifest(v).await?;
            referenced.extend(m.live_segments().map(|s| s.meta.path.clone()));
            if self.load_checkpoint(v).await?.is_none() {
                self.write_checkpoint(&m).await?;
            }
        }
        // Version records below the retention line (the log trims from its oldest end,
        // moving kept versions' records aside first).
        report.versions_removed = self.inner.log.trim(id, oldest, &keep).await?;
        self.changed();
        let cutoff = started - self.options().blob_grace_ms;
        for blob in self
            .inner
            .blobs
            .list(&layout::checkpoints_prefix(id))
            .await?
        {
            let v = layout::checkpoint_version(id, &blob.path);
            if let Some(v) = v
                && v < oldest
                && !keep.contains(&v)
            {
                self.inner.blobs.delete(&blob.path).await?;
                report.blobs_removed += 1;
                report.bytes_removed += blob.size;
            }
        }
        for blob in self.inner.blobs.list(&layout::segments_prefix(id)).await? {
            if !referenced.contains(&blob.path) && blob.last_modified_ms < cutoff {
                self.inner.blobs.delete(&blob.path).await?;
                report.blobs_removed += 1;
                report.bytes_removed += blob.size;
            }
        }
        info!(dataset = self.name(), ?report, "vacuumed");
        Ok(report)
    }
}
