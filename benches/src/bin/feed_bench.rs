//! The change feed under load: commit-to-subscriber latency with ingestion at full speed
//! and `--subscribers` subscribers, and the ingest rate with and without them.
//!
//! One [`Server`] in this process (local store, fsync on, `--flush-ms` flush interval),
//! two datasets of the weather feed. For each of two runs, a fresh dataset:
//! - run 1: no subscriber; run 2: `--subscribers` subscriptions (the `Subscribe` RPC,
//!   each on its own connection, every row: no filter) opened before the load;
//! - `--producers` producers stream `--rows` rows (batches of `--batch-rows`, encoded
//!   before timing) through `Ingest` as fast as the acks allow, then `Flush`.
//!
//! Ingest rate: rows over the time from the first send to the last ack (and to the
//! flush). Latency: for every version and subscriber, the wall-clock time the version's
//! end reached the subscriber minus the version's commit time (both this machine's
//! clock, millisecond resolution), p50/p99/max; the flush interval is printed beside it
//! (a row waits up to that long before any commit makes it visible). Each subscriber
//! must receive every row exactly once, in version order.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use strata_benches::weather_dataset;
use strata_datagen::WeatherFeed;
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    CreateDatasetRequest, FlushRequest, IngestBatch, IngestOpen, IngestRequest, SubscribeRequest,
    ingest_request, ingest_response,
};
use strata_server::{Server, ServerConfig};
use tonic::transport::Channel;

struct Args {
    rows: usize,
    batch_rows: usize,
    producers: usize,
    subscribers: usize,
    flush_ms: u64,
    /// The subscribers' server-side filter (every row when empty).
    filter: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        rows: 2_000_000,
        batch_rows: 10_000,
        producers: 2,
        subscribers: 10,
        flush_ms: 1000,
        filter: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--filter" {
            args.filter = it.next().unwrap_or_else(|| usage());
            continue;
        }
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--rows" => args.rows = value(),
            "--batch-rows" => args.batch_rows = value().max(1),
            "--producers" => args.producers = value().max(1),
            "--subscribers" => args.subscribers = value(),
            "--flush-ms" => args.flush_ms = value() as u64,
            _ => usage(),
        }
    }
    args
}

fn usage() -> ! {
    eprintln!(
        "usage: feed-bench [--rows N] [--batch-rows N] [--producers N] [--subscribers N] \
         [--flush-ms MS] [--filter SQL]"
    );
    std::process::exit(2)
}

fn ipc(batch: &arrow::array::RecordBatch) -> Bytes {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).expect("IPC writer");
    w.write(batch).expect("IPC write");
    w.finish().expect("IPC finish");
    drop(w);
    Bytes::from(out)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

async fn connect(url: &str) -> StrataClient<Channel> {
    StrataClient::connect(url.to_string())
        .await
        .expect("connect")
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

/// Streams one producer's batches and waits for every ack.
async fn produce(url: &str, dataset: &str, producer: usize, batches: Vec<Bytes>) {
    let mut c = connect(url).await;
    let mut messages = vec![IngestRequest {
        kind: Some(ingest_request::Kind::Open(IngestOpen {
            dataset: dataset.into(),
            producer: format!("p{producer}"),
        })),
    }];
    let n = batches.len();
    messages.extend(
        batches
            .into_iter()
            .enumerate()
            .map(|(i, arrow_ipc)| IngestRequest {
                kind: Some(ingest_request::Kind::Batch(IngestBatch {
                    sequence: i as u64 + 1,
                    arrow_ipc,
                })),
            }),
    );
    let mut responses = c
        .ingest(futures::stream::iter(messages))
        .await
        .expect("ingest")
        .into_inner();
    let mut acks = 0;
    while let Some(r) = responses.message().await.expect("ingest stream") {
        if let Some(ingest_response::Kind::Ack(_)) = r.kind {
            acks += 1;
        }
    }
    assert_eq!(acks, n, "every batch acknowledged");
}

/// What one subscriber saw: latencies per version, rows.
struct Seen {
    /// Commit to the version's first rows (versions with rows).
    first_ms: Vec<f64>,
    /// Commit to the version's end (every row of it received).
    latencies_ms: Vec<f64>,
    rows: usize,
}

/// Follows `dataset` from version 2 until the version `last` names (known once the
/// load is flushed) is complete.
async fn subscriber(
    url: &str,
    dataset: String,
    filter: String,
    mut last: tokio::sync::watch::Receiver<u64>,
) -> Seen {
    let mut c = connect(url).await;
    let mut stream = c
        .subscribe(SubscribeRequest {
            dataset,
            from_version: Some(2),
            filter,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut decoder = StreamDecoder::new();
    let mut seen = Seen {
        first_ms: vec![],
        latencies_ms: vec![],
        rows: 0,
    };
    let (mut done, mut started) = (1, 1);
    loop {
        if done >= *last.borrow() {
            return seen;
        }
        let m = tokio::select! {
            m = stream.message() => m.expect("subscription").expect("the subscription ended early"),
            _ = last.changed() => continue,
        };
        let mut buffer = Buffer::from(m.arrow_ipc);
        while !buffer.is_empty() {
            if let Some(b) = decoder.decode(&mut buffer).expect("IPC") {
                seen.rows += b.num_rows();
            }
        }
        if m.version == 0 {
            continue; // the schema message
        }
        if m.version_complete {
            assert_eq!(m.version, done + 1, "versions in order, without gap");
            done = m.version;
            seen.latencies_ms.push(now_ms() - m.timestamp_ms as f64);
        } else if m.version > started {
            started = m.version;
            seen.first_ms.push(now_ms() - m.timestamp_ms as f64);
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Run {
    acked: Duration,
    flushed: Duration,
    first_ms: Vec<f64>,
    latencies_ms: Vec<f64>,
    versions: u64,
    rows_seen: usize,
}

async fn run(server: &Server, args: &Args, load: &[Vec<Bytes>], subscribers: usize) -> Run {
    let dataset = format!("feed_{subscribers}");
    let url = server.url();
    let mut c = connect(&url).await;
    c.create_dataset(CreateDatasetRequest {
        spec: Some(weather_dataset(&dataset, 4)),
    })
    .await
    .expect("create");
    // Each subscriber learns the last version once the load is flushed.
    let (last_tx, last_rx) = tokio::sync::watch::channel(u64::MAX);
    let watchers: Vec<_> = (0..subscribers)
        .map(|_| {
            let (url, dataset, filter) = (url.clone(), dataset.clone(), args.filter.clone());
            let last = last_rx.clone();
            tokio::spawn(async move { subscriber(&url, dataset, filter, last).await })
        })
        .collect();
    // Let the subscriptions open before the load starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let producers: Vec<_> = load
        .iter()
        .enumerate()
        .map(|(p, batches)| {
            let (url, dataset, batches) = (url.clone(), dataset.clone(), batches.clone());
            tokio::spawn(async move { produce(&url, &dataset, p, batches).await })
        })
        .collect();
    for p in producers {
        p.await.expect("producer");
    }
    let acked = start.elapsed();
    let last = c
        .flush(FlushRequest {
            dataset: dataset.clone(),
        })
        .await
        .expect("flush")
        .into_inner()
        .version;
    let flushed = start.elapsed();
    last_tx.send(last).expect("subscribers listen");
    let (mut first_ms, mut latencies_ms) = (Vec::new(), Vec::new());
    let mut rows_seen = None;
    for w in watchers {
        let seen = tokio::time::timeout(Duration::from_secs(600), w)
            .await
            .expect("subscribers finish")
            .expect("subscriber");
        assert_eq!(
            seen.latencies_ms.len() as u64,
            last - 1,
            "every version, once"
        );
        assert!(
            rows_seen.is_none_or(|r| r == seen.rows),
            "subscribers saw the same rows"
        );
        rows_seen = Some(seen.rows);
        first_ms.extend(seen.first_ms);
        latencies_ms.extend(seen.latencies_ms);
    }
    if args.filter.is_empty() && subscribers > 0 {
        assert_eq!(
            rows_seen,
            Some(args.rows),
            "every row reached every subscriber"
        );
    }
    first_ms.sort_by(f64::total_cmp);
    latencies_ms.sort_by(f64::total_cmp);
    Run {
        acked,
        flushed,
        first_ms,
        latencies_ms,
        versions: last - 1,
        rows_seen: rows_seen.unwrap_or(0),
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let feed = WeatherFeed::default();
    // Producer p sends rows [p * share, (p + 1) * share) of the feed, in batches.
    let share = args.rows.div_ceil(args.producers);
    let load: Vec<Vec<Bytes>> = (0..args.producers)
        .map(|p| {
            let end = ((p + 1) * share).min(args.rows);
            (p * share..end)
                .step_by(args.batch_rows)
                .map(|first| {
                    let n = args.batch_rows.min(end - first);
                    ipc(&feed.batch(first as u64, n))
                })
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    runtime.block_on(async {
        let mut config = ServerConfig::ephemeral(dir.path().to_path_buf());
        config.ingest.flush_interval_ms = args.flush_ms;
        let server = Server::start(config).await.expect("server");
        let without = run(&server, &args, &load, 0).await;
        let with = run(&server, &args, &load, args.subscribers).await;
        let rate = |d: Duration| args.rows as f64 / d.as_secs_f64();
        println!(
            "{} rows, {} producers, batches of {} rows, flush interval {} ms",
            args.rows, args.producers, args.batch_rows, args.flush_ms
        );
        println!(
            "ingest, no subscriber:      {:>10.0} rows/s to the last ack, {:>10.0} rows/s to the flush",
            rate(without.acked),
            rate(without.flushed)
        );
        println!(
            "ingest, {:>2} subscribers:   {:>10.0} rows/s to the last ack, {:>10.0} rows/s to the flush",
            args.subscribers,
            rate(with.acked),
            rate(with.flushed)
        );
        println!(
            "ratio with / without subscribers: {:.2} (to the last ack), {:.2} (to the flush)",
            rate(with.acked) / rate(without.acked),
            rate(with.flushed) / rate(without.flushed)
        );
        println!(
            "subscribers' filter: {}; each received {} rows",
            if args.filter.is_empty() { "none (every row)" } else { &args.filter },
            with.rows_seen
        );
        for (what, l) in [
            ("the version's first rows", &with.first_ms),
            ("the version's end (all its rows)", &with.latencies_ms),
        ] {
            println!(
                "commit to {what}, {} versions x {} subscribers: p50 {:.1} ms, p99 {:.1} ms, \
                 max {:.1} ms (flush interval {} ms)",
                with.versions,
                args.subscribers,
                pct(l, 0.5),
                pct(l, 0.99),
                l.last().copied().unwrap_or(f64::NAN),
                args.flush_ms
            );
        }
        server.shutdown().await.expect("shutdown");
    });
}
