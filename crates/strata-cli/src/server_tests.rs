//! `strata ingest` and `strata datasets` against a real server on a loopback port.

use std::io::Write;

use strata_proto::v1::DescribeDatasetRequest;
use strata_server::{Server, ServerConfig};

use crate::datasets::{self, CreateArgs, DatasetsCommand};
use crate::ingest::{self, IngestArgs};

fn weather_csv(path: &std::path::Path, first: usize, n: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(
        f,
        "station,ts,temperature,dewpoint,pressure,wind_direction,wind_speed,precip_1h,sky_condition"
    )
    .unwrap();
    for i in first..first + n {
        let (station, minute) = (i % 7, i / 7);
        writeln!(
            f,
            "st{station},2024-01-{:02}T{:02}:{:02}:00Z,{}.5,1.0,1010.0,{},3.0,,CLR",
            1 + minute / 1440,
            minute / 60 % 24,
            minute % 60,
            i % 40,
            i % 360
        )
        .unwrap();
    }
}

fn args(dataset: &str, files: Vec<std::path::PathBuf>) -> IngestArgs {
    IngestArgs {
        producer: Some("loader-1".into()),
        batch_rows: 1000,
        no_progress: true,
        ..IngestArgs::new(dataset, files)
    }
}

/// `strata datasets create weather --schema schemas/weather.json --shards 2`.
async fn create_weather(url: &str) {
    let schema =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/weather.json");
    datasets::run(
        url,
        DatasetsCommand::Create(CreateArgs {
            name: "weather".into(),
            schema: Some(schema),
            from: None,
            columns: vec![],
            partition_key: None,
            row_key: None,
            shards: Some(2),
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn ingest_resumes_without_duplicates_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().join("data")))
        .await
        .unwrap();
    let url = server.url();
    create_weather(&url).await;
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    weather_csv(&a, 0, 5000);
    weather_csv(&b, 5000, 2500);

    // Interrupted after the first file...
    let (summary, outcome) = ingest::ingest(&url, &args("weather", vec![a.clone()]), false)
        .await
        .unwrap();
    outcome.unwrap();
    assert_eq!(
        (summary.batches, summary.rows, summary.last_sequence),
        (5, 5000, 5)
    );
    // ... resumed with the whole input: the first file's batches are not sent again.
    let (summary, outcome) =
        ingest::ingest(&url, &args("weather", vec![a.clone(), b.clone()]), false)
            .await
            .unwrap();
    outcome.unwrap();
    assert_eq!(summary.opened_sequence, 5);
    assert_eq!(
        (summary.skipped_batches, summary.batches, summary.rows),
        (5, 3, 2500)
    );
    // Run again: nothing to do.
    let (summary, outcome) = ingest::ingest(&url, &args("weather", vec![a, b]), false)
        .await
        .unwrap();
    outcome.unwrap();
    assert_eq!((summary.skipped_batches, summary.batches), (8, 0));

    ingest::flush(&url, "weather").await.unwrap();
    let info = crate::client::connect(&url)
        .await
        .unwrap()
        .describe_dataset(DescribeDatasetRequest {
            name: "weather".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.live_rows, 7500);
    assert_eq!(info.producers.get("loader-1"), Some(&8));

    // A file that does not fit is refused before anything is sent.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "station,ts,nonsense\nx,2024-01-01T00:00:00Z,1\n").unwrap();
    assert!(
        ingest::ingest(&url, &args("weather", vec![bad]), false)
            .await
            .is_err()
    );
    server.shutdown().await.unwrap();
}

/// `strata watch`: the history from --from, then versions committed while it runs,
/// filtered on the server, until --until; as tables and as NDJSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_as_versions_commit() {
    use crate::watch::{self, WatchArgs, WatchFormat};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().join("data")))
        .await
        .unwrap();
    let url = server.url();
    let mut c = crate::client::connect(&url).await.unwrap();
    for sql in [
        "CREATE TABLE readings (sensor VARCHAR NOT NULL, t BIGINT NOT NULL, temp DOUBLE, \
         PRIMARY KEY ((sensor), t))",
        "INSERT INTO readings VALUES ('a', 1, 20.5), ('b', 1, 41.0)",
    ] {
        crate::query::collect(&mut c, sql, "setup").await.unwrap();
    }
    // v1 create, v2 insert; v3 (an update of a) and v4 (a delete) commit while watching.
    let writer = async {
        let mut c = crate::client::connect(&url).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        for sql in [
            "INSERT INTO readings VALUES ('a', 1, 45.0)",
            "DELETE FROM readings WHERE sensor = 'b'",
        ] {
            crate::query::collect(&mut c, sql, "write").await.unwrap();
        }
    };
    let args = WatchArgs {
        dataset: "readings".into(),
        from: Some(1),
        filter: Some("temp > 40".into()),
        columns: vec!["sensor".into(), "temp".into()],
        until: Some(4),
        format: WatchFormat::Table,
    };
    let mut out = Vec::new();
    let (watched, ()) = tokio::join!(watch::run(&mut c, &args, &mut out), writer);
    watched.unwrap();
    let text = String::from_utf8(out).unwrap();
    let headings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("version "))
        .map(|l| l.split(" at ").next().unwrap())
        .collect();
    assert_eq!(
        headings,
        [
            "version 1 (create)",
            "version 2 (upsert)",
            "version 3 (upsert)",
            "version 4 (delete)"
        ],
        "{text}"
    );
    assert!(text.contains("version 1 (create) at"), "{text}");
    assert!(text.contains(": 1 change\n"), "{text}");
    // v3's update_before (20.5) is filtered out by temp > 40; its update_after is not.
    assert!(text.contains("| a      | 45.0 | update_after"), "{text}");
    assert!(!text.contains("20.5"), "{text}");
    assert!(text.contains("| b      | 41.0 | delete"), "{text}");

    // NDJSON, one object per row, from v3 to v3.
    let args = WatchArgs {
        from: Some(3),
        filter: None,
        columns: vec![],
        until: Some(3),
        format: WatchFormat::Ndjson,
        ..args
    };
    let mut out = Vec::new();
    watch::run(&mut c, &args, &mut out).await.unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["_change_type"], "update_before");
    assert_eq!(rows[0]["temp"], 20.5);
    assert_eq!(rows[1]["_change_type"], "update_after");
    assert_eq!(rows[1]["_commit_version"], 3);
    // A bad filter is the server's INVALID_ARGUMENT, said plainly.
    let args = WatchArgs {
        filter: Some("temp >".into()),
        ..args
    };
    let err = watch::run(&mut c, &args, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("filter"), "{err}");
    server.shutdown().await.unwrap();
}

async fn count(c: &mut crate::client::Client) -> String {
    let (_, batches) = crate::query::collect(c, "SELECT count(*) FROM weather", "count")
        .await
        .unwrap();
    crate::query::scalar_text(&batches).unwrap()
}

/// `strata ingest` returns once its rows are queryable (the flush interval is an hour
/// here, so only its own commit makes them so); `--no-wait` leaves them to the flush.
#[tokio::test]
async fn ingest_finishes_when_its_rows_are_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path().join("data"));
    config.ingest.flush_interval_ms = 3_600_000;
    let server = Server::start(config).await.unwrap();
    let url = server.url();
    create_weather(&url).await;
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    weather_csv(&a, 0, 700);
    weather_csv(&b, 700, 300);
    let mut c = crate::client::connect(&url).await.unwrap();
    ingest::run(&url, args("weather", vec![a])).await.unwrap();
    assert_eq!(count(&mut c).await, "700");
    let mut later = args("weather", vec![b]);
    later.producer = Some("loader-2".into());
    later.no_wait = true;
    ingest::run(&url, later).await.unwrap();
    assert_eq!(count(&mut c).await, "700", "not committed yet");
    ingest::flush(&url, "weather").await.unwrap();
    assert_eq!(count(&mut c).await, "1000");
    server.shutdown().await.unwrap();
}

/// A CSV as R and pandas export nycflights13's weather: `NA` for missing values, ISO
/// times with `Z`. The dataset is made from the file itself (`datasets create --from`),
/// then the file loads whole, with its NAs as nulls.
#[tokio::test]
async fn a_dataset_is_made_from_a_csv_as_r_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().join("data")))
        .await
        .unwrap();
    let url = server.url();
    let csv = dir.path().join("weather.csv");
    let mut text = String::from("\"origin\",\"year\",\"temp\",\"wind_dir\",\"time_hour\"\n");
    for i in 0..48 {
        let wind = if i % 5 == 0 {
            "NA".to_string()
        } else {
            format!("{}", i * 10)
        };
        let temp = if i % 7 == 0 {
            "NA".to_string()
        } else {
            format!("{}.5", 30 + i)
        };
        text.push_str(&format!(
            "\"{}\",2013,{temp},{wind},2013-01-{:02}T{:02}:00:00Z\n",
            ["EWR", "JFK", "LGA"][i % 3],
            1 + i / 24,
            i % 24
        ));
    }
    std::fs::write(&csv, text).unwrap();
    datasets::run(
        &url,
        DatasetsCommand::Create(CreateArgs {
            name: "weather".into(),
            schema: None,
            from: Some(csv.clone()),
            columns: vec![],
            partition_key: Some(vec!["origin".into()]),
            row_key: Some(vec!["time_hour".into()]),
            shards: Some(2),
        }),
    )
    .await
    .unwrap();
    let mut c = crate::client::connect(&url).await.unwrap();
    let info = c
        .describe_dataset(DescribeDatasetRequest {
            name: "weather".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let spec = info.spec.unwrap();
    let types: Vec<(&str, &str, bool)> = spec
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.r#type.as_str(), c.nullable))
        .collect();
    assert_eq!(types[0], ("origin", "utf8", false));
    assert_eq!(types[1], ("year", "int64", true));
    assert_eq!(types[2], ("temp", "float64", true));
    assert_eq!(types[3], ("wind_dir", "int64", true));
    assert!(types[4].1.starts_with("timestamp("), "{types:?}");
    assert!(!types[4].2, "a key column is not null");
    ingest::run(&url, args("weather", vec![csv])).await.unwrap();
    assert_eq!(count(&mut c).await, "48");
    let (_, batches) = crate::query::collect(
        &mut c,
        "SELECT count(*) - count(wind_dir), count(*) - count(temp) FROM weather",
        "nulls",
    )
    .await
    .unwrap();
    let b = &batches[0];
    let n = |i: usize| arrow::util::display::array_value_to_string(b.column(i), 0).unwrap();
    assert_eq!((n(0), n(1)), ("10".to_string(), "7".to_string()));
    // A file without `temp` would blank the temperature of the rows it replaces:
    // refused, unless asked for.
    let partial = dir.path().join("partial.csv");
    std::fs::write(
        &partial,
        "origin,year,wind_dir,time_hour\nEWR,2013,5,2013-01-01T00:00:00Z\n",
    )
    .unwrap();
    let mut load = args("weather", vec![partial.clone()]);
    load.producer = Some("partial".into());
    let err = ingest::run(&url, load).await.unwrap_err().to_string();
    assert!(err.contains("\"temp\" is missing"), "{err}");
    assert!(err.contains("--missing-as-null"), "{err}");
    let mut load = args("weather", vec![partial]);
    load.producer = Some("partial".into());
    load.missing_as_null = true;
    ingest::run(&url, load).await.unwrap();
    assert_eq!(count(&mut c).await, "48");
    server.shutdown().await.unwrap();
}

/// `strata ingest --create` makes the dataset from a gzip-compressed CSV's own columns,
/// then loads it.
#[tokio::test]
async fn ingest_creates_the_dataset_from_a_gzipped_csv() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().join("data")))
        .await
        .unwrap();
    let url = server.url();
    let path = dir.path().join("readings.csv.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    writeln!(gz, "sensor,t,value").unwrap();
    for i in 0..100 {
        writeln!(
            gz,
            "s{},{i},{}",
            i % 4,
            if i % 10 == 0 {
                "NA".into()
            } else {
                format!("{i}.25")
            }
        )
        .unwrap();
    }
    gz.finish().unwrap();
    let mut load = args("readings", vec![path]);
    load.create = true;
    load.partition_key = Some(vec!["sensor".into()]);
    load.row_key = Some(vec!["t".into()]);
    ingest::run(&url, load).await.unwrap();
    let mut c = crate::client::connect(&url).await.unwrap();
    let (_, batches) = crate::query::collect(
        &mut c,
        "SELECT count(*), count(value), max(t) FROM readings",
        "check",
    )
    .await
    .unwrap();
    let b = &batches[0];
    let n = |i: usize| arrow::util::display::array_value_to_string(b.column(i), 0).unwrap();
    assert_eq!((n(0), n(1), n(2)), ("100".into(), "90".into(), "99".into()));
    server.shutdown().await.unwrap();
}
