//! Serving an HTTP/1.1 client connection with the gateway's own codec: read a head, decide
//! (the shared phases of [`crate::decide`]), write the upstream head — the client's kept field
//! lines as they came and the gateway's own — and relay both bodies by their framing.
//!
//! Requests on a connection are answered in order, one at a time: pipelined requests wait in
//! the buffer until the one before is answered. A connection whose framing can no longer be
//! trusted (a refused head, a broken body, an upstream that broke its own) is closed, never
//! read on.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use router_rules::{Class, RequestView};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::chunked::{ChunkError, Chunked};
use super::client::{READ_CHUNK, STALE_WITHIN, UpstreamConn, Written, ends_upload};
use super::fields::{Kind, Span, list, lists};
use super::request::{self, Framing, HeadError, Limits, RequestHead};
use super::response::{self, ResponseHead};
use crate::attempts::{Attempts, UpstreamFault, connect_failed, may_resend};
use crate::decide::{Decided, Facts, decide};
use crate::headers::write_header_safe;
use crate::hop::HopMarker;
use crate::metrics::ClientEvent;
use crate::proxy::{Conn, Ctx, Reply, Shared, Target, finish};
use crate::server::CLOSE_LINGER;
use crate::store::{KeyHeaders, Snapshot, WriteInFlight};
use crate::workers::stopped;

/// Longest request line (Envoy's default): longer ones get `414`.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// How the connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close it.
    Close,
    /// Close it, then read and drop what the client still sends, for a while at most: part of
    /// its body is still coming, and a close with bytes unread sends a reset, on which the
    /// kernel drops whatever of the answer it has not sent yet.
    Linger,
    /// Reset it: an answer broke after its head went out. A reset, not an orderly close, is
    /// how a client whose answer ends with the connection (HTTP/1.0, or a body without a
    /// length) learns that the answer is incomplete.
    Reset,
}

/// A client connection the codec serves: plain TCP or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Make the connection's close a reset (RST) instead of an orderly FIN.
    fn reset_on_close(&self);

    /// Write the connection's last bytes, held back for the shutdown that follows, so that
    /// they and the FIN leave in one segment (a full segment, or on plain TCP an ACK that
    /// arrives first, sends them sooner: nothing is lost, a segment may be spent).
    fn write_last<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'a;

    /// Acknowledge what arrives at once for a while: the client is sending a body, and one
    /// that writes it after its head without `TCP_NODELAY` waits for the head's ACK (Nagle),
    /// which a connection started with delayed ACKs (`server::serve_proxy`) would hold back.
    fn ack_promptly(&self);
}

impl ClientIo for TcpStream {
    fn reset_on_close(&self) {
        // A zero linger time: the close discards what is unsent and sends RST.
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    async fn write_last(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // MSG_MORE holds the bytes as TCP_CORK would, without a system call to set it: the
        // shutdown then sets the FIN on the held segment and sends it.
        let stream: &TcpStream = self;
        let mut sent = 0;
        while sent < bytes.len() {
            sent += stream
                .async_io(tokio::io::Interest::WRITABLE, || {
                    socket2::SockRef::from(stream)
                        .send_with_flags(&bytes[sent..], libc::MSG_MORE | libc::MSG_NOSIGNAL)
                })
                .await?;
        }
        Ok(())
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    async fn write_last(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await
    }

    fn ack_promptly(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(self).set_tcp_quickack(true);
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        // No close_notify goes out either: a TLS client sees the truncation as such.
        self.get_ref().0.reset_on_close();
    }

    async fn write_last(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // TCP_CORK: the answer's last record, close_notify and the FIN then share a segment
        // (rustls writes the records, so MSG_MORE cannot be passed on).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(self.get_ref().0).set_tcp_cork(true);
        self.write_all(bytes).await?;
        self.flush().await
    }

    fn ack_promptly(&self) {
        self.get_ref().0.ack_promptly();
    }
}

/// Serve HTTP/1.1 requests on `io` until the client closes, a request asks to, `stop` turns
/// true between requests, or the connection cannot be trusted any more. `buf` holds bytes
/// already read from it.
pub async fn serve<S>(
    mut io: S,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    conn: Conn,
    mut stop: watch::Receiver<bool>,
) where
    S: ClientIo,
{
    let config = &shared.config;
    let limits = Limits {
        max_line: MAX_REQUEST_LINE,
        max_head: config.limits.max_header_bytes,
        max_headers: config.limits.max_header_count,
    };
    // Room for a usual request's field lines from the start, instead of growing into it on
    // every new connection.
    let mut head = RequestHead {
        fields: Vec::with_capacity(16),
        ..RequestHead::default()
    };
    let mut scratch = Vec::with_capacity(1024);
    // The connection's reference to the table in force, brought up to date before each
    // request (`TableStore::refresh`).
    let mut snapshot = None;
    let mut first = true;
    // One wait for the stop signal for the connection's whole life, polled only while it is
    // idle: made anew for every read, its registration would cost more than the read.
    let stop_signal = stopped(&mut stop);
    tokio::pin!(stop_signal);
    let mut stopping = false;
    loop {
        // Between requests a keep-alive connection may sit idle this long; a head must arrive
        // whole within it.
        let mut deadline = Instant::now() + config.timeouts.client_header();
        let parsed = loop {
            if !buf.is_empty() {
                match request::parse(&buf, &limits, &mut head) {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(error) => break Err(error),
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                read = shared.timer.timeout_at(deadline, io.read_buf(&mut buf)) => read,
                // Stopping: a request already on its way is still answered (with `Connection:
                // close`: the gateway is draining), so a client that sent it as the gateway
                // stopped gets its answer, not a reset; a connection that stays silent for a
                // moment is closed.
                () = &mut stop_signal, if idle && !stopping => {
                    stopping = true;
                    deadline = deadline.min(Instant::now() + CLOSE_LINGER);
                    continue;
                }
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) if idle => {
                    if first && !stopping {
                        shared.metrics.client_event(ClientEvent::NoFirstByte);
                    }
                    return;
                }
                Err(_) => {
                    let reply = closing(Reply::new(
                        StatusCode::REQUEST_TIMEOUT,
                        json!({"error": "request head too slow"}),
                    ));
                    let write = write_reply(&mut io, &mut scratch, reply, 1);
                    let _ = shared
                        .timer
                        .timeout_after(config.timeouts.read(), write)
                        .await;
                    return;
                }
            }
        };
        first = false;
        if let Err(error) = parsed {
            refuse_head(&shared, &mut io, &mut scratch, error).await;
            return;
        }
        shared.store.refresh(&mut snapshot);
        if body_to_come(&head, buf.len()) {
            io.ack_promptly();
        }
        let next = exchange(
            &shared,
            &conn,
            &mut io,
            &mut buf,
            &head,
            &mut scratch,
            snapshot.as_deref(),
        )
        .await;
        match next {
            Next::KeepAlive => {}
            Next::Close | Next::Linger => {
                // The FIN (after TLS's close_notify) goes out with the answer's held tail
                // before the close: a close with a pipelined request unread would send a reset
                // instead, and the kernel would drop what it still held. Within the read
                // timeout: a client that stops reading must not hold the connection.
                let _ = shared
                    .timer
                    .timeout_after(config.timeouts.read(), io.shutdown())
                    .await;
                if next == Next::Linger {
                    linger(&shared, &mut io, &mut buf).await;
                }
                return;
            }
            Next::Reset => {
                io.reset_on_close();
                return;
            }
        }
    }
}

/// How long a closing connection reads on what its client still sends (nginx's
/// `lingering_time` is 30 s): long enough for a body already on its way to arrive, short
/// enough that a client cannot hold the connection with it.
const LINGER: Duration = Duration::from_secs(5);

/// Read and drop what the client sends until it closes, or [`LINGER`] has passed.
async fn linger<S: AsyncRead + Unpin>(shared: &Shared, io: &mut S, buf: &mut BytesMut) {
    let until = Instant::now() + LINGER;
    loop {
        buf.clear();
        buf.reserve(READ_CHUNK);
        match shared.timer.timeout_at(until, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Whether some of the body `head` announces is still to arrive, `buffered` bytes (the head's
/// among them) being here. A chunked body's end cannot be told without reading it.
fn body_to_come(head: &RequestHead, buffered: usize) -> bool {
    match head.framing {
        Framing::None => false,
        Framing::Length(n) => ((buffered - head.len) as u64) < n,
        Framing::Chunked | Framing::UntilClose => true,
    }
}

/// Answer a head that cannot be served; the connection closes after it.
async fn refuse_head<S: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    scratch: &mut Vec<u8>,
    error: HeadError,
) {
    if error.is_malformed() {
        shared
            .metrics
            .malformed_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = match error {
        HeadError::Bad(why)
            if why.contains("Content-Length") || why.contains("Transfer-Encoding") =>
        {
            json!({"error": "ambiguous request framing", "detail": why})
        }
        HeadError::TooManyFields => {
            json!({"error": error.message(), "limit": shared.config.limits.max_header_count})
        }
        _ => json!({"error": error.message()}),
    };
    let refused = async {
        write_reply(io, scratch, closing(Reply::new(status, body)), 1).await?;
        io.shutdown().await
    };
    // Within the read timeout: a client that stops reading must not hold the connection.
    let _ = shared
        .timer
        .timeout_after(shared.config.timeouts.read(), refused)
        .await;
}

pub(super) fn closing(mut reply: Reply) -> Reply {
    reply.close = true;
    reply
}

/// The request head as the router sees it: the text of its method, target and host checked
/// once (the router asks for the path once per route it tries).
struct HeadView<'a> {
    buf: &'a [u8],
    head: &'a RequestHead,
    /// The whole head as text, when it is UTF-8.
    whole: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: Option<&'a str>,
}

impl<'a> HeadView<'a> {
    fn new(buf: &'a [u8], head: &'a RequestHead) -> Self {
        // One UTF-8 check of the whole head (nearly always ASCII), its parts sliced by
        // offset; a head with other bytes in a value is checked part by part.
        let whole = std::str::from_utf8(&buf[..head.len]).ok();
        let part = |span: Span| match whole {
            Some(whole) => whole.get(span.range()).unwrap_or_default(),
            None => text(buf, span),
        };
        Self {
            buf,
            head,
            whole,
            method: part(head.method),
            path: match part(head.path) {
                "" => "/",
                path => path,
            },
            query: head.query.map(part),
            host: head.host_or_authority().map(part),
        }
    }
}

/// Text of a span: heads hold visible ASCII where it matters (methods, targets); anything
/// else reads as empty.
fn text(buf: &[u8], span: Span) -> &str {
    std::str::from_utf8(span.get(buf)).unwrap_or_default()
}

impl RequestView for HeadView<'_> {
    fn method(&self) -> &str {
        self.method
    }

    fn host(&self) -> Option<&str> {
        self.host
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        let name = name.as_bytes();
        self.head
            .fields
            .iter()
            .filter(move |f| f.name.get(self.buf).eq_ignore_ascii_case(name))
            .filter_map(|f| match self.whole {
                Some(whole) => whole.get(f.value.range()),
                None => std::str::from_utf8(f.value.get(self.buf)).ok(),
            })
    }

    fn method_overrides(&self) -> impl Iterator<Item = &[u8]> {
        // The parse has told these fields apart already.
        self.head
            .fields
            .iter()
            .filter(|f| f.kind == Kind::MethodOverride)
            .map(|f| f.value.get(self.buf))
    }
}

/// A write's forwarding, unless the gateway ends the write first (a newer table moved or froze
/// its unit, and it outlasted its grace): then `None`, the forwarding dropped and the upstream
/// connection with it.
async fn until_ended<T>(
    shared: &Shared,
    forwarding: impl Future<Output = T>,
    ended: impl Future<Output = ()>,
) -> Option<T> {
    let ended = async {
        ended.await;
        // Counted here, while the write still holds its table back (`select!` drops the
        // forwarding before its branch's handler runs): whoever sees the newer table vouched
        // for sees the count.
        shared.metrics.writes_ended.fetch_add(1, Ordering::Relaxed);
    };
    tokio::select! {
        biased;
        answer = forwarding => Some(answer),
        () = ended => None,
    }
}

/// The answer to a write the gateway ended: while nothing of its final answer has gone out, a
/// `503` that asks the client to try again, and the connection closed after it (the request's
/// body may be partly unread); once it may have, the connection reset: an answer begun cannot
/// be taken back, and the client must not take what it got for whole.
async fn answer_ended_write<S: AsyncWrite + Unpin>(
    shared: &Shared,
    ctx: &Ctx,
    io: &mut S,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
) -> (StatusCode, Next, bool) {
    if ctx.answer_begun {
        return (StatusCode::SERVICE_UNAVAILABLE, Next::Reset, false);
    }
    let reply = crate::proxy::write_ended_reply();
    let status = reply.status;
    answer(shared, io, head, scratch, reply).await;
    (status, Next::Linger, false)
}

/// Serve the request whose head is at the start of `buf`, by `snapshot` (the table in force,
/// loaded once for the request); on return `buf` holds what follows it (the next pipelined
/// request).
async fn exchange<S>(
    shared: &Shared,
    conn: &Conn,
    io: &mut S,
    buf: &mut BytesMut,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    snapshot: Option<&Snapshot>,
) -> Next
where
    S: ClientIo,
{
    let raw = &buf[..head.len];
    let view = HeadView::new(raw, head);
    // Routed, signed and sent upstream as a server would resolve it (`/a/../b` is `/b`).
    let normalized = router_rules::path::normalize(view.path);
    let view = match &normalized {
        Ok(path) => HeadView { path, ..view },
        Err(_) => view,
    };
    let mut ctx = Ctx::new(
        shared,
        Method::from_bytes(head.method.get(raw)).unwrap_or(Method::GET),
        view.path,
    );
    ctx.resendable = may_resend(&ctx.method, view.method_overrides());
    let stress_name = shared.stress_header.as_str().as_bytes();
    let mut facts = Facts {
        content_length: match head.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        },
        ..Facts::default()
    };
    for field in &head.fields {
        match field.kind {
            Kind::HopMarker => facts.hop = Some(field.value.get(raw)),
            Kind::TraceParent => facts.traceparent = Some(field.value.get(raw)),
            // The first, as the HTTP/2 front end reads it.
            Kind::GrpcTimeout if facts.grpc_timeout.is_none() => {
                facts.grpc_timeout = Some(field.value.get(raw));
            }
            _ => {}
        }
        facts.stress |= field.name.get(raw).eq_ignore_ascii_case(stress_name);
    }
    let mut newer = None;
    let decided = match &normalized {
        Err(error) => {
            shared
                .metrics
                .malformed_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(Reply::new(
                StatusCode::BAD_REQUEST,
                json!({"error": error.as_str()}),
            ))
        }
        Ok(_) => decide(shared, &mut ctx, snapshot, &mut newer, &view, &facts),
    };
    if let Ok(std::borrow::Cow::Owned(path)) = normalized {
        ctx.normalized_path = Some(path);
    }
    // The head's bytes, split off the buffer (no copy): `buf` now starts with the body.
    let raw = buf.split_to(head.len);
    let (status, mut next, unsent) = match decided {
        Err(reply) => {
            let status = reply.status;
            let next = answer_unforwarded(shared, io, buf, head, scratch, reply).await;
            (status, next, false)
        }
        Ok(decided) => {
            let ended = decided.permits.2.as_ref().map(WriteInFlight::ended);
            let forwarding = forward(
                shared, conn, &mut ctx, io, &raw, buf, head, scratch, decided,
            );
            match ended {
                None => forwarding.await,
                Some(ended) => {
                    // Boxed, so that the connection's future does not hold a second place for
                    // the forwarding state (copied in and out on every request).
                    let answered = Box::pin(until_ended(shared, forwarding, ended)).await;
                    match answered {
                        Some(answered) => answered,
                        None => answer_ended_write(shared, &ctx, io, head, scratch).await,
                    }
                }
            }
        }
    };
    // By the table that decided it (`decide` may have taken the newer one).
    finish(shared, &ctx, newer.as_deref().or(snapshot), conn, status);
    // The last of a forwarded answer goes out after the log line and the metrics, so a client
    // that has its answer finds the request counted and logged.
    if unsent {
        if matches!(next, Next::Close | Next::Linger) {
            let write = io.write_last(scratch);
            let _ = shared
                .timer
                .timeout_after(shared.config.timeouts.read(), write)
                .await;
        } else if !to_client(shared, io, scratch).await && next == Next::KeepAlive {
            next = Next::Close;
        }
    }
    next
}

/// Write `bytes` to the client; `false` when it went away or did not take them within the
/// read timeout. A client that stops reading would otherwise hold the upstream connection (or
/// its HTTP/2 stream's share of the connection's window) and the memory of the answer for as
/// long as it liked.
pub(super) async fn to_client<S: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    bytes: &[u8],
) -> bool {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    matches!(
        shared
            .timer
            .timeout_after(shared.config.timeouts.read(), write)
            .await,
        Ok(Ok(()))
    )
}

/// Answer with a reply of the gateway's own, the request not forwarded: its body (at the
/// start of `buf`) is skipped when it is all here already, else the connection closes after
/// the reply.
pub(super) async fn answer_unforwarded<S: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    buf: &mut BytesMut,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    mut reply: Reply,
) -> Next {
    let after_head = buf.len();
    let body_here = match head.framing {
        Framing::None => Some(0),
        Framing::Length(n) if n <= after_head as u64 => Some(n as usize),
        _ => None,
    };
    reply.close |= body_here.is_none();
    buf.advance(body_here.unwrap_or(after_head));
    match answer(shared, io, head, scratch, reply).await {
        Next::Close if body_here.is_none() => Next::Linger,
        next => next,
    }
}

/// Answer with a reply of the gateway's own once the request's body is read or skipped: the
/// connection goes on unless the reply, the client or a drain says otherwise, or the client
/// does not take the reply within the read timeout.
pub(super) async fn answer<S: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    mut reply: Reply,
) -> Next {
    reply.close |= head.close || draining(shared);
    let close = reply.close;
    let write = write_reply(io, scratch, reply, head.minor);
    let written = shared
        .timer
        .timeout_after(shared.config.timeouts.read(), write)
        .await;
    match written {
        Ok(Ok(())) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

pub(super) fn draining(shared: &Shared) -> bool {
    shared.draining.load(std::sync::atomic::Ordering::Relaxed)
}

/// Write a reply of the gateway's own (a JSON body).
pub(super) async fn write_reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    reply: Reply,
    minor: u8,
) -> std::io::Result<()> {
    out.clear();
    let body = reply.body.to_string();
    status_line(
        out,
        minor,
        reply.status.as_u16(),
        reply.status.canonical_reason().unwrap_or(""),
    );
    out.extend_from_slice(b"content-type: application/json\r\ncache-control: no-store\r\n");
    date(out);
    if let Some(s) = reply.retry_after_s {
        out.extend_from_slice(format!("retry-after: {s}\r\n").as_bytes());
    }
    if reply.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    io.write_all(out).await?;
    io.flush().await
}

pub(super) fn status_line(out: &mut Vec<u8>, minor: u8, status: u16, reason: &str) {
    out.extend_from_slice(if minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: <now>\r\n`, formatted once a second per thread.
pub(super) fn date(out: &mut Vec<u8>) {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

pub(super) fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `prefix` (a name and `": "`), `value`, CRLF.
fn line(out: &mut Vec<u8>, prefix: &[u8], value: &[u8]) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field line as it came (name, colon, whitespace, value), from the head in `raw`.
fn copy_line(out: &mut Vec<u8>, raw: &[u8], field: &super::fields::Field) {
    out.extend_from_slice(&raw[field.name.start as usize..field.value.end as usize]);
    out.extend_from_slice(b"\r\n");
}

/// `name: n\r\n`.
fn number_line(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The upstream request head: the request line in origin form, the client's kept field lines
/// as they came, then the gateway's own.
#[allow(clippy::too_many_arguments)]
pub(super) fn upstream_head(
    out: &mut Vec<u8>,
    shared: &Shared,
    conn: &Conn,
    ctx: &Ctx,
    raw: &[u8],
    head: &RequestHead,
    decided: &Decided<'_>,
    endpoint: &str,
) {
    out.clear();
    // Room for the client's head and what the gateway adds, so the buffer grows at most once.
    out.reserve(raw.len() + 512);
    out.extend_from_slice(head.method.get(raw));
    out.push(b' ');
    if let Some(path) = &ctx.normalized_path {
        out.extend_from_slice(path.as_bytes());
        if let Some(query) = head.query {
            out.push(b'?');
            out.extend_from_slice(query.get(raw));
        }
    } else if head.authority.is_some() {
        match head.path.get(raw) {
            b"" => out.push(b'/'),
            path => out.extend_from_slice(path),
        }
        if let Some(query) = head.query {
            out.push(b'?');
            out.extend_from_slice(query.get(raw));
        }
    } else {
        out.extend_from_slice(head.target.get(raw));
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = head
        .host_or_authority()
        .map_or(endpoint.as_bytes(), |h| h.get(raw));
    line(out, b"host: ", host);
    let trusted = conn.trusted_proxy || decided.hop_in.is_some();
    let hop = matches!(decided.target, Target::Region(_));
    let stress_name = shared.stress_header.as_str().as_bytes();
    let mut forwarded_for: Option<Vec<u8>> = None;
    let mut forwarded_proto = false;
    for field in &head.fields {
        let name = field.name.get(raw);
        let value = field.value.get(raw);
        match field.kind {
            Kind::Host
            | Kind::ContentLength
            | Kind::TransferEncoding
            | Kind::Connection
            | Kind::Expect
            | Kind::HopByHop
            | Kind::Internal
            | Kind::HopMarker
            | Kind::TraceParent
            | Kind::Underscored => continue,
            Kind::Upgrade if !head.upgrade => continue,
            // Named in `Connection` as it must be, yet kept: the upgrade goes upstream.
            Kind::Upgrade => {
                copy_line(out, raw, field);
                continue;
            }
            Kind::ForwardedFor => {
                if trusted {
                    let joined = forwarded_for.get_or_insert_with(Vec::new);
                    if !joined.is_empty() {
                        joined.extend_from_slice(b", ");
                    }
                    joined.extend_from_slice(value);
                }
                continue;
            }
            Kind::ForwardedProto | Kind::ForwardedOther if !trusted => continue,
            Kind::ForwardedProto => forwarded_proto = true,
            // The time left of it goes instead (below).
            Kind::GrpcTimeout if ctx.client_deadline.is_some() => continue,
            _ => {}
        }
        if head.connection_names_fields && head.connection_lists(raw, name) {
            continue;
        }
        if hop && ctx.stress && name.eq_ignore_ascii_case(stress_name) {
            continue;
        }
        copy_line(out, raw, field);
    }
    match head.framing {
        Framing::Length(n) => {
            number_line(out, b"content-length", n);
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    if head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    let peer = conn.peer_ip.as_bytes();
    match forwarded_for {
        Some(mut previous) => {
            previous.extend_from_slice(b", ");
            previous.extend_from_slice(peer);
            line(out, b"x-forwarded-for: ", &previous);
        }
        None => line(out, b"x-forwarded-for: ", peer),
    }
    if !forwarded_proto {
        out.extend_from_slice(if conn.tls {
            b"x-forwarded-proto: https\r\n"
        } else {
            b"x-forwarded-proto: http\r\n"
        });
    }
    if let Some(trace) = &ctx.trace {
        line(out, b"traceparent: ", &trace.child_bytes());
    }
    if let Some(deadline) = ctx.client_deadline {
        line(
            out,
            b"grpc-timeout: ",
            crate::grpc::time_left(deadline).as_bytes(),
        );
    }
    let snapshot = decided.snapshot;
    let routed = &decided.routed;
    match decided.target {
        Target::Local(_) => {
            // Lines the snapshot holds ready: one copy each.
            if let Some(unit) = routed.unit {
                out.extend_from_slice(&snapshot.units[unit].line);
            }
            if let Some(slot) = routed.slot {
                number_line(out, b"x-unitgate-slot", u64::from(slot));
            }
            out.extend_from_slice(&snapshot.here().line);
            out.extend_from_slice(match decided.route.class {
                Class::C => b"x-unitgate-class: C\r\n",
                Class::P => b"x-unitgate-class: P\r\n",
            });
            out.extend_from_slice(&snapshot.version_line);
            if let Some(key) = &routed.key {
                out.extend_from_slice(b"x-unitgate-key: ");
                write_header_safe(out, key);
                out.extend_from_slice(b"\r\n");
            }
            if ctx.stress {
                out.extend_from_slice(b"x-unitgate-stress: 1\r\n");
            }
        }
        Target::Region(_) => {
            let marker = HopMarker {
                origin: decided.hop_in.as_ref().map_or_else(
                    || snapshot.table.regions()[snapshot.region].name.to_string(),
                    |m| m.origin.clone(),
                ),
                version: ctx.version,
                hops: ctx.hops_in + 1,
            };
            let method = text(raw, head.method);
            let value = match &ctx.normalized_path {
                Some(path) => shared.hop.sign(&marker, method, path),
                None => shared
                    .hop
                    .sign(&marker, method, HeadView::new(raw, head).path),
            };
            line(out, b"x-unitgate-hop: ", value.as_bytes());
            if ctx.stress {
                field_line(out, stress_name, b"1");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What went wrong in an exchange, and whose fault it was.
enum Failed {
    /// Nothing was sent: the request may go to another endpoint.
    Connect(String),
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream broke the exchange (closed, reset, or sent something malformed).
    Upstream(String),
    /// A pooled connection did so before any byte of the answer (`UpstreamFault::Stale`).
    Stale(String),
    /// The client broke it (its body), with the event to count and the reply.
    Client(ClientEvent, StatusCode, &'static str),
    /// The client went away: nobody to answer.
    ClientGone,
}

/// Forward the decided request and relay the answer. Returns the status the client got, how
/// the connection goes on, and whether the last bytes of the answer are still in `scratch`,
/// for the caller to write.
#[allow(clippy::too_many_arguments)]
async fn forward<S>(
    shared: &Shared,
    conn: &Conn,
    ctx: &mut Ctx,
    io: &mut S,
    raw: &[u8],
    buf: &mut BytesMut,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    decided: Decided<'_>,
) -> (StatusCode, Next, bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut attempts = Attempts::new(shared, ctx, &decided);
    if decided.over_h2() {
        // Boxed: its state (HTTP/2 request and response, the body held whole) would otherwise
        // sit in every connection's future, copied whole as each connection is spawned.
        return Box::pin(super::via_h2::forward(
            shared, conn, ctx, io, raw, buf, head, scratch, &decided, attempts,
        ))
        .await;
    }
    let mut body = BodyRelay::new(
        head.framing,
        shared.config.limits.max_body_bytes,
        decided.key_headers(head.framing == Framing::Chunked),
    );
    let mut last = None;
    // A pooled connection the upstream closed just as it was taken is tried again once, on a
    // new connection, without counting as an attempt.
    let mut stale_retry = true;
    while let Some((index, endpoint)) = attempts.next() {
        if shared.config.access_log.enabled {
            ctx.upstream = Some(endpoint.address.clone());
        }
        let deadline = attempts.deadline();
        // After a stale pooled connection, a new one: another pooled one may be as stale.
        let pooled = if stale_retry {
            shared.codec_upstream.checkout(endpoint.id, ctx.start)
        } else {
            None
        };
        let mut upstream = match pooled {
            Some(upstream) => upstream,
            None => {
                match shared
                    .timer
                    .timeout_at(
                        attempts.total_deadline(),
                        shared.codec_upstream.connect(&endpoint.address),
                    )
                    .await
                {
                    Ok(Ok(upstream)) => upstream,
                    Ok(Err(message)) => {
                        last = Some((index, Failed::Connect(message)));
                        connect_failed(shared, endpoint);
                        continue;
                    }
                    Err(_) => {
                        last = Some((index, Failed::Timeout));
                        break;
                    }
                }
            }
        };
        upstream_head(
            scratch,
            shared,
            conn,
            ctx,
            raw,
            head,
            &decided,
            &endpoint.address,
        );
        let result = send_and_relay(
            shared,
            ctx,
            io,
            buf,
            raw,
            head,
            scratch,
            &mut upstream,
            &mut body,
            deadline,
        )
        .await;
        match result {
            Ok(done) => {
                endpoint.health.success();
                if done.upstream_reusable {
                    shared
                        .codec_upstream
                        .give_back(endpoint.id, upstream, ctx.start);
                }
                // The last of the answer is left in `scratch` for `exchange` to write.
                return (done.status, done.next, true);
            }
            // A pooled connection the upstream closed as it was taken: nothing of the request
            // was answered. It may still have been processed (an upstream can close after
            // acting on a request), so only an idempotent one goes again (RFC 9112 section
            // 9.3.1: a proxy MUST NOT retry a non-idempotent request by itself).
            Err(Failed::Upstream(_))
                if upstream.reused && body.untouched() && stale_retry && ctx.resendable =>
            {
                stale_retry = false;
                attempts.take_back();
                continue;
            }
            // Nothing read back (no answer held, no interim one passed on), at once, is how a
            // pooled connection closed idle meets the request; an upstream that held the
            // request longer had it.
            Err(Failed::Upstream(message))
                if upstream.reused
                    && upstream.buf.is_empty()
                    && !upstream.interim_heard
                    && ctx.start.elapsed() < STALE_WITHIN =>
            {
                last = Some((index, Failed::Stale(message)));
                break;
            }
            Err(failed) => {
                last = Some((index, failed));
                break;
            }
        }
    }
    let reply = match last {
        Some((index, failed)) => {
            match failed {
                Failed::Connect(message) => {
                    attempts.failed(shared, index, UpstreamFault::Connect(message))
                }
                // Time ran out while the client's body was still arriving: the client's doing,
                // never counted against the upstream.
                Failed::Timeout if !body.done() => {
                    shared.metrics.client_event(ClientEvent::BodySlow);
                    closing(Reply::new(
                        StatusCode::REQUEST_TIMEOUT,
                        json!({"error": "request body too slow"}),
                    ))
                }
                Failed::Timeout => closing(attempts.failed(shared, index, UpstreamFault::Timeout)),
                Failed::Upstream(message) => {
                    closing(attempts.failed(shared, index, UpstreamFault::Broken(message)))
                }
                Failed::Stale(message) => {
                    closing(attempts.failed(shared, index, UpstreamFault::Stale(message)))
                }
                Failed::Client(event, status, error) => {
                    shared.metrics.client_event(event);
                    closing(Reply::new(status, json!({ "error": error })))
                }
                Failed::ClientGone => {
                    return (
                        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                        Next::Close,
                        false,
                    );
                }
            }
        }
        None => attempts.no_endpoint(),
    };
    ctx.answer_begun = true;
    let status = reply.status;
    if body.untouched() {
        return (
            status,
            answer_unforwarded(shared, io, buf, head, scratch, reply).await,
            false,
        );
    }
    // Part of the body may be unread: the connection cannot be read on.
    let mut reply = reply;
    reply.close |= !body.done();
    let next = match answer(shared, io, head, scratch, reply).await {
        Next::Close if !body.done() => Next::Linger,
        next => next,
    };
    (status, next, false)
}

/// A finished exchange.
struct Done {
    status: StatusCode,
    next: Next,
    upstream_reusable: bool,
}

/// The request body on its way from the client to the upstream.
struct BodyRelay {
    framing: Framing,
    /// Bytes of a fixed-length body still to come.
    left: u64,
    chunked: Chunked,
    /// Data bytes seen (for `max_body_bytes`).
    data: u64,
    max: u64,
    /// Bytes relayed so far (0: the body may still be sent again).
    relayed: u64,
}

impl BodyRelay {
    fn new(framing: Framing, max: u64, key_headers: Option<KeyHeaders>) -> Self {
        Self {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: Chunked::for_request(key_headers),
            data: 0,
            max,
            relayed: 0,
        }
    }

    fn done(&self) -> bool {
        match self.framing {
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunked.is_done(),
            Framing::None | Framing::UntilClose => true,
        }
    }

    fn untouched(&self) -> bool {
        self.relayed == 0
    }

    /// How much of `input` belongs to the body (checked as it goes).
    fn take(&mut self, input: &[u8]) -> Result<usize, Failed> {
        let taken = match self.framing {
            Framing::Length(_) => {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.left -= take as u64;
                take
            }
            Framing::Chunked => {
                let mut at = 0;
                while at < input.len() && !self.chunked.is_done() {
                    let step = self.chunked.step(&input[at..]).map_err(chunk_fault)?;
                    self.data += step.data.len() as u64;
                    at += step.consumed;
                }
                if self.data > self.max {
                    return Err(Failed::Client(
                        ClientEvent::BodyTooLarge,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ));
                }
                at
            }
            Framing::None | Framing::UntilClose => 0,
        };
        self.relayed += taken as u64;
        Ok(taken)
    }
}

fn chunk_fault(error: ChunkError) -> Failed {
    Failed::Client(
        ClientEvent::BodyMalformed,
        StatusCode::BAD_REQUEST,
        match error {
            ChunkError::InternalTrailer | ChunkError::RefusedTrailer => error.as_str(),
            _ => "malformed request body",
        },
    )
}

/// Send the head in `out` and the body, then relay the response.
#[allow(clippy::too_many_arguments)]
async fn send_and_relay<S>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    buf: &mut BytesMut,
    raw: &[u8],
    head: &RequestHead,
    out: &mut Vec<u8>,
    upstream: &mut UpstreamConn,
    body: &mut BodyRelay,
    deadline: Instant,
) -> Result<Done, Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let timer = &shared.timer;
    upstream.interim_heard = false;
    // The head and the body bytes already here, in one write.
    let here = body.take(buf)?;
    out.extend_from_slice(&buf[..here]);
    buf.advance(here);
    write_upstream(timer, deadline, upstream, out).await?;
    // An upstream may answer before the body is all there (a 413 for a body it will not take,
    // a 401) and then stop reading it, or close: that answer is the response, relayed as any
    // other, and the endpoint did nothing wrong. The rest of the body goes nowhere, so both
    // connections close after it.
    // Boxed: the upload's state (its reads, writes and interim answers) would otherwise sit
    // in every connection's future, copied whole as each connection is spawned, though most
    // requests have no body still to come.
    let answered_early = !body.done()
        && Box::pin(upload_rest(
            shared, ctx, io, buf, head, out, upstream, body, deadline,
        ))
        .await?;
    let mut done = relay_response(
        shared,
        ctx,
        io,
        buf,
        raw,
        head,
        out,
        upstream,
        deadline,
        answered_early,
    )
    .await?;
    if answered_early {
        done.upstream_reusable = false;
        if done.next != Next::Reset {
            done.next = Next::Linger;
        }
    }
    Ok(done)
}

/// Send the rest of the request body (what is not in `buf` yet), as it comes; `true` when the
/// upstream answered (or closed) before it was all sent.
#[allow(clippy::too_many_arguments)]
async fn upload_rest<S>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    buf: &mut BytesMut,
    head: &RequestHead,
    out: &mut Vec<u8>,
    upstream: &mut UpstreamConn,
    body: &mut BodyRelay,
    deadline: Instant,
) -> Result<bool, Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let timer = &shared.timer;
    let mut answered_early = false;
    // Interim answers that came while the body went.
    let mut interim = 0;
    if head.expect_continue {
        // Until it is all out, the client's connection is inside an answer.
        ctx.answer_begun = true;
        ctx.answer_begun = io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err();
    }
    while !body.done() {
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            if upstream.buf.capacity() - upstream.buf.len() < 1024 {
                upstream.buf.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                heard = upstream.io.read_buf(&mut upstream.buf) => {
                    // A close or a reset: the response read says what came before it.
                    let closed = !matches!(heard, Ok(n) if n > 0);
                    if closed
                        || final_answer_here(
                            shared, ctx, io, head, upstream, out, &mut interim, deadline,
                        )
                        .await?
                    {
                        answered_early = true;
                        break;
                    }
                    continue;
                }
                read = timer.timeout_at(deadline, io.read_buf(buf)) => read,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err(Failed::Client(
                        ClientEvent::BodyAborted,
                        StatusCode::BAD_REQUEST,
                        "request body cut off by the client",
                    ));
                }
                Ok(Ok(_)) => {}
                Err(_) => return Err(Failed::Timeout),
            }
        }
        let taken = body.take(buf)?;
        let mut rest = &buf[..taken];
        loop {
            match write_body(timer, deadline, upstream, rest).await? {
                Written::All => break,
                Written::Heard(sent) => {
                    rest = &rest[sent..];
                    if final_answer_here(
                        shared,
                        ctx,
                        io,
                        head,
                        upstream,
                        out,
                        &mut interim,
                        deadline,
                    )
                    .await?
                    {
                        answered_early = true;
                        break;
                    }
                }
                Written::Broken => {
                    answered_early = true;
                    break;
                }
            }
        }
        buf.advance(taken);
        if answered_early {
            break;
        }
    }
    Ok(answered_early)
}

/// Write `bytes` of a request body upstream by `deadline`, watching for an early answer
/// ([`UpstreamConn::write_watching`]).
async fn write_body(
    timer: &crate::coarse_timer::CoarseTimer,
    deadline: Instant,
    upstream: &mut UpstreamConn,
    bytes: &[u8],
) -> Result<Written, Failed> {
    timer
        .timeout_at(deadline, upstream.write_watching(bytes))
        .await
        .map_err(|_| Failed::Timeout)
}

async fn write_upstream(
    timer: &crate::coarse_timer::CoarseTimer,
    deadline: Instant,
    upstream: &mut UpstreamConn,
    bytes: &[u8],
) -> Result<(), Failed> {
    match timer
        .timeout_at(deadline, upstream.io.write_all(bytes))
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failed::Upstream(error.to_string())),
        Err(_) => Err(Failed::Timeout),
    }
}

/// Read from the upstream into its buffer, by `deadline`. `Ok(false)`: it closed.
async fn read_upstream(
    timer: &crate::coarse_timer::CoarseTimer,
    deadline: Instant,
    upstream: &mut UpstreamConn,
) -> Result<bool, Failed> {
    if upstream.buf.capacity() - upstream.buf.len() < 1024 {
        upstream.buf.reserve(READ_CHUNK);
    }
    match timer
        .timeout_at(deadline, upstream.io.read_buf(&mut upstream.buf))
        .await
    {
        Ok(Ok(0)) => Ok(false),
        Ok(Ok(_)) => Ok(true),
        Ok(Err(error)) => Err(Failed::Upstream(error.to_string())),
        Err(_) => Err(Failed::Timeout),
    }
}

/// Interim (1xx) answers an upstream may send before its final one to a request.
const MAX_INTERIM_RESPONSES: usize = 16;

/// Read the upstream's response head (passing interim ones on) and relay the response;
/// `closing`: the client's connection closes after it whatever the response says.
#[allow(clippy::too_many_arguments)]
async fn relay_response<S>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    buf: &mut BytesMut,
    raw: &[u8],
    head: &RequestHead,
    out: &mut Vec<u8>,
    upstream: &mut UpstreamConn,
    deadline: Instant,
    closing: bool,
) -> Result<Done, Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let timer = &shared.timer;
    let head_request = ctx.method == Method::HEAD;
    // The connection's own head, whose field list keeps its room from the last exchange.
    let mut response = std::mem::take(&mut upstream.response);
    let mut interim_count = 0;
    loop {
        // Right after the request went out nothing has come yet: read before parsing.
        let complete = !upstream.buf.is_empty()
            && match response::parse(
                &upstream.buf,
                shared.config.limits.max_header_bytes,
                super::response::RESPONSE_FIELD_ROOM,
                head_request,
                &mut response,
            ) {
                Ok(complete) => complete,
                Err(error) => return Err(Failed::Upstream(error.message().to_owned())),
            };
        if !complete {
            if !read_upstream(timer, deadline, upstream).await? {
                return Err(Failed::Upstream(
                    "connection closed before a response".to_owned(),
                ));
            }
            continue;
        }
        if response.is_interim() {
            interim_answer(
                shared,
                ctx,
                io,
                head,
                upstream,
                &response,
                out,
                &mut interim_count,
                deadline,
            )
            .await?;
            continue;
        }
        break;
    }
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if response.status == 101 {
        if !head.upgrade {
            return Err(Failed::Upstream(
                "101 Switching Protocols to a request that asked for none".to_owned(),
            ));
        }
        if !switch_offered(raw, head, &upstream.buf[..response.len], &response) {
            return Err(Failed::Upstream(
                "101 Switching Protocols to a protocol the request did not offer".to_owned(),
            ));
        }
        let idle = shared.config.timeouts.tunnel_idle();
        ctx.answer_begun = true;
        return tunnel(io, buf, out, upstream, &response, status, idle).await;
    }
    // Bytes after a response that ends with the connection are the body, not a next message;
    // bytes after one that does not are a protocol error, caught when the connection is
    // taken next.
    let chunked_to_client = response.framing == Framing::Chunked && head.minor == 1;
    let close = closing
        || head.close
        || response.framing == Framing::UntilClose
        || (response.framing == Framing::Chunked && head.minor == 0)
        || draining(shared);
    out.clear();
    let raw = &upstream.buf[..response.len];
    status_line(
        out,
        head.minor,
        response.status,
        std::str::from_utf8(response.reason.get(raw)).unwrap_or(""),
    );
    // RFC 9110 section 8.6: a 204 carries no Content-Length; a client that believed one would
    // read the next answer as this one's body.
    let dated = copy_answer_fields(out, raw, &response, response.status == 204);
    end_answer_head(out, dated, chunked_to_client, close, head.minor);
    let head_len = response.len;
    upstream.buf.advance(head_len);
    let (framing, upstream_closes) = (response.framing, response.close);
    upstream.response = response;

    // The body: what is here goes with the head, in one write; then as it comes.
    let mut relay = ResponseBody::new(framing, !chunked_to_client);
    let here = relay
        .take(&upstream.buf, out)
        .map_err(|e| Failed::Upstream(e.as_str().to_owned()))?;
    upstream.buf.advance(here);
    // `out` holds what the client gets next. The last of it is left for the caller to write
    // once the upstream connection is back in the pool: a client that sends its next request
    // on another connection the moment it has this answer finds the connection there.
    let body_timeout = shared.config.timeouts.read();
    while !relay.done() {
        // The final answer goes out from here on (or, when it is all here, once `forward`
        // returned).
        ctx.answer_begun = true;
        if !to_client(shared, io, out).await {
            return Err(Failed::ClientGone);
        }
        out.clear();
        match read_upstream(timer, Instant::now() + body_timeout, upstream).await {
            Ok(true) => {}
            Ok(false) => {
                // The end of a body that ends with the connection; any other is cut short.
                relay.upstream_closed = true;
                if relay.framing != Framing::UntilClose {
                    tracing::debug!("upstream closed inside a response body");
                }
                break;
            }
            // The head went out: the client learns of the break by the reset.
            Err(_) => break,
        }
        match relay.take(&upstream.buf, out) {
            Ok(taken) => upstream.buf.advance(taken),
            Err(error) => {
                tracing::debug!(error = error.as_str(), "upstream broke a chunked body");
                break;
            }
        }
    }
    // A body cut short ends the client's connection: a client that can tell the end of a
    // body from its framing learns from the close; one whose body ends with the connection
    // learns from a reset.
    let whole = relay.done();
    let delimited_by_close =
        framing == Framing::UntilClose || (framing == Framing::Chunked && head.minor == 0);
    Ok(Done {
        status,
        next: match (whole, close) {
            (false, _) if delimited_by_close => Next::Reset,
            (false, _) | (true, true) => Next::Close,
            (true, false) => Next::KeepAlive,
        },
        upstream_reusable: whole
            && !upstream_closes
            && framing != Framing::UntilClose
            && upstream.buf.is_empty(),
    })
}

/// Pass an interim answer (`response`, parsed at the front of the upstream's buffer) on to
/// the client, and drop it from the buffer; `count`: how many the request had before.
#[allow(clippy::too_many_arguments)]
async fn interim_answer<S: AsyncWrite + Unpin>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    head: &RequestHead,
    upstream: &mut UpstreamConn,
    response: &ResponseHead,
    out: &mut Vec<u8>,
    count: &mut usize,
    deadline: Instant,
) -> Result<(), Failed> {
    // An upstream that keeps sending interim answers is always readable, so the read timeout
    // never gets to fire: the deadline is checked here, and their number is bounded.
    upstream.interim_heard = true;
    *count += 1;
    if *count > MAX_INTERIM_RESPONSES {
        return Err(Failed::Upstream(format!(
            "more than {MAX_INTERIM_RESPONSES} interim responses"
        )));
    }
    if Instant::now() >= deadline {
        return Err(Failed::Timeout);
    }
    // 102 and 103 go on to an HTTP/1.1 client, with the fields of a final answer's head but
    // none about framing (an interim answer has no body); the final answer follows. A 100 is
    // not passed on: the gateway took `Expect` off the request and answers the client's
    // itself, so an upstream's 100 was asked for by nobody.
    if head.minor == 1 && response.status != 100 {
        let raw = &upstream.buf[..response.len];
        out.clear();
        status_line(
            out,
            1,
            response.status,
            std::str::from_utf8(response.reason.get(raw)).unwrap_or(""),
        );
        copy_answer_fields(out, raw, response, true);
        out.extend_from_slice(b"\r\n");
        // Until it is all out, the client's connection is inside an answer.
        ctx.answer_begun = true;
        if !to_client(shared, io, out).await {
            return Err(Failed::ClientGone);
        }
        ctx.answer_begun = false;
    }
    upstream.buf.advance(response.len);
    Ok(())
}

/// Whether what the upstream sent while the request body was still going holds the head of
/// its final answer (or bytes that cannot start one): interim answers before it go on as
/// [`interim_answer`] says, and the body goes on after them.
#[allow(clippy::too_many_arguments)]
async fn final_answer_here<S: AsyncWrite + Unpin>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    head: &RequestHead,
    upstream: &mut UpstreamConn,
    out: &mut Vec<u8>,
    count: &mut usize,
    deadline: Instant,
) -> Result<bool, Failed> {
    let mut response = std::mem::take(&mut upstream.response);
    let here = loop {
        let parsed = response::parse(
            &upstream.buf,
            shared.config.limits.max_header_bytes,
            super::response::RESPONSE_FIELD_ROOM,
            ctx.method == Method::HEAD,
            &mut response,
        );
        match parsed {
            Ok(true) if response.is_interim() => {
                if let Err(failed) = interim_answer(
                    shared, ctx, io, head, upstream, &response, out, count, deadline,
                )
                .await
                {
                    upstream.response = response;
                    return Err(failed);
                }
            }
            Ok(true) => break ends_upload(&response, upstream.buf.len()),
            Ok(false) => break false,
            // The response read says what is wrong with it.
            Err(_) => break true,
        }
    };
    upstream.response = response;
    Ok(here)
}

/// Whether the upstream's `101` (head `answer` in `answer_raw`) names in its `Upgrade` only
/// protocols the request (`head` in `raw`) offered in its own, and at least one (RFC 9110
/// section 7.8): a tunnel to a protocol nobody asked for would carry bytes the client does not
/// speak.
fn switch_offered(
    raw: &[u8],
    head: &RequestHead,
    answer_raw: &[u8],
    answer: &ResponseHead,
) -> bool {
    let offered = |protocol: &[u8]| {
        head.fields
            .iter()
            .filter(|f| f.kind == Kind::Upgrade)
            .any(|f| lists(f.value.get(raw), protocol))
    };
    let mut named = false;
    for field in answer.fields.iter().filter(|f| f.kind == Kind::Upgrade) {
        for protocol in list(field.value.get(answer_raw)) {
            if !offered(protocol) {
                return false;
            }
            named = true;
        }
    }
    named
}

/// Copy the fields of the upstream's answer head `raw` that go on to the client: not the
/// hop-by-hop ones nor those `Connection` names, nor `Content-Length` when `no_length` (an
/// answer without a body of any length). Whether there was a `Date`.
fn copy_answer_fields(
    out: &mut Vec<u8>,
    raw: &[u8],
    response: &ResponseHead,
    no_length: bool,
) -> bool {
    let mut dated = false;
    for field in &response.fields {
        match field.kind {
            k if k.is_hop_by_hop() => continue,
            Kind::ContentLength if no_length => continue,
            Kind::Date => dated = true,
            _ => {}
        }
        if response.connection_names_fields && response.connection_lists(raw, field.name.get(raw)) {
            continue;
        }
        copy_line(out, raw, field);
    }
    dated
}

/// The end of an answer's head for the client: a `Date` unless the upstream sent one, the
/// gateway's framing and connection fields, and the empty line.
pub(super) fn end_answer_head(
    out: &mut Vec<u8>,
    dated: bool,
    chunked: bool,
    close: bool,
    minor: u8,
) {
    if !dated {
        date(out);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The response body on its way from the upstream to the client.
struct ResponseBody {
    framing: Framing,
    left: u64,
    chunked: Chunked,
    /// Chunked data is handed on decoded (to an HTTP/1.0 client).
    decode: bool,
    /// The upstream closed the connection: the end of a body that ends with it.
    upstream_closed: bool,
}

impl ResponseBody {
    fn new(framing: Framing, decode: bool) -> Self {
        Self {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: Chunked::new(),
            decode: decode && framing == Framing::Chunked,
            upstream_closed: false,
        }
    }

    fn done(&self) -> bool {
        match self.framing {
            Framing::None => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunked.is_done(),
            // Ends with the connection, and only so (a read that failed or timed out is a
            // body cut short).
            Framing::UntilClose => self.upstream_closed,
        }
    }

    /// Go over the body bytes at the start of `input`, appending what the client gets to
    /// `out` (the bytes as they came, or chunked data decoded); returns the bytes gone over.
    fn take(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let taken = match self.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.left -= take as u64;
                out.extend_from_slice(&input[..take]);
                take
            }
            Framing::Chunked => {
                let mut at = 0;
                while at < input.len() && !self.chunked.is_done() {
                    let step = self.chunked.step(&input[at..])?;
                    if self.decode {
                        out.extend_from_slice(&input[at..][step.data]);
                    } else {
                        out.extend_from_slice(&input[at..at + step.consumed]);
                    }
                    at += step.consumed;
                }
                at
            }
            Framing::UntilClose => {
                out.extend_from_slice(input);
                input.len()
            }
        };
        Ok(taken)
    }
}

/// The upstream switched protocols: answer the client, then copy bytes both ways until either
/// side closes. The connection is no longer HTTP: it closes after.
async fn tunnel<S>(
    io: &mut S,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    upstream: &mut UpstreamConn,
    response: &ResponseHead,
    status: StatusCode,
    idle: Duration,
) -> Result<Done, Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    out.clear();
    let raw = &upstream.buf[..response.len];
    status_line(
        out,
        1,
        101,
        std::str::from_utf8(response.reason.get(raw)).unwrap_or(""),
    );
    for field in &response.fields {
        if field.kind == Kind::Upgrade || !field.kind.is_hop_by_hop() {
            field_line(out, field.name.get(raw), field.value.get(raw));
        }
    }
    out.extend_from_slice(b"connection: upgrade\r\n\r\n");
    out.extend_from_slice(&upstream.buf[response.len..]);
    upstream.buf.clear();
    if io.write_all(out).await.is_err() {
        return Err(Failed::ClientGone);
    }
    if !buf.is_empty() {
        let early = buf.split();
        if upstream.io.write_all(&early).await.is_err() {
            out.clear();
            return Ok(Done {
                status,
                next: Next::Close,
                upstream_reusable: false,
            });
        }
    }
    crate::tunnel::relay(io, &mut upstream.io, idle).await;
    out.clear();
    Ok(Done {
        status,
        next: Next::Close,
        upstream_reusable: false,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::ClientIo;

    /// A held answer is not lost: the close sends it, then the end of the connection.
    #[tokio::test]
    async fn what_is_held_until_close_arrives_with_the_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let answer = vec![b'a'; 100_000];
        server.write_last(&answer).await.expect("write");
        drop(server);
        let mut received = Vec::new();
        client
            .read_to_end(&mut received)
            .await
            .expect("read to the end");
        assert_eq!(received, answer);
    }
}
