//! Serving the API on a TCP listener, with limits no client can get around.
//!
//! `axum::serve` accepts without bound and lets a connection sit forever on
//! half-sent headers, so a handful of slow clients can hold every file
//! descriptor of the process. This accept loop serves the same router
//! through hyper's connection builder and adds:
//!
//! - **a connection limit**: at most `max_connections` at once; further
//!   clients wait in the kernel's accept queue (nothing spins);
//! - **a header timeout**: a request's headers must arrive within
//!   `header_timeout`, counted from the connection's start or from the first
//!   byte of a later request on it; else the connection is closed;
//! - **an idle timeout**: a kept-alive connection with no request in flight
//!   is closed after `idle_timeout`;
//! - **accept errors** (`EMFILE` when out of file descriptors) are logged at
//!   most every few seconds and retried after a short sleep, never in a loop;
//! - **graceful shutdown**: [`Server::shutdown`] stops accepting and lets
//!   requests in flight finish; [`Server::abort`] closes what is left.
//!
//! A request in flight is never cut by these timeouts: a long-poll
//! (`?wait=`) or a server-sent event stream keeps its connection as long as
//! it lasts. The request body's own time limit belongs to the router
//! (`ApiOptions::body_timeout`), which answers 408.

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits put on client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// How long a request's headers may take to arrive (default 10 s).
    pub header_timeout: Duration,
    /// How long a connection may wait, idle, for its next request (default 60 s).
    pub idle_timeout: Duration,
    /// How many connections are served at once (default 1024).
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        use crate::config::serve::{HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};
        ConnLimits { header_timeout: HEADER_TIMEOUT, idle_timeout: IDLE_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// How long the accept loop rests after an accept error such as `EMFILE`.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Repeated accept errors and limit warnings are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A running server: its accept loop and connections.
pub struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Serve `router` on `listener` until `stop` is cancelled (see [`Server::shutdown`]).
    /// Must be called inside a Tokio runtime.
    pub fn start(listener: TcpListener, router: Router, limits: ConnLimits, stop: CancellationToken) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let limits = ConnLimits { max_connections: limits.max_connections.max(1), ..limits };
        let force = CancellationToken::new();
        let tracker = TaskTracker::new();
        let acceptor = Acceptor { listener, router, limits, stop: stop.clone(), force: force.clone(), tracker: tracker.clone() };
        tracker.spawn(acceptor.run());
        Ok(Server { addr, stop, force, tracker })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, close idle connections, and let requests in flight finish.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Resolves when the accept loop has stopped and every connection has closed.
    pub async fn closed(&self) {
        self.tracker.wait().await;
    }

    /// Stop accepting and close every connection now, requests in flight included.
    pub async fn abort(&self) {
        self.stop.cancel();
        self.force.cancel();
        self.closed().await;
    }
}

struct Acceptor {
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    stop: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl Acceptor {
    async fn run(self) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut full_logged: Option<Instant> = None;
        let mut error_logged: Option<Instant> = None;
        loop {
            if permits.available_permits() == 0 && due(&mut full_logged) {
                tracing::warn!(
                    "{} connections open, the limit: new clients wait to be accepted (max_connections)",
                    self.limits.max_connections
                );
            }
            // Take a slot first, then accept: over the limit, clients wait in the accept queue.
            let permit = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let conn = Connection {
                        router: self.router.clone(),
                        limits: self.limits,
                        stop: self.stop.clone(),
                        force: self.force.clone(),
                        _permit: permit,
                    };
                    self.tracker.spawn(conn.serve(tcp, peer));
                }
                // The client went away before we took it: nothing to wait for.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    if due(&mut error_logged) {
                        tracing::error!("accepting a connection failed: {e} (retrying; further errors are logged every {LOG_EVERY:?})");
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            }
        }
        // The listener is dropped here: new connections are refused from now on.
        self.tracker.close();
    }
}

/// Whether the last log was long enough ago; if so, records now.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

struct Connection {
    router: Router,
    limits: ConnLimits,
    stop: CancellationToken,
    force: CancellationToken,
    /// The connection's slot under `max_connections`, freed when it closes.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched { io: tcp, activity: Arc::clone(&activity) });
        let router = self.router;
        let requests = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = requests.request_started();
            let response = router.clone().oneshot(req.map(Body::new));
            async move {
                let resp = response.await?;
                // The request counts as in flight until its response body is
                // done or dropped: the closure owns the guard for that long.
                Ok::<_, Infallible>(resp.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    }))
                }))
            }
        });
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http2().enable_connect_protocol();
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    break;
                }
                expired = activity.expired(&self.limits, !closing) => match expired {
                    Expired::Header => {
                        tracing::debug!(%peer, "closing: request headers not received within {:?}", self.limits.header_timeout);
                        break;
                    }
                    Expired::Idle => {
                        tracing::debug!(%peer, "closing: idle for {:?}", self.limits.idle_timeout);
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                },
                _ = self.stop.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = self.force.cancelled() => break,
            }
        }
    }
}

/// Which limit a connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

const NONE: u64 = u64::MAX;

/// What a connection is doing, shared by its reader, its requests and its watchdog.
///
/// hyper's own `header_read_timeout` starts as soon as a response is sent,
/// so it would double as the keep-alive limit; split in two (wait idle for
/// a first byte, then for the rest of the headers), as Go's `net/http` and
/// nginx do, a kept-alive connection may stay longer than a slow request's
/// headers take.
struct Activity {
    born: Instant,
    /// Requests whose response is not done yet.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight (ms since `born`).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived (ms since `born`), or `NONE`.
    first_byte: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        // A new connection owes its first request's headers from the start.
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.first_byte.load(Ordering::Acquire) == NONE
            && self.first_byte.compare_exchange(NONE, self.now_ms(), Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        // In flight first: a read from now on cannot start a header timer again.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.first_byte.store(NONE, Ordering::Release);
        self.changed.notify_one();
        RequestGuard(Arc::clone(self))
    }

    /// The limit in force now and when it runs out, if any.
    fn deadline(&self, limits: &ConnLimits, idle: bool) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.first_byte.load(Ordering::Acquire) {
            NONE if idle => Some((self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout, Expired::Idle)),
            NONE => None,
            first => Some((self.at(first) + limits.header_timeout, Expired::Header)),
        }
    }

    /// Resolves when a limit runs out (`idle`: whether the idle limit counts).
    async fn expired(&self, limits: &ConnLimits, idle: bool) -> Expired {
        loop {
            match self.deadline(limits, idle) {
                Some((at, why)) if Instant::now() >= at => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// A request in flight; dropped when its response is done.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        // Record the time first: the watchdog reads it once `in_flight` is zero.
        a.idle_since.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// A socket that tells its [`Activity`] when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), max_connections: 1 }
    }

    #[tokio::test]
    async fn a_new_connection_owes_its_headers_from_the_start() {
        let a = Arc::new(Activity::new());
        let (at, why) = a.deadline(&limits(), true).unwrap();
        assert_eq!((at - a.born, why), (Duration::from_secs(10), Expired::Header));
        let quick = ConnLimits { header_timeout: Duration::from_millis(20), ..limits() };
        assert_eq!(a.expired(&quick, true).await, Expired::Header);
    }

    #[tokio::test]
    async fn in_flight_requests_have_no_deadline_then_the_idle_and_header_limits_follow() {
        let a = Arc::new(Activity::new());
        let guard = a.request_started();
        a.on_read(); // body bytes of the request in flight count for nothing
        assert_eq!(a.deadline(&limits(), true), None, "a request in flight is never cut");
        drop(guard);
        let (at, why) = a.deadline(&limits(), true).unwrap();
        let idle_since = a.at(a.idle_since.load(Ordering::Acquire));
        assert_eq!((why, at - idle_since), (Expired::Idle, Duration::from_secs(60)));
        assert_eq!(a.deadline(&limits(), false), None, "no idle limit once closing");
        a.on_read(); // the next request begins
        let (at, why) = a.deadline(&limits(), true).unwrap();
        let first = a.at(a.first_byte.load(Ordering::Acquire));
        assert_eq!((why, at - first), (Expired::Header, Duration::from_secs(10)));
        a.on_read(); // more bytes do not move the deadline
        assert_eq!(a.deadline(&limits(), true).unwrap().0, at);
        // Idle with a short limit: the watchdog fires.
        let b = Arc::new(Activity::new());
        drop(b.request_started());
        let quick = ConnLimits { idle_timeout: Duration::from_millis(20), ..limits() };
        assert_eq!(b.expired(&quick, true).await, Expired::Idle);
    }
}
