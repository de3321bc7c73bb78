//! Connection hygiene: how many connections, for how long, and what dies with them.
//!
//! ```text
//!  accept ─▶ over max_connections? ─▶ closed at once (the file descriptors the WAL and
//!         │                           the store need are never taken by sockets)
//!         └▶ Conn (one per TCP connection, its ConnInfo in every request's extensions)
//!              reads fail with TimedOut, and hyper closes the connection, when
//!              · no request started within handshake_timeout of the accept, or
//!              · no request has been open for idle_timeout
//!              (a request is open from its headers until its response body ends, so
//!               a long query or an ingest stream idle between batches keeps it alive)
//!  Conn dropped ─▶ the hooks registered on its ConnInfo run (its prepared statements go)
//! ```
//!
//! HTTP/2 keepalive pings (answered by any live client) do not count as activity: a
//! client that connects and sends nothing is closed whatever its pings say.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// Limits on client connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A connection that starts no request within this of its accept is closed.
    pub handshake_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub idle_timeout: Duration,
}

type Hook = Box<dyn FnOnce() + Send>;

/// One client connection, as requests see it (in their extensions).
#[derive(Clone)]
pub struct ConnInfo {
    id: u64,
    remote: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("id", &self.id)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

struct ConnState {
    in_flight: AtomicUsize,
    seen_request: AtomicBool,
    /// When the last open request ended.
    idle_since: Mutex<Instant>,
    /// Wakes the connection's reader when its last request ends (to arm the timer).
    reader: AtomicWaker,
    /// Run when the connection closes; `None` once it has.
    on_close: Mutex<Option<Vec<Hook>>>,
}

impl ConnInfo {
    fn new(id: u64, remote: Option<SocketAddr>) -> Self {
        Self {
            id,
            remote,
            state: Arc::new(ConnState {
                in_flight: AtomicUsize::new(0),
                seen_request: AtomicBool::new(false),
                idle_since: Mutex::new(Instant::now()),
                reader: AtomicWaker::new(),
                on_close: Mutex::new(Some(Vec::new())),
            }),
        }
    }

    /// Unique for the server's life.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Runs `hook` when the connection closes (at once if it already has).
    pub fn on_close(&self, hook: impl FnOnce() + Send + 'static) {
        let mut hooks = self.state.on_close.lock().expect("connection hooks");
        match hooks.as_mut() {
            Some(list) => list.push(Box::new(hook)),
            None => {
                drop(hooks);
                hook();
            }
        }
    }

    /// Marks a request open until the guard is dropped.
    pub(crate) fn begin(&self) -> RequestGuard {
        self.state.in_flight.fetch_add(1, Ordering::SeqCst);
        self.state.seen_request.store(true, Ordering::SeqCst);
        RequestGuard(self.state.clone())
    }

    fn close(&self) {
        let hooks = self.state.on_close.lock().expect("connection hooks").take();
        for hook in hooks.into_iter().flatten() {
            hook();
        }
    }
}

/// An open request of a connection.
pub(crate) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().expect("idle clock") = Instant::now();
            self.0.reader.wake();
        }
    }
}

/// The connection a request came on, with or without TLS.
pub fn conn_info(extensions: &http::Extensions) -> Option<&ConnInfo> {
    extensions.get::<ConnInfo>().or_else(|| {
        extensions
            .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
            .map(|tls| tls.get_ref())
    })
}

/// A client's TCP connection with its limits.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    info: ConnInfo,
    accepted: Instant,
    limits: ConnLimits,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// When the connection expires if nothing changes; `None` while a request is open.
    fn deadline(&self) -> Option<Instant> {
        let state = &self.info.state;
        if state.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if !state.seen_request.load(Ordering::SeqCst) {
            return Some(self.accepted + self.limits.handshake_timeout);
        }
        Some(*state.idle_since.lock().expect("idle clock") + self.limits.idle_timeout)
    }

    /// True once the connection has expired; otherwise arranges to be woken when it
    /// may.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.info.state.reader.register(cx.waker());
        let Some(deadline) = self.deadline() else {
            return false;
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        debug!(id = self.info.id, remote = ?self.info.remote, "connection closed");
        self.info.close();
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending if self.expired(cx) => {
                let seen = self.info.state.seen_request.load(Ordering::SeqCst);
                debug!(id = self.info.id, remote = ?self.info.remote, seen, "closing an idle connection");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    if seen {
                        "connection idle for longer than idle_timeout"
                    } else {
                        "no request within handshake_timeout"
                    },
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections within `limits`, forever. Accept errors (out of file
/// descriptors, say) are logged and retried after a pause instead of ending the server.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let next_id = Arc::new(AtomicU64::new(1));
    futures::stream::unfold(
        (listener, slots, next_id),
        move |(listener, slots, next_id)| async move {
            loop {
                let (io, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accepting a connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(%remote, max = limits.max_connections, "too many connections: closing a new one");
                    drop(io);
                    continue;
                };
                // Acks are small messages: without TCP_NODELAY, Nagle's algorithm holds
                // them back (measured: 5x fewer acked rows/s for a single producer).
                let _ = io.set_nodelay(true);
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let accepted = Instant::now();
                let conn = Conn {
                    io,
                    info: ConnInfo::new(id, Some(remote)),
                    accepted,
                    limits,
                    timer: Box::pin(tokio::time::sleep_until(
                        accepted + limits.handshake_timeout,
                    )),
                    _permit: permit,
                };
                return Some((Ok(conn), (listener, slots, next_id)));
            }
        },
    )
}

/// A tower layer marking each request open on its connection until its response body
/// ends (see [`ConnInfo::begin`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackRequests;

impl<S> tower_layer::Layer<S> for TrackRequests {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner }
    }
}

/// The service [`TrackRequests`] makes.
#[derive(Clone, Debug)]
pub struct Tracked<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Tracked<S>
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
        let guard = conn_info(request.extensions()).map(ConnInfo::begin);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its request open until it is done or dropped.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
