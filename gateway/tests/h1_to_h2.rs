//! HTTP/1.1 clients through the gateway's own codec (the default `http1_codec`) to pools with
//! `protocol: h2`: the request goes upstream over HTTP/2 with the fields the codec adds, and
//! the HTTP/2 answer comes back as HTTP/1.1 — Content-Length when it has one, else chunked with
//! its trailers (HTTP/1.1) or until the close (HTTP/1.0) — on a connection that stays open.
//! An idempotent request whose first endpoint refuses connections goes to the next one.
//! Clients that stop reading, send their body slowly, pipeline, or get an answer the upstream
//! breaks off are served as on the HTTP/1.1 path.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway::Gateway;
use gateway::config::GatewayConfig;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{SECRET, loopback_listeners, refusing_address};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// What the HTTP/2 upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

type BoxError = std::io::Error;
type UpstreamResponse = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>;

/// The length of `/big`'s body: more than the socket buffers and HTTP/2 windows between the
/// upstream and a client that does not read can hold.
const BIG: u64 = 12 << 20;

/// What the upstream tells its test, and is told by it.
struct Big {
    /// The bytes of every `/big` body made so far.
    made: watch::Sender<u64>,
    /// How much of a `/big` body had been made when it was given up before its end (its
    /// stream reset).
    cut: mpsc::UnboundedSender<u64>,
    /// Breaks off a `/break` body (once per notification).
    break_off: Arc<tokio::sync::Notify>,
}

/// One `/big` body on its way: reports it when it is dropped before its end.
struct BigBody {
    big: Arc<Big>,
    made: u64,
}

impl Drop for BigBody {
    fn drop(&mut self) {
        if self.made < BIG {
            let _ = self.big.cut.send(self.made);
        }
    }
}

/// An HTTP/2 (h2c) upstream, as its test sees it.
struct Upstream {
    addr: SocketAddr,
    log: Log,
    made: watch::Receiver<u64>,
    cut: mpsc::UnboundedReceiver<u64>,
    break_off: Arc<tokio::sync::Notify>,
}

/// An HTTP/2 (h2c) upstream that logs each request before answering it. `/fixed` is answered
/// with a Content-Length body; `/empty` with a head that ends the stream; `/big` with [`BIG`]
/// bytes and their length; `/reset` with a reset stream, no head; `/break` and
/// `/break-chunked` with a head (with and without a length) and a little of the body, then,
/// once told to break off, a reset stream; `/slow?ms=N` like anything else, N ms late; anything else with `echo:` and
/// the request body, in two data frames and no length, then trailers (`grpc-status: 0`,
/// `x-upstream-trailer`).
async fn h2_upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log: Log = Arc::default();
    let seen = log.clone();
    let (made_tx, made) = watch::channel(0);
    let (cut_tx, cut) = mpsc::unbounded_channel();
    let break_off = Arc::new(tokio::sync::Notify::new());
    let big = Arc::new(Big {
        made: made_tx,
        cut: cut_tx,
        break_off: break_off.clone(),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let big = big.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    let big = big.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let collected = body.collect().await.map_err(BoxError::other)?;
                        let trailers = collected.trailers().cloned();
                        let body = collected.to_bytes();
                        let path = parts.uri.path().to_owned();
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts.headers,
                            body: body.clone(),
                            trailers,
                        });
                        if path == "/slow" {
                            let ms = parts
                                .uri
                                .query()
                                .and_then(|q| q.strip_prefix("ms="))
                                .and_then(|ms| ms.parse().ok())
                                .expect("/slow?ms=N");
                            // The upstream being slow is what is tested: not a wait for
                            // anything.
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        answer_to(&path, body, big)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        log,
        made,
        cut,
        break_off,
    }
}

/// The upstream's answer to a request for `path` whose body was `body`.
fn answer_to(path: &str, body: Bytes, big: Arc<Big>) -> Result<UpstreamResponse, BoxError> {
    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;
    let stream = |frames: Frames| StreamBody::new(futures_util::stream::iter(frames));
    let broken = |big: Arc<Big>| {
        use futures_util::StreamExt;
        let data = Ok(Frame::data(Bytes::from_static(b"0123456789")));
        let error = async move {
            big.break_off.notified().await;
            Err(BoxError::other("the upstream breaks off"))
        };
        StreamBody::new(futures_util::stream::iter([data]).chain(futures_util::stream::once(error)))
            .boxed_unsync()
    };
    let (body, length) = match path {
        "/reset" => return Err(BoxError::other("the upstream resets the stream")),
        "/fixed" => (
            stream(vec![Ok(Frame::data(Bytes::from_static(b"fixed body")))]).boxed_unsync(),
            Some(10),
        ),
        "/empty" => (
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            None,
        ),
        "/big" => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let body = futures_util::stream::unfold(BigBody { big, made: 0 }, move |mut body| {
                let chunk = chunk.clone();
                async move {
                    if body.made >= BIG {
                        return None;
                    }
                    body.made += chunk.len() as u64;
                    body.big
                        .made
                        .send_modify(|made| *made += chunk.len() as u64);
                    Some((Ok::<_, BoxError>(Frame::data(chunk)), body))
                }
            });
            (StreamBody::new(body).boxed_unsync(), Some(BIG))
        }
        "/break" => (broken(big), Some(100)),
        "/break-chunked" => (broken(big), None),
        _ => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("v"));
            trailers.insert("x-upstream-trailer", "late".parse().expect("v"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"echo:"))),
                Ok(Frame::data(body)),
                Ok(Frame::trailers(trailers)),
            ];
            (stream(frames).boxed_unsync(), None)
        }
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("x-upstream", "h2".parse().expect("v"));
    if let Some(length) = length {
        response
            .headers_mut()
            .insert("content-length", length.into());
    }
    Ok(response)
}

fn config(table: &Path, extra: &str) -> GatewayConfig {
    let text = format!(
        "region: local\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {}, poll_interval_ms: 3600000 }}\nhop_secret: {SECRET}\naccess_log: false\nhealth_check: {{ interval_ms: 0 }}\n{extra}",
        table.display()
    );
    GatewayConfig::parse(&text, "test").expect("config")
}

/// One region: `/retry` to a pool whose first endpoint refuses connections, `/down` to one
/// that has only such an endpoint, the rest to the live HTTP/2 upstream; all `protocol: h2`.
struct Setup {
    gateway: Gateway,
    log: Log,
    made: watch::Receiver<u64>,
    cut: mpsc::UnboundedReceiver<u64>,
    break_off: Arc<tokio::sync::Notify>,
    live: SocketAddr,
    refusing: SocketAddr,
    _reserved: tokio::net::TcpSocket,
    _dir: tempfile::TempDir,
}

async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let Upstream {
        addr: live,
        log,
        made,
        cut,
        break_off,
    } = h2_upstream().await;
    let (reserved, refusing) = refusing_address();
    let route = |name: &str, prefix: &str| {
        format!(
            "  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, service: {name}, class: C, key: [{{ header: X-User-Id }}], missing_key: local }}\n"
        )
    };
    let table = format!(
        "version: 1\nregions:\n  - {{ name: local, pools: {{ app: {{ endpoints: [\"{live}\"], protocol: h2 }}, retry: {{ endpoints: [\"{refusing}\", \"{live}\"], protocol: h2 }}, down: {{ endpoints: [\"{refusing}\"], protocol: h2 }} }} }}\nunits:\n  - {{ name: u1, center: true, slots: [[0, 9999]], region: local }}\nroutes:\n{}{}{}",
        route("retry", "/retry"),
        route("down", "/down"),
        route("app", "/"),
    );
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    let gateway = Gateway::start(config(&table_path, extra), loopback_listeners())
        .await
        .expect("gateway");
    Setup {
        gateway,
        log,
        made,
        cut,
        break_off,
        live,
        refusing,
        _reserved: reserved,
        _dir: dir,
    }
}

impl Setup {
    /// The gateway's plain HTTP listener.
    fn addr(&self) -> SocketAddr {
        self.gateway.http_addrs[0]
    }

    /// A new client connection to the gateway.
    async fn client(&self) -> Client {
        Client::connect(self.addr()).await
    }

    /// Every request the upstream received, in order.
    fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }

    /// The last request the upstream received.
    fn last_seen(&self) -> Seen {
        self.log.lock().expect("log").last().cloned().expect("seen")
    }

    /// The gateway's metrics, as text.
    async fn metrics(&self) -> String {
        support::get_text(&support::client(), self.gateway.admin_addr, "/metrics").await
    }

    /// The series counting the connections the refusing endpoint refused.
    fn refused_series(&self) -> String {
        format!(
            "unitgate_upstream_errors_total{{endpoint=\"{}\",kind=\"connect\"}}",
            self.refusing
        )
    }
}

/// An HTTP/1.x response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    fn trailer(&self, name: &str) -> Option<&str> {
        find(&self.trailers, name)
    }
}

fn find<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A client connection, with what it read and did not use yet.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Read more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the gateway answers in time")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Read until the gateway ends the connection: `Ok` for an orderly close, the error for a
    /// reset.
    async fn read_to_end(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("the gateway answers in time")?;
            if read == 0 {
                return Ok(());
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    /// The next CRLF-ended line, without its CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..at].to_vec()).expect("text");
                self.buf.drain(..at + 2);
                return line;
            }
            assert!(self.fill().await, "closed inside a line: {:?}", self.buf);
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed inside a body");
        }
        self.buf.drain(..n).collect()
    }

    async fn fields(&mut self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return fields;
            }
            let (name, value) = line.split_once(':').expect("a field line");
            fields.push((name.to_owned(), value.trim().to_owned()));
        }
    }

    /// Read one response to a request of `method`.
    async fn answer(&mut self, method: &str) -> Answer {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let headers = self.fields().await;
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if method == "HEAD" || status == 204 || status == 304 {
            return answer;
        }
        if let Some(length) = answer.header("content-length") {
            let length = length.parse().expect("a length");
            answer.body = self.take(length).await;
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size_line = self.line().await;
                let size =
                    usize::from_str_radix(size_line.split(';').next().expect("a size").trim(), 16)
                        .expect("a hex size");
                if size == 0 {
                    answer.trailers = self.fields().await;
                    break;
                }
                let data = self.take(size + 2).await;
                assert_eq!(&data[size..], b"\r\n");
                answer.body.extend_from_slice(&data[..size]);
            }
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    /// Whether the gateway closed the connection (and sent nothing more).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }

    /// Send a whole request and read its answer.
    async fn exchange(&mut self, request: &[u8]) -> Answer {
        self.send(request).await;
        let method = request.split(|b| *b == b' ').next().expect("a method");
        self.answer(std::str::from_utf8(method).expect("a method"))
            .await
    }

    /// Send [`bodiless`]'s request and read its answer.
    async fn ask(&mut self, method: &str, target: &str, user: &str) -> Answer {
        self.exchange(&bodiless(method, target, user)).await
    }
}

/// An HTTP/1.1 request without a body for `api.example`, keyed by `user`.
fn bodiless(method: &str, target: &str, user: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: api.example\r\nX-User-Id: {user}\r\n\r\n")
        .into_bytes()
}

fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_for_an_h2_pool_go_over_http2_and_come_back_as_http1() {
    let setup = setup("").await;
    let mut client = setup.client().await;

    // A POST with a Content-Length body (gRPC's content type): chunked back, with the
    // upstream's trailers.
    let answer = client
        .exchange(b"POST /pkg.Svc/Call?q=1 HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 42\r\nContent-Type: application/grpc\r\nX-Unitgate-Unit: forged\r\nContent-Length: 11\r\n\r\nhello world")
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-upstream"), Some("h2"));
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert!(answer.header("date").is_some());
    assert_eq!(answer.body, b"echo:hello world");
    assert_eq!(answer.trailer("grpc-status"), Some("0"), "{answer:?}");
    assert_eq!(answer.trailer("x-upstream-trailer"), Some("late"));

    let seen = setup.last_seen();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "http://api.example/pkg.Svc/Call?q=1");
    assert_eq!(seen.body, "hello world");
    let headers = &seen.headers;
    assert_eq!(value(headers, "x-user-id"), Some("42"));
    assert_eq!(value(headers, "x-unitgate-unit"), Some("u1"), "{headers:?}");
    assert_eq!(value(headers, "x-unitgate-region"), Some("local"));
    assert_eq!(value(headers, "x-unitgate-class"), Some("C"));
    assert_eq!(value(headers, "x-unitgate-table-version"), Some("1"));
    assert_eq!(value(headers, "x-unitgate-key"), Some("42"));
    assert_eq!(value(headers, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(value(headers, "x-forwarded-proto"), Some("http"));
    assert!(value(headers, "traceparent").is_some_and(|t| t.starts_with("00-")));
    assert_eq!(value(headers, "te"), Some("trailers"));
    assert_eq!(value(headers, "content-length"), Some("11"));
    assert!(headers.get("host").is_none() && headers.get("connection").is_none());

    // On the same connection: a chunked POST with a trailer, which reaches the upstream.
    let answer = client
        .exchange(b"POST /chunked HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 42\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n3;x=y\r\nfgh\r\n0\r\nx-client-trailer: from-client\r\n\r\n")
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"echo:abcdefgh");
    let seen = setup.last_seen();
    assert_eq!(seen.body, "abcdefgh");
    assert_eq!(value(&seen.headers, "content-length"), Some("8"));
    assert!(value(&seen.headers, "te").is_none(), "not gRPC: no TE");
    let trailers = seen.trailers.expect("the client's trailers");
    assert_eq!(value(&trailers, "x-client-trailer"), Some("from-client"));

    // A GET answered with a length: Content-Length back, and the connection goes on.
    let answer = client.ask("GET", "/fixed", "42").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-length"), Some("10"));
    assert!(answer.header("transfer-encoding").is_none());
    assert_eq!(answer.body, b"fixed body");
    let seen = setup.last_seen();
    assert_eq!((seen.method.as_str(), seen.body.len()), ("GET", 0));
    assert!(seen.headers.get("content-length").is_none());

    // A HEAD: the head only.
    let answer = client.ask("HEAD", "/fixed", "42").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-upstream"), Some("h2"));

    // Pipelined after it, and asking to close: answered, then closed.
    let answer = client
        .exchange(b"GET /fixed HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 42\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(answer.body, b"fixed body");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed().await);

    // HTTP/1.0 and no length: the body ends with the connection, and no trailers.
    let mut client = setup.client().await;
    let answer = client
        .exchange(b"GET /old HTTP/1.0\r\nHost: api.example\r\nX-User-Id: 42\r\n\r\n")
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.header("transfer-encoding").is_none());
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.body, b"echo:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_goes_on_to_the_next_endpoint_when_the_first_refuses() {
    let setup = setup("").await;
    let mut client = setup.client().await;
    // The pool's first endpoint refuses: the first request starts there and goes on; the
    // second, in turn, starts either there or on the live one.
    for round in 0..2 {
        let answer = client.ask("GET", "/retry/x", "7").await;
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        assert_eq!(answer.body, b"echo:");
        assert_eq!(answer.trailer("grpc-status"), Some("0"));
    }
    assert_eq!(setup.seen().len(), 2);
    let metrics = setup.metrics().await;
    assert!(metrics.contains(&setup.refused_series()), "{metrics}");
    let live = format!("endpoint=\"{}\"", setup.live);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("unitgate_upstream_errors_total") && l.contains(&live)),
        "{metrics}"
    );

    // A POST is not retried: its only endpoint refuses, and the gateway says so, its body
    // read, the connection still open.
    let answer = client
        .exchange(b"POST /down HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 7\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    assert_eq!(answer.status, 502, "{answer:?}");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(body["error"], "upstream unreachable");
    assert_eq!(body["upstream"], setup.refusing.to_string());
    assert_eq!(client.ask("GET", "/fixed", "7").await.body, b"fixed body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_asked_for_limited_and_timed_like_on_the_http1_path() {
    let setup = setup("limits: { max_body_bytes: 16 }\ntimeouts: { read_ms: 300 }\n").await;

    // `Expect: 100-continue`: the client is told to go on, then answered.
    let mut client = setup.client().await;
    client
        .send(b"POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    assert_eq!(client.line().await, "HTTP/1.1 100 Continue");
    assert_eq!(client.line().await, "");
    client.send(b"abcde").await;
    let answer = client.answer("POST").await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"echo:abcde"[..])
    );
    let seen = setup.last_seen();
    assert!(seen.headers.get("expect").is_none());

    // A chunked body over `max_body_bytes`: 413, and the connection closes.
    let answer = client
        .exchange(b"POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nX\r\n0\r\n\r\n")
        .await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(client.closed().await);

    // A body that stops coming: 408 once the read timeout has passed, and the close.
    let mut client = setup.client().await;
    let answer = client
        .exchange(b"POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(client.closed().await);
    assert_eq!(setup.seen().len(), 1, "nothing more went upstream");
}

/// Bodies the gateway holds whole share `limits.max_buffered_body_bytes`: one that would not
/// fit while others are held is refused with a `503` (and `Retry-After`), and fits again once
/// they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_whole_share_one_budget() {
    let setup = setup("limits: { max_body_bytes: 1000, max_buffered_body_bytes: 1500 }\n").await;
    let post = |length: usize| {
        format!(
            "POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // The first holds its 1000 bytes (its connection's buffer has room for them) from the
    // moment it is told to send its body.
    let mut first = setup.client().await;
    first.send(post(1000).as_bytes()).await;
    assert_eq!(first.line().await, "HTTP/1.1 100 Continue");
    assert_eq!(first.line().await, "");

    // 1000 more do not fit: refused before a byte of the body is asked for.
    let mut second = setup.client().await;
    second.send(post(1000).as_bytes()).await;
    let answer = second.answer("POST").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(
        answer
            .headers
            .iter()
            .any(|(name, value)| name == "retry-after" && value == "1"),
        "{answer:?}"
    );
    // 500 do.
    let mut third = setup.client().await;
    third.send(post(500).as_bytes()).await;
    assert_eq!(third.line().await, "HTTP/1.1 100 Continue");
    assert_eq!(third.line().await, "");
    third.send(&[b'c'; 500]).await;
    assert_eq!(third.answer("POST").await.status, 200);

    // Once the first is answered, its share is free again.
    first.send(&[b'a'; 1000]).await;
    assert_eq!(first.answer("POST").await.status, 200);
    let mut again = setup.client().await;
    let mut request = post(1000)
        .replace("Expect: 100-continue\r\n", "")
        .into_bytes();
    request.extend_from_slice(&[b'b'; 1000]);
    assert_eq!(again.exchange(&request).await.status, 200);
    let metrics = setup.metrics().await;
    assert!(
        metrics.contains("unitgate_requests_shed_total{reason=\"max_buffered_body_bytes\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        held(&setup).await,
        0,
        "every answered body gave its share back"
    );

    // A body refused as too large, and one whose client goes away, give theirs back too.
    let mut large = setup.client().await;
    let mut request =
        b"POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n"
            .to_vec();
    request.extend_from_slice(&[b'x'; 1001]);
    let answer = large.exchange(&request).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    let mut gone = setup.client().await;
    gone.send(post(1000).as_bytes()).await;
    assert_eq!(gone.line().await, "HTTP/1.1 100 Continue");
    assert!(held(&setup).await > 0);
    drop(gone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held(&setup).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a share never came back"
        );
        tokio::task::yield_now().await;
    }
}

/// Bytes of bodies held whole now, by the gateway's gauge.
async fn held(setup: &Setup) -> u64 {
    let metrics = setup.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("unitgate_buffered_body_bytes "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no gauge: {metrics}"))
}

/// What a body holds of `limits.max_buffered_body_bytes` grows as it comes: clients that
/// announce large bodies and send little cannot take the budget from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_body_holds_only_what_came_of_it() {
    let setup =
        setup("limits: { max_body_bytes: 1048576, max_buffered_body_bytes: 1048576 }\n").await;
    let post = "POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nExpect: 100-continue\r\nContent-Length: 1048576\r\n\r\n";
    // Two clients announce the whole budget each; both are asked for their bodies.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut client = setup.client().await;
        client.send(post.as_bytes()).await;
        assert_eq!(client.line().await, "HTTP/1.1 100 Continue");
        assert_eq!(client.line().await, "");
        waiting.push(client);
    }
    // A third, with a small body, is served meanwhile.
    let mut small = setup.client().await;
    let answer = small
        .exchange(b"POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(waiting);
}

/// Requests to `route` answered with `status`, by the gateway's metrics.
async fn counted(setup: &Setup, route: &str, status: u16) -> u64 {
    let metrics = setup.metrics().await;
    let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
    metrics
        .lines()
        .filter(|l| l.starts_with("unitgate_requests_total{"))
        .filter(|l| l.contains(&route) && l.contains(&status))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_shared_upstream_connection() {
    // One worker, so every request below goes over the same HTTP/2 connection.
    let mut setup = setup("threads: 1\ntimeouts: { read_ms: 1000 }\n").await;
    // Clients that ask for a large answer and never read: the data waiting for them can use
    // up the connection's window (hyper's: 5 MiB, 2 MiB a stream).
    const STALLED: usize = 3;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("buffer size");
        let mut stream = socket.connect(setup.addr()).await.expect("connect");
        stream
            .write_all(&bodiless("GET", "/big", "1"))
            .await
            .expect("write");
        stalled.push(stream);
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        setup.made.wait_for(|made| *made >= 5 << 20),
    )
    .await
    .expect("the upstream sends a connection window's worth")
    .expect("upstream");

    // Another client of the same pool is answered all the same.
    let started = std::time::Instant::now();
    let mut client = setup.client().await;
    let answer = client.ask("GET", "/fixed", "2").await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"fixed body"[..]),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );

    // The stalled clients' streams are given up once a write has waited the read timeout...
    for _ in 0..STALLED {
        let made = tokio::time::timeout(Duration::from_secs(10), setup.cut.recv())
            .await
            .expect("a stalled client's stream is reset")
            .expect("upstream");
        assert!(made < BIG);
    }
    // ...and their connections closed, the answer cut short.
    for mut stream in stalled {
        let mut got = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("the gateway closes the connection")
                .expect("read");
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        assert!(got < BIG, "{got} bytes");
    }
    assert_eq!(counted(&setup, "app", 499).await, STALLED as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_leaves_the_upstream_its_whole_read_timeout() {
    let setup = setup("timeouts: { read_ms: 1000 }\n").await;
    let mut client = setup.client().await;
    client
        .send(b"POST /slow?ms=500 HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nContent-Length: 4\r\n\r\nab")
        .await;
    // The client is slow (that is what is tested): most of the read timeout goes by before
    // the rest of its body; the upstream then takes half of it to answer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.send(b"cd").await;
    let answer = client.answer("POST").await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"echo:abcd"[..]),
        "{answer:?}"
    );
    let metrics = setup.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("unitgate_upstream_errors_total{")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_names_no_host_names_each_endpoint_it_is_sent_to() {
    let setup = setup("").await;
    // HTTP/1.0 without `Host`: `:authority` is the endpoint's. The pool's first endpoint
    // refuses, so at least one request goes on from it to the live one.
    for round in 0..2 {
        let mut client = setup.client().await;
        let answer = client
            .exchange(b"GET /retry/x HTTP/1.0\r\nX-User-Id: 7\r\n\r\n")
            .await;
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
    }
    let metrics = setup.metrics().await;
    assert!(metrics.contains(&setup.refused_series()), "{metrics}");
    let seen = setup.seen();
    assert_eq!(seen.len(), 2);
    for seen in seen {
        assert_eq!(seen.uri, format!("http://{}/retry/x", setup.live));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_after_the_whole_body_keeps_the_connection() {
    let setup = setup("timeouts: { read_ms: 300 }\n").await;
    let mut client = setup.client().await;
    let answer = client
        .exchange(b"POST /slow?ms=3000 HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(answer.header("connection"), None);

    let answer = client.ask("GET", "/reset", "1").await;
    assert_eq!(answer.status, 502, "{answer:?}");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(body["error"], "upstream exchange failed");
    assert_eq!(answer.header("connection"), None);

    assert_eq!(client.ask("GET", "/fixed", "1").await.body, b"fixed body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_read_from_where_the_body_before_them_ends() {
    let setup = setup("").await;
    let mut client = setup.client().await;
    // A body larger than one read, then a chunked one, then a GET, in one write.
    let body = vec![b'b'; 300 * 1024 + 7];
    let mut bytes = format!(
        "POST /x HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(b"POST /y HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    bytes.extend_from_slice(&bodiless("GET", "/fixed", "1"));
    client.send(&bytes).await;

    let answer = client.answer("POST").await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..5], b"echo:");
    assert!(answer.body[5..] == body[..], "the first body, whole");
    let answer = client.answer("POST").await;
    assert_eq!(answer.body, b"echo:abc", "{answer:?}");
    let answer = client.answer("GET").await;
    assert_eq!(answer.body, b"fixed body", "{answer:?}");
    let seen = setup.seen();
    let sizes: Vec<_> = seen
        .iter()
        .map(|s| (s.uri.as_str(), s.body.len()))
        .collect();
    assert_eq!(
        sizes,
        [
            ("http://api.example/x", body.len()),
            ("http://api.example/y", 3),
            ("http://api.example/fixed", 0)
        ]
    );
}

/// An answer the upstream breaks off after its head went out ends the client's connection:
/// with a close where the framing shows the cut (a length not reached, no last chunk), with a
/// reset for an HTTP/1.0 client, whose body ends with the connection (an orderly close would
/// pass for the body's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_upstream_breaks_off_ends_the_client_connection() {
    let setup = setup("").await;
    for (version, path) in [
        ("1.1", "/break"),
        ("1.1", "/break-chunked"),
        ("1.0", "/break-chunked"),
    ] {
        let mut client = setup.client().await;
        let request =
            format!("GET {path} HTTP/{version}\r\nHost: api.example\r\nX-User-Id: 1\r\n\r\n");
        client.send(request.as_bytes()).await;
        assert_eq!(
            client.line().await,
            format!("HTTP/{version} 200 OK"),
            "{path}"
        );
        let fields = client.fields().await;
        setup.break_off.notify_one();
        // Whatever of the body came, the connection ends after it (a read that times out
        // instead fails the test).
        let end = client.read_to_end().await.map_err(|e| e.kind());
        let expected = if version == "1.0" {
            Err(std::io::ErrorKind::ConnectionReset)
        } else {
            Ok(())
        };
        assert_eq!(end, expected, "HTTP/{version} {path}");
        let body = std::mem::take(&mut client.buf);
        match (version, path) {
            ("1.1", "/break") => {
                assert_eq!(find(&fields, "content-length"), Some("100"), "{fields:?}");
                assert!(body.len() < 100, "{path}: {body:?}");
            }
            ("1.1", _) => {
                assert_eq!(find(&fields, "transfer-encoding"), Some("chunked"));
                assert!(!body.ends_with(b"0\r\n\r\n"), "{path}: {body:?}");
            }
            _ => {
                assert_eq!(find(&fields, "transfer-encoding"), None, "{fields:?}");
                assert_eq!(find(&fields, "content-length"), None, "{fields:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_its_whole_answer_finds_the_request_counted() {
    let setup = setup("").await;
    let mut client = setup.client().await;
    // A length, chunked with trailers, a head that ends the stream, a HEAD.
    let requests = [
        ("GET", "/fixed"),
        ("POST", "/echo"),
        ("GET", "/empty"),
        ("HEAD", "/fixed"),
    ];
    for (n, (method, path)) in requests.into_iter().enumerate() {
        let answer = client
            .exchange(format!("{method} {path} HTTP/1.1\r\nHost: api.example\r\nX-User-Id: 1\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(
            counted(&setup, "app", 200).await,
            n as u64 + 1,
            "{method} {path}"
        );
    }
}
