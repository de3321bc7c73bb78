//! `strata watch DATASET`: a dataset's changes printed as they commit (the `Subscribe`
//! RPC), each version's rows as a table or as newline-delimited JSON.
//!
//! ```text
//!  Subscribe(dataset, from, columns, filter) ─▶ schema, then per version: batches… end
//!      ─▶ table:  "version 7 (upsert) at 2026-… UTC: 3 changes" and its rows
//!         ndjson: one object per row (with _change_type, _commit_version, …)
//! ```

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use strata_proto::v1::SubscribeRequest;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::group;
use crate::query::{output_error, write_table};

/// How `strata watch` prints changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchFormat {
    /// A heading per version, then its rows as a table.
    #[default]
    Table,
    /// Newline-delimited JSON: one object per changed row.
    Ndjson,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Dataset name.
    pub dataset: String,
    /// The first version whose changes to print (its tag or time are not taken here:
    /// `strata versions` lists the numbers). Default: only what commits from now on.
    #[arg(long, value_name = "VERSION")]
    pub from: Option<u64>,
    /// Only changed rows matching this SQL condition (it may use `_change_type`),
    /// evaluated on the server, e.g. --where "temperature > 40".
    #[arg(long = "where", value_name = "CONDITION")]
    pub filter: Option<String>,
    /// Columns to print, comma-separated (the change columns always follow).
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub columns: Vec<String>,
    /// Stop once this version's changes are printed (default: run until interrupted).
    #[arg(long, value_name = "VERSION")]
    pub until: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: WatchFormat,
}

/// Follows the dataset until `--until` (or the server ends the stream).
pub async fn run(client: &mut Client, args: &WatchArgs, out: &mut dyn Write) -> Result<()> {
    let context = format!("watch {}", args.dataset);
    let mut stream = client
        .subscribe(SubscribeRequest {
            dataset: args.dataset.clone(),
            from_version: args.from,
            columns: args.columns.clone(),
            filter: args.filter.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| Error::status(&context, &s))?
        .into_inner();
    let mut decoder = StreamDecoder::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(status) => return Err(Error::status(&context, &status)),
        };
        let mut buffer = Buffer::from(message.arrow_ipc.clone());
        while !buffer.is_empty() {
            let decoded = decoder.decode(&mut buffer).map_err(|e| {
                Error::Protocol(format!("the server sent a bad Arrow IPC stream: {e}"))
            })?;
            if let Some(batch) = decoded {
                pending.push(batch);
            }
        }
        if !message.version_complete {
            continue;
        }
        let rows: usize = pending.iter().map(RecordBatch::num_rows).sum();
        match args.format {
            WatchFormat::Table => {
                let at = arrow::array::temporal_conversions::timestamp_ms_to_datetime(
                    message.timestamp_ms,
                )
                .map(|t| format!("{t} UTC"))
                .unwrap_or_default();
                let what = match rows {
                    0 => "no changes".to_string(),
                    1 => "1 change".to_string(),
                    n => format!("{} changes", group(n as u64)),
                };
                writeln!(
                    out,
                    "version {} ({}) at {at}: {what}",
                    message.version, message.operation
                )
                .map_err(output_error)?;
                if rows > 0 {
                    let schema = pending[0].schema();
                    write_table(out, &schema, &pending)?;
                }
            }
            WatchFormat::Ndjson => {
                let mut writer = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut *out);
                for b in &pending {
                    writer.write(b)?;
                }
                writer.finish()?;
            }
        }
        out.flush().map_err(output_error)?;
        pending.clear();
        if args.until.is_some_and(|u| message.version >= u) {
            return Ok(());
        }
    }
}
