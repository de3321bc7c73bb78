//! The version log over any [`MetaStore`]: one record per version under
//! `tables/{id}/versions/`, committed by `put_if_absent`; kept records under `kept/`;
//! the newest version found by probing forward from a head hint (rewritten every 32
//! versions, probed 8 at a time), so finding the head costs a few reads, not a listing.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use strata_storage::{Error, LogEntry, MetaStore, Result, VersionLog};
use tracing::warn;

use crate::layout;

/// How often (in versions) the head hint is rewritten.
const HINT_EVERY: u64 = 32;
/// Versions after the hint looked for at once when finding the head.
const PROBE_WINDOW: u64 = 8;

#[derive(Clone, Debug)]
pub struct MetaLog {
    meta: Arc<dyn MetaStore>,
}

impl MetaLog {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Self { meta }
    }

    async fn numbers(&self, prefix: &str) -> Result<Vec<u64>> {
        self.meta
            .list(prefix)
            .await?
            .iter()
            .map(|k| {
                layout::version_of(prefix, k).ok_or_else(|| Error::Corrupt {
                    kind: "version key",
                    path: k.clone(),
                    reason: "not a version number".into(),
                })
            })
            .collect()
    }

    async fn hint(&self, table: &str) -> Result<u64> {
        Ok(match self.meta.get(&layout::head_hint_key(table)).await? {
            Some(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0),
            None => 0,
        })
    }

    async fn set_hint(&self, table: &str, v: u64) {
        if let Err(e) = self
            .meta
            .put(&layout::head_hint_key(table), Bytes::from(v.to_string()))
            .await
        {
            warn!(table, version = v, error = %e, "could not update the head hint");
        }
    }
}

#[async_trait]
impl VersionLog for MetaLog {
    async fn commit(&self, table: &str, version: u64, record: Bytes) -> Result<()> {
        self.meta
            .put_if_absent(&layout::version_key(table, version), record)
            .await?;
        if version.is_multiple_of(HINT_EVERY) {
            self.set_hint(table, version).await;
        }
        Ok(())
    }

    async fn get(&self, table: &str, version: u64) -> Result<Option<Bytes>> {
        for key in [
            layout::version_key(table, version),
            layout::kept_key(table, version),
        ] {
            if let Some(bytes) = self.meta.get(&key).await? {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    async fn contains(&self, table: &str, version: u64) -> Result<bool> {
        Ok(self
            .meta
            .get(&layout::version_key(table, version))
            .await?
            .is_some())
    }

    async fn latest(&self, table: &str, known: u64) -> Result<Option<u64>> {
        let mut v = self.hint(table).await?.max(known);
        // The live range is contiguous up to the head, so probing forward from any
        // version in it finds the head. A start point vacuum removed means a listing
        // (and a fresh hint).
        if v == 0 || !self.contains(table, v).await? {
            match self.numbers(&layout::versions_prefix(table)).await?.last() {
                Some(&last) => {
                    v = last;
                    self.set_hint(table, v).await;
                }
                None => return Ok(None),
            }
        }
        // Forward in windows read at once: the hint may be up to HINT_EVERY behind.
        loop {
            let window = futures::future::try_join_all(
                (1..=PROBE_WINDOW).map(|i| self.contains(table, v + i)),
            )
            .await?;
            match window.iter().position(|&present| !present) {
                Some(k) => return Ok(Some(v + k as u64)),
                None => v += PROBE_WINDOW,
            }
        }
    }

    async fn range(&self, table: &str, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>> {
        let live = self.numbers(&layout::versions_prefix(table)).await?;
        futures::stream::iter(live.into_iter().filter(|v| (from..=to).contains(v)))
            .map(|v| async move {
                let key = layout::version_key(table, v);
                Ok::<_, Error>(self.meta.get(&key).await?.map(|b| (v, b)))
            })
            .buffered(16)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await
    }

    async fn list(&self, table: &str) -> Result<Vec<LogEntry>> {
        let mut all: Vec<LogEntry> = self
            .numbers(&layout::versions_prefix(table))
            .await?
            .into_iter()
            .map(|version| LogEntry {
                version,
                kept: false,
            })
            .collect();
        all.extend(
            self.numbers(&layout::kept_prefix(table))
                .await?
                .into_iter()
                .map(|version| LogEntry {
                    version,
                    kept: true,
                }),
        );
        all.sort_unstable();
        all.dedup_by_key(|e| e.version);
        Ok(all)
    }

    async fn trim(&self, table: &str, oldest: u64, keep: &BTreeSet<u64>) -> Result<u64> {
        // Kept records are copied out of the live range first, and the range is trimmed
        // from its oldest end, so a reader probing forward never meets a hole.
        let live = self.numbers(&layout::versions_prefix(table)).await?;
        for &v in keep.iter().filter(|v| **v < oldest) {
            if live.binary_search(&v).is_ok()
                && let Some(bytes) = self.meta.get(&layout::version_key(table, v)).await?
            {
                self.meta.put(&layout::kept_key(table, v), bytes).await?;
            }
        }
        let mut removed = 0;
        for &v in live.iter().take_while(|v| **v < oldest) {
            self.meta.delete(&layout::version_key(table, v)).await?;
            if !keep.contains(&v) {
                removed += 1;
            }
        }
        for v in self.numbers(&layout::kept_prefix(table)).await? {
            if v < oldest && !keep.contains(&v) {
                self.meta.delete(&layout::kept_key(table, v)).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn remove(&self, table: &str, version: u64) -> Result<()> {
        self.meta
            .delete(&layout::version_key(table, version))
            .await?;
        self.meta.delete(&layout::kept_key(table, version)).await
    }

    async fn purge(&self, table: &str) -> Result<()> {
        for prefix in [layout::versions_prefix(table), layout::kept_prefix(table)] {
            for key in self.meta.list(&prefix).await? {
                self.meta.delete(&key).await?;
            }
        }
        self.meta.delete(&layout::head_hint_key(table)).await
    }
}
