//! Flight SQL, DoPut into datasets and the pipeline actions, through arrow-rs's Flight SQL
//! client and (in `python_flight_sql_clients`) ADBC and pyarrow.flight, against a real
//! server on a loopback port.

use std::sync::Arc;

use arrow::array::{
    Array, BinaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UnionArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, CommandPreparedStatementQuery, ProstMessageExt, SqlInfo,
};
use arrow_flight::{Action, FlightClient, FlightDescriptor, FlightInfo, IpcMessage, Ticket};
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;
use serde_json::{Value, json};
use strata_server::{Server, ServerConfig};
use tonic::Code;
use tonic::transport::Channel;

pub(crate) type Client = FlightSqlServiceClient<Channel>;

async fn start(dir: &std::path::Path) -> Server {
    Server::start(ServerConfig::ephemeral(dir.to_path_buf()))
        .await
        .unwrap()
}

pub(crate) async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub(crate) async fn client(server: &Server) -> Client {
    FlightSqlServiceClient::new(channel(server).await)
}

/// The gRPC status inside a client error.
pub(crate) fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => panic!("not a gRPC status: {other}"),
    }
}

/// Fetches every endpoint of a FlightInfo.
pub(crate) async fn fetch(
    c: &mut Client,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, FlightError> {
    assert_eq!(info.endpoint.len(), 1, "one endpoint");
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    c.do_get(ticket).await?.try_collect().await
}

pub(crate) async fn query(c: &mut Client, sql: &str) -> Result<Vec<RecordBatch>, FlightError> {
    let info = c.execute(sql.to_string(), None).await?;
    fetch(c, info).await
}

/// One column of a one-batch-or-more result, as i64.
fn ints(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let c =
                arrow::compute::cast(b.column_by_name(column).unwrap(), &DataType::Int64).unwrap();
            let c = c.as_any().downcast_ref::<Int64Array>().unwrap().clone();
            c.iter().map(|v| v.unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(column).unwrap();
            let c = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
            c.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect()
}

async fn count(c: &mut Client, sql: &str) -> i64 {
    ints(&query(c, sql).await.unwrap(), "n")[0]
}

const CREATE: &str = "CREATE TABLE weather (station VARCHAR, ts BIGINT, temp DOUBLE, \
                      PRIMARY KEY ((station), ts)) WITH (shards = 4)";

#[tokio::test]
async fn flight_sql_statements_time_travel_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;

    assert_eq!(c.execute_update(CREATE.into(), None).await.unwrap(), 0);
    let inserted = c
        .execute_update(
            "INSERT INTO weather VALUES ('a', 1, 10.5), ('b', 1, 20.0), ('a', 2, NULL)".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(inserted, 3);

    // The FlightInfo announces the result's schema; DoGet streams the rows.
    let info = c
        .execute(
            "SELECT station, ts, temp FROM weather ORDER BY station, ts".into(),
            None,
        )
        .await
        .unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    assert_eq!(
        announced
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        vec!["station", "ts", "temp"]
    );
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "station"), vec!["a", "a", "b"]);
    assert_eq!(ints(&batches, "ts"), vec![1, 2, 1]);
    let temps: Vec<Option<f64>> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("temp").unwrap();
            c.as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(temps, vec![Some(10.5), None, Some(20.0)]);

    // An upsert (same key) and a new row: version 3. Version 2 still has three rows.
    c.execute_update(
        "INSERT INTO weather VALUES ('a', 1, 11.0), ('c', 1, 5.0)".into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM weather").await, 4);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM weather VERSION AS OF 2").await,
        3
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT CAST(temp AS BIGINT) AS n FROM weather VERSION AS OF 2 \
             WHERE station = 'a' AND ts = 1"
        )
        .await,
        10
    );

    // The update count of a command is its `rows` column.
    assert_eq!(
        c.execute_update("DELETE FROM weather WHERE station = 'c'".into(), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM weather").await, 3);

    // Writes through the query path (what ADBC's cursor.execute does) run at
    // GetFlightInfo, once, whether or not the answer is fetched; DoGet replays it.
    let info = c
        .execute("ALTER TABLE weather ADD COLUMN note VARCHAR".into(), None)
        .await
        .unwrap();
    assert_eq!(info.total_records, 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM weather WHERE note IS NULL"
        )
        .await,
        3
    );
    let batches = fetch(&mut c, info.clone()).await.unwrap();
    assert_eq!(
        strings(&batches, "operation"),
        vec!["ALTER TABLE ADD COLUMN"]
    );
    let again = fetch(&mut c, info).await.unwrap();
    assert_eq!(batches, again);
    c.execute(
        "INSERT INTO weather VALUES ('d', 1, 1.0, 'from the query path')".into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM weather WHERE note IS NOT NULL"
        )
        .await,
        1
    );

    // Errors keep their codes, and the engine's messages.
    let e = status(query(&mut c, "SELEC 1").await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("SQL parse error"), "{e}");
    let e = status(query(&mut c, "SELECT * FROM nope").await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("nope"), "{e}");
    let e = status(
        query(&mut c, "SELECT * FROM weather VERSION AS OF 99")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = status(
        query(&mut c, "SELECT no_such_column FROM weather")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = status(c.execute_update("SELECT 1".into(), None).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("query"), "{e}");
    let e = status(
        query(&mut c, "SELECT * FROM weather WHERE ts = $1")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("prepared statement"), "{e}");
    let e = status(c.execute_update(CREATE.into(), None).await.unwrap_err());
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let e = status(
        c.execute("SELECT 1".into(), Some(Bytes::from_static(b"txn")))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // A ticket is the SQL text: no server state, and a foreign ticket is refused.
    let ticket = arrow_flight::sql::TicketStatementQuery {
        statement_handle: Bytes::from_static(&[0xff, 0xfe]),
    };
    let e = match c.do_get(Ticket::new(ticket.as_any().encode_to_vec())).await {
        Err(e) => status(e),
        Ok(_) => panic!("a non-UTF-8 ticket was accepted"),
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn flight_sql_prepared_statements_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    c.execute_update(CREATE.into(), None).await.unwrap();

    // An INSERT with parameters runs once per bound row.
    let mut insert = c
        .prepare("INSERT INTO weather VALUES ($1, $2, $3)".into(), None)
        .await
        .unwrap();
    let params = insert.parameter_schema().unwrap().clone();
    assert_eq!(
        params
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect::<Vec<_>>(),
        vec![
            ("$1", DataType::Utf8),
            ("$2", DataType::Int64),
            ("$3", DataType::Float64)
        ]
    );
    let rows = RecordBatch::try_new(
        Arc::new(params),
        vec![
            Arc::new(StringArray::from(vec!["a", "a", "b"])),
            Arc::new(Int64Array::from(vec![1, 2, 1])),
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])),
        ],
    )
    .unwrap();
    insert.set_parameters(rows).unwrap();
    assert_eq!(insert.execute_update().await.unwrap(), 3);
    insert.close().await.unwrap();

    // A query with `$1`; the value comes as int32 and is cast to the inferred int64.
    let mut select = c
        .prepare(
            "SELECT station, ts FROM weather WHERE ts >= $1 ORDER BY station, ts".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        select
            .dataset_schema()
            .unwrap()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        vec!["station", "ts"]
    );
    assert_eq!(
        select.parameter_schema().unwrap().field(0).data_type(),
        &DataType::Int64
    );
    let bind = |v: Vec<i32>| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Int32, false)])),
            vec![Arc::new(Int32Array::from(v))],
        )
        .unwrap()
    };
    select.set_parameters(bind(vec![2])).unwrap();
    let info = select.execute().await.unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "station"), vec!["a"]);
    // Rebinding replaces the value; the statement sees rows committed since it was
    // prepared.
    c.execute_update("INSERT INTO weather VALUES ('c', 1, 0.0)".into(), None)
        .await
        .unwrap();
    select.set_parameters(bind(vec![1])).unwrap();
    let info = select.execute().await.unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "station"), vec!["a", "a", "b", "c"]);

    // A query runs with exactly one parameter row.
    select.set_parameters(bind(vec![1, 2])).unwrap();
    let info = select.execute().await.unwrap();
    let e = status(fetch(&mut c, info).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("one parameter row"), "{e}");
    // Binding the wrong number of parameters is refused at once.
    let two = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    select.set_parameters(two).unwrap();
    let e = status(select.execute().await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("takes 1 parameter"), "{e}");
    // A value that does not fit the parameter's type.
    let text = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["soon"]))],
    )
    .unwrap();
    select.set_parameters(text).unwrap();
    let info = select.execute().await.unwrap();
    let e = status(fetch(&mut c, info).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("$1"), "{e}");
    select.close().await.unwrap();

    // `?` placeholders (ADBC's and JDBC's style) are numbered in order.
    let mut qmark = c
        .prepare(
            "SELECT count(*) AS n FROM weather WHERE station = ? AND ts <= ?".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(qmark.parameter_schema().unwrap().fields().len(), 2);
    qmark
        .set_parameters(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("0", DataType::Utf8, false),
                    Field::new("1", DataType::Int64, false),
                ])),
                vec![
                    Arc::new(StringArray::from(vec!["a"])),
                    Arc::new(Int64Array::from(vec![1])),
                ],
            )
            .unwrap(),
        )
        .unwrap();
    let info = qmark.execute().await.unwrap();
    assert_eq!(ints(&fetch(&mut c, info).await.unwrap(), "n"), vec![1]);
    qmark.close().await.unwrap();

    // A statement without parameters runs prepared too (ADBC prepares everything).
    let mut plain = c
        .prepare("SELECT count(*) AS n FROM weather".into(), None)
        .await
        .unwrap();
    assert!(plain.parameter_schema().unwrap().fields().is_empty());
    let info = plain.execute().await.unwrap();
    assert_eq!(ints(&fetch(&mut c, info).await.unwrap(), "n"), vec![4]);
    // A prepared write statement runs on execute, not on prepare.
    let mut delete = c
        .prepare("DELETE FROM weather WHERE station = 'c'".into(), None)
        .await
        .unwrap();
    let info = plain.execute().await.unwrap();
    assert_eq!(ints(&fetch(&mut c, info).await.unwrap(), "n"), vec![4]);
    assert_eq!(delete.execute_update().await.unwrap(), 1);
    let info = plain.execute().await.unwrap();
    assert_eq!(ints(&fetch(&mut c, info).await.unwrap(), "n"), vec![3]);
    delete.close().await.unwrap();
    plain.close().await.unwrap();

    // A plan kept from one step for the next (prepare → GetFlightInfo → DoGet) is not
    // used once something was committed in between: the query reads the new version.
    let mut kept = c
        .prepare("SELECT count(*) AS n FROM weather".into(), None)
        .await
        .unwrap();
    c.execute_update("DELETE FROM weather WHERE station IS NOT NULL".into(), None)
        .await
        .unwrap();
    let info = kept.execute().await.unwrap();
    assert_eq!(ints(&fetch(&mut c, info).await.unwrap(), "n"), vec![0]);
    kept.close().await.unwrap();
    let info = c
        .execute("SELECT count(*) AS n FROM weather".into(), None)
        .await
        .unwrap();
    c.execute_update("INSERT INTO weather VALUES ('z', 1, 2.0)".into(), None)
        .await
        .unwrap();
    assert_eq!(ints(&fetch(&mut c, info).await.unwrap(), "n"), vec![1]);

    // Closed or unknown handles.
    let handle = CommandPreparedStatementQuery {
        prepared_statement_handle: Bytes::from_static(b"ps-nope"),
    };
    let e = status(
        c.do_get(Ticket::new(handle.as_any().encode_to_vec()))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = status(c.prepare("SELEC 1".into(), None).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    server.shutdown().await.unwrap();
}

/// The one value of a GetSqlInfo row (a dense union) as text.
fn sql_info_values(batches: &[RecordBatch]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for b in batches {
        let names = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::UInt32Array>()
            .unwrap();
        let values = b.column(1).as_any().downcast_ref::<UnionArray>().unwrap();
        for i in 0..b.num_rows() {
            let v = values.value(i);
            let text = arrow::util::display::array_value_to_string(&v, 0).unwrap();
            out.push((names.value(i), text));
        }
    }
    out
}

#[tokio::test]
async fn flight_sql_catalog_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    c.execute_update(CREATE.into(), None).await.unwrap();
    c.execute_update(
        "CREATE TABLE events (k VARCHAR PRIMARY KEY, v BIGINT)".into(),
        None,
    )
    .await
    .unwrap();

    let info = c.get_catalogs().await.unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "catalog_name"), vec!["strata"]);
    let info = c
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "db_schema_name"), vec!["public"]);

    let tables = |pattern: Option<&str>, types: Vec<&str>, include_schema| CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: pattern.map(String::from),
        table_types: types.into_iter().map(String::from).collect(),
        include_schema,
    };
    let info = c.get_tables(tables(None, vec![], false)).await.unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "table_name"), vec!["events", "weather"]);
    assert_eq!(strings(&batches, "table_type"), vec!["TABLE", "TABLE"]);
    assert_eq!(strings(&batches, "catalog_name"), vec!["strata", "strata"]);
    assert!(batches[0].column_by_name("table_schema").is_none());

    let info = c
        .get_tables(tables(Some("wea%"), vec!["TABLE"], true))
        .await
        .unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "table_name"), vec!["weather"]);
    let schema_bytes = batches[0]
        .column_by_name("table_schema")
        .unwrap()
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    let schema = Schema::try_from(IpcMessage(Bytes::from(schema_bytes))).unwrap();
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect::<Vec<_>>(),
        vec![
            ("station", DataType::Utf8),
            ("ts", DataType::Int64),
            ("temp", DataType::Float64)
        ]
    );
    let info = c
        .get_tables(tables(None, vec!["VIEW"], true))
        .await
        .unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);

    let info = c.get_table_types().await.unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(strings(&batches, "table_type"), vec!["TABLE"]);

    let info = c
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
            SqlInfo::FlightSqlServerTransaction,
        ])
        .await
        .unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    let values = sql_info_values(&batches);
    assert_eq!(
        values,
        vec![
            (SqlInfo::FlightSqlServerName as u32, "Strata".to_string()),
            (SqlInfo::FlightSqlServerReadOnly as u32, "false".to_string()),
            (SqlInfo::FlightSqlServerTransaction as u32, "0".to_string()),
        ],
        "{}",
        pretty_format_batches(&batches).unwrap()
    );
    // No filter: everything, the server version included.
    let info = c.get_sql_info(vec![]).await.unwrap();
    let values = sql_info_values(&fetch(&mut c, info).await.unwrap());
    assert!(values.contains(&(
        SqlInfo::FlightSqlServerVersion as u32,
        env!("CARGO_PKG_VERSION").to_string()
    )));
    server.shutdown().await.unwrap();
}

async fn action(c: &mut Client, name: &str, body: Value) -> Result<Value, tonic::Status> {
    let mut results = c
        .do_action(Action::new(name, serde_json::to_vec(&body).unwrap()))
        .await
        .map_err(status)?;
    let result = results.message().await?.expect("one result");
    assert!(results.message().await?.is_none(), "exactly one result");
    Ok(serde_json::from_slice(&result.body).unwrap())
}

/// Rows for the weather table, in the schema the server reports for it.
fn weather_rows(schema: SchemaRef, station: &str, ts: std::ops::Range<i64>) -> RecordBatch {
    let n = ts.end - ts.start;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![station; n as usize])),
            Arc::new(Int64Array::from_iter_values(ts.clone())),
            Arc::new(Float64Array::from_iter_values(ts.map(|t| t as f64))),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn flight_actions_for_pipelines_and_do_put_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    c.execute_update(CREATE.into(), None).await.unwrap(); // version 1
    c.execute_update("INSERT INTO weather VALUES ('a', 1, 1.0)".into(), None)
        .await
        .unwrap(); // 2
    c.execute_update("INSERT INTO weather VALUES ('a', 2, 2.0)".into(), None)
        .await
        .unwrap(); // 3

    // ListActions: Flight SQL's and Strata's.
    let mut flight = FlightClient::new(channel(&server).await);
    let listed: Vec<String> = flight
        .list_actions()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.r#type)
        .collect();
    for name in [
        "CreatePreparedStatement",
        "ClosePreparedStatement",
        "flush",
        "rollback",
        "tag",
        "delete_tag",
        "list_versions",
    ] {
        assert!(listed.iter().any(|a| a == name), "{name} in {listed:?}");
    }

    let log = action(&mut c, "list_versions", json!({"dataset": "weather"}))
        .await
        .unwrap();
    assert_eq!(log["dataset"], "weather");
    assert_eq!(log["head"], 3);
    let versions = log["versions"].as_array().unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(versions[0]["operation"]["kind"], "create");
    assert_eq!(versions[1]["rows_added"], 1);

    let tagged = action(
        &mut c,
        "tag",
        json!({"dataset": "weather", "tag": "one-row", "version": 2}),
    )
    .await
    .unwrap();
    assert_eq!(tagged["version"], 2);
    assert_eq!(tagged["tag"], "one-row");
    let e = action(
        &mut c,
        "tag",
        json!({"dataset": "weather", "tag": "one-row"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");

    // DoPut with a PATH descriptor still ingests; flush commits the acknowledged rows.
    let schema = Arc::new(
        c.execute("SELECT * FROM weather".into(), None)
            .await
            .unwrap()
            .try_decode_schema()
            .unwrap(),
    );
    let put = |path: Vec<&str>, batch: RecordBatch| {
        let mut data =
            arrow_flight::utils::batches_to_flight_data(&batch.schema(), vec![batch]).unwrap();
        data[0].flight_descriptor = Some(FlightDescriptor::new_path(
            path.into_iter().map(String::from).collect(),
        ));
        futures::stream::iter(data.into_iter().map(Ok))
    };
    let acks: Vec<_> = flight
        .do_put(put(
            vec!["weather"],
            weather_rows(schema.clone(), "b", 0..10),
        ))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    let ack: Value = serde_json::from_slice(&acks[0].app_metadata).unwrap();
    assert_eq!(ack["rows"], 10);
    let flushed = action(&mut c, "flush", json!({"dataset": "weather"}))
        .await
        .unwrap();
    let flushed_version = flushed["version"].as_u64().unwrap();
    assert!(flushed_version >= 4, "{flushed}");
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM weather").await, 12);

    // Rows acknowledged but not yet committed are rolled back too: rollback flushes
    // them first, then restores the tagged content.
    let acks: Vec<_> = flight
        .do_put(put(
            vec!["weather"],
            weather_rows(schema.clone(), "c", 0..5),
        ))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    let rolled = action(
        &mut c,
        "rollback",
        json!({"dataset": "weather", "version": {"tag": "one-row"}}),
    )
    .await
    .unwrap();
    assert_eq!(rolled["to"], 2);
    assert_eq!(
        ints(
            &query(&mut c, "SELECT ts FROM weather ORDER BY ts")
                .await
                .unwrap(),
            "ts"
        ),
        vec![1]
    );
    // Nothing of the rolled-back load is left to be committed later.
    action(&mut c, "flush", json!({"dataset": "weather"}))
        .await
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM weather").await, 1);
    // The rollback is a version itself and can be undone by number.
    let rolled_version = rolled["version"].as_u64().unwrap();
    let again = action(
        &mut c,
        "rollback",
        json!({"dataset": "weather", "version": flushed_version}),
    )
    .await
    .unwrap();
    assert_eq!(again["version"].as_u64().unwrap(), rolled_version + 1);
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM weather").await, 12);
    let log = action(&mut c, "list_versions", json!({"dataset": "weather"}))
        .await
        .unwrap();
    assert_eq!(log["head"], rolled_version + 1);
    let two = log["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .unwrap();
    assert_eq!(two["tags"], json!(["one-row"]));
    assert_eq!(log["tags"][0]["name"], "one-row");

    let deleted = action(
        &mut c,
        "delete_tag",
        json!({"dataset": "weather", "tag": "one-row"}),
    )
    .await
    .unwrap();
    assert_eq!(deleted["deleted"], true);

    // Errors.
    let e = action(
        &mut c,
        "delete_tag",
        json!({"dataset": "weather", "tag": "one-row"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = action(&mut c, "flush", json!({"dataset": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("nope"), "{e}");
    let e = action(
        &mut c,
        "rollback",
        json!({"dataset": "weather", "version": 999}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = action(&mut c, "rollback", json!({"dataset": "weather"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = status(
        c.do_action(Action::new("flush", Bytes::from_static(b"{not json")))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = action(&mut c, "compact_everything", json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e}");
    assert!(e.message().contains("list_versions"), "{e}");

    // DoPut errors keep their codes.
    let e = flight
        .do_put(put(vec!["nope"], weather_rows(schema.clone(), "x", 0..1)))
        .await
        .err()
        .expect("unknown dataset");
    assert!(e.to_string().contains("nope"), "{e}");
    server.shutdown().await.unwrap();
}

/// ADBC (the Flight SQL driver, through Python's DB-API) and pyarrow.flight against the
/// server: tools/python/flight_sql_clients.py, with the environment from tools/pyenv.
#[tokio::test]
async fn python_flight_sql_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let url = format!("grpc://{}", server.addr());
    let report = crate::e2e::run_python("flight_sql_clients.py", vec![url]).await;
    // The script asserts as it goes; these check that it saw what the server holds.
    assert_eq!(report["stations"], json!(["a", "b", "c"]));
    assert_eq!(report["parameterised"], json!([["b", 2]]));
    assert_eq!(report["qmark"], json!([["c", 3]]));
    assert_eq!(report["table_schema"], json!(["station", "ts", "temp"]));
    // adbc_ingest: two rows appended, visible to the next query; create and unknown
    // datasets refused with the right codes (the script checks the codes).
    assert_eq!(report["ingested"], 2);
    assert_eq!(report["ingested_rows"], json!([5, 6]));
    assert!(
        report["ingest_create_error"]
            .as_str()
            .unwrap()
            .contains("mode append"),
        "{report}"
    );
    assert_eq!(report["after_rollback"], 6);
    // The server's own view agrees: the bad load is gone for good.
    let rows = Box::pin(server.engine().collect("SELECT count(*) AS n FROM weather"))
        .await
        .unwrap();
    assert_eq!(
        rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        6
    );
    server.shutdown().await.unwrap();
}
