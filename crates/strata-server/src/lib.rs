//! Strata's server: one port serving the `strata.v1` gRPC services, Arrow Flight SQL
//! (with `DoPut` into datasets and pipeline actions), gRPC health checking and server
//! reflection, on the embedded local store.
//!
//! ```text
//!  tonic (HTTP/2) ──▶ strata.v1.Strata ── CreateDataset/List/Describe/Drop, Flush
//!                 │                    └─ Ingest (bidi) ─┐
//!                 ├─▶ Flight DoPut [dataset(, producer)] ─┴▶ strata_ingest::Ingester
//!                 ├─▶ Flight SQL (flight_sql) ─▶ strata_query::Engine      ─▶ WAL ─▶
//!                 │     + DoAction flush/rollback/tag/… (flight_actions)   memtables ─▶
//!                 ├─▶ grpc.health.v1                                       Table
//!                 └─▶ grpc.reflection.v1                                   (LocalStore)
//! ```
//!
//! Shutdown (SIGTERM, Ctrl-C or [`Server::shutdown`]): the listener stops accepting,
//! ingest streams stop reading and end with `Unavailable` after acknowledging what was
//! logged, every memtable is flushed and committed, the WAL is synced and removed. A
//! scale-down therefore loses no acknowledged row; a crash loses none either (replay).

pub mod config;
pub mod error;
pub mod flight;
pub mod flight_actions;
pub mod flight_sql;
pub mod service;
pub mod sql;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use strata_ingest::Ingester;
use strata_proto::v1::strata_server::StrataServer;
use strata_storage::LocalStore;
use strata_table::Catalog;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::ServerConfig;
pub use error::{Error, Result};

/// How long shutdown waits for clients to close their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    ingester: Ingester,
    engine: strata_query::Engine,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Where queries execute; stopped with the server.
    _queries: QueryRuntime,
}

/// A runtime of its own for query execution: a long query computes on these threads,
/// never on the server's, which acknowledge ingestion (DataFusion operators cannot be
/// preempted, and one poll may compute for long).
#[derive(Debug)]
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    fn new(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("strata-query")
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the query runtime: {e}")))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle().clone()
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime; a
        // query still computing stops at its next yield point.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Server {
    /// Opens the store under `config.data_dir`, replays the WAL and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server> {
        let addr = config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Config(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store = Arc::new(LocalStore::open(config.store_dir())?);
        let catalog = Catalog::new(store.clone(), store);
        let ingester = Ingester::open(catalog, config.ingest_config()).await?;
        let queries = QueryRuntime::new(config.query_threads())?;
        let engine = sql::engine(&ingester, config.query_config(queries.handle()))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen.clone(),
            source,
        })?;
        let max_message = config.max_message_mb << 20;
        let strata = StrataServer::new(service::StrataService::new(
            ingester.clone(),
            engine.clone(),
            config.default_shards,
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let flight = FlightServiceServer::new(flight_sql::StrataFlight::new(
            ingester.clone(),
            engine.clone(),
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<StrataServer<service::StrataService>>()
            .await;
        health_reporter
            .set_serving::<FlightServiceServer<flight_sql::StrataFlight>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Config(format!("reflection: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health)
            .add_service(reflection)
            .add_service(strata)
            .add_service(flight);
        // Acks are small messages: without TCP_NODELAY, Nagle's algorithm holds them back
        // (measured: 5x fewer acked rows/s for a single producer).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let serving = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        info!(%addr, data_dir = %config.data_dir.display(), "strata serving");
        Ok(Server {
            addr,
            ingester,
            engine,
            stop: Some(stop),
            serving,
            _queries: queries,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ingester(&self) -> &Ingester {
        &self.ingester
    }

    /// The SQL engine the server answers queries with.
    pub fn engine(&self) -> &strata_query::Engine {
        &self.engine
    }

    /// Stops accepting, ends ingest streams, flushes and commits every memtable and
    /// closes the WAL.
    pub async fn shutdown(mut self) -> Result<()> {
        info!("strata shutting down");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Streams see the ingester closing, acknowledge what they logged and end.
        let flushed = self.ingester.shutdown().await;
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "server task failed"),
            Err(_) => {
                warn!("clients did not close their connections in time");
                self.serving.abort();
            }
        }
        flushed?;
        info!("strata stopped");
        Ok(())
    }
}

impl Server {
    /// Stops serving without flushing, like a crash (minus the lost page cache):
    /// acknowledged rows stay only in the WAL, and the next start replays them. For
    /// recovery tests.
    pub async fn abort(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.serving.abort();
        self.ingester.abandon().await?;
        Ok(())
    }
}

/// Runs a server until SIGTERM or Ctrl-C, then shuts it down gracefully.
pub async fn run(config: ServerConfig) -> Result<()> {
    let server = Server::start(config).await?;
    wait_for_signal().await;
    server.shutdown().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received"),
    }
}
