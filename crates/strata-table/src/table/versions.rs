//! Reading the version log: the head, manifests (checkpoint + records), version specs,
//! time travel and listings.

use std::collections::HashMap;

use super::*;

impl Table {
    /// What error messages call version `v`'s record.
    pub(super) fn record_name(&self, v: u64) -> String {
        format!("version {v} of dataset {}", self.name())
    }

    pub(super) async fn record(&self, v: u64) -> Result<Option<VersionRecord>> {
        match self.inner.log.get(&self.inner.id, v).await? {
            Some(bytes) => Ok(Some(VersionRecord::decode(&self.record_name(v), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether `v` is in the log's live range (contiguous, ending at the head).
    pub(super) async fn in_log(&self, v: u64) -> Result<bool> {
        Ok(self.inner.log.contains(&self.inner.id, v).await?)
    }

    pub(super) async fn load_checkpoint(&self, v: u64) -> Result<Option<Manifest>> {
        let path = layout::checkpoint_path(&self.inner.id, v);
        match self.inner.blobs.get(&path).await {
            Ok(bytes) => Ok(Some(decode_checkpoint(&path, &bytes)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn write_checkpoint(&self, m: &Manifest) -> Result<()> {
        let bytes = encode_checkpoint(m)?;
        self.inner
            .blobs
            .put(
                &layout::checkpoint_path(&self.inner.id, m.version),
                Bytes::from(bytes),
            )
            .await?;
        Ok(())
    }

    /// The newest committed version, asked of the version log from the newest version
    /// this handle has seen (a few reads on a MetaStore log, one on Cassandra's).
    pub async fn head_version(&self) -> Result<u64> {
        let known = self.cached().map_or(0, |m| m.version);
        self.inner
            .log
            .latest(&self.inner.id, known)
            .await?
            .ok_or_else(|| Error::corrupt(format!("dataset {}", self.name()), "has no versions"))
    }

    /// The manifest of the head version.
    pub async fn head(&self) -> Result<Arc<Manifest>> {
        let v = self.head_version().await?;
        self.manifest(v).await
    }

    /// The manifest of version `v`: the nearest checkpoint or cached manifest at or
    /// below it, plus the records after it (a rollback record jumps to its target).
    pub async fn manifest(&self, v: u64) -> Result<Arc<Manifest>> {
        let cached = self.cached();
        if let Some(c) = &cached
            && c.version == v
        {
            return Ok(c.clone());
        }
        let interval = self.options().checkpoint_interval.max(1);
        // The records between the checkpoint slot at or below `v` (or the cached
        // manifest, when nearer) and `v` are read as one range of the log, not one after
        // another (a dataset's first open after a restart reads up to `interval` of
        // them). A rollback record jumps out of that range; what lies beyond is read as
        // it comes.
        let floor = (v - v % interval).max(cached.as_ref().map_or(0, |c| c.version));
        let mut ahead = HashMap::new();
        if v > floor + 1 {
            for (n, bytes) in self.inner.log.range(&self.inner.id, floor + 1, v).await? {
                ahead.insert(n, VersionRecord::decode(&self.record_name(n), &bytes)?);
            }
        }
        let mut chain: Vec<VersionRecord> = Vec::new();
        let mut cur = v;
        let mut base = loop {
            if let Some(c) = &cached
                && c.version == cur
            {
                break (**c).clone();
            }
            if cur.is_multiple_of(interval)
                && let Some(m) = self.load_checkpoint(cur).await?
            {
                break m;
            }
            let rec = match ahead.remove(&cur) {
                Some(rec) => Some(rec),
                None => self.record(cur).await?,
            };
            match rec {
                Some(rec) => {
                    let prev = rec.base.unwrap_or(cur - 1);
                    let first = cur == 1;
                    chain.push(rec);
                    if first {
                        break Manifest::empty(self.inner.spec.schema.clone());
                    }
                    cur = prev;
                }
                None => {
                    // `cur` was vacuumed (or never existed). Vacuum leaves a checkpoint at
                    // every retained version whose predecessor it removed.
                    if let Some(last) = chain.pop()
                        && let Some(m) = self.load_checkpoint(last.version).await?
                    {
                        break m;
                    }
                    return Err(Box::pin(self.missing_version(v)).await);
                }
            }
        };
        for rec in chain.iter().rev() {
            base.apply(rec)?;
        }
        let m = Arc::new(base);
        self.remember(&m);
        Ok(m)
    }

    pub(super) async fn missing_version(&self, v: u64) -> Error {
        let head = match self.head_version().await {
            Ok(h) => h,
            Err(e) => return e,
        };
        if v == 0 || v > head {
            return Error::VersionNotFound {
                dataset: self.name().to_string(),
                version: v,
                head,
            };
        }
        let oldest = match self.manifest(head).await {
            Ok(m) => m.retention.oldest,
            Err(e) => return e,
        };
        Error::VersionVacuumed {
            dataset: self.name().to_string(),
            version: v,
            oldest,
        }
    }

    /// Resolves a version spec to a version number that exists.
    pub async fn resolve(&self, spec: &VersionSpec) -> Result<u64> {
        match spec {
            VersionSpec::Head => self.head_version().await,
            VersionSpec::Version(v) => {
                let head = self.head_version().await?;
                if *v == 0 || *v > head {
                    return Err(Error::VersionNotFound {
                        dataset: self.name().to_string(),
                        version: *v,
                        head,
                    });
                }
                let retention = self.manifest(head).await?.retention.clone();
                if !retention.retains(*v) {
                    return Err(Error::VersionVacuumed {
                        dataset: self.name().to_string(),
                        version: *v,
                        oldest: retention.oldest,
                    });
                }
                Ok(*v)
            }
            VersionSpec::Tag(tag) => {
                let key = layout::tag_key(&self.inner.id, tag);
                let bytes = self
                    .inner
                    .meta
                    .get(&key)
                    .await?
                    .ok_or_else(|| Error::TagNotFound {
                        dataset: self.name().to_string(),
                        tag: tag.clone(),
                    })?;
                let info: TagInfo =
                    serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?;
                Ok(info.version)
            }
            VersionSpec::Timestamp(t) => self.version_at_time(*t).await,
        }
    }

    /// The latest retained version committed at or before `t` (ms since the epoch).
    /// Commit timestamps never decrease, so this is a binary search over records.
    pub(super) async fn version_at_time(&self, t: i64) -> Result<u64> {
        let head = self.head_version().await?;
        let retention = self.manifest(head).await?.retention.clone();
        let ts = |v: u64| async move {
            self.record(v)
                .await?
                .map(|r| r.timestamp_ms)
                .ok_or_else(|| Error::corrupt(format!("version {v}"), "record missing"))
        };
        let (mut lo, mut hi) = (retention.oldest, head);
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            if ts(mid).await? <= t {
                found = Some(mid);
                lo = mid + 1;
            } else {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            }
        }
        if found.is_none() {
            for &p in retention.protected.iter().rev() {
                if ts(p).await? <= t {
                    found = Some(p);
                    break;
                }
            }
        }
        found.ok_or_else(|| Error::NoVersionAtTime {
            dataset: self.name().to_string(),
            timestamp_ms: t,
        })
    }

    /// A consistent, immutable view of one version.
    pub async fn snapshot(&self, at: &VersionSpec) -> Result<Snapshot> {
        let v = self.resolve(at).await?;
        Ok(Snapshot {
            table: self.clone(),
            manifest: self.manifest(v).await?,
        })
    }

    /// The view of version `v`, which the caller knows is live (the head it resolved,
    /// say): not checked against the head and retention, so nothing is read when `v`'s
    /// manifest is cached.
    pub async fn known_snapshot(&self, v: u64) -> Result<Snapshot> {
        Ok(Snapshot {
            table: self.clone(),
            manifest: self.manifest(v).await?,
        })
    }

    /// Version records, oldest first (vacuumed versions are gone).
    pub async fn list_versions(&self) -> Result<Vec<VersionInfo>> {
        let entries = self.inner.log.list(&self.inner.id).await?;
        let records = futures::stream::iter(entries.into_iter().map(|e| e.version))
            .map(|v| async move { self.record(v).await })
            .buffered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(records.iter().flatten().map(VersionInfo::from).collect())
    }
}
