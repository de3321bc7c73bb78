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

pub mod auth;
pub mod config;
pub mod conn;
pub mod error;
pub mod flight;
pub mod flight_actions;
pub mod flight_sql;
pub mod metrics;
pub mod prepared;
pub mod service;
pub mod sql;
pub mod subscribe;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use strata_ingest::Ingester;
use strata_proto::v1::strata_server::StrataServer;
use strata_storage::{DirLock, LocalStore};
use strata_table::Catalog;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use config::ServerConfig;
pub use error::{Error, Result};

/// Stack of each query thread.
const QUERY_THREAD_STACK: usize = 256 << 20;

/// How long shutdown waits for clients to close their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Datasets whose heads a starting server opens before their first queries (each is
/// its record, version log and manifest in memory; the rest open on first use).
const WARM_DATASETS: usize = 256;

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    ingester: Ingester,
    engine: strata_query::Engine,
    prepared: Arc<prepared::PreparedStatements>,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The metrics endpoint's address and task, when `metrics_listen` is set.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    /// Where queries execute; stopped with the server.
    _queries: QueryRuntime,
    /// The data directory's lock, held while the server runs.
    _lock: DirLock,
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
            // Statements are parsed and planned here: recursion over expressions up to
            // query.max_expression_depth deep needs more than tokio's 2 MiB (memory is
            // committed only as the stack grows).
            .thread_stack_size(QUERY_THREAD_STACK)
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

/// Freed heap memory glibc keeps for reuse instead of returning it to the system, and
/// the allocation size from which it maps memory of its own (see [`tune_allocator`]).
pub const MALLOC_TRIM_THRESHOLD: usize = 128 << 20;
pub const MALLOC_MMAP_THRESHOLD: usize = 32 << 20;

/// Makes glibc's allocator keep freed memory for the next query (call once, first thing
/// in `main`, before threads start).
///
/// A query decompresses pages and decodes columns into buffers of tens of KiB to a few
/// MiB and frees them when it ends. By default glibc hands the free top of a heap back
/// to the system (`madvise`) once it exceeds 128 KiB, and gives each buffer above a
/// threshold (128 KiB at first, raised as such buffers are freed) a `mmap` of its own,
/// unmapped when freed; so the next query faults in and zeroes the same pages again: a
/// point query read from Parquet took about 470 page faults and 6.5 ms of CPU, a third
/// of it in the kernel. With up to [`MALLOC_TRIM_THRESHOLD`] of free memory kept and
/// buffers below [`MALLOC_MMAP_THRESHOLD`] taken from the heap, it takes about 30 faults
/// and 4.8 ms.
/// What the process holds is still bounded: each heap keeps at most that much free,
/// on top of the cache's `cache_mb` and the queries' memory limit.
///
/// Nothing is changed when `GLIBC_TUNABLES` sets a malloc tunable (the operator's
/// choice wins) or on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var("GLIBC_TUNABLES")
            .map(|t| t.contains("glibc.malloc."))
            .unwrap_or(false);
        if !set_by_operator {
            set_malloc_thresholds();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code, reason = "mallopt has no safe wrapper in libc or std")]
fn set_malloc_thresholds() {
    // SAFETY: mallopt only sets glibc's allocator parameters; both values are within
    // the ranges glibc accepts (the mmap threshold at most 32 MiB on 64-bit).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD as libc::c_int);
    }
}

/// Makes ring rustls's process-wide crypto provider, unless one is set already. The
/// build links two (tonic's TLS uses ring, the Cassandra driver's rustls brings
/// aws-lc-rs), and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The catalog over the configured store: the embedded one under `data_dir`, or a
/// Cassandra keyspace (created if missing).
async fn open_store(config: &ServerConfig) -> Result<Catalog> {
    if config.local_store() {
        let store = Arc::new(LocalStore::open(config.store_dir())?);
        // The directory is locked (`DirLock`): nothing but this process writes it.
        return Ok(Catalog::new(store.clone(), store).exclusive());
    }
    let cassandra = strata_cassandra::CassandraConfig::from_url(&config.store)
        .map_err(|e| Error::Config(e.to_string()))?;
    let store = Arc::new(
        strata_cassandra::CassandraStore::connect(cassandra)
            .await
            .map_err(strata_storage::Error::from)?,
    );
    info!(store = %config.store, "segments and versions in Cassandra");
    Ok(Catalog::with_log(
        store.clone(),
        store.clone(),
        store,
        strata_table::TableOptions::default(),
    ))
}

/// This server's id, made once and kept in `data_dir/server-id`: the WAL's position
/// is committed under it, so servers sharing a store never skip or replay each other's
/// rows. It goes with the data directory (and its WAL), not with the host.
fn server_id(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("server-id");
    let io = |e: std::io::Error| Error::Config(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = data_dir.join("server-id.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, id.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(id)
}

impl Server {
    /// Opens the store, replays the WAL and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server> {
        let addr = config.validate()?;
        let auth = auth::Authenticator::from_settings(&config.auth)?;
        if auth.is_none() {
            if !addr.ip().is_loopback() && !config.auth.allow_unauthenticated_remote {
                return Err(Error::Config(format!(
                    "{addr} is not a loopback address and no tokens are configured: anyone \
                     who reaches it could drop datasets. Configure [auth] tokens \
                     (`strata token new`), or set auth.allow_unauthenticated_remote = true"
                )));
            }
            warn!(%addr, "no tokens configured: every client that reaches the port is an admin");
        }
        install_crypto_provider();
        let identity = config.tls.identity()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Config(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        // Before anything reads the WAL: a second server on this directory would replay
        // and trim the log the first one is appending to.
        let lock = DirLock::acquire(&config.data_dir)?;
        let catalog = open_store(&config).await?;
        let mut ingest = config.ingest_config();
        if !config.local_store() {
            // Servers sharing a store each replay their own WAL against their own mark,
            // and take a producer's batches only while they hold its claim.
            let id = server_id(&config.data_dir)?;
            ingest.wal_mark = format!("{}/{id}", strata_ingest::WAL_MARK);
            ingest.producer_owner = Some(id);
        }
        let ingester = Ingester::open(catalog, ingest).await?;
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
        let requests = Arc::new(metrics::RequestMetrics::default());
        let subscriptions = subscribe::Subscriptions::new(
            engine.clone(),
            config.max_subscriptions,
            Duration::from_millis(config.subscription_poll_ms),
        );
        let strata = StrataServer::new(service::StrataService::new(
            ingester.clone(),
            engine.clone(),
            config.default_shards,
            subscriptions.clone(),
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let flight_service = flight_sql::StrataFlight::new(
            ingester.clone(),
            engine.clone(),
            config.ingest.max_batch_mb << 20,
            config.max_prepared_per_session,
            auth.clone(),
            subscriptions.clone(),
        );
        let prepared = flight_service.prepared_statements();
        let flight = FlightServiceServer::new(flight_service)
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
        let mut builder = tonic::transport::Server::builder();
        let tls = identity.is_some();
        if let Some(identity) = identity {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| Error::Config(format!("tls: {e}")))?;
        }
        let router = builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(config.max_streams_per_connection))
            .layer(conn::TrackRequests)
            .layer(metrics::RequestMetricsLayer::new(requests.clone()))
            .layer(auth::AuthLayer::new(auth.clone()))
            .add_service(health)
            .add_service(reflection)
            .add_service(strata)
            .add_service(flight);
        let limits = config.conn_limits();
        let limits = conn::ConnLimits {
            max_connections: fd_budget(limits.max_connections),
            ..limits
        };
        let metrics = match &config.metrics_listen {
            Some(listen) => {
                let metrics_listener =
                    TcpListener::bind(listen)
                        .await
                        .map_err(|source| Error::Listen {
                            addr: listen.clone(),
                            source,
                        })?;
                let metrics_addr =
                    metrics_listener
                        .local_addr()
                        .map_err(|source| Error::Listen {
                            addr: listen.clone(),
                            source,
                        })?;
                let sources = metrics::Sources {
                    requests,
                    ingester: ingester.clone(),
                    engine: engine.clone(),
                    subscriptions: subscriptions.clone(),
                };
                info!(addr = %metrics_addr, "metrics at /metrics");
                Some((
                    metrics_addr,
                    tokio::spawn(metrics::serve(metrics_listener, sources)),
                ))
            }
            None => None,
        };
        let incoming = conn::incoming(listener, limits);
        // The datasets' heads in memory before their first queries (on the query
        // runtime, a bounded number; a failure is left for the queries to meet), and
        // the row the warm-up read encoded as a query's answer is (Arrow IPC for each
        // column type), so that the first query's answer is not the encoder's first.
        let warming = engine.clone();
        tokio::spawn(async move {
            match warming.warm(WARM_DATASETS).await {
                Ok(warmed) => {
                    flight_sql::encode_discarding(warmed.rows).await;
                    debug!(datasets = warmed.datasets, "dataset heads opened");
                }
                Err(e) => debug!(error = %e, "opening dataset heads at start"),
            }
        });
        let serving = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        info!(
            %addr,
            data_dir = %config.data_dir.display(),
            tls,
            auth = auth.is_some(),
            "strata serving"
        );
        Ok(Server {
            addr,
            ingester,
            engine,
            prepared,
            tls,
            stop: Some(stop),
            serving,
            metrics,
            _queries: queries,
            _lock: lock,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT` (`https://` with TLS), for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn ingester(&self) -> &Ingester {
        &self.ingester
    }

    /// The metrics endpoint's address, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// Tasks alive on the query runtime: the statements being planned or run and the
    /// tasks their plans spawned (0 once every query has stopped computing).
    pub fn query_tasks(&self) -> usize {
        self._queries.handle().metrics().num_alive_tasks()
    }

    /// Flight SQL prepared statements open on all connections.
    pub fn open_prepared_statements(&self) -> usize {
        self.prepared.len()
    }

    /// The SQL engine the server answers queries with.
    pub fn engine(&self) -> &strata_query::Engine {
        &self.engine
    }

    /// Stops accepting, ends ingest streams, flushes and commits every memtable and
    /// closes the WAL.
    pub async fn shutdown(mut self) -> Result<()> {
        info!("strata shutting down");
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
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
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.serving.abort();
        self.ingester.abandon().await?;
        Ok(())
    }
}

/// File descriptors kept for the WAL, the store and the query spill files, whatever the
/// number of connections.
const RESERVED_FDS: u64 = 256;

/// The connections the process can hold: at most `wanted`, and never so many that the
/// WAL or the store run out of file descriptors (the soft limit is raised to the hard
/// one first).
fn fd_budget(wanted: usize) -> usize {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the file descriptor limit");
            return wanted;
        }
    };
    let soft = if soft < hard {
        match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        }
    } else {
        soft
    };
    let budget = soft.saturating_sub(RESERVED_FDS).max(16);
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if budget < wanted {
        warn!(
            max_connections = wanted,
            fd_limit = soft,
            "the file descriptor limit allows only {budget} connections"
        );
    }
    wanted.min(budget)
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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod allocator_tests {
    use std::process::Command;

    /// Set in the child process this test starts: "1" to tune the allocator, "0" not to.
    const CHILD: &str = "STRATA_ALLOCATOR_TEST_CHILD";
    const BUFFER: usize = 8 << 20;

    /// A decoded column's buffer, freed when the query ends, stays with the process for
    /// the next query rather than going back to the system. Each case runs in a child
    /// process of this test binary, so the allocator starts from its defaults.
    #[test]
    fn freed_query_buffers_stay_with_the_process() {
        if let Ok(tune) = std::env::var(CHILD) {
            child(tune == "1");
            return;
        }
        let kept = |tune: bool| -> usize {
            let out = Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "allocator_tests::freed_query_buffers_stay_with_the_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, if tune { "1" } else { "0" })
                .env_remove("GLIBC_TUNABLES")
                .output()
                .expect("run the child");
            let output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "child failed: {output}");
            output
                .split("kept=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no kept= in the child's output: {output}"))
        };
        let tuned = kept(true);
        assert!(tuned >= BUFFER, "tuned: {tuned} bytes kept free");
        // glibc's default maps a buffer this large on its own and unmaps it when freed.
        let default = kept(false);
        assert!(default < BUFFER / 2, "default: {default} bytes kept free");
    }

    #[allow(unsafe_code, reason = "mallinfo2 has no safe wrapper in libc or std")]
    #[allow(clippy::print_stdout, reason = "the parent reads the child's output")]
    fn child(tune: bool) {
        if tune {
            super::tune_allocator();
        }
        let buffer = std::hint::black_box(vec![1u8; BUFFER]);
        drop(buffer);
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        println!("kept={}", info.fordblks);
    }
}
