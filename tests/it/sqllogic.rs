//! SQL behaviour as sqllogictest files (`tests/sql/*.slt`), run against a real server
//! through the `Query` RPC.
//!
//! Statements that write or change versions answer `statement ok` / `statement count
//! N` (N: the rows they affected); errors read `<gRPC code>: <message>`, so a file can
//! say `statement error InvalidArgument: SQL parse error`. Values print with Arrow's
//! display (nulls as `NULL`, empty strings as `(empty)`).
//!
//! `STRATA_SLT_COMPLETE=1` rewrites the files with the results the server gives: for
//! writing new files, never for making a failing one pass unread.

use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use strata_proto::v1::QueryRequest;
use strata_proto::v1::strata_client::StrataClient;
use strata_server::{Server, ServerConfig};
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
struct SqlError {
    code: tonic::Code,
    message: String,
}

impl From<tonic::Status> for SqlError {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

struct StrataDb {
    client: StrataClient<Channel>,
}

/// Runs a statement and decodes its Arrow IPC result.
async fn query(
    client: &mut StrataClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, SqlError> {
    let mut stream = client
        .query(QueryRequest { sql: sql.into() })
        .await?
        .into_inner();
    let mut ipc = Vec::new();
    while let Some(msg) = stream.message().await? {
        ipc.extend_from_slice(&msg.arrow_ipc);
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .map_err(|e| SqlError {
            code: tonic::Code::Internal,
            message: format!("bad IPC from the server: {e}"),
        })?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| SqlError {
        code: tonic::Code::Internal,
        message: format!("bad IPC from the server: {e}"),
    })
}

fn is_write(sql: &str) -> bool {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    [
        "CREATE", "DROP", "ALTER", "INSERT", "DELETE", "RESTORE", "OPTIMIZE", "VACUUM",
    ]
    .contains(&first.as_str())
}

fn column_type(dt: &DataType) -> DefaultColumnType {
    if dt.is_integer() {
        DefaultColumnType::Integer
    } else if dt.is_floating() || matches!(dt, DataType::Decimal128(..)) {
        DefaultColumnType::FloatingPoint
    } else if matches!(
        dt,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    ) {
        DefaultColumnType::Text
    } else {
        DefaultColumnType::Any
    }
}

#[async_trait]
impl AsyncDB for StrataDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let batches = query(&mut self.client, sql).await?;
        if is_write(sql) {
            // Write statements answer (operation, dataset, version, rows); INSERT
            // answers count.
            let affected = batches
                .iter()
                .find(|b| b.num_rows() > 0)
                .and_then(|b| {
                    let c = b
                        .column_by_name("rows")
                        .or_else(|| b.column_by_name("count"))?;
                    let c = arrow::compute::cast(c, &DataType::UInt64).ok()?;
                    let c = c.as_any().downcast_ref::<arrow::array::UInt64Array>()?;
                    (!c.is_null(0)).then(|| c.value(0))
                })
                .unwrap_or(0);
            return Ok(DBOutput::StatementComplete(affected));
        }
        let Some(first) = batches.first() else {
            return Ok(DBOutput::Rows {
                types: vec![],
                rows: vec![],
            });
        };
        let types = first
            .schema()
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &batches {
            let formatters = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SqlError {
                    code: tonic::Code::Internal,
                    message: e.to_string(),
                })?;
            for r in 0..b.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| {
                            let s = f.value(r).to_string();
                            if s.is_empty() { "(empty)".into() } else { s }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    /// Connections are plain gRPC channels: dropping one closes it.
    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "strata"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().to_path_buf()))
        .await
        .unwrap();
    let url = server.url();
    let complete = std::env::var_os("STRATA_SLT_COMPLETE").is_some();
    let mut failures = Vec::new();
    for file in slt_files() {
        let url = url.clone();
        let mut runner = Runner::new(move || {
            let url = url.clone();
            async move {
                let client = StrataClient::connect(url).await.map_err(|e| SqlError {
                    code: tonic::Code::Unavailable,
                    message: e.to_string(),
                })?;
                Ok(StrataDb { client })
            }
        });
        if complete {
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap();
        } else if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{}: {}", file.display(), e.display(true)));
        }
    }
    server.shutdown().await.unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
