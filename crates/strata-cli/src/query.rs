//! Running one SQL statement through the `Query` RPC and writing its result.
//!
//! ```text
//!  Query(sql) ─▶ QueryResponse{arrow_ipc}… (one Arrow IPC stream cut into messages)
//!      ─▶ StreamDecoder ─▶ schema, record batches as they arrive
//!      ─▶ table: collect, then one aligned table and "N rows in T s"
//!         csv / json / ndjson: written batch by batch
//!         arrow: the IPC bytes themselves, passed through (end-of-stream marker added)
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow::util::pretty::{pretty_format_batches_with_options, pretty_format_batches_with_schema};
use strata_proto::v1::QueryRequest;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::group;

/// The end-of-stream marker of the Arrow IPC stream format.
const IPC_EOS: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// How `strata sql` prints results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table, then the row count and elapsed time.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of row objects per statement.
    Json,
    /// Newline-delimited JSON: one object per row.
    Ndjson,
    /// The raw Arrow IPC stream (binary; redirect stdout to a file or a pipe).
    Arrow,
    /// A Parquet file (zstd): with --output FILE only.
    Parquet,
}

impl OutputFormat {
    /// The format a file's extension names: .parquet/.pq, .csv, .json, .ndjson/.jsonl,
    /// .arrow/.arrows (else none).
    pub fn of_path(path: &std::path::Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "parquet" | "pq" => Self::Parquet,
            "csv" => Self::Csv,
            "json" => Self::Json,
            "ndjson" | "jsonl" => Self::Ndjson,
            "arrow" | "arrows" | "ipc" => Self::Arrow,
            "txt" => Self::Table,
            _ => return None,
        })
    }
}

/// Runs `sql` and writes its whole result to the file `path` in `format` (on this
/// machine: the server never writes where a client says). The file appears only once
/// complete: the result goes to a temporary file beside it, renamed at the end.
pub async fn export(
    client: &mut Client,
    sql: &str,
    context: &str,
    format: OutputFormat,
    path: &std::path::Path,
) -> Result<Outcome> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?;
    let partial = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let written = async {
        match format {
            OutputFormat::Parquet => {
                let mut sink = ParquetSink {
                    file: Some(file),
                    writer: None,
                };
                run_into(client, sql, context, &mut sink).await
            }
            other => {
                let mut out = std::io::BufWriter::new(file);
                let all = Display {
                    max_rows: 0,
                    ..Display::default()
                };
                let outcome = run(client, sql, context, other, &all, &mut out).await?;
                out.flush().map_err(output_error)?;
                Ok(outcome)
            }
        }
    }
    .await;
    match written {
        Ok(outcome) => {
            std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))?;
            Ok(outcome)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Writes a Parquet file (zstd), made when the first batch (or the end) gives the schema.
struct ParquetSink {
    file: Option<std::fs::File>,
    writer: Option<parquet::arrow::ArrowWriter<std::fs::File>>,
}

impl ParquetSink {
    fn writer(
        &mut self,
        schema: &SchemaRef,
    ) -> Result<&mut parquet::arrow::ArrowWriter<std::fs::File>> {
        if self.writer.is_none() {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let file = self
                .file
                .take()
                .expect("the file, until the writer takes it");
            let writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
                .map_err(|e| Error::Protocol(format!("cannot write Parquet: {e}")))?;
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("made above"))
    }
}

impl Sink for ParquetSink {
    fn batch(&mut self, schema: &SchemaRef, batch: RecordBatch) -> Result<()> {
        self.writer(schema)?
            .write(&batch)
            .map_err(|e| Error::Protocol(format!("cannot write Parquet: {e}")))
    }

    fn finish(&mut self, schema: &SchemaRef, _: &Outcome) -> Result<()> {
        self.writer(schema)?;
        let writer = self.writer.take().expect("made above");
        writer
            .close()
            .map_err(|e| Error::Protocol(format!("cannot write Parquet: {e}")))?;
        Ok(())
    }
}

/// What a statement returned.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub schema: SchemaRef,
    pub rows: u64,
    /// From sending the request to the end of the result stream.
    pub elapsed: Duration,
}

/// An error writing the output (stdout closed, disk full, …).
pub fn output_error(e: std::io::Error) -> Error {
    Error::Output(e)
}

/// Where decoded results go.
trait Sink {
    fn batch(&mut self, schema: &SchemaRef, batch: RecordBatch) -> Result<()>;
    /// The stream ended; `schema` is its schema.
    fn finish(&mut self, schema: &SchemaRef, outcome: &Outcome) -> Result<()>;
    /// Raw IPC bytes as received (for the `arrow` format).
    fn raw(&mut self, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// Runs `sql` and streams its decoded batches into `sink`.
async fn run_into(
    client: &mut Client,
    sql: &str,
    context: &str,
    sink: &mut dyn Sink,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut responses = client
        .query(QueryRequest {
            sql: sql.to_string(),
        })
        .await
        .map_err(|s| Error::status(context, &s))?
        .into_inner();
    let mut decoder = StreamDecoder::new();
    let mut rows = 0u64;
    loop {
        let chunk = match responses.message().await {
            Ok(Some(response)) => response.arrow_ipc,
            Ok(None) => break,
            Err(status) => return Err(Error::status(context, &status)),
        };
        sink.raw(&chunk)?;
        let mut buffer = Buffer::from(chunk);
        while !buffer.is_empty() {
            let decoded = decoder.decode(&mut buffer).map_err(|e| {
                Error::Protocol(format!("the server sent a bad Arrow IPC stream: {e}"))
            })?;
            if let Some(batch) = decoded {
                rows += batch.num_rows() as u64;
                let schema = batch.schema();
                sink.batch(&schema, batch)?;
            }
        }
    }
    decoder
        .finish()
        .map_err(|e| Error::Protocol(format!("the server's Arrow IPC stream is cut short: {e}")))?;
    let schema = decoder.schema().ok_or_else(|| {
        Error::Protocol("the server ended the query without sending a schema".into())
    })?;
    let outcome = Outcome {
        schema: schema.clone(),
        rows,
        elapsed: started.elapsed(),
    };
    sink.finish(&schema, &outcome)?;
    Ok(outcome)
}

/// Runs `sql` and returns its schema and batches. A failed call is an
/// [`Error::Status`] whose context is `context`.
pub async fn collect(
    client: &mut Client,
    sql: &str,
    context: &str,
) -> Result<(Outcome, Vec<RecordBatch>)> {
    let mut sink = Collect::default();
    let outcome = run_into(client, sql, context, &mut sink).await?;
    Ok((outcome, sink.batches))
}

/// How the table format shows a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Display {
    /// Rows shown at most; the rest are counted, not kept (0: all).
    pub max_rows: usize,
    /// One `column | value` block per row (psql's `\x`).
    pub expanded: bool,
    /// The elapsed time after the row count.
    pub timing: bool,
}

/// Rows the table format shows unless told otherwise.
pub const DEFAULT_MAX_ROWS: usize = 1000;

impl Default for Display {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_MAX_ROWS,
            expanded: false,
            timing: true,
        }
    }
}

/// Runs `sql` and writes its result to `out` in `format` (the table format as `display`
/// says). A failed call is an [`Error::Status`] whose context is `context`.
pub async fn run(
    client: &mut Client,
    sql: &str,
    context: &str,
    format: OutputFormat,
    display: &Display,
    out: &mut dyn Write,
) -> Result<Outcome> {
    let outcome = match format {
        OutputFormat::Table => {
            let mut sink = Limited {
                max_rows: display.max_rows,
                ..Limited::default()
            };
            let outcome = run_into(client, sql, context, &mut sink).await?;
            if display.expanded {
                write_expanded(out, &outcome.schema, &sink.batches)?;
            } else {
                write_table(out, &outcome.schema, &sink.batches)?;
            }
            let mut summary = if (sink.kept as u64) < outcome.rows {
                format!(
                    "{} of {} rows shown (--max-rows N shows more, 0 all)",
                    group(sink.kept as u64),
                    group(outcome.rows)
                )
            } else {
                format!(
                    "{} row{}",
                    group(outcome.rows),
                    if outcome.rows == 1 { "" } else { "s" }
                )
            };
            if display.timing {
                summary.push_str(&format!(" in {:.3} s", outcome.elapsed.as_secs_f64()));
            }
            writeln!(out, "{summary}").map_err(output_error)?;
            outcome
        }
        OutputFormat::Csv => run_into(client, sql, context, &mut CsvSink::new(out)).await?,
        OutputFormat::Json => run_into(client, sql, context, &mut JsonSink::new(out, true)).await?,
        OutputFormat::Ndjson => {
            run_into(client, sql, context, &mut JsonSink::new(out, false)).await?
        }
        OutputFormat::Arrow => run_into(client, sql, context, &mut RawSink::new(out)).await?,
        OutputFormat::Parquet => {
            return Err(Error::Invalid(
                "Parquet is written to a file: give --output FILE (or COPY (…) TO 'file')".into(),
            ));
        }
    };
    out.flush().map_err(output_error)?;
    Ok(outcome)
}

/// `3 rows in 0.012 s`
pub fn summary_line(outcome: &Outcome) -> String {
    format!(
        "{} row{} in {:.3} s",
        group(outcome.rows),
        if outcome.rows == 1 { "" } else { "s" },
        outcome.elapsed.as_secs_f64()
    )
}

/// How a null is shown (an empty string shows as nothing).
const NULL_TEXT: &str = "NULL";

/// Writes `batches` as an aligned table with a header (also when there are no rows).
pub fn write_table(out: &mut dyn Write, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let table = if batches.is_empty() {
        pretty_format_batches_with_schema(schema.clone(), batches)?.to_string()
    } else {
        let options = FormatOptions::default().with_null(NULL_TEXT);
        pretty_format_batches_with_options(batches, &options)?.to_string()
    };
    writeln!(out, "{table}").map_err(output_error)
}

/// Writes `batches` one row at a time: a `-[ RECORD n ]-` line, then `column | value`.
pub fn write_expanded(
    out: &mut dyn Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<()> {
    let width = schema
        .fields()
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(0);
    let options = FormatOptions::default().with_null(NULL_TEXT);
    let mut n = 0;
    for batch in batches {
        let values = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            n += 1;
            writeln!(
                out,
                "-[ RECORD {n} ]{}",
                "-".repeat(width.saturating_sub(4))
            )
            .map_err(output_error)?;
            for (field, value) in schema.fields().iter().zip(&values) {
                writeln!(out, "{:width$} | {}", field.name(), value.value(row))
                    .map_err(output_error)?;
            }
        }
    }
    if n == 0 {
        writeln!(out, "(no rows)").map_err(output_error)?;
    }
    Ok(())
}

/// Keeps the first `max_rows` rows (all when 0) and counts the rest without keeping them.
#[derive(Default)]
struct Limited {
    max_rows: usize,
    batches: Vec<RecordBatch>,
    kept: usize,
}

impl Sink for Limited {
    fn batch(&mut self, _: &SchemaRef, batch: RecordBatch) -> Result<()> {
        let room = if self.max_rows == 0 {
            usize::MAX
        } else {
            self.max_rows - self.kept
        };
        if room == 0 || batch.num_rows() == 0 {
            return Ok(());
        }
        let keep = batch.num_rows().min(room);
        self.kept += keep;
        self.batches.push(if keep < batch.num_rows() {
            // A copy, so the batch's whole buffers are not held for a few rows.
            let part = batch.slice(0, keep);
            let columns = part
                .columns()
                .iter()
                .map(|c| arrow::compute::concat(&[c.as_ref()]))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            RecordBatch::try_new(part.schema(), columns)?
        } else {
            batch
        });
        Ok(())
    }

    fn finish(&mut self, _: &SchemaRef, _: &Outcome) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Collect {
    batches: Vec<RecordBatch>,
}

impl Sink for Collect {
    fn batch(&mut self, _: &SchemaRef, batch: RecordBatch) -> Result<()> {
        self.batches.push(batch);
        Ok(())
    }

    fn finish(&mut self, _: &SchemaRef, _: &Outcome) -> Result<()> {
        Ok(())
    }
}

struct CsvSink<'a> {
    writer: arrow::csv::Writer<&'a mut dyn Write>,
    wrote: bool,
}

impl<'a> CsvSink<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            writer: arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out),
            wrote: false,
        }
    }
}

impl Sink for CsvSink<'_> {
    fn batch(&mut self, _: &SchemaRef, batch: RecordBatch) -> Result<()> {
        self.writer.write(&batch)?;
        self.wrote = true;
        Ok(())
    }

    fn finish(&mut self, schema: &SchemaRef, _: &Outcome) -> Result<()> {
        if !self.wrote {
            // No batch: the header alone, from the schema.
            self.writer.write(&RecordBatch::new_empty(schema.clone()))?;
        }
        Ok(())
    }
}

enum JsonWriter<'a> {
    Array(arrow::json::ArrayWriter<&'a mut dyn Write>),
    Lines(arrow::json::LineDelimitedWriter<&'a mut dyn Write>),
}

struct JsonSink<'a> {
    writer: JsonWriter<'a>,
}

impl<'a> JsonSink<'a> {
    fn new(out: &'a mut dyn Write, array: bool) -> Self {
        // Nulls are written as `null` so every object has every column.
        let builder = arrow::json::WriterBuilder::new().with_explicit_nulls(true);
        let writer = if array {
            JsonWriter::Array(builder.build(out))
        } else {
            JsonWriter::Lines(builder.build(out))
        };
        Self { writer }
    }
}

impl Sink for JsonSink<'_> {
    fn batch(&mut self, _: &SchemaRef, batch: RecordBatch) -> Result<()> {
        match &mut self.writer {
            JsonWriter::Array(w) => w.write(&batch)?,
            JsonWriter::Lines(w) => w.write(&batch)?,
        }
        Ok(())
    }

    fn finish(&mut self, _: &SchemaRef, _: &Outcome) -> Result<()> {
        match &mut self.writer {
            JsonWriter::Array(w) => {
                w.finish()?;
                // The array writer leaves the line open.
                w.get_mut().write_all(b"\n").map_err(output_error)?;
            }
            JsonWriter::Lines(w) => w.finish()?,
        }
        Ok(())
    }
}

/// Passes the IPC bytes through, adding the end-of-stream marker if the server did not
/// send one, so the output is a complete stream (`pyarrow.ipc.open_stream`).
struct RawSink<'a> {
    out: &'a mut dyn Write,
    /// The last up to 8 bytes written.
    tail: Vec<u8>,
}

impl<'a> RawSink<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            tail: Vec::with_capacity(16),
        }
    }
}

impl Sink for RawSink<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(output_error)?;
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(8)..]);
        let excess = self.tail.len().saturating_sub(8);
        self.tail.drain(..excess);
        Ok(())
    }

    fn batch(&mut self, _: &SchemaRef, _: RecordBatch) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, _: &SchemaRef, _: &Outcome) -> Result<()> {
        if self.tail != IPC_EOS {
            self.out.write_all(&IPC_EOS).map_err(output_error)?;
        }
        Ok(())
    }
}

/// The first column of the first row of a result, as text (for narratives and tests).
pub fn scalar_text(batches: &[RecordBatch]) -> Option<String> {
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let options = arrow::util::display::FormatOptions::default();
    let formatter =
        arrow::util::display::ArrayFormatter::try_new(batch.column(0).as_ref(), &options).ok()?;
    Some(formatter.value(0).to_string())
}
