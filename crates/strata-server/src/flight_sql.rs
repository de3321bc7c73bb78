//! Arrow Flight SQL on Strata's port, plus `DoPut` into datasets and pipeline actions.
//!
//! ```text
//!  GetFlightInfo(CommandStatementQuery sql)
//!     query: Engine::prepare (nothing runs) ─▶ FlightInfo{schema, one endpoint:
//!            TicketStatementQuery('Q' + sql)}; DoGet plans again and runs it
//!     write: prepare + execute now ─▶ FlightInfo{one endpoint:
//!            TicketStatementQuery('R' + the answer as Arrow IPC)}; DoGet replays it
//!  DoPut(CommandStatementUpdate sql) ──────── prepare + execute ─▶ affected rows
//!  CreatePreparedStatement(sql) ───────────── prepare ─▶ handle, dataset and parameter
//!                                             schemas; the server keeps {sql, bound rows}
//!  DoPut(CommandPreparedStatementQuery) ───── bind parameter rows to the handle
//!  GetFlightInfo/DoGet(prepared) ──────────── as for statements, with the bound rows
//!  DoPut(CommandPreparedStatementUpdate) ──── one execution per parameter row
//!  GetCatalogs / GetDbSchemas / GetTables / GetTableTypes / GetSqlInfo
//!  DoPut, PATH descriptor [dataset(, producer)] ─▶ crate::flight (the ingester)
//!  DoPut(CommandStatementIngest) (ADBC adbc_ingest, mode append) ─▶ the ingester;
//!                                             answers the rows once all are durable
//!  DoAction flush · rollback · tag · delete_tag · list_versions ─▶ crate::flight_actions
//! ```
//!
//! Every execution plans the statement again, so it reads the datasets as they are when
//! it runs (a prepared statement is its SQL text, not a pinned snapshot). A query runs at
//! `DoGet`. A write statement (DDL, `INSERT`, `DELETE`, `RESTORE`, …) sent down the query
//! path runs at `GetFlightInfo`, exactly once, and its one-row answer travels in the
//! ticket: ADBC sends everything down that path (`cursor.execute("INSERT …")`) and
//! reads the result on a background task that it cancels when the cursor moves on, so a
//! write left to `DoGet` could be cancelled before it ran. Statement tickets carry the
//! SQL text or the answer, so they need no server state; prepared statements live in
//! memory until closed or until their connection goes (see [`crate::prepared`]) and do
//! not survive a restart.
//!
//! Parameters are positional: `$1, $2, …`, or `?` (ADBC's and JDBC's style), which is
//! numbered `$1, $2, …` in order before planning. A bound value is cast to the type the
//! planner inferred for its parameter (Python's ints arrive as int64, say, for an int32
//! column). A query runs with one parameter row; a write runs once per row.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, UInt64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder,
};
use arrow_flight::sql::server::{DoPutError, FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    SqlNullOrdering, SqlSupportedCaseSensitivity, SqlSupportedTransaction, SupportedSqlGrammar,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};
use prost::Message;
use strata_ingest::{Ingester, IpcGuard, IpcRefusal};
use strata_query::catalog::{CATALOG, SCHEMA};
use strata_query::datafusion::common::ScalarValue;
use strata_query::datafusion::physical_plan::SendableRecordBatchStream;
use strata_query::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use strata_query::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use strata_query::dialect::StrataDialect;
use strata_query::{Access, Engine, Prepared};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::auth::{self, Authenticator, Caller};
use crate::conn::ConnInfo;
use crate::error::{query_status, table_code};
use crate::flight::{BoxStream, FlightIngest};
use crate::flight_actions::Actions;
use crate::prepared::{Plan, PreparedStatements, Statement};
use crate::service::client_deadline;
use crate::subscribe::{self, SUBSCRIBE_TYPE_URL, Subscriptions};
use strata_proto::v1::SubscribeRequest as PbSubscribeRequest;

/// Who sent a request (none for in-process calls).
fn caller<T>(request: &Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

/// The connection a request came on (none for in-process calls).
fn conn<T>(request: &Request<T>) -> Option<&ConnInfo> {
    crate::conn::conn_info(request.extensions())
}

/// The only table type Strata has.
const TABLE_TYPE: &str = "TABLE";

type DoGetStream = BoxStream<FlightData>;

/// Strata's Flight service: Flight SQL, `DoPut` into datasets, and pipeline actions.
#[derive(Clone)]
pub struct StrataFlight {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    ingest: FlightIngest,
    actions: Actions,
    prepared: Arc<PreparedStatements>,
    sql_info: SqlInfoData,
    /// Most bytes bound parameters (or a forged answer ticket) may decode into.
    max_decoded: usize,
    /// The accepted tokens, for Handshake; `None` without authentication.
    auth: Option<Arc<Authenticator>>,
    /// Change feeds, for DoGet with a subscription ticket.
    subscriptions: Subscriptions,
}

impl std::fmt::Debug for StrataFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrataFlight")
            .field("engine", &self.inner.engine)
            .finish_non_exhaustive()
    }
}

impl StrataFlight {
    /// `max_decoded`: the most bytes the Arrow data of one request (parameter rows)
    /// may decode into.
    pub fn new(
        ingester: Ingester,
        engine: Engine,
        max_decoded: usize,
        max_prepared_per_session: usize,
        auth: Option<Arc<Authenticator>>,
        subscriptions: Subscriptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                ingest: FlightIngest::new(ingester.clone()),
                actions: Actions::new(ingester),
                prepared: PreparedStatements::new(max_prepared_per_session),
                sql_info: sql_info(),
                max_decoded,
                auth,
                subscriptions,
            }),
        }
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The open prepared statements of every session.
    pub fn prepared_statements(&self) -> Arc<PreparedStatements> {
        self.inner.prepared.clone()
    }

    /// Plans a statement for `caller`, who must have the role it needs.
    async fn prepare(&self, caller: Option<&Caller>, sql: &str) -> Result<Prepared, Status> {
        self.engine().check_size(sql).map_err(query_status)?;
        let sql = number_placeholders(sql)?;
        debug!(sql = %sql, "flight sql: prepare");
        let prepared = self.engine().prepare(&sql).await.map_err(query_status)?;
        if let Some(caller) = caller {
            caller.require(prepared.access(), "this statement")?;
        }
        Ok(prepared)
    }

    /// `plan` when `caller` may run it now, else the statement planned again.
    async fn reuse_or_prepare(
        &self,
        plan: Option<Plan>,
        caller: Option<&Caller>,
        sql: &str,
    ) -> Result<Arc<Prepared>, Status> {
        match plan.filter(|p| p.usable_by(caller)) {
            Some(plan) => Ok(plan.prepared),
            None => Ok(Arc::new(self.prepare(caller, sql).await?)),
        }
    }

    fn statement(&self, conn: Option<&ConnInfo>, handle: &Bytes) -> Result<Statement, Status> {
        self.inner.prepared.get(conn, handle)
    }

    /// Runs a prepared statement's query with its one bound parameter row.
    async fn run_prepared_query(
        &self,
        caller: Option<&Caller>,
        conn: Option<&ConnInfo>,
        handle: &Bytes,
        deadline: Option<std::time::Duration>,
    ) -> Result<SendableRecordBatchStream, Status> {
        let statement = self.statement(conn, handle)?;
        let kept = self.inner.prepared.swap_plan(conn, handle, None);
        let prepared = self.reuse_or_prepare(kept, caller, &statement.sql).await?;
        let params = match &statement.bound {
            None => vec![],
            Some(rows) if rows.num_rows() == 1 => parameter_row(&prepared, rows, 0)?,
            Some(rows) => {
                return Err(Status::invalid_argument(format!(
                    "a prepared query runs with one parameter row, and {} are bound; \
                     bind a single row (several rows are for updates, which run once per row)",
                    rows.num_rows()
                )));
            }
        };
        check_all_bound(&prepared, params.len())?;
        prepared
            .execute_within(params, deadline)
            .await
            .map_err(query_status)
    }
}

/// What a `TicketStatementQuery` of ours holds: `Q` + SQL text to run at `DoGet`; `P` +
/// the token of the plan `GetFlightInfo` parked (8 bytes, little-endian) + the SQL
/// text, planned again when the plan is gone; or `R` + the Arrow IPC stream of a write
/// statement's answer.
enum StatementTicket {
    Query(String),
    Planned(u64, String),
    Answer(Bytes),
}

impl StatementTicket {
    fn encode(&self) -> Bytes {
        let (tag, token, body) = match self {
            StatementTicket::Query(sql) => (b'Q', None, sql.as_bytes()),
            StatementTicket::Planned(token, sql) => (b'P', Some(*token), sql.as_bytes()),
            StatementTicket::Answer(ipc) => (b'R', None, ipc.as_ref()),
        };
        let mut out = Vec::with_capacity(body.len() + 9);
        out.push(tag);
        if let Some(token) = token {
            out.extend_from_slice(&token.to_le_bytes());
        }
        out.extend_from_slice(body);
        let ticket = TicketStatementQuery {
            statement_handle: Bytes::from(out),
        };
        Bytes::from(ticket.as_any().encode_to_vec())
    }

    fn decode(ticket: &TicketStatementQuery) -> Result<Self, Status> {
        let handle = &ticket.statement_handle;
        let foreign = || Status::invalid_argument("not a statement ticket of this server");
        match handle.first() {
            Some(b'Q') => String::from_utf8(handle[1..].to_vec())
                .map(StatementTicket::Query)
                .map_err(|_| foreign()),
            Some(b'P') if handle.len() >= 9 => {
                let token = u64::from_le_bytes(handle[1..9].try_into().expect("8 bytes"));
                String::from_utf8(handle[9..].to_vec())
                    .map(|sql| StatementTicket::Planned(token, sql))
                    .map_err(|_| foreign())
            }
            Some(b'R') => Ok(StatementTicket::Answer(handle.slice(1..))),
            _ => Err(foreign()),
        }
    }
}

/// Batches as one Arrow IPC stream.
fn ipc_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)
        .map_err(internal("encoding an answer"))?;
    for b in batches {
        writer.write(b).map_err(internal("encoding an answer"))?;
    }
    writer.finish().map_err(internal("encoding an answer"))?;
    drop(writer);
    Ok(Bytes::from(out))
}

fn ipc_batches(ipc: Bytes, max_decoded: usize) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    strata_ingest::ipc::decode_stream(&ipc, max_decoded).map_err(|e| {
        Status::invalid_argument(format!("not a statement ticket of this server: {e}"))
    })
}

/// Runs a write statement now (once per parameter row) and describes its answer, which
/// the ticket carries.
async fn run_write_for_info(
    prepared: &Prepared,
    rows: Option<&RecordBatch>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let batches = run_write(prepared, rows).await?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| prepared.schema());
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let ticket = StatementTicket::Answer(ipc_stream(&schema, &batches)?).encode();
    let info = flight_info(&schema, ticket, descriptor)?;
    Ok(info.map(|i| i.with_total_records(rows as i64)))
}

fn internal<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

/// A schema as the IPC message Flight SQL puts in its results.
fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(internal("encoding a schema"))?;
    Ok(bytes)
}

/// A FlightInfo with one endpoint on this server.
fn flight_info(
    schema: &Schema,
    ticket: impl Into<Bytes>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal("encoding a schema"))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

/// Streams a result as Flight data; errors keep their Strata status.
fn flight_stream(stream: SendableRecordBatchStream) -> Response<DoGetStream> {
    let schema = stream.schema();
    let batches = stream
        .map_err(|e| FlightError::Tonic(Box::new(query_status(strata_query::Error::from(e)))));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

/// Encodes `batches` as Flight data through [`flight_stream`], and drops the messages.
pub(crate) async fn encode_discarding(batches: Vec<RecordBatch>) {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return;
    };
    let batches = futures::stream::iter(batches.into_iter().map(Ok));
    let stream = RecordBatchStreamAdapter::new(schema, batches);
    let mut data = flight_stream(Box::pin(stream)).into_inner();
    while let Some(Ok(_)) = data.next().await {}
}

fn batch_stream(batch: RecordBatch) -> Response<DoGetStream> {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::once(async move { Ok(batch) }))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

/// Rewrites `?` placeholders to `$1, $2, …` in order (`?3` to `$3`); text without them
/// is returned unchanged, as is text the tokenizer rejects (the parser reports it).
pub fn number_placeholders(sql: &str) -> Result<String, Status> {
    let Ok(mut tokens) = Tokenizer::new(&StrataDialect, sql).tokenize() else {
        return Ok(sql.to_string());
    };
    let (mut bare, mut numbered, mut dollar) = (0usize, false, false);
    for token in tokens.iter_mut() {
        let Token::Placeholder(p) = token else {
            continue;
        };
        if p == "?" {
            bare += 1;
            *p = format!("${bare}");
        } else if let Some(n) = p.strip_prefix('?') {
            numbered = true;
            *p = format!("${n}");
        } else {
            dollar = true;
        }
    }
    if bare > 0 && (numbered || dollar) {
        return Err(Status::invalid_argument(
            "the statement mixes `?` with numbered parameters ($1 or ?1); use one style",
        ));
    }
    if bare == 0 && !numbered {
        return Ok(sql.to_string());
    }
    Ok(tokens.iter().map(ToString::to_string).collect())
}

/// The parameter schema of a statement: `$1, $2, …` with their inferred types (`Null`
/// where the planner could not infer one: any value is accepted there).
fn parameter_schema(prepared: &Prepared) -> Result<Schema, Status> {
    let params = prepared.parameters().map_err(query_status)?;
    Ok(Schema::new(
        params
            .into_iter()
            .map(|(name, ty)| Field::new(name, ty.unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    ))
}

/// Row `row` of the bound parameters as values for the statement, each cast to its
/// parameter's inferred type.
fn parameter_row(
    prepared: &Prepared,
    rows: &RecordBatch,
    row: usize,
) -> Result<Vec<ScalarValue>, Status> {
    let params = prepared.parameters().map_err(query_status)?;
    if rows.num_columns() != params.len() {
        return Err(wrong_parameter_count(params.len(), rows.num_columns()));
    }
    rows.columns()
        .iter()
        .zip(&params)
        .map(|(column, (name, ty))| {
            let value = ScalarValue::try_from_array(column, row).map_err(|e| {
                Status::invalid_argument(format!("parameter {name}: unreadable value: {e}"))
            })?;
            match ty {
                Some(ty) if value.data_type() != *ty => value.cast_to(ty).map_err(|e| {
                    Status::invalid_argument(format!(
                        "parameter {name}: a {} value does not fit the expected type {ty}: {}",
                        value.data_type(),
                        strata_query::Error::from(e)
                    ))
                }),
                _ => Ok(value),
            }
        })
        .collect()
}

fn wrong_parameter_count(expected: usize, got: usize) -> Status {
    Status::invalid_argument(format!(
        "the statement takes {expected} parameter(s) and {got} were bound"
    ))
}

fn check_all_bound(prepared: &Prepared, given: usize) -> Result<(), Status> {
    let expected = prepared.parameters().map_err(query_status)?.len();
    if expected != given {
        return Err(wrong_parameter_count(expected, given));
    }
    Ok(())
}

/// The rows a write statement's answer reports: the `rows` column of a command's answer
/// (null, for DDL, counts as 0), or the `count` of an `INSERT`.
fn affected_rows(batches: &[RecordBatch]) -> i64 {
    let mut total = 0u64;
    for batch in batches {
        let column = batch
            .column_by_name("rows")
            .or_else(|| batch.column_by_name("count"));
        if let Some(counts) = column.and_then(|c| c.as_any().downcast_ref::<UInt64Array>()) {
            total += counts.iter().flatten().sum::<u64>();
        }
    }
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// Runs a write statement once per parameter row (once when there are none); returns
/// the answers.
async fn run_write(
    prepared: &Prepared,
    rows: Option<&RecordBatch>,
) -> Result<Vec<RecordBatch>, Status> {
    if prepared.is_query() {
        return Err(Status::invalid_argument(
            "the statement is a query, which returns rows: run it with CommandStatementQuery \
             (GetFlightInfo then DoGet), not as an update",
        ));
    }
    let executions: Vec<Vec<ScalarValue>> = match rows {
        None => vec![vec![]],
        Some(rows) => (0..rows.num_rows())
            .map(|row| parameter_row(prepared, rows, row))
            .collect::<Result<_, _>>()?,
    };
    let mut answers = Vec::new();
    for params in executions {
        check_all_bound(prepared, params.len())?;
        let stream = prepared.execute(params).await.map_err(query_status)?;
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| query_status(strata_query::Error::from(e)))?;
        answers.extend(batches);
    }
    Ok(answers)
}

/// The parameter rows of a `DoPut`: `None` when it carries no columns (a bare
/// descriptor, or an empty batch).
async fn read_parameters(
    stream: PeekableFlightDataStream,
    max_decoded: usize,
) -> Result<Option<RecordBatch>, Status> {
    // Each message is checked before arrow-rs decodes it: sizes from the wire are not
    // trusted (see strata_ingest::ipc).
    let mut guard = IpcGuard::new(max_decoded);
    let data = stream
        .try_filter(|d| futures::future::ready(!d.data_header.is_empty()))
        .and_then(move |d| {
            let checked = guard.check(&d.data_header, &d.data_body).map(|()| d);
            futures::future::ready(checked.map_err(|e| match e {
                IpcRefusal::TooLarge { .. } => {
                    Status::resource_exhausted(format!("parameter batches: {e}"))
                }
                IpcRefusal::Malformed(m) => {
                    Status::invalid_argument(format!("malformed parameter batches: {m}"))
                }
            }))
        })
        .map_err(FlightError::from);
    let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
    let mut rows = Vec::new();
    loop {
        // A panic inside arrow-rs's decoder is the message's fault (see
        // strata_ingest::ipc::unwind_as_refusal).
        let next = std::panic::AssertUnwindSafe(batches.next())
            .catch_unwind()
            .await;
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(_) => {
                return Err(Status::invalid_argument(
                    "malformed parameter batches: the Arrow decoder gave up on them",
                ));
            }
        };
        rows.push(batch.map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => Status::invalid_argument(format!("malformed parameter batches: {other}")),
        })?);
    }
    let Some(schema) = batches.schema().cloned() else {
        return Ok(None);
    };
    if schema.fields().is_empty() {
        return Ok(None);
    }
    concat_batches(&schema, &rows)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("malformed parameter batches: {e}")))
}

/// What `GetSqlInfo` answers.
fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Strata");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(
        SqlInfo::SqlSupportedGrammar,
        (1 << SupportedSqlGrammar::SqlMinimumGrammar as i32)
            | (1 << SupportedSqlGrammar::SqlCoreGrammar as i32),
    );
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(
        SqlInfo::SqlKeywords,
        &[
            "OPTIMIZE",
            "RESTORE",
            "SHARDS",
            "TAG",
            "VACUUM",
            "VERSION",
            "TIMESTAMP",
        ][..],
    );
    b.build().expect("SqlInfo values are well-formed")
}

/// SQL `LIKE` with `%` and `_` (Flight SQL's filter patterns), case-sensitive.
fn like(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // matches[j]: does p[..i] match t[..j]
    let mut matches = vec![false; t.len() + 1];
    matches[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        if pc == '%' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= matches[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = matches[j - 1] && (pc == '_' || pc == t[j - 1]);
            }
        }
        matches = next;
    }
    matches[t.len()]
}

#[tonic::async_trait]
impl FlightSqlService for StrataFlight {
    type FlightService = StrataFlight;

    /// Basic authentication (`name:token`, as ADBC's username/password and arrow-rs's
    /// `handshake` send it) traded for the bearer token to send on every later call.
    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<
            std::pin::Pin<
                Box<dyn futures::Stream<Item = Result<HandshakeResponse, Status>> + Send>,
            >,
        >,
        Status,
    > {
        let token = match &self.inner.auth {
            None => None,
            Some(auth) => {
                let header = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                let caller = auth.from_header(header)?;
                debug!(name = caller.name, "flight handshake");
                header.and_then(auth::token_of)
            }
        };
        let payload = Bytes::from(token.clone().unwrap_or_default());
        let mut response = Response::new(Box::pin(futures::stream::once(async move {
            Ok(HandshakeResponse {
                protocol_version: 0,
                payload,
            })
        }))
            as std::pin::Pin<
                Box<dyn futures::Stream<Item = Result<HandshakeResponse, Status>> + Send>,
            >);
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    // ---- statements ----------------------------------------------------------------

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if query.transaction_id.is_some() {
            return Err(no_transactions());
        }
        let prepared = self.prepare(caller(&request), &query.query).await?;
        if !prepared.parameters().map_err(query_status)?.is_empty() {
            return Err(Status::invalid_argument(
                "the statement has parameters: create a prepared statement and bind values to it",
            ));
        }
        if !prepared.is_query() {
            return run_write_for_info(&prepared, None, request.into_inner()).await;
        }
        let schema = prepared.schema();
        let plan = Plan::new(Arc::new(prepared), caller(&request));
        let token = self.inner.prepared.park(conn(&request), plan);
        flight_info(
            &schema,
            StatementTicket::Planned(token, query.query).encode(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (kept, sql) = match StatementTicket::decode(&ticket)? {
            StatementTicket::Query(sql) => (None, sql),
            StatementTicket::Planned(token, sql) => {
                (self.inner.prepared.unpark(conn(&request), token), sql)
            }
            StatementTicket::Answer(ipc) => {
                let (schema, batches) = ipc_batches(ipc, self.inner.max_decoded)?;
                let data = FlightDataEncoderBuilder::new()
                    .with_schema(schema)
                    .build(futures::stream::iter(batches.into_iter().map(Ok)))
                    .map_err(Status::from);
                return Ok(Response::new(Box::pin(data)));
            }
        };
        let prepared = self.reuse_or_prepare(kept, caller(&request), &sql).await?;
        check_all_bound(&prepared, 0)?;
        let deadline = client_deadline(request.metadata());
        let stream = prepared
            .execute_within(vec![], deadline)
            .await
            .map_err(query_status)?;
        Ok(flight_stream(stream))
    }

    /// A subscription ticket (see [`crate::subscribe`]); anything else is refused.
    async fn do_get_fallback(
        &self,
        _request: Request<arrow_flight::Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        if message.type_url != SUBSCRIBE_TYPE_URL {
            return Err(Status::invalid_argument(format!(
                "unknown ticket type {:?}",
                message.type_url
            )));
        }
        let request = PbSubscribeRequest::decode(message.value.as_ref())
            .map_err(|e| Status::invalid_argument(format!("subscription ticket: {e}")))?;
        let running = self.inner.subscriptions.start(request).await?;
        Ok(Response::new(subscribe::flight_data(running)))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if command.transaction_id.is_some() {
            return Err(no_transactions());
        }
        let prepared = self.prepare(caller(&request), &command.query).await?;
        Ok(affected_rows(&run_write(&prepared, None).await?))
    }

    // ---- prepared statements -------------------------------------------------------

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(no_transactions());
        }
        let prepared = self.prepare(caller(&request), &query.query).await?;
        let parameters = parameter_schema(&prepared)?;
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: Bytes::new(),
            dataset_schema: schema_bytes(&prepared.schema())?,
            parameter_schema: schema_bytes(&parameters)?,
        };
        let plan = prepared
            .is_query()
            .then(|| Plan::new(Arc::new(prepared), caller(&request)));
        let handle = self.inner.prepared.insert(
            conn(&request),
            Statement {
                sql: query.query,
                parameters: parameters.fields().len(),
                bound: None,
                plan,
            },
        )?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            ..result
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle;
        let conn = conn(&request).cloned();
        let expected = self.statement(conn.as_ref(), &handle)?.parameters;
        let rows = read_parameters(request.into_inner(), self.inner.max_decoded).await?;
        let given = rows.as_ref().map_or(0, |r| r.num_columns());
        if given != expected {
            return Err(wrong_parameter_count(expected, given));
        }
        self.inner.prepared.bind(conn.as_ref(), &handle, rows)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = &query.prepared_statement_handle;
        let statement = self.statement(conn(&request), handle)?;
        let who = caller(&request);
        let plan = match statement.plan.filter(|p| p.usable_by(who)) {
            Some(plan) => plan,
            None => Plan::new(Arc::new(self.prepare(who, &statement.sql).await?), who),
        };
        let prepared = plan.prepared.clone();
        if !prepared.is_query() {
            return run_write_for_info(&prepared, statement.bound.as_ref(), request.into_inner())
                .await;
        }
        // Kept for the DoGet that follows.
        self.inner
            .prepared
            .swap_plan(conn(&request), handle, Some(plan));
        flight_info(
            &prepared.schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let stream = self
            .run_prepared_query(
                caller(&request),
                conn(&request),
                &query.prepared_statement_handle,
                client_deadline(request.metadata()),
            )
            .await?;
        Ok(flight_stream(stream))
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let statement = self.statement(conn(&request), &query.prepared_statement_handle)?;
        let who = caller(&request).cloned();
        // Rows sent with the update (ADBC's executemany) win over rows bound before.
        let rows = match read_parameters(request.into_inner(), self.inner.max_decoded).await? {
            Some(rows) => Some(rows),
            None => statement.bound,
        };
        let prepared = self.prepare(who.as_ref(), &statement.sql).await?;
        Ok(affected_rows(&run_write(&prepared, rows.as_ref()).await?))
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Closing is idempotent: a handle already gone (closed, or lost in a restart)
        // needs no cleanup.
        self.inner
            .prepared
            .remove(conn(&request), &query.prepared_statement_handle);
        Ok(())
    }

    // ---- catalog metadata ----------------------------------------------------------

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder: GetCatalogsBuilder = query.into_builder();
        builder.append(CATALOG);
        Ok(batch_stream(builder.build().map_err(internal("catalogs"))?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder: GetDbSchemasBuilder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        Ok(batch_stream(builder.build().map_err(internal("schemas"))?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        // The builder filters too; these checks only spare opening tables it would drop.
        let wanted = query.catalog.as_deref().is_none_or(|c| c == CATALOG)
            && query
                .db_schema_filter_pattern
                .as_deref()
                .is_none_or(|p| like(p, SCHEMA))
            && (query.table_types.is_empty() || query.table_types.iter().any(|t| t == TABLE_TYPE));
        let name_pattern = query.table_name_filter_pattern.clone();
        let include_schema = query.include_schema;
        let mut builder: GetTablesBuilder = query.into_builder();
        let catalog = self.engine().catalog();
        let names = if wanted {
            catalog
                .list_tables()
                .await
                .map_err(|e| Status::new(table_code(&e), e.to_string()))?
        } else {
            vec![]
        };
        for name in names {
            if name_pattern.as_deref().is_some_and(|p| !like(p, &name)) {
                continue;
            }
            let schema = if include_schema {
                let head = match catalog.open_table(&name).await {
                    Ok(table) => table.head().await,
                    Err(e) => Err(e),
                };
                match head {
                    Ok(head) => head.schema.clone(),
                    // Dropped since the listing.
                    Err(strata_table::Error::DatasetNotFound(_)) => continue,
                    Err(e) => return Err(Status::new(table_code(&e), e.to_string())),
                }
            } else {
                SchemaRef::new(Schema::empty())
            };
            builder
                .append(CATALOG, SCHEMA, &name, TABLE_TYPE, &schema)
                .map_err(internal("tables"))?;
        }
        Ok(batch_stream(builder.build().map_err(internal("tables"))?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(TABLE_TYPE);
        Ok(batch_stream(
            builder.build().map_err(internal("table types"))?,
        ))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.inner.sql_info).schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.inner.sql_info)
            .build()
            .map_err(internal("sql info"))?;
        Ok(batch_stream(batch))
    }

    // ---- DoPut into datasets, actions ----------------------------------------------

    /// ADBC's bulk ingest (`adbc_ingest`): rows into an existing dataset through the
    /// ingester, answered once durable. Creating a dataset needs its primary key, which
    /// an Arrow schema does not carry: modes that create (`create`, `replace`) are
    /// refused, `create_append` appends to a dataset that exists.
    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
        auth::require(&request, Access::Write, "ingest")?;
        if command.temporary {
            return Err(Status::unimplemented("temporary tables: Strata has none"));
        }
        if command.transaction_id.is_some() {
            return Err(Status::unimplemented(
                "transactions: each ingest is durable batch by batch",
            ));
        }
        if let Some(c) = command.catalog.as_deref().filter(|c| *c != CATALOG) {
            return Err(Status::not_found(format!(
                "catalog {c:?} does not exist (there is {CATALOG:?})"
            )));
        }
        if let Some(s) = command.schema.as_deref().filter(|s| *s != SCHEMA) {
            return Err(Status::not_found(format!(
                "schema {s:?} does not exist (there is {SCHEMA:?})"
            )));
        }
        let options = command.table_definition_options.unwrap_or_default();
        let name = command.table;
        let exists = match self.engine().catalog().open_table(&name).await {
            Ok(_) => true,
            Err(strata_table::Error::DatasetNotFound(_)) => false,
            Err(e) => return Err(Status::new(table_code(&e), e.to_string())),
        };
        if exists {
            match options.if_exists() {
                TableExistsOption::Append => {}
                TableExistsOption::Replace => {
                    return Err(Status::unimplemented(format!(
                        "ingest mode replace into {name:?}: datasets keep their history;                          DELETE FROM {name} then append, or RESTORE an earlier version"
                    )));
                }
                TableExistsOption::Fail | TableExistsOption::Unspecified => {
                    return Err(Status::already_exists(format!(
                        "dataset {name:?} exists: ingest with mode append to add rows"
                    )));
                }
            }
        } else {
            let hint = match options.if_not_exist() {
                TableNotExistOption::Create => {
                    " (a Strata dataset needs a primary key, which the ingested schema cannot                      give: CREATE TABLE … PRIMARY KEY ((…), …) first)"
                }
                _ => "",
            };
            return Err(Status::not_found(format!(
                "dataset {name:?} does not exist{hint}"
            )));
        }
        let mut stream = request.into_inner();
        let first = match stream.next().await {
            Some(first) => first?,
            None => return Err(Status::invalid_argument("empty DoPut stream")),
        };
        let rows = self.inner.ingest.ingest_all(&name, first, stream).await?;
        Ok(rows as i64)
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<BoxStream<arrow_flight::PutResult>>, Status> {
        auth::require(&request, Access::Write, "DoPut into a dataset")?;
        let mut stream = request.into_inner();
        let first = match stream.next().await {
            Some(first) => first?,
            None => return Err(Status::invalid_argument("empty DoPut stream")),
        };
        let is_path = first
            .flight_descriptor
            .as_ref()
            .is_some_and(|d| d.r#type == DescriptorType::Path as i32);
        if !is_path {
            return Err(Status::unimplemented(format!(
                "DoPut with command {:?} is not served: Strata's DoPut takes Flight SQL \
                 updates and prepared-statement parameters, or rows for a dataset under a \
                 PATH descriptor [dataset] or [dataset, producer]",
                message.type_url
            )));
        }
        Ok(Response::new(
            self.inner.ingest.do_put_path(first, stream).await?,
        ))
    }

    async fn do_put_error_callback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        error: DoPutError,
    ) -> Result<Response<BoxStream<arrow_flight::PutResult>>, Status> {
        Err(Status::invalid_argument(match error {
            DoPutError::MissingCommand => "empty DoPut stream".to_string(),
            DoPutError::MissingFlightDescriptor => "DoPut needs a flight descriptor: a Flight \
                 SQL command, or the PATH [dataset] or [dataset, producer]"
                .to_string(),
        }))
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let access = Actions::access(&request.get_ref().r#type);
        auth::require(
            &request,
            access,
            &format!("the {} action", request.get_ref().r#type),
        )?;
        let action = request.into_inner();
        let body = self.inner.actions.run(&action.r#type, &action.body).await?;
        let result = arrow_flight::Result {
            body: Bytes::from(body),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(result)
        }))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(Actions::list().into_iter().map(Ok).collect())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {
        // The SqlInfo values are fixed when the service is built (see `sql_info`).
    }
}

fn no_transactions() -> Status {
    Status::invalid_argument(
        "Strata has no transactions (GetSqlInfo says so): every statement commits on its own",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND c > ?").unwrap(),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(
            number_placeholders("SELECT ?2, ?1").unwrap(),
            "SELECT $2, $1"
        );
        let q = "SELECT $1 -- what?\n";
        assert_eq!(number_placeholders(q).unwrap(), q);
        assert_eq!(
            number_placeholders("SELECT ?, $1").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn like_patterns() {
        assert!(like("%", ""));
        assert!(like("wea%", "weather"));
        assert!(like("w_ather", "weather"));
        assert!(!like("w_ather", "wether"));
        assert!(like("%th%", "weather"));
        assert!(!like("weather_", "weather"));
        assert!(like("weather", "weather"));
    }
}
