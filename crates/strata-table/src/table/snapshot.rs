//! Snapshots: immutable views of one version, and segment reads.

use super::*;

/// Reads `columns` of each segment, up to `parallelism` at a time, in order; with
/// `apply_deletes`, deleted rows are skipped, otherwise row positions are the segment's.
/// The futures own their inputs, so the stream can move between threads.
pub(super) fn read_segments(
    blobs: Arc<dyn BlobStore>,
    schema: SchemaRef,
    columns: Vec<usize>,
    segments: Vec<LiveSegment>,
    apply_deletes: bool,
    parallelism: usize,
) -> impl futures::Stream<Item = Result<(LiveSegment, Vec<RecordBatch>)>> + Send {
    let columns: Arc<[usize]> = columns.into();
    futures::stream::iter(segments)
        .map(move |seg| {
            let blobs = blobs.clone();
            let schema = schema.clone();
            let columns = columns.clone();
            async move {
                let deleted = if apply_deletes {
                    seg.deleted.as_deref()
                } else {
                    None
                };
                let batches = read_segment(blobs, &seg.meta, &schema, &columns, deleted).await?;
                Ok((seg, batches))
            }
        })
        .buffered(parallelism.max(1))
}

/// An immutable view of one version.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(super) table: Table,
    pub(super) manifest: Arc<Manifest>,
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub fn schema(&self) -> SchemaRef {
        self.manifest.schema.clone()
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Live rows of the version, by shard and segment; `columns` projects by name.
    pub async fn scan(&self, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
        let schema = &self.manifest.schema;
        let indices: Vec<usize> = match columns {
            Some(cols) => cols
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "column {c:?} does not exist at version {}",
                            self.version()
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            None => (0..schema.fields().len()).collect(),
        };
        let per_segment: Vec<(LiveSegment, Vec<RecordBatch>)> = read_segments(
            self.table.inner.blobs.clone(),
            schema.clone(),
            indices,
            self.manifest.live_segments().cloned().collect(),
            true,
            self.table.options().read_parallelism,
        )
        .try_collect()
        .await?;
        Ok(per_segment.into_iter().flat_map(|(_, b)| b).collect())
    }

    /// All live rows as one batch.
    pub async fn read_all(&self) -> Result<RecordBatch> {
        let batches = self.scan(None).await?;
        Ok(compute::concat_batches(&self.manifest.schema, &batches)?)
    }

    pub fn num_rows(&self) -> u64 {
        self.manifest.live_rows()
    }
}
