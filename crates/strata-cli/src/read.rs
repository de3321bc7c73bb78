//! Reading input files into numbered batches shaped like a dataset's schema.
//!
//! ```text
//!  FILE ──CSV / NDJSON / Parquet reader──▶ batches in the file's column order and types
//!       ──conform: match names, reorder, lossless casts, null-fill──▶ the dataset's schema
//!       ──rechunk──▶ exactly `batch_rows` rows per batch (each file's last one shorter)
//!       ──number──▶ batch i (0-based, across all files in order) is sequence i + 1
//!       ──▶ skipped when sequence <= the producer's last durable sequence, else IPC-encoded
//! ```
//!
//! Invariant: the same files in the same order with the same `batch_rows` give the same
//! batch boundaries, hence the same sequence numbers, on every run. That is what makes
//! `strata ingest --producer ID` resumable without duplicates. Parquet files are cut by
//! row count, so the batches a resume skips are not even decoded.
//!
//! Conversions are lossless or refused: the file's values must come through unchanged.
//! Widening casts (`int32` → `int64`, `float32` → `float64`, `timestamp(s)` →
//! `timestamp(us)`, string/binary views → plain) are always applied; narrowing ones
//! (`int64` → `int32`, `timestamp(ns)` → `timestamp(us)`, `int64` → `float64`, …) are
//! applied only when every value converts exactly, else the batch fails with a message
//! naming the column. Any other type difference is an error before anything is sent.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, concat_batches};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::ipc::writer::StreamWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::client::MAX_MESSAGE_SIZE;
use crate::error::{Error, Result};

/// An input file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values (or another delimiter), with a header by default.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// Newline-delimited JSON: one object per line.
    Json,
}

impl Format {
    /// The format a file's extension names: `.csv`, `.parquet`/`.pq`,
    /// `.json`/`.ndjson`/`.jsonl` (case-insensitive).
    pub fn detect(path: &Path) -> Result<Self> {
        // `data.csv.gz`: the format of `data.csv`, read through gzip.
        let inner = if is_gzip(path) {
            path.file_stem().map(Path::new).unwrap_or(path)
        } else {
            path
        };
        let ext = inner
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("parquet" | "pq") if !is_gzip(path) => Ok(Self::Parquet),
            Some("json" | "ndjson" | "jsonl") => Ok(Self::Json),
            _ => Err(Error::file(
                path,
                "cannot tell the format from the file name \
                 (expected .csv, .parquet, .json, .ndjson or .jsonl, the text ones \
                 optionally .gz); pass --format",
            )),
        }
    }
}

/// True for a gzip-compressed file (`.gz`), read through a decoder.
pub fn is_gzip(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// The file name that means standard input.
pub const STDIN: &str = "-";

/// True for `-`: standard input, read once, as it comes (CSV or NDJSON; gzip is
/// recognised by its magic bytes).
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == STDIN
}

/// The bytes of a text file (CSV, NDJSON), decompressed when it is `.gz` (standard
/// input: when it starts with gzip's magic bytes).
fn open_text(path: &Path) -> Result<Box<dyn std::io::Read + Send>> {
    if is_stdin(path) {
        use std::io::BufRead;
        let mut input = BufReader::with_capacity(1 << 20, std::io::stdin());
        let head = input.fill_buf().map_err(|e| Error::io(path, e))?;
        return Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(input))
        } else {
            Box::new(input)
        });
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file = BufReader::with_capacity(1 << 20, file);
    Ok(if is_gzip(path) {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// Reads the first line (the CSV header) of `input`, and returns it with a reader of
/// the whole text, header included: one pass over the input, so standard input works.
fn split_header(
    path: &Path,
    input: Box<dyn std::io::Read + Send>,
) -> Result<(Vec<u8>, impl std::io::Read + Send + use<>)> {
    use std::io::{BufRead, Read};
    let mut input = BufReader::new(input);
    let mut header = Vec::new();
    input
        .read_until(b'\n', &mut header)
        .map_err(|e| Error::io(path, e))?;
    let whole = std::io::Cursor::new(header.clone()).chain(input);
    Ok((header, whole))
}

/// One file to read, with its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: Format,
}

impl InputFile {
    /// `format`, or the one the file name tells when `None`.
    pub fn new(path: impl Into<PathBuf>, format: Option<Format>) -> Result<Self> {
        let path = path.into();
        let format = match format {
            Some(f) => f,
            None if is_stdin(&path) => {
                return Err(Error::file(
                    &path,
                    "standard input has no name to tell its format by: pass --format csv or --format json",
                ));
            }
            None => Format::detect(&path)?,
        };
        if is_stdin(&path) && format == Format::Parquet {
            return Err(Error::file(
                &path,
                "Parquet cannot be read from standard input (its footer, which says where \
                 the rows are, comes last): give the file's path",
            ));
        }
        Ok(Self { path, format })
    }

    /// Standard input, not a file.
    pub fn is_stdin(&self) -> bool {
        is_stdin(&self.path)
    }
}

/// How to cut and parse the input.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Rows per batch (each file's last batch may be shorter). At least 1.
    pub batch_rows: usize,
    /// CSV files start with a header naming the columns (then matched by name, in any
    /// order); without one the columns are the dataset's, in its order.
    pub csv_header: bool,
    pub csv_delimiter: u8,
    /// CSV fields that mean null (matched whole, case-sensitive), for every column.
    pub csv_nulls: Vec<String>,
    /// Refuse CSV and Parquet files that lack some of the dataset's columns: on a dataset
    /// with a row key their rows would replace existing rows, those columns with nulls.
    pub refuse_missing: bool,
}

/// What R (`write.csv`), pandas (`to_csv`) and SQL exports write for a missing value.
pub const DEFAULT_CSV_NULLS: [&str; 3] = ["", "NA", "NULL"];

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            batch_rows: 8192,
            csv_header: true,
            csv_delimiter: b',',
            csv_nulls: DEFAULT_CSV_NULLS.map(String::from).to_vec(),
            refuse_missing: false,
        }
    }
}

/// With `refuse`, the first of `target`'s columns `source` lacks, as an error.
fn check_complete(source: &Schema, target: &Schema, refuse: bool) -> Result<(), String> {
    if !refuse {
        return Ok(());
    }
    match target
        .fields()
        .iter()
        .find(|t| find_field(source, t.name()).is_none())
    {
        Some(missing) => Err(format!(
            "column {:?} is missing: the dataset has a row key, so each row replaces the row \
             with its key, and {:?} would become null in rows that had a value (an upsert \
             replaces whole rows). Add the column, use SQL UPDATE to change some columns, or \
             pass --missing-as-null",
            missing.name(),
            missing.name()
        )),
        None => Ok(()),
    }
}

/// Rows a CSV or NDJSON file's column types are inferred from.
pub const INFER_ROWS: usize = 10_000;

/// The columns of a data file, for a dataset made from it: names and types as the file
/// has them (CSV and NDJSON: inferred from the first [`INFER_ROWS`] rows, with the
/// default null strings), mapped to types Strata stores, all nullable.
pub fn infer_columns(path: &Path) -> Result<Vec<strata_types::ColumnDef>> {
    let in_file = |e: &dyn std::fmt::Display| Error::file(path, e);
    if is_stdin(path) {
        return Err(in_file(
            &"the columns cannot be inferred from standard input (it is read once): \
              create the dataset from a sample file or with --column",
        ));
    }
    let schema: Schema = match Format::detect(path)? {
        Format::Csv => {
            let file = open_text(path)?;
            let nulls: Vec<String> = DEFAULT_CSV_NULLS.map(String::from).to_vec();
            arrow::csv::reader::Format::default()
                .with_header(true)
                .with_null_regex(null_regex(&nulls).map_err(|m| in_file(&m))?)
                .infer_schema(file, Some(INFER_ROWS))
                .map_err(|e| in_file(&e))?
                .0
        }
        Format::Json => {
            let file = open_text(path)?;
            arrow::json::reader::infer_json_schema(BufReader::new(file), Some(INFER_ROWS))
                .map_err(|e| in_file(&e))?
                .0
        }
        Format::Parquet => ParquetRecordBatchReaderBuilder::try_new(
            File::open(path).map_err(|e| Error::io(path, e))?,
        )
        .map_err(|e| in_file(&e))?
        .schema()
        .as_ref()
        .clone(),
    };
    fn storable(dt: &DataType) -> DataType {
        match dt {
            // A column with no value in the rows looked at: text takes anything.
            DataType::Null | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
            DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
            DataType::Float16 => DataType::Float32,
            DataType::Date64 => DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Dictionary(_, values) => storable(values),
            other => other.clone(),
        }
    }
    schema
        .fields()
        .iter()
        .map(|f| {
            let data_type = strata_types::spec::format_type(&storable(f.data_type())).map_err(|_| {
                in_file(&format!(
                    "column {:?} has type {}, which a dataset cannot hold; give the columns with --column",
                    f.name(),
                    f.data_type()
                ))
            })?;
            Ok(strata_types::ColumnDef {
                name: f.name().clone(),
                data_type,
                nullable: true,
            })
        })
        .collect()
}

/// The regular expression matching exactly the null strings.
fn null_regex(nulls: &[String]) -> Result<regex::Regex, String> {
    let alternatives: Vec<String> = nulls.iter().map(|n| regex::escape(n)).collect();
    regex::Regex::new(&format!("^(?:{})$", alternatives.join("|")))
        .map_err(|e| format!("the null strings do not make a pattern: {e}"))
}

/// The CSV reader's message with the column named and the line counted as an editor
/// does (1 = the file's first line, the header included): arrow-csv says "column 5 at
/// line 5591" with 0-based columns and lines counted from 0.
fn csv_error_text(message: &str, columns: &Schema) -> String {
    let re = regex::Regex::new(r"column (\d+) at line (\d+)").expect("a valid pattern");
    let Some(caps) = re.captures(message) else {
        return message.to_string();
    };
    let (Ok(col), Ok(line)) = (caps[1].parse::<usize>(), caps[2].parse::<usize>()) else {
        return message.to_string();
    };
    let name = columns
        .fields()
        .get(col)
        .map_or_else(|| format!("{}", col + 1), |f| format!("{:?}", f.name()));
    let named = re.replace(message, format!("column {name} at line {}", line + 1));
    // "Row data: '[…]'" repeats the whole row: keep the message to the point.
    match named.split_once(". Row data:") {
        Some((head, _)) => head.to_string(),
        None => named.into_owned(),
    }
}

/// Decodes `DatasetInfo.arrow_schema`: an Arrow IPC schema message, with or without the
/// continuation/length prefix, or a whole IPC stream (whose schema is used).
pub fn decode_schema(bytes: &[u8]) -> Result<SchemaRef, String> {
    use arrow::ipc::convert::{try_schema_from_flatbuffer_bytes, try_schema_from_ipc_buffer};
    if bytes.is_empty() {
        return Err("the server sent an empty schema".into());
    }
    try_schema_from_ipc_buffer(bytes)
        .or_else(|first| try_schema_from_flatbuffer_bytes(bytes).map_err(|_| first))
        .map(Arc::new)
        .map_err(|e| format!("cannot decode the dataset's Arrow schema: {e}"))
}

/// Encodes `batch` as a complete Arrow IPC stream: schema, the batch, end-of-stream.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    writer.into_inner()
}

/// What [`produce`] hands out, in sequence order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A batch to send.
    Batch {
        sequence: u64,
        rows: u64,
        /// A complete Arrow IPC stream in the dataset's schema.
        ipc: Vec<u8>,
    },
    /// Batches whose sequence is at or below the producer's last one: durable already,
    /// not sent.
    Skipped { batches: u64, rows: u64 },
}

/// Reads `files` in order as batches in `target`'s schema, numbers them 1, 2, 3, … and
/// hands each to `emit`: batches numbered at or below `last_sequence` as
/// [`Item::Skipped`], the others IPC-encoded as [`Item::Batch`]. Stops early, without
/// error, when `emit` returns false. Returns the number of batches numbered.
pub fn produce(
    files: &[InputFile],
    target: &SchemaRef,
    opts: &ReadOptions,
    last_sequence: u64,
    mut emit: impl FnMut(Item) -> bool,
) -> Result<u64> {
    let mut numbered = 0u64;
    for file in files {
        let mut batches = open(file, target, opts, last_sequence.saturating_sub(numbered))?;
        if batches.skipped_batches > 0 {
            numbered += batches.skipped_batches;
            let item = Item::Skipped {
                batches: batches.skipped_batches,
                rows: batches.skipped_rows,
            };
            if !emit(item) {
                return Ok(numbered);
            }
        }
        for batch in &mut batches {
            let batch = batch?;
            numbered += 1;
            let sequence = numbered;
            let rows = batch.num_rows() as u64;
            let item = if sequence <= last_sequence {
                Item::Skipped { batches: 1, rows }
            } else {
                let ipc = encode_ipc(&batch).map_err(|e| Error::file(&file.path, e))?;
                // Leave room for the request's own framing.
                if ipc.len() > MAX_MESSAGE_SIZE - 64 * 1024 {
                    return Err(Error::file(
                        &file.path,
                        format!(
                            "batch {sequence} encodes to {} bytes, over the {} MiB message \
                             limit; use a smaller --batch-rows",
                            ipc.len(),
                            MAX_MESSAGE_SIZE >> 20
                        ),
                    ));
                }
                Item::Batch {
                    sequence,
                    rows,
                    ipc,
                }
            };
            if !emit(item) {
                return Ok(numbered);
            }
        }
    }
    Ok(numbered)
}

/// Opens every file the way [`produce`] will and checks its columns against `target`, so
/// a file that cannot fit fails before anything is sent. Reads only headers and footers.
///
/// Standard input can be read only once: it is checked as it is read.
pub fn check_files(files: &[InputFile], target: &SchemaRef, opts: &ReadOptions) -> Result<()> {
    if files.iter().filter(|f| f.is_stdin()).count() > 1 {
        return Err(Error::Invalid(
            "standard input (-) can be read only once".into(),
        ));
    }
    for file in files.iter().filter(|f| !f.is_stdin()) {
        open(file, target, opts, 0)?;
    }
    Ok(())
}

type SourceBatches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>>;

/// The batches of one file, conformed to the dataset schema and cut to `batch_rows`.
pub struct FileBatches {
    path: PathBuf,
    /// Leading batches not read at all because they are already durable (Parquet only:
    /// its row count is known without decoding).
    pub skipped_batches: u64,
    pub skipped_rows: u64,
    /// A CSV file's columns in file order (to name them in errors).
    csv_columns: Option<SchemaRef>,
    inner: Rechunk,
}

impl std::fmt::Debug for FileBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBatches")
            .field("path", &self.path)
            .field("skipped_batches", &self.skipped_batches)
            .field("skipped_rows", &self.skipped_rows)
            .finish_non_exhaustive()
    }
}

impl Iterator for FileBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map_err(|m| match &self.csv_columns {
                Some(columns) => Error::file(&self.path, csv_error_text(&m, columns)),
                None => Error::file(&self.path, m),
            })
        })
    }
}

/// Opens one file. For Parquet, the first `skip_batches` batches (at most the file's) are
/// skipped by row offset and counted in [`FileBatches::skipped_batches`]; other formats
/// ignore `skip_batches` (their batches must be decoded to be counted).
pub fn open(
    file: &InputFile,
    target: &SchemaRef,
    opts: &ReadOptions,
    skip_batches: u64,
) -> Result<FileBatches> {
    let path = &file.path;
    let batch_rows = opts.batch_rows.max(1);
    let open_file = || File::open(path).map_err(|e| Error::io(path, e));
    let in_file = |e: &dyn std::fmt::Display| Error::file(path, e);
    // Readers produce nullable columns; `conform` then reports nulls in non-nullable
    // columns by name.
    let loose = Arc::new(Schema::new_with_metadata(
        target
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        target.metadata().clone(),
    ));

    let mut csv_columns = None;
    let (source, skipped_batches, skipped_rows): (SourceBatches, u64, u64) = match file.format {
        Format::Csv => {
            let (header, text) = split_header(path, open_text(path)?)?;
            let file_schema = if opts.csv_header {
                let format = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .with_delimiter(opts.csv_delimiter);
                let (header, _) = format
                    .infer_schema(header.as_slice(), Some(0))
                    .map_err(|e| in_file(&e))?;
                check_complete(&header, target, opts.refuse_missing).map_err(|m| in_file(&m))?;
                header_schema(&header, target).map_err(|m| in_file(&m))?
            } else {
                loose
            };
            csv_columns = Some(file_schema.clone());
            let reader = arrow::csv::ReaderBuilder::new(file_schema)
                .with_header(opts.csv_header)
                .with_delimiter(opts.csv_delimiter)
                .with_null_regex(null_regex(&opts.csv_nulls).map_err(|m| in_file(&m))?)
                .with_batch_size(batch_rows)
                .build(text)
                .map_err(|e| in_file(&e))?;
            (Box::new(reader), 0, 0)
        }
        Format::Json => {
            let reader = arrow::json::ReaderBuilder::new(loose)
                .with_batch_size(batch_rows)
                .with_strict_mode(true)
                .build(BufReader::new(open_text(path)?))
                .map_err(|e| in_file(&e))?;
            (Box::new(reader), 0, 0)
        }
        Format::Parquet => {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(open_file()?).map_err(|e| in_file(&e))?;
            check_columns(builder.schema(), target).map_err(|m| in_file(&m))?;
            check_complete(builder.schema(), target, opts.refuse_missing)
                .map_err(|m| in_file(&m))?;
            let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            let batches_in_file = rows.div_ceil(batch_rows as u64);
            let skip = skip_batches.min(batches_in_file);
            let skip_rows = (skip * batch_rows as u64).min(rows);
            let mut builder = builder.with_batch_size(batch_rows);
            if skip_rows > 0 {
                builder = builder.with_offset(skip_rows as usize);
            }
            let reader = builder.build().map_err(|e| in_file(&e))?;
            (Box::new(reader), skip, skip_rows)
        }
    };
    Ok(FileBatches {
        path: path.clone(),
        skipped_batches,
        skipped_rows,
        csv_columns,
        inner: Rechunk {
            source,
            target: target.clone(),
            rows: batch_rows,
            pending: VecDeque::new(),
            pending_rows: 0,
            done: false,
        },
    })
}

/// The schema to parse a CSV file with, from its header: the header's column names (matched
/// to the dataset's), each with the dataset column's type.
fn header_schema(header: &Schema, target: &Schema) -> Result<SchemaRef, String> {
    let fields = header
        .fields()
        .iter()
        .map(|f| {
            let (_, t) = find_field(target, f.name()).ok_or_else(|| unknown_column(f, target))?;
            Ok(Field::new(t.name(), t.data_type().clone(), true))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let schema = Schema::new(fields);
    check_columns(&schema, target)?;
    Ok(Arc::new(schema))
}

/// Finds `name` in `schema`: exactly, else case-insensitively (Strata's column names are
/// unique regardless of case).
fn find_field<'a>(schema: &'a Schema, name: &str) -> Option<(usize, &'a FieldRef)> {
    if let Ok(i) = schema.index_of(name) {
        return Some((i, &schema.fields()[i]));
    }
    schema
        .fields()
        .iter()
        .enumerate()
        .find(|(_, f)| f.name().eq_ignore_ascii_case(name))
}

fn unknown_column(field: &Field, target: &Schema) -> String {
    let names: Vec<&str> = target.fields().iter().map(|f| f.name().as_str()).collect();
    format!(
        "column {:?} is not in the dataset (its columns: {})",
        field.name(),
        names.join(", ")
    )
}

/// Checks that a file with `source`'s columns can be conformed to `target`: every column
/// is the dataset's, once, with a convertible type, and no non-nullable column is missing.
pub fn check_columns(source: &Schema, target: &Schema) -> Result<(), String> {
    let mut seen = vec![false; target.fields().len()];
    for f in source.fields() {
        let (i, t) = find_field(target, f.name()).ok_or_else(|| unknown_column(f, target))?;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("column {:?} appears twice", t.name()));
        }
        if conversion(f.data_type(), t.data_type()) == Conversion::Never {
            return Err(type_mismatch(t.name(), f.data_type(), t.data_type()));
        }
    }
    for (t, seen) in target.fields().iter().zip(seen) {
        if !seen && !t.is_nullable() {
            return Err(format!(
                "column {:?} is missing; the dataset requires it (not nullable)",
                t.name()
            ));
        }
    }
    Ok(())
}

fn type_mismatch(column: &str, from: &DataType, to: &DataType) -> String {
    let to_text = strata_types::format_type(to).unwrap_or_else(|_| to.to_string());
    format!(
        "column {column:?} has type {from} in the file but {to_text} in the dataset, \
         and only lossless conversions are made"
    )
}

/// Reorders, converts and null-fills `batch`'s columns into `target`'s schema; see the
/// module docs for the conversions.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    let source = batch.schema();
    if source.as_ref() == target.as_ref() {
        return Ok(batch.clone());
    }
    check_columns(&source, target)?;
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let column = match find_field(&source, field.name()) {
                Some((i, _)) => convert(batch.column(i), field.data_type())
                    .map_err(|m| format!("column {:?}: {m}", field.name()))?,
                None => new_null_array(field.data_type(), batch.num_rows()),
            };
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(format!(
                    "column {:?} is not nullable in the dataset but has {} null value(s)",
                    field.name(),
                    column.null_count()
                ));
            }
            Ok(column)
        })
        .collect::<Result<Vec<_>, String>>()?;
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| e.to_string())
}

/// How a column of one type becomes another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conversion {
    /// Every value converts exactly (overflow still fails the cast).
    Widen,
    /// Converted, then converted back and compared: any changed value is an error.
    RoundTrip,
    /// Timestamps to a coarser unit: every value must be a multiple of this many source units.
    Coarsen(i64),
    Never,
}

fn conversion(from: &DataType, to: &DataType) -> Conversion {
    use DataType::*;
    match (from, to) {
        _ if from == to => Conversion::Widen,
        (Dictionary(_, values), _) => conversion(values, to),
        (Null, _) => Conversion::Widen,
        (Utf8 | LargeUtf8 | Utf8View, Utf8) => Conversion::Widen,
        (Binary | LargeBinary | BinaryView | FixedSizeBinary(_), Binary) => Conversion::Widen,
        (Timestamp(from_unit, _), Timestamp(to_unit, _)) => {
            let (f, t) = (unit_per_second(*from_unit), unit_per_second(*to_unit));
            if f > t {
                Conversion::Coarsen(f / t)
            } else {
                Conversion::Widen
            }
        }
        (Date64, Date32) => Conversion::RoundTrip,
        _ if from.is_numeric() && to.is_numeric() => {
            if widens(from, to) {
                Conversion::Widen
            } else {
                Conversion::RoundTrip
            }
        }
        _ => Conversion::Never,
    }
}

fn unit_per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

/// True when every value of `from` is exactly representable in `to`.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_range = |dt: &DataType| -> Option<(i128, i128)> {
        Some(match dt {
            Int8 => (i8::MIN.into(), i8::MAX.into()),
            Int16 => (i16::MIN.into(), i16::MAX.into()),
            Int32 => (i32::MIN.into(), i32::MAX.into()),
            Int64 => (i64::MIN.into(), i64::MAX.into()),
            UInt8 => (0, u8::MAX.into()),
            UInt16 => (0, u16::MAX.into()),
            UInt32 => (0, u32::MAX.into()),
            UInt64 => (0, u64::MAX.into()),
            _ => return None,
        })
    };
    // Integers a float's mantissa holds exactly: 2^24 for float32, 2^53 for float64.
    let float_exact = |dt: &DataType| -> Option<i128> {
        match dt {
            Float32 => Some(1 << 24),
            Float64 => Some(1 << 53),
            _ => None,
        }
    };
    match (int_range(from), int_range(to), float_exact(to)) {
        (Some((lo, hi)), Some((to_lo, to_hi)), _) => to_lo <= lo && hi <= to_hi,
        (Some((lo, hi)), None, Some(exact)) => -exact <= lo && hi <= exact,
        _ => matches!(
            (from, to),
            (Float16, Float32 | Float64) | (Float32, Float64)
        ),
    }
}

fn convert(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    let from = array.data_type();
    if from == to {
        return Ok(array.clone());
    }
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = |a: &dyn Array, dt: &DataType| cast_with_options(a, dt, &strict);
    if let DataType::Dictionary(_, values) = from {
        let plain = cast(array.as_ref(), values).map_err(|e| e.to_string())?;
        return convert(&plain, to);
    }
    let out_of_range = |e: ArrowError| format!("cannot convert {from} to {to}: {e}");
    match conversion(from, to) {
        Conversion::Never => Err(format!(
            "{from} cannot become {to} without loss; only lossless conversions are made"
        )),
        Conversion::Widen => cast(array.as_ref(), to).map_err(out_of_range),
        Conversion::RoundTrip => {
            let converted = cast(array.as_ref(), to).map_err(out_of_range)?;
            let back = cast(converted.as_ref(), from).map_err(out_of_range)?;
            if back.as_ref() != array.as_ref() {
                return Err(format!(
                    "converting {from} to {to} would change some values; \
                     only lossless conversions are made"
                ));
            }
            Ok(converted)
        }
        Conversion::Coarsen(factor) => {
            let ticks = cast(array.as_ref(), &DataType::Int64).map_err(out_of_range)?;
            let lossy = ticks
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .any(|t| t % factor != 0);
            if lossy {
                return Err(format!(
                    "converting {from} to {to} would truncate some timestamps; \
                     only lossless conversions are made"
                ));
            }
            cast(array.as_ref(), to).map_err(out_of_range)
        }
    }
}

/// Conforms a file's batches and cuts them into batches of exactly `rows` rows (the last
/// one shorter), whatever sizes the reader produced.
struct Rechunk {
    source: SourceBatches,
    target: SchemaRef,
    rows: usize,
    pending: VecDeque<RecordBatch>,
    pending_rows: usize,
    done: bool,
}

impl Rechunk {
    /// Takes the first `n` pending rows (`n <= pending_rows`) as one batch.
    fn take(&mut self, n: usize) -> Result<RecordBatch, String> {
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(front) = self.pending.pop_front() else {
                break;
            };
            if front.num_rows() <= need {
                need -= front.num_rows();
                parts.push(front);
            } else {
                parts.push(front.slice(0, need));
                self.pending
                    .push_front(front.slice(need, front.num_rows() - need));
                need = 0;
            }
        }
        self.pending_rows -= n - need;
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        concat_batches(&self.target, &parts).map_err(|e| e.to_string())
    }
}

impl Iterator for Rechunk {
    type Item = Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pending_rows >= self.rows {
                return Some(self.take(self.rows));
            }
            if self.done {
                return (self.pending_rows > 0).then(|| self.take(self.pending_rows));
            }
            match self.source.next() {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    self.pending.clear();
                    self.pending_rows = 0;
                    return Some(Err(e.to_string()));
                }
                Some(Ok(batch)) => {
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    match conform(&batch, &self.target) {
                        Ok(batch) => {
                            self.pending_rows += batch.num_rows();
                            self.pending.push_back(batch);
                        }
                        Err(e) => {
                            self.done = true;
                            self.pending.clear();
                            self.pending_rows = 0;
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use arrow::array::{
        Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
        TimestampNanosecondArray,
    };
    use arrow::ipc::reader::StreamReader;
    use parquet::arrow::ArrowWriter;

    use super::*;

    fn weather() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("station", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("temperature", DataType::Float64, true),
            Field::new("wind_direction", DataType::Int32, true),
        ]))
    }

    fn opts(batch_rows: usize) -> ReadOptions {
        ReadOptions {
            batch_rows,
            ..ReadOptions::default()
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> InputFile {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        InputFile::new(path, None).unwrap()
    }

    fn write_parquet(dir: &Path, name: &str, batch: &RecordBatch) -> InputFile {
        let path = dir.join(name);
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
        InputFile::new(path, None).unwrap()
    }

    fn read_all(
        file: &InputFile,
        target: &SchemaRef,
        opts: &ReadOptions,
    ) -> Result<Vec<RecordBatch>> {
        open(file, target, opts, 0)?.collect()
    }

    fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
        batch
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<T>()
            .unwrap()
    }

    /// `n` weather rows as CSV with columns in a different order and no `wind_direction`.
    fn csv_rows(n: usize) -> String {
        let mut text = String::from("temperature,ts,Station\n");
        for i in 0..n {
            let temp = if i % 2 == 0 {
                format!("{i}.5")
            } else {
                String::new()
            };
            text.push_str(&format!("{temp},2024-01-01T00:00:{i:02}Z,st{i}\n"));
        }
        text
    }

    #[test]
    fn formats_from_extensions() {
        let f = |p: &str| Format::detect(Path::new(p));
        assert_eq!(f("a/b.csv").unwrap(), Format::Csv);
        assert_eq!(f("B.CSV").unwrap(), Format::Csv);
        assert_eq!(f("x.parquet").unwrap(), Format::Parquet);
        assert_eq!(f("x.pq").unwrap(), Format::Parquet);
        assert_eq!(f("x.json").unwrap(), Format::Json);
        assert_eq!(f("x.ndjson").unwrap(), Format::Json);
        assert_eq!(f("x.JSONL").unwrap(), Format::Json);
        assert!(f("x.txt").unwrap_err().to_string().contains("--format"));
        assert_eq!(f("a/b.csv.gz").unwrap(), Format::Csv);
        assert_eq!(f("b.NDJSON.GZ").unwrap(), Format::Json);
        assert!(f("x.parquet.gz").is_err(), "Parquet compresses itself");
        assert!(f("noext").is_err());
        let forced = InputFile::new("data.txt", Some(Format::Csv)).unwrap();
        assert_eq!(forced.format, Format::Csv);
    }

    #[test]
    fn schema_decodes_from_every_ipc_shape() {
        use arrow::ipc::writer::{
            DictionaryTracker, IpcDataGenerator, IpcWriteOptions, write_message,
        };
        let schema = weather();
        let options = IpcWriteOptions::default();
        let encoded = || {
            IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
                &schema,
                &mut DictionaryTracker::new(false),
                &options,
            )
        };
        // A bare flatbuffer message.
        let bare = encoded().ipc_message;
        assert_eq!(decode_schema(&bare).unwrap(), schema);
        // Continuation marker + length + message (what Arrow Flight sends).
        let mut framed = Vec::new();
        write_message(&mut framed, encoded(), &options).unwrap();
        assert_eq!(decode_schema(&framed).unwrap(), schema);
        // A whole stream.
        let stream = encode_ipc(&RecordBatch::new_empty(schema.clone())).unwrap();
        assert_eq!(decode_schema(&stream).unwrap(), schema);

        assert!(decode_schema(&[]).is_err());
        assert!(decode_schema(b"not arrow at all").is_err());
    }

    #[test]
    fn csv_with_header_is_matched_by_name_and_cut_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "a.csv", &csv_rows(10));
        let batches = read_all(&file, &weather(), &opts(4)).unwrap();
        let sizes: Vec<_> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let b = &batches[1];
        assert_eq!(b.schema(), weather());
        assert_eq!(col::<StringArray>(b, "station").value(0), "st4");
        assert_eq!(
            col::<TimestampMicrosecondArray>(b, "ts").value(1),
            1_704_067_205_000_000
        );
        let temp = col::<Float64Array>(b, "temperature");
        assert_eq!(temp.value(0), 4.5);
        assert!(temp.is_null(1));
        assert_eq!(col::<Int32Array>(b, "wind_direction").null_count(), 4);
    }

    #[test]
    fn csv_without_header_and_other_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "a.csv",
            "s1;2024-01-01T00:00:00Z;1.5;90\ns2;2024-01-01T00:00:01Z;;\n",
        );
        let o = ReadOptions {
            batch_rows: 10,
            csv_header: false,
            csv_delimiter: b';',
            ..ReadOptions::default()
        };
        let batches = read_all(&file, &weather(), &o).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(
            col::<Int32Array>(&batches[0], "wind_direction").value(0),
            90
        );
        assert!(col::<Float64Array>(&batches[0], "temperature").is_null(1));
    }

    /// R's and pandas' exports: `NA` (and `NULL`, and the empty field) are nulls by
    /// default; `--null` replaces the set; a value that does not parse is named by file,
    /// line (as an editor counts, the header being line 1) and column name.
    #[test]
    fn csv_null_strings_and_errors_that_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let target = weather();
        let file = write(
            dir.path(),
            "r.csv",
            "station,ts,temperature,wind_direction\n\
             \"s1\",2024-01-01T00:00:00Z,NA,90\n\
             \"s2\",2024-01-01T00:00:01Z,NULL,NA\n\
             \"s3\",2024-01-01T00:00:02Z,,\n",
        );
        let b = &read_all(&file, &target, &opts(10)).unwrap()[0];
        assert_eq!(col::<Float64Array>(b, "temperature").null_count(), 3);
        assert_eq!(col::<Int32Array>(b, "wind_direction").null_count(), 2);
        // Only "-" is null now: NA is a value, and not a number.
        let only_dash = ReadOptions {
            csv_nulls: vec!["-".into()],
            ..opts(10)
        };
        let err = read_all(&file, &target, &only_dash)
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.csv"), "{err}");
        assert!(err.contains("'NA'"), "{err}");
        assert!(err.contains("column \"temperature\" at line 2"), "{err}");
        assert!(!err.contains("Row data"), "{err}");
        let dashes = write(
            dir.path(),
            "d.csv",
            "station,ts,temperature\ns1,2024-01-01T00:00:00Z,-\ns2,2024-01-01T00:00:01Z,oops\n",
        );
        let err = read_all(&dashes, &target, &only_dash)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'oops'"), "{err}");
        assert!(err.contains("column \"temperature\" at line 3"), "{err}");
    }

    #[test]
    fn csv_mismatches_fail_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let target = weather();
        let unknown = write(
            dir.path(),
            "u.csv",
            "station,ts,humidity\ns,2024-01-01T00:00:00Z,3\n",
        );
        let err = open(&unknown, &target, &opts(4), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"humidity\" is not in the dataset"), "{err}");
        let missing = write(dir.path(), "m.csv", "station,temperature\ns,1\n");
        let err = open(&missing, &target, &opts(4), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"ts\" is missing"), "{err}");
        let null_key = write(dir.path(), "n.csv", "station,ts\n,2024-01-01T00:00:00Z\n");
        let err = read_all(&null_key, &target, &opts(4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"station\" is not nullable"), "{err}");
        let bad_value = write(
            dir.path(),
            "v.csv",
            "station,ts,temperature\ns,2024-01-01T00:00:00Z,warm\n",
        );
        let err = read_all(&bad_value, &target, &opts(4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("v.csv") && err.contains("warm"), "{err}");
    }

    #[test]
    fn ndjson_by_name_with_missing_nullable_and_strict_fields() {
        let dir = tempfile::tempdir().unwrap();
        let target = weather();
        let file = write(
            dir.path(),
            "a.ndjson",
            r#"{"ts":"2024-01-01T00:00:00Z","station":"s1","temperature":1.5}
{"wind_direction":270,"station":"s2","ts":"2024-01-01T00:00:01Z"}
{"station":"s3","ts":"2024-01-01T00:00:02Z"}
"#,
        );
        let batches = read_all(&file, &target, &opts(2)).unwrap();
        let sizes: Vec<_> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [2, 1]);
        assert_eq!(
            col::<Int32Array>(&batches[0], "wind_direction").value(1),
            270
        );
        assert_eq!(col::<StringArray>(&batches[1], "station").value(0), "s3");

        let extra = write(
            dir.path(),
            "b.jsonl",
            r#"{"station":"s","ts":0,"humidity":3}"#,
        );
        let err = read_all(&extra, &target, &opts(2)).unwrap_err().to_string();
        assert!(err.contains("humidity"), "{err}");
        let no_key = write(dir.path(), "c.json", r#"{"ts":"2024-01-01T00:00:00Z"}"#);
        let err = read_all(&no_key, &target, &opts(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"station\" is not nullable"), "{err}");
    }

    fn parquet_batch(ts: Vec<i64>, wind: Vec<i64>) -> RecordBatch {
        let n = ts.len();
        let stations: Vec<String> = (0..n).map(|i| format!("st{i}")).collect();
        RecordBatch::try_from_iter(vec![
            (
                "wind_direction",
                Arc::new(Int64Array::from(wind)) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(TimestampNanosecondArray::from(ts).with_timezone("UTC")) as ArrayRef,
            ),
            ("station", Arc::new(StringArray::from(stations)) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn parquet_is_reordered_and_cast_losslessly() {
        let dir = tempfile::tempdir().unwrap();
        let target = weather();
        let ts: Vec<i64> = (0..5)
            .map(|i| 1_704_067_200_000_000_000 + i * 1_000)
            .collect();
        let file = write_parquet(
            dir.path(),
            "ok.parquet",
            &parquet_batch(ts, vec![0, 90, 180, 270, 359]),
        );
        let batches = read_all(&file, &target, &opts(3)).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].schema(), target);
        assert_eq!(
            col::<Int32Array>(&batches[1], "wind_direction").value(1),
            359
        );
        assert_eq!(
            col::<TimestampMicrosecondArray>(&batches[1], "ts").value(0),
            1_704_067_200_000_003
        );
        assert!(col::<Float64Array>(&batches[0], "temperature").is_null(0));

        // A value int32 cannot hold.
        let big = write_parquet(
            dir.path(),
            "big.parquet",
            &parquet_batch(vec![0], vec![3_000_000_000]),
        );
        let err = read_all(&big, &target, &opts(3)).unwrap_err().to_string();
        assert!(err.contains("\"wind_direction\""), "{err}");
        // Nanoseconds that microseconds would cut.
        let fine = write_parquet(
            dir.path(),
            "ns.parquet",
            &parquet_batch(vec![1_500], vec![0]),
        );
        let err = read_all(&fine, &target, &opts(3)).unwrap_err().to_string();
        assert!(err.contains("truncate"), "{err}");
    }

    #[test]
    fn parquet_type_mismatch_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let batch = RecordBatch::try_from_iter(vec![
            ("station", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC")) as ArrayRef,
            ),
        ])
        .unwrap();
        let file = write_parquet(dir.path(), "bad.parquet", &batch);
        let err = open(&file, &weather(), &opts(3), 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"station\" has type Int64 in the file but utf8 in the dataset"),
            "{err}"
        );
    }

    #[test]
    fn conversions() {
        use DataType::*;
        assert_eq!(conversion(&Int32, &Int64), Conversion::Widen);
        assert_eq!(conversion(&UInt32, &Int64), Conversion::Widen);
        assert_eq!(conversion(&Int32, &Float64), Conversion::Widen);
        assert_eq!(conversion(&Int32, &Float32), Conversion::RoundTrip);
        assert_eq!(conversion(&Int64, &Int32), Conversion::RoundTrip);
        assert_eq!(conversion(&Float64, &Float32), Conversion::RoundTrip);
        assert_eq!(conversion(&LargeUtf8, &Utf8), Conversion::Widen);
        assert_eq!(
            conversion(
                &Timestamp(TimeUnit::Nanosecond, None),
                &Timestamp(TimeUnit::Microsecond, None)
            ),
            Conversion::Coarsen(1_000)
        );
        assert_eq!(
            conversion(&Dictionary(Box::new(Int32), Box::new(Utf8)), &Utf8),
            Conversion::Widen
        );
        assert_eq!(conversion(&Utf8, &Int64), Conversion::Never);
        assert_eq!(conversion(&Int64, &Utf8), Conversion::Never);
        assert_eq!(conversion(&Boolean, &Int8), Conversion::Never);

        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0]));
        let ints = convert(&floats, &Int64).unwrap();
        assert_eq!(ints.as_primitive::<Int64Type>().values(), &[1, 2]);
        let halves: ArrayRef = Arc::new(Float64Array::from(vec![1.5]));
        assert!(convert(&halves, &Int64).unwrap_err().contains("change"));
    }

    fn numbered(items: &[Item]) -> Vec<(u64, u64)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Batch { sequence, rows, .. } => Some((*sequence, *rows)),
                Item::Skipped { .. } => None,
            })
            .collect()
    }

    fn skipped(items: &[Item]) -> (u64, u64) {
        items.iter().fold((0, 0), |(b, r), i| match i {
            Item::Skipped { batches, rows } => (b + batches, r + rows),
            Item::Batch { .. } => (b, r),
        })
    }

    #[test]
    fn sequences_are_deterministic_and_resume_skips_durable_batches() {
        let dir = tempfile::tempdir().unwrap();
        let target = weather();
        let ts: Vec<i64> = (0..10).map(|i| i * 1_000).collect();
        let files = vec![
            write(dir.path(), "a.csv", &csv_rows(10)),
            write_parquet(dir.path(), "b.parquet", &parquet_batch(ts, vec![1; 10])),
            write(dir.path(), "c.csv", &csv_rows(3)),
        ];
        let run = |last: u64| {
            let mut items = Vec::new();
            let n = produce(&files, &target, &opts(4), last, |i| {
                items.push(i);
                true
            })
            .unwrap();
            (n, items)
        };

        // Each file is cut on its own: 4+4+2, 4+4+2, 3.
        let (n, full) = run(0);
        assert_eq!(n, 7);
        assert_eq!(
            numbered(&full),
            [(1, 4), (2, 4), (3, 2), (4, 4), (5, 4), (6, 2), (7, 3)]
        );
        assert_eq!(skipped(&full), (0, 0));
        assert_eq!(run(0).1, full, "the same input gives the same batches");

        // Resume in the middle of the Parquet file: its first batch is skipped by offset,
        // and what is sent is byte-for-byte what the full run sent.
        let (n, resumed) = run(4);
        assert_eq!(n, 7);
        assert_eq!(skipped(&resumed), (4, 14));
        assert_eq!(numbered(&resumed), [(5, 4), (6, 2), (7, 3)]);
        let sent = |items: &[Item]| {
            items
                .iter()
                .filter(|i| matches!(i, Item::Batch { .. }))
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(sent(&resumed)[..], sent(&full)[4..]);

        // Resume at a file boundary, and past the end.
        let (_, resumed) = run(6);
        assert_eq!(numbered(&resumed), [(7, 3)]);
        assert_eq!(skipped(&resumed), (6, 20));
        let (n, resumed) = run(100);
        assert_eq!(n, 7);
        assert!(numbered(&resumed).is_empty());
        assert_eq!(skipped(&resumed), (7, 23));

        // The sent IPC streams decode to the dataset's schema.
        let Item::Batch { ipc, .. } = &full[4] else {
            panic!("expected a batch")
        };
        let mut reader = StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
        assert_eq!(reader.schema(), target);
        assert_eq!(reader.next().unwrap().unwrap().num_rows(), 4);

        // A consumer that stops early stops the reading.
        let mut count = 0;
        produce(&files, &target, &opts(4), 0, |_| {
            count += 1;
            count < 2
        })
        .unwrap();
        assert_eq!(count, 2);
    }
}
