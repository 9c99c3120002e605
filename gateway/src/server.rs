//! Listeners, TLS, connection serving and graceful drain.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminState};
use crate::config::{Http1Codec, TlsListen};
use crate::framing::{FramingWatch, Verdicts};
use crate::h1;
use crate::metrics::{ClientEvent, ConnectionCount};
use crate::proxy::{self, Conn, Shared};
use crate::workers::{Workers, stopped};
use bytes::BytesMut;
use control_api::throttle::LogThrottle;

/// How long a stopping gateway keeps serving open connections before closing the idle ones.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// File descriptors kept free of client connections when `max_connections` is derived from
/// the process's limit: for upstream connections, the admin listener, the table source.
const FD_RESERVE: usize = 256;

/// Counts open client connections, so a drain can wait for the last one, and holds them to
/// `max_connections` overall and `max_connections_per_ip` per client address.
pub struct ConnTracker {
    open: AtomicUsize,
    closed: Notify,
    max: usize,
    max_per_ip: usize,
    /// Open connections per client address. Keyed SipHash (the standard `RandomState`): a
    /// client with a block of IPv6 addresses picks the keys.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections`.
    Total,
    /// `max_connections_per_ip`.
    PerIp,
}

impl Full {
    /// The setting that refused it.
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Total => "max_connections",
            Full::PerIp => "max_connections_per_ip",
        }
    }
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self::new(0, 0)
    }
}

impl ConnTracker {
    /// A tracker admitting `max` connections (0: as the file-descriptor limit allows) and
    /// `max_per_ip` from one address (0: any number).
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        let max = if max == 0 {
            fd_limit().map_or(usize::MAX, |n| n.saturating_sub(FD_RESERVE).max(16))
        } else {
            max
        };
        Self {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            max,
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// The most connections admitted at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Count a new connection from `ip`, unless a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Full> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.release(None);
            return Err(Full::Total);
        }
        if self.max_per_ip == 0 {
            return Ok(ConnGuard(self.clone(), None));
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_default();
        if *count >= self.max_per_ip {
            drop(per_ip);
            self.release(None);
            return Err(Full::PerIp);
        }
        *count += 1;
        Ok(ConnGuard(self.clone(), Some(ip)))
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed.notify_waiters();
        }
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

/// An admitted connection, counted until dropped.
pub struct ConnGuard(Arc<ConnTracker>, Option<IpAddr>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// The process's file-descriptor limit (soft).
fn fd_limit() -> Option<usize> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .and_then(|n| usize::try_from(n).ok())
}

/// Accept errors (out of file descriptors, most often): logged once a second with a count.
static ACCEPT_ERRORS: LogThrottle = LogThrottle::new();
/// Connections refused by a limit: logged once a second with a count.
static REFUSED: LogThrottle = LogThrottle::new();

/// A TLS server config for `listen`: HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_config(listen: &TlsListen) -> Result<Arc<rustls::ServerConfig>, String> {
    listen.server_config()
}

/// Serving the proxy's listeners is this module's; the workers only run what it starts.
impl Workers {
    /// Serve the proxy listener `listener` on every worker: each registers a copy of it with
    /// its own runtime and accepts from it ([`serve_proxy`]).
    pub fn serve(
        self: &Arc<Self>,
        listener: &std::net::TcpListener,
        tls: Option<&TlsAcceptor>,
        tracker: &Arc<ConnTracker>,
        stop: &watch::Receiver<bool>,
    ) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
        listener.set_nonblocking(true)?;
        let mut tasks = Vec::with_capacity(self.all().len());
        for (index, worker) in self.all().iter().enumerate() {
            let listener = {
                // Registered with the worker's I/O driver, not the caller's.
                let _runtime = worker.handle.enter();
                tokio::net::TcpListener::from_std(listener.try_clone()?)?
            };
            tasks.push(worker.handle.spawn(serve_proxy(
                listener,
                tls.cloned(),
                self.clone(),
                index,
                tracker.clone(),
                stop.clone(),
            )));
        }
        Ok(tasks)
    }
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
    // Linux hands TCP_NODELAY on from a listener to the connections it accepts: set once
    // here, it saves a system call per connection.
    let nodelay_inherited = cfg!(target_os = "linux")
        && socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .is_ok();
    // Delayed ACKs from a connection's start, as HAProxy's HTTP mode does (`option
    // tcp-smart-accept`): the client speaks first, so the ACK of its request can ride on the
    // answer instead of leaving alone. Linux hands this on to accepted connections too; it
    // saves one segment, and its send and receive work, per new connection. A request whose
    // body is still to come turns quick ACKs back on (`ClientIo::ack_promptly`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(&listener).set_tcp_quickack(false);
    // Out of file descriptors, accept fails at once for as long as it lasts: back off (up to a
    // second) instead of spinning, and log once a second.
    let mut backoff = Duration::from_millis(5);
    // Each connection gets its own receiver; the loop's is waited on by one future for the
    // listener's whole life, not one made anew for every accept.
    let conn_stop = stop.clone();
    let stop_signal = stopped(&mut stop);
    tokio::pin!(stop_signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(5);
                    accepted
                }
                Err(error) => {
                    workers.get(by).shared.metrics.client_event(ClientEvent::AcceptError);
                    if let Some(count) = ACCEPT_ERRORS.occurred() {
                        tracing::warn!(%error, count, "accept failed (count: since the last such line)");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut stop_signal => return,
        };
        let guard = match tracker.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(full) => {
                // Counted before it is closed, so whoever sees the close sees the count.
                workers.get(by).shared.metrics.client_event(match full {
                    Full::Total => ClientEvent::RefusedTotal,
                    Full::PerIp => ClientEvent::RefusedPerIp,
                });
                // Closed at once: the client learns now, and the descriptor is free again.
                drop(stream);
                if let Some(count) = REFUSED.occurred() {
                    tracing::warn!(limit = full.as_str(), %peer, count, "connection refused: limit reached (count: since the last such line)");
                }
                continue;
            }
        };
        if !nodelay_inherited {
            let _ = stream.set_nodelay(true);
        }
        let target = workers.pick(by);
        let worker = workers.get(target);
        let accepted = Accepted {
            peer,
            tls: tls.clone(),
            builder: worker.http.clone(),
            guards: (guard, worker.serving()),
            stop: conn_stop.clone(),
        };
        let shared = worker.shared.clone();
        // A connection's future is kilobytes (4.9 KiB on the plain HTTP/1.1 path; TLS and
        // hyper's paths are boxed apart, `Accepted::serve`); boxed, spawning it moves a pointer
        // instead of copying it several times (-4k instructions a connection).
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
        let own_codec = shared.config.http1_codec == Http1Codec::Own;
        match tls {
            None if own_codec => serve_plain(stream, &builder, shared, peer, stop).await,
            None => {
                let (stream, verdicts) = FramingWatch::new(stream);
                let conn = Conn::new(peer, false, verdicts.clone(), &shared.config);
                let io = TokioIo::new(stream);
                Box::pin(serve_connection(&builder, io, shared, conn, verdicts, stop)).await
            }
            Some(acceptor) => {
                Box::pin(serve_tls(stream, acceptor, &builder, shared, peer, stop)).await
            }
        }
    }
}

/// Serve a TLS connection: HTTP/2 (ALPN `h2`) goes to hyper, anything else to the gateway's own
/// HTTP/1.1 codec (when configured). Boxed by its caller, as hyper's connections are: a
/// connection's task then holds only what the plain HTTP/1.1 path needs, not the largest of
/// all paths (the handshake's and hyper's state made it twice as large).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let own_codec = shared.config.http1_codec == Http1Codec::Own;
    let deadline = Instant::now() + shared.config.timeouts.tls_handshake();
    let handshake = shared.timer.timeout_at(deadline, acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(stream)) if own_codec && stream.get_ref().1.alpn_protocol() != Some(b"h2") => {
            let conn = Conn::new(peer, true, Verdicts::default(), &shared.config);
            h1::serve::serve(stream, BytesMut::new(), shared, conn, stop).await
        }
        Ok(Ok(stream)) => {
            let (stream, verdicts) = FramingWatch::new(stream);
            let conn = Conn::new(peer, true, verdicts.clone(), &shared.config);
            let io = TokioIo::new(stream);
            serve_connection(builder, io, shared, conn, verdicts, stop).await
        }
        Ok(Err(error)) => {
            shared.metrics.client_event(ClientEvent::TlsHandshakeFailed);
            tracing::debug!(%error, %peer, "TLS handshake failed");
        }
        Err(_) => {
            shared
                .metrics
                .client_event(ClientEvent::TlsHandshakeTimeout);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve a plain connection: HTTP/2 with prior knowledge (h2c) goes to hyper, anything else
/// to the gateway's own HTTP/1.1 codec. The first bytes tell which.
async fn serve_plain(
    mut stream: tokio::net::TcpStream,
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(h1::client::READ_CHUNK);
    let mut first_byte = Instant::now() + shared.config.timeouts.client_header();
    let mut stopping = false;
    let h2 = loop {
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            break false;
        }
        if seen == H2_PREFACE.len() {
            break true;
        }
        let read = tokio::select! {
            biased;
            read = shared.timer.timeout_at(first_byte, stream.read_buf(&mut buf)) => read,
            // Stopping: a request already on its way is still served (the answer closes the
            // connection); one that does not come within a moment is not waited for.
            () = stopped(&mut stop), if buf.is_empty() && !stopping => {
                stopping = true;
                first_byte = first_byte.min(Instant::now() + CLOSE_LINGER);
                continue;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                if buf.is_empty() && !stopping {
                    shared.metrics.client_event(ClientEvent::NoFirstByte);
                }
                return;
            }
        }
    };
    if h2 {
        let (stream, verdicts) = FramingWatch::new(Prefixed {
            prefix: buf,
            inner: stream,
        });
        let conn = Conn::new(peer, false, verdicts.clone(), &shared.config);
        let io = TokioIo::new(stream);
        Box::pin(serve_connection(builder, io, shared, conn, verdicts, stop)).await
    } else {
        let conn = Conn::new(peer, false, Verdicts::default(), &shared.config);
        h1::serve::serve(stream, buf, shared, conn, stop).await
    }
}

pin_project_lite::pin_project! {
    /// A stream whose first bytes were read already: they are read again first.
    struct Prefixed<S> {
        prefix: BytesMut,
        #[pin]
        inner: S,
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, out)
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
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
    let timer = shared.timer.clone();
    let first_byte = Instant::now() + shared.config.timeouts.client_header();
    let metrics = shared.metrics.clone();
    let watched = verdicts.clone();
    let service = service_fn(move |request| {
        let smuggling = verdicts.next_verdict();
        proxy::handle(shared.clone(), conn.clone(), request, smuggling)
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let until_stopped = UntilStopped::new(connection.as_mut(), stopped(&mut stop));
    tokio::pin!(until_stopped);
    // A connection that never sends a byte is closed after `client_header_ms`: hyper's head
    // timeout starts only with the first byte, and a silent connection would otherwise hold
    // its descriptor and memory for ever.
    let early = tokio::select! {
        biased;
        ended = until_stopped.as_mut() => Some(ended),
        () = timer.deadline(first_byte) => None,
    };
    let ended = match early {
        Some(ended) => ended,
        None if !watched.read_any() => {
            metrics.client_event(ClientEvent::NoFirstByte);
            return;
        }
        None => until_stopped.as_mut().await,
    };
    if let Some(result) = ended {
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

/// Bind `address` for a server, with `SO_REUSEADDR`.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    /// `serve_proxy` sets TCP_NODELAY on the listener only, relying on Linux to hand it on to
    /// every accepted connection (a request or response written in pieces must not wait for
    /// an ACK).
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .expect("set on the listener");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("read"));
    }

    /// `serve_proxy` turns quick ACKs off on the listener: accepted connections start with
    /// delayed ACKs, so a request's ACK goes with its answer.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_connections_inherit_delayed_acks_from_the_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let _before = std::net::TcpStream::connect(address).expect("connect");
        let (quick, _) = listener.accept().expect("accept");
        assert!(socket2::SockRef::from(&quick).tcp_quickack().expect("read"));
        socket2::SockRef::from(&listener)
            .set_tcp_quickack(false)
            .expect("set on the listener");
        let _after = std::net::TcpStream::connect(address).expect("connect");
        let (delayed, _) = listener.accept().expect("accept");
        assert!(
            !socket2::SockRef::from(&delayed)
                .tcp_quickack()
                .expect("read")
        );
    }
}
