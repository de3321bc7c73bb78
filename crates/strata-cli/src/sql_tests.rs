//! `strata sql`, the version commands and `strata demo` against a real server on a
//! loopback port.

use std::collections::VecDeque;
use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use strata_datagen::{WeatherFeed, station_name, weather_spec};
use strata_proto::v1::{CreateDatasetRequest, FlushRequest};
use strata_server::{Server, ServerConfig};

use crate::client::{self, Client};
use crate::datasets::spec_to_proto;
use crate::demo::{self, DemoArgs};
use crate::error::Error;
use crate::ingest::{self, Source};
use crate::query::{self, OutputFormat};
use crate::read::{self, Item};
use crate::sql::{self, Line, LineSource, Shell};
use crate::versions::{self, TagArgs, VacuumArgs, VersionArg};

/// Three stations, ten readings each (one a minute from 2026-01-01T00:00Z).
const STATIONS: usize = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    server: Server,
    client: Client,
}

impl Fixture {
    /// A server with the weather dataset (2 shards), holding no rows.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(ServerConfig::ephemeral(dir.path().join("data")))
            .await
            .unwrap();
        let mut client = client::connect(&server.url()).await.unwrap();
        let mut def = weather_spec().to_def();
        def.shards = 2;
        client
            .create_dataset(CreateDatasetRequest {
                spec: Some(spec_to_proto(def)),
            })
            .await
            .unwrap();
        Self {
            _dir: dir,
            server,
            client,
        }
    }

    /// Streams feed rows `first..first + rows` through the Ingest RPC and flushes;
    /// returns the version committed.
    async fn load(&mut self, first: u64, rows: u64) -> u64 {
        let feed = WeatherFeed {
            stations: STATIONS,
            ..WeatherFeed::default()
        };
        let source: Source = Box::new(move |_, emit| {
            let batch = feed.batch(first, rows as usize);
            emit(Item::Batch {
                sequence: 1,
                rows,
                ipc: read::encode_ipc(&batch)?,
            });
            Ok(1)
        });
        let (summary, outcome) =
            ingest::ingest_source(&mut self.client, "weather", None, source).await;
        outcome.unwrap();
        assert_eq!(summary.rows, rows);
        self.client
            .flush(FlushRequest {
                dataset: "weather".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .version
    }

    /// Runs `script` as `strata sql` runs a script: its outcome and what it printed (as
    /// text; binary output lossily).
    async fn script(
        &mut self,
        script: impl Into<String>,
        format: OutputFormat,
    ) -> (Result<(), Error>, String) {
        let mut out = Vec::new();
        let outcome = sql::run_script(
            &mut self.client,
            Cursor::new(script.into()),
            format,
            &query::Display::default(),
            &mut out,
        )
        .await;
        (outcome, String::from_utf8_lossy(&out).into_owned())
    }

    async fn output(&mut self, sql: &str, format: OutputFormat) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let display = query::Display::default();
        query::run(
            &mut self.client,
            sql,
            "query failed",
            format,
            &display,
            &mut out,
        )
        .await?;
        Ok(out)
    }

    async fn text(&mut self, sql: &str, format: OutputFormat) -> String {
        String::from_utf8(self.output(sql, format).await.unwrap()).unwrap()
    }

    async fn count(&mut self, sql: &str) -> String {
        let (_, batches) = query::collect(&mut self.client, sql, "count")
            .await
            .unwrap();
        query::scalar_text(&batches).unwrap()
    }

    /// What `strata versions weather` prints.
    async fn versions(&mut self) -> String {
        let mut out = Vec::new();
        versions::versions(&mut self.client, "weather", &mut out)
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }
}

const PER_STATION: &str =
    "SELECT station, count(*) AS n, max(ts) AS last FROM weather GROUP BY station ORDER BY station";

#[tokio::test]
async fn sql_prints_tables_csv_json_and_arrow() {
    let mut f = Fixture::start().await;
    f.load(0, 30).await;
    let (s0, s1, s2) = (station_name(0), station_name(1), station_name(2));

    let table = f.text(PER_STATION, OutputFormat::Table).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "+--------------+----+----------------------+",
            "| station      | n  | last                 |",
            "+--------------+----+----------------------+",
            &format!("| {s0} | 10 | 2026-01-01T00:09:00Z |"),
            &format!("| {s1} | 10 | 2026-01-01T00:09:00Z |"),
            &format!("| {s2} | 10 | 2026-01-01T00:09:00Z |"),
            "+--------------+----+----------------------+",
        ],
        "{table}"
    );
    assert!(lines[7].starts_with("3 rows in "), "{table}");
    assert_eq!(lines.len(), 8, "{table}");

    let csv = f.text(PER_STATION, OutputFormat::Csv).await;
    assert_eq!(
        csv,
        format!(
            "station,n,last\n{s0},10,2026-01-01T00:09:00Z\n{s1},10,2026-01-01T00:09:00Z\n\
             {s2},10,2026-01-01T00:09:00Z\n"
        )
    );

    let json = f.text(PER_STATION, OutputFormat::Json).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{json}");
    assert_eq!(rows[1]["station"], s1.as_str());
    assert_eq!(rows[1]["n"], 10);
    assert!(json.ends_with("]\n"), "{json}");

    let ndjson = f.text(PER_STATION, OutputFormat::Ndjson).await;
    assert_eq!(ndjson.lines().count(), 3, "{ndjson}");
    let row: serde_json::Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert_eq!(row["station"], s0.as_str());

    // Raw Arrow IPC: a complete stream any Arrow reader opens.
    let ipc = f.output(PER_STATION, OutputFormat::Arrow).await.unwrap();
    assert!(ipc.ends_with(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]));
    let reader = StreamReader::try_new(Cursor::new(ipc), None).unwrap();
    assert_eq!(reader.schema().field(1).name(), "n");
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);

    // No rows: the header still shows.
    let empty = "SELECT station FROM weather WHERE temperature > 1000";
    let table = f.text(empty, OutputFormat::Table).await;
    assert!(table.contains("| station |"), "{table}");
    assert!(
        table.ends_with(" s\n") && table.contains("0 rows in "),
        "{table}"
    );
    assert_eq!(f.text(empty, OutputFormat::Csv).await, "station\n");
    assert_eq!(f.text(empty, OutputFormat::Json).await, "[]\n");

    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_sql_fails_with_the_status_and_the_parser_message() {
    let mut f = Fixture::start().await;
    let err = f.output("SELEC 1", OutputFormat::Table).await.unwrap_err();
    let Error::Status { code, message, .. } = &err else {
        panic!("expected a status, got {err}")
    };
    assert_eq!(*code, tonic::Code::InvalidArgument);
    assert!(message.contains("SELEC"), "{message}");
    let text = err.to_string();
    assert!(
        text.starts_with("query failed: INVALID_ARGUMENT: SQL parse error"),
        "{text}"
    );

    let err = f
        .output("SELECT * FROM nowhere", OutputFormat::Table)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nowhere"), "{err}");

    // Statements run in order and the first error stops the rest.
    let mut out = Vec::new();
    let statements = crate::split::split("SELECT 1 AS a; SELEC 2; SELECT 3 AS c");
    let err = sql::run_statements(
        &mut f.client,
        statements,
        OutputFormat::Csv,
        &query::Display::default(),
        &mut out,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("statement 2 of 3 failed: INVALID_ARGUMENT"),
        "{err}"
    );
    assert_eq!(String::from_utf8(out).unwrap(), "a\n1\n");
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_script_on_stdin_runs_statement_by_statement() {
    let mut f = Fixture::start().await;
    let script = "-- two statements, one across lines\nSELECT 1 AS a;\nSELECT\n  'x;y' AS b\n";
    let (outcome, out) = f.script(script, OutputFormat::Csv).await;
    outcome.unwrap();
    assert_eq!(out, "a\n1\nb\nx;y\n");

    let (outcome, out) = f
        .script(
            "SELECT 1 AS a;\nSELECT nope FROM weather;\nSELECT 3;",
            OutputFormat::Csv,
        )
        .await;
    let err = outcome.unwrap_err().to_string();
    assert!(
        err.starts_with("statement 2 failed: INVALID_ARGUMENT"),
        "{err}"
    );
    assert!(err.contains("nope"), "{err}");
    assert_eq!(out, "a\n1\n");

    // One Arrow IPC stream holds one result.
    let (outcome, _) = f
        .script("SELECT 1 AS a; SELECT 2 AS b;", OutputFormat::Arrow)
        .await;
    let err = outcome.unwrap_err().to_string();
    assert!(err.contains("one statement"), "{err}");
    f.server.shutdown().await.unwrap();
}

/// The shell's input, scripted.
#[derive(Default)]
struct Script {
    lines: VecDeque<Line>,
    prompts: Vec<String>,
    history: Vec<String>,
}

impl Script {
    fn new(lines: &[&str]) -> Self {
        Self {
            lines: lines
                .iter()
                .map(|l| match *l {
                    "^C" => Line::Interrupted,
                    l => Line::Text(l.to_string()),
                })
                .collect(),
            ..Self::default()
        }
    }
}

impl LineSource for Script {
    fn read_line(&mut self, prompt: &str) -> crate::Result<Line> {
        self.prompts.push(prompt.to_string());
        Ok(self.lines.pop_front().unwrap_or(Line::Eof))
    }

    fn remember(&mut self, entry: &str) {
        self.history.push(entry.to_string());
    }
}

/// Runs the shell over `input`; what it wrote to stdout and to stderr.
async fn run_shell(shell: &mut Shell, client: &mut Client, input: &mut Script) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    shell.run(client, input, &mut out, &mut err).await.unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[tokio::test]
async fn the_shell_runs_multiline_statements_and_survives_errors() {
    let mut f = Fixture::start().await;
    f.load(0, 30).await;
    let mut shell = Shell {
        format: OutputFormat::Table,
        display: query::Display::default(),
        cancel_on_ctrl_c: false,
    };
    let mut input = Script::new(&[
        "SELECT count(*) AS readings",
        "FROM weather;",
        "SELEC oops;",
        "",
        "SELECT 'typed, then' AS abandoned",
        "^C",
        "\\?",
        "SELECT 7 AS seven; SELECT 8 AS eight;",
        "SELECT * FROM weather VERSION AS OF 99;",
        "\\q",
        "SELECT 'after quit' AS never;",
    ]);
    let (out, err) = run_shell(&mut shell, &mut f.client, &mut input).await;
    assert!(
        out.contains("| readings |") && out.contains("| 30       |"),
        "{out}"
    );
    assert!(
        out.contains("| seven |") && out.contains("| eight |"),
        "{out}"
    );
    assert!(
        !out.contains("abandoned") && !out.contains("never"),
        "{out}"
    );
    assert_eq!(out.matches(" row in ").count(), 3, "{out}");
    assert!(
        err.contains("error: INVALID_ARGUMENT: SQL parse error"),
        "{err}"
    );
    assert!(err.contains("error: NOT_FOUND:"), "{err}");
    assert!(err.contains("\\q (or exit"), "help was shown: {err}");
    assert_eq!(
        input.prompts[..3],
        ["strata> ", "    ..> ", "strata> "],
        "a continuation prompt while a statement is open"
    );
    assert_eq!(
        input.history,
        [
            "SELECT count(*) AS readings\nFROM weather;",
            "SELEC oops;",
            "\\?",
            "SELECT 7 AS seven; SELECT 8 AS eight;",
            "SELECT * FROM weather VERSION AS OF 99;",
        ]
    );

    // Ctrl-D (end of input) quits too.
    let mut input = Script::new(&["SELECT 1 AS one;"]);
    let (out, _) = run_shell(&mut shell, &mut f.client, &mut input).await;
    assert!(out.contains("| one |"));
    f.server.shutdown().await.unwrap();
}

#[test]
fn the_shell_history_persists_across_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history");
    let mut editor = sql::Editor::new(Some(path.clone())).unwrap();
    editor.remember("SELECT 1;");
    editor.remember("SELECT\n2;");
    drop(editor);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("SELECT 1;"), "{text}");
    let editor = sql::Editor::new(Some(path)).unwrap();
    assert_eq!(editor.history_len(), 2);
}

#[tokio::test]
async fn versions_rollback_and_tags() {
    let mut f = Fixture::start().await;
    let first = f.load(0, 30).await;
    let second = f.load(30, 30).await;
    assert_eq!(second, first + 1);

    let text = f.versions().await;
    assert!(
        text.contains("| version | time ")
            && text.contains("| operation | details | rows added | rows removed | tags |"),
        "{text}"
    );
    assert!(text.contains(&format!("| {second}       |")), "{text}");
    assert!(text.contains("| 30         |"), "{text}");
    assert!(
        text.ends_with(&format!("versions, head {second}\n")),
        "{text}"
    );

    // Tag the first load, roll back to it, and check the rows.
    let tag = |delete, first: &str, second: Option<&str>| TagArgs {
        delete,
        dataset: "weather".into(),
        first: first.into(),
        second: second.map(Into::into),
    };
    let mut out = Vec::new();
    versions::tag(
        &mut f.client,
        &tag(false, &first.to_string(), Some("first_load")),
        &mut out,
    )
    .await
    .unwrap();
    versions::tag(&mut f.client, &tag(false, "head", Some("both")), &mut out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "tagged weather version {first} as first_load\ntagged weather version {second} as both\n"
        )
    );
    let mut out = Vec::new();
    versions::tags(&mut f.client, "weather", &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(&format!("| first_load | {first} ")), "{text}");

    let mut out = Vec::new();
    let restored = versions::rollback(
        &mut f.client,
        "weather",
        &VersionArg::Tag("first_load".into()),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(restored, second + 1);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "rolled back weather to tag first_load (version {first}): new head version {restored}\n"
        )
    );
    assert_eq!(f.count("SELECT count(*) FROM weather").await, "30");

    // By number, then by time: the newest version at or before now is the head.
    let mut out = Vec::new();
    versions::rollback(
        &mut f.client,
        "weather",
        &VersionArg::Number(second),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(f.count("SELECT count(*) FROM weather").await, "60");
    let now = VersionArg::parse("2100-01-01T00:00:00Z", false).unwrap();
    versions::rollback(&mut f.client, "weather", &now, &mut out)
        .await
        .unwrap();
    assert_eq!(f.count("SELECT count(*) FROM weather").await, "60");

    let text = f.versions().await;
    assert!(
        text.contains(&format!("| rollback  | to={first} ")),
        "{text}"
    );
    assert!(text.contains("first_load"), "{text}");

    // Delete a tag; deleting it again is NOT_FOUND.
    let mut out = Vec::new();
    versions::tag(&mut f.client, &tag(true, "first_load", None), &mut out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "deleted tag first_load of weather\n"
    );
    let err = versions::tag(
        &mut f.client,
        &tag(true, "first_load", None),
        &mut Vec::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");

    // Unknown datasets and versions.
    let err = versions::versions(&mut f.client, "nope", &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("listing the versions of nope: NOT_FOUND"),
        "{err}"
    );
    let err = versions::rollback(
        &mut f.client,
        "weather",
        &VersionArg::Number(999),
        &mut Vec::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("rolling weather back to version 999: NOT_FOUND"),
        "{err}"
    );

    let mut out = Vec::new();
    versions::compact(&mut f.client, "weather", &mut out)
        .await
        .unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("compacted weather: "),
        "compact answers"
    );

    // Vacuum keeping the newest two versions: the old ones go, the tagged one stays.
    let mut out = Vec::new();
    let vacuum = VacuumArgs {
        dataset: "weather".into(),
        keep_last: Some(2),
        keep_within: None,
    };
    versions::vacuum(&mut f.client, &vacuum, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("vacuumed weather: version "), "{text}");
    assert!(!text.contains("versions removed         0\n"), "{text}");
    let text = f.versions().await;
    assert!(
        !text.contains("| create "),
        "version 1 was vacuumed: {text}"
    );
    assert!(
        text.contains(&format!("| {second}       |")),
        "tagged: {text}"
    );
    assert!(text.contains("| vacuum "), "{text}");
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_demo_runs_end_to_end() {
    let mut out = Vec::new();
    let args = DemoArgs {
        rows: 3_000,
        data_dir: None,
    };
    let report = demo::demo(&args, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();

    assert_eq!(report.rows_at_backfill, 2_000);
    assert_eq!(report.rows_before, 3_000);
    assert_eq!(report.rows_with_bad, 3_000 + demo::BAD_ROWS);
    assert_eq!(report.absurd_with_bad, demo::BAD_ROWS);
    assert_eq!(
        report.rows_after, report.rows_before,
        "the rollback restored the rows"
    );
    assert_eq!(report.absurd_after, 0);
    assert_eq!(
        (
            report.backfill_version,
            report.live_version,
            report.bad_version,
            report.restored_version
        ),
        (
            report.created + 1,
            report.created + 2,
            report.created + 3,
            report.created + 4
        ),
        "one version per load, deterministic"
    );

    for expected in [
        "date_trunc('day', ts)",
        "date_trunc('month', ts)",
        "The five windiest stations",
        "strata_versions('weather')",
        &format!("VERSION AS OF {}", report.backfill_version),
        "ALTER TABLE weather CREATE TAG before_bad_load",
        "RESTORE TABLE weather TO VERSION AS OF 'before_bad_load'",
        "| 999.0      |",
        "before_bad_load",
        "Shut the server down",
        "What happened",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The first station's first day, in the daily precipitation table.
    let first_day = format!("| {} | 2026-01-01T00:00:00Z |", station_name(0));
    assert!(text.contains(&first_day), "{text}");
    assert!(text.contains("5 rows in"), "the top five: {text}");
}

/// The shell's backslash commands, the row limit of the table format, and NULL shown
/// apart from an empty string.
#[tokio::test]
async fn the_shell_lists_describes_and_limits_what_it_shows() {
    let mut f = Fixture::start().await;
    f.load(0, 30).await;
    let mut shell = Shell {
        format: OutputFormat::Table,
        display: query::Display {
            max_rows: 5,
            ..query::Display::default()
        },
        cancel_on_ctrl_c: false,
    };
    let mut input = Script::new(&[
        "\\dt",
        "\\d weather",
        "\\d nope",
        "SELECT station FROM weather ORDER BY station;",
        "SELECT NULL AS n, '' AS e;",
        "\\x",
        "\\timing",
        "SELECT 1 AS one, 'x' AS two;",
        "\\bogus",
        "\\q",
    ]);
    let (out, err) = run_shell(&mut shell, &mut f.client, &mut input).await;
    // \dt and \d: the dataset, its columns with keys, shards and head version.
    assert!(
        out.starts_with("weather\ndataset        weather\n"),
        "{out}"
    );
    assert!(out.contains("partition key  station"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("station") && l.ends_with("partition key")),
        "{out}"
    );
    assert!(out.contains("shards         2"), "{out}");
    assert!(out.contains("head version   2"), "{out}");
    assert!(err.contains("error: NOT_FOUND"), "{err}");
    // 30 rows, 5 shown, the total counted.
    assert!(out.contains("5 of 30 rows shown"), "{out}");
    // NULL is NULL, '' is nothing.
    assert!(out.contains("| NULL |   |"), "{out}");
    // Expanded, without timing.
    assert!(err.contains("expanded display is on"), "{err}");
    assert!(err.contains("timing is off"), "{err}");
    assert!(out.contains("-[ RECORD 1 ]"), "{out}");
    assert!(out.contains("one | 1\ntwo | x\n1 row\n"), "{out}");
    assert!(err.contains("unknown command \\bogus"), "{err}");
    f.server.shutdown().await.unwrap();
}

#[test]
fn copy_statements_are_recognised() {
    use std::path::PathBuf;
    let parse = |s: &str| sql::parse_copy(s).map(|r| r.map_err(|e| e.to_string()));
    assert_eq!(
        parse("COPY (SELECT a FROM t WHERE b = ')') TO '/tmp/x.parquet';").unwrap(),
        Ok((
            "SELECT a FROM t WHERE b = ')'".to_string(),
            PathBuf::from("/tmp/x.parquet"),
            None
        ))
    );
    assert_eq!(
        parse("copy weather to 'w.out' WITH (FORMAT csv)").unwrap(),
        Ok((
            "SELECT * FROM weather".to_string(),
            PathBuf::from("w.out"),
            Some(OutputFormat::Csv)
        ))
    );
    assert_eq!(
        parse("COPY (SELECT 1) TO 'a' (FORMAT 'parquet')")
            .unwrap()
            .unwrap()
            .2,
        Some(OutputFormat::Parquet)
    );
    assert!(parse("SELECT 1").is_none());
    assert!(parse("COPYRIGHT").is_none());
    assert!(parse("COPY (SELECT 1 TO 'x'").unwrap().is_err());
    assert!(parse("COPY (SELECT 1) TO x").unwrap().is_err());
    assert!(
        parse("COPY (SELECT 1) TO 'x' (FORMAT xml)")
            .unwrap()
            .is_err()
    );
}

/// `COPY (query) TO 'file'` in a script writes the file on the client, whole, in the
/// format its options or extension name.
#[tokio::test]
async fn copy_writes_results_to_files_on_the_client() {
    let mut f = Fixture::start().await;
    f.load(0, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("w.parquet");
    let csv = dir.path().join("w.txt");
    let script = format!(
        "COPY (SELECT station, temperature FROM weather ORDER BY ts) TO '{}';\n\
         COPY weather TO '{}' (FORMAT csv);\n",
        parquet.display(),
        csv.display()
    );
    let (outcome, said) = f.script(script, OutputFormat::Table).await;
    outcome.unwrap();
    assert!(said.contains("COPY 30: wrote rows to"), "{said}");
    let file = std::fs::File::open(&parquet).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 30);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 31, "a header and 30 rows");
    // A failing COPY leaves no file behind.
    let bad = dir.path().join("bad.parquet");
    let (outcome, _) = f
        .script(
            format!("COPY (SELECT nope FROM weather) TO '{}'", bad.display()),
            OutputFormat::Table,
        )
        .await;
    let err = outcome.unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    f.server.shutdown().await.unwrap();
}
