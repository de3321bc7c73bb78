//! [`BlobObjectStore`]: an [`object_store::ObjectStore`] over a Strata [`BlobStore`], so
//! DataFusion's Parquet reader runs unchanged on every backend (memory, local, Cassandra).
//!
//! Read paths only: `get_opts` (whole blobs, byte ranges, suffixes, `head`), `head` and
//! `get_ranges` (passed straight to [`BlobStore::get_ranges`], which backends may batch).
//! Segments are written by the table layer, never through DataFusion, so every write,
//! copy, delete and list answers [`object_store::Error::NotSupported`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use strata_storage::{BlobMeta, BlobStore};

const STORE: &str = "strata";

/// Read-only [`ObjectStore`] view of a [`BlobStore`]; object paths are blob paths.
#[derive(Debug, Clone)]
pub struct BlobObjectStore {
    blobs: Arc<dyn BlobStore>,
}

impl BlobObjectStore {
    pub fn new(blobs: Arc<dyn BlobStore>) -> Self {
        Self { blobs }
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }
}

impl fmt::Display for BlobObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobObjectStore({:?})", self.blobs)
    }
}

fn to_os_error(path: &Path, e: strata_storage::Error) -> object_store::Error {
    if e.is_not_found() {
        object_store::Error::NotFound {
            path: path.to_string(),
            source: Box::new(e),
        }
    } else {
        object_store::Error::Generic {
            store: STORE,
            source: Box::new(e),
        }
    }
}

fn not_supported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what}: Strata's object store view is read-only").into(),
    }
}

fn object_meta(location: &Path, meta: &BlobMeta) -> ObjectMeta {
    ObjectMeta {
        location: location.clone(),
        last_modified: arrow::temporal_conversions::timestamp_ms_to_datetime(meta.last_modified_ms)
            .map(|t| t.and_utc())
            .unwrap_or_default(),
        size: meta.size,
        e_tag: None,
        version: None,
    }
}

#[async_trait]
impl ObjectStore for BlobObjectStore {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(not_supported("put"))
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(not_supported("put_multipart"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some()
        {
            return Err(not_supported("conditional or versioned get"));
        }
        let path = location.as_ref();
        let blob = self
            .blobs
            .head(path)
            .await
            .map_err(|e| to_os_error(location, e))?;
        let meta = object_meta(location, &blob);
        let range = match &options.range {
            Some(r) => r
                .as_range(blob.size)
                .map_err(|e| object_store::Error::Generic {
                    store: STORE,
                    source: Box::new(e),
                })?,
            None => 0..blob.size,
        };
        let payload = if options.head {
            stream::empty().boxed()
        } else {
            let bytes = self
                .blobs
                .get_range(path, range.clone())
                .await
                .map_err(|e| to_os_error(location, e))?;
            stream::once(async move { Ok(bytes) }).boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.blobs
            .get_ranges(location.as_ref(), ranges)
            .await
            .map_err(|e| to_os_error(location, e))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| Err(not_supported("delete"))).boxed()
    }

    fn list(&self, _prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        stream::once(async { Err(not_supported("list")) }).boxed()
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&Path>,
    ) -> object_store::Result<ListResult> {
        Err(not_supported("list_with_delimiter"))
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(not_supported("copy"))
    }
}
