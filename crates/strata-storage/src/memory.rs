//! In-memory backends for tests: same semantics as the durable ones, no durability.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::traits::{BlobMeta, BlobStore, MetaStore, check_range, validate_path, validate_prefix};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A [`BlobStore`] in a map.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: RwLock<BTreeMap<String, (Bytes, i64)>>,
}

impl MemoryBlobStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn blob_not_found(path: &str) -> Error {
    Error::NotFound {
        kind: "blob",
        path: path.to_string(),
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        validate_path(path)?;
        self.blobs
            .write()
            .expect("lock poisoned")
            .insert(path.to_string(), (data, now_ms()));
        Ok(())
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        validate_path(path)?;
        let blobs = self.blobs.read().expect("lock poisoned");
        let (data, _) = blobs.get(path).ok_or_else(|| blob_not_found(path))?;
        check_range(path, &range, data.len() as u64)?;
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    async fn head(&self, path: &str) -> Result<BlobMeta> {
        validate_path(path)?;
        let blobs = self.blobs.read().expect("lock poisoned");
        let (data, ts) = blobs.get(path).ok_or_else(|| blob_not_found(path))?;
        Ok(BlobMeta {
            path: path.to_string(),
            size: data.len() as u64,
            last_modified_ms: *ts,
        })
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_path(path)?;
        self.blobs.write().expect("lock poisoned").remove(path);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        validate_prefix(prefix)?;
        let blobs = self.blobs.read().expect("lock poisoned");
        Ok(blobs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (data, ts))| BlobMeta {
                path: k.clone(),
                size: data.len() as u64,
                last_modified_ms: *ts,
            })
            .collect())
    }
}

/// A [`MetaStore`] in a map.
#[derive(Debug, Default)]
pub struct MemoryMetaStore {
    records: RwLock<BTreeMap<String, Bytes>>,
}

impl MemoryMetaStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl MetaStore for MemoryMetaStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        validate_path(key)?;
        Ok(self
            .records
            .read()
            .expect("lock poisoned")
            .get(key)
            .cloned())
    }

    async fn put_if_absent(&self, key: &str, value: Bytes) -> Result<()> {
        validate_path(key)?;
        let mut records = self.records.write().expect("lock poisoned");
        if records.contains_key(key) {
            return Err(Error::Conflict {
                key: key.to_string(),
            });
        }
        records.insert(key.to_string(), value);
        Ok(())
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        validate_path(key)?;
        self.records
            .write()
            .expect("lock poisoned")
            .insert(key.to_string(), value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_path(key)?;
        self.records.write().expect("lock poisoned").remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let records = self.records.read().expect("lock poisoned");
        Ok(records
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}
