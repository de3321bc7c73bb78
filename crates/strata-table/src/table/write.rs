//! Writes: rows conformed to the schema, split by shard, sorted, encoded as segments and
//! committed as appends or upserts (deletion vectors on the rows they replace); deletes
//! by key and by predicate.

use super::*;

/// Primary keys to delete, encoded, with the rows of each shard.
pub(super) struct KeysByShard {
    encoded: arrow::row::Rows,
    by_shard: BTreeMap<u32, Vec<usize>>,
    rows: usize,
}

impl KeysByShard {
    /// Each shard's keys as a set of encoded keys.
    fn keysets(&self) -> BTreeMap<u32, HashSet<&[u8]>> {
        self.by_shard
            .iter()
            .map(|(shard, rows)| {
                (
                    *shard,
                    rows.iter().map(|&i| self.encoded.row(i).data()).collect(),
                )
            })
            .collect()
    }
}

/// New rows of one shard, sorted by primary key, and the segments holding them.
pub(super) struct ShardWrite {
    shard: u32,
    batch: RecordBatch,
    segments: Vec<SegmentMeta>,
}

impl Table {
    /// Checks `batch` against `schema` and returns it with columns in schema order:
    /// no missing, extra or mistyped columns, no nulls in non-nullable columns.
    pub fn conform(&self, schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
        let given = batch.schema();
        let mut seen = std::collections::HashSet::with_capacity(given.fields().len());
        for f in given.fields() {
            // A name given twice would be read from its first column only, silently
            // dropping the other.
            if !seen.insert(f.name()) {
                return Err(Error::SchemaMismatch(format!(
                    "column {:?} is given more than once",
                    f.name()
                )));
            }
            if schema.field_with_name(f.name()).is_err() {
                return Err(Error::SchemaMismatch(format!(
                    "column {:?} is not in dataset {:?}",
                    f.name(),
                    self.name()
                )));
            }
        }
        let mut cols = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let idx = given.index_of(field.name()).map_err(|_| {
                Error::SchemaMismatch(format!(
                    "column {:?} of dataset {:?} is missing",
                    field.name(),
                    self.name()
                ))
            })?;
            let col = batch.column(idx);
            if col.data_type() != field.data_type() {
                return Err(Error::SchemaMismatch(format!(
                    "column {:?} has type {}, dataset {:?} expects {}",
                    field.name(),
                    col.data_type(),
                    self.name(),
                    field.data_type()
                )));
            }
            if !field.is_nullable() && col.null_count() > 0 {
                let what = if self.inner.spec.primary_key().any(|k| k == field.name()) {
                    "key column"
                } else {
                    "non-nullable column"
                };
                return Err(Error::SchemaMismatch(format!(
                    "{what} {:?} contains {} null(s)",
                    field.name(),
                    col.null_count()
                )));
            }
            cols.push(col.clone());
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }

    /// Splits rows by shard, sorts each shard by primary key (deduplicating when the
    /// dataset has a row key) and writes the segments. The CPU work (sort, Parquet
    /// encoding) runs on blocking threads, shards in parallel, so a large write neither
    /// stalls the async runtime nor uses only one core.
    pub(super) async fn write_shards(&self, batches: &[RecordBatch]) -> Result<Vec<ShardWrite>> {
        let spec = &self.inner.spec;
        // Rows are gathered per shard straight from the input batches (one copy), not
        // concatenated first.
        let mut buckets: BTreeMap<u32, Vec<(usize, usize)>> = BTreeMap::new();
        for (b, batch) in batches.iter().enumerate() {
            let shards = shard_of_rows(batch, &self.inner.keys.partition_indices, spec.shards)?;
            for (row, s) in shards.iter().enumerate() {
                buckets.entry(*s).or_default().push((b, row));
            }
        }
        let dir = layout::segments_dir(&self.inner.id);
        let single = buckets.len() == 1;
        let tasks: Vec<_> = buckets
            .into_iter()
            .map(|(shard, rows)| {
                let inner = self.inner.clone();
                let batches = batches.to_vec();
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || -> Result<_> {
                    let part = if single && batches.len() == 1 {
                        batches[0].clone()
                    } else {
                        let refs: Vec<&RecordBatch> = batches.iter().collect();
                        compute::interleave_record_batch(&refs, &rows)?
                    };
                    let sorted = sort_and_dedupe(&inner.keys, &part, inner.spec.has_row_key())?;
                    let encoded =
                        encode_segments(&dir, shard, &inner.keys, &sorted, &inner.options.segment)?;
                    Ok((shard, sorted, encoded))
                })
            })
            .collect();
        let mut encoded = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(result) => encoded.push(result?),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => {
                    return Err(Error::Storage(StorageError::Backend(format!(
                        "segment encoding cancelled: {e}"
                    ))));
                }
            }
        }
        let mut out = Vec::with_capacity(encoded.len());
        for (shard, sorted, segments) in encoded {
            let segments = put_segments(self.inner.blobs.as_ref(), segments).await?;
            out.push(ShardWrite {
                shard,
                batch: sorted,
                segments,
            });
        }
        Ok(out)
    }

    pub(super) async fn delete_blobs(&self, segments: impl IntoIterator<Item = &SegmentMeta>) {
        for s in segments {
            if let Err(e) = self.inner.blobs.delete(&s.path).await {
                warn!(path = s.path, error = %e, "could not remove unused segment; vacuum will");
            }
        }
    }

    /// Writes rows as one new version. With a row key, rows replace any live row with the
    /// same primary key (an upsert; within the batches the last row wins); without, they
    /// are appended. `producers` are exactly-once marks committed atomically with the rows:
    /// if every mark is already at or above the one given, nothing is written.
    pub async fn write(
        &self,
        batches: &[RecordBatch],
        producers: BTreeMap<String, u64>,
    ) -> Result<WriteOutcome> {
        self.write_at(batches, producers, None).await
    }

    /// [`Table::write`], committed only on top of `base_version` when given: a conflict
    /// if another commit came first (for writes computed from that version's rows, such
    /// as `UPDATE`, which must look again).
    pub async fn write_at(
        &self,
        batches: &[RecordBatch],
        producers: BTreeMap<String, u64>,
        base_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        self.write_inner(batches, None, producers, base_version)
            .await
    }

    /// Upserts `rows` and deletes the live rows whose primary keys are in `keys` (the
    /// primary key columns), as one version right after `base_version` (a conflict,
    /// nothing committed, when another commit came first). `MERGE` computes both from
    /// that version's rows. A key both written and deleted is refused; a dataset without
    /// a row key has no keys to merge by.
    pub async fn merge_at(
        &self,
        rows: &[RecordBatch],
        keys: &RecordBatch,
        base_version: u64,
    ) -> Result<VersionInfo> {
        if !self.inner.spec.has_row_key() {
            return Err(Error::InvalidArgument(format!(
                "dataset {:?} has no row key: rows cannot be merged by key",
                self.name()
            )));
        }
        match self
            .write_inner(rows, Some(keys), BTreeMap::new(), Some(base_version))
            .await?
        {
            WriteOutcome::Committed(info) => Ok(info),
            WriteOutcome::Duplicate { .. } => Err(Error::InvalidArgument(
                "a merge without producer marks was taken for a duplicate".into(),
            )),
        }
    }

    async fn write_inner(
        &self,
        batches: &[RecordBatch],
        delete_keys: Option<&RecordBatch>,
        producers: BTreeMap<String, u64>,
        base_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let head = self.head().await?;
        if is_duplicate(&head, &producers) {
            return Ok(WriteOutcome::Duplicate { head: head.version });
        }
        let schema = head.schema.clone();
        let conformed = batches
            .iter()
            .map(|b| self.conform(&schema, b))
            .collect::<Result<Vec<_>>>()?;
        let deleted = delete_keys.map(|k| self.keys_by_shard(k)).transpose()?;
        if let Some(d) = &deleted {
            self.check_disjoint(&conformed, d)?;
        }
        let since = now_ms();
        let writes = self.write_shards(&conformed).await?;
        let upsert = self.inner.spec.has_row_key();
        let new_segments: Vec<SegmentMeta> = writes
            .iter()
            .flat_map(|w| w.segments.iter().cloned())
            .collect();
        let rows_added: u64 = new_segments.iter().map(|s| s.rows).sum();
        // Set (to head + 1) when a concurrent commit turned out to hold these marks already.
        let duplicate_head = std::sync::atomic::AtomicU64::new(0);
        let result = self
            .commit_loop(|base| {
                let writes = &writes;
                let deleted = &deleted;
                let producers = &producers;
                let new_segments = &new_segments;
                let schema = &schema;
                let duplicate_head = &duplicate_head;
                async move {
                    if let Some(expected) = base_version
                        && base.version != expected
                    {
                        return Err(Error::Conflict {
                            dataset: self.name().to_string(),
                            reason: format!(
                                "the rows were computed at version {expected}, the head is now {}",
                                base.version
                            ),
                        });
                    }
                    if is_duplicate(&base, producers) {
                        duplicate_head
                            .store(base.version + 1, std::sync::atomic::Ordering::Relaxed);
                        return Err(Error::InvalidArgument("duplicate".into()));
                    }
                    if !schema_compatible(&base.schema, schema) {
                        return Err(Error::Conflict {
                            dataset: self.name().to_string(),
                            reason: "the schema changed while the rows were being written".into(),
                        });
                    }
                    let mut txn = Txn::new(match (upsert, deleted) {
                        (true, Some(_)) => Operation::Merge,
                        (true, None) => Operation::Upsert,
                        (false, _) => Operation::Append,
                    });
                    if upsert {
                        let extra = deleted
                            .as_ref()
                            .map(KeysByShard::keysets)
                            .unwrap_or_default();
                        let (deletes, remove, removed) =
                            self.resolve_upserts(&base, writes, &extra).await?;
                        txn.deletes = deletes;
                        txn.remove = remove;
                        txn.rows_removed = removed;
                    }
                    txn.add = new_segments.clone();
                    txn.rows_added = rows_added;
                    txn.producers = producers.clone();
                    txn.blobs_since_ms = Some(since);
                    Ok(txn)
                }
            })
            .await;
        let duplicate = duplicate_head.load(std::sync::atomic::Ordering::Relaxed);
        if duplicate > 0 {
            self.delete_blobs(&new_segments).await;
            return Ok(WriteOutcome::Duplicate {
                head: duplicate - 1,
            });
        }
        match result {
            Ok(info) => Ok(WriteOutcome::Committed(info)),
            Err(e) => {
                if e.is_conflict() {
                    self.delete_blobs(&new_segments).await;
                }
                Err(e)
            }
        }
    }

    /// Finds the live rows that the new rows replace, and those whose keys are in
    /// `extra` (keys deleted in the same version, by shard). Only segments of the shards
    /// touched are considered; of a shard only written to, only segments whose key
    /// ranges overlap the new keys. One pass per shard, so a segment hit by both gets
    /// one deletion vector.
    pub(super) async fn resolve_upserts(
        &self,
        base: &Manifest,
        writes: &[ShardWrite],
        extra: &BTreeMap<u32, HashSet<&[u8]>>,
    ) -> Result<(Vec<DvUpdate>, Vec<SegmentRef>, u64)> {
        let mut deletes = Vec::new();
        let mut removes = Vec::new();
        let mut removed = 0;
        let mut written = HashSet::new();
        for w in writes {
            if w.batch.num_rows() == 0 {
                continue;
            }
            written.insert(w.shard);
            let rows = self.inner.keys.encode(&w.batch)?;
            let mut keyset: HashSet<&[u8]> = rows.iter().map(|r| r.data()).collect();
            let candidates: Vec<&LiveSegment> = match extra.get(&w.shard) {
                Some(more) => {
                    keyset.extend(more.iter().copied());
                    base.shard_segments(w.shard).collect()
                }
                None => {
                    let first = w.segments.first().expect("rows make segments");
                    let last = w.segments.last().expect("rows make segments");
                    let bounds =
                        KeyBounds::new(&self.inner.spec, &first.pk_min, &last.pk_max, &w.segments);
                    base.shard_segments(w.shard)
                        .filter(|s| bounds.may_overlap(&s.meta))
                        .collect()
                }
            };
            let (d, r, n) = self.mark_keys(base, &candidates, &keyset).await?;
            deletes.extend(d);
            removes.extend(r);
            removed += n;
        }
        for (shard, keyset) in extra {
            if written.contains(shard) {
                continue;
            }
            let candidates: Vec<&LiveSegment> = base.shard_segments(*shard).collect();
            let (d, r, n) = self.mark_keys(base, &candidates, keyset).await?;
            deletes.extend(d);
            removes.extend(r);
            removed += n;
        }
        Ok((deletes, removes, removed))
    }

    /// Primary keys (the key columns, in any order and type the dataset's conform
    /// accepts) encoded and grouped by shard.
    fn keys_by_shard(&self, keys: &RecordBatch) -> Result<KeysByShard> {
        let spec = &self.inner.spec;
        let pk_schema = Arc::new(Schema::new(
            spec.primary_key()
                .map(|n| spec.schema.field_with_name(n).cloned())
                .collect::<std::result::Result<Vec<Field>, _>>()?,
        ));
        let keys = self.conform(&pk_schema, keys)?;
        let partition: Vec<usize> = (0..spec.partition_key.len()).collect();
        let shards = shard_of_rows(&keys, &partition, spec.shards)?;
        let encoded = self.inner.keys.encode_columns(keys.columns())?;
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, s) in shards.iter().enumerate() {
            by_shard.entry(*s).or_default().push(i);
        }
        Ok(KeysByShard {
            encoded,
            by_shard,
            rows: keys.num_rows(),
        })
    }

    /// Refuses a write whose rows and deleted keys share a key: which should win?
    fn check_disjoint(&self, rows: &[RecordBatch], deleted: &KeysByShard) -> Result<()> {
        let gone: HashSet<&[u8]> = deleted.encoded.iter().map(|r| r.data()).collect();
        for b in rows {
            let encoded = self.inner.keys.encode(b)?;
            if encoded.iter().any(|r| gone.contains(r.data())) {
                return Err(Error::InvalidArgument(
                    "a key is both written and deleted in one version".into(),
                ));
            }
        }
        Ok(())
    }

    /// Marks, in `candidates`, the live rows whose primary key is in `keyset`.
    pub(super) async fn mark_keys(
        &self,
        base: &Manifest,
        candidates: &[&LiveSegment],
        keyset: &HashSet<&[u8]>,
    ) -> Result<(Vec<DvUpdate>, Vec<SegmentRef>, u64)> {
        let keys = &self.inner.keys;
        let reads = read_segments(
            self.inner.blobs.clone(),
            base.schema.clone(),
            keys.pk_indices.clone(),
            candidates.iter().map(|s| (*s).clone()).collect(),
            false,
            self.options().read_parallelism,
        );
        let mut reads = std::pin::pin!(reads);
        let mut deletes = Vec::new();
        let mut removes = Vec::new();
        let mut removed = 0;
        while let Some(next) = reads.next().await {
            let (seg, batches) = next?;
            let seg = &seg;
            let mut hits = RoaringBitmap::new();
            let mut offset = 0u32;
            for b in &batches {
                let cols: Vec<ArrayRef> = b.columns().to_vec();
                let encoded = keys.encode_columns(&cols)?;
                for (i, row) in encoded.iter().enumerate() {
                    if keyset.contains(row.as_ref()) {
                        hits.insert(offset + i as u32);
                    }
                }
                offset += b.num_rows() as u32;
            }
            if let Some(d) = &seg.deleted {
                hits -= d.as_ref();
            }
            if hits.is_empty() {
                continue;
            }
            removed += hits.len();
            self.push_deletion(seg, hits, &mut deletes, &mut removes);
        }
        Ok((deletes, removes, removed))
    }

    pub(super) fn push_deletion(
        &self,
        seg: &LiveSegment,
        newly: RoaringBitmap,
        deletes: &mut Vec<DvUpdate>,
        removes: &mut Vec<SegmentRef>,
    ) {
        let mut all = seg.deleted.as_deref().cloned().unwrap_or_default();
        all |= newly;
        if all.len() >= seg.meta.rows {
            removes.push(SegmentRef {
                shard: seg.meta.shard,
                id: seg.meta.id.clone(),
            });
        } else {
            deletes.push(DvUpdate {
                shard: seg.meta.shard,
                id: seg.meta.id.clone(),
                deleted: Dv(Arc::new(all)),
            });
        }
    }

    /// Deletes the rows with the given primary keys (`keys` holds the primary key
    /// columns). For a dataset without row key, the key is the partition key and every
    /// row of the partition goes. Always commits one version.
    pub async fn delete_keys(&self, keys: &RecordBatch) -> Result<VersionInfo> {
        self.delete_keys_at(keys, None).await
    }

    /// [`Self::delete_keys`] as the version right after `base`: fails with
    /// [`Error::Conflict`] (and commits nothing) when the head is no longer `base`. For
    /// keys found by reading version `base`: a row written since under one of those keys
    /// was not seen by that read and must not be deleted.
    pub async fn delete_keys_at(
        &self,
        keys: &RecordBatch,
        base_version: Option<u64>,
    ) -> Result<VersionInfo> {
        let keys = self.keys_by_shard(keys)?;
        let n = keys.rows;
        self.commit_loop(|base| {
            let keys = &keys;
            async move {
                if let Some(expected) = base_version
                    && base.version != expected
                {
                    return Err(Error::Conflict {
                        dataset: self.name().to_string(),
                        reason: format!(
                            "the keys to delete were found at version {expected}, the head is now {}",
                            base.version
                        ),
                    });
                }
                let mut txn = Txn::new(Operation::Delete {
                    predicate: format!("primary key in {n} key(s)"),
                });
                for (shard, keyset) in keys.keysets() {
                    let candidates: Vec<&LiveSegment> = base.shard_segments(shard).collect();
                    let (d, r, removed) = self.mark_keys(&base, &candidates, &keyset).await?;
                    txn.deletes.extend(d);
                    txn.remove.extend(r);
                    txn.rows_removed += removed;
                }
                Ok(txn)
            }
        })
        .await
    }

    /// Deletes every live row matching `predicate` as one new version. Segments whose
    /// statistics rule the predicate out are not read.
    pub async fn delete_where(&self, predicate: &Predicate) -> Result<VersionInfo> {
        self.commit_loop(|base| async move {
            let bound = predicate.bind(&base.schema)?;
            let columns: Vec<usize> = bound
                .columns()
                .iter()
                .map(|c| base.schema.index_of(c))
                .collect::<std::result::Result<_, _>>()?;
            let mut txn = Txn::new(Operation::Delete {
                predicate: predicate.to_string(),
            });
            let candidates: Vec<&LiveSegment> = base
                .live_segments()
                .filter(|s| bound.may_match(&|c| s.meta.column_stats(c), s.meta.rows))
                .collect();
            let reads = read_segments(
                self.inner.blobs.clone(),
                base.schema.clone(),
                columns.clone(),
                candidates.into_iter().cloned().collect(),
                false,
                self.options().read_parallelism,
            );
            let mut reads = std::pin::pin!(reads);
            while let Some(next) = reads.next().await {
                let (seg, batches) = next?;
                let mut hits = RoaringBitmap::new();
                let mut offset = 0u32;
                for b in &batches {
                    let mask = bound.evaluate(b)?;
                    for (i, m) in mask.iter().enumerate() {
                        if m == Some(true) {
                            hits.insert(offset + i as u32);
                        }
                    }
                    offset += b.num_rows() as u32;
                }
                if let Some(d) = &seg.deleted {
                    hits -= d.as_ref();
                }
                if !hits.is_empty() {
                    txn.rows_removed += hits.len();
                    self.push_deletion(&seg, hits, &mut txn.deletes, &mut txn.remove);
                }
            }
            Ok(txn)
        })
        .await
    }
}

/// Bounds of a set of new keys, to skip segments that cannot hold any of them.
pub(super) struct KeyBounds {
    pk_min: Vec<Value>,
    pk_max: Vec<Value>,
    /// Per row-key column: (name, min, max) over the new rows.
    row_key: Vec<(String, Option<Value>, Option<Value>)>,
}

impl KeyBounds {
    fn new(
        spec: &DatasetSpec,
        pk_min: &[Value],
        pk_max: &[Value],
        segments: &[SegmentMeta],
    ) -> Self {
        let row_key = spec
            .row_key
            .iter()
            .map(|c| {
                let stats: Vec<_> = segments.iter().map(|s| s.column_stats(c)).collect();
                let min = stats
                    .iter()
                    .map(|s| s.min.clone())
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().min());
                let max = stats
                    .iter()
                    .map(|s| s.max.clone())
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max());
                (c.clone(), min, max)
            })
            .collect();
        Self {
            pk_min: pk_min.to_vec(),
            pk_max: pk_max.to_vec(),
            row_key,
        }
    }

    fn may_overlap(&self, seg: &SegmentMeta) -> bool {
        if seg.pk_max < self.pk_min || seg.pk_min > self.pk_max {
            return false;
        }
        self.row_key.iter().all(|(c, min, max)| {
            let s = seg.column_stats(c);
            match (min, max, &s.min, &s.max) {
                (Some(nmin), Some(nmax), Some(smin), Some(smax)) => !(smax < nmin || smin > nmax),
                _ => true,
            }
        })
    }
}
