//! What TLS and token authentication cost: two servers in one process, one plaintext
//! without tokens, one with TLS (rustls, ECDSA P-256 certificate) and bearer tokens,
//! measured alternately in the same run.
//!
//! - ingest: `--producers` (4) gRPC `Ingest` streams of `--rows` (2M) weather rows in
//!   10,000-row batches, durable acks; rows/s from the first batch sent to the last ack;
//! - queries over Flight SQL (arrow-rs client, a fresh connection per side, the token
//!   sent as a bearer header): `SELECT 1` round trips, a group-by over the dataset, and
//!   a full `SELECT *` transfer.
//!
//! Each measurement alternates plain and secure `--runs` (5) times; medians and the
//! ratio secure / plain are printed.
//!
//! `cargo run --release -p strata-benches --bin secure-bench -- --rows 2000000`

#![allow(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::time::{Duration, Instant};

use arrow::ipc::writer::StreamWriter;
use arrow_flight::sql::client::FlightSqlServiceClient;
use bytes::Bytes;
use clap::Parser;
use futures::TryStreamExt;
use strata_benches::{median, ms, ratio};
use strata_datagen::WeatherFeed;
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    CreateDatasetRequest, FlushRequest, IngestBatch, IngestOpen, IngestRequest, ingest_request,
};
use strata_server::{Server, ServerConfig};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Rows ingested into each server per run.
    #[arg(long, default_value_t = 2_000_000)]
    rows: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Alternating runs per measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

const TOKEN: &str = "strata_secure_bench_token";
const BATCH_ROWS: u64 = 10_000;

/// Adds the side's bearer token to every call.
#[derive(Clone, Debug)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    }
}

/// One side: a server and how to reach it.
struct Side {
    name: &'static str,
    server: Server,
    ca: Option<Vec<u8>>,
    token: Option<&'static str>,
}

impl Side {
    async fn channel(&self) -> Channel {
        let url = match self.ca {
            Some(_) => format!("https://localhost:{}", self.server.addr().port()),
            None => self.server.url(),
        };
        let mut endpoint = Channel::from_shared(url).unwrap().tcp_nodelay(true);
        if let Some(ca) = &self.ca {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .unwrap();
        }
        endpoint.connect().await.unwrap()
    }

    async fn strata(&self) -> StrataClient<InterceptedService<Channel, Bearer>> {
        let header = self.token.map(|t| format!("Bearer {t}").parse().unwrap());
        StrataClient::with_interceptor(self.channel().await, Bearer(header))
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(256 << 20)
    }

    async fn flight(&self) -> FlightSqlServiceClient<Channel> {
        let mut c = FlightSqlServiceClient::new(self.channel().await);
        if let Some(t) = self.token {
            c.set_token(t.to_string());
        }
        c
    }
}

async fn start(dir: &std::path::Path, secure: bool) -> Side {
    let mut config = ServerConfig::ephemeral(dir.join("data"));
    config.default_shards = 4;
    if !secure {
        let server = Server::start(config).await.unwrap();
        return Side {
            name: "plain",
            server,
            ca: None,
            token: None,
        };
    }
    let files = strata_server::tls::write_self_signed(dir, &["localhost".to_string()]).unwrap();
    config.tls.cert = Some(files.cert.clone());
    config.tls.key = Some(files.key.clone());
    config.auth.token.push(strata_server::auth::TokenEntry {
        name: "bench".into(),
        role: strata_server::auth::Role::Admin,
        sha256: strata_server::auth::token_hash(TOKEN),
    });
    let server = Server::start(config).await.unwrap();
    Side {
        name: "tls+auth",
        server,
        ca: Some(std::fs::read(&files.ca).unwrap()),
        token: Some(TOKEN),
    }
}

fn ipc(batch: &arrow::array::RecordBatch) -> Bytes {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    Bytes::from(out)
}

/// Ingests `batches` (split among producers) into a fresh dataset; rows/s.
async fn ingest(side: &Side, run: usize, batches: &[Bytes], producers: usize) -> f64 {
    let dataset = format!("w{run}");
    side.strata()
        .await
        .create_dataset(CreateDatasetRequest {
            spec: Some(strata_benches::weather_dataset(&dataset, 4)),
        })
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(side.strata().await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, mut client) in clients.into_iter().enumerate() {
        let mine: Vec<Bytes> = batches.iter().skip(p).step_by(producers).cloned().collect();
        let dataset = dataset.clone();
        tasks.push(tokio::spawn(async move {
            let mut messages = vec![IngestRequest {
                kind: Some(ingest_request::Kind::Open(IngestOpen {
                    dataset,
                    producer: format!("p{p}"),
                })),
            }];
            let n = mine.len();
            messages.extend(
                mine.into_iter()
                    .enumerate()
                    .map(|(i, arrow_ipc)| IngestRequest {
                        kind: Some(ingest_request::Kind::Batch(IngestBatch {
                            sequence: i as u64 + 1,
                            arrow_ipc,
                        })),
                    }),
            );
            let mut acks = client
                .ingest(futures::stream::iter(messages))
                .await
                .unwrap()
                .into_inner();
            let mut got = 0;
            while let Some(m) = acks.message().await.unwrap() {
                if matches!(
                    m.kind,
                    Some(strata_proto::v1::ingest_response::Kind::Ack(_))
                ) {
                    got += 1;
                }
            }
            assert_eq!(got, n, "every batch acknowledged");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    side.strata()
        .await
        .flush(FlushRequest { dataset })
        .await
        .unwrap();
    (batches.len() as u64 * BATCH_ROWS) as f64 / elapsed.as_secs_f64()
}

async fn flight_query(c: &mut FlightSqlServiceClient<Channel>, statement: &str) -> usize {
    let info = c.execute(statement.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<_> = c.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let feed = WeatherFeed::default();
    let batches: Vec<Bytes> = (0..args.rows / BATCH_ROWS)
        .map(|i| ipc(&feed.batch(i * BATCH_ROWS, BATCH_ROWS as usize)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let plain = start(&dir.path().join("plain"), false).await;
        let secure = start(&dir.path().join("secure"), true).await;
        let sides = [&plain, &secure];
        println!(
            "secure-bench: {} rows in {} batches, {} producers, {} alternating runs; \
             plaintext vs TLS 1.3 + bearer token, one process",
            args.rows,
            batches.len(),
            args.producers,
            args.runs
        );
        let mut rates: [Vec<f64>; 2] = [vec![], vec![]];
        for run in 0..args.runs {
            for (i, side) in sides.iter().enumerate() {
                rates[i].push(ingest(side, run, &batches, args.producers).await);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (p, s) = (med(&mut rates[0]), med(&mut rates[1]));
        println!();
        println!(
            "{:<28} {:>14} {:>14} {:>8}",
            "measure", "plain", "tls+auth", "ratio"
        );
        println!(
            "{:<28} {:>14.0} {:>14.0} {:>8.2}",
            "ingest rows/s",
            p,
            s,
            p / s
        );
        let queries = [
            ("SELECT 1 (ms)", "SELECT 1", 200),
            (
                "group-by (ms)",
                "SELECT station, avg(temperature), max(pressure) FROM w0 GROUP BY station",
                10,
            ),
            ("SELECT * transfer (ms)", "SELECT * FROM w0", 3),
        ];
        for (label, statement, repeat) in queries {
            let mut times: [Vec<Duration>; 2] = [vec![], vec![]];
            let mut clients = [plain.flight().await, secure.flight().await];
            for _ in 0..args.runs {
                for (i, c) in clients.iter_mut().enumerate() {
                    let mut samples = Vec::new();
                    for _ in 0..repeat {
                        let t = Instant::now();
                        flight_query(c, statement).await;
                        samples.push(t.elapsed());
                    }
                    times[i].push(median(&mut samples));
                }
            }
            let (p, s) = (median(&mut times[0]), median(&mut times[1]));
            println!(
                "{:<28} {:>14.3} {:>14.3} {:>8.2}",
                label,
                ms(p),
                ms(s),
                ratio(s, p)
            );
        }
        println!("(ratio: tls+auth cost relative to plain; > 1 is slower)");
        for side in [plain, secure] {
            let name = side.name;
            side.server.shutdown().await.unwrap();
            let _ = name;
        }
    });
}
