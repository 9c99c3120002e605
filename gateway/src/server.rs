//! Listeners, TLS, connection serving and graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminState};
use crate::coarse_timer::CoarseTimer;
use crate::config::{RequestLimits, TlsListen};
use crate::framing::{FramingWatch, Verdicts, next_verdict};
use crate::metrics::ConnectionCount;
use crate::proxy::{self, Conn, Shared};
use crate::workers::Workers;

/// How long a stopping gateway keeps serving open connections before closing the idle ones.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Counts open connections, so a drain can wait for the last one.
#[derive(Default)]
pub struct ConnTracker {
    open: AtomicUsize,
    closed: Notify,
}

impl ConnTracker {
    fn opened(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Wait until no connection is open, or `limit` passes. Returns the connections left.
    pub async fn drained(&self, limit: Duration) -> usize {
        let wait = async {
            loop {
                let notified = self.closed.notified();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.open()
    }
}

struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// A TLS server config for `listen`: HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_config(listen: &TlsListen) -> Result<Arc<rustls::ServerConfig>, String> {
    control_api::tls::server_config(&listen.cert, &listen.key)
}

/// The HTTP server settings of a worker whose timeouts `timer` keeps.
pub fn http_builder(
    limits: &RequestLimits,
    header_timeout: Duration,
    timer: CoarseTimer,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(timer)
        .header_read_timeout(header_timeout)
        .max_headers(limits.max_header_count)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accept proxy connections on `listener`, registered with the runtime of worker `by` of
/// `workers`, and serve them there (or on the worker `Workers::pick` names), until `stop`
/// turns true; then every open connection is asked to finish its in-flight requests and close.
pub async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    workers: Arc<Workers>,
    by: usize,
    tracker: Arc<ConnTracker>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let target = workers.pick(by);
        let worker = workers.get(target);
        let accepted = Accepted {
            peer,
            tls: tls.clone(),
            builder: worker.http.clone(),
            guards: (tracker.opened(), worker.serving()),
            stop: stop.clone(),
        };
        let shared = worker.shared.clone();
        // A connection's future holds hyper's whole connection state; boxed, spawning it moves
        // a pointer instead of copying kilobytes several times (-4k instructions a connection).
        if target == by {
            tokio::spawn(Box::pin(accepted.serve(stream, shared)));
            continue;
        }
        // The stream moves to the other worker's own I/O driver.
        match stream.into_std() {
            Ok(stream) => {
                worker.handle.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => Box::pin(accepted.serve(stream, shared)).await,
                        Err(error) => {
                            tracing::warn!(%error, %peer, "cannot hand the connection to a worker")
                        }
                    }
                });
            }
            Err(error) => tracing::warn!(%error, %peer, "cannot hand the connection to a worker"),
        }
    }
}

/// An accepted connection.
struct Accepted {
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Counted as open (for the drain) and in its worker's load while it lives.
    guards: (ConnGuard, ConnectionCount),
    stop: watch::Receiver<bool>,
}

impl Accepted {
    async fn serve(self, stream: tokio::net::TcpStream, shared: Arc<Shared>) {
        let Self {
            peer,
            tls,
            builder,
            guards: _guards,
            stop,
        } = self;
        match tls {
            None => {
                let (stream, verdicts) = FramingWatch::new(stream);
                let conn = Conn::new(peer, false);
                serve_connection(&builder, TokioIo::new(stream), shared, conn, verdicts, stop).await
            }
            Some(acceptor) => {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let (stream, verdicts) = FramingWatch::new(stream);
                        let conn = Conn::new(peer, true);
                        let io = TokioIo::new(stream);
                        serve_connection(&builder, io, shared, conn, verdicts, stop).await
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    shared: Arc<Shared>,
    conn: Conn,
    verdicts: Verdicts,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service = service_fn(move |request| {
        let smuggling = next_verdict(&verdicts);
        proxy::handle(shared.clone(), conn.clone(), request, smuggling)
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let until_stopped = UntilStopped::new(connection.as_mut(), stopped(&mut stop));
    if let Some(result) = until_stopped.await {
        if let Err(error) = result {
            tracing::debug!(%error, %peer, "connection ended with an error");
        }
        return;
    }
    // Busy keep-alive connections get `Connection: close` on their next response and end by
    // themselves; only those still open after a moment are closed where they stand.
    let linger = tokio::time::sleep(CLOSE_LINGER);
    tokio::pin!(linger);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = &mut linger => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

pin_project_lite::pin_project! {
    /// `work`'s output, or `None` once `stop` completes first. `stop` is polled only after it
    /// woke the task itself: a busy connection's task is woken several times per request, and
    /// polling the stop signal each time costs more than the rest of the connection's
    /// bookkeeping.
    struct UntilStopped<W, S> {
        #[pin]
        work: W,
        #[pin]
        stop: S,
        stop_waker: Arc<StopWaker>,
    }
}

impl<W, S> UntilStopped<W, S> {
    fn new(work: W, stop: S) -> Self {
        Self {
            work,
            stop,
            // Woken to begin with, so the first poll registers with `stop`.
            stop_waker: Arc::new(StopWaker {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<W: Future, S: Future<Output = ()>> Future for UntilStopped<W, S> {
    type Output = Option<W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.stop_waker.task.register(cx.waker());
        if this.stop_waker.woken.swap(false, Ordering::AcqRel) {
            let waker = Waker::from(this.stop_waker.clone());
            if this.stop.poll(&mut Context::from_waker(&waker)).is_ready() {
                return Poll::Ready(None);
            }
        }
        this.work.poll(cx).map(Some)
    }
}

/// Wakes the task of an [`UntilStopped`] and notes that `stop` asked for it.
struct StopWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for StopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Serve the admin endpoints on `listener` until `stop` turns true.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = stopped(&mut stop) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| admin::handle(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Bind `address` for a server, with `SO_REUSEADDR`.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
