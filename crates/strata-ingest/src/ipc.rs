//! Arrow IPC from clients, checked before arrow-rs decodes it.
//!
//! arrow-rs trusts the sizes inside an IPC message: a compressed buffer's 8-byte
//! "uncompressed length" prefix becomes an allocation of that size (a 2 KB message
//! claiming 1 TiB aborts the process), an LZ4 frame is decompressed to its end whatever
//! it claimed, and a buffer pointing outside the message body or a surplus of variadic
//! buffer counts is a panic. [`IpcGuard`] reads the message headers first and refuses
//! what would do any of that:
//!
//! - every buffer lies inside its message body; counts and lengths are not negative;
//! - the bytes the buffers decode into (the uncompressed lengths of compressed ones)
//!   add up to at most the guard's budget, across all messages it checks;
//! - an LZ4 buffer really decompresses to the length it claims (checked by streaming
//!   it into a sink, at most that many bytes plus one);
//! - rows and node lengths are at most 8 per budget byte (no column type takes less
//!   than a bit a row);
//! - variadic buffer counts (view types) match the schema's view columns;
//! - dictionary-encoded columns are refused: no dataset type is a dictionary.
//!
//! The limits are about what the client sent, so a violation is the client's mistake
//! (`InvalidArgument`, or `ResourceExhausted` for the budget).

use std::io::Read;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::{CompressionType, MessageHeader, root_as_message};
use bytes::Bytes;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcRefusal {
    /// The message is malformed or uses something Strata does not accept.
    Malformed(String),
    /// The message decodes into more bytes than the budget allows.
    TooLarge { decoded: u64, max: u64 },
}

impl std::fmt::Display for IpcRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpcRefusal::Malformed(m) => f.write_str(m),
            IpcRefusal::TooLarge { decoded, max } => write!(
                f,
                "the batch decodes into {decoded} bytes or more (compressed buffers counted \
                 at their uncompressed length), more than the {max} allowed"
            ),
        }
    }
}

fn malformed<T>(m: impl Into<String>) -> Result<T, IpcRefusal> {
    Err(IpcRefusal::Malformed(m.into()))
}

/// Checks the messages of one IPC stream (or one Flight exchange) in order.
#[derive(Debug)]
pub struct IpcGuard {
    budget: u64,
    used: u64,
    /// View columns of the schema seen last, in the order arrow-rs reads them.
    views: Option<usize>,
    /// The column types of that schema, to walk a batch's nodes and buffers.
    fields: Vec<DataType>,
}

impl IpcGuard {
    /// A guard letting the checked messages decode into at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            budget: budget as u64,
            used: 0,
            views: None,
            fields: Vec::new(),
        }
    }

    /// Checks one message: its flatbuffer header and its body.
    pub fn check(&mut self, header: &[u8], body: &[u8]) -> Result<(), IpcRefusal> {
        // arrow-rs converts schema flatbuffers with `unwrap`s on fields that a malformed
        // message leaves out (found by the ipc_decode fuzz target): a panic there is
        // the message's fault, and refused like any other malformation.
        unwind_as_refusal(|| self.check_message(header, body))
    }

    fn check_message(&mut self, header: &[u8], body: &[u8]) -> Result<(), IpcRefusal> {
        let message = match root_as_message(header) {
            Ok(m) => m,
            Err(e) => return malformed(format!("malformed Arrow IPC message header: {e}")),
        };
        let declared = message.bodyLength();
        if declared < 0 || declared as u64 > body.len() as u64 {
            return malformed(format!(
                "the message declares a body of {declared} bytes and carries {}",
                body.len()
            ));
        }
        match message.header_type() {
            MessageHeader::Schema => {
                let Some(schema) = message.header_as_schema() else {
                    return malformed("a schema message without a schema");
                };
                strata_types::ipc_schema::check(&schema).map_err(IpcRefusal::Malformed)?;
                let schema = arrow::ipc::convert::fb_to_schema(schema);
                let mut views = 0;
                for f in schema.fields() {
                    views += view_columns(f)?;
                }
                self.views = Some(views);
                self.fields = schema
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect();
                Ok(())
            }
            MessageHeader::RecordBatch => {
                let Some(batch) = message.header_as_record_batch() else {
                    return malformed("a record batch message without a batch");
                };
                let Some(views) = self.views else {
                    return malformed("a record batch came before the schema message");
                };
                self.check_batch(&batch, views, &body[..declared as usize])
            }
            MessageHeader::DictionaryBatch => {
                malformed("dictionary-encoded columns are not accepted: send plain arrays")
            }
            other => malformed(format!("unexpected Arrow IPC message type {other:?}")),
        }
    }

    fn check_batch(
        &mut self,
        batch: &arrow::ipc::RecordBatch<'_>,
        views: usize,
        body: &[u8],
    ) -> Result<(), IpcRefusal> {
        let max_rows = self.budget.saturating_mul(8).saturating_add(8);
        let length = batch.length();
        if length < 0 || length as u64 > max_rows {
            return malformed(format!("the batch declares {length} rows"));
        }
        for node in batch.nodes().into_iter().flatten() {
            if node.length() < 0
                || node.length() as u64 > max_rows
                || node.null_count() < 0
                || node.null_count() > node.length()
            {
                return malformed(format!(
                    "a column declares {} rows with {} nulls",
                    node.length(),
                    node.null_count()
                ));
            }
        }
        let buffers: Vec<_> = batch.buffers().into_iter().flatten().collect();
        let counts: Vec<i64> = batch
            .variadicBufferCounts()
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        if counts.len() != views {
            return malformed(format!(
                "{} variadic buffer counts for {views} view columns",
                counts.len()
            ));
        }
        let mut variadic: u64 = 0;
        for c in &counts {
            if *c < 0 || *c as u64 > buffers.len() as u64 {
                return malformed(format!("a variadic buffer count of {c}"));
            }
            variadic += *c as u64;
        }
        if variadic > buffers.len() as u64 {
            return malformed("more variadic buffers than buffers");
        }
        let codec = match batch.compression() {
            None => None,
            Some(c) => match c.codec() {
                CompressionType::LZ4_FRAME => Some(CompressionType::LZ4_FRAME),
                CompressionType::ZSTD => Some(CompressionType::ZSTD),
                other => return malformed(format!("unknown compression codec {other:?}")),
            },
        };
        let mut sizes = Vec::with_capacity(buffers.len());
        for b in &buffers {
            let (offset, len) = (b.offset(), b.length());
            let end = offset.checked_add(len);
            if offset < 0 || len < 0 || end.is_none_or(|end| end as u64 > body.len() as u64) {
                return malformed(format!(
                    "a buffer at offset {offset} of {len} bytes lies outside the {}-byte body",
                    body.len()
                ));
            }
            let data = &body[offset as usize..(offset + len) as usize];
            let decoded = match codec {
                None => data.len() as u64,
                Some(_) if data.is_empty() => 0,
                Some(codec) => {
                    let Some(prefix) = data.get(..8) else {
                        return malformed("a compressed buffer shorter than its length prefix");
                    };
                    let claimed = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
                    match claimed {
                        -1 => data.len() as u64 - 8,
                        0 => 0,
                        n if n < 0 => {
                            return malformed(format!("a compressed buffer claims {n} bytes"));
                        }
                        n => {
                            let n = n as u64;
                            if codec == CompressionType::LZ4_FRAME {
                                self.charge(n)?;
                                check_lz4(&data[8..], n)?;
                                sizes.push(n);
                                continue;
                            }
                            n
                        }
                    }
                }
            };
            self.charge(decoded)?;
            sizes.push(decoded);
        }
        // Validity bitmaps: arrow-rs asserts (panics) when one is shorter than its
        // column's rows (found by fuzzing); the other buffers it validates itself.
        let nodes: Vec<_> = batch.nodes().into_iter().flatten().collect();
        let mut walk = Walk {
            nodes: nodes.iter().map(|n| (n.length(), n.null_count())),
            sizes: sizes.into_iter(),
            variadic: counts.into_iter(),
        };
        for dt in &self.fields {
            walk.column(dt)?;
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<(), IpcRefusal> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget {
            return Err(IpcRefusal::TooLarge {
                decoded: self.used,
                max: self.budget,
            });
        }
        Ok(())
    }
}

/// Walks a batch's nodes and buffer sizes in the order arrow-rs reads them.
struct Walk<N, S, V> {
    nodes: N,
    sizes: S,
    variadic: V,
}

impl<N, S, V> Walk<N, S, V>
where
    N: Iterator<Item = (i64, i64)>,
    S: Iterator<Item = u64>,
    V: Iterator<Item = i64>,
{
    fn buffer(&mut self) -> Result<u64, IpcRefusal> {
        self.sizes
            .next()
            .map_or_else(|| malformed("fewer buffers than the columns need"), Ok)
    }

    fn skip(&mut self, n: usize) -> Result<(), IpcRefusal> {
        for _ in 0..n {
            self.buffer()?;
        }
        Ok(())
    }

    /// A buffer of `width`-byte values: arrow-rs reinterprets it as a slice of them
    /// and asserts (panics) when its length is not a multiple (the third fuzz finding).
    fn values(&mut self, width: usize) -> Result<(), IpcRefusal> {
        let size = self.buffer()?;
        if width > 1 && size % width as u64 != 0 {
            return malformed(format!("a buffer of {size} bytes for {width}-byte values"));
        }
        Ok(())
    }

    fn column(&mut self, dt: &DataType) -> Result<(), IpcRefusal> {
        let Some((rows, nulls)) = self.nodes.next() else {
            return malformed("fewer nodes than columns");
        };
        if matches!(dt, DataType::Null) {
            return Ok(());
        }
        let validity = self.buffer()?;
        if nulls > 0 && validity.saturating_mul(8) < rows as u64 {
            return malformed(format!(
                "a validity bitmap of {validity} bytes for {rows} rows"
            ));
        }
        match dt {
            DataType::Utf8 | DataType::Binary => {
                self.values(4)?;
                self.skip(1)
            }
            DataType::LargeUtf8 | DataType::LargeBinary => {
                self.values(8)?;
                self.skip(1)
            }
            DataType::Utf8View | DataType::BinaryView => {
                self.values(16)?;
                let extra = self.variadic.next().unwrap_or(0).max(0) as usize;
                self.skip(extra)
            }
            DataType::List(f) | DataType::Map(f, _) => {
                self.values(4)?;
                self.column(f.data_type())
            }
            DataType::LargeList(f) => {
                self.values(8)?;
                self.column(f.data_type())
            }
            DataType::ListView(f) => {
                self.values(4)?;
                self.values(4)?;
                self.column(f.data_type())
            }
            DataType::LargeListView(f) => {
                self.values(8)?;
                self.values(8)?;
                self.column(f.data_type())
            }
            DataType::FixedSizeList(f, _) => self.column(f.data_type()),
            DataType::Struct(fields) => {
                for f in fields {
                    self.column(f.data_type())?;
                }
                Ok(())
            }
            other => self.values(other.primitive_width().unwrap_or(1)),
        }
    }
}

/// Refuses a schema flatbuffer that arrow-rs's converter would `unwrap` or `panic!`
/// on (found by fuzzing): missing fields or type tables, list types without their one
/// child, bit widths and units outside the format, big-endian decimals; and types no
/// dataset has (unions, run-end encoding, dictionaries).
/// The view columns in `field` (itself and its children), refusing dictionaries.
fn view_columns(field: &Field) -> Result<usize, IpcRefusal> {
    fn walk(dt: &DataType) -> Result<usize, IpcRefusal> {
        Ok(match dt {
            DataType::Utf8View | DataType::BinaryView => 1,
            DataType::Dictionary(..) => {
                return malformed("dictionary-encoded columns are not accepted: send plain arrays");
            }
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _)
            | DataType::Map(f, _) => walk(f.data_type())?,
            DataType::Struct(fields) => {
                let mut n = 0;
                for f in fields {
                    n += walk(f.data_type())?;
                }
                n
            }
            DataType::Union(fields, _) => {
                let mut n = 0;
                for (_, f) in fields.iter() {
                    n += walk(f.data_type())?;
                }
                n
            }
            DataType::RunEndEncoded(a, b) => walk(a.data_type())? + walk(b.data_type())?,
            _ => 0,
        })
    }
    walk(field.data_type())
}

/// Streams an LZ4 frame into a sink, refusing it unless it holds exactly `claimed`
/// bytes; never reads more than `claimed + 1`.
fn check_lz4(frame: &[u8], claimed: u64) -> Result<(), IpcRefusal> {
    let decoder = lz4_flex::frame::FrameDecoder::new(frame);
    let mut bounded = decoder.take(claimed + 1);
    match std::io::copy(&mut bounded, &mut std::io::sink()) {
        Ok(n) if n == claimed => Ok(()),
        Ok(n) if n > claimed => malformed(format!(
            "an LZ4 buffer decompresses to more than the {claimed} bytes it claims"
        )),
        Ok(n) => malformed(format!(
            "an LZ4 buffer decompresses to {n} bytes and claims {claimed}"
        )),
        Err(e) => malformed(format!("an LZ4 buffer does not decompress: {e}")),
    }
}

/// Decodes an Arrow IPC stream into its schema and batches, after checking each of its
/// messages with an [`IpcGuard`] of `budget` bytes.
pub fn decode_stream(
    payload: &Bytes,
    budget: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>), IpcRefusal> {
    check_stream(payload, budget)?;
    unwind_as_refusal(|| decode_checked(payload))
}

/// Runs a decoding step, turning a panic inside arrow-rs (its converters `unwrap`
/// what a well-formed message has) into a refusal of the message.
pub fn unwind_as_refusal<T>(step: impl FnOnce() -> Result<T, IpcRefusal>) -> Result<T, IpcRefusal> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            malformed(format!(
                "malformed Arrow IPC message (the decoder gave up: {what})"
            ))
        }
    }
}

fn decode_checked(payload: &Bytes) -> Result<(SchemaRef, Vec<RecordBatch>), IpcRefusal> {
    let bad = |e: arrow::error::ArrowError| IpcRefusal::Malformed(e.to_string());
    let mut decoder = StreamDecoder::new();
    let mut buffer = Buffer::from(payload.clone());
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer).map_err(bad)? {
            Some(b) => batches.push(b),
            None => break,
        }
    }
    decoder.finish().map_err(bad)?;
    match decoder.schema() {
        Some(schema) => Ok((schema, batches)),
        None => malformed("no schema message"),
    }
}

/// One IPC message: its flatbuffer header and its body.
pub type Message<'a> = (&'a [u8], &'a [u8]);

/// Checks every message of an IPC stream.
fn check_stream(payload: &[u8], budget: usize) -> Result<(), IpcRefusal> {
    let mut guard = IpcGuard::new(budget);
    for (header, body) in stream_messages(payload)? {
        guard.check(header, body)?;
    }
    Ok(())
}

/// The messages of an IPC stream as (flatbuffer header, body) pairs, walking its
/// framing (`[0xFFFFFFFF] length header body`) up to the end-of-stream marker. A
/// stream cut short ends the list early (the decoder reports it).
pub fn stream_messages(payload: &[u8]) -> Result<Vec<Message<'_>>, IpcRefusal> {
    let mut messages = Vec::new();
    let mut rest = payload;
    loop {
        let Some(word) = rest.get(..4) else {
            return Ok(messages);
        };
        let mut len = i32::from_le_bytes(word.try_into().expect("4 bytes"));
        rest = &rest[4..];
        if len == -1 {
            let Some(word) = rest.get(..4) else {
                return Ok(messages);
            };
            len = i32::from_le_bytes(word.try_into().expect("4 bytes"));
            rest = &rest[4..];
        }
        if len == 0 {
            return Ok(messages); // end of stream
        }
        let Some(header) = usize::try_from(len).ok().and_then(|l| rest.get(..l)) else {
            return malformed(format!("a message header of {len} bytes"));
        };
        rest = &rest[header.len()..];
        let body_len = match root_as_message(header) {
            Ok(m) => m.bodyLength(),
            Err(e) => return malformed(format!("malformed Arrow IPC message header: {e}")),
        };
        let Some(body) = usize::try_from(body_len).ok().and_then(|l| rest.get(..l)) else {
            return malformed(format!(
                "the message declares a body of {body_len} bytes and {} remain",
                rest.len()
            ));
        };
        rest = &rest[body.len()..];
        messages.push((header, body));
    }
}

/// Rewrites the uncompressed-length prefix of every compressed buffer of a stream to
/// `claim`; returns how many it rewrote. For tests of the guard (a hostile client's
/// message), here so every test crate forges the same way.
#[doc(hidden)]
pub fn forge_uncompressed_lengths(stream: &mut [u8], claim: i64) -> usize {
    let mut places = Vec::new();
    let base = stream.as_ptr() as usize;
    for (header, body) in stream_messages(stream).unwrap_or_default() {
        let body_at = body.as_ptr() as usize - base;
        if let Some(batch) = root_as_message(header)
            .ok()
            .and_then(|m| m.header_as_record_batch())
        {
            for b in batch.buffers().into_iter().flatten() {
                if b.length() >= 8 {
                    places.push(body_at + b.offset() as usize);
                }
            }
        }
    }
    for at in &places {
        stream[*at..*at + 8].copy_from_slice(&claim.to_le_bytes());
    }
    places.len()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Schema;
    use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};

    use super::*;

    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("value {i}")),
                )),
            ],
        )
        .unwrap()
    }

    fn encode(batch: &RecordBatch, compression: Option<CompressionType>) -> Vec<u8> {
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)
            .unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new_with_options(&mut out, &batch.schema(), options).unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    /// Every input a fuzz target found a crash with (fuzz/regressions/ipc_decode) is
    /// refused cleanly now.
    #[test]
    fn fuzz_regressions_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/ipc_decode");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = Bytes::from(std::fs::read(&path).unwrap());
            // Refused by the checks, not by the unwind backstop: whatever the guard
            // lets through decodes without a panic.
            let checked = std::panic::catch_unwind(|| {
                check_stream(&data, 16 << 20).and_then(|()| decode_checked(&data))
            });
            assert!(checked.is_ok(), "{} panicked the decoder", path.display());
            seen += 1;
        }
        assert!(seen > 0, "no regression inputs in {}", dir.display());
    }

    #[test]
    fn honest_streams_decode_with_and_without_compression() {
        let b = batch(1000);
        for c in [
            None,
            Some(CompressionType::ZSTD),
            Some(CompressionType::LZ4_FRAME),
        ] {
            let ipc = Bytes::from(encode(&b, c));
            let (_, batches) = decode_stream(&ipc, 1 << 20).unwrap();
            assert_eq!(batches, vec![b.clone()], "{c:?}");
        }
    }

    #[test]
    fn a_compressed_buffer_claiming_a_tebibyte_is_refused_before_any_allocation() {
        for c in [CompressionType::ZSTD, CompressionType::LZ4_FRAME] {
            let mut ipc = encode(&batch(100), Some(c));
            assert!(forge_uncompressed_lengths(&mut ipc, 1 << 40) > 0);
            let e = decode_stream(&Bytes::from(ipc), 16 << 20).unwrap_err();
            assert!(matches!(e, IpcRefusal::TooLarge { .. }), "{c:?}: {e}");
        }
    }

    #[test]
    fn the_budget_counts_uncompressed_bytes() {
        let b = batch(10_000);
        let ipc = Bytes::from(encode(&b, Some(CompressionType::ZSTD)));
        assert!(ipc.len() < 64 << 10);
        let e = decode_stream(&ipc, 64 << 10).unwrap_err();
        assert!(matches!(e, IpcRefusal::TooLarge { .. }), "{e}");
        decode_stream(&ipc, 1 << 20).unwrap();
    }

    #[test]
    fn an_lz4_buffer_that_lies_about_its_length_is_refused() {
        let mut ipc = encode(&batch(1000), Some(CompressionType::LZ4_FRAME));
        assert!(forge_uncompressed_lengths(&mut ipc, 16) > 0);
        let e = decode_stream(&Bytes::from(ipc), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("more than the 16 bytes"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_streams_are_errors_not_panics() {
        let ipc = encode(&batch(100), Some(CompressionType::ZSTD));
        for cut in [1, 5, 9, 40, ipc.len() / 2, ipc.len() - 9] {
            let r = decode_stream(&Bytes::copy_from_slice(&ipc[..cut]), 1 << 20);
            assert!(r.is_err(), "cut at {cut}");
        }
        let mut flipped = ipc.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
            let _ = decode_stream(&Bytes::copy_from_slice(&flipped), 1 << 20);
        }
    }
}
