//! The codec's upstream client for requests that arrive as hyper requests (HTTP/2 clients): the
//! request head is written from its header map, the body framed by its size (a known length, or
//! chunked), and the response read and checked by the codec — the same client, pool and rules
//! as HTTP/1.1 clients' requests — then handed to hyper as a response with a streamed body.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chunked::Chunked;
use super::client::{Pool, READ_CHUNK, STALE_WITHIN, UpstreamConn, Written, ends_upload};
use super::fields::is_refused_in_trailers;
use super::request::Framing;
use super::response::{self, RESPONSE_FIELD_ROOM, ResponseHead};
use crate::metrics::NameId;
use crate::upstream::{Body, BoxError};

/// Most bytes of a response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub struct BridgeError {
    /// The request, when nothing of it was sent: it may go to another endpoint as it is.
    unsent: Option<Request<Body>>,
    message: String,
    /// The connection failed with nothing read back (no byte of a response).
    nothing_read: bool,
    /// It was a pooled connection that failed so: the upstream closed it idle as it was taken
    /// ([`crate::attempts::UpstreamFault::Stale`]).
    stale: bool,
}

impl BridgeError {
    /// No connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        self.unsent.is_some()
    }

    /// The request back, when nothing of it was sent.
    pub fn into_unsent(self) -> Option<Request<Body>> {
        self.unsent
    }

    /// Whether a pooled connection closed as it was taken, before any of the answer.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Marked stale when it failed with nothing read on a `reused` connection, within
    /// [`STALE_WITHIN`] of `sent`.
    fn on(self, reused: bool, sent: std::time::Instant) -> Self {
        Self {
            stale: reused && self.nothing_read && sent.elapsed() < STALE_WITHIN,
            ..self
        }
    }
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failed(endpoint: &str, message: impl std::fmt::Display) -> BridgeError {
    BridgeError {
        unsent: None,
        message: format!("{endpoint}: {message}"),
        nothing_read: false,
        stale: false,
    }
}

/// [`failed`], with nothing read back.
fn unanswered(endpoint: &str, message: impl std::fmt::Display) -> BridgeError {
    BridgeError {
        nothing_read: true,
        ..failed(endpoint, message)
    }
}

/// Send `request` (origin-form URI, hop-by-hop headers removed, as the proxy makes it) to
/// `endpoint`; the response's body reads the rest from the connection, which goes back to
/// `pool` once the body has ended. `body_timeout` bounds each read of the response body.
pub async fn send(
    pool: &Arc<Pool>,
    id: NameId,
    endpoint: &str,
    request: Request<Body>,
    body_timeout: Duration,
) -> Result<Response<Body>, BridgeError> {
    let sent = std::time::Instant::now();
    let conn = match pool.checkout(id, sent) {
        Some(conn) => conn,
        None => match pool.connect(endpoint).await {
            Ok(conn) => conn,
            Err(message) => {
                return Err(BridgeError {
                    unsent: Some(request),
                    message,
                    nothing_read: true,
                    stale: false,
                });
            }
        },
    };
    let head_request = request.method() == http::Method::HEAD;
    let (parts, body) = request.into_parts();
    let chunked = match hyper::body::Body::size_hint(&body).exact() {
        Some(0) if hyper::body::Body::is_end_stream(&body) => false,
        Some(_) => false,
        None => true,
    };
    let mut out = Vec::with_capacity(1024);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let _ = write!(out, "{} {target} HTTP/1.1\r\n", parts.method);
    if !parts.headers.contains_key(http::header::HOST) {
        let _ = write!(out, "host: {endpoint}\r\n");
    }
    for (name, value) in &parts.headers {
        if *name == http::header::CONTENT_LENGTH || *name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match hyper::body::Body::size_hint(&body).exact() {
        _ if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(0) if hyper::body::Body::is_end_stream(&body) => {}
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    if !chunked && hyper::body::Body::is_end_stream(&body) {
        // The head is the whole request. On a pooled connection the upstream closed just as
        // it was taken, it fails with nothing read back; it may still have been acted on, so
        // only an idempotent request goes again, once, on a new connection (RFC 9112 section
        // 9.3.1; as the codec's own requests do).
        let overrides = router_rules::METHOD_OVERRIDE_FIELDS
            .iter()
            .flat_map(|name| parts.headers.get_all(*name))
            .map(|value| value.as_bytes());
        let stale_retry = conn.reused && crate::attempts::may_resend(&parts.method, overrides);
        let reused = conn.reused;
        let result = head_only(pool, id, endpoint, conn, &out, head_request, body_timeout).await;
        return match result {
            Err(error) if error.nothing_read && stale_retry => {
                let conn = pool
                    .connect(endpoint)
                    .await
                    .map_err(|message| failed(endpoint, message))?;
                head_only(pool, id, endpoint, conn, &out, head_request, body_timeout).await
            }
            result => result.map_err(|error| error.on(reused, sent)),
        };
    }
    let reused = conn.reused;
    send_body(
        pool,
        id,
        endpoint,
        conn,
        &out,
        body,
        chunked,
        head_request,
        body_timeout,
    )
    .await
    .map_err(|error| error.on(reused, sent))
}

/// Send `head` and then `body` on `conn`, framed as the head says, and read the response.
#[allow(clippy::too_many_arguments)]
async fn send_body(
    pool: &Arc<Pool>,
    id: NameId,
    endpoint: &str,
    mut conn: UpstreamConn,
    head: &[u8],
    mut body: Body,
    chunked: bool,
    head_request: bool,
    body_timeout: Duration,
) -> Result<Response<Body>, BridgeError> {
    conn.io
        .write_all(head)
        .await
        .map_err(|e| unanswered(endpoint, e))?;
    let mut out = Vec::with_capacity(1024);
    // The body, frame by frame, framed as the head said. An upstream may answer before it is
    // all there (`UpstreamConn::write_watching`): that answer is the response, the rest of
    // the body goes nowhere, and the connection is not used again.
    let mut ended = false;
    let answered_early = loop {
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_CHUNK);
        }
        let frame = tokio::select! {
            heard = conn.io.read_buf(&mut conn.buf) => {
                match heard {
                    Ok(n) if n > 0 && !final_answer_here(&mut conn, head_request) => continue,
                    // An answer, a close or a reset: the response read says which.
                    _ => break true,
                }
            }
            frame = body.frame() => frame,
        };
        let Some(frame) = frame else {
            break false;
        };
        let frame = frame.map_err(|e| failed(endpoint, format!("request body: {e}")))?;
        out.clear();
        match frame.into_data() {
            Ok(data) if chunked => {
                if data.is_empty() {
                    continue;
                }
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            Ok(data) => out.extend_from_slice(&data),
            Err(frame) => {
                let (Ok(trailers), true) = (frame.into_trailers(), chunked) else {
                    continue;
                };
                out.extend_from_slice(b"0\r\n");
                for (name, value) in &trailers {
                    // The gateway's own fields are stripped from trailers as from heads, and
                    // so are those only a header section may carry.
                    if is_refused_in_trailers(name.as_str().as_bytes()) {
                        continue;
                    }
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                ended = true;
            }
        }
        if send_watching(&mut conn, &out, head_request).await {
            break true;
        }
        if ended {
            break false;
        }
    };
    let answered_early = answered_early
        || (chunked && !ended && send_watching(&mut conn, b"0\r\n\r\n", head_request).await);
    read_response(
        pool,
        id,
        endpoint,
        conn,
        head_request,
        body_timeout,
        answered_early,
    )
    .await
}

/// Write `bytes` of a request body to `conn`; `true` when the upstream answered before taking
/// them all (or broke the connection): the response read says which.
async fn send_watching(conn: &mut UpstreamConn, mut bytes: &[u8], head_request: bool) -> bool {
    loop {
        match conn.write_watching(bytes).await {
            Written::All => return false,
            Written::Heard(sent) => {
                bytes = &bytes[sent..];
                if final_answer_here(conn, head_request) {
                    return true;
                }
            }
            Written::Broken => return true,
        }
    }
}

/// Whether what the upstream sent so far holds its final answer's head (or bytes that cannot
/// start one); interim answers before it are dropped, as [`read_response`] drops them.
fn final_answer_here(conn: &mut UpstreamConn, head_request: bool) -> bool {
    let mut head = ResponseHead::default();
    loop {
        match response::parse(
            &conn.buf,
            MAX_RESPONSE_HEAD,
            RESPONSE_FIELD_ROOM,
            head_request,
            &mut head,
        ) {
            Ok(true) if head.is_interim() => conn.buf.advance(head.len),
            Ok(true) => return ends_upload(&head, conn.buf.len()),
            Ok(false) => return false,
            Err(_) => return true,
        }
    }
}

/// Send `head`, a request without a body, on `conn` and read the response.
async fn head_only(
    pool: &Arc<Pool>,
    id: NameId,
    endpoint: &str,
    mut conn: UpstreamConn,
    head: &[u8],
    head_request: bool,
    body_timeout: Duration,
) -> Result<Response<Body>, BridgeError> {
    conn.io
        .write_all(head)
        .await
        .map_err(|e| unanswered(endpoint, e))?;
    read_response(pool, id, endpoint, conn, head_request, body_timeout, false).await
}

/// Read and check the response head; the body follows as the response's stream.
/// `answered_early`: before the request's body was all sent, so the connection is not used
/// again.
async fn read_response(
    pool: &Arc<Pool>,
    id: NameId,
    endpoint: &str,
    mut conn: UpstreamConn,
    head_request: bool,
    body_timeout: Duration,
    answered_early: bool,
) -> Result<Response<Body>, BridgeError> {
    let mut head = ResponseHead::default();
    let mut interim_read = false;
    loop {
        match response::parse(
            &conn.buf,
            MAX_RESPONSE_HEAD,
            RESPONSE_FIELD_ROOM,
            head_request,
            &mut head,
        ) {
            Ok(true) if head.is_interim() => {
                interim_read = true;
                conn.buf.advance(head.len);
            }
            Ok(true) => break,
            Ok(false) => {
                conn.buf.reserve(READ_CHUNK);
                let nothing_read = conn.buf.is_empty() && !interim_read;
                let fail = if nothing_read { unanswered } else { failed };
                match conn.io.read_buf(&mut conn.buf).await {
                    Ok(0) => return Err(fail(endpoint, "connection closed before a response")),
                    Ok(_) => {}
                    Err(e) => return Err(fail(endpoint, &e.to_string())),
                }
            }
            Err(error) => return Err(failed(endpoint, error.message())),
        }
    }
    if head.status == 101 {
        return Err(failed(
            endpoint,
            "101 Switching Protocols on an HTTP/2 request",
        ));
    }
    let raw = &conn.buf[..head.len];
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(head.status)
        .map_err(|_| failed(endpoint, "invalid response status"))?;
    let headers = response.headers_mut();
    for field in &head.fields {
        let name = field.name.get(raw);
        if field.kind.is_hop_by_hop()
            || (head.connection_names_fields && head.connection_lists(raw, name))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(field.value.get(raw)),
        ) {
            headers.append(name, value);
        }
    }
    conn.buf.advance(head.len);
    let stream = Stream {
        conn,
        framing: head.framing,
        left: match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        },
        chunked: Chunked::new(),
        reusable: !head.close && !answered_early,
        pool: pool.clone(),
        id,
        body_timeout,
    };
    let body = futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match stream.next().await {
            Ok(Some(data)) => Some((Ok(Frame::data(data)), Some(stream))),
            Ok(None) => {
                stream.release();
                None
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    Ok(response.map(|()| StreamBody::new(Box::pin(body)).boxed()))
}

/// A response body being read from its connection.
struct Stream {
    conn: UpstreamConn,
    framing: Framing,
    left: u64,
    chunked: Chunked,
    reusable: bool,
    pool: Arc<Pool>,
    /// The endpoint's id, to give the connection back under.
    id: NameId,
    body_timeout: Duration,
}

impl Stream {
    /// The next piece of data; `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            let done = match self.framing {
                Framing::None => true,
                Framing::Length(_) => self.left == 0,
                Framing::Chunked => self.chunked.is_done(),
                Framing::UntilClose => false,
            };
            if done {
                return Ok(None);
            }
            if !self.conn.buf.is_empty() {
                match self.framing {
                    Framing::Length(_) => {
                        let take = usize::try_from(self.left)
                            .unwrap_or(usize::MAX)
                            .min(self.conn.buf.len());
                        self.left -= take as u64;
                        return Ok(Some(self.conn.buf.split_to(take).freeze()));
                    }
                    Framing::Chunked => {
                        let step = self.chunked.step(&self.conn.buf)?;
                        let mut piece: BytesMut = self.conn.buf.split_to(step.consumed);
                        if !step.data.is_empty() {
                            piece.advance(step.data.start);
                            piece.truncate(step.data.len());
                            return Ok(Some(piece.freeze()));
                        }
                        continue;
                    }
                    Framing::UntilClose => return Ok(Some(self.conn.buf.split().freeze())),
                    Framing::None => return Ok(None),
                }
            }
            self.conn.buf.reserve(READ_CHUNK);
            let read =
                tokio::time::timeout(self.body_timeout, self.conn.io.read_buf(&mut self.conn.buf))
                    .await
                    .map_err(|_| "upstream response body timed out")??;
            if read == 0 {
                if self.framing == Framing::UntilClose {
                    self.reusable = false;
                    return Ok(None);
                }
                return Err("upstream closed inside a response body".into());
            }
        }
    }

    /// Give the connection back, when it may carry another exchange.
    fn release(self) {
        if self.reusable && self.framing != Framing::UntilClose && self.conn.buf.is_empty() {
            self.pool
                .give_back(self.id, self.conn, std::time::Instant::now());
        }
    }
}
