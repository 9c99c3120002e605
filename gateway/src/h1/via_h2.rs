//! HTTP/1.1 clients' requests whose serving pool speaks HTTP/2 (`protocol: h2`, gRPC services),
//! or whose hop goes to the gateways of a region whose pool does (`Decided::over_h2`):
//! parsed and decided by the codec like any other, sent through the HTTP/2 client the hyper path
//! uses, and answered to the client as HTTP/1.1.
//!
//! The upstream request's fields are the ones the codec would send over HTTP/1.1: the head
//! [`super::serve::upstream_head`] writes is parsed back into a header map, so both paths keep
//! and add the same fields by the same code.
//!
//! The request body is read whole, up to `limits.max_body_bytes`, before the request is sent.
//! hyper's HTTP/2 connection task polls a request body on its own, so streaming it would need
//! this task to read the client while it also waits for, and writes, the answer on the same
//! connection; a body held whole is also one a request can take on to the next endpoint as it
//! is, an idempotent one after a connect failure, any one after the upstream left it
//! unprocessed (`Attempts::after`). `h2` pools serve gRPC, whose requests are messages rather
//! than uploads. The response is streamed.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::Chunked;
use super::client::READ_CHUNK;
use super::fields::Kind;
use super::request::{Framing, RequestHead};
use super::serve::{
    Next, answer, answer_unforwarded, closing, draining, end_answer_head, field_line, status_line,
    to_client, upstream_head,
};
use crate::attempts::{Attempts, UpstreamFault};
use crate::decide::Decided;
use crate::headers::strip_hop_by_hop;
use crate::limits::BodyHold;
use crate::metrics::ClientEvent;
use crate::proxy::{Conn, Ctx, Reply, Shared};
use crate::store::KeyHeaders;
use crate::upstream::Body;
use crate::upstream_h2::{self, Http1Client, UpstreamBody};

/// The client broke its body: the event to count and the reply (the connection closes).
struct BodyFault(ClientEvent, StatusCode, &'static str);

const SLOW: BodyFault = BodyFault(
    ClientEvent::BodySlow,
    StatusCode::REQUEST_TIMEOUT,
    "request body too slow",
);
const ABORTED: BodyFault = BodyFault(
    ClientEvent::BodyAborted,
    StatusCode::BAD_REQUEST,
    "request body cut off by the client",
);
const MALFORMED: BodyFault = BodyFault(
    ClientEvent::BodyMalformed,
    StatusCode::BAD_REQUEST,
    "malformed request body",
);
const TOO_LARGE: BodyFault = BodyFault(
    ClientEvent::BodyTooLarge,
    StatusCode::PAYLOAD_TOO_LARGE,
    "request body too large",
);
const NO_ROOM: BodyFault = BodyFault(
    ClientEvent::ShedBufferedBody,
    StatusCode::SERVICE_UNAVAILABLE,
    "too many request bodies held at once (limits.max_buffered_body_bytes); try again",
);

/// Forward the decided request over HTTP/2 to an endpoint of `pool` (chosen, retried and
/// health-counted as the HTTP/1.1 path does) and write the answer as HTTP/1.1. Returns what
/// `serve::forward` returns: the status, how the connection goes on, and whether the last
/// bytes of the answer are still in `scratch` for the caller to write.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<S>(
    shared: &Shared,
    conn: &Conn,
    ctx: &mut Ctx,
    io: &mut S,
    raw: &[u8],
    buf: &mut BytesMut,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    decided: &Decided<'_>,
    mut attempts: Attempts<'_>,
) -> (StatusCode, Next, bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The first endpoint is chosen before the body is asked for: a request no endpoint can
    // take is answered without making the client send its body.
    let Some(mut chosen) = attempts.next() else {
        let reply = attempts.no_endpoint();
        let status = reply.status;
        ctx.answer_begun = true;
        let next = answer_unforwarded(shared, io, buf, head, scratch, reply).await;
        return (status, next, false);
    };
    // The body has the time of a read from the request's start, as on the HTTP/1.1 path.
    let body_deadline = attempts.deadline_from(ctx.start);
    // Held until the exchange ends: the body may go to another endpoint after a connect
    // failure, or after an upstream left the request unprocessed.
    let mut hold = shared.body_budget.hold();
    let key_headers = decided.key_headers(head.framing == Framing::Chunked);
    let body = match read_body(
        shared,
        io,
        buf,
        head,
        key_headers,
        body_deadline,
        &mut hold,
        &mut ctx.answer_begun,
    )
    .await
    {
        Ok(body) => body,
        Err(BodyFault(event, status, error)) => {
            shared.metrics.client_event(event);
            let mut reply = closing(Reply::new(status, json!({ "error": error })));
            if status == StatusCode::SERVICE_UNAVAILABLE {
                reply.retry_after_s = Some(1);
            }
            return answered(shared, ctx, io, head, scratch, reply).await;
        }
    };
    // No endpoint's address stands in for a missing `Host` here: the HTTP/2 client names the
    // endpoint it sends to, whichever attempt that is.
    upstream_head(scratch, shared, conn, ctx, raw, head, decided, "");
    let mut request = match request_of(scratch, head, body) {
        Ok(request) => request,
        Err(detail) => {
            let reply = Reply::new(
                StatusCode::BAD_REQUEST,
                json!({"error": "request not expressible in HTTP/2", "detail": detail}),
            );
            return answered(shared, ctx, io, head, scratch, reply).await;
        }
    };

    let http1 = Http1Client::Codec(&shared.codec_upstream, shared.config.timeouts.read());
    let (index, fault) = loop {
        let (index, endpoint) = chosen;
        if shared.config.access_log.enabled {
            ctx.upstream = Some(endpoint.address.clone());
        }
        // Every attempt's time starts as it does, the first's once the body is all here: time
        // the client took to send it is never counted against the upstream.
        let deadline = attempts.deadline_from(Instant::now());
        let sent = shared
            .timer
            .timeout_at(
                deadline,
                upstream_h2::send(http1, Some(&shared.upstream_h2), endpoint, request),
            )
            .await;
        let (fault, unsent) = match sent {
            Ok(Ok(response)) => {
                endpoint.health.success();
                // The body is the upstream's now: what it held of the budget is free while the
                // answer streams.
                drop(hold);
                return respond(shared, ctx, io, head, scratch, response).await;
            }
            Ok(Err(error)) => error.into_fault(),
            Err(_) => (UpstreamFault::Timeout, None),
        };
        match attempts.after(shared, endpoint, &fault, unsent) {
            Some((next, unsent)) => {
                request = unsent;
                chosen = next;
            }
            None => break (index, fault),
        }
    };
    let reply = attempts.failed(shared, index, fault);
    // The body was read whole: the connection is in step, and may go on after the reply.
    answered(shared, ctx, io, head, scratch, reply).await
}

/// `serve::answer`, returning what `forward` returns.
async fn answered<S: AsyncWrite + Unpin>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    reply: Reply,
) -> (StatusCode, Next, bool) {
    ctx.answer_begun = true;
    let status = reply.status;
    (
        status,
        answer(shared, io, head, scratch, reply).await,
        false,
    )
}

/// The request body, read whole by its framing.
struct ReadBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

/// The request body, read whole by its framing; `answer_begun` is set while the `100 Continue`
/// a client may wait for is going out.
#[allow(clippy::too_many_arguments)]
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    buf: &mut BytesMut,
    head: &RequestHead,
    key_headers: Option<KeyHeaders>,
    deadline: Instant,
    hold: &mut BodyHold,
    answer_begun: &mut bool,
) -> Result<ReadBody, BodyFault> {
    let max = shared.config.limits.max_body_bytes;
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    // A client waiting to be told to send its body is told when the body is needed and not
    // all here, as the HTTP/1.1 path tells it once the upstream connection is there.
    let mut ask = head.expect_continue && head.minor == 1;
    match head.framing {
        Framing::None | Framing::UntilClose => Ok(ReadBody {
            data: Bytes::new(),
            trailers: None,
        }),
        Framing::Length(n) => {
            // `decide` refused a length above `max_body_bytes` before this.
            let n = usize::try_from(n).map_err(|_| TOO_LARGE)?;
            // What is held grows with what was allocated, as the body comes: a client that
            // sends slowly holds no more than it sent.
            while buf.len() < n {
                grow(buf, (n - buf.len()).min(READ_CHUNK), n);
                // The connection's buffer has room of its own for a read anyway: only what the
                // body takes of it counts.
                if !hold.grow_to(buf.capacity().min(n) as u64) {
                    return Err(NO_ROOM);
                }
                fill(shared, io, buf, deadline, &mut ask, answer_begun).await?;
            }
            if !hold.grow_to(n as u64) {
                return Err(NO_ROOM);
            }
            let data = buf.split_to(n).freeze();
            // The body keeps the allocation it came in; the connection goes on with one of its
            // own, or it would keep a large body's memory for as long as it stays open.
            if n > READ_CHUNK {
                *buf = BytesMut::from(&buf[..]);
            }
            Ok(ReadBody {
                data,
                trailers: None,
            })
        }
        Framing::Chunked => {
            let mut chunked = Chunked::for_request(key_headers);
            let mut data = BytesMut::new();
            // What followed the last chunk data so far: at the end, the last chunk's line and
            // the trailer section.
            let mut tail = Vec::new();
            loop {
                while !buf.is_empty() && !chunked.is_done() {
                    let step = chunked.step(buf).map_err(|_| MALFORMED)?;
                    if step.data.is_empty() {
                        tail.extend_from_slice(&buf[..step.consumed]);
                    } else {
                        tail.clear();
                        let piece = &buf[step.data.clone()];
                        if (data.len() + piece.len()) as u64 > max {
                            return Err(TOO_LARGE);
                        }
                        grow(&mut data, piece.len(), limit);
                        if !hold.grow_to(data.capacity() as u64) {
                            return Err(NO_ROOM);
                        }
                        data.extend_from_slice(piece);
                    }
                    buf.advance(step.consumed);
                }
                if chunked.is_done() {
                    break;
                }
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(READ_CHUNK);
                }
                fill(shared, io, buf, deadline, &mut ask, answer_begun).await?;
            }
            Ok(ReadBody {
                data: data.freeze(),
                trailers: trailers_of(&tail),
            })
        }
    }
}

/// Read more of the body from the client (into the room `buf` has) by `deadline`, first
/// sending the `100 Continue` it may wait for (`ask`, once).
async fn fill<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    buf: &mut BytesMut,
    deadline: Instant,
    ask: &mut bool,
    answer_begun: &mut bool,
) -> Result<(), BodyFault> {
    if std::mem::take(ask) {
        // Until it is all out, the client's connection is inside an answer.
        *answer_begun = true;
        let asked = shared
            .timer
            .timeout_at(deadline, io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"))
            .await;
        match asked {
            Ok(Ok(())) => *answer_begun = false,
            Ok(Err(_)) => return Err(ABORTED),
            Err(_) => return Err(SLOW),
        }
    }
    match shared.timer.timeout_at(deadline, io.read_buf(buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Err(ABORTED),
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err(SLOW),
    }
}

/// The least a body's buffer grows by (more, by doubling, once it holds more than this): one
/// read's worth, so that a client that announces a large body and sends little holds little
/// of the gateway's memory and of `limits.max_buffered_body_bytes`.
const GROW_STEP: usize = READ_CHUNK;

/// Room in `b` for `more` bytes: when it must grow, to twice what it holds (at least
/// [`GROW_STEP`] more), but not past `limit` unless `more` needs it. `BytesMut::reserve`
/// doubles the allocation, which near the end of a body as large as the limit would allocate
/// up to twice the limit; growing by what has come also keeps a client that announces a large
/// body and sends little from having the whole of it allocated.
fn grow(b: &mut BytesMut, more: usize, limit: usize) {
    let len = b.len();
    if b.capacity() - len >= more {
        return;
    }
    let target = len
        .saturating_mul(2)
        .max(len.saturating_add(GROW_STEP))
        .min(limit)
        .max(len.saturating_add(more));
    let mut grown = BytesMut::with_capacity(target);
    grown.extend_from_slice(b);
    *b = grown;
}

/// The trailer fields of a chunked body, from what followed its last data (the CRLF ending
/// that data, the last chunk's line, the trailer section): checked already by [`Chunked`].
/// Fields that describe the message or the connection rather than its content are left out.
fn trailers_of(tail: &[u8]) -> Option<HeaderMap> {
    let rest = tail.strip_prefix(b"\r\n").unwrap_or(tail);
    let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let section = &rest[line_end + 2..];
    if section.starts_with(b"\r\n") {
        return None;
    }
    let mut fields = vec![httparse::EMPTY_HEADER; 128];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(section, &mut fields)
    else {
        return None;
    };
    let mut trailers = HeaderMap::new();
    for field in parsed {
        if Kind::of(field.name.as_bytes()) != Kind::Other {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) {
            trailers.append(name, value);
        }
    }
    (!trailers.is_empty()).then_some(trailers)
}

/// The HTTP/2 request: the head `upstream_head` wrote in `written`, parsed back, with `body`.
fn request_of(written: &[u8], head: &RequestHead, body: ReadBody) -> Result<Request<Body>, String> {
    let mut fields = vec![httparse::EMPTY_HEADER; head.fields.len() + 32];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(written) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete head".to_owned()),
        Err(error) => return Err(error.to_string()),
    }
    let method =
        Method::from_bytes(parsed.method.unwrap_or("GET").as_bytes()).map_err(|e| e.to_string())?;
    let uri = Uri::try_from(parsed.path.unwrap_or("/")).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|e| e.to_string())?;
        // The framing is the body's own now (HTTP/2 frames it; its length is set below); an
        // empty `Host` stands for none.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || (name == header::HOST && field.value.is_empty())
        {
            continue;
        }
        let value = HeaderValue::from_bytes(field.value).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    if head.framing != Framing::None {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.data.len()));
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    // Held whole, so the request can go to another endpoint should one leave it unprocessed.
    Ok(upstream_h2::held(parts, body.data, body.trailers))
}

/// How the answer's body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToClient {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Write the HTTP/2 answer to the HTTP/1.1 client: its head, then its body as it comes, then
/// its trailers when it goes chunked.
async fn respond<S>(
    shared: &Shared,
    ctx: &mut Ctx,
    io: &mut S,
    head: &RequestHead,
    out: &mut Vec<u8>,
    response: http::Response<UpstreamBody>,
) -> (StatusCode, Next, bool)
where
    S: AsyncWrite + Unpin,
{
    ctx.answer_begun = true;
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    strip_hop_by_hop(&mut parts.headers, false);
    let bodiless = ctx.method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let length = if hyper::body::Body::is_end_stream(&body) {
        Some(0)
    } else {
        parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let framing = match length {
        _ if bodiless => ToClient::None,
        Some(n) => ToClient::Length(n),
        None if head.minor == 1 => ToClient::Chunked,
        None => ToClient::UntilClose,
    };
    let close = head.close || framing == ToClient::UntilClose || draining(shared);

    out.clear();
    status_line(
        out,
        head.minor,
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    let mut dated = false;
    for (name, value) in &parts.headers {
        // A bodiless answer keeps the length it announces (a HEAD's); others get the
        // framing line written below.
        if *name == header::CONTENT_LENGTH && !bodiless {
            continue;
        }
        dated |= *name == header::DATE;
        field_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let ToClient::Length(n) = framing {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    end_answer_head(out, dated, framing == ToClient::Chunked, close, head.minor);
    if framing == ToClient::None {
        // The stream is dropped unread: hyper resets it if the upstream sent more.
        let next = if close { Next::Close } else { Next::KeepAlive };
        return (status, next, true);
    }

    // `out` holds what the client gets next. It goes out when the next frame is not there yet
    // (or it has grown large), so the last of the answer is left in it for the caller to write
    // once the request is logged and counted, as on the HTTP/1.1 path; a body whose announced
    // length is all in `out` waits there for the stream's end.
    let body_timeout = shared.config.timeouts.read();
    let mut sent = 0u64;
    let mut trailers = None;
    let ended = loop {
        let complete = matches!(framing, ToClient::Length(n) if sent == n);
        let ready = body.frame().now_or_never();
        if !out.is_empty() && !complete && (ready.is_none() || out.len() >= FLUSH_AT) {
            // Returning drops the stream, which resets it: its window goes back to the
            // connection.
            if !to_client(shared, io, out).await {
                return (client_gone(), Next::Close, false);
            }
            out.clear();
        }
        let polled = match ready {
            Some(polled) => polled,
            None => match shared
                .timer
                .timeout_at(Instant::now() + body_timeout, body.frame())
                .await
            {
                Ok(polled) => polled,
                Err(_) => {
                    tracing::debug!("upstream HTTP/2 response body timed out");
                    break false;
                }
            },
        };
        let frame = match polled {
            None => break true,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::debug!(%error, "upstream broke an HTTP/2 response body");
                break false;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(fields) = frame.into_trailers() {
                    trailers = Some(fields);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            ToClient::Length(n) => {
                let room = usize::try_from(n - sent).unwrap_or(usize::MAX);
                if data.len() > room {
                    // More than announced: what fits goes, and the reset tells the rest.
                    out.extend_from_slice(&data[..room]);
                    break false;
                }
                out.extend_from_slice(&data);
                sent += data.len() as u64;
            }
            ToClient::Chunked => {
                let mut size = [0u8; 16];
                let size = hex(data.len(), &mut size);
                out.extend_from_slice(size);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            ToClient::UntilClose | ToClient::None => out.extend_from_slice(&data),
        }
    };
    // A body of announced length is whole once all of it came, whatever became of the stream
    // after.
    let whole = match framing {
        ToClient::Length(n) => sent == n,
        _ => ended,
    };
    if whole && framing == ToClient::Chunked {
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().flatten() {
            field_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    // A body cut short ends the client's connection: a client that can tell the end of a
    // body from its framing learns from the close; one whose body ends with the connection
    // learns from a reset.
    let next = match (whole, close) {
        (false, _) if framing == ToClient::UntilClose => Next::Reset,
        (false, _) | (true, true) => Next::Close,
        (true, false) => Next::KeepAlive,
    };
    (status, next, true)
}

/// How much of the answer may gather in `out` before it is written though more is there.
const FLUSH_AT: usize = 4 * READ_CHUNK;

fn client_gone() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// `n` in lowercase hex, in `out`.
fn hex(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &out[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_come_from_after_the_last_chunk() {
        let with_data = b"\r\n0;ext=1\r\ngrpc-status: 0\r\nContent-Length: 3\r\nx-b: two\r\n\r\n";
        let trailers = trailers_of(with_data).expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-b"], "two");
        assert!(trailers.get(header::CONTENT_LENGTH).is_none());
        assert!(trailers_of(b"0\r\nx-a: 1\r\n\r\n").is_some());
        assert!(trailers_of(b"\r\n0\r\n\r\n").is_none());
        assert!(trailers_of(b"0\r\n\r\n").is_none());
    }

    #[test]
    fn a_body_buffer_grows_with_what_came_and_never_past_its_limit() {
        let n = 4 * GROW_STEP + 123;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut allocated = 0;
        while buf.len() < n {
            let before = buf.capacity();
            let more = (n - buf.len()).min(READ_CHUNK);
            grow(&mut buf, more, n);
            if buf.capacity() != before {
                allocated += 1;
            }
            assert!(buf.capacity() <= n, "{} past {n}", buf.capacity());
            assert!(buf.capacity() <= (2 * buf.len()).max(buf.len() + GROW_STEP));
            let read = (buf.capacity() - buf.len()).min(READ_CHUNK);
            buf.extend_from_slice(&vec![7; read]);
        }
        assert_eq!(buf.len(), n);
        assert!(allocated <= 4, "{allocated} allocations");
        // Chunked data: room for a piece that needs more than the usual step.
        let mut data = BytesMut::new();
        grow(&mut data, 3 * GROW_STEP, usize::MAX);
        assert!(data.capacity() >= 3 * GROW_STEP);
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut out = [0u8; 16];
        assert_eq!(hex(0, &mut out), b"0");
        assert_eq!(hex(255, &mut out), b"ff");
        assert_eq!(hex(0x1a2b, &mut out), b"1a2b");
    }
}
