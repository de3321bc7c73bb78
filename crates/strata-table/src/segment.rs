//! Segments: immutable Parquet objects holding rows of one shard, sorted by primary key.
//!
//! ```text
//!  RecordBatch (one shard) ──sort by (partition key, row key), last duplicate wins──▶
//!      ArrowWriter (zstd, page statistics + page index) ──split at target size──▶ BlobStore.put
//!      └─▶ SegmentMeta { id, shard, rows, bytes, pk min/max, per-column min/max/nulls }
//!
//!  read: BlobStore ranged reads ─▶ ParquetRecordBatchStream (projection = only those
//!        columns' byte ranges; deletion vector = RowSelection) ─▶ batches in table schema
//! ```

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array, new_null_array};
use arrow::compute;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow_row::{RowConverter, Rows, SortField};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, SortingColumn,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use strata_storage::{BlobStore, Error as StorageError};
use strata_types::{ColumnStats, Value};

use crate::error::{Error, Result};

/// Rows per Parquet data page at most: the granularity of page-index pruning. Pages are
/// compressed one by one, so smaller pages cost compression; this is Parquet's default.
const PAGE_ROWS: usize = 20_000;
/// Rows per row group: the unit DataFusion parallelises a single file on, and the one
/// a scan's run-time filter is applied to (a TopK's bound is read as a row group
/// starts: the first row groups of a scan are read whole). Measured against 1M-row
/// groups (`tools/bench-queries`, 10M and 50M rows, cold): the top 10 rows by a value
/// 2× faster, a point query 15–25% faster, a full-scan `GROUP BY` 5–18% slower (a cost
/// per row group and column); the files are as large.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// A data page is kept compressed only if zstd brings it below this fraction of its
/// encoded size; otherwise it is stored raw (Parquet data page v2 marks each page).
/// Dictionary-encoded measurements are bit-packed indices that zstd shrinks by a few
/// percent at the price of a slow entropy decode: on the weather feed, raw pages made
/// the segments 1.1% larger and a column's decode 23% faster (see `writer_properties`).
const MIN_PAGE_COMPRESSION: f64 = 0.9;
/// Rows handed to the writer between size checks.
const WRITE_CHUNK_ROWS: usize = 16 * 1024;
/// A column that zstd leaves above this fraction of its encoded size in a sample of the
/// rows is written uncompressed. Its pages would mostly be stored raw anyway
/// ([`MIN_PAGE_COMPRESSION`]), but a reader creates a zstd compressor and decompressor
/// for every compressed column chunk it opens (arrow-rs): 5.8% of the CPU of a cold
/// `GROUP BY` over the weather feed, whose six dictionary-encoded measurement columns
/// zstd shrinks by 0.6–1.9%.
const MIN_COLUMN_COMPRESSION: f64 = 0.95;
/// Rows sampled to judge each column's compression, in [`SAMPLE_SLICES`] slices spread
/// over the rows (they are sorted by key: one slice would see one partition's values).
const SAMPLE_ROWS: usize = 64 * 1024;
const SAMPLE_SLICES: usize = 8;
/// Writes of fewer rows than this keep zstd for every column (sampling would be a
/// large share of their cost; compaction rewrites them into larger segments).
const MIN_SAMPLED_WRITE: usize = 4 * SAMPLE_ROWS;
/// A column that zstd shrinks by fewer bytes than this in the sample (half a row group's
/// rows) is written uncompressed too, however large the fraction: the contexts cost the
/// same for a small column chunk as for a large one, a few KiB more to read cost less.
/// On the weather feed this is the sorted key column (`station`: a dictionary page and
/// long runs of one index, that zstd leaves at ~1.03 of their size).
const MIN_SAMPLE_SAVING: i64 = 4 * 1024;

/// What a version record and a manifest know about a segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Unique id (UUID v7, so ids sort by creation time).
    pub id: String,
    pub shard: u32,
    /// Blob path of the Parquet object.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Primary key (partition key then row key columns) of the first and last row.
    /// Rows are sorted by primary key, so these bound every key in the segment.
    pub pk_min: Vec<Value>,
    pub pk_max: Vec<Value>,
    /// Statistics of every column the segment was written with, in schema order.
    pub columns: Vec<ColumnStats>,
    pub created_ms: i64,
}

impl SegmentMeta {
    /// Statistics of `column`; a column the segment predates is all null.
    pub fn column_stats(&self, column: &str) -> ColumnStats {
        self.columns
            .iter()
            .find(|c| c.name == column)
            .cloned()
            .unwrap_or_else(|| ColumnStats {
                name: column.to_string(),
                min: None,
                max: None,
                null_count: self.rows,
                sum: None,
            })
    }
}

/// Parquet writer settings and the split size.
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// A segment is closed once its encoded size reaches this many bytes.
    pub target_bytes: u64,
    pub zstd_level: i32,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            target_bytes: 128 * 1024 * 1024,
            zstd_level: 1,
        }
    }
}

/// Primary-key machinery for one dataset: which columns, and their row encoding.
#[derive(Debug)]
pub struct KeyCodec {
    /// Indices of partition key then row key columns in the table schema.
    pub pk_indices: Vec<usize>,
    pub partition_indices: Vec<usize>,
    pub pk_names: Vec<String>,
    converter: RowConverter,
}

impl KeyCodec {
    pub fn new(schema: &Schema, partition_key: &[String], row_key: &[String]) -> Result<Self> {
        let index = |n: &String| {
            schema
                .index_of(n)
                .map_err(|_| Error::SchemaMismatch(format!("key column {n:?} missing")))
        };
        let partition_indices = partition_key
            .iter()
            .map(index)
            .collect::<Result<Vec<_>>>()?;
        let pk_names: Vec<String> = partition_key.iter().chain(row_key).cloned().collect();
        let pk_indices = pk_names.iter().map(index).collect::<Result<Vec<_>>>()?;
        let converter = RowConverter::new(
            pk_indices
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            pk_indices,
            partition_indices,
            pk_names,
            converter,
        })
    }

    /// Row-encodes the primary key of `batch` (whose columns are in table-schema order).
    /// Byte order of the encoded rows equals primary-key order.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Rows> {
        let cols: Vec<ArrayRef> = self
            .pk_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        Ok(self.converter.convert_columns(&cols)?)
    }

    /// Row-encodes key columns given directly (in primary-key order).
    pub fn encode_columns(&self, cols: &[ArrayRef]) -> Result<Rows> {
        Ok(self.converter.convert_columns(cols)?)
    }

    fn pk_values(&self, batch: &RecordBatch, row: usize) -> Result<Vec<Value>> {
        self.pk_indices
            .iter()
            .map(|&i| Ok(Value::from_array(batch.column(i), row)?))
            .collect()
    }
}

/// Sorts `batch` by primary key. With `dedupe`, keeps only the last row (in input order)
/// of each primary key — "last write wins" inside a batch.
pub fn sort_and_dedupe(keys: &KeyCodec, batch: &RecordBatch, dedupe: bool) -> Result<RecordBatch> {
    let n = batch.num_rows();
    if n <= 1 {
        return Ok(batch.clone());
    }
    let cols: Vec<&ArrayRef> = keys.pk_indices.iter().map(|&i| batch.column(i)).collect();
    let indices = match packed_order(&cols, dedupe)? {
        Some(indices) => indices,
        None => lexsort_order(&cols, dedupe)?,
    };
    Ok(compute::take_record_batch(batch, &indices)?)
}

/// Fast path for keys of one or two columns that map to order-preserving `u64`s
/// (integers, dates, timestamps, booleans, and strings/binary by rank): sorts packed
/// `(key, input position)` pairs, which is several times faster than a comparator sort.
fn packed_order(cols: &[&ArrayRef], dedupe: bool) -> Result<Option<UInt32Array>> {
    if cols.is_empty() || cols.len() > 2 {
        return Ok(None);
    }
    let mut parts = Vec::with_capacity(cols.len());
    for c in cols {
        match order_keys(c.as_ref()) {
            Some(k) => parts.push(k),
            None => return Ok(None),
        }
    }
    let n = cols[0].len();
    let mut packed: Vec<(u128, u32)> = (0..n)
        .map(|i| {
            let hi = parts[0][i] as u128;
            let key = match parts.get(1) {
                Some(lo) => (hi << 64) | lo[i] as u128,
                None => hi,
            };
            (key, i as u32)
        })
        .collect();
    // Unique (key, position) pairs: an unstable sort is deterministic, and equal keys end
    // up in input order, so the last of each run is the latest write.
    packed.sort_unstable();
    let order = if dedupe {
        let mut kept = Vec::with_capacity(n);
        for (i, (key, pos)) in packed.iter().enumerate() {
            if packed.get(i + 1).is_none_or(|(next, _)| next != key) {
                kept.push(*pos);
            }
        }
        kept
    } else {
        packed.into_iter().map(|(_, pos)| pos).collect()
    };
    Ok(Some(UInt32Array::from(order)))
}

/// An order-preserving `u64` per row of a non-null key column, if its type has one.
fn order_keys(col: &dyn Array) -> Option<Vec<u64>> {
    use arrow::array::AsArray;
    use arrow::datatypes::*;
    fn signed<T: ArrowPrimitiveType>(col: &dyn Array) -> Vec<u64>
    where
        T::Native: Into<i64>,
    {
        let flip = 1u64 << 63;
        col.as_primitive::<T>()
            .values()
            .iter()
            .map(|v| ((*v).into() as u64) ^ flip)
            .collect()
    }
    fn unsigned<T: ArrowPrimitiveType>(col: &dyn Array) -> Vec<u64>
    where
        T::Native: Into<u64>,
    {
        col.as_primitive::<T>()
            .values()
            .iter()
            .map(|v| (*v).into())
            .collect()
    }
    /// Ranks of byte strings: distinct values are found with a hash map and only they
    /// are sorted (a partition key has far fewer distinct values than rows).
    fn ranks<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<u64> {
        let mut ids: std::collections::HashMap<&[u8], u32, xxhash_rust::xxh3::Xxh3Builder> =
            std::collections::HashMap::with_hasher(xxhash_rust::xxh3::Xxh3Builder::new());
        let provisional: Vec<u32> = values
            .map(|v| {
                let next = ids.len() as u32;
                *ids.entry(v).or_insert(next)
            })
            .collect();
        let mut distinct: Vec<(&[u8], u32)> = ids.into_iter().collect();
        distinct.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut rank_of = vec![0u64; distinct.len()];
        for (rank, (_, id)) in distinct.iter().enumerate() {
            rank_of[*id as usize] = rank as u64;
        }
        provisional
            .into_iter()
            .map(|id| rank_of[id as usize])
            .collect()
    }
    if col.null_count() > 0 {
        return None;
    }
    Some(match col.data_type() {
        DataType::Int8 => signed::<Int8Type>(col),
        DataType::Int16 => signed::<Int16Type>(col),
        DataType::Int32 => signed::<Int32Type>(col),
        DataType::Int64 => signed::<Int64Type>(col),
        DataType::Date32 => signed::<Date32Type>(col),
        DataType::Timestamp(TimeUnit::Second, _) => signed::<TimestampSecondType>(col),
        DataType::Timestamp(TimeUnit::Millisecond, _) => signed::<TimestampMillisecondType>(col),
        DataType::Timestamp(TimeUnit::Microsecond, _) => signed::<TimestampMicrosecondType>(col),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => signed::<TimestampNanosecondType>(col),
        DataType::UInt8 => unsigned::<UInt8Type>(col),
        DataType::UInt16 => unsigned::<UInt16Type>(col),
        DataType::UInt32 => unsigned::<UInt32Type>(col),
        DataType::UInt64 => unsigned::<UInt64Type>(col),
        DataType::Boolean => col.as_boolean().values().iter().map(u64::from).collect(),
        DataType::Utf8 => ranks(
            col.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("").as_bytes()),
        ),
        DataType::Binary => ranks(col.as_binary::<i32>().iter().map(|v| v.unwrap_or(&[]))),
        _ => return None,
    })
}

/// General path: Arrow's lexicographic sort with the input position as the last key.
fn lexsort_order(cols: &[&ArrayRef], dedupe: bool) -> Result<UInt32Array> {
    use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices};
    let n = cols[0].len();
    let mut columns: Vec<SortColumn> = cols
        .iter()
        .map(|c| SortColumn {
            values: (*c).clone(),
            options: Some(SortOptions::default()),
        })
        .collect();
    columns.push(SortColumn {
        values: Arc::new(UInt32Array::from_iter_values(0..n as u32)),
        options: Some(SortOptions::default()),
    });
    let indices = lexsort_to_indices(&columns, None)?;
    if !dedupe {
        return Ok(indices);
    }
    let sorted_keys = cols
        .iter()
        .map(|c| compute::take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let runs = arrow::compute::partition(&sorted_keys)?;
    Ok(UInt32Array::from_iter_values(
        runs.ranges().iter().map(|r| indices.value(r.end - 1)),
    ))
}

/// The Parquet writer settings of segments of `schema`.
///
/// Integer and timestamp key columns are written DELTA_BINARY_PACKED without a
/// dictionary: rows are sorted by key, so within a partition the row key grows in
/// near-constant steps. A dictionary of a row group's ~100K distinct timestamps
/// overflows and falls back to PLAIN (8 bytes a value); deltas of a regular series take
/// a few bits a value.
///
/// Pages are Parquet data page v2, so each page says whether it is compressed: pages
/// zstd shrinks by less than 10% ([`MIN_PAGE_COMPRESSION`]) are stored raw, and reading
/// them skips decompression. Measured on the weather feed's 10M rows (8 segments,
/// decoded on one thread): 61.96 MB against 61.26 MB, a measurement column decoded in
/// 15.7 ms against 20.3. Other columns fall back to PLAIN when their dictionary
/// overflows, as with v1 pages (v2's default would be DELTA_BYTE_ARRAY for strings).
pub fn writer_properties(
    schema: &Schema,
    keys: &KeyCodec,
    opts: &SegmentOptions,
) -> WriterProperties {
    let level = ZstdLevel::try_new(opts.zstd_level).unwrap_or_default();
    let mut builder = WriterProperties::builder();
    for &i in &keys.pk_indices {
        let field = schema.field(i);
        if delta_encodable(field.data_type()) {
            let path = ColumnPath::from(field.name().as_str());
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    builder
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_encoding(Encoding::PLAIN)
        .set_data_page_v2_compression_ratio_threshold(MIN_PAGE_COMPRESSION)
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(
            keys.pk_indices
                .iter()
                .map(|&i| SortingColumn {
                    column_idx: i as i32,
                    descending: false,
                    nulls_first: false,
                })
                .collect(),
        ))
        .build()
}

/// Types Parquet stores as INT32/INT64, where DELTA_BINARY_PACKED applies.
fn delta_encodable(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Timestamp(_, _)
    )
}

/// Writes rows of one shard, already sorted (and deduplicated) by primary key, as one
/// or more segments of about `opts.target_bytes` each. Returns their metadata; the
/// blobs are durable when this returns, but belong to no version until committed.
pub async fn write_segments(
    blobs: &dyn BlobStore,
    dir: &str,
    shard: u32,
    keys: &KeyCodec,
    batch: &RecordBatch,
    opts: &SegmentOptions,
) -> Result<Vec<SegmentMeta>> {
    let encoded = encode_segments(dir, shard, keys, batch, opts)?;
    put_segments(blobs, encoded).await
}

/// Stores segments made by [`encode_segments`]; returns their metadata.
pub async fn put_segments(
    blobs: &dyn BlobStore,
    encoded: Vec<(SegmentMeta, Bytes)>,
) -> Result<Vec<SegmentMeta>> {
    let mut out = Vec::with_capacity(encoded.len());
    for (meta, data) in encoded {
        blobs.put(&meta.path, data).await?;
        out.push(meta);
    }
    Ok(out)
}

/// The CPU half of [`write_segments`]: encodes sorted rows of one shard as Parquet
/// segments in memory, with their metadata. No I/O, so it can run on a blocking thread.
pub fn encode_segments(
    dir: &str,
    shard: u32,
    keys: &KeyCodec,
    batch: &RecordBatch,
    opts: &SegmentOptions,
) -> Result<Vec<(SegmentMeta, Bytes)>> {
    let props = writer_properties(&batch.schema(), keys, opts);
    let props = incompressible_columns(dir, batch, &props)?
        .into_iter()
        .fold(props.into_builder(), |b, column| {
            b.set_column_compression(column, Compression::UNCOMPRESSED)
        })
        .build();
    let mut out = Vec::new();
    let mut start = 0;
    while start < batch.num_rows() {
        let id = uuid::Uuid::now_v7().to_string();
        let path = crate::layout::segment_path(dir, shard, &id);
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props.clone()))
            .map_err(|e| Error::parquet(&path, e))?;
        let mut end = start;
        while end < batch.num_rows() {
            let len = WRITE_CHUNK_ROWS.min(batch.num_rows() - end);
            writer
                .write(&batch.slice(end, len))
                .map_err(|e| Error::parquet(&path, e))?;
            end += len;
            if (writer.bytes_written() + writer.in_progress_size()) as u64 >= opts.target_bytes {
                break;
            }
        }
        let data = writer.into_inner().map_err(|e| Error::parquet(&path, e))?;
        let part = batch.slice(start, end - start);
        let columns = part
            .schema()
            .fields()
            .iter()
            .zip(part.columns())
            .map(|(f, c)| ColumnStats::compute(f.name(), c))
            .collect::<strata_types::Result<Vec<_>>>()?;
        let meta = SegmentMeta {
            id,
            shard,
            path,
            rows: part.num_rows() as u64,
            bytes: data.len() as u64,
            pk_min: keys.pk_values(&part, 0)?,
            pk_max: keys.pk_values(&part, part.num_rows() - 1)?,
            columns,
            created_ms: now_ms(),
        };
        out.push((meta, Bytes::from(data)));
        start = end;
    }
    Ok(out)
}

/// The columns of `batch` to write uncompressed: those zstd leaves above
/// [`MIN_COLUMN_COMPRESSION`] of their encoded size, or shrinks by fewer than
/// [`MIN_SAMPLE_SAVING`] bytes, in a sample written with `props`. None for writes of
/// fewer than [`MIN_SAMPLED_WRITE`] rows.
fn incompressible_columns(
    dir: &str,
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<Vec<ColumnPath>> {
    let rows = batch.num_rows();
    if rows < MIN_SAMPLED_WRITE {
        return Ok(Vec::new());
    }
    let slice = SAMPLE_ROWS / SAMPLE_SLICES;
    let step = rows / SAMPLE_SLICES;
    let slices: Vec<RecordBatch> = (0..SAMPLE_SLICES)
        .map(|i| batch.slice(i * step, slice))
        .collect();
    let sample = compute::concat_batches(&batch.schema(), &slices)?;
    let label = format!("{dir} (compression sample)");
    let mut writer = ArrowWriter::try_new(std::io::sink(), batch.schema(), Some(props.clone()))
        .map_err(|e| Error::parquet(&label, e))?;
    writer
        .write(&sample)
        .map_err(|e| Error::parquet(&label, e))?;
    let meta = writer.close().map_err(|e| Error::parquet(&label, e))?;
    let columns = meta.file_metadata().schema_descr();
    Ok((0..columns.num_columns())
        .filter(|&c| {
            let (compressed, encoded) = meta.row_groups().iter().fold((0, 0), |(z, e), rg| {
                let chunk = rg.column(c);
                (z + chunk.compressed_size(), e + chunk.uncompressed_size())
            });
            encoded - compressed < MIN_SAMPLE_SAVING
                || compressed as f64 >= MIN_COLUMN_COMPRESSION * encoded as f64
        })
        .map(|c| columns.column(c).path().clone())
        .collect())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// [`AsyncFileReader`] over a blob: every read is a ranged read of the store.
#[derive(Debug, Clone)]
pub struct BlobReader {
    blobs: Arc<dyn BlobStore>,
    path: String,
    size: u64,
}

impl BlobReader {
    pub fn new(blobs: Arc<dyn BlobStore>, path: impl Into<String>, size: u64) -> Self {
        Self {
            blobs,
            path: path.into(),
            size,
        }
    }
}

fn to_parquet_err(e: strata_storage::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for BlobReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.blobs
                .get_range(&self.path, range)
                .await
                .map_err(to_parquet_err)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.blobs
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(to_parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .with_page_index_policy(PageIndexPolicy::Optional)
                .load_and_finish(&mut *self, size)
                .await?;
            check_embedded_schema(&meta)?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

/// Refuses a segment whose embedded Arrow schema (`ARROW:schema`) arrow-rs cannot
/// decode. Some damaged ones make arrow-ipc panic rather than fail (a union without
/// children, "invalid union field"; a timestamp of an unknown unit: both found by the
/// `segment` fuzz target), so the schema's flatbuffer is checked first
/// ([`strata_types::ipc_schema::check`]), and the decode is then tried with any panic
/// contained, before any reader builds on it. A stored
/// segment is checksummed by its store, so this guards against bytes that passed a
/// store without checksums or were damaged before they were written.
pub fn check_embedded_schema(meta: &ParquetMetaData) -> parquet::errors::Result<()> {
    let file = meta.file_metadata();
    let damaged = |why: String| {
        parquet::errors::ParquetError::General(format!(
            "the segment's embedded Arrow schema is damaged: {why}"
        ))
    };
    let encoded = file
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "ARROW:schema"))
        .and_then(|k| k.value.as_deref());
    if let Some(encoded) = encoded {
        // As parquet decodes it: base64 of an IPC message, after an optional
        // continuation marker and length.
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| damaged(e.to_string()))?;
        let message = if bytes.len() > 8 && bytes[0..4] == [255u8; 4] {
            &bytes[8..]
        } else {
            &bytes[..]
        };
        let message = arrow::ipc::root_as_message(message).map_err(|e| damaged(e.to_string()))?;
        let schema = message
            .header_as_schema()
            .ok_or_else(|| damaged("not a schema message".into()))?;
        strata_types::ipc_schema::check(&schema).map_err(damaged)?;
    }
    // arrow-ipc may still find something to panic on: contained, it is an error too.
    let decode = std::panic::AssertUnwindSafe(|| {
        parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
    });
    match std::panic::catch_unwind(decode) {
        Ok(decoded) => decoded.map(drop),
        Err(_) => Err(parquet::errors::ParquetError::General(
            "the segment's embedded Arrow schema is damaged".into(),
        )),
    }
}

/// A deletion vector as a Parquet row selection over `rows` rows (deleted rows skipped).
pub fn deletion_selection(dv: &RoaringBitmap, rows: u64) -> RowSelection {
    let mut selectors = Vec::new();
    let mut pos: u64 = 0;
    for deleted in dv.iter().map(u64::from).filter(|&d| d < rows) {
        if deleted > pos {
            selectors.push(RowSelector::select((deleted - pos) as usize));
        }
        match selectors.last_mut() {
            Some(s) if s.skip => s.row_count += 1,
            _ => selectors.push(RowSelector::skip(1)),
        }
        pos = deleted + 1;
    }
    if pos < rows {
        selectors.push(RowSelector::select((rows - pos) as usize));
    }
    selectors.into()
}

/// Reads `columns` (names in the table schema `schema`) of a segment, skipping rows in
/// `deleted`. Columns the segment predates come back as nulls; only the byte ranges
/// of the requested columns that exist in the segment are read.
pub async fn read_segment(
    blobs: Arc<dyn BlobStore>,
    seg: &SegmentMeta,
    schema: &SchemaRef,
    columns: &[usize],
    deleted: Option<&RoaringBitmap>,
) -> Result<Vec<RecordBatch>> {
    let path = seg.path.as_str();
    let out_schema = Arc::new(schema.project(columns)?);
    if let Some(dv) = deleted
        && dv.len() >= seg.rows
    {
        return Ok(vec![]);
    }
    let reader = BlobReader::new(blobs, path, seg.bytes);
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(
        reader,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
    )
    .await
    .map_err(|e| Error::parquet(path, e))?;
    let file_schema = builder.schema().clone();
    // Map each wanted column to its position in the file, if the file has it.
    let in_file: Vec<Option<usize>> = columns
        .iter()
        .map(|&c| file_schema.index_of(schema.field(c).name()).ok())
        .collect();
    let mut leaves: Vec<usize> = in_file.iter().flatten().copied().collect();
    leaves.sort_unstable();
    leaves.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), leaves.iter().copied());
    let mut builder = builder.with_projection(mask).with_batch_size(8192);
    if let Some(dv) = deleted
        && !dv.is_empty()
    {
        builder = builder.with_row_selection(deletion_selection(dv, seg.rows));
    }
    let stream = builder.build().map_err(|e| Error::parquet(path, e))?;
    // The Parquet decoder asserts on some damaged pages (a bit-packed run longer than
    // its buffer) instead of returning an error: the panic is contained and reported
    // as damage to this segment (found by the segment fuzz target).
    let batches: Vec<RecordBatch> = std::panic::AssertUnwindSafe(stream.try_collect())
        .catch_unwind()
        .await
        .map_err(|_| {
            Error::Storage(StorageError::Corrupt {
                kind: "segment",
                path: path.to_string(),
                reason: "a page could not be decoded".into(),
            })
        })?
        .map_err(|e| Error::parquet(path, e))?;
    batches
        .into_iter()
        .map(|b| {
            let cols = in_file
                .iter()
                .zip(columns)
                .map(|(pos, &c)| match pos {
                    Some(p) => {
                        let at = leaves.binary_search(p).expect("projected column");
                        b.column(at).clone()
                    }
                    None => new_null_array(schema.field(c).data_type(), b.num_rows()),
                })
                .collect::<Vec<_>>();
            Ok(RecordBatch::try_new_with_options(
                out_schema.clone(),
                cols,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
            )?)
        })
        .collect()
}

/// Stable shard of each row: xxh3 of the partition key values' canonical bytes (little-
/// endian integers, IEEE bits, UTF-8), chained across key columns, modulo `shards`.
/// The encoding is fixed, so a row's shard never changes across releases.
pub fn shard_of_rows(
    batch: &RecordBatch,
    partition_indices: &[usize],
    shards: u32,
) -> Result<Vec<u32>> {
    let n = batch.num_rows();
    let mut hashes = vec![0u64; n];
    for &c in partition_indices {
        hash_column(batch.column(c).as_ref(), &mut hashes)?;
    }
    Ok(hashes
        .into_iter()
        .map(|h| (h % shards as u64) as u32)
        .collect())
}

fn hash_column(col: &dyn Array, hashes: &mut [u64]) -> Result<()> {
    use arrow::array::AsArray;
    use arrow::datatypes::*;
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    // Seeding with the previous hash chains the columns of a composite key.
    fn prim<T: ArrowPrimitiveType>(
        col: &dyn Array,
        hashes: &mut [u64],
        widen: impl Fn(T::Native) -> [u8; 16],
    ) {
        let a = col.as_primitive::<T>();
        for (i, h) in hashes.iter_mut().enumerate() {
            *h = if a.is_null(i) {
                xxh3_64_with_seed(&[0], *h)
            } else {
                let bytes = widen(a.value(i));
                let len = if T::DATA_TYPE.primitive_width() == Some(16) {
                    16
                } else {
                    8
                };
                xxh3_64_with_seed(&bytes[..len], *h)
            };
        }
    }
    let int = |v: i64| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&v.to_le_bytes());
        b
    };
    let uint = |v: u64| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&v.to_le_bytes());
        b
    };
    match col.data_type() {
        DataType::Int8 => prim::<Int8Type>(col, hashes, |v| int(v as i64)),
        DataType::Int16 => prim::<Int16Type>(col, hashes, |v| int(v as i64)),
        DataType::Int32 => prim::<Int32Type>(col, hashes, |v| int(v as i64)),
        DataType::Int64 => prim::<Int64Type>(col, hashes, int),
        DataType::UInt8 => prim::<UInt8Type>(col, hashes, |v| uint(v as u64)),
        DataType::UInt16 => prim::<UInt16Type>(col, hashes, |v| uint(v as u64)),
        DataType::UInt32 => prim::<UInt32Type>(col, hashes, |v| uint(v as u64)),
        DataType::UInt64 => prim::<UInt64Type>(col, hashes, uint),
        DataType::Date32 => prim::<Date32Type>(col, hashes, |v| int(v as i64)),
        DataType::Timestamp(TimeUnit::Second, _) => prim::<TimestampSecondType>(col, hashes, int),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            prim::<TimestampMillisecondType>(col, hashes, int)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            prim::<TimestampMicrosecondType>(col, hashes, int)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            prim::<TimestampNanosecondType>(col, hashes, int)
        }
        DataType::Decimal128(_, _) => prim::<Decimal128Type>(col, hashes, |v| v.to_le_bytes()),
        DataType::Float32 => prim::<Float32Type>(col, hashes, |v| uint((v as f64).to_bits())),
        DataType::Float64 => prim::<Float64Type>(col, hashes, |v| uint(v.to_bits())),
        DataType::Boolean => {
            let a = col.as_boolean();
            for (i, h) in hashes.iter_mut().enumerate() {
                let b = if a.is_null(i) {
                    0
                } else {
                    1 + a.value(i) as u8
                };
                *h = xxh3_64_with_seed(&[b], *h);
            }
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = if a.is_null(i) {
                    xxh3_64_with_seed(&[0], *h)
                } else {
                    xxh3_64_with_seed(a.value(i).as_bytes(), *h)
                };
            }
        }
        DataType::Binary => {
            let a = col.as_binary::<i32>();
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = if a.is_null(i) {
                    xxh3_64_with_seed(&[0], *h)
                } else {
                    xxh3_64_with_seed(a.value(i), *h)
                };
            }
        }
        other => {
            return Err(Error::SchemaMismatch(format!(
                "partition key type {other} is not supported"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;

    /// A column zstd cannot shrink by 5% or by 4 KiB (judged on a sample) is written
    /// uncompressed, so reading it creates no zstd contexts; compressible columns and
    /// writes too small to sample keep zstd.
    #[test]
    fn columns_zstd_cannot_shrink_are_written_uncompressed() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        // The codec of each column, the same in every row group, and the rows read back.
        fn codecs(b: &RecordBatch) -> Vec<Compression> {
            let data = &encode_first(b);
            assert_eq!(&read_back(data), b);
            let reader = SerializedFileReader::new(data.clone()).unwrap();
            let meta = reader.metadata();
            assert!(meta.num_row_groups() > 1);
            let first: Vec<Compression> = meta
                .row_group(0)
                .columns()
                .iter()
                .map(|c| c.compression())
                .collect();
            for rg in meta.row_groups() {
                let these: Vec<Compression> =
                    rg.columns().iter().map(|c| c.compression()).collect();
                assert_eq!(these, first);
            }
            first
        }
        let zstd =
            Compression::ZSTD(ZstdLevel::try_new(SegmentOptions::default().zstd_level).unwrap());
        let raw = Compression::UNCOMPRESSED;
        let n = MIN_SAMPLED_WRITE + 1000;
        // One key and consecutive timestamps: a few hundred encoded bytes, of which zstd
        // could save only a few, so they are written raw too.
        let keys_col = vec!["station"; n];
        let ts: Vec<i64> = (0..n as i64).collect();
        let random = codecs(&batch(&keys_col, &ts, &noise(n)));
        assert_eq!(random, vec![raw, raw, raw]);
        // Mostly zero, as rainfall is: long runs of one dictionary index, which zstd
        // shrinks.
        let rain: Vec<i64> = noise(n)
            .into_iter()
            .map(|v| if v % 10 == 0 { v & 0xff } else { 0 })
            .collect();
        let packed = codecs(&batch(&keys_col, &ts, &rain));
        assert_eq!(packed, vec![raw, raw, zstd]);
        // Too few rows to sample.
        let n = MIN_SAMPLED_WRITE - 1;
        let few = codecs(&batch(&keys_col[..n], &ts[..n], &noise(n)));
        assert_eq!(few, vec![zstd, zstd, zstd]);
    }

    fn batch(keys: &[&str], ts: &[i64], vals: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(ts.to_vec())),
                Arc::new(Int64Array::from(vals.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn integer_key_columns_are_delta_encoded_without_a_dictionary() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        // One station, 100K regular timestamps: a dictionary would overflow.
        let n = 100_000;
        let keys_col = vec!["station"; n];
        let ts: Vec<i64> = (0..n as i64)
            .map(|i| 1_700_000_000_000 + i * 60_000)
            .collect();
        let vals: Vec<i64> = (0..n as i64).map(|i| i % 7).collect();
        let b = batch(&keys_col, &ts, &vals);
        let data = &encode_first(&b);
        let reader = SerializedFileReader::new(data.clone()).unwrap();
        let rg = reader.metadata().row_group(0);
        let encodings = |i: usize| rg.column(i).encodings().collect::<Vec<_>>();
        let t = encodings(1);
        assert!(t.contains(&Encoding::DELTA_BINARY_PACKED), "{t:?}");
        assert!(!t.contains(&Encoding::RLE_DICTIONARY), "{t:?}");
        // The timestamps take far less than 8 bytes each.
        assert!(
            (rg.column(1).compressed_size() as usize) < n / 10,
            "{}",
            rg.column(1).compressed_size()
        );
        // Other columns keep the dictionary.
        assert!(encodings(2).contains(&Encoding::RLE_DICTIONARY));
        // And the rows read back.
        let back = read_back(data);
        assert_eq!(back.num_rows(), n);
        assert_eq!(back.column(1).as_ref(), b.column(1).as_ref());
    }

    #[test]
    fn pages_zstd_cannot_shrink_are_stored_raw() {
        use parquet::column::page::Page;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        // Whether each data page of the value column (v2 pages) is compressed.
        fn compressed_pages(b: &RecordBatch) -> Vec<bool> {
            let data = &encode_first(b);
            assert_eq!(read_back(data).column(2).as_ref(), b.column(2).as_ref());
            let reader = SerializedFileReader::new(data.clone()).unwrap();
            let mut pages = reader
                .get_row_group(0)
                .unwrap()
                .get_column_page_reader(2)
                .unwrap();
            let mut out = vec![];
            while let Some(page) = pages.get_next_page().unwrap() {
                match page {
                    Page::DataPageV2 { is_compressed, .. } => out.push(is_compressed),
                    Page::DictionaryPage { .. } => {}
                    Page::DataPage { .. } => panic!("a v1 data page"),
                }
            }
            assert!(!out.is_empty());
            out
        }
        let n = 60_000;
        let keys_col = vec!["station"; n];
        let ts: Vec<i64> = (0..n as i64).collect();
        // A repeating pattern: its dictionary indices compress well.
        let pattern: Vec<i64> = (0..n as i64).map(|i| i % 7).collect();
        let packed = compressed_pages(&batch(&keys_col, &ts, &pattern));
        assert!(packed.iter().all(|&c| c), "{packed:?}");
        // Distinct pseudo-random values: 16-bit indices of no pattern, which zstd leaves
        // as they are.
        let raw = compressed_pages(&batch(&keys_col, &ts, &noise(n)));
        assert!(raw.iter().all(|&c| !c), "{raw:?}");
    }

    /// The first segment `encode_segments` makes of `b` (keyed by `k`, then `t`).
    fn encode_first(b: &RecordBatch) -> Bytes {
        let keys = KeyCodec::new(&b.schema(), &["k".into()], &["t".into()]).unwrap();
        let segments = encode_segments("d", 0, &keys, b, &SegmentOptions::default()).unwrap();
        segments.into_iter().next().unwrap().1
    }

    /// `n` distinct pseudo-random values (xorshift, fixed seed): no pattern zstd finds.
    fn noise(n: usize) -> Vec<i64> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as i64
            })
            .collect()
    }

    fn read_back(data: &Bytes) -> RecordBatch {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data.clone())
                .unwrap()
                .build()
                .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    #[test]
    fn shards_are_stable_across_releases() {
        // Shards are persisted (segments live in a shard); these values must never change.
        let b = batch(&["a", "b", "station-1", ""], &[0, 1, 2, 3], &[0, 0, 0, 0]);
        assert_eq!(shard_of_rows(&b, &[0], 1024).unwrap(), GOLDEN_UTF8);
        assert_eq!(shard_of_rows(&b, &[0, 1], 1024).unwrap(), GOLDEN_COMPOSITE);
        assert_eq!(shard_of_rows(&b, &[1], 7).unwrap(), GOLDEN_INT);
    }

    const GOLDEN_UTF8: [u32; 4] = [543, 63, 275, 194];
    const GOLDEN_COMPOSITE: [u32; 4] = [718, 565, 845, 475];
    const GOLDEN_INT: [u32; 4] = [3, 0, 0, 6];

    #[test]
    fn last_duplicate_wins_and_rows_sort_by_key() {
        let b = batch(
            &["b", "a", "b", "a", "b"],
            &[1, 2, 1, 1, 0],
            &[1, 2, 3, 4, 5],
        );
        let keys = KeyCodec::new(&b.schema(), &["k".into()], &["t".into()]).unwrap();
        let out = sort_and_dedupe(&keys, &b, true).unwrap();
        let k = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let t = out.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let v = out.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        let rows: Vec<_> = (0..out.num_rows())
            .map(|i| (k.value(i), t.value(i), v.value(i)))
            .collect();
        assert_eq!(rows, [("a", 1, 4), ("a", 2, 2), ("b", 0, 5), ("b", 1, 3)]);
        let kept = sort_and_dedupe(&keys, &b, false).unwrap();
        assert_eq!(kept.num_rows(), 5);
        // The general path (three key columns) agrees with the packed one.
        let three = KeyCodec::new(&b.schema(), &["k".into()], &["t".into(), "v".into()]).unwrap();
        let cols: Vec<&ArrayRef> = keys.pk_indices.iter().map(|&i| b.column(i)).collect();
        assert_eq!(
            lexsort_order(&cols, true).unwrap(),
            packed_order(&cols, true).unwrap().unwrap()
        );
        assert_eq!(
            lexsort_order(&cols, false).unwrap(),
            packed_order(&cols, false).unwrap().unwrap()
        );
        assert_eq!(sort_and_dedupe(&three, &b, true).unwrap().num_rows(), 5);
    }

    #[test]
    fn deletion_vectors_become_row_selections() {
        let dv: RoaringBitmap = [0u32, 1, 5, 9].into_iter().collect();
        let sel = deletion_selection(&dv, 10);
        let selectors: Vec<RowSelector> = sel.into();
        assert_eq!(
            selectors,
            [
                RowSelector::skip(2),
                RowSelector::select(3),
                RowSelector::skip(1),
                RowSelector::select(3),
                RowSelector::skip(1),
            ]
        );
    }

    /// Inputs that once panicked a decoder (`fuzz/regressions/segment`): the segment
    /// reader refuses each with an error.
    #[tokio::test]
    async fn fuzz_regressions_are_refused() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/segment");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = Bytes::from(std::fs::read(&path).unwrap());
            let size = data.len() as u64;
            let blobs: Arc<dyn BlobStore> = Arc::new(strata_storage::MemoryBlobStore::new());
            blobs.put("s", data).await.unwrap();
            // Refused as the footer is read, or else as the pages are: never a panic.
            let reader = BlobReader::new(blobs.clone(), "s", size);
            let Ok(builder) = ParquetRecordBatchStreamBuilder::new(reader).await else {
                seen += 1;
                continue;
            };
            let schema = builder.schema().clone();
            let segment = SegmentMeta {
                id: "s".into(),
                shard: 0,
                path: "s".into(),
                rows: builder.metadata().file_metadata().num_rows().max(0) as u64,
                bytes: size,
                pk_min: vec![],
                pk_max: vec![],
                columns: vec![],
                created_ms: 0,
            };
            let columns: Vec<usize> = (0..schema.fields().len()).collect();
            let read = read_segment(blobs, &segment, &schema, &columns, None).await;
            assert!(read.is_err(), "{} was accepted", path.display());
            seen += 1;
        }
        assert!(seen > 0, "no regression inputs in {}", dir.display());
    }
}
