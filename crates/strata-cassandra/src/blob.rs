//! Blobs as checksummed chunks: one partition per blob write, an index row per blob.
//!
//! ```text
//!  put(path, bytes) ─▶ chunks of ≤ chunk_bytes ─▶ blob_chunks(id, i, data, crc32c)
//!                      (`concurrency` in flight)          │ all written
//!                                                         ▼
//!                      blobs(dir, name) = (id, size, chunk_size, created)   ← visible
//!  get_range(path, a..b) ─▶ blobs row ─▶ chunks ⌊a/cs⌋..=⌊(b-1)/cs⌋, concurrently,
//!                           each checked (crc, length) ─▶ the bytes a..b
//! ```
//!
//! A reader finds the index row only once every chunk is written, so it never sees a
//! prefix. A chunk whose checksum or length is wrong is [`Error::Corrupt`], never
//! returned. Rewriting a path writes new chunks under a new id, then the index row,
//! then drops the old chunks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use strata_storage::{
    BlobMeta, BlobStore, Error, Result, check_range, validate_path, validate_prefix,
};

use crate::store::{CassandraStore, Tree, dir_key, join, split_path};

/// A blob's index row.
#[derive(Clone, Debug)]
struct Index {
    id: String,
    size: u64,
    chunk_size: u64,
    created_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn corrupt(path: &str, reason: String) -> Error {
    Error::Corrupt {
        kind: "blob",
        path: path.to_string(),
        reason,
    }
}

impl CassandraStore {
    async fn index(&self, path: &str) -> Result<Option<Index>> {
        let (dir, name) = split_path(path);
        let rows: Vec<(String, i64, i32, i64)> = self
            .rows(
                "read blob index",
                &self.inner.st.blob_head,
                (dir_key(dir), name),
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(id, size, chunk_size, created_ms)| Index {
                id,
                size: size.max(0) as u64,
                chunk_size: chunk_size.max(1) as u64,
                created_ms,
            }))
    }

    async fn index_or_not_found(&self, path: &str) -> Result<Index> {
        self.index(path).await?.ok_or_else(|| Error::NotFound {
            kind: "blob",
            path: path.to_string(),
        })
    }

    /// Chunk `i` of the blob `index` describes, checked.
    async fn chunk(&self, path: &str, index: &Index, i: u64) -> Result<Bytes> {
        let rows: Vec<(Vec<u8>, i32)> = self
            .rows(
                "read blob chunk",
                &self.inner.st.chunk_get,
                (index.id.as_str(), i as i32),
            )
            .await?;
        let Some((data, crc)) = rows.into_iter().next() else {
            return Err(corrupt(path, format!("chunk {i} is missing")));
        };
        let start = i * index.chunk_size;
        let expected = index.chunk_size.min(index.size - start);
        if data.len() as u64 != expected {
            return Err(corrupt(
                path,
                format!("chunk {i} holds {} bytes, not {expected}", data.len()),
            ));
        }
        if crc32c::crc32c(&data) != crc as u32 {
            return Err(corrupt(path, format!("chunk {i} fails its checksum")));
        }
        Ok(Bytes::from(data))
    }

    /// The chunks covering `ranges`, fetched once each, `concurrency` at a time.
    async fn chunks(
        &self,
        path: &str,
        index: &Index,
        ranges: &[Range<u64>],
    ) -> Result<BTreeMap<u64, Bytes>> {
        let mut wanted = std::collections::BTreeSet::new();
        for r in ranges.iter().filter(|r| r.start < r.end) {
            wanted.extend(r.start / index.chunk_size..=(r.end - 1) / index.chunk_size);
        }
        futures::stream::iter(wanted)
            .map(|i| async move { Ok::<_, Error>((i, self.chunk(path, index, i).await?)) })
            .buffered(self.inner.config.concurrency.max(1))
            .try_collect()
            .await
    }

    fn slice(index: &Index, chunks: &BTreeMap<u64, Bytes>, range: &Range<u64>) -> Bytes {
        if range.start == range.end {
            return Bytes::new();
        }
        let first = range.start / index.chunk_size;
        let last = (range.end - 1) / index.chunk_size;
        if first == last {
            let base = first * index.chunk_size;
            return chunks[&first]
                .slice((range.start - base) as usize..(range.end - base) as usize);
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for i in first..=last {
            let base = i * index.chunk_size;
            let chunk = &chunks[&i];
            let from = range.start.max(base) - base;
            let to = range.end.min(base + chunk.len() as u64) - base;
            out.extend_from_slice(&chunk[from as usize..to as usize]);
        }
        out.freeze()
    }

    async fn read_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        validate_path(path)?;
        let index = self.index_or_not_found(path).await?;
        for r in ranges {
            check_range(path, r, index.size)?;
        }
        let chunks = self.chunks(path, &index, ranges).await?;
        Ok(ranges
            .iter()
            .map(|r| Self::slice(&index, &chunks, r))
            .collect())
    }
}

#[async_trait]
impl BlobStore for CassandraStore {
    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        validate_path(path)?;
        let (dir, name) = split_path(path);
        let previous = self.index(path).await?;
        self.ensure_dirs(Tree::Blobs, dir).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let chunk_size = self.inner.config.chunk_bytes.max(1);
        let chunks: Vec<(usize, Bytes)> = (0..data.len())
            .step_by(chunk_size)
            .enumerate()
            .map(|(i, start)| (i, data.slice(start..(start + chunk_size).min(data.len()))))
            .collect();
        futures::stream::iter(chunks)
            .map(|(i, chunk)| {
                let id = id.as_str();
                async move {
                    let crc = crc32c::crc32c(&chunk) as i32;
                    self.exec(
                        "write blob chunk",
                        &self.inner.st.chunk_put,
                        (id, i as i32, chunk.to_vec(), crc),
                    )
                    .await
                }
            })
            .buffer_unordered(self.inner.config.concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        self.exec(
            "write blob index",
            &self.inner.st.blob_put,
            (
                dir_key(dir),
                name,
                id.as_str(),
                data.len() as i64,
                chunk_size as i32,
                now_ms(),
            ),
        )
        .await?;
        if let Some(old) = previous {
            self.exec(
                "drop replaced chunks",
                &self.inner.st.chunks_delete,
                (old.id.as_str(),),
            )
            .await?;
        }
        Ok(())
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let mut out = self.read_ranges(path, std::slice::from_ref(&range)).await?;
        Ok(out.pop().unwrap_or_default())
    }

    async fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.read_ranges(path, ranges).await
    }

    async fn head(&self, path: &str) -> Result<BlobMeta> {
        validate_path(path)?;
        let index = self.index_or_not_found(path).await?;
        Ok(BlobMeta {
            path: path.to_string(),
            size: index.size,
            last_modified_ms: index.created_ms,
        })
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_path(path)?;
        let Some(index) = self.index(path).await? else {
            return Ok(());
        };
        let (dir, name) = split_path(path);
        self.exec(
            "delete blob index",
            &self.inner.st.blob_delete,
            (dir_key(dir), name),
        )
        .await?;
        self.exec(
            "delete blob chunks",
            &self.inner.st.chunks_delete,
            (index.id.as_str(),),
        )
        .await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        validate_prefix(prefix)?;
        let entries: Vec<(String, (String, i64, i64))> =
            self.list_entries(Tree::Blobs, prefix).await?;
        let mut out: Vec<BlobMeta> = entries
            .into_iter()
            .map(|(dir, (name, size, created_ms))| BlobMeta {
                path: join(&dir, &name),
                size: size.max(0) as u64,
                last_modified_ms: created_ms,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}
