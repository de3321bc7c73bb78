//! Prometheus metrics on a port of their own (`metrics_listen`, off by default): gRPC
//! requests by method and status code with their latency, ingestion (acks, ack latency,
//! WAL syncs, flushes, compactions, unflushed memory), versions and segments per
//! dataset, the decoded-column cache and subscriptions.
//!
//! The endpoint is a minimal HTTP/1.1 responder: `GET /metrics` answers the text format,
//! anything else 404/405; a request head larger than 8 KiB or slower than 5 s is dropped,
//! at most 16 scrapes are served at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::{Body, Frame};
use strata_ingest::Ingester;
use strata_ingest::metrics::Histogram;
use strata_query::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::subscribe::Subscriptions;

/// Methods tracked one by one at most; the rest are counted as "other".
const MAX_METHODS: usize = 128;
/// gRPC status codes 0..=16.
const CODES: usize = 17;

/// Counts and latencies of one gRPC method.
#[derive(Debug, Default)]
struct MethodStats {
    codes: [std::sync::atomic::AtomicU64; CODES],
    latency: Histogram,
}

/// Request metrics, recorded by [`RequestMetricsLayer`].
#[derive(Debug, Default)]
pub struct RequestMetrics {
    methods: Mutex<BTreeMap<String, Arc<MethodStats>>>,
}

impl RequestMetrics {
    fn method(&self, path: &str) -> Arc<MethodStats> {
        let mut methods = self.methods.lock().expect("metrics lock");
        if let Some(m) = methods.get(path) {
            return m.clone();
        }
        let known = path.starts_with("/strata.v1.Strata/")
            || path.starts_with("/arrow.flight.protocol.FlightService/")
            || path.starts_with("/grpc.health.v1.Health/");
        let key = if known && methods.len() < MAX_METHODS {
            path
        } else {
            "other"
        };
        methods.entry(key.to_string()).or_default().clone()
    }
}

/// Records a request when its response ends (or is dropped: a cancelled call).
struct Recorder {
    stats: Arc<MethodStats>,
    started: Instant,
    code: Option<usize>,
}

impl Recorder {
    fn finish(&mut self, code: usize) {
        self.stats.codes[code.min(CODES - 1)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.latency.record(self.started.elapsed());
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that records its request when it ends.
struct Observed {
    inner: tonic::body::Body,
    recorder: Option<Recorder>,
}

impl Body for Observed {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(r) = this.recorder.as_mut()
                {
                    r.code = grpc_status(trailers).or(r.code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut r) = this.recorder.take() {
                    r.finish(13);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut r) = this.recorder.take() {
                    let code = r.code.unwrap_or(0);
                    r.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (CANCELLED), unless the status
        // was already known.
        if let Some(mut r) = self.recorder.take() {
            let code = r.code.unwrap_or(1);
            r.finish(code);
        }
    }
}

/// A tower layer recording every request in [`RequestMetrics`].
#[derive(Clone, Debug)]
pub struct RequestMetricsLayer {
    metrics: Arc<RequestMetrics>,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RequestMetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RequestMetricsLayer`] makes.
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Measured<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let stats = self.metrics.method(request.uri().path());
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let code = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            let body = Observed {
                inner: body,
                recorder: Some(Recorder {
                    stats,
                    started,
                    code,
                }),
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

const CODE_NAMES: [&str; CODES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// What a scrape reads.
#[derive(Clone, Debug)]
pub struct Sources {
    pub requests: Arc<RequestMetrics>,
    pub ingester: Ingester,
    pub engine: Engine,
    pub subscriptions: Subscriptions,
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Sources {
    /// The metrics in Prometheus' text format.
    pub async fn render(&self) -> String {
        let mut out = String::new();
        metric(
            &mut out,
            "strata_grpc_requests_total",
            "counter",
            "gRPC requests by method and status code.",
        );
        let methods: Vec<(String, Arc<MethodStats>)> = self
            .requests
            .methods
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (method, stats) in &methods {
            for (code, n) in stats.codes.iter().enumerate() {
                let n = n.load(std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "strata_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                        label(method),
                        CODE_NAMES[code]
                    );
                }
            }
        }
        metric(
            &mut out,
            "strata_grpc_request_duration_seconds",
            "histogram",
            "From a request's arrival to the end of its response.",
        );
        for (method, stats) in &methods {
            stats.latency.snapshot().render(
                &mut out,
                "strata_grpc_request_duration_seconds",
                &format!("method=\"{}\"", label(method)),
            );
        }

        let s = self.ingester.stats();
        for (name, help, value) in [
            (
                "strata_ingest_acked_batches_total",
                "Batches acknowledged (durable), duplicates not counted.",
                s.acked_batches,
            ),
            (
                "strata_ingest_acked_rows_total",
                "Rows acknowledged.",
                s.acked_rows,
            ),
            (
                "strata_ingest_acked_bytes_total",
                "Arrow IPC bytes acknowledged.",
                s.acked_bytes,
            ),
            (
                "strata_flushes_total",
                "Commits of acknowledged rows.",
                s.flushes,
            ),
            (
                "strata_flushed_rows_total",
                "Rows committed by flushes.",
                s.rows_flushed,
            ),
            (
                "strata_compactions_total",
                "Background compactions.",
                s.compactions,
            ),
        ] {
            metric(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        for (name, help, value) in [
            (
                "strata_unflushed_bytes",
                "Memory held by acknowledged rows not yet committed.",
                s.memory_used_bytes,
            ),
            (
                "strata_unflushed_bytes_peak",
                "The most unflushed memory held so far.",
                s.memory_peak_bytes,
            ),
        ] {
            metric(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        for (name, help, h) in [
            (
                "strata_ingest_ack_latency_seconds",
                "From a batch's arrival to its acknowledgement.",
                &s.ack_latency,
            ),
            (
                "strata_wal_sync_seconds",
                "The write-ahead log's fdatasync calls.",
                &s.wal_syncs,
            ),
            (
                "strata_flush_duration_seconds",
                "Commits of flushed rows.",
                &s.flush_durations,
            ),
            (
                "strata_compaction_duration_seconds",
                "Compactions.",
                &s.compaction_durations,
            ),
        ] {
            metric(&mut out, name, "histogram", help);
            h.render(&mut out, name, "");
        }

        let c = self.engine.cache().stats();
        for (name, help, kind, value) in [
            (
                "strata_cache_capacity_bytes",
                "The decoded-column cache's capacity.",
                "gauge",
                c.capacity_bytes,
            ),
            (
                "strata_cache_used_bytes",
                "Bytes the cache holds.",
                "gauge",
                c.used_bytes,
            ),
            (
                "strata_cache_columns",
                "Columns the cache holds.",
                "gauge",
                c.entries,
            ),
            (
                "strata_cache_hits_total",
                "Column reads served from the cache.",
                "counter",
                c.hits,
            ),
            (
                "strata_cache_misses_total",
                "Column reads not in the cache.",
                "counter",
                c.misses,
            ),
            (
                "strata_cache_evictions_total",
                "Columns evicted.",
                "counter",
                c.evictions,
            ),
        ] {
            metric(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        metric(
            &mut out,
            "strata_subscriptions",
            "gauge",
            "Change-feed subscriptions running.",
        );
        let _ = writeln!(out, "strata_subscriptions {}", self.subscriptions.running());

        // Per dataset: the head version, live segments and rows, unflushed rows (the
        // ingester's handle of each dataset, as DescribeDataset uses).
        let mut rows = Vec::new();
        if let Ok(names) = self.ingester.catalog().list_tables().await {
            for name in names {
                let Ok(status) = self.ingester.status(&name).await else {
                    continue;
                };
                let Ok(head) = status.table.head().await else {
                    continue;
                };
                rows.push((
                    name,
                    head.version,
                    head.segment_count(),
                    head.live_rows(),
                    status.unflushed_rows,
                ));
            }
        }
        for (metric_name, help, pick) in [
            (
                "strata_dataset_head_version",
                "The newest committed version.",
                0,
            ),
            ("strata_dataset_segments", "Live segments at the head.", 1),
            ("strata_dataset_live_rows", "Rows visible at the head.", 2),
            (
                "strata_dataset_unflushed_rows",
                "Rows acknowledged, not yet committed.",
                3,
            ),
        ] {
            metric(&mut out, metric_name, "gauge", help);
            for (name, version, segments, live, unflushed) in &rows {
                let value = [*version, *segments as u64, *live, *unflushed][pick];
                let _ = writeln!(out, "{metric_name}{{dataset=\"{}\"}} {value}", label(name));
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let slots = Arc::new(Semaphore::new(16));
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: too many scrapes at once
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answered = tokio::time::timeout(Duration::from_secs(5), async {
                let mut head = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await?;
                    if n == 0 || head.len() + n > 8192 {
                        return Ok::<_, std::io::Error>(());
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
                let line = String::from_utf8_lossy(line);
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
                    ("GET", "/metrics") => ("200 OK", sources.render().await),
                    ("GET", _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
                    _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await?;
                socket.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = answered {
                debug!(%peer, error = %e, "metrics: scrape failed");
            }
        });
    }
}
